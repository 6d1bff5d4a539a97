//! Verdicts of a lab recording checked against the kernel's truth, shared
//! by the VM matrix (tests/lab_matrix.rs) and the committed golden
//! recordings (tests/golden.rs).
use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use vfio_zp::{
    model::{
        Config, Model,
        verdict::{Leak, Verdicts},
    },
    stream::{event::Memlock, read_path},
};

const PIN_BIAS: i64 = 1024;

#[derive(Debug, Deserialize)]
pub struct Truth {
    pub scenario: String,
    pub refcount_before: Option<i32>,
    pub refcount_after: Option<i32>,
    pub runs: Vec<Run>,
}

#[derive(Debug, Deserialize)]
pub struct Run {
    pub pid: u32,
    pub zero_backed_after_map: u64,
    pub vmlck_kb_after_map: Option<u64>,
    #[serde(default)]
    pub memlock_limit: Option<u64>,
    #[serde(default)]
    pub map_error: Option<String>,
    /// Containers the process mapped into (files before it have one).
    #[serde(default)]
    pub containers: Option<usize>,
    #[serde(default)]
    pub threads: Vec<ThreadPart>,
}

/// One thread's calls in a threaded scenario, by the workload's clock
/// (CLOCK_MONOTONIC, the probes' clock too).
#[derive(Debug, Deserialize)]
pub struct ThreadPart {
    pub phase: String,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Whether the threads of `phase` ran their calls at once: some instant
/// lies inside every thread's span.
fn overlapped(run: &Run, phase: &str) -> bool {
    let spans = run.threads.iter().filter(|t| t.phase == phase);
    let latest_start = spans.clone().map(|t| t.start_ns).max();
    let earliest_end = spans.map(|t| t.end_ns).min();
    matches!((latest_start, earliest_end), (Some(s), Some(e)) if s < e)
}

/// Type1 pin calls of one thread that had another thread's GUP pin
/// record land inside them (between the call's first GUP record and its
/// type1 return): the interleaving a threaded scenario exists for, as the
/// recording shows it. Only threads in `tids` are looked at.
pub fn interleaved_pin_calls(path: &Path, tids: &[u32]) -> usize {
    use vfio_zp::{stream::event::What, stream::line::Line};
    let rec = read_path(path).unwrap();
    let mut open: BTreeMap<u32, bool> = BTreeMap::new();
    let mut n = 0;
    for l in &rec.lines {
        let Line::Event(e) = l else { continue };
        if !tids.contains(&e.pid) {
            continue;
        }
        match &e.what {
            What::GupPin { in_type1: true, .. } => {
                for (tid, crossed) in open.iter_mut() {
                    *crossed |= *tid != e.pid;
                }
                open.entry(e.pid).or_insert(false);
            }
            What::Type1Pin { .. } => n += usize::from(open.remove(&e.pid).unwrap_or(false)),
            _ => {}
        }
    }
    n
}

/// Every `truth-<scenario>.json` the workload wrote in `dir`.
pub fn truth_files<T: serde::de::DeserializeOwned>(dir: &Path) -> Vec<T> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("truth-") && name.ends_with(".json") {
            let text = std::fs::read_to_string(e.path()).unwrap();
            out.push(
                serde_json::from_str(&text)
                    .unwrap_or_else(|err| panic!("{}: {err}", e.path().display())),
            );
        }
    }
    out
}

fn truths(dir: &Path) -> BTreeMap<String, Truth> {
    truth_files::<Truth>(dir)
        .into_iter()
        .map(|t| (t.scenario.clone(), t))
        .collect()
}

/// The recording replayed through the model.
pub fn replay(dir: &Path) -> Verdicts {
    replay_file(&dir.join(super::outputs::RECORDING))
}

pub fn replay_file(path: &Path) -> Verdicts {
    let rec = read_path(path).unwrap();
    let mut m = Model::new(&rec.header, Config::default());
    for l in &rec.lines {
        m.apply(l);
    }
    m.verdicts()
}

/// Names the issue asks for, from the cgroups the lab puts workloads in
/// (xtask/src/lab/matrix.rs).
fn expected_names(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "ro-read-touched" => &["vm1"],
        "partial-unmap" => &["pod/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/4f6b7c8d9e0a"],
        "multi-container" => &[
            "vm-two",
            "pod/11112222-3333-4444-5555-666677778888/0123456789ab",
        ],
        "memlock-tight" => &["tight"],
        "two-threads" => &["threads", "threads"],
        _ => &["/"],
    }
}

