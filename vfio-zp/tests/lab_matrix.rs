//! The VM-lab matrix, checked: each lab kernel's recording against the
//! kernel's own truth (zero page `_refcount` through /proc/kcore, pagemap,
//! VmLck) written by the workload for every scenario.
//!
//! `cargo xtask test` runs the guests and then this test with
//! VFIO_ZP_LAB_OUT=<dir with one subdirectory per kernel>. Without it the
//! test says loudly that it checked nothing.
mod common;

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use vfio_zp::{
    stream::event::{Event, PageClass, What, When},
    stream::{Line, ProbeState, Recording, read_path},
};

/// GUP_PIN_COUNTING_BIAS: what one FOLL_PIN of a small page adds to `_refcount`.
const PIN_BIAS: i64 = 1024;

#[derive(Debug, Deserialize)]
struct Truth {
    scenario: String,
    /// Zero page refcount before the first and after the last process.
    refcount_before: Option<i32>,
    refcount_after: Option<i32>,
    runs: Vec<RunTruth>,
}

#[derive(Debug, Deserialize)]
struct RunTruth {
    pid: u32,
    pages: u64,
    map_flags: u32,
    zero_backed_after_map: u64,
    huge_zero_backed_after_map: u64,
    refcount_before: Option<i32>,
    refcount_after_unmap: Option<i32>,
    vmlck_kb_after_map: Option<u64>,
    vmlck_kb_after_unmap: Option<u64>,
    cgroup_id: Option<u64>,
    errors: Vec<String>,
    #[serde(default)]
    map_error: Option<String>,
}

/// What each lab kernel does, from kernel-facts (measured) and the issue.
struct Behaviour {
    /// GUP takes 1024 references per zero-page pin (before c8070b787519).
    gup_refcounts_zero_page: bool,
    /// type1 releases those references (873aefb376bb) -- not on 5.10-leaky.
    type1_unpins_zero_page: bool,
}

fn behaviour(kernel: &str) -> Behaviour {
    match kernel {
        "5.10" => Behaviour {
            gup_refcounts_zero_page: true,
            type1_unpins_zero_page: true,
        },
        "5.10-leaky" => Behaviour {
            gup_refcounts_zero_page: true,
            type1_unpins_zero_page: false,
        },
        "6.1" | "6.12" | "6.18" | "7.3" => Behaviour {
            gup_refcounts_zero_page: false,
            type1_unpins_zero_page: true,
        },
        other => panic!("no expectations for lab kernel {other}"),
    }
}

/// Per-process sums over the recorded events.
#[derive(Debug, Default)]
struct Seen {
    type1_zero: i64,
    type1_huge_zero: i64,
    /// The huge-zero pfns in type1's pin and unpin runs (counted by the
    /// probes, each run against the huge zero page's pfn at the time).
    type1_huge_pinned: i64,
    type1_huge_unpinned: i64,
    gup_zero_pins: i64,
    gup_zero_unpins: i64,
    charged: i64,
    lock_acct_net: i64,
    events: usize,
    /// Every refcount the probes saw, with the pins outstanding in ring order.
    refcounts: Vec<Reading>,
    cgroups: Vec<u64>,
    containers: std::collections::BTreeSet<u32>,
    containers_missing: usize,
}

/// A probe's refcount reading at `at` in the event slice it was seen in.
#[derive(Debug, Clone, Copy)]
struct Reading {
    at: usize,
    pid: u32,
    /// Zero-page pins outstanding at this point of the ring's order.
    outstanding: i64,
    value: i32,
}

