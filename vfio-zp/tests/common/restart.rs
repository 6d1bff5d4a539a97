//! The lab's restart checks (issue: survive faults): a VM holds a mapping
//! while the agent is stopped with SIGTERM and restarted, then killed with
//! SIGKILL and restarted; the VM unmaps under the third agent. Each
//! restarted agent must report the totals of the one before, match the
//! unpins to the mappings the first one saw, and say what it did not see.
//! Before that, pins left by another build must be found and removed.
use std::path::Path;

use vfio_zp::{export::snapshot::Snapshot, model::verdict::Leak};

/// A first load attaches by name, trying clone suffixes (a reload reuses
/// known symbols). Resolving through all of /proc/kallsyms instead took
/// 11.5 s on 5.10 under TCG, which is why it is not done first any more;
/// but by name measured 0.8-4.1 s with a second guest on the host, too
/// spread for a time to tell that regression apart. So the path is checked
/// from the agent's log, and the bound (as hardening::TCG_REATTACH) only
/// catches an attach that waits for something other than the module poll.
const TCG_FIRST_LOAD: f64 = 15.0;
/// The agent's log line for a load attached by name.
const ATTACHED_BY_NAME: &str = "probes attached by name";

fn snapshot(dir: &Path, f: &str) -> Result<Snapshot, String> {
    let text = std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{f}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{f}: {e}"))
}

