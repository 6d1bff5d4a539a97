//! Benchmarks that need a live kernel, in one lab guest per kernel: the
//! probes' cost per run next to a bpftrace script counting the same points
//! (bpf_stats); MAP_DMA + UNMAP of read-touched memory and a real QEMU's
//! start and stop (1 GiB, vfio-pci) with nothing attached, the agent,
//! bpftrace and empty programs on the same points, the four taking turns
//! in every round so the emulated guest's drift hits each alike; the idle
//! agent's CPU; and the event loop's tick lag while 500 connections scrape
//! /metrics. Ratios are taken within a round and given as their median
//! over the rounds with their range.
use std::{path::Path, time::Duration};

use anyhow::Context;

use super::{kernels, qemu};

mod lag;
mod points;
use points::{Attach, Prog, loaded_between};

/// Targets from the hardening issue (16) and the field-cost issue (18).
pub const PROBE_COST_MAX: f64 = 0.30;
pub const RO_OVERHEAD_MAX: f64 = 1.10;
/// Read-write map+unmap and the VM's start+stop, where the kernel needs
/// no generic unpin probe (their runs were the read-write cost).
pub const LEAN_OVERHEAD_MAX: f64 = 1.05;
/// vfio-zp against bpftrace counting the same points, every workload.
pub const VS_BPFTRACE_MAX: f64 = 1.0;
/// The event loop's 99th-percentile tick lag under `wrk -c500`, in s.
pub const TICK_LAG_P99_MAX: f64 = 0.010;
/// Connections of the scrape storm: above the agent's cap (256), so the
/// cap's eviction runs too.
const STORM_CONNECTIONS: u32 = 500;
/// The real VM's RAM: all of it mapped read-write at its start, unpinned
/// page by page at its stop.
const VM_MIB: u64 = 1024;
/// The bench guest's RAM: the VM's pinned RAM, the agent's ring, bpftrace.
const GUEST_MEM: &str = "4G";

/// The ring for the measured sets: 256 MiB holds the ~200 000 records of a
/// 256 MiB read-only map + unmap with room to spare.
const FULL_RING_KIB: u32 = 262_144;

/// Points without a return program (probes/probe_points.rs).
const ENTRY_ONLY: &str =
    "gup_unpin_page|gup_unpin_pages|gup_unpin_pages_dirty|type1_release|remove_dma";

/// Release binaries, as hosts run them: `cargo build --release` puts them
/// beside the debug ones the lab uses.
fn release_dir() -> anyhow::Result<std::path::PathBuf> {
    let debug = super::bin_dir()?;
    Ok(debug.with_file_name("release"))
}

/// The guest's script (the host's /bin/sh, dash), after its preamble.
const SCRIPT: &str = include_str!("bench.sh");

pub fn guest_script(pages: u64, reps: u32, rounds: u32) -> anyhow::Result<String> {
    let bin = release_dir()?.display().to_string();
    Ok(super::preamble(&[
        ("BIN", &bin),
        ("PAGES", &pages.to_string()),
        ("REPS", &reps.to_string()),
        ("ROUNDS", &rounds.to_string()),
        ("VM_MIB", &VM_MIB.to_string()),
        ("FULL_RING_KIB", &FULL_RING_KIB.to_string()),
        ("STORM", &STORM_CONNECTIONS.to_string()),
        ("ENTRY_ONLY", ENTRY_ONLY),
    ]) + SCRIPT)
}

