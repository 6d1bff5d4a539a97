//! The lab's kernels: which Debian package each name means, fetched once
//! into the cache outside the clone, extracted, depmod'ed and verified.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::apt::Suite;
use crate::cmd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Name on the command line.
    pub name: &'static str,
    pub suite: &'static str,
    /// Pinned package, for reproducible runs.
    pub package: &'static str,
    /// Newest of the same series when the archive stops serving the pin:
    /// package names are `prefix*suffix`.
    pub series: (&'static str, &'static str),
    /// Rebuild vfio_iommu_type1.ko without the zero-page unpin (873aefb).
    pub leaky: bool,
    /// The image is `linux-binary-*` (the kernel under
    /// usr/lib/modules/<release>/vmlinuz) and its modules come in
    /// `linux-modules-*` of the same version: Debian's split from 7.x.
    pub split_modules: bool,
}

pub const SPECS: [Spec; 6] = [
    Spec {
        name: "5.10",
        suite: "bullseye",
        package: "linux-image-5.10.0-32-amd64-unsigned",
        series: ("linux-image-5.10.0-", "-amd64-unsigned"),
        leaky: false,
        split_modules: false,
    },
    Spec {
        name: "5.10-leaky",
        suite: "bullseye",
        package: "linux-image-5.10.0-32-amd64-unsigned",
        series: ("linux-image-5.10.0-", "-amd64-unsigned"),
        leaky: true,
        split_modules: false,
    },
    Spec {
        name: "6.1",
        suite: "bookworm",
        package: "linux-image-6.1.0-56-amd64-unsigned",
        series: ("linux-image-6.1.0-", "-amd64-unsigned"),
        leaky: false,
        split_modules: false,
    },
    Spec {
        name: "6.12",
        suite: "trixie",
        package: "linux-image-6.12.117+deb13-amd64-unsigned",
        series: ("linux-image-6.12.", "+deb13-amd64-unsigned"),
        leaky: false,
        split_modules: false,
    },
    // Backports carry only the signed image; QEMU boots it as is.
    Spec {
        name: "6.18",
        suite: "trixie-backports",
        package: "linux-image-6.18.15+deb13-amd64",
        series: ("linux-image-6.18.", "+deb13-amd64"),
        leaky: false,
        split_modules: false,
    },
    Spec {
        name: "7.3",
        suite: "trixie-backports",
        package: "linux-binary-7.3.4+deb13-amd64",
        series: ("linux-binary-7.3.", "+deb13-amd64"),
        leaky: false,
        split_modules: true,
    },
];

/// Longest first, as measured in a fresh-clone CI run: the matrix runs two
/// guests at once, and a long kernel started last would leave one lane idle
/// (5.10 896 s, 5.10-leaky 901 s, 6.1 642 s, 7.3 618 s, 6.18 536 s, 6.12
/// 507 s at c3f1e24). A guest's time doubles when anything else competes for
/// the two cores, so the longest must not start last.
pub const DEFAULT_MATRIX: [&str; 6] = ["5.10", "5.10-leaky", "7.3", "6.18", "6.12", "6.1"];

pub fn spec(name: &str) -> anyhow::Result<Spec> {
    SPECS
        .iter()
        .copied()
        .find(|s| s.name == name)
        .with_context(|| {
            let names: Vec<_> = SPECS.iter().map(|s| s.name).collect();
            format!("unknown lab kernel `{name}` (known: {})", names.join(", "))
        })
}

/// A kernel ready to boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kernel {
    pub name: String,
    /// `uname -r` inside the guest.
    pub release: String,
    pub package: String,
    pub deb_sha256: String,
    /// Extracted package root (holds boot/ and lib/modules/).
    pub tree: PathBuf,
    pub vmlinuz: PathBuf,
    /// The leaky vfio_iommu_type1.ko, for `5.10-leaky`.
    #[serde(default)]
    pub leaky_module: Option<PathBuf>,
    #[serde(default)]
    pub leaky_sha256: Option<String>,
    /// The `linux-modules-*` package of a split image.
    #[serde(default)]
    pub modules_package: Option<String>,
    #[serde(default)]
    pub modules_deb_sha256: Option<String>,
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("VFIO_ZP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/vfio-zp")
        })
}

