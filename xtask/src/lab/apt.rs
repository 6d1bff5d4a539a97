//! Debian packages for the lab, fetched with a private apt configuration
//! per suite so the host's own apt state is never touched. The archive URI
//! is taken from the host's own apt sources.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::cmd;

pub struct Suite {
    root: PathBuf,
    name: String,
}

/// The Debian archive URI the host's apt uses (deb822 or one-line sources).
fn archive_uri() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    for e in fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path()
            .extension()
            .is_some_and(|x| x == "sources" || x == "list")
        {
            texts.push(fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    texts.push(fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for t in &texts {
        for line in t.lines().map(str::trim) {
            let uri = line
                .strip_prefix("URIs:")
                .map(|s| s.split_whitespace().next().unwrap_or(""))
                .or_else(|| {
                    line.strip_prefix("deb ")
                        .and_then(|s| s.split_whitespace().find(|w| w.contains("://")))
                });
            if let Some(u) = uri
                && u.trim_end_matches('/').ends_with("/debian")
            {
                return Ok(u.trim_end_matches('/').to_string());
            }
        }
    }
    bail!("no Debian archive found in the host's apt sources")
}

impl Suite {
    /// A private apt state for `suite` (e.g. "bullseye") under `cache`.
    pub fn open(cache: &Path, suite: &str) -> anyhow::Result<Suite> {
        let root = cache.join("apt").join(suite);
        fs::create_dir_all(root.join("lists/partial"))?;
        fs::create_dir_all(root.join("cache/archives/partial"))?;
        let list = root.join("sources.list");
        let uri = archive_uri()?;
        let mut text = format!("deb {uri} {suite} main\n");
        if suite != "trixie" && !suite.ends_with("-backports") {
            // Security updates carry the newest kernel ABIs of old suites.
            text.push_str(&format!("deb {uri}-security {suite}-security main\n"));
        }
        fs::write(&list, text)?;
        let s = Suite {
            root,
            name: suite.into(),
        };
        let stamp = s.root.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| {
                t.elapsed()
                    .map(|e| e.as_secs() < 24 * 3600)
                    .unwrap_or(false)
            });
        if !fresh {
            eprintln!("lab: refreshing package lists for {suite}");
            cmd::run(s.apt("apt-get").arg("update").arg("-qq"))?;
            fs::write(stamp, "")?;
        }
        Ok(s)
    }

    fn apt(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let r = self.root.display();
        c.args([
            "-o".into(),
            format!("Dir::Etc::sourcelist={r}/sources.list"),
            "-o".into(),
            "Dir::Etc::sourceparts=-".into(),
            "-o".into(),
            format!("Dir::State::Lists={r}/lists"),
            "-o".into(),
            format!("Dir::Cache={r}/cache"),
            "-o".into(),
            "APT::Sandbox::User=root".into(),
        ]);
        c
    }

    /// Package names matching `pattern` (apt-cache search, names only).
    pub fn search(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let out = cmd::output(
            self.apt("apt-cache")
                .args(["search", "--names-only", pattern]),
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// Downloads `pkg` into `dir` (apt verifies it against the signed
    /// archive index) and returns the .deb path.
    pub fn download(&self, pkg: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let mut c = self.apt("apt-get");
        c.args(["download", "-q", pkg]).current_dir(dir);
        cmd::run(&mut c).with_context(|| format!("downloading {pkg} from {}", self.name))?;
        let name = pkg.split('=').next().unwrap_or(pkg);
        deb_in(dir, name).with_context(|| format!("{pkg}: no .deb after download"))
    }
}

/// The downloaded `.deb` of `package` in `dir` (`<package>_<version>_<arch>.deb`).
pub fn deb_in(dir: &Path, package: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
}