fn listing(dir: &Path, name: &str) -> Vec<Prog> {
    std::fs::read_to_string(dir.join(format!("bench-progs-{name}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn attach_list(dir: &Path, name: &str) -> Vec<Attach> {
    std::fs::read_to_string(dir.join(format!("bench-perf-{name}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The programs loaded between two listings.
fn loaded(dir: &Path, before: &str, after: &str) -> Vec<Prog> {
    loaded_between(&listing(dir, before), &listing(dir, after))
}

/// The programs one tool ran in `round`: vfio-zp's (`attached`), or
/// bpftrace's or the empty ones with their attach list.
fn tool(dir: &Path, arrangement: &str, round: u32) -> (Vec<Prog>, Vec<Attach>) {
    let name = match arrangement {
        "attached" => "vfio-zp",
        other => other,
    };
    (
        loaded(
            dir,
            &format!("before-{name}-{round}"),
            &format!("{name}-{round}"),
        ),
        attach_list(dir, &format!("{name}-{round}")),
    )
}

/// The points the agent attached, as (label, symbol).
fn points_of(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("bench-points.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Each of our programs next to bpftrace's on the same point and side, over
/// `rounds` (one round, or all of them summed).
fn point_rows(dir: &Path, rounds: &[u32]) -> Vec<points::Row> {
    let gather = |arr: &str| {
        let mut progs = Vec::new();
        let mut attach = Vec::new();
        for r in rounds {
            let (p, a) = tool(dir, arr, *r);
            progs.extend(p);
            attach.extend(a);
        }
        (progs, attach)
    };
    let (ours, _) = gather("attached");
    let bt = gather("bpftrace");
    let empty = gather("floor");
    points::rows(&points_of(dir), &ours, (&bt.0, &bt.1), (&empty.0, &empty.1))
}

/// Wall time of each run of a set, in ms: map + unmap, or the VM's start
/// (until mapped) + stop (until gone).
fn times(dir: &Path, set: &str, kind: &str, reps: u32) -> Vec<f64> {
    (1..=reps)
        .filter_map(|i| {
            let t =
                std::fs::read_to_string(dir.join(format!("bench-{set}-{kind}-{i}.json"))).ok()?;
            let v: serde_json::Value = serde_json::from_str(&t).ok()?;
            let r = &v["runs"][0];
            Some((r["map_ns"].as_u64()? + r["unmap_ns"].as_u64()?) as f64 / 1e6)
        })
        .collect()
}

/// A ratio taken in each round: its median over the rounds and its range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

impl Spread {
    pub fn of(v: Vec<f64>) -> Option<Spread> {
        let rounds = v.len();
        let min = v.iter().copied().reduce(f64::min)?;
        let max = v.iter().copied().reduce(f64::max)?;
        Some(Spread {
            median: median(v)?,
            min,
            max,
            rounds,
        })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3}x (rounds {:.3}-{:.3}, {} of them)",
            self.median, self.min, self.max, self.rounds
        )
    }
}

/// `num`'s median run over `den`'s in each round.
fn ratio(dir: &Path, num: &str, den: &str, kind: &str, reps: u32, rounds: u32) -> Option<Spread> {
    Spread::of(
        (1..=rounds)
            .filter_map(|r| {
                let n = median(times(dir, &format!("{num}-{r}"), kind, reps))?;
                let d = median(times(dir, &format!("{den}-{r}"), kind, reps))?;
                Some(n / d)
            })
            .collect(),
    )
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn verdict(ok: bool) -> &'static str {
    if ok { "meets" } else { "MISSES" }
}

/// What the bench runs in each guest.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Pages per read-only and read-write mapping.
    pub pages: u64,
    /// Runs of each workload per set.
    pub reps: u32,
    /// Rounds of the four arrangements.
    pub rounds: u32,
}

/// Boots each of `kernels` in turn (one guest at a time: a second would
/// share the host's cores), runs the rounds, prints every figure against
/// its target.
pub fn run(kernels: &[String], out: &Path, plan: Plan, report_only: bool) -> anyhow::Result<()> {
    if !report_only {
        crate::bootstrap::apt(&["bpftrace", "bpftool"])?;
        crate::cmd::run(
            std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args([
                    "build",
                    "--release",
                    "-p",
                    "vfio-zp",
                    "-p",
                    "vfio-zp-workload",
                    "--bins",
                ]),
        )?;
    }
    let mut failed = Vec::new();
    for kernel in kernels {
        let dir = out.join(kernel);
        if !report_only && let Err(e) = boot(kernel, &dir, plan) {
            eprintln!("bench: {kernel}: {e:#}");
            failed.push(kernel.clone());
            continue;
        }
        report(kernel, &dir, plan);
    }
    anyhow::ensure!(
        failed.is_empty(),
        "bench guests failed: {}",
        failed.join(", ")
    );
    Ok(())
}

fn boot(kernel: &str, dir: &Path, plan: Plan) -> anyhow::Result<()> {
    let k = kernels::prepare(kernel)?;
    let _ = std::fs::remove_dir_all(dir);
    eprintln!(
        "bench: {kernel}: booting {} ({} pages per mapping, a {VM_MIB} MiB VM, {} runs per set, {} rounds)",
        k.release, plan.pages, plan.reps, plan.rounds
    );
    let r = qemu::run_sized(
        &k,
        dir,
        &guest_script(plan.pages, plan.reps, plan.rounds)?,
        Duration::from_secs(4 * 3600),
        2,
        GUEST_MEM,
    )
    .with_context(|| format!("bench kernel {kernel}"))?;
    if r.exit_code != Some(0) {
        super::matrix::tail(&dir.join("console.log"), 30);
        anyhow::bail!("bench guest failed ({:?})", r.exit_code);
    }
    Ok(())
}

/// The probes the agent left off on this kernel (not_needed), with the
/// evidence, from its first settled snapshot.
fn not_needed(dir: &Path) -> Vec<(String, String)> {
    let Ok(t) = std::fs::read_to_string(dir.join("bench-probes-1.json")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
    v["probes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["state"] == "not_needed")
                .map(|p| {
                    (
                        p["probe"].as_str().unwrap_or("?").to_string(),
                        p["detail"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn report(kernel: &str, dir: &Path, plan: Plan) {
    let Plan {
        pages,
        reps,
        rounds,
    } = plan;
    let dir = dir.to_path_buf();
    let mib = (pages * 4096) >> 20;
    let accel = std::fs::read_to_string(dir.join("accel")).unwrap_or_else(|_| "TCG".into());
    let accel = accel.trim();
    println!(
        "bench (VM lab, {kernel} under {accel}, release build; the workload on vCPU 0, the agent or bpftrace on vCPU 1; {rounds} rounds of detached, vfio-zp, bpftrace and empty programs in turn, {reps} runs of each workload per set; ratios taken within each round):"
    );
    let off = not_needed(&dir);
    let lean = !off.is_empty();
    if lean {
        let names: Vec<&str> = off.iter().map(|(p, _)| p.as_str()).collect();
        println!(
            "  probes left off as not needed on this kernel: {} ({})",
            names.join(", "),
            off[0].1
        );
    } else {
        println!("  every probe attached: this kernel needs the generic unpin probes");
    }
    for (kind, what, max) in [
        (
            "ro",
            format!("MAP_DMA+UNMAP {mib} MiB read-only, read-touched (one pin call per zero page)"),
            Some(RO_OVERHEAD_MAX),
        ),
        (
            "rw",
            format!("MAP_DMA+UNMAP {mib} MiB read-write, read-touched"),
            lean.then_some(LEAN_OVERHEAD_MAX),
        ),
        (
            "vm",
            format!("a real VM's start+stop (QEMU, {VM_MIB} MiB, vfio-pci)"),
            lean.then_some(LEAN_OVERHEAD_MAX),
        ),
    ] {
        let all = |arr: &str| {
            median(
                (1..=rounds)
                    .flat_map(|r| times(&dir, &format!("{arr}-{r}"), kind, reps))
                    .collect(),
            )
        };
        let (Some(d), Some(a)) = (all("detached"), all("attached")) else {
            println!("  {what}: NOT MEASURED (no timings)");
            continue;
        };
        println!("  {what}: detached {d:.0} ms, vfio-zp attached {a:.0} ms (medians of every run)");
        let r = |num: &str, den: &str| ratio(&dir, num, den, kind, reps, rounds);
        if let Some(s) = r("attached", "detached") {
            let target = match max {
                Some(m) => format!(" ({} target <= {m}x)", verdict(s.median <= m)),
                None => String::new(),
            };
            println!("    vfio-zp / detached {s}{target}");
        }
        if let Some(s) = r("bpftrace", "detached") {
            println!("    bpftrace counting the same points / detached {s}");
        }
        if let Some(s) = r("floor", "detached") {
            println!("    empty programs on the same points / detached {s} (the traps alone)");
        }
        match r("attached", "bpftrace") {
            Some(s) => println!(
                "    vfio-zp / bpftrace {s} ({} target <= {VS_BPFTRACE_MAX}x{})",
                verdict(s.median <= VS_BPFTRACE_MAX),
                if s.min <= VS_BPFTRACE_MAX && s.max > VS_BPFTRACE_MAX {
                    "; the rounds straddle it: within the spread"
                } else {
                    ""
                }
            ),
            None => println!("    vfio-zp / bpftrace: NOT MEASURED (see bpftrace-*.log)"),
        }
    }
    // Over the programs both tools ran: a point bpftrace failed to attach
    // (it skips what its wildcards do not match) is left out of both.
    let all_rounds: Vec<u32> = (1..=rounds).collect();
    let rows = point_rows(&dir, &all_rounds);
    let both = points::common(&rows);
    let per_round = Spread::of(
        all_rounds
            .iter()
            .filter_map(|r| {
                let c = points::common(&point_rows(&dir, &[*r]));
                Some(c.ours.per_run()? / c.bpftrace.per_run()?)
            })
            .collect(),
    );
    match (both.ours.per_run(), both.bpftrace.per_run(), per_round) {
        (Some(o), Some(b), Some(s)) => {
            println!(
                "  probe cost per run (bpf_stats, the {} programs both tools ran): vfio-zp {o:.0} ns, bpftrace counting the same points {b:.0} ns ({} runs): {:.2}x; per round {s} ({} target <= {PROBE_COST_MAX}x)",
                both.programs,
                both.bpftrace.runs,
                o / b,
                verdict(s.median <= PROBE_COST_MAX)
            );
            match both.empty.per_run() {
                Some(f) if b > f => println!(
                    "    an empty program costs {f:.0} ns here (bpf_stats' own clock reads under {accel}); above it: vfio-zp {:.0} ns, bpftrace {:.0} ns: {:.2}x",
                    o - f,
                    b - f,
                    (o - f) / (b - f)
                ),
                Some(f) => {
                    println!("    an empty program costs {f:.0} ns here, no less than bpftrace's")
                }
                None => println!("    empty-program floor: NOT MEASURED (see floor-*.log)"),
            }
        }
        (Some(o), _, _) => println!(
            "  probe cost per run (bpf_stats): vfio-zp {o:.0} ns; bpftrace NOT MEASURED (see bpftrace-*.log)"
        ),
        _ => println!("  probe cost: NOT MEASURED (no bpf_stats)"),
    }
    if !both.unmatched.is_empty() && both.bpftrace.runs > 0 {
        println!(
            "    bpftrace ran nothing on {} (left out of both sides)",
            both.unmatched.join(", ")
        );
    }
    if rows.is_empty() {
        println!("    per program: NOT MEASURED (no attach points or listings)");
    } else {
        print!("{}", points::table(&rows));
    }
    // Events lost to a full ring, from the agent's snapshot.
    let lost = |name: &str| -> Option<(u64, u64)> {
        let t = std::fs::read_to_string(dir.join(name)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&t).ok()?;
        let sum = |k: &str| -> u64 {
            v[k].as_object()
                .map_or(0, |m| m.values().filter_map(|x| x.as_u64()).sum())
        };
        Some((sum("drops"), v["hits"]["type1_pin"].as_u64().unwrap_or(0)))
    };
    for r in 1..=rounds {
        match lost(&format!("bench-snap-{r}.json")) {
            Some((0, _)) => {}
            Some((d, _)) => println!(
                "  WARNING: {d} events dropped in attached set {r} (ring {FULL_RING_KIB} KiB): its cost is understated"
            ),
            None => println!("  attached set {r}: drops NOT MEASURED (no snapshot)"),
        }
    }
    match lost("bench-snap-default.json") {
        Some((d, pins)) => println!(
            "  default ring (4 MiB), one {mib} MiB read-only map+unmap: {d} events lost to a full ring ({pins} type1 pin calls); exact counters unaffected"
        ),
        None => println!("  default ring: NOT MEASURED"),
    }
    let ticks = |name: &str| -> Vec<f64> {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    let cpu: Vec<f64> = (1..=rounds)
        .map(|r| format!("bench-agent-cpu-{r}.txt"))
        .filter_map(|f| match ticks(&f)[..] {
            [a, b, hz] => Some((b - a) / hz),
            _ => None,
        })
        .collect();
    if cpu.is_empty() {
        println!("  agent CPU while mapping: NOT MEASURED");
    } else {
        let per = cpu.iter().sum::<f64>() / cpu.len() as f64 / (3 * reps) as f64;
        println!(
            "  agent CPU while mapping: {:.0} ms per run (a {mib} MiB map+unmap or a VM's start+stop; on its own vCPU: decode, model, journal)",
            per * 1e3
        );
    }
    if let [a, b, hz, secs] = ticks("bench-idle.txt")[..] {
        let pct = (b - a) / hz / secs * 100.0;
        println!("  idle agent CPU: {pct:.2}% of one vCPU over {secs:.0} s (target: near zero)");
    } else {
        println!("  idle agent CPU: NOT MEASURED");
    }
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    match lag::p99(&read("bench-lag-before.txt"), &read("bench-lag-after.txt")) {
        Some((ticks, p99)) => {
            let rate = read("bench-wrk.txt")
                .lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .map(|r| format!(", {} requests/s", r.trim()))
                .unwrap_or_default();
            println!(
                "  event loop under wrk -c{STORM_CONNECTIONS} on /metrics while mapping{rate}: tick lag p99 <= {:.1} ms over {ticks} ticks ({} target < {:.0} ms)",
                p99 * 1e3,
                verdict(p99 <= TICK_LAG_P99_MAX),
                TICK_LAG_P99_MAX * 1e3
            );
        }
        None => println!(
            "  event loop under wrk -c{STORM_CONNECTIONS}: NOT MEASURED (see bench-wrk.txt)"
        ),
    }
    if dir.join("bench-unpinned").exists() {
        println!("  WARNING: workload and agent were not pinned to separate vCPUs");
    }
    println!("  raw results: {}", dir.display());
}
