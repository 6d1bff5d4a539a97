//! The lab's fault and hardening checks (issue: survive faults, bad input and
//! load): capabilities after attach, /metrics under load and bad requests,
//! SIGTERM timing and final flush, stale return probes after SIGKILL, and no
//! kernel address in anything the agent writes.
use std::path::Path;

use caps::Capability;
use vfio_zp::stream::{Line, ProbeState, read_path};

/// Return programs, each one tracefs event per agent (probes/probe_points.rs).
const RETURN_PROBES: usize = 8;

/// Time bounds in the lab. The targets (1 s from SIGTERM to exit, 2 s from a
/// type1 load to attached) are for real hosts; the lab guest is emulated
/// (TCG), where every kprobe arm and disarm patches code and waits for RCU:
/// measured 0.5-1.2 s to stop on 5.10. Re-attaching measured 1.2-1.6 s with
/// the host's other core idle or busy, and 3.9-6.1 s with a second lab guest
/// on it (the same code; the agent's own share 0.5-4 s): too spread for a
/// time to tell a regression from a busy host. So the re-attach is checked
/// by how it happened (at the previous symbols, without re-reading
/// kallsyms, whose regression took 9 s), and its bound only catches a
/// re-attach that waits for something other than the 100 ms module poll.
pub const TCG_STOP: f64 = 3.0;
pub const TCG_REATTACH: f64 = 15.0;
/// The agent's log line for a reload re-attached at the previous symbols.
const REATTACHED_FAST: &str = "re-attached at their previous symbols";
/// The agent's log line for a reload it saw only as a new module instance
/// (reload-type1.sh's second reload, made while the recorder was stopped).
const RELOAD_UNSEEN: &str = "reloaded between two looks at /sys/module";

pub fn check(kernel: &str, dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let mut fail = |m: String| bad.push(format!("{kernel}: {m}"));

    // Capabilities: every thread of the running recorder holds exactly the
    // set probes/privileges.rs documents for kernels with CAP_BPF (5.8+):
    // CAP_SYS_ADMIN too where perf_event_paranoid > 2 (Debian's default).
    let paranoid: i32 = read(super::outputs::PERF_EVENT_PARANOID)
        .trim()
        .parse()
        .unwrap_or(3);
    let mut kept = vec![
        Capability::CAP_BPF,
        Capability::CAP_PERFMON,
        Capability::CAP_SYSLOG,
    ];
    if paranoid > 2 {
        kept.push(Capability::CAP_SYS_ADMIN);
    }
    let want = kept.iter().fold(0u64, |m, c| m | c.bitmask());
    let caps = read(super::outputs::RECORDER_CAPEFF);
    let effs: Vec<u64> = caps
        .lines()
        .filter_map(|l| u64::from_str_radix(l.strip_prefix("CapEff:")?.trim(), 16).ok())
        .collect();
    // The event thread keeps exactly `want`; no thread holds more (the
    // HTTP thread holds nothing).
    if !effs.contains(&want) || effs.iter().any(|e| e & !want != 0) {
        fail(format!(
            "recorder capabilities after attach {effs:x?}, want {want:x} at most on every thread and exactly on one"
        ));
    }
    if !effs.contains(&0) {
        fail(format!(
            "recorder capabilities after attach {effs:x?}: the HTTP thread should hold none"
        ));
    }

    // /metrics under load from a second process, while workloads ran.
    let wrk = read(super::outputs::WRK);
    let rps: f64 = wrk
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    if rps <= 0.0 || wrk.contains("Non-2xx") {
        fail(format!("load test on /metrics: {rps} requests/s\n{wrk}"));
    }
    // hyper answers an unparseable request with 400 or just closes.
    let garbage = read(super::outputs::HTTP_GARBAGE);
    if !(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400")) {
        fail(format!(
            "garbage request answered {:?}",
            garbage.lines().next()
        ));
    }
    for (f, status) in [
        (super::outputs::HTTP_POST, "405"),
        (super::outputs::HTTP_404, "404"),
    ] {
        let got = read(f);
        if !got.contains(&format!("HTTP/1.1 {status}")) {
            fail(format!(
                "{f}: expected {status}, got {:?}",
                got.lines().next()
            ));
        }
    }
    if read(super::outputs::HEALTHZ_AFTER).trim().is_empty() {
        fail("/healthz did not answer after the bad requests".into());
    }

    // SIGTERM: out within a second, with the final counters written.
    if let Err(e) = timed(
        kernel,
        &read(super::outputs::STOP_UPTIME),
        "SIGTERM to exit",
        1.0,
        TCG_STOP,
    ) {
        fail(e);
    }
    // vfio_iommu_type1 unloaded and reloaded mid-matrix: seen detached, then
    // attached within 2 s of the load (the later scenarios check the counts).
    if !read(super::outputs::TYPE1_STATE_UNLOADED).contains("module_not_loaded") {
        fail(format!(
            "type1 unload not seen in the snapshot: {:?}",
            read(super::outputs::TYPE1_STATE_UNLOADED)
        ));
    }
    if let Err(e) = timed(
        kernel,
        &read(super::outputs::REATTACH_UPTIME),
        "type1 loaded to probes attached",
        2.0,
        TCG_REATTACH,
    ) {
        fail(e);
    }
    if !read(super::outputs::RECORDER_LOG).contains(REATTACHED_FAST) {
        fail(format!(
            "the recorder's log has no \"{REATTACHED_FAST}\" for the type1 reload: it took the slow path (kallsyms) or never re-attached"
        ));
    }
    if read(super::outputs::RECORDER_LOG)
        .matches(RELOAD_UNSEEN)
        .count()
        != 1
    {
        fail(format!(
            "the recorder's log does not say once \"{RELOAD_UNSEEN}\": the reload made while it was stopped went unnoticed (its type1 probes stay on the unloaded module)"
        ));
    }
    match read_path(&dir.join(super::outputs::RECORDING)) {
        Ok(r) => {
            let type1_pin = |l: &Line| match l {
                Line::Probes(p) => p
                    .probes
                    .iter()
                    .find(|s| s.probe == "type1_pin")
                    .map(|s| s.state),
                _ => None,
            };
            let states: Vec<ProbeState> = r.lines.iter().filter_map(type1_pin).collect();
            if !states
                .windows(2)
                .any(|w| w == [ProbeState::ModuleNotLoaded, ProbeState::Attached])
            {
                fail(format!(
                    "recording's probe changes for type1_pin: {states:?}, want detach then attach"
                ));
            }
            if !matches!(r.lines.last(), Some(Line::Counters(c)) if c.last) {
                fail("recording does not end with the final counters".into());
            }
            if r.header.zero_pfn != 0 {
                fail("recording header holds the zero page's real pfn".into());
            }
        }
        Err(e) => fail(format!("recording: {e}")),
    }

    // Return probes: gone after a clean stop; left by SIGKILL; removed by
    // the next start.
    let ours = |f: &str| our_return_probes(&read(f));
    if ours(super::outputs::KPROBE_EVENTS_AFTER_STOP) != 0 {
        fail("return probes left in kprobe_events after SIGTERM".into());
    }
    if ours(super::outputs::KPROBE_EVENTS_AFTER_KILL) != RETURN_PROBES {
        fail(format!(
            "after SIGKILL {} return probes in kprobe_events, want the {RETURN_PROBES} it made",
            ours(super::outputs::KPROBE_EVENTS_AFTER_KILL)
        ));
    }
    if ours(super::outputs::KPROBE_EVENTS_FINAL) != 0
        || !read(super::outputs::TOP_LOCAL)
            .contains(&format!("removed {RETURN_PROBES} return probes"))
    {
        fail("the next start did not remove the killed agent's return probes".into());
    }

    // No kernel address in anything the agent writes or serves.
    for f in [
        super::outputs::RECORDING,
        super::outputs::VERDICTS,
        super::outputs::METRICS,
        super::outputs::SNAPSHOT,
        super::outputs::RECORDER_LOG,
        super::outputs::TOP,
        super::outputs::TOP_LOCAL,
    ] {
        if let Some(t) = kernel_address(&read(f)) {
            fail(format!("{f} holds a kernel address: {t}"));
        }
    }
    bad
}