/// How many outstanding pins the ring's order may overstate, and how many
/// it may understate, at a reading: (unpins, pins) other threads' records
/// still defer.
///
/// A thread's zero-page unpins inside a pin call are folded (no refcount)
/// into the thread's next record, and on 5.10 its call's look-ahead pin
/// rides on the call's type1 pin (flag::CARRIES_PIN): they may have run in
/// the kernel before another thread's reading that precedes them in the
/// ring. Only another thread's *first* record after the reading can carry
/// such calls: anything later was written after a record that was itself
/// written after the reading. A record's carried events come just before
/// it, with its time and no reading.
fn deferred(events: &[&Event], r: &Reading) -> (i64, i64) {
    let mut done = std::collections::BTreeSet::from([r.pid]);
    let mut open: Option<(u32, u64)> = None;
    let (mut unpins, mut pins) = (0, 0);
    for e in &events[r.at + 1..] {
        let carried = e.zero_refcount.is_none()
            && matches!(e.what, What::GupUnpin { .. } | What::GupPin { .. });
        if open == Some((e.pid, e.t_ns)) || done.insert(e.pid) {
            // The thread's first record: its carried events, then itself.
            open = carried.then_some((e.pid, e.t_ns));
            if !carried {
                continue;
            }
            match &e.what {
                What::GupUnpin { zero_pages, .. } => unpins += *zero_pages as i64,
                What::GupPin {
                    zero_pages,
                    in_type1: true,
                    ..
                } => pins += *zero_pages as i64,
                _ => {}
            }
        }
    }
    (unpins, pins)
}

/// How the truth explains a reading.
#[derive(Debug, PartialEq)]
enum Explained {
    /// At its place in the ring's order.
    Exact,
    /// Only with another thread's unpins or pins the ring still defers.
    Deferred,
    /// Not at all; `expect` is the value the ring's order implies, `low`
    /// and `high` the fewest and most pins held it allows.
    No { expect: i64, low: i64, high: i64 },
}

fn explain(events: &[&Event], r: &Reading, before: i64, per_pin: i64) -> Explained {
    let (value, expect) = (r.value as i64, before + per_pin * r.outstanding);
    if value == expect {
        return Explained::Exact;
    }
    let (unpins, pins) = deferred(events, r);
    let (low, high) = (r.outstanding - unpins, r.outstanding + pins);
    let held = value - before;
    if per_pin != 0 && held % per_pin == 0 && (low..=high).contains(&(held / per_pin)) {
        Explained::Deferred
    } else {
        Explained::No { expect, low, high }
    }
}

impl Seen {
    /// A reading at `at`, against the pins held so far in ring order.
    fn read(&mut self, at: usize, pid: u32, value: i32) {
        self.refcounts.push(Reading {
            at,
            pid,
            outstanding: self.gup_zero_pins - self.gup_zero_unpins,
            value,
        });
    }
}

fn seen_for(events: &[&Event]) -> Seen {
    let mut s = Seen::default();
    for (at, e) in events.iter().enumerate() {
        s.events += 1;
        s.cgroups.push(e.cgroup_id);
        match &e.what {
            What::Type1Pin {
                pinned,
                base,
                huge_zero_pages,
                ..
            } if *pinned > 0 => {
                s.type1_huge_pinned += *huge_zero_pages as i64;
                match base {
                    PageClass::Zero => s.type1_zero += pinned,
                    PageClass::HugeZero => s.type1_huge_zero += pinned,
                    _ => {}
                }
                s.containers_missing += e.container.is_none() as usize;
                s.containers.extend(e.container);
            }
            What::Type1Unpin {
                huge_zero_pages, ..
            } => s.type1_huge_unpinned += *huge_zero_pages as i64,
            What::GupPin {
                in_type1: true,
                zero_pages,
                ..
            } => s.gup_zero_pins += *zero_pages as i64,
            What::GupUnpin { zero_pages, .. } => {
                if let Some(r) = e.zero_refcount {
                    assert_eq!(r.when, When::Before);
                    s.read(at, e.pid, r.value);
                }
                s.gup_zero_unpins += *zero_pages as i64;
            }
            What::LockAcct { npage, ret: 0, .. } => {
                s.lock_acct_net += npage;
                s.charged += (*npage).max(0);
            }
            _ => {}
        }
        if let (What::GupPin { .. }, Some(r)) = (&e.what, e.zero_refcount) {
            assert_eq!(r.when, When::After);
            s.read(at, e.pid, r.value);
        }
    }
    s
}

