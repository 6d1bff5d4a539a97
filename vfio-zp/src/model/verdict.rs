//! Answers from the model: per container, per process (memlock) and for the
//! host. Only event time is used, so replay prints what live printed.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::behaviour::{Source, TRAITS, Trait, TraitReport};
use super::ledger::{Container, Pages};
use super::refcount::{BASE_REFS, Overclaim, PIN_BIAS, REFCOUNT_MAX, ReadingSource};
use super::workload::{Workload, classify};
use super::{DivergenceCount, Model, UNATTRIBUTED};
use crate::stream::event::Id;
use crate::stream::{ProbeState, event::Memlock};

const PAGE: i64 = 4096;
/// Probes without which a leak can be missed.
const LEAK_PROBES: [&str; 5] = [
    "type1_pin",
    "gup_pin_remote",
    "gup_unpin_page",
    "gup_unpin_pages",
    "gup_unpin_pages_dirty",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdicts {
    /// Event time (CLOCK_MONOTONIC ns) the verdicts describe.
    pub t_ns: u64,
    pub kernel_release: String,
    pub kernel_version: Option<String>,
    pub behaviour: Vec<TraitReport>,
    pub host: Host,
    pub containers: Vec<ContainerVerdict>,
    pub processes: Vec<MemlockAdvice>,
    pub divergences: BTreeMap<String, DivergenceCount>,
    /// Divergences found where records were lost (or the agent was not
    /// running) since what they rest on: the losses may explain them, so
    /// they are not counted as the kernel's doing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub divergences_set_aside: BTreeMap<String, DivergenceCount>,
    pub coverage: Coverage,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// The zero page's `_refcount`: the latest reading, moved by the pins
    /// seen since (None before any reading).
    pub zero_page_refcount: Option<i64>,
    pub refcount_read_by: Option<String>,
    pub refcount_read_at_ns: Option<u64>,
    /// The part the pins vfio-zp saw explain: 1 + 1024 per live pin.
    pub explained_refs: i64,
    pub unexplained_refs: Option<i64>,
    /// Whole pins' worth of references held by nobody vfio-zp saw (pins
    /// from before it started, or other kernel users): `unexplained_refs`
    /// / 1024, rounded down, never negative.
    #[serde(default)]
    pub unexplained_pins: Option<i64>,
    pub unexplained_note: Option<String>,
    /// GUP pins of the zero page held right now, all holders seen.
    pub zero_page_pins_live: i64,
    /// Of those, taken outside type1 (other pin_user_pages users).
    pub other_zero_page_pins_live: i64,
    pub zero_page_pins_leaked: i64,
    /// Further pins before `_refcount` overflows.
    pub headroom_pins: Option<i64>,
    pub leak_rate_pins_per_s: f64,
    pub overflow_eta_s: Option<f64>,
    /// Uncharges type1 made after their process's mm was gone: VMMs that
    /// exited with mappings live (their locked_vm went with the mm).
    #[serde(default)]
    pub uncharges_after_exit: u64,
    /// Set when the latest settled refcount reading cannot hold the pins
    /// the model counted then: no leak is claimed while it stands.
    #[serde(default)]
    pub overclaim: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Leak {
    None,
    Leaking,
    /// Events were lost or a probe needed for the verdict is not attached.
    Uncertain,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    pub dma: Id,
    pub iova: Option<u64>,
    pub size: Option<u64>,
    pub vaddr: u64,
    pub read_only: Option<bool>,
    pub pinned_pages: Pages,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerVerdict {
    /// Small stable id of the VFIO container (never a kernel address).
    pub id: Id,
    /// The attributed name: VM, pod, container, unit or cgroup path.
    pub name: String,
    pub workload: Option<Workload>,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    pub tgid: u32,
    pub comm: String,
    pub open: bool,
    pub mappings: Vec<Mapping>,
    /// Pages type1 holds, by class.
    pub pinned_pages: Pages,
    /// GUP zero-page pins taken for it since vfio-zp started.
    pub zero_page_pins_total: u64,
    /// Of those, still holding 1024 references each.
    pub zero_page_pins_live: i64,
    pub zero_page_pins_leaked: i64,
    pub huge_zero_page_pins_live: i64,
    /// Pins' worth of refcount growth at its type1 zero-page pins that no
    /// GUP pin seen explains.
    #[serde(default)]
    pub unseen_pins: i64,
    pub leak: Leak,
    pub leak_reason: String,
    pub leak_rate_pins_per_s: f64,
    pub locked_vm_pages_kernel: i64,
    pub locked_vm_pages_model: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemlockAdvice {
    pub tgid: u32,
    pub comm: String,
    pub name: String,
    pub memlock: Memlock,
    pub cap_ipc_lock: bool,
    /// locked_vm type1 charged (vfio_lock_acct) and the model's prediction.
    pub locked_vm_bytes_kernel: i64,
    pub locked_vm_bytes_model: i64,
    /// DMA-mapped bytes backed by the zero page, which this kernel does not charge.
    pub uncharged_zero_page_bytes: i64,
    /// The most this process would have had locked had they been charged.
    pub peak_if_charged_bytes: i64,
    pub would_exceed_if_charged: Option<bool>,
    pub shortfall_bytes: i64,
    /// On kernels that unshare: bytes pinned by read-only long-term pins,
    /// an upper bound of the pages allocated in place of the zero page.
    pub ro_longterm_pinned_bytes: Option<i64>,
    pub refusals: u64,
    pub advice: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub events: u64,
    pub events_lost: u64,
    pub probes_not_attached: Vec<String>,
    /// GUP calls of more than 512 pages (only the first 512 inspected).
    pub truncated_scans: u64,
    pub uncertain: Option<String>,
}

impl Model {
    fn name_of(&self, cgroup_id: u64) -> (String, Option<Workload>, Option<String>) {
        match self.cgroups.get(&cgroup_id) {
            Some(path) => {
                let w = classify(path);
                (w.name(), Some(w), Some(path.clone()))
            }
            None => (format!("cgroup:{cgroup_id}"), None, None),
        }
    }

    fn leaked(&self, c: &Container) -> i64 {
        if !self.behaviour.get(Trait::GupPinsZeroPage) || c.zero_pins_survived <= 0 {
            return 0;
        }
        // Unreleasable by the running code, or no longer reachable.
        if self.behaviour.get(Trait::PutPfnSkipsReserved) || c.pinned.zero <= 0 {
            c.zero_pins_survived
        } else {
            0
        }
    }

    fn rate(&self, c: &Container) -> f64 {
        if !self.behaviour.get(Trait::GupPinsZeroPage) {
            return 0.0;
        }
        let from = self.now.saturating_sub(self.cfg.rate_window_ns);
        let pins: i64 = c
            .recent
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|(_, n)| n)
            .sum();
        (pins.max(0) as f64) / (self.cfg.rate_window_ns as f64 / 1e9)
    }

    fn probes_missing(&self) -> Option<String> {
        let missing: Vec<&str> = LEAK_PROBES
            .iter()
            .copied()
            .filter(|p| match self.probes.get(*p) {
                Some(ProbeState::Attached) => false,
                // Left off because they cannot matter (needs.rs): missing
                // only once the kernel turns out to refcount the zero page.
                Some(ProbeState::NotNeeded) => self.unpins_not_needed().is_none(),
                _ => true,
            })
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "probes not attached: {} (pins or unpins may be unseen)",
                missing.join(", ")
            )
        })
    }

    /// The host-wide summary: any lost event, else any missing probe.
    fn uncertainty(&self) -> Option<String> {
        match self.events_lost {
            0 => self.probes_missing(),
            n => Some(format!(
                "{n} events lost (ring buffer full or return probes missed): counts may be short"
            )),
        }
    }

    /// Why this container's counts may be short: blind windows that
    /// overlap its life. Containers before or after them stay certain.
    fn blind_for(&self, c: &Container) -> Option<String> {
        let (from, to) = (c.opened_ns.unwrap_or(0), c.closed_ns.unwrap_or(u64::MAX));
        let mut lost = 0;
        let mut down_ns = 0;
        for w in self
            .blind
            .iter()
            .filter(|w| w.from_ns <= to && w.to_ns >= from)
        {
            match w.events {
                Some(n) => lost += n,
                None => down_ns += w.to_ns - w.from_ns,
            }
        }
        let mut why = Vec::new();
        if lost > 0 {
            why.push(format!(
                "{lost} events lost (ring buffer full or return probes missed) while it was active: counts may be short"
            ));
        }
        if down_ns > 0 {
            why.push(format!(
                "the agent was not running for {:.1}s while it was open: pins or unpins then were not seen",
                down_ns as f64 / 1e9
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    fn container_verdict(
        &self,
        c: &Container,
        missing: &Option<String>,
        overclaim: &Option<Overclaim>,
    ) -> ContainerVerdict {
        let blind = self.blind_for(c);
        let (name, workload, cgroup_path) = if c.id == UNATTRIBUTED {
            ("unattributed".into(), None, None)
        } else {
            self.name_of(c.cgroup_id)
        };
        let gup_pins = self.behaviour.get(Trait::GupPinsZeroPage);
        let mut leaked = self.leaked(c);
        // A lost pin record can leave more unpins than pins seen: never
        // shown below 0 (the verdict says records were lost).
        let live = if gup_pins {
            c.zero_pins_live().max(0)
        } else {
            0
        };
        let saw_zero = c.zero_pins_taken > 0 || c.pinned.zero > 0;
        let (leak, leak_reason) = if leaked > 0 {
            match (&blind, overclaim) {
                // The kernel's own count bounds every claim: a leak the
                // refcount cannot hold is no alarm, only said with both
                // figures.
                (_, Some(o)) => {
                    let mut reason = format!(
                        "{leaked} zero-page pins seen outliving their type1 calls, but {o}"
                    );
                    // The likeliest cause, when there was one: say it too.
                    if let Some(b) = &blind {
                        reason.push_str(&format!("; {b}"));
                    }
                    leaked = 0;
                    (Leak::Uncertain, reason)
                }
                // This kernel's type1 unpins them in the pin path, and the
                // events of those unpins may be among the lost ones: a
                // missing unpin is then no evidence of a leak.
                // Not counted as leaked (no alarm), only said.
                (Some(b), None) if self.behaviour.get(Trait::Type1UnpinsZeroPage) => {
                    let reason = format!(
                        "{leaked} zero-page pins seen outliving their type1 calls, but this kernel's type1 unpins them in the pin path and {b}: their unpins may be among the lost events"
                    );
                    leaked = 0;
                    (Leak::Uncertain, reason)
                }
                _ => {
                    let why = if self.behaviour.get(Trait::PutPfnSkipsReserved) {
                        "put_pfn() never releases the reserved zero page and type1 did not unpin it in the pin path"
                    } else {
                        "their mappings are gone"
                    };
                    let mut reason = format!(
                        "{leaked} zero-page pins outlived the type1 calls that took them and hold {} references for good: {why}",
                        leaked * PIN_BIAS
                    );
                    if let Some(b) = &blind {
                        reason.push_str(&format!(" (at least that many: {b})"));
                    }
                    (Leak::Leaking, reason)
                }
            }
        } else if c.unseen_pins > 0 {
            // The kernel's count rose at its pins with no GUP pin seen: a
            // path vfio-zp does not probe, or lost records. Never `none`.
            let mut reason = format!(
                "the zero page's refcount rose by {} pins' worth at its type1 zero-page pins, which no GUP pin seen explains (a pin path not probed, or lost records): it may be leaking",
                c.unseen_pins
            );
            if let Some(b) = &blind {
                reason.push_str(&format!("; {b}"));
            }
            (Leak::Uncertain, reason)
        } else if let Some(b) = &blind {
            // Lost events may have been its zero-page pins: no guessing.
            (Leak::Uncertain, b.clone())
        } else if let (Some(u), true) = (missing, saw_zero) {
            (Leak::Uncertain, u.clone())
        } else {
            let why = match () {
                _ if !saw_zero => "no zero-page pins",
                _ if !gup_pins => "this kernel's GUP takes no reference on the zero page",
                _ => "every zero-page pin was released in the pin path",
            };
            (Leak::None, why.into())
        };
        let mappings = c
            .dmas
            .iter()
            .filter_map(|id| self.dmas.get(id).map(|d| (id, d)))
            .map(|(id, d)| Mapping {
                dma: *id,
                iova: d.iova,
                size: d.size,
                vaddr: d.vaddr,
                read_only: d.read_only,
                pinned_pages: d.pinned,
            })
            .collect();
        ContainerVerdict {
            id: c.id,
            name,
            workload,
            cgroup_id: c.cgroup_id,
            cgroup_path,
            tgid: c.tgid,
            comm: c.comm.clone(),
            open: c.closed_ns.is_none(),
            mappings,
            pinned_pages: c.pinned,
            zero_page_pins_total: c.zero_pins_taken,
            zero_page_pins_live: live,
            zero_page_pins_leaked: leaked,
            huge_zero_page_pins_live: c.huge_zero_pins_live,
            unseen_pins: c.unseen_pins,
            leak,
            leak_reason,
            leak_rate_pins_per_s: if leaked > 0 { self.rate(c) } else { 0.0 },
            locked_vm_pages_kernel: c.locked_kernel,
            locked_vm_pages_model: c.locked_model,
        }
    }

    fn memlock_advice(&self, p: &super::ledger::Process) -> MemlockAdvice {
        let unshares = self.behaviour.get(Trait::RoLongtermUnshares);
        let peak = p.peak_if_charged * PAGE;
        let limit = match p.memlock {
            Memlock::Bytes(b) if !p.cap_ipc_lock => Some(b as i64),
            _ => None,
        };
        let would_exceed = limit.map(|l| peak > l || p.refusals > 0);
        let shortfall = limit.map(|l| (peak - l).max(0)).unwrap_or(0);
        let size = |b: i64| match b.unsigned_abs() {
            n if n >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
            n if n >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
            _ => format!("{} KiB", b / 1024),
        };
        let advice = match (p.memlock, p.cap_ipc_lock, would_exceed) {
            (_, true, _) => "CAP_IPC_LOCK: type1 charges locked_vm but never refuses".into(),
            (Memlock::Unlimited, ..) => "RLIMIT_MEMLOCK unlimited".into(),
            (Memlock::Unknown, ..) => {
                "RLIMIT_MEMLOCK unknown (process gone before it was read)".into()
            }
            _ if p.refusals > 0 => format!(
                "type1 refused to pin {} time(s): RLIMIT_MEMLOCK is {} short of the {} the mappings needed",
                p.refusals,
                size(shortfall),
                size(peak)
            ),
            (_, _, Some(true)) => format!(
                "would exceed RLIMIT_MEMLOCK by {} on a kernel that charges zero-page-backed DMA (read-only pins unshare and are charged from 6.2): raise it to at least {}",
                size(shortfall),
                size(peak)
            ),
            _ if unshares => format!(
                "fits; this kernel already charges read-only pins ({} pinned read-only)",
                size(p.ro_longterm_pinned * PAGE)
            ),
            _ => format!(
                "fits even if zero-page-backed DMA were charged (peak {})",
                size(peak)
            ),
        };
        MemlockAdvice {
            tgid: p.tgid,
            comm: p.comm.clone(),
            name: self.name_of(p.cgroup_id).0,
            memlock: p.memlock,
            cap_ipc_lock: p.cap_ipc_lock,
            locked_vm_bytes_kernel: p.locked_kernel * PAGE,
            locked_vm_bytes_model: p.locked_model * PAGE,
            uncharged_zero_page_bytes: p.zero_held * PAGE,
            peak_if_charged_bytes: peak,
            would_exceed_if_charged: would_exceed,
            shortfall_bytes: shortfall,
            ro_longterm_pinned_bytes: unshares.then_some(p.ro_longterm_pinned * PAGE),
            refusals: p.refusals,
            advice,
        }
    }

    pub fn verdicts(&self) -> Verdicts {
        let uncertain = self.uncertainty();
        let missing = self.probes_missing();
        let per_pin = self.per_pin();
        let overclaim = self.overclaim();
        let containers: Vec<ContainerVerdict> = self
            .containers
            .values()
            .map(|c| self.container_verdict(c, &missing, &overclaim))
            .collect();
        let live = if per_pin > 0 {
            self.zero.outstanding
        } else {
            0
        };
        let explained = BASE_REFS + per_pin * live;
        let refcount = self.zero.expected(per_pin);
        let unexplained = refcount.map(|r| r - explained);
        let unexplained_note = unexplained.filter(|u| *u != 0).map(|u| {
            format!(
                "{u} references (about {} pins) held by something vfio-zp did not see: pins taken before it started, or other kernel users",
                u / PIN_BIAS
            )
        });
        let leaked: i64 = containers.iter().map(|c| c.zero_page_pins_leaked).sum();
        // An empty f64 sum is -0.0; adding 0.0 makes it 0.0.
        let rate: f64 = containers
            .iter()
            .map(|c| c.leak_rate_pins_per_s)
            .sum::<f64>()
            + 0.0;
        let headroom = refcount.map(|r| ((REFCOUNT_MAX - r) / PIN_BIAS).max(0));
        let procs = self
            .procs
            .values()
            .filter(|p| {
                p.locked_kernel != 0
                    || p.peak_if_charged != 0
                    || p.refusals > 0
                    || p.ro_longterm_pinned > 0
            })
            .map(|p| self.memlock_advice(p))
            .collect();
        Verdicts {
            t_ns: self.now,
            kernel_release: self.kernel_release.clone(),
            kernel_version: self.behaviour.version.map(|v| v.to_string()),
            behaviour: TRAITS.iter().map(|t| self.behaviour.report(*t)).collect(),
            host: Host {
                zero_page_refcount: refcount,
                refcount_read_by: self.zero.last.map(|r| {
                    match r.source {
                        ReadingSource::Probe => "probe",
                        ReadingSource::Kcore => "kcore",
                    }
                    .into()
                }),
                refcount_read_at_ns: self.zero.last.map(|r| r.t_ns),
                explained_refs: explained,
                unexplained_refs: unexplained,
                unexplained_pins: unexplained.map(|u| u.max(0) / PIN_BIAS),
                unexplained_note,
                zero_page_pins_live: live,
                other_zero_page_pins_live: if per_pin > 0 { self.other_zero_pins } else { 0 },
                zero_page_pins_leaked: leaked,
                headroom_pins: headroom,
                leak_rate_pins_per_s: rate,
                overflow_eta_s: headroom.filter(|_| rate > 0.0).map(|h| h as f64 / rate),
                uncharges_after_exit: self.uncharges_after_exit,
                overclaim: overclaim.map(|o| o.to_string()),
            },
            containers,
            processes: procs,
            divergences: self
                .divergences
                .iter()
                .map(|(k, v)| (k.label().to_string(), v.clone()))
                .collect(),
            divergences_set_aside: self
                .divergences_set_aside
                .iter()
                .map(|(k, v)| (k.label().to_string(), v.clone()))
                .collect(),
            coverage: Coverage {
                events: self.events,
                events_lost: self.events_lost,
                probes_not_attached: self
                    .probes
                    .iter()
                    .filter(|(_, s)| **s != ProbeState::Attached)
                    .map(|(p, _)| p.clone())
                    .collect(),
                truncated_scans: self.truncated_scans,
                uncertain,
            },
        }
    }
}

/// Seconds for humans, to the second.
pub fn eta(secs: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

impl std::fmt::Display for Verdicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write_kernel(&mut s);
        self.write_zero_page(&mut s);
        self.write_containers(&mut s);
        self.write_memlock(&mut s);
        self.write_coverage(&mut s);
        writeln!(f, "{s}")
    }
}

/// The text `replay` and the agent print, one section each.
impl Verdicts {
    /// The kernel and the behaviour inferred of it.
    fn write_kernel(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "kernel {} ({})",
            self.kernel_release,
            self.kernel_version.as_deref().unwrap_or("version unknown")
        );
        for t in &self.behaviour {
            let src = match t.source {
                Source::Observed => "observed",
                Source::Prior => "prior",
                Source::Assumed => "assumed",
            };
            let _ = writeln!(
                s,
                "  {:<24} {:<3} {src}: {}",
                t.name,
                yes(t.value),
                t.evidence
            );
            if let Some(c) = &t.contradiction {
                let _ = writeln!(s, "  {:<24} ! {c}", "");
            }
        }
    }

    /// The zero page's refcount, what explains it, and the leak.
    fn write_zero_page(&self, s: &mut String) {
        let h = &self.host;
        match h.zero_page_refcount {
            Some(r) => {
                let _ = writeln!(
                    s,
                    "zero page: refcount {r} ({}), explained {} = 1 + 1024 x {} live pins, unexplained {}, headroom {} pins",
                    h.refcount_read_by.as_deref().unwrap_or("?"),
                    h.explained_refs,
                    h.zero_page_pins_live,
                    h.unexplained_refs.unwrap_or(0),
                    h.headroom_pins.unwrap_or(0)
                );
            }
            None => {
                let _ = writeln!(s, "zero page: refcount not read yet");
            }
        }
        if let Some(n) = &h.unexplained_note {
            let _ = writeln!(s, "  ! {n}");
        }
        if let Some(o) = &h.overclaim {
            let _ = writeln!(s, "  ! no leak claimed: {o}");
        }
        let _ = writeln!(
            s,
            "leaked pins: {} (rate {:.2}/s{})",
            h.zero_page_pins_leaked,
            h.leak_rate_pins_per_s,
            h.overflow_eta_s
                .map(|e| format!(", refcount overflow in {}", eta(e)))
                .unwrap_or_default()
        );
    }

    /// One row per VFIO container.
    fn write_containers(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "{:>4} {:<28} {:<22} {:>4} {:>7} {:>6} {:>7} {:>8} {:>15}  VERDICT",
            "ID",
            "CONTAINER",
            "PROCESS",
            "OPEN",
            "ZERO-PG",
            "LIVE",
            "LEAKED",
            "RATE/s",
            "LOCKED k/model"
        );
        for c in &self.containers {
            let _ = writeln!(
                s,
                "{:>4} {:<28} {:<22} {:>4} {:>7} {:>6} {:>7} {:>8.2} {:>15}  {:?}",
                c.id,
                c.name,
                format!("{}[{}]", c.comm, c.tgid),
                yes(c.open),
                c.pinned_pages.zero,
                c.zero_page_pins_live,
                c.zero_page_pins_leaked,
                c.leak_rate_pins_per_s,
                format!("{}/{}", c.locked_vm_pages_kernel, c.locked_vm_pages_model),
                c.leak
            );
        }
    }

    /// Each process's memlock account and advice.
    fn write_memlock(&self, s: &mut String) {
        if !self.processes.is_empty() {
            let _ = writeln!(s, "memlock:");
            for p in &self.processes {
                let _ = writeln!(
                    s,
                    "  {}[{}] {}: locked {} KiB (model {} KiB), zero-page DMA uncharged {} KiB: {}",
                    p.comm,
                    p.tgid,
                    p.name,
                    p.locked_vm_bytes_kernel / 1024,
                    p.locked_vm_bytes_model / 1024,
                    p.uncharged_zero_page_bytes / 1024,
                    p.advice
                );
            }
        }
    }

    /// Where the model and the kernel differed, and what the probes saw.
    fn write_coverage(&self, s: &mut String) {
        if self.divergences.is_empty() {
            let _ = writeln!(s, "model divergences: none");
        }
        for (k, d) in &self.divergences {
            let _ = writeln!(s, "model divergence {k}: {} (last: {})", d.count, d.last);
        }
        for (k, d) in &self.divergences_set_aside {
            let _ = writeln!(
                s,
                "model divergence {k} set aside (records lost): {} (last: {})",
                d.count, d.last
            );
        }
        let c = &self.coverage;
        let _ = write!(s, "coverage: {} events, {} lost", c.events, c.events_lost);
        if !c.probes_not_attached.is_empty() {
            let _ = write!(s, ", not attached: {}", c.probes_not_attached.join(", "));
        }
        if let Some(u) = &c.uncertain {
            let _ = write!(s, "\n  ! verdicts uncertain: {u}");
        }
    }
}
