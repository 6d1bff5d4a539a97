//! The skip contract of `cargo xtask test` (the test side is
//! vfio-zp/src/testing.rs, which xtask's own tests use too): a check that
//! cannot run fails unless the command line names it with `--allow-skip`,
//! and the summary lists every skip.
use std::path::Path;

pub const STRICT: &str = "VFIO_ZP_STRICT";
pub const LOG: &str = "VFIO_ZP_SKIPS";
pub const ALLOW: &str = "VFIO_ZP_ALLOW_SKIP";

/// A check the test command itself cannot run (no test harness around it):
/// logged like a test's skip, an error unless allowed.
pub fn runner_skip(log: &Path, allowed: &[String], name: &str, why: &str) -> anyhow::Result<()> {
    use std::io::Write;
    eprintln!("SKIPPED: {name}: {why}");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| writeln!(f, "{name}\t{why}"))?;
    anyhow::ensure!(
        allowed.iter().any(|a| a == name),
        "check {name} cannot run here ({why}); name it with `cargo xtask test --allow-skip {name}` to let it skip"
    );
    Ok(())
}

/// The summary's lines: every skip logged, once each.
pub fn summary(log: &Path) -> Vec<String> {
    let mut seen: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.replacen('\t', ": ", 1))
        .collect();
    seen.dedup();
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_not_named_fails_and_every_skip_is_listed() {
        let log = std::env::temp_dir().join(format!("vfio-zp-skips-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let allowed = vec!["alert-rules".to_string()];
        assert!(runner_skip(&log, &allowed, "alert-rules", "no promtool").is_ok());
        let e = runner_skip(&log, &allowed, "vm-matrix", "--no-vm").unwrap_err();
        assert!(e.to_string().contains("--allow-skip vm-matrix"), "{e}");
        assert_eq!(
            summary(&log),
            ["alert-rules: no promtool", "vm-matrix: --no-vm"]
        );
        std::fs::remove_file(&log).unwrap();
    }
}
