//! The Prometheus exposition of a [`Snapshot`] (metric contract in
//! README.md and docs/operations.md). Base units, `_total` on counters;
//! the only per-workload label is the attributed container name, so
//! cardinality follows the number of VMs, never pids or addresses.
use std::collections::BTreeMap;

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::export::snapshot::Snapshot;
use crate::model::DivergenceCount;
use crate::model::verdict::{Leak, Verdicts};
use crate::stream::{ProbeState, event::Memlock};

const PAGE: i64 = 4096;

/// Per container name: several VFIO containers (or processes) of one VM
/// or pod add up.
#[derive(Default)]
struct PerName {
    pins_total: u64,
    zero_pinned: i64,
    leaked: i64,
    leak: bool,
    pinned: i64,
    locked_kernel: i64,
    locked_model: i64,
    memlock_limit: Option<i64>,
    uncharged: i64,
    shortfall: i64,
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// Prometheus text format for `s`.
pub fn render(s: &Snapshot) -> String {
    let r = Registry::new();
    // process_*: the agent's own CPU, memory and descriptors.
    let _ = r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    let _ = r.register(Box::new(crate::source::session::LOOP_LAG.clone()));
    containers(&r, &s.verdicts);
    zero_page(&r, &s.verdicts);
    behaviour(&r, &s.verdicts);
    probes(&r, s);
    events(&r, s);
    model(&r, s);
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&r.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Per container name: pins, leaks, pinned and locked memory, memlock.
fn containers(r: &Registry, v: &Verdicts) {
    let mut names: BTreeMap<&str, PerName> = BTreeMap::new();
    for c in &v.containers {
        let n = names.entry(c.name.as_str()).or_default();
        n.pins_total += c.zero_page_pins_total;
        n.zero_pinned += c.pinned_pages.zero;
        n.leaked += c.zero_page_pins_leaked;
        n.leak |= c.leak == Leak::Leaking;
        n.pinned += c.pinned_pages.total();
        n.locked_kernel += c.locked_vm_pages_kernel * PAGE;
        n.locked_model += c.locked_vm_pages_model * PAGE;
    }
    for p in &v.processes {
        let Some(n) = names.get_mut(p.name.as_str()) else {
            continue;
        };
        if let (Memlock::Bytes(b), false) = (p.memlock, p.cap_ipc_lock) {
            n.memlock_limit = Some(n.memlock_limit.unwrap_or(0).max(b as i64));
        }
        n.uncharged += p.uncharged_zero_page_bytes;
        n.shortfall += p.shortfall_bytes;
    }

    let c = ["container"];
    let pins = counter(
        r,
        "vfio_zp_zero_page_pins_total",
        "GUP pins of the 4 KiB zero page taken for the container's DMA mappings (pages).",
        &c,
    );
    let zero = gauge(
        r,
        "vfio_zp_zero_page_pinned_pages",
        "Pages type1 holds for the container that are the zero page.",
        &c,
    );
    let leaked = gauge(
        r,
        "vfio_zp_zero_page_leaked_pins",
        "Zero-page pins that outlived the type1 call that took them and are never released (1024 references each).",
        &c,
    );
    let leak = gauge(
        r,
        "vfio_zp_leak_detected",
        "1 when the container leaks zero-page pins.",
        &c,
    );
    let pinned = gauge(
        r,
        "vfio_zp_pinned_pages",
        "All pages type1 holds for the container.",
        &c,
    );
    let locked = gauge(
        r,
        "vfio_zp_locked_vm_bytes",
        "locked_vm type1 charged (source=kernel, seen in vfio_lock_acct) and as the model predicts it (source=model).",
        &["container", "source"],
    );
    let limit = gauge(
        r,
        "vfio_zp_memlock_limit_bytes",
        "RLIMIT_MEMLOCK of the owning process (absent: unlimited, CAP_IPC_LOCK or unknown).",
        &c,
    );
    let uncharged = gauge(
        r,
        "vfio_zp_memlock_uncharged_zero_page_bytes",
        "Zero-page-backed DMA bytes this kernel does not charge to locked_vm.",
        &c,
    );
    let shortfall = gauge(
        r,
        "vfio_zp_memlock_shortfall_bytes",
        "How far RLIMIT_MEMLOCK falls short on a kernel that charges zero-page-backed DMA (6.2+); 0 when it fits.",
        &c,
    );
    for (name, n) in &names {
        let l = [*name];
        pins.with_label_values(&l).inc_by(n.pins_total);
        zero.with_label_values(&l).set(n.zero_pinned);
        leaked.with_label_values(&l).set(n.leaked);
        leak.with_label_values(&l).set(n.leak as i64);
        pinned.with_label_values(&l).set(n.pinned);
        locked
            .with_label_values(&[name, "kernel"])
            .set(n.locked_kernel);
        locked
            .with_label_values(&[name, "model"])
            .set(n.locked_model);
        if let Some(b) = n.memlock_limit {
            limit.with_label_values(&l).set(b);
        }
        uncharged.with_label_values(&l).set(n.uncharged);
        shortfall.with_label_values(&l).set(n.shortfall);
    }
}

/// The zero page: its refcount, the headroom before overflow, and the
/// references nobody the agent saw took.
fn zero_page(r: &Registry, v: &Verdicts) {
    let refcount = gauge(
        r,
        "vfio_zp_zero_page_refcount",
        "The 4 KiB zero page's _refcount.",
        &[],
    );
    let headroom = gauge(
        r,
        "vfio_zp_zero_page_refcount_headroom_pins",
        "Zero-page pins left before its _refcount overflows.",
        &[],
    );
    let unexplained = gauge(
        r,
        "vfio_zp_zero_page_unexplained_pins",
        "Pins' worth of the zero page's references held by nobody the agent saw: \
         references beyond 1 + 1024 x the live pins seen, / 1024, never negative. \
         On a kernel whose GUP refcounts the zero page: a leak from before the agent started.",
        &[],
    );
    if let (Some(rc), Some(h)) = (v.host.zero_page_refcount, v.host.headroom_pins) {
        refcount.with_label_values::<&str>(&[]).set(rc);
        headroom.with_label_values::<&str>(&[]).set(h);
    }
    if let Some(u) = v.host.unexplained_pins {
        unexplained.with_label_values::<&str>(&[]).set(u);
    }
}

/// The kernel behaviour the model inferred, as labels.
fn behaviour(r: &Registry, v: &Verdicts) {
    let flag = |name: &str| {
        v.behaviour
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.value.to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    gauge(
        r,
        "vfio_zp_kernel_behaviour_info",
        "The kernel behaviour the agent inferred (labels), always 1.",
        &[
            "gup_pins_zero_page",
            "type1_unpins_zero_page",
            "ro_longterm_unshares",
        ],
    )
    .with_label_values(&[
        &flag("gup_pins_zero_page"),
        &flag("type1_unpins_zero_page"),
        &flag("ro_longterm_unshares"),
    ])
    .set(1);
}

/// Each probe point's state.
fn probes(r: &Registry, s: &Snapshot) {
    let attached = gauge(
        r,
        "vfio_zp_probe_attached",
        "1 when the probe point is attached.",
        &["probe"],
    );
    let state = gauge(
        r,
        "vfio_zp_probe_state",
        "1 for the probe point's current state (attached, missing, not_traceable, \
         module_not_loaded, failed, not_needed), 0 for the others.",
        &["probe", "state"],
    );
    const STATES: [ProbeState; 6] = [
        ProbeState::Attached,
        ProbeState::Missing,
        ProbeState::NotTraceable,
        ProbeState::ModuleNotLoaded,
        ProbeState::Failed,
        ProbeState::NotNeeded,
    ];
    for p in &s.probes {
        attached
            .with_label_values(&[&p.probe])
            .set((p.state == ProbeState::Attached) as i64);
        for st in STATES {
            let name = serde_json::to_value(st).unwrap_or_default();
            state
                .with_label_values(&[&p.probe, name.as_str().unwrap_or("unknown")])
                .set((p.state == st) as i64);
        }
    }
}

/// Exact probe runs, and what was lost or missed.
fn events(r: &Registry, s: &Snapshot) {
    let events = counter(
        r,
        "vfio_zp_events_total",
        "Calls seen per probe (exact, kernel-side); a type1 pin or unpin call, \
         and the zero-page unpins inside a pin call, count when it returns.",
        &["probe"],
    );
    for (p, n) in &s.hits {
        events.with_label_values(&[p]).inc_by(*n);
    }
    counter(
        r,
        "vfio_zp_events_lost_total",
        "Events lost: ring buffer full, or a return probe missed because every \
         kretprobe instance was busy (exact counters are not lost).",
        &[],
    )
    .with_label_values::<&str>(&[])
    .inc_by(s.drops.values().sum::<u64>() + s.misses.values().sum::<u64>());
    let missed = counter(
        r,
        "vfio_zp_probe_missed_total",
        "Return-probe runs missed per probe (kretprobe maxactive exhausted); \
         0 for entry-only probes and where the kernel does not report misses.",
        &["probe"],
    );
    for p in s.hits.keys().chain(s.misses.keys()) {
        missed
            .with_label_values(&[p])
            .inc_by(s.misses.get(p).copied().unwrap_or(0));
    }
}

/// A counter per divergence kind, 0 for the kinds not seen, so every
/// series exists from the first scrape.
fn per_kind(r: &Registry, name: &str, help: &str, seen: &BTreeMap<String, DivergenceCount>) {
    let c = counter(r, name, help, &["kind"]);
    for kind in crate::model::DIVERGENCES {
        let n = seen.get(kind.label()).map(|d| d.count).unwrap_or(0);
        c.with_label_values(&[kind.label()]).inc_by(n);
    }
}

/// The model's own accounts: uncharges after exit, divergences, and the
/// build.
fn model(r: &Registry, s: &Snapshot) {
    let v = &s.verdicts;
    counter(
        r,
        "vfio_zp_uncharges_after_exit_total",
        "Uncharges type1 made after the process's mm was gone (vfio_lock_acct \
         -ESRCH): VMMs that exited with DMA mappings live, the ordinary VM exit; \
         their locked_vm went with the process.",
        &[],
    )
    .with_label_values::<&str>(&[])
    .inc_by(v.host.uncharges_after_exit);
    per_kind(
        r,
        "vfio_zp_model_divergence_total",
        "Events the kernel reported otherwise than the model predicted, per kind.",
        &v.divergences,
    );
    per_kind(
        r,
        "vfio_zp_model_divergence_set_aside_total",
        "Divergences found where events were lost (or the agent was not running) \
         since the records they rest on, per kind: the losses may explain them, so \
         they are not in vfio_zp_model_divergence_total.",
        &v.divergences_set_aside,
    );
    gauge(
        r,
        "vfio_zp_build_info",
        "vfio-zp's version, always 1.",
        &["version"],
    )
    .with_label_values(&[&s.agent_version])
    .set(1);
}