/// Checks a `T0 T1` pair of guest uptimes against the lab bound, printing
/// the figure next to the real-host target either way.
/// The agent's return probes in a copy of tracefs `kprobe_events`.
pub fn our_return_probes(kprobe_events: &str) -> usize {
    kprobe_events
        .lines()
        .filter(|l| l.contains(":vfio_zp/"))
        .count()
}

pub fn timed(kernel: &str, text: &str, what: &str, target: f64, bound: f64) -> Result<(), String> {
    let t: Vec<f64> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [t0, t1] = t[..] else {
        return Err(format!("{what}: timing missing ({text:?})"));
    };
    println!(
        "{kernel}: {what} {:.2} s (target {target} s on a real host; lab bound {bound} s under TCG)",
        t1 - t0
    );
    if t1 - t0 > bound {
        return Err(format!("{what} took {:.2} s", t1 - t0));
    }
    Ok(())
}

/// The first token that looks like an x86-64 kernel address, in hex or decimal.
pub fn kernel_address(text: &str) -> Option<&str> {
    const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;
    text.split(|c: char| !c.is_ascii_alphanumeric()).find(|t| {
        let hex = t.strip_prefix("0x").unwrap_or(t);
        (hex.len() == 16 && u64::from_str_radix(hex, 16).is_ok_and(|v| v >= KERNEL_HALF))
            || t.parse::<u64>().is_ok_and(|v| v >= KERNEL_HALF)
    })
}

#[test]
fn kernel_addresses_are_recognised() {
    assert_eq!(
        kernel_address("at ffffffffc0a01230 t vfio"),
        Some("ffffffffc0a01230")
    );
    assert_eq!(
        kernel_address("\"dma\":18446744072635809840,"),
        Some("18446744072635809840")
    );
    assert_eq!(
        kernel_address("0xffff888003a1c000"),
        Some("0xffff888003a1c000")
    );
    // User addresses, pfns, times and hashes are not.
    assert_eq!(
        kernel_address("vaddr 139694780186624 pfn 10763 t 93890194430 00007f0012345678"),
        None
    );
}
