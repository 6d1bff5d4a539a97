//! Replay benchmarks: model throughput on one core and the replaying
//! process's peak RSS, each printed next to a baseline measured in the same
//! run. Figures only; nothing here asserts a time.
//!
//! The stream is real: the 6.1 golden recording, copied over and over with
//! its ids (containers, mappings, processes, cgroups) renumbered per copy, so
//! every copy is a new set of containers that lives, pins and closes.
//!
//! `cargo bench -p vfio-zp --bench replay` (or `cargo xtask bench`).
//! `VFIO_ZP_BENCH_CONTAINERS` sets the container count (default 10 000);
//! `VFIO_ZP_BENCH_KEEP=1` keeps the generated recordings.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use vfio_zp::{
    model::{Config, Model},
    stream::event::What,
    stream::{Header, Line, stream_path},
};

const TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/6.1/recording.jsonl"
);

struct Template {
    header: Header,
    body: Vec<Line>,
    containers: u32,
    dmas: u32,
    span_ns: u64,
}

fn template() -> Template {
    let mut s = stream_path(Path::new(TEMPLATE)).expect("6.1 fixture");
    let header = s.header.clone();
    let mut body = Vec::new();
    let (mut containers, mut dmas, mut t0, mut t1) = (0, 0, u64::MAX, 0);
    for line in s.by_ref() {
        let line = line.expect("fixture line");
        match &line {
            // Counters carry kcore refcount readings and cumulative totals of
            // one run: meaningless in copies.
            Line::Counters(_) | Line::Header(_) => continue,
            Line::Event(e) => {
                containers = containers.max(e.container.unwrap_or(0));
                if let Some(d) = dma_of(&e.what) {
                    dmas = dmas.max(d);
                }
                t0 = t0.min(e.t_ns);
                t1 = t1.max(e.t_ns);
            }
            _ => {}
        }
        body.push(line);
    }
    Template {
        header,
        body,
        containers,
        dmas,
        span_ns: t1.saturating_sub(t0) + 1_000_000,
    }
}

fn dma_of(w: &What) -> Option<u32> {
    match w {
        What::Type1Pin { dma, .. }
        | What::Type1Unpin { dma, .. }
        | What::LockAcct { dma, .. }
        | What::RemoveDma { dma } => Some(*dma),
        _ => None,
    }
}

/// Copy `k` of the template's body: every id moved past copy `k - 1`'s.
fn copy(t: &Template, k: u32, out: &mut Vec<Line>) {
    const PIDS: u32 = 1 << 16;
    for line in &t.body {
        let mut l = line.clone();
        match &mut l {
            Line::Event(e) => {
                e.t_ns += k as u64 * t.span_ns;
                e.tgid += k * PIDS;
                e.pid += k * PIDS;
                e.cgroup_id += k as u64 * 1_000_000;
                if let Some(c) = &mut e.container {
                    *c += k * t.containers;
                }
                match &mut e.what {
                    What::Type1Pin { dma, .. }
                    | What::Type1Unpin { dma, .. }
                    | What::LockAcct { dma, .. }
                    | What::RemoveDma { dma } => *dma += k * t.dmas,
                    _ => {}
                }
            }
            Line::Process(p) => p.tgid += k * PIDS,
            Line::Cgroup(c) => {
                c.id += k as u64 * 1_000_000;
                if let Some(p) = &mut c.path {
                    p.push_str(&format!("-copy{k}"));
                }
            }
            _ => {}
        }
        out.push(l);
    }
}

fn stream(t: &Template, containers: u32) -> Vec<Line> {
    let copies = containers.div_ceil(t.containers.max(1));
    let mut out = Vec::with_capacity(t.body.len() * copies as usize);
    for k in 0..copies {
        copy(t, k, &mut out);
    }
    out
}

fn events(lines: &[Line]) -> u64 {
    lines.iter().filter(|l| matches!(l, Line::Event(_))).count() as u64
}

/// The replay loop of `vfio-zp replay`, minus parsing.
fn run_model(header: &Header, lines: &[Line]) -> Model {
    let mut m = Model::new(header, Config::default());
    for l in lines {
        m.apply(l);
        m.take_notes();
    }
    m
}

/// Best of `n` runs: the least disturbed by the rest of the machine.
fn best(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Writes `containers` worth of copies one at a time: the bench process stays
/// small, because a child's peak RSS as wait4 reports it starts from the
/// parent's (exec records the spawning mm's high-water mark).
fn write_recording(path: &Path, t: &Template, containers: u32) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).expect("bench file"));
    let mut put = |l: &Line| {
        serde_json::to_writer(&mut w, l).expect("write");
        w.write_all(b"\n").expect("write");
    };
    put(&Line::Header(t.header.clone()));
    let mut buf = Vec::new();
    for k in 0..containers.div_ceil(t.containers.max(1)) {
        buf.clear();
        copy(t, k, &mut buf);
        buf.iter().for_each(&mut put);
    }
    w.flush().expect("flush");
}

