//! vfio-zp chores: `cargo xtask <command>`.
mod bootstrap;
mod cmd;
mod fuzz;
mod lab;
#[cfg(test)]
mod layout;
mod shellcheck;
mod skip;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "vfio-zp chores: bootstrap, VM lab, tests")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (nightly rust-src, bpf-linker, QEMU, busybox, kmod...).
    Bootstrap,
    /// The main job: live zero-page events, on this host if it can, else in
    /// the VM lab (a libvirt domain, QEMU on a vfio-pci hostdev, leaking on
    /// 5.10-leaky, named after the domain).
    Run {
        /// Lab kernel to boot when this host cannot run the probes itself.
        #[arg(long, default_value = "5.10-leaky")]
        kernel: String,
        /// Use the VM lab even if this host could run the probes.
        #[arg(long)]
        lab: bool,
    },
    /// Every test: unit and verifier tests, then the VM matrix checked against kernel truth.
    Test {
        /// Lab kernels (comma-separated); guests run one per core at once
        /// (VFIO_ZP_LAB_JOBS to change).
        #[arg(long, value_delimiter = ',', default_values_t = lab::kernels::DEFAULT_MATRIX.map(String::from))]
        kernels: Vec<String>,
        /// Skip the VM matrix (said loudly, and listed as the skip
        /// `vm-matrix`).
        #[arg(long)]
        no_vm: bool,
        /// Checks allowed to skip where they cannot run (comma-separated
        /// names, as a failing skip prints them: e.g. `verifier` when not
        /// root). Any other check that cannot run fails the command; the
        /// summary lists every skip.
        #[arg(long, value_delimiter = ',', value_name = "NAME")]
        allow_skip: Vec<String>,
    },
    /// Download (or verify the cached) lab kernels and build the leaky module.
    Kernels {
        #[arg(long, value_delimiter = ',', default_values_t = lab::kernels::DEFAULT_MATRIX.map(String::from))]
        kernels: Vec<String>,
    },
    /// Boot a lab kernel with VFIO set up and run a shell command in it.
    Vm {
        #[arg(long, default_value = "6.1")]
        kernel: String,
        /// Shared read-write with the guest at the same path ($RESULTS there).
        #[arg(long, default_value = "lab-out/vm")]
        results: PathBuf,
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// vCPUs (the bench's guests have 2: workload and agent apart).
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Guest RAM, as QEMU's -m (a guest running a 1 GiB VM needs 4G).
        #[arg(long, default_value = "2G")]
        mem: String,
        /// Shell command run in the guest (host root mounted read-only at /).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run every workload scenario on each lab kernel under the recorder.
    VmMatrix {
        #[arg(long, value_delimiter = ',', default_values_t = lab::kernels::DEFAULT_MATRIX.map(String::from))]
        kernels: Vec<String>,
        #[arg(long, default_value = "lab-out")]
        out: PathBuf,
        /// Seconds per kernel (a hang guard: 5.10 under TCG takes 15 min alone).
        #[arg(long, default_value_t = LAB_TIMEOUT_S)]
        timeout: u64,
        /// Pages per mapping (256 = 1 MiB, the size kernel-facts.md measured).
        #[arg(long, default_value_t = 256)]
        pages: u64,
    },
    /// Run the fuzz targets (fuzz/) for a set time each; fails on any crash.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets (default: all).
        #[arg(default_values_t = fuzz::TARGETS.map(String::from))]
        targets: Vec<String>,
    },
    /// Benchmarks, printed as figures next to a baseline taken in the same
    /// run: model replay throughput (one core) and the replaying process's
    /// peak RSS for 10 000 containers natively; then, in a lab guest per
    /// kernel, the probes' cost per run against bpftrace counting the same
    /// points, MAP_DMA + UNMAP and a real QEMU's start and stop (1 GiB,
    /// vfio-pci) with nothing attached, the agent, bpftrace and empty
    /// programs taking turns, the idle agent's CPU, and the event loop's
    /// tick lag while `wrk -c500` scrapes /metrics (installs bpftrace and
    /// bpftool). Hours under TCG with the defaults.
    Bench {
        /// Containers in the replayed stream.
        #[arg(long, default_value_t = 10_000)]
        containers: u32,
        /// Lab kernels for the guest benchmarks, comma-separated, one guest
        /// after the other: 5.10 (GUP refcounts the zero page), 6.1 (it
        /// does not; type1 may keep the huge zero page) and one whose
        /// generic unpin probes are not needed (6.12).
        #[arg(long, value_delimiter = ',', default_value = "5.10,6.1,6.12")]
        kernels: Vec<String>,
        /// Pages per mapping in the guest (65536 = 256 MiB).
        #[arg(long, default_value_t = 65536)]
        pages: u64,
        /// Runs of each workload per set.
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Rounds: each runs the four arrangements (detached, vfio-zp,
        /// bpftrace, empty programs) in turn; ratios are per round.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Native figures only.
        #[arg(long)]
        no_vm: bool,
        /// Print the guest figures of the last run again without booting.
        #[arg(long)]
        report_only: bool,
    },
    /// Check every shell script of the tree (`*.sh`) with shellcheck
    /// (Debian's, fetched into the lab's cache when not on PATH); fails on
    /// any finding. `cargo xtask test` runs it too.
    Shellcheck,
    /// Regenerate the golden recordings in vfio-zp/tests/fixtures (a
    /// small-page matrix run on every lab kernel).
    Fixtures {
        #[arg(long, value_delimiter = ',', default_values_t = lab::kernels::DEFAULT_MATRIX.map(String::from))]
        kernels: Vec<String>,
        #[arg(long, default_value_t = 16)]
        pages: u64,
    },
}

