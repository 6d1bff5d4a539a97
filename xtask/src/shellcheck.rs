//! Every shell script of the tree (`*.sh`: the lab's guest scripts and any
//! other) checked by Debian's shellcheck; any finding fails. shellcheck is
//! the one on PATH, else Debian's package for this host's release,
//! downloaded once into the lab's cache (as the lab gets its kernels).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::{cmd, lab, skip};

/// The check's name, for `--allow-skip`.
pub const NAME: &str = "shellcheck";

/// Runs shellcheck on every `.sh` file under `root`; a shellcheck that
/// cannot be had is a skip (an error unless allowed).
pub fn check(root: &Path, log: &Path, allow: &[String]) -> anyhow::Result<()> {
    match install() {
        Ok(bin) => check_with(&bin, root),
        Err(e) => skip::runner_skip(log, allow, NAME, &format!("{e:#}")),
    }
}

/// [`check`] on its own (`cargo xtask shellcheck`): no shellcheck fails.
pub fn run(root: &Path) -> anyhow::Result<()> {
    check_with(&install()?, root)
}

fn check_with(bin: &Path, root: &Path) -> anyhow::Result<()> {
    let files = scripts(root)?;
    anyhow::ensure!(!files.is_empty(), "no .sh files under {}", root.display());
    eprintln!("shellcheck: {} scripts", files.len());
    // --norc: the files' own directives only, whatever the machine has.
    cmd::run(Command::new(bin).arg("--norc").args(&files))
}

/// shellcheck: the one on PATH, else Debian's, fetched if not yet cached.
pub fn install() -> anyhow::Result<PathBuf> {
    if cmd::succeeds(Command::new("shellcheck").arg("--version")) {
        eprintln!("shellcheck: ok: on PATH");
        return Ok("shellcheck".into());
    }
    let suite = host_suite()?;
    let dir = lab::kernels::cache_dir().join("shellcheck").join(&suite);
    let bin = dir.join("root/usr/bin/shellcheck");
    if cmd::succeeds(Command::new(&bin).arg("--version")) {
        eprintln!("shellcheck: ok: {}", bin.display());
        return Ok(bin);
    }
    eprintln!(
        "shellcheck: not on PATH; fetching Debian's shellcheck ({suite}) into {}",
        dir.display()
    );
    let apt = lab::apt::Suite::open(&lab::kernels::cache_dir(), &suite)?;
    let deb = apt.download("shellcheck", &dir.join("debs"))?;
    let _ = std::fs::remove_dir_all(dir.join("root"));
    cmd::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")),
    )?;
    let version = cmd::output(Command::new(&bin).arg("--version"))
        .with_context(|| format!("{} does not run", bin.display()))?;
    eprintln!(
        "shellcheck: installed {} ({})",
        bin.display(),
        version
            .lines()
            .find(|l| l.starts_with("version"))
            .unwrap_or("?")
    );
    Ok(bin)
}

/// This host's Debian release (`VERSION_CODENAME`): its shellcheck links
/// against this host's libraries.
fn host_suite() -> anyhow::Result<String> {
    let os = std::fs::read_to_string("/etc/os-release").context("/etc/os-release")?;
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .context("no VERSION_CODENAME in /etc/os-release (not Debian?)")
}

/// The `.sh` files under `root`, sorted; build output, the lab's results
/// and hidden directories left out.
pub fn scripts(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).with_context(|| d.display().to_string())? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let ty = e.file_type()?;
            if ty.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "lab-out" {
                    dirs.push(e.path());
                }
            } else if ty.is_file() && name.ends_with(".sh") {
                found.push(e.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    /// The lab's guest scripts are found (and so checked).
    #[test]
    fn the_guest_scripts_are_found() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let files = super::scripts(&root).unwrap();
        for f in ["recorder-start.sh", "setup.sh", "init.sh", "bench.sh"] {
            assert!(files.iter().any(|p| p.ends_with(f)), "{f} not in {files:?}");
        }
    }
}