fn check_kernel(kernel: &str, dir: &Path) -> Vec<String> {
    let b = behaviour(kernel);
    let mut bad = Vec::new();
    let rec: Recording =
        read_path(&dir.join("recording.jsonl")).unwrap_or_else(|e| panic!("{kernel}: {e}"));
    println!(
        "{kernel}: recording of {} ({} lines)",
        rec.header.kernel_release,
        rec.lines.len()
    );
    for p in [
        "type1_pin",
        "type1_unpin",
        "lock_acct",
        "gup_pin_remote",
        "gup_unpin_page",
        "type1_ioctl",
        "remove_dma",
    ] {
        let st = rec
            .header
            .probes
            .iter()
            .find(|s| s.probe == p)
            .map(|s| s.state);
        if st != Some(ProbeState::Attached) {
            bad.push(format!("{kernel}: probe {p} not attached: {st:?}"));
        }
    }
    let events: Vec<&Event> = rec
        .lines
        .iter()
        .filter_map(|l| {
            if let Line::Event(e) = l {
                Some(e)
            } else {
                None
            }
        })
        .collect();
    let last = rec.lines.iter().rev().find_map(|l| {
        if let Line::Counters(c) = l {
            Some(c)
        } else {
            None
        }
    });
    let Some(last) = last.filter(|c| c.last) else {
        bad.push(format!(
            "{kernel}: recording has no final counters (recorder not stopped cleanly)"
        ));
        return bad;
    };
    let drops: u64 = last.drops.values().sum();
    if drops > 0 {
        bad.push(format!("{kernel}: {drops} events dropped"));
    }
    // Every return found its call's arguments, parked in the thread's slot
    // or in STASH: the recorder attaches before any workload starts, so a
    // return without them is a parking lost.
    if last.totals.unmatched_returns != 0 {
        bad.push(format!(
            "{kernel}: {} returns found no arguments parked at their entry",
            last.totals.unmatched_returns
        ));
    }
    bad.extend(returns_counted(kernel, dir, &last.hits));
    // Nothing lost between the kernel's exact counters and the event stream.
    let all = seen_for(&events);
    if all.type1_zero as u64 != last.totals.type1_zero_pinned {
        bad.push(format!(
            "{kernel}: events show {} type1 zero-page pins, kernel counters {}",
            all.type1_zero, last.totals.type1_zero_pinned
        ));
    }

    let truths: BTreeMap<String, Truth> = common::verdicts::truth_files::<Truth>(dir)
        .into_iter()
        .map(|t| (t.scenario.clone(), t))
        .collect();
    if truths.len() < 9 {
        bad.push(format!(
            "{kernel}: only {} scenario truths: {:?}",
            truths.len(),
            truths.keys()
        ));
    }
    for (scenario, t) in &truths {
        // The zero page is one page for everybody: with processes running at
        // once, refcounts are explained by all of the scenario's pins together.
        let pids: Vec<u32> = t.runs.iter().map(|r| r.pid).collect();
        let ours: Vec<&Event> = events
            .iter()
            .copied()
            .filter(|e| pids.contains(&e.tgid))
            .collect();
        let all = seen_for(&ours);
        let ctx = format!("{kernel}/{scenario}");
        match (t.refcount_before, t.refcount_after) {
            (Some(before), Some(after)) => {
                let growth = after as i64 - before as i64;
                let per_pin = if b.gup_refcounts_zero_page {
                    PIN_BIAS
                } else {
                    0
                };
                let explained = per_pin * (all.gup_zero_pins - all.gup_zero_unpins);
                // The refcount really moved by 1024 per pin the probes say is still held.
                if growth != explained {
                    bad.push(format!(
                        "{ctx}: zero page refcount grew {growth}, probes explain {explained}"
                    ));
                }
                // Every refcount the probes read matches the truth at that
                // moment, up to unpins another thread's record still defers.
                let mut deferred = 0;
                for r in &all.refcounts {
                    match explain(&ours, r, before as i64, per_pin) {
                        Explained::Exact => {}
                        Explained::Deferred => deferred += 1,
                        Explained::No { expect, low, high } => {
                            bad.push(format!(
                                "{ctx}: probe read refcount {}, truth implies {expect} ({} pins held, {low} to {high} with other threads' deferred unpins and pins)",
                                r.value, r.outstanding
                            ));
                            break;
                        }
                    }
                }
                if deferred > 0 {
                    println!(
                        "  {ctx}: {deferred} of {} readings explained only by another thread's deferred unpins or pins",
                        all.refcounts.len()
                    );
                }
            }
            _ => bad.push(format!("{ctx}: no scenario refcount truth")),
        }
        let mut containers_seen = std::collections::BTreeSet::new();
        for run in &t.runs {
            let ctx = format!("{kernel}/{scenario}/pid {}", run.pid);
            if !run.errors.is_empty() {
                bad.push(format!("{ctx}: truth errors {:?}", run.errors));
                continue;
            }
            let mine: Vec<&Event> = events
                .iter()
                .copied()
                .filter(|e| e.tgid == run.pid)
                .collect();
            let s = seen_for(&mine);
            let (Some(before), Some(after)) = (run.refcount_before, run.refcount_after_unmap)
            else {
                bad.push(format!("{ctx}: no refcount truth"));
                continue;
            };
            let growth = after as i64 - before as i64;
            let leaked = s.gup_zero_pins - s.gup_zero_unpins;
            println!(
                "  {scenario:<20} pid {:>5}: zero-backed {:>4} (huge {:>3}) | type1 zero pins {:>4} huge {:>3} | gup zero pins {:>4} unpins {:>4} | refcount {before} -> {after} (growth {growth} = {} x 1024) | charged {} VmLck {:?} kB",
                run.pid,
                run.zero_backed_after_map,
                run.huge_zero_backed_after_map,
                s.type1_zero,
                s.type1_huge_zero,
                s.gup_zero_pins,
                s.gup_zero_unpins,
                growth / PIN_BIAS,
                s.charged,
                run.vmlck_kb_after_map,
            );
            if s.events == 0 {
                bad.push(format!("{ctx}: no events recorded for this process"));
                continue;
            }
            // Zero-page pins reported equal the pages the kernel backed with the zero page.
            if s.type1_zero != run.zero_backed_after_map as i64 {
                bad.push(format!(
                    "{ctx}: type1 zero-page pins {} != zero-backed pages {}",
                    s.type1_zero, run.zero_backed_after_map
                ));
            }
            if s.type1_huge_zero != run.huge_zero_backed_after_map as i64 {
                bad.push(format!(
                    "{ctx}: huge-zero pins {} != huge-zero-backed pages {}",
                    s.type1_huge_zero, run.huge_zero_backed_after_map
                ));
            }
            // The runs' huge-zero counts, which keep the model's count
            // while the unpin probes are off: every page the kernel backed
            // with it, pinned once and unpinned once (all unmapped).
            if s.type1_huge_pinned != run.huge_zero_backed_after_map as i64
                || s.type1_huge_unpinned != s.type1_huge_pinned
            {
                bad.push(format!(
                    "{ctx}: type1 runs counted {} huge-zero pfns pinned and {} unpinned, the kernel backed {}",
                    s.type1_huge_pinned, s.type1_huge_unpinned, run.huge_zero_backed_after_map
                ));
            }
            if !s.containers.is_disjoint(&containers_seen) {
                bad.push(format!(
                    "{ctx}: shares a container id with another process: {:?}",
                    s.containers
                ));
            }
            containers_seen.extend(s.containers.iter().copied());
            if s.containers_missing > 0 {
                bad.push(format!(
                    "{ctx}: {} type1 pins without a container",
                    s.containers_missing
                ));
            }
            if b.gup_refcounts_zero_page && b.type1_unpins_zero_page && leaked != 0 {
                bad.push(format!(
                    "{ctx}: {leaked} zero-page pins never released on a fixed kernel"
                ));
            }
            if !b.type1_unpins_zero_page && run.zero_backed_after_map > 0 && leaked <= 0 {
                bad.push(format!("{ctx}: the leaky kernel leaked nothing ({leaked})"));
            }
            if kernel == "5.10-leaky"
                && scenario == "ro-read-touched"
                && leaked != 2 * run.pages as i64 - 1
            {
                // 256 pins plus 255 look-ahead re-pins (kernel-facts.md).
                bad.push(format!(
                    "{ctx}: {leaked} leaked pins, kernel-facts measured {}",
                    2 * run.pages - 1
                ));
            }
            // locked_vm: what vfio_lock_acct charged is what VmLck shows.
            if let Some(kb) = run.vmlck_kb_after_map
                && run.map_error.is_none()
                && s.charged * 4 != kb as i64
            {
                bad.push(format!(
                    "{ctx}: lock_acct charged {} pages, VmLck {kb} kB",
                    s.charged
                ));
            }
            if let Some(kb) = run.vmlck_kb_after_unmap
                && s.lock_acct_net * 4 != kb as i64
            {
                bad.push(format!(
                    "{ctx}: lock_acct net {} pages after unmap, VmLck {kb} kB",
                    s.lock_acct_net
                ));
            }
            // From 6.2 read-only long-term pins unshare (84209e87c696).
            if common::unshares(kernel) {
                if s.gup_zero_pins != 0 {
                    bad.push(format!(
                        "{ctx}: {kernel} unshares, yet GUP pinned {} zero pages",
                        s.gup_zero_pins
                    ));
                }
                if run.map_flags == 1 && run.map_error.is_none() && s.charged != run.pages as i64 {
                    bad.push(format!(
                        "{ctx}: {kernel} charged {} pages for {} mapped",
                        s.charged, run.pages
                    ));
                }
            }
            if let Some(cg) = run.cgroup_id
                && let Some(other) = s.cgroups.iter().find(|c| **c != cg)
            {
                bad.push(format!("{ctx}: event in cgroup {other}, process in {cg}"));
            }
        }
    }
    bad
}