pub fn check(kernel: &str, dir: &Path) -> Vec<String> {
    // 6.12 and later unshare read-only long-term pins (no zero page is
    // pinned); the 5.10 kernels and 6.1 pin it; only 5.10-leaky leaks it.
    let zero_pins_expected = !super::unshares(kernel);
    let leaky = kernel == "5.10-leaky";
    let mut bad = Vec::new();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let mut fail = |m: String| bad.push(format!("{kernel}: restart: {m}"));

    // Another build's pins: there before, gone after, and said so.
    let before = read(super::outputs::PINS_BEFORE);
    let after = read(super::outputs::PINS_AFTER);
    let ours: Vec<&str> = after.split_whitespace().collect();
    if !before.contains("0ld-build")
        || after.contains("0ld-build")
        || ours.len() != 1
        || ours[0].len() != 12
    {
        fail(format!(
            "pins of the older build not replaced by this build's: before {before:?}, after {after:?}"
        ));
    }
    // Started before vfio_iommu_type1 was loaded: detached, then attached
    // within moments of the load.
    if !read(super::outputs::LATE_STATE_BEFORE).contains("module_not_loaded") {
        fail(format!(
            "type1_pin before the late load: {:?} (want module_not_loaded)",
            read(super::outputs::LATE_STATE_BEFORE)
        ));
    }
    if let Err(e) = super::hardening::timed(
        kernel,
        &read(super::outputs::LATE_LOAD_UPTIME),
        "type1 loaded after the agent started, to attached",
        2.0,
        TCG_FIRST_LOAD,
    ) {
        fail(e);
    }
    if !read(super::outputs::AGENT_1_LOG).contains(ATTACHED_BY_NAME) {
        fail(format!(
            "agent-1.log has no \"{ATTACHED_BY_NAME}\" for the late type1 load"
        ));
    }
    // SIGTERM to the agent holding a VM's model: out (probes detached,
    // checkpoint written; the restore below proves the latter) in time.
    if let Err(e) = super::hardening::timed(
        kernel,
        &read(super::outputs::AGENT_STOP_UPTIME),
        "agent SIGTERM to exit (detach + checkpoint)",
        1.0,
        super::hardening::TCG_STOP,
    ) {
        fail(e);
    }
    let left =
        super::hardening::our_return_probes(&read(super::outputs::KPROBE_EVENTS_AFTER_AGENT_STOP));
    if left != 0 {
        fail(format!(
            "{left} return probes left in kprobe_events after the agent's SIGTERM"
        ));
    }
    let log1 = read(super::outputs::AGENT_1_LOG);
    for said in [
        "removed maps pinned by another vfio-zp build (0ld-build)",
        "kept state is from another vfio-zp build (0ld-build",
    ] {
        if !log1.contains(said) {
            fail(format!("agent-1.log does not say {said:?}"));
        }
    }
    for f in [
        super::outputs::AGENT_OLD_LOG,
        super::outputs::AGENT_1_LOG,
        super::outputs::AGENT_2_LOG,
        super::outputs::AGENT_3_LOG,
        super::outputs::RESTART_1,
        super::outputs::RESTART_FINAL,
    ] {
        if let Some(t) = super::hardening::kernel_address(&read(f)) {
            fail(format!("{f} holds a kernel address: {t}"));
        }
    }
    if !read(super::outputs::STATE_DIR).contains("checkpoint.json") {
        fail(format!(
            "no checkpoint kept: {}",
            read(super::outputs::STATE_DIR)
        ));
    }

    let snaps: Vec<(&str, Result<Snapshot, String>)> = [
        super::outputs::RESTART_1,
        super::outputs::RESTART_2,
        super::outputs::RESTART_3,
        super::outputs::RESTART_FINAL,
    ]
    .into_iter()
    .map(|f| (f, snapshot(dir, f)))
    .collect();
    let mut ok = Vec::new();
    for (f, s) in snaps {
        match s {
            Ok(s) => ok.push((f, s)),
            Err(e) => fail(e),
        }
    }
    if ok.len() != 4 {
        return bad;
    }
    let vm = |s: &Snapshot| {
        s.verdicts
            .containers
            .iter()
            .find(|c| c.name == "restart")
            .cloned()
    };
    let (first, rest) = (&ok[0].1, &ok[1..]);
    let Some(held) = vm(first) else {
        fail(format!(
            "restart-1.json has no container named restart: {:?}",
            first.verdicts.containers
        ));
        return bad;
    };
    // Issue 15, case 3: the first agent of this build starts with nothing
    // kept, after the matrix's workloads (on 5.10-leaky: hundreds of pins
    // leaked). What it never saw taken is said at once: the kcore reading
    // the workload took before its map, less the base, in whole pins.
    let truth_before =
        serde_json::from_str::<serde_json::Value>(&read(super::outputs::RESTART_TRUTH))
            .ok()
            .and_then(|t| t["refcount_before"].as_i64());
    let want = truth_before.map(|r| (r - 1).max(0) / 1024);
    if first.verdicts.host.unexplained_pins != want {
        fail(format!(
            "restart-1.json: {:?} pins held by nobody seen, the kernel's refcount {truth_before:?} before the map says {want:?}",
            first.verdicts.host.unexplained_pins
        ));
    }
    let said = read(super::outputs::AGENT_1_LOG)
        .contains("pins' worth of references nobody vfio-zp saw take");
    if said != want.is_some_and(|w| w > 0) {
        fail(format!(
            "agent-1.log: the start-up line on unexplained pins is {}, {want:?} of them",
            if said { "there" } else { "missing" }
        ));
    }
    if first.continuity.as_ref().is_none_or(|c| c.restored) {
        fail(format!(
            "the first agent claims a restore: {:?}",
            first.continuity
        ));
    }
    if zero_pins_expected != (held.zero_page_pins_total > 0) {
        fail(format!(
            "zero-page pins while mapped: {} (expected {})",
            held.zero_page_pins_total,
            if zero_pins_expected { "some" } else { "none" }
        ));
    }
    let total_pinned = |c: &vfio_zp::model::verdict::ContainerVerdict| c.pinned_pages.total();
    if total_pinned(&held) <= 0 {
        fail(format!(
            "nothing pinned while the VM held its mapping: {:?}",
            held.pinned_pages
        ));
    }

    // Agents 2 (after SIGTERM) and 3 (after SIGKILL) while the VM holds.
    for (f, s) in &rest[..2] {
        let c = s.continuity.clone().unwrap_or_default();
        if !c.restored || c.pinned_maps_reused != vfio_zp::probes::pins::PINNED_MAPS {
            fail(format!(
                "{f}: not restored from the kept state and pins: {c:?}"
            ));
        }
        if c.unwatched_s.is_none_or(|d| d <= 0.0) {
            fail(format!(
                "{f}: the time no agent watched is not reported: {c:?}"
            ));
        }
        match vm(s) {
            None => fail(format!("{f}: the held VM is gone")),
            Some(v) => {
                let same = (
                    v.id,
                    v.zero_page_pins_total,
                    v.zero_page_pins_live,
                    v.pinned_pages,
                ) == (
                    held.id,
                    held.zero_page_pins_total,
                    held.zero_page_pins_live,
                    held.pinned_pages,
                );
                if !same {
                    fail(format!(
                        "{f}: totals differ from before the restart: id {} pins {}/{} live, pinned {:?}; before: id {} pins {}/{} live, pinned {:?}",
                        v.id,
                        v.zero_page_pins_total,
                        v.zero_page_pins_live,
                        v.pinned_pages,
                        held.id,
                        held.zero_page_pins_total,
                        held.zero_page_pins_live,
                        held.pinned_pages
                    ));
                }
            }
        }
        // The kernel-side counters carried over, nothing double-counted:
        // no type1 pin happened while the VM held its mapping.
        for (probe, n) in &first.hits {
            let now = s.hits.get(probe).copied().unwrap_or(0);
            if now < *n || (probe.starts_with("type1_pin") && now != *n) {
                fail(format!("{f}: {probe} runs {now}, before the restart {n}"));
            }
        }
    }

    // The VM unmapped under the third agent: every unpin matched a mapping
    // the first agent saw, and the verdict says what may have gone unseen.
    let (f, last) = &rest[2];
    let Some(v) = vm(last) else {
        fail(format!("{f}: the VM is gone"));
        return bad;
    };
    if v.open || v.pinned_pages.total() != 0 || v.id != held.id {
        fail(format!(
            "{f}: after the unmap and close: open {}, pinned {:?}, id {} (was {})",
            v.open, v.pinned_pages, v.id, held.id
        ));
    }
    if v.zero_page_pins_total != held.zero_page_pins_total {
        fail(format!(
            "{f}: zero-page pins {} after the unmap, {} while mapped",
            v.zero_page_pins_total, held.zero_page_pins_total
        ));
    }
    // Counted or set aside: the restarts' gaps are blind windows, so a
    // mapping lost across a restart would be set aside, not counted.
    let unknown: u64 = [
        &last.verdicts.divergences,
        &last.verdicts.divergences_set_aside,
    ]
    .iter()
    .filter_map(|m| m.get("unknown_mapping"))
    .map(|d| d.count)
    .sum();
    if unknown != 0 {
        fail(format!(
            "{f}: {unknown} unpins of mappings the agents never saw (counted or set aside)"
        ));
    }
    let truth: serde_json::Value =
        serde_json::from_str(&read(super::outputs::RESTART_TRUTH)).unwrap_or_default();
    let grew = truth["refcount_after"]
        .as_i64()
        .zip(truth["refcount_before"].as_i64());
    match (leaky, v.leak) {
        (true, Leak::Leaking) => {
            let want = grew.map(|(a, b)| (a - b) / 1024);
            if want != Some(v.zero_page_pins_leaked) {
                fail(format!(
                    "{f}: leaked {} pins, the refcount grew by {want:?} pins",
                    v.zero_page_pins_leaked
                ));
            }
            if !v.leak_reason.contains("not running") {
                fail(format!(
                    "{f}: the leak's count does not say it is a lower bound: {}",
                    v.leak_reason
                ));
            }
        }
        (false, Leak::Leaking) | (true, _) => {
            fail(format!("{f}: leak verdict {:?}: {}", v.leak, v.leak_reason))
        }
        // Open across two restarts: pins or unpins may have gone unseen,
        // and the verdict says so rather than guessing.
        (false, l) => {
            if l != Leak::Uncertain || !v.leak_reason.contains("not running") {
                fail(format!("{f}: {l:?} (want uncertain): {}", v.leak_reason));
            }
        }
    }
    bad
}