fn trait_value(v: &Verdicts, name: &str) -> (bool, String) {
    let t = v.behaviour.iter().find(|t| t.name == name).unwrap();
    (t.value, format!("{:?}", t.source))
}

pub fn check(kernel: &str, dir: &Path) -> Vec<String> {
    check_fields(kernel, dir, false)
}

/// As [`check`], for a committed golden recording: fields its live
/// verdicts predate (added to the agent since) are not compared; the lab
/// compares every field in every run.
pub fn check_golden(kernel: &str, dir: &Path) -> Vec<String> {
    check_fields(kernel, dir, true)
}

/// Where `v`, replayed, differs from the live verdicts in file `live`.
pub fn replay_differs(what: &str, v: &Verdicts, live: &Path, known_only: bool) -> Vec<String> {
    let text = match std::fs::read_to_string(live) {
        Ok(t) => t,
        Err(e) => return vec![format!("{what}: no live {}: {e}", live.display())],
    };
    let live: serde_json::Value = match serde_json::from_str(&text) {
        Ok(l) => l,
        Err(e) => return vec![format!("{what}: {}: {e}", live.display())],
    };
    let mut diffs = Vec::new();
    diff(
        "",
        &live,
        &serde_json::to_value(v).unwrap(),
        known_only,
        &mut diffs,
    );
    if diffs.is_empty() {
        return vec![];
    }
    vec![format!(
        "{what}: replayed verdicts differ from the live agent's at {} places:\n  {}",
        diffs.len(),
        diffs
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    )]
}

