//! The matrix: every scenario on every lab kernel, recorded by vfio-zp
//! while the workload records the kernel's own truth.
use std::{path::Path, time::Duration};

use anyhow::Context;

use super::{bin_dir, kernels, outputs, preamble, qemu};

/// Which cgroup each scenario runs in: shaped like libvirt's and kubepods'
/// so attribution can be checked against real-looking paths.
/// `multi-container` runs a libvirt VM and a KubeVirt-like pod at once.
pub const LIBVIRT_VM1: &str = r"machine.slice/machine-qemu\x2d1\x2dvm1.scope";
pub const LIBVIRT_VM2: &str =
    r"machine.slice/machine-qemu\x2d2\x2dvm\x2dtwo.scope/libvirt/emulator";
pub const LIBVIRT_TIGHT: &str = r"machine.slice/machine-qemu\x2d3\x2dtight.scope";
pub const POD_A: &str = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-4f6b7c8d9e0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4.scope";
pub const POD_B: &str = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod11112222_3333_4444_5555_666677778888.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";

pub const LIBVIRT_THREADS: &str = r"machine.slice/machine-qemu\x2d5\x2dthreads.scope";

pub const CGROUPS: [&str; 6] = [
    LIBVIRT_VM1,
    LIBVIRT_VM2,
    LIBVIRT_TIGHT,
    POD_A,
    POD_B,
    LIBVIRT_THREADS,
];

fn cgroups_for(scenario: &str) -> (Option<&'static str>, Option<&'static str>) {
    match scenario {
        "ro-read-touched" => (Some(LIBVIRT_VM1), None),
        "partial-unmap" => (Some(POD_A), None),
        "multi-container" => (Some(LIBVIRT_VM2), Some(POD_B)),
        "memlock-tight" => (Some(LIBVIRT_TIGHT), None),
        "two-threads" => (Some(LIBVIRT_THREADS), None),
        _ => (None, None),
    }
}

/// The guest scripts (sh/*.sh, the host's /bin/sh: dash), static; what
/// they need from here comes in a generated preamble (see
/// [`super::preamble`]).
const RECORDER_START: &str = include_str!("sh/recorder-start.sh");
const RECORDER_STOP: &str = include_str!("sh/recorder-stop.sh");
const RELOAD_TYPE1: &str = include_str!("sh/reload-type1.sh");
const SCENARIOS: &str = include_str!("sh/scenarios.sh");
const VMM: &str = include_str!("sh/vmm.sh");
const FLOOD: &str = include_str!("sh/flood.sh");
const RESTART: &str = include_str!("sh/restart.sh");
const SANDBOX: &str = include_str!("sh/sandbox.sh");
/// libvirtd in the guest (sets `LVP` and `LV_OK`).
pub const LIBVIRT_UP: &str = include_str!("sh/libvirt-up.sh");
/// The demo's body, after [`LIBVIRT_UP`].
pub const DEMO: &str = include_str!("sh/demo.sh");

/// Starts the recorder (recording to `recording`, a file name in
/// `$RESULTS`), waits until its header is written (probes attached), runs
/// `body` under a /metrics load, probes the HTTP server with bad requests,
/// stops the recorder with SIGTERM (timed), then kills a second recorder
/// with SIGKILL to leave stale return probes for `top --local`; then
/// `after`. `body` and `after` are the scripts' text, `vars` the variables
/// they need.
pub fn with_recorder(
    recording: &str,
    print: bool,
    vars: &[(&str, &str)],
    body: &str,
    after: &str,
) -> anyhow::Result<String> {
    let bin = bin_dir()?.display().to_string();
    let mut all = vec![
        ("BIN", bin.as_str()),
        ("RECORDING", recording),
        ("PRINT", if print { "1" } else { "" }),
    ];
    all.extend_from_slice(vars);
    // The scripts' pieces run as one, in order; `status` is the guest
    // command's exit status.
    Ok(format!(
        "{}{RECORDER_START}{body}{RECORDER_STOP}{after}exit $status\n",
        preamble(&all)
    ))
}

/// Where the restart check's workload runs (a libvirt-shaped VM "restart").
pub const LIBVIRT_RESTART: &str = r"machine.slice/machine-qemu\x2d4\x2drestart.scope";

/// Where the sandboxed agent's workload runs.
pub const LIBVIRT_SANDBOX: &str = r"machine.slice/machine-qemu\x2d6\x2dsandbox.scope";

