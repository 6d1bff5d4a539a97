//! Drives VFIO type1 scenarios in a VM-lab guest and writes what the kernel
//! itself says (zero page refcount via /proc/kcore, pagemap, VmLck) as JSON.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use vfio_zp_workload::{
    scenarios::{self, SCENARIOS},
    vmm::{self, VMM_SCENARIOS},
};

/// Drive a VFIO type1 scenario and record the kernel's own truth.
#[derive(Parser)]
struct Cli {
    /// VFIO group node, e.g. /dev/vfio/3.
    #[arg(long, env = "VFIO_GROUP", required_unless_present_any = ["list_scenarios", "list_vmm_scenarios"])]
    group: Option<String>,
    /// A second VFIO group, for scenarios that run two containers at once.
    #[arg(long, env = "VFIO_GROUP2")]
    group2: Option<String>,
    /// Scenario to run: a type1 scenario driven by this program, or a VMM
    /// scenario (a real QEMU as the VFIO client).
    #[arg(long, required_unless_present_any = ["list_scenarios", "list_vmm_scenarios", "vm_lifecycle_mib"])]
    scenario: Option<String>,
    /// The bench's real VM instead of a scenario: one QEMU (-M pc, paused)
    /// with this much RAM (MiB) on the group's device, timed from its start
    /// until its mappings are made and from `quit` until it exited
    /// (written to --truth as `runs[0].map_ns` and `unmap_ns`).
    #[arg(long, value_name = "MIB", conflicts_with = "scenario", value_parser = clap::value_parser!(u64).range(16..=65536))]
    vm_lifecycle_mib: Option<u64>,
    /// Print the type1 scenario names, one per line, and exit.
    #[arg(long)]
    list_scenarios: bool,
    /// Print the VMM scenario names, one per line, and exit.
    #[arg(long)]
    list_vmm_scenarios: bool,
    /// VMM scenarios: a shell command that prints the agent's snapshot,
    /// run while every VM lives, with VFIO_ZP_PHASE=alive in its
    /// environment (and once more, with VFIO_ZP_PHASE=unplugged, while a
    /// hot-plugged device is out); run again until the snapshot's time has
    /// reached that moment (30 s at most).
    #[arg(long, value_name = "COMMAND")]
    while_alive: Option<String>,
    /// Write the truth as JSON here.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Move into this cgroup v2 (relative to /sys/fs/cgroup, created if needed) first.
    #[arg(long)]
    cgroup: Option<String>,
    /// For two-process scenarios: the second process moves into this cgroup.
    #[arg(long)]
    cgroup2: Option<String>,
    /// Pages per mapping (4 KiB each).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..=1 << 20))]
    pages: u64,
    /// How long to keep the mapping before unmapping, in milliseconds.
    #[arg(long, default_value_t = 100)]
    hold_ms: u64,
    /// Keep the mapping until this file exists (at most --hold-ms); writes
    /// FILE.mapped once mapped.
    #[arg(long, value_name = "FILE")]
    hold_until: Option<PathBuf>,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.list_scenarios || cli.list_vmm_scenarios {
        let names = SCENARIOS
            .iter()
            .map(|s| s.name)
            .filter(|_| cli.list_scenarios);
        for n in names.chain(
            VMM_SCENARIOS
                .iter()
                .map(|s| s.name)
                .filter(|_| cli.list_vmm_scenarios),
        ) {
            println!("{n}");
        }
        return Ok(());
    }
    if let Some(mib) = cli.vm_lifecycle_mib {
        let group = cli.group.context("--group (or VFIO_GROUP) is needed")?;
        let l = vmm::lifecycle(&group, mib)?;
        for r in &l.runs {
            println!(
                "workload: {} {} MiB: started and mapped in {:.3} s (VmLck {:?} kB), quit and gone in {:.3} s",
                l.scenario,
                r.ram_mib,
                r.map_ns as f64 / 1e9,
                r.vmlck_kb,
                r.unmap_ns as f64 / 1e9
            );
        }
        if let Some(p) = cli.truth {
            std::fs::write(&p, serde_json::to_string_pretty(&l)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        return Ok(());
    }
    let (Some(group), Some(name)) = (cli.group, cli.scenario) else {
        unreachable!("clap requires both")
    };
    if let Some(s) = vmm::find(&name) {
        let groups: Vec<String> = std::iter::once(group)
            .chain(cli.group2.filter(|g| !g.is_empty()))
            .collect();
        let truth = vmm::run(s, &groups, cli.while_alive.as_deref())?;
        for v in &truth.vms {
            println!(
                "workload: {} {} pid {} on {}: VmLck {:?} kB (hot-plug: {:?} kB, {:?} kB unplugged) VmPin {:?} kB while alive, memlock {:?}; {}; refused {:?}; errors {:?}",
                s.name,
                v.name,
                v.pid,
                v.device,
                v.vmlck_kb_alive,
                v.vmlck_kb_first,
                v.vmlck_kb_unplugged,
                v.vmpin_kb_alive,
                v.memlock_limit,
                v.exit,
                v.refused,
                v.errors
            );
        }
        println!(
            "workload: {}: zero page refcount {:?} -> {:?} (all alive) -> {:?}",
            s.name, truth.refcount_before, truth.refcount_alive, truth.refcount_after
        );
        if let Some(p) = cli.truth {
            std::fs::write(&p, serde_json::to_string_pretty(&truth)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        anyhow::ensure!(
            truth.vms.iter().all(|v| v.errors.is_empty()),
            "{}: a VM failed",
            s.name
        );
        return Ok(());
    }
    let s = scenarios::find(&name)
        .with_context(|| format!("unknown scenario `{name}` (see --list-scenarios)"))?;
    if let Some(cg) = &cli.cgroup {
        scenarios::enter_cgroup(cg)?;
    }
    let pages = cli.pages as usize;
    let groups: Vec<String> = std::iter::once(group)
        .chain(cli.group2.filter(|g| !g.is_empty()))
        .collect();
    let mut truth = scenarios::run(
        s,
        &groups,
        cli.cgroup2.as_deref(),
        pages,
        &scenarios::Hold {
            at_most: Duration::from_millis(cli.hold_ms),
            until: cli.hold_until,
        },
    )?;
    truth.cgroup = cli.cgroup;
    truth.cgroup2 = cli.cgroup2;
    for r in &truth.runs {
        println!(
            "workload: {} pid {}: {} pages, {} zero-backed while mapped ({} huge-zero), zero page refcount {:?} -> {:?} -> {:?}, VmLck {:?} kB while mapped",
            s.name,
            r.pid,
            r.pages,
            r.zero_backed_after_map,
            r.huge_zero_backed_after_map,
            r.refcount_before,
            r.refcount_after_map,
            r.refcount_after_unmap,
            r.vmlck_kb_after_map
        );
        if let Some(e) = &r.map_error {
            println!("workload: {} pid {}: MAP_DMA refused: {e}", s.name, r.pid);
        }
    }
    if let Some(p) = cli.truth {
        std::fs::write(&p, serde_json::to_string_pretty(&truth)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let help: String = SCENARIOS
        .iter()
        .map(|s| format!("  {:<20} {}\n", s.name, s.about))
        .collect();
    let vmm_help: String = VMM_SCENARIOS
        .iter()
        .map(|s| format!("  {:<20} {}\n", s.name, s.about))
        .collect();
    let matches = Cli::command()
        .after_help(format!(
            "Scenarios:\n{help}\nVMM scenarios (QEMU on the group's device; --group2 for a second VM):\n{vmm_help}"
        ))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfio-zp-workload: {e:#}");
            ExitCode::FAILURE
        }
    }
}
