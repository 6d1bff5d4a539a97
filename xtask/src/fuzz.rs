//! `cargo xtask fuzz`: runs each cargo-fuzz target (fuzz/) for a set time
//! and reports executions and crashes. cargo-fuzz is installed if missing.
use std::process::Command;

use crate::cmd;

pub const TARGETS: [&str; 3] = ["recording", "cgroup_name", "kallsyms"];

pub fn run(targets: &[String], seconds: u64) -> anyhow::Result<()> {
    if !cmd::succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        eprintln!("fuzz: installing cargo-fuzz");
        cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let mut failed = Vec::new();
    for t in targets {
        eprintln!("fuzz: {t} for {seconds} s");
        let corpus = format!("fuzz/corpus/{t}");
        std::fs::create_dir_all(&corpus)?;
        seed(t, &corpus)?;
        let out = Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                t,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            // The probes are irrelevant to the parsers: skip the BPF build.
            .env("AYA_BUILD_SKIP", "1")
            .current_dir("fuzz")
            .output()?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log
            .lines()
            .rev()
            .find_map(|l| {
                l.strip_prefix("Done ")
                    .and_then(|r| r.split_whitespace().next())
            })
            .unwrap_or("?")
            .to_string();
        if out.status.success() {
            eprintln!("fuzz: {t}: {runs} executions, 0 crashes");
        } else {
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!("fuzz: {t}: FAILED after {runs} executions:");
            for l in tail.iter().rev() {
                eprintln!("  | {l}");
            }
            failed.push(t.clone());
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "fuzz targets crashed: {}",
        failed.join(", ")
    );
    Ok(())
}

/// Starts from real inputs: the golden recordings and the lab's cgroup paths.
fn seed(target: &str, corpus: &str) -> anyhow::Result<()> {
    match target {
        "recording" => {
            for k in crate::lab::kernels::DEFAULT_MATRIX {
                let src = format!("vfio-zp/tests/fixtures/{k}/recording.jsonl");
                if let Ok(text) = std::fs::read_to_string(&src) {
                    // Small seeds mutate faster: the header and some lines.
                    let head: String = text.lines().take(40).map(|l| format!("{l}\n")).collect();
                    std::fs::write(format!("{corpus}/{k}"), head)?;
                }
            }
        }
        "kallsyms" => {
            // Shapes seen on the lab kernels: module tags, clone suffixes,
            // hidden addresses, and our tracefs files.
            std::fs::write(
                format!("{corpus}/kallsyms"),
                "ffffffffc0a01230 t vfio_pin_pages_remote\t[vfio_iommu_type1]\n\
                 ffffffffc0a02000 t vaddr_get_pfns.constprop.0\t[vfio_iommu_type1]\n\
                 ffffffff82a0c000 D zero_pfn\nffffffff8240e9b8 D vmemmap_base\n",
            )?;
            std::fs::write(
                format!("{corpus}/hidden"),
                "0000000000000000 T pin_user_pages_remote\n0000000000000000 t put_pfn\t[vfio_iommu_type1]\n",
            )?;
            std::fs::write(
                format!("{corpus}/kprobe_events"),
                "r512:vfio_zp/type1_pin_ret_4242 vfio_pin_pages_remote\n  type1_pin_ret_4242   1234   7\n",
            )?;
        }
        _ => {
            for (i, p) in crate::lab::matrix::CGROUPS.iter().enumerate() {
                std::fs::write(format!("{corpus}/lab-{i}"), p)?;
            }
        }
    }
    Ok(())
}
