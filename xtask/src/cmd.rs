//! Running external commands: echoed before they run, failing with the
//! command line and its exit status.
use std::process::{Command, Output};

use anyhow::{Context, bail};

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `c` with inherited output; fails unless it exits 0.
pub fn run(c: &mut Command) -> anyhow::Result<()> {
    let d = describe(c);
    eprintln!("+ {d}");
    let st = c.status().with_context(|| format!("cannot start `{d}`"))?;
    if !st.success() {
        bail!("`{d}` failed ({st})");
    }
    Ok(())
}

/// Runs `c` quietly and returns its stdout; fails with its stderr.
pub fn output(c: &mut Command) -> anyhow::Result<String> {
    let d = describe(c);
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().with_context(|| format!("cannot start `{d}`"))?;
    if !status.success() {
        bail!(
            "`{d}` failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// True when `c` runs and exits 0 (for probing what is installed).
pub fn succeeds(c: &mut Command) -> bool {
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