pub fn sha256(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut f = fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// The pinned package if the archive still serves it, else the newest of its series.
fn choose_package(suite: &Suite, spec: &Spec) -> anyhow::Result<String> {
    let (pre, suf) = spec.series;
    let mut found: Vec<String> = suite
        .search(&format!("^{}.*{}$", regex_quote(pre), regex_quote(suf)))?
        .into_iter()
        .filter(|n| {
            n.starts_with(pre)
                && n.ends_with(suf)
                && !n[pre.len()..n.len() - suf.len()].contains('-')
        })
        .collect();
    if found.iter().any(|n| n == spec.package) {
        return Ok(spec.package.into());
    }
    found.sort_by_key(|n| version_key(&n[pre.len()..n.len() - suf.len()]));
    match found.pop() {
        Some(newest) => {
            eprintln!(
                "lab: WARNING: {} is no longer served; using the newest of its series, {newest}",
                spec.package
            );
            Ok(newest)
        }
        None => bail!(
            "{}: neither {} nor any {pre}*{suf} is available",
            spec.suite,
            spec.package
        ),
    }
}

fn regex_quote(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Fetches (or reuses, after verifying) the kernel named `name`.
pub fn prepare(name: &str) -> anyhow::Result<Kernel> {
    let spec = spec(name)?;
    let cache = cache_dir();
    let dir = cache.join("kernels").join(spec.name);
    let manifest = dir.join("manifest.json");
    if let Some(k) = verified(&manifest) {
        eprintln!("lab: kernel {name} cached ({}), verified", k.release);
        return Ok(k);
    }
    eprintln!("lab: preparing kernel {name}");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let suite = Suite::open(&cache, spec.suite)?;
    let package = choose_package(&suite, &spec)?;
    let deb = suite.download(&package, &dir.join("debs"))?;
    let tree = dir.join("tree");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let modules = if spec.split_modules {
        let name = package.replacen("linux-binary-", "linux-modules-", 1);
        let mdeb = suite.download(&name, &dir.join("debs"))?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&mdeb).arg(&tree))?;
        Some((name, sha256(&mdeb)?))
    } else {
        None
    };
    // trixie ships modules under usr/lib; depmod -b and modprobe -d look in lib/.
    if !tree.join("lib/modules").exists() && tree.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", tree.join("lib"))?;
    }
    let release = fs::read_dir(tree.join("lib/modules"))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .next()
        .context("package has no lib/modules/<release>")?;
    cmd::run(Command::new("depmod").arg("-b").arg(&tree).arg(&release))?;
    // From 7.x the image sits beside its modules.
    let vmlinuz = [
        tree.join("boot").join(format!("vmlinuz-{release}")),
        tree.join("lib/modules").join(&release).join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no vmlinuz for {release} in {package}"))?;
    let mut k = Kernel {
        name: name.into(),
        release,
        package,
        deb_sha256: sha256(&deb)?,
        tree,
        vmlinuz,
        leaky_module: None,
        leaky_sha256: None,
        modules_deb_sha256: modules.as_ref().map(|m| m.1.clone()),
        modules_package: modules.map(|m| m.0),
    };
    if spec.leaky {
        let ko = super::leaky::build(&suite, &deb, &k.release, &dir)?;
        k.leaky_sha256 = Some(sha256(&ko)?);
        k.leaky_module = Some(ko);
    }
    fs::write(&manifest, serde_json::to_string_pretty(&k)?)?;
    Ok(k)
}

/// The cached kernel, if its manifest is there and every file still matches.
fn verified(manifest: &Path) -> Option<Kernel> {
    let k: Kernel = serde_json::from_str(&fs::read_to_string(manifest).ok()?).ok()?;
    let debs = manifest.parent()?.join("debs");
    let same = |file: Option<PathBuf>, hash: &str| {
        file.and_then(|f| sha256(&f).ok()).as_deref() == Some(hash)
    };
    // Each optional part is there with its hash, or absent with none.
    let part = |file: Option<PathBuf>, hash: &Option<String>| match hash {
        Some(h) => same(file, h),
        None => file.is_none(),
    };
    let ok = same(super::apt::deb_in(&debs, &k.package), &k.deb_sha256)
        && part(
            k.modules_package
                .as_deref()
                .and_then(|m| super::apt::deb_in(&debs, m)),
            &k.modules_deb_sha256,
        )
        && part(k.leaky_module.clone(), &k.leaky_sha256)
        && k.vmlinuz.exists()
        && k.tree
            .join("lib/modules")
            .join(&k.release)
            .join("modules.dep")
            .exists();
    if !ok {
        eprintln!(
            "lab: cached kernel {} failed verification; rebuilding it",
            k.name
        );
    }
    ok.then_some(k)
}