/// Seconds a lab guest may run before it counts as hung: 5.10's guest takes
/// about 900 s in a fresh-clone CI under TCG (DEFAULT_MATRIX), and up to
/// twice that when the host is busy with other work.
const LAB_TIMEOUT_S: u64 = 2400;

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The agent and the workload, built before anything boots.
fn build_binaries() -> anyhow::Result<()> {
    cmd::run(cargo().args(["build", "-p", "vfio-zp", "-p", "vfio-zp-workload", "--bins"]))
}

fn host_can_probe() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
        && std::path::Path::new("/sys/module/vfio_iommu_type1").exists()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Bootstrap => bootstrap::run(),
        Cmd::Shellcheck => shellcheck::run(Path::new(".")),
        Cmd::Bench {
            containers,
            kernels,
            pages,
            reps,
            rounds,
            no_vm,
            report_only,
        } => {
            let out = std::fs::canonicalize(".")?.join("lab-out").join("bench");
            let plan = lab::bench::Plan {
                pages,
                reps,
                rounds,
            };
            if report_only {
                return lab::bench::run(&kernels, &out, plan, true);
            }
            // The probes are not needed to replay.
            cmd::run(
                cargo()
                    .args(["bench", "-p", "vfio-zp", "--bench", "replay"])
                    .env("VFIO_ZP_BENCH_CONTAINERS", containers.to_string())
                    .env("AYA_BUILD_SKIP", "1"),
            )?;
            if no_vm {
                eprintln!("bench: --no-vm: probe cost, MAP_DMA overhead and idle CPU NOT MEASURED");
                return Ok(());
            }
            bootstrap::run()?;
            build_binaries()?;
            lab::bench::run(&kernels, &out, plan, false)
        }
        Cmd::Kernels { kernels } => {
            for k in kernels {
                lab::kernels::prepare(&k)?;
            }
            Ok(())
        }
        Cmd::Vm {
            kernel,
            results,
            timeout,
            cpus,
            mem,
            command,
        } => {
            bootstrap::run()?;
            let k = lab::kernels::prepare(&kernel)?;
            let r = lab::qemu::run_with(
                &k,
                &results,
                &command.join(" "),
                Duration::from_secs(timeout),
                true,
                cpus,
                &mem,
            )?;
            match r.exit_code {
                Some(0) => Ok(()),
                c => anyhow::bail!("guest command exited with {c:?}"),
            }
        }
        Cmd::VmMatrix {
            kernels,
            out,
            timeout,
            pages,
        } => {
            bootstrap::run()?;
            build_binaries()?;
            lab::matrix::run(&kernels, &out, pages, Duration::from_secs(timeout))
        }
        Cmd::Fuzz { seconds, targets } => {
            bootstrap::run()?;
            fuzz::run(&targets, seconds)
        }
        Cmd::Fixtures { kernels, pages } => {
            bootstrap::run()?;
            build_binaries()?;
            lab::matrix::fixtures(
                &kernels,
                std::path::Path::new("vfio-zp/tests/fixtures"),
                pages,
                Duration::from_secs(LAB_TIMEOUT_S),
            )
        }
        Cmd::Run { kernel, lab } => {
            bootstrap::run()?;
            build_binaries()?;
            let bin = lab::bin_dir()?;
            if host_can_probe() && !lab {
                eprintln!(
                    "run: this host has kprobes and vfio_iommu_type1: running the agent here (Ctrl-C to stop)"
                );
                // Zero-page events are logged at debug level.
                return cmd::run(
                    Command::new(bin.join("vfio-zp"))
                        .arg("agent")
                        .env("VFIO_ZP_LOG", "info,vfio_zp=debug"),
                );
            }
            eprintln!(
                "run: this host cannot probe VFIO here; booting the VM lab ({kernel}) to show live events"
            );
            let k = lab::kernels::prepare(&kernel)?;
            // A libvirt domain with the vfio-pci device as its <hostdev>
            // (QEMU alone, named as libvirt would name it, should libvirtd
            // not start); its read-only ROM pins take the leak path on
            // 5.10-leaky.
            let body = format!("{}{}", lab::matrix::LIBVIRT_UP, lab::matrix::DEMO);
            let script = lab::matrix::with_recorder("demo.jsonl", true, &[], &body, "")?;
            let out = PathBuf::from("lab-out/demo");
            let r = lab::qemu::run(&k, &out, &script, Duration::from_secs(900), true)?;
            eprintln!(
                "run: recording kept in {}; its verdicts (`vfio-zp replay`):",
                out.join("demo.jsonl").display()
            );
            // The model's conclusions, replayed on the host from the guest's recording.
            let _ = cmd::run(
                Command::new(bin.join("vfio-zp"))
                    .arg("replay")
                    .arg(out.join("demo.jsonl")),
            );
            match r.exit_code {
                Some(0) => Ok(()),
                c => anyhow::bail!("the demo failed in the guest ({c:?})"),
            }
        }
        Cmd::Test {
            kernels,
            no_vm,
            mut allow_skip,
        } => {
            bootstrap::run()?;
            cmd::run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            cmd::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            // Licences (deny.toml: permissive only), banned crates, sources.
            cmd::run(cargo().args(["deny", "check", "licenses", "bans", "sources"]))?;
            if no_vm {
                allow_skip.push("vm-matrix".into());
            }
            let log = std::fs::canonicalize(".")?.join("target/vfio-zp-skips.txt");
            let _ = std::fs::remove_file(&log);
            let r = test(&kernels, no_vm, &allow_skip, &log);
            match skip::summary(&log).as_slice() {
                [] => eprintln!("test: skipped: none"),
                skips => eprintln!("test: skipped ({}):\n  {}", skips.len(), skips.join("\n  ")),
            }
            r
        }
    }
}