/// The systemd unit the sandbox phase mirrors.
const UNIT: &str = include_str!("../../../deploy/systemd/vfio-zp.service");

/// The value of the unit's first `KEY=` line.
fn unit_setting<'a>(unit: &'a str, key: &str) -> anyhow::Result<&'a str> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("the unit has no {key}="))
}

/// The unit's `LimitMEMLOCK=` as prlimit's `--memlock` (soft:hard).
fn memlock_limit(unit: &str) -> anyhow::Result<String> {
    let v = unit_setting(unit, "LimitMEMLOCK")?.trim();
    let v = if v == "infinity" { "unlimited" } else { v };
    Ok(format!("{v}:{v}"))
}

/// The unit's `CapabilityBoundingSet=` as setpriv's `--bounding-set`.
fn bounding_set(unit: &str) -> anyhow::Result<String> {
    let caps = unit_setting(unit, "CapabilityBoundingSet")?;
    Ok(std::iter::once("-all".to_string())
        .chain(
            caps.split_whitespace()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(","))
}

/// The matrix's guest command: every scenario of `scenarios` under the
/// recorder (type1 reloaded halfway), the real VMMs of `vmm` if given,
/// then the ring flood, the restarts and the unit's sandbox.
pub fn guest_script(
    scenarios: &[String],
    pages: u64,
    vmm: Option<&[String]>,
) -> anyhow::Result<String> {
    // scenarios.sh reads one line per scenario, its fields split on blanks.
    let mut lines = Vec::new();
    for s in scenarios {
        let (cg, cg2) = cgroups_for(s);
        let line = format!("{s} {} {}", cg.unwrap_or("-"), cg2.unwrap_or("-"));
        anyhow::ensure!(
            line.split_whitespace().count() == 3,
            "scenario {s}: a blank in its name or cgroups"
        );
        lines.push(line);
    }
    let mut body = format!("{RELOAD_TYPE1}{SCENARIOS}");
    if vmm.is_some() {
        body.push_str(LIBVIRT_UP);
        body.push_str(VMM);
    }
    let pages = pages.to_string();
    let reload_at = (scenarios.len() / 2).to_string();
    let vmm = vmm.unwrap_or_default().join(" ");
    let memlock = memlock_limit(UNIT)?;
    let bounding = bounding_set(UNIT)?;
    with_recorder(
        outputs::RECORDING,
        false,
        &[
            ("PAGES", &pages),
            ("SCENARIOS", &lines.join("\n")),
            ("RELOAD_AT", &reload_at),
            ("VMM_SCENARIOS", &vmm),
            ("RESTART_CGROUP", LIBVIRT_RESTART),
            ("SANDBOX_CGROUP", LIBVIRT_SANDBOX),
            ("MEMLOCK", &memlock),
            ("BOUNDING", &bounding),
        ],
        &body,
        &format!("{FLOOD}{RESTART}{SANDBOX}"),
    )
}

pub fn vmm_scenarios() -> anyhow::Result<Vec<String>> {
    let out = crate::cmd::output(
        std::process::Command::new(bin_dir()?.join("vfio-zp-workload")).arg("--list-vmm-scenarios"),
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

pub fn scenarios() -> anyhow::Result<Vec<String>> {
    let out = crate::cmd::output(
        std::process::Command::new(bin_dir()?.join("vfio-zp-workload")).arg("--list-scenarios"),
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Guests run at once: one per host core (each guest has one vCPU, a host
/// thread under TCG), at most `VFIO_ZP_LAB_JOBS` when that is set.
pub fn jobs() -> usize {
    std::env::var("VFIO_ZP_LAB_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .filter(|j: &usize| *j > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs the matrix, [`jobs`] guests at once, in the order given (slowest
/// first keeps the last guest short); results land in `out/<kernel>/`.
/// Kernels are prepared (downloaded) one by one first.
pub fn run(names: &[String], out: &Path, pages: u64, timeout: Duration) -> anyhow::Result<()> {
    run_with(names, out, pages, timeout, true)
}

/// [`run`], with or without the real VMMs (`vmm`).
fn run_with(
    names: &[String],
    out: &Path,
    pages: u64,
    timeout: Duration,
    vmm: bool,
) -> anyhow::Result<()> {
    let scenarios = scenarios()?;
    let kernels = names
        .iter()
        .map(|n| kernels::prepare(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let vmm = if vmm { Some(vmm_scenarios()?) } else { None };
    let script = guest_script(&scenarios, pages, vmm.as_deref())?;
    let queue = std::sync::Mutex::new(
        kernels
            .into_iter()
            .collect::<std::collections::VecDeque<_>>(),
    );
    let results = std::sync::Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    let jobs = jobs().min(names.len()).max(1);
    eprintln!(
        "lab: {} kernels, {jobs} guest(s) at once, {} scenarios each",
        names.len(),
        scenarios.len()
    );
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some(k) = queue.lock().map(|mut q| q.pop_front()).ok().flatten() {
                    let r = one(&k, out, &script, timeout);
                    if let Ok(mut v) = results.lock() {
                        v.push((k.name.clone(), r));
                    }
                }
            });
        }
    });
    let mut failed = Vec::new();
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(n, _)| names.iter().position(|x| x == n));
    eprintln!("lab: matrix done in {:.0?}:", started.elapsed());
    for (name, r) in results {
        match r {
            Ok(t) => eprintln!("lab:   {name:<11} ok in {t:.0?}"),
            Err(e) => {
                eprintln!("lab:   {name:<11} FAILED: {e:#}");
                failed.push(name);
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "guest runs failed on: {}",
        failed.join(", ")
    );
    Ok(())
}

/// One kernel's guest; its time, or why it failed.
fn one(
    k: &kernels::Kernel,
    out: &Path,
    script: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let name = &k.name;
    let dir = out.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("lab: {name}: booting {}", k.release);
    let r =
        qemu::run(k, &dir, script, timeout, false).with_context(|| format!("lab kernel {name}"))?;
    match r.exit_code {
        Some(0) => {
            eprintln!("lab: {name}: done in {:.0?}", r.elapsed);
            Ok(r.elapsed)
        }
        code => {
            eprintln!(
                "lab: {name}: guest command failed ({code:?}); console: {}",
                dir.join("console.log").display()
            );
            tail(&dir.join("console.log"), 30);
            anyhow::bail!("guest command failed ({code:?}) after {:.0?}", r.elapsed)
        }
    }
}

pub fn tail(path: &Path, n: usize) {
    if let Ok(t) = std::fs::read_to_string(path) {
        let lines: Vec<_> = t.lines().collect();
        for l in &lines[lines.len().saturating_sub(n)..] {
            eprintln!("  | {l}");
        }
    }
}

/// Golden fixtures: a small-page matrix (the type1 scenarios, the flood and
/// the restarts) whose recordings, live verdicts and kernel truths are kept
/// in the tree for `cargo test` (tests/golden.rs).
pub fn fixtures(
    names: &[String],
    dest: &Path,
    pages: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let out = std::env::temp_dir().join("vfio-zp-fixtures");
    // Without the real VMMs: a QEMU maps all its RAM, one record per page
    // on 5.10, which would make each golden recording 13 MB.
    run_with(names, &out, pages, timeout, false)?;
    for name in names {
        let to = dest.join(name);
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir_all(&to)?;
        // The ring flood's files too, in flood/ (its recorder's log names
        // this machine's paths: left out).
        std::fs::create_dir_all(to.join("flood"))?;
        for e in std::fs::read_dir(out.join(name))?.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f == outputs::RECORDING || f == outputs::VERDICTS || f.starts_with("truth-") {
                std::fs::copy(e.path(), to.join(&f))?;
            } else if f.starts_with("flood") && !f.ends_with(".log") && !f.contains("workload") {
                std::fs::copy(e.path(), to.join("flood").join(&f))?;
            }
        }
        eprintln!("fixtures: {name} -> {}", to.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounding set the sandbox phase gives the agent is the unit's,
    /// as the kernel reports it for a process started under it.
    #[test]
    fn the_sandbox_bounds_capabilities_as_the_unit_does() {
        let set = bounding_set(UNIT).unwrap();
        assert!(set.starts_with("-all,+"), "{set}");
        let out = match std::process::Command::new("setpriv")
            .args([
                "--bounding-set",
                &set,
                "grep",
                "CapBnd",
                "/proc/self/status",
            ])
            .output()
        {
            Ok(o) => o,
            Err(_) => return vfio_zp::testing::skip("setpriv", "setpriv not installed"),
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mask = u64::from_str_radix(text.trim().trim_start_matches("CapBnd:").trim(), 16)
            .unwrap_or_else(|_| panic!("{text}"));
        let named = unit_setting(UNIT, "CapabilityBoundingSet")
            .unwrap()
            .split_whitespace()
            .count();
        assert_eq!(mask.count_ones() as usize, named, "{set}: {text}");
    }
}