/// The (runs, misses) kprobe_profile gives the return probe of `program`
/// (`<program>_ret_<pid>`); None unless exactly one such row.
fn profile_row(profile: &str, program: &str) -> Option<(u64, u64)> {
    let prefix = format!("{program}_ret_");
    let rows: Vec<(u64, u64)> = profile
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            f.next()?.strip_prefix(&prefix)?.parse::<u32>().ok()?;
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    match rows.as_slice() {
        &[row] => Some(row),
        _ => None,
    }
}

/// type1's pin and unpin calls are counted at their return: the recorder's
/// final counts must be the kernel's own count of its return probes' runs
/// (kprobe_profile, read just before the recorder stopped, plus before
/// type1's reload, which makes the probes afresh; a missed return is
/// counted at the thread's next call, so it may or may not be in).
fn returns_counted(kernel: &str, dir: &Path, hits: &BTreeMap<String, u64>) -> Vec<String> {
    let Ok(last) = std::fs::read_to_string(dir.join("kprobe-profile.txt")) else {
        return vec![format!("{kernel}: no kprobe_profile was saved")];
    };
    let first = std::fs::read_to_string(dir.join("kprobe-profile-before-reload.txt")).ok();
    let mut bad = Vec::new();
    for p in ["type1_pin", "type1_unpin"] {
        let rows = [Some(last.as_str()), first.as_deref()]
            .into_iter()
            .flatten()
            .map(|profile| profile_row(profile, p))
            .collect::<Option<Vec<_>>>();
        let Some(rows) = rows else {
            bad.push(format!(
                "{kernel}: kprobe_profile has no single row for {p}_ret_<pid>"
            ));
            continue;
        };
        let (nhit, nmissed) = rows
            .iter()
            .fold((0, 0), |(h, m), (rh, rm)| (h + rh, m + rm));
        let ours = hits.get(p).copied().unwrap_or(0);
        if nhit == 0 || ours < nhit || ours > nhit + nmissed {
            bad.push(format!(
                "{kernel}: {ours} {p} calls counted; the kernel ran its return probe {nhit} times and missed {nmissed}"
            ));
        }
    }
    bad
}