/// The tests after fmt and clippy: every test strict about skips (see
/// skip.rs), then the VM matrix and its check against the kernel's truth.
fn test(kernels: &[String], no_vm: bool, allow: &[String], log: &Path) -> anyhow::Result<()> {
    let strict = |mut c: Command| {
        c.env(skip::STRICT, "1")
            .env(skip::LOG, log)
            .env(skip::ALLOW, allow.join(","));
        c
    };
    let mut unit = strict(cargo());
    unit.args(["test", "--workspace"]);
    if !no_vm {
        // lab_matrix's check runs below, once the matrix has run.
        unit.env("VFIO_ZP_LAB_LATER", "1");
    }
    cmd::run(&mut unit)?;
    alert_rules(log, allow)?;
    shellcheck::check(Path::new("."), log, allow)?;
    if no_vm {
        eprintln!(
            "test: WARNING: --no-vm: the VM matrix was SKIPPED; attach and kernel-truth checks did not run"
        );
        return Ok(());
    }
    build_binaries()?;
    let out = std::fs::canonicalize(".")?.join("lab-out");
    lab::matrix::run(kernels, &out, 256, Duration::from_secs(LAB_TIMEOUT_S))?;
    cmd::run(
        strict(cargo())
            .args([
                "test",
                "-p",
                "vfio-zp",
                "--test",
                "lab_matrix",
                "--",
                "--nocapture",
            ])
            .env("VFIO_ZP_LAB_OUT", &out)
            .env("VFIO_ZP_LAB_KERNELS", kernels.join(",")),
    )
}

/// The Prometheus alert rules: valid, and their unit tests pass.
fn alert_rules(log: &Path, allow: &[String]) -> anyhow::Result<()> {
    if !cmd::succeeds(Command::new("promtool").arg("--version")) {
        return skip::runner_skip(log, allow, "alert-rules", "promtool not installed");
    }
    cmd::run(Command::new("promtool").args(["check", "rules", "deploy/prometheus/alerts.yml"]))?;
    cmd::run(
        Command::new("promtool")
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir("deploy/prometheus"),
    )
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