/// Peak RSS (KiB) of `vfio-zp replay FILE`, and whether it succeeded.
// Reaped by wait4, which Child::wait cannot do (it drops the rusage).
#[allow(clippy::zombie_processes)]
fn replay_rss(file: &Path) -> (u64, bool) {
    let bin = env!("CARGO_BIN_EXE_vfio-zp");
    let child = std::process::Command::new(bin)
        .args(["replay", "--json"])
        .arg(file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn vfio-zp replay");
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    (
        ru.ru_maxrss as u64,
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it once, small.
    let quick = !std::env::args().any(|a| a == "--bench");
    let containers: u32 = std::env::var("VFIO_ZP_BENCH_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 100 } else { 10_000 });
    let t = template();
    let copies = containers.div_ceil(t.containers.max(1));

    // Peak RSS first, while this process is small (see write_recording): the
    // real binary replaying the stream, against replaying one template copy
    // (the binary's own floor) in the same run.
    let dir = std::env::temp_dir().join(format!("vfio-zp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let big: PathBuf = dir.join("big.jsonl");
    let small: PathBuf = dir.join("small.jsonl");
    write_recording(&big, &t, containers);
    write_recording(&small, &t, t.containers);
    let (base_kib, ok_small) = replay_rss(&small);
    let t_big = Instant::now();
    let (big_kib, ok_big) = replay_rss(&big);
    let wall = t_big.elapsed();
    if std::env::var_os("VFIO_ZP_BENCH_KEEP").is_some() {
        eprintln!("  kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let lines = stream(&t, containers);
    let n = events(&lines);
    let rounds = if quick { 1 } else { 5 };
    println!(
        "replay bench: {containers} containers, {n} events ({copies} renumbered copies of the 6.1 recording)"
    );
    println!(
        "  RSS:      {:>8.1} MiB peak replaying {} containers (target <= 30); \
         baseline {:.1} MiB replaying {} ({:.2}x); file replay {:.2} M events/s{}",
        big_kib as f64 / 1024.0,
        containers,
        base_kib as f64 / 1024.0,
        t.containers,
        big_kib as f64 / base_kib.max(1) as f64,
        n as f64 / wall.as_secs_f64() / 1e6,
        if ok_small && ok_big {
            ""
        } else {
            " (REPLAY FAILED)"
        }
    );

    // Baseline: decoding the same lines from JSON, what `replay` does first.
    let text: Vec<String> = lines
        .iter()
        .map(|l| serde_json::to_string(l).expect("encode"))
        .collect();
    let parse = best(rounds, || {
        for s in &text {
            std::hint::black_box(serde_json::from_str::<Line>(s).expect("decode"));
        }
    });
    let mut model = None;
    let apply = best(rounds, || model = Some(run_model(&t.header, &lines)));
    let v = model.expect("ran").verdicts();
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    // Per container too: the probes' folding makes fewer, fuller events of
    // the same work, which lowers events/s without slowing the model.
    println!(
        "  model:    {:>8.2} M events/s on one core (target >= 5): {:.1} ms for the {containers} containers, {:.2} us each",
        rate(apply) / 1e6,
        apply.as_secs_f64() * 1e3,
        apply.as_secs_f64() * 1e6 / f64::from(containers.max(1))
    );
    println!(
        "  baseline: {:>8.2} M events/s decoding the same lines from JSON; model / decode = {:.2}x",
        rate(parse) / 1e6,
        rate(apply) / rate(parse)
    );
    // The agent's other per-line cost: the journal line kept before a ring
    // record is released (JSON, copied into the mapped file), to a fresh
    // state dir.
    let state_dir =
        std::env::temp_dir().join(format!("vfio-zp-bench-state-{}", std::process::id()));
    let journal = best(rounds, || {
        let _ = std::fs::remove_dir_all(&state_dir);
        let (mut st, _) =
            vfio_zp::agent::state::State::open(&state_dir, "bench", "boot", true, u64::MAX)
                .expect("state");
        for l in &lines {
            st.append(l).expect("journal");
        }
    });
    let _ = std::fs::remove_dir_all(&state_dir);
    println!(
        "  journal:  {:>8.2} M lines/s appended one by one (the agent's restart journal); model / journal = {:.2}x",
        rate(journal) / 1e6,
        rate(apply) / rate(journal)
    );
    let leaking = v
        .containers
        .iter()
        .filter(|c| c.leak == vfio_zp::model::verdict::Leak::Leaking)
        .count();
    println!(
        "  verdicts: {} containers, {} leaking (6.1 copies must show none)",
        v.containers.len(),
        leaking
    );
    if !(ok_small && ok_big) || leaking != 0 || v.containers.len() < containers as usize {
        std::process::exit(1);
    }
}