fn check_fields(kernel: &str, dir: &Path, known_only: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let v = replay(dir);
    // Replay equals live: the agent in the guest wrote what it concluded.
    bad.extend(replay_differs(
        kernel,
        &v,
        &dir.join(super::outputs::VERDICTS),
        known_only,
    ));
    print!("{v}");
    if !v.divergences.is_empty() {
        bad.push(format!("{kernel}: model divergences {:?}", v.divergences));
    }
    let truths = truths(dir);
    for (scenario, t) in &truths {
        let ctx = format!("{kernel}/{scenario}");
        let pids: Vec<u32> = t.runs.iter().map(|r| r.pid).collect();
        let ours: Vec<_> = v
            .containers
            .iter()
            .filter(|c| pids.contains(&c.tgid))
            .collect();
        let want: usize = t.runs.iter().map(|r| r.containers.unwrap_or(1)).sum();
        if ours.len() != want {
            bad.push(format!(
                "{ctx}: {} containers, the workload mapped into {want}",
                ours.len(),
            ));
        }
        for run in t.runs.iter().filter(|r| !r.threads.is_empty()) {
            // What the scenario is for: its threads' calls ran at once.
            for phase in ["map", "unmap"] {
                if !overlapped(run, phase) {
                    bad.push(format!("{ctx}: the threads' {phase} calls did not overlap"));
                }
            }
            let tids: Vec<u32> = run.threads.iter().map(|t| t.tid).collect();
            println!(
                "{ctx}: {} type1 pin calls interleaved with another thread's",
                interleaved_pin_calls(&dir.join(super::outputs::RECORDING), &tids),
            );
        }
        // Leaked pins are the refcount growth / 1024, exactly.
        let leaked: i64 = ours.iter().map(|c| c.zero_page_pins_leaked).sum();
        match (t.refcount_before, t.refcount_after) {
            (Some(b), Some(a)) if (a as i64 - b as i64) != leaked * PIN_BIAS => bad.push(format!(
                "{ctx}: refcount grew {}, verdicts say {leaked} leaked pins",
                a as i64 - b as i64
            )),
            (Some(_), Some(_)) => {}
            _ => bad.push(format!("{ctx}: no refcount truth")),
        }
        for c in &ours {
            let counts = [
                c.pinned_pages.zero,
                c.pinned_pages.huge_zero,
                c.pinned_pages.other,
                c.zero_page_pins_live,
                c.zero_page_pins_leaked,
                c.huge_zero_page_pins_live,
                c.locked_vm_pages_kernel,
            ];
            if counts.iter().any(|n| *n < 0) {
                bad.push(format!(
                    "{ctx}: container {} has a negative count: {counts:?}",
                    c.id
                ));
            }
            if (c.leak == Leak::Leaking) != (c.zero_page_pins_leaked > 0) {
                bad.push(format!(
                    "{ctx}: container {} verdict {:?} with {} leaked",
                    c.id, c.leak, c.zero_page_pins_leaked
                ));
            }
            if kernel != "5.10-leaky" && c.leak != Leak::None {
                bad.push(format!(
                    "{ctx}: false positive: {:?} {}",
                    c.leak, c.leak_reason
                ));
            }
        }
        let mut names: Vec<&str> = ours.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        let mut want = expected_names(scenario).to_vec();
        want.sort();
        if names != want && !(want == ["/"] && names.iter().all(|n| *n == "/")) {
            bad.push(format!(
                "{ctx}: containers named {names:?}, expected {want:?}"
            ));
        }
        for run in &t.runs {
            let Some(p) = v.processes.iter().find(|p| p.tgid == run.pid) else {
                if run.zero_backed_after_map > 0 || run.vmlck_kb_after_map.unwrap_or(0) > 0 {
                    bad.push(format!("{ctx}: no memlock advice for pid {}", run.pid));
                }
                continue;
            };
            if let Some(limit) = run.memlock_limit {
                if p.memlock != Memlock::Bytes(limit) || p.cap_ipc_lock {
                    bad.push(format!(
                        "{ctx}: memlock {:?} ipc_lock {}, set {limit}",
                        p.memlock, p.cap_ipc_lock
                    ));
                }
                match &run.map_error {
                    Some(_)
                        if p.refusals == 0
                            || p.would_exceed_if_charged != Some(true)
                            || p.shortfall_bytes != p.peak_if_charged_bytes - limit as i64 =>
                    {
                        bad.push(format!("{ctx}: MAP_DMA refused, advice: {p:?}"))
                    }
                    None if p.would_exceed_if_charged != Some(true)
                        || p.shortfall_bytes != p.peak_if_charged_bytes - limit as i64 =>
                    {
                        bad.push(format!("{ctx}: fits only uncharged, advice: {p:?}"))
                    }
                    _ => {}
                }
            }
            if run.map_error.is_none() {
                let peak = run.vmlck_kb_after_map.unwrap_or(0) as i64 * 1024
                    + run.zero_backed_after_map as i64 * 4096;
                if p.peak_if_charged_bytes != peak {
                    bad.push(format!(
                        "{ctx}: pid {} peak if charged {} B, truth (VmLck + zero-backed) {peak} B",
                        run.pid, p.peak_if_charged_bytes
                    ));
                }
            }
        }
    }
    // Host: the final refcount is the kernel's, and all of it explained
    // (real VMMs, where the lab ran them, come after the workload).
    let last = truths
        .values()
        .filter_map(|t| t.refcount_after)
        .chain(super::vmm::refcounts_after(dir))
        .max()
        .map(|r| r as i64);
    if v.host.zero_page_refcount != last || v.host.unexplained_refs != Some(0) {
        bad.push(format!(
            "{kernel}: host refcount {:?} (unexplained {:?}), truth {last:?}",
            v.host.zero_page_refcount, v.host.unexplained_refs
        ));
    }
    let leaking = v
        .containers
        .iter()
        .filter(|c| c.leak == Leak::Leaking)
        .count();
    if kernel == "5.10-leaky" && leaking == 0 {
        bad.push(format!("{kernel}: the leak was not found"));
    }
    let expect: &[(&str, bool)] = match kernel {
        "5.10" => &[
            ("gup_pins_zero_page", true),
            ("type1_unpins_zero_page", true),
        ],
        "5.10-leaky" => &[
            ("gup_pins_zero_page", true),
            ("type1_unpins_zero_page", false),
        ],
        "6.1" => &[
            ("gup_pins_zero_page", false),
            ("type1_unpins_zero_page", true),
        ],
        _ => &[("ro_longterm_unshares", true)],
    };
    for (name, want) in expect {
        let (got, source) = trait_value(&v, name);
        if got != *want {
            bad.push(format!(
                "{kernel}: inferred {name} = {got} ({source}), expected {want}"
            ));
        }
    }
    if kernel == "5.10-leaky"
        && v.behaviour
            .iter()
            .all(|t| t.name != "type1_unpins_zero_page" || t.contradiction.is_none())
    {
        bad.push(format!(
            "{kernel}: the rebuilt module's contradiction with 5.10.223 was not flagged"
        ));
    }
    bad
}

/// Paths where two JSON values differ: `live` then `replay` value.
/// With `known_only`, keys only `replay` has are skipped.
fn diff(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    known_only: bool,
    out: &mut Vec<String>,
) {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        (Object(x), Object(y)) => {
            let added = y.keys().filter(|k| !known_only && !x.contains_key(*k));
            for k in x.keys().chain(added) {
                let null = serde_json::Value::Null;
                diff(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    known_only,
                    out,
                );
            }
        }
        (Array(x), Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, known_only, out);
            }
        }
        _ if a != b => out.push(format!("{path}: live {a} / replay {b}")),
        _ => {}
    }
}