#[test]
fn lab_recordings_match_kernel_truth() {
    let Some(out) = std::env::var_os("VFIO_ZP_LAB_OUT") else {
        // `cargo xtask test` runs this check again once the matrix is done.
        if std::env::var_os("VFIO_ZP_LAB_LATER").is_none() {
            vfio_zp::testing::skip(
                "vm-matrix",
                "VFIO_ZP_LAB_OUT not set; run `cargo xtask test` for the VM matrix",
            );
        }
        return;
    };
    let kernels = std::env::var("VFIO_ZP_LAB_KERNELS")
        .unwrap_or_else(|_| "5.10,5.10-leaky,6.1,6.12,6.18,7.3".into());
    let mut bad = Vec::new();
    for k in kernels.split(',') {
        let dir = Path::new(&out).join(k);
        bad.extend(check_kernel(k, &dir));
        bad.extend(common::verdicts::check(k, &dir));
        bad.extend(common::surfaces::check(k, &dir));
        bad.extend(common::hardening::check(k, &dir));
        bad.extend(common::restart::check(k, &dir));
        bad.extend(common::flood::check(k, &dir));
        bad.extend(common::vmm::check(k, &dir));
        bad.extend(common::sandbox::check(k, &dir));
        bad.extend(common::lean::check(k, &dir));
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The reading check itself, on the 5.10 interleaving that two processes
/// pinning at once produce: A's folded unpin lands after B's reading.
#[test]
fn readings_allow_only_another_threads_deferred_unpins_and_pins() {
    let ev = |pid: u32, refcount: Option<(i32, When)>, what: What| Event {
        t_ns: 0,
        tgid: pid,
        pid,
        comm: "w".into(),
        cgroup_id: 0,
        container: None,
        zero_refcount: refcount
            .map(|(value, when)| vfio_zp::stream::event::Refcount { value, when }),
        what,
    };
    let pin = |pid, value| {
        ev(
            pid,
            Some((value, When::After)),
            What::GupPin {
                remote: true,
                start: 0,
                nr_pages: 1,
                gup_flags: 0,
                pinned: 1,
                zero_pages: 1,
                huge_zero_pages: 0,
                in_type1: true,
                truncated: false,
            },
        )
    };
    let unpin = |pid, refcount| {
        ev(
            pid,
            refcount,
            What::GupUnpin {
                func: vfio_zp::stream::event::UnpinFn::UnpinUserPage,
                npages: 1,
                zero_pages: 1,
                huge_zero_pages: 0,
                truncated: false,
            },
        )
    };
    let check = |events: Vec<Event>| {
        let refs: Vec<&Event> = events.iter().collect();
        let s = seen_for(&refs);
        s.refcounts
            .iter()
            .map(|r| !matches!(explain(&refs, r, 1, PIN_BIAS), Explained::No { .. }))
            .collect::<Vec<_>>()
    };
    // A pinned and (in the kernel) unpinned before B read 1025; A's folded
    // unpin record comes after B's pin record.
    let raced = vec![pin(1, 1025), pin(2, 1025), unpin(1, None), unpin(2, None)];
    assert_eq!(check(raced), [true, true]);
    // Same reading, but A's unpin carried its own reading (written at entry,
    // before the unpin ran): nothing was deferred, so 1025 is wrong.
    let wrong = vec![
        pin(1, 1025),
        pin(2, 1025),
        unpin(1, Some((2049, When::Before))),
        unpin(2, None),
    ];
    assert_eq!(check(wrong), [true, false, true]);
    // A deferred unpin after another of A's records is not deferred past B.
    let later = vec![pin(1, 1025), pin(2, 1025), pin(1, 3073), unpin(1, None)];
    assert_eq!(check(later), [true, false, true]);
    // A thread's own deferred unpins never excuse its own reading.
    let own = vec![pin(1, 1025), pin(1, 1025), unpin(1, None)];
    assert_eq!(check(own), [true, false]);
    // 5.10-leaky: A's look-ahead pin ran before B read 3073; it rides on
    // A's next record (a pin event with no reading, just before it).
    let mut look = pin(1, 0);
    look.zero_refcount = None;
    let carrier = || ev(1, None, What::ContainerRelease);
    let ahead = vec![pin(1, 1025), pin(2, 3073), look.clone(), carrier()];
    assert_eq!(check(ahead), [true, true]);
    // A pin carried by a later record of A's is not deferred past B.
    let late = vec![pin(1, 1025), pin(2, 3073), carrier(), look, carrier()];
    assert_eq!(check(late), [true, false]);
}

#[test]
fn kprobe_profile_rows_are_found_by_program() {
    let p = "  type1_pin_ret_183                                    65536                0\n  type1_unpin_ret_183 3 1\n  type1_pin_ret_x1 9 9\n";
    assert_eq!(profile_row(p, "type1_pin"), Some((65536, 0)));
    assert_eq!(profile_row(p, "type1_unpin"), Some((3, 1)));
    assert_eq!(profile_row(p, "put_pfn"), None);
    // Two agents' probes: which is the recorder's is unknown.
    let two = format!("{p}  type1_pin_ret_200 1 0\n");
    assert_eq!(profile_row(&two, "type1_pin"), None);
}
