//! A busybox initramfs per kernel: just enough modules to mount the host's
//! root over virtio-9p, then the guest runs everything from the host tree.
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use super::kernels::Kernel;
use crate::cmd;

/// Modules needed to mount a 9p share over virtio-pci (with their deps).
const WANTED: [&str; 3] = ["virtio_pci", "9pnet_virtio", "9p"];

const BUSYBOX: &str = "/bin/busybox";

/// Load order for `wanted` from a modules.dep text: dependencies first,
/// each module once; modules not listed are built in and skipped.
pub fn load_order(modules_dep: &str, wanted: &[&str]) -> Vec<String> {
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in modules_dep.lines() {
        let Some((m, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(
            module_name(m),
            (
                m.to_string(),
                rest.split_whitespace().map(module_name).collect(),
            ),
        );
    }
    fn visit(
        n: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        let Some((path, ds)) = deps.get(n) else {
            return;
        };
        if !seen.insert(n.to_string()) {
            return;
        }
        for d in ds {
            visit(d, deps, seen, out);
        }
        out.push(path.clone());
    }
    let (mut seen, mut out) = (HashSet::new(), Vec::new());
    for w in wanted {
        visit(&w.replace('-', "_"), &deps, &mut seen, &mut out);
    }
    out
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p`; dashes and underscores are one in module names.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Builds (or reuses) the initramfs for `k` with `init` as /init.
pub fn build(k: &Kernel, init: &str) -> anyhow::Result<PathBuf> {
    let dir = k
        .tree
        .parent()
        .context("kernel tree has no parent")?
        .join("initramfs");
    let out = dir.with_extension("cpio.gz");
    let stamp = dir.with_extension("init");
    if out.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(init) {
        return Ok(out);
    }
    anyhow::ensure!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} missing: run `cargo xtask bootstrap`"
    );
    let _ = fs::remove_dir_all(&dir);
    for d in ["bin", "mods", "proc", "sys", "dev", "host"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    let mdir = k.tree.join("lib/modules").join(&k.release);
    let dep = fs::read_to_string(mdir.join("modules.dep")).context("modules.dep")?;
    for (i, rel) in load_order(&dep, &WANTED).iter().enumerate() {
        let src = mdir.join(rel);
        let name = format!("{i:02}-{}.ko", module_name(rel));
        let dst = dir.join("mods").join(&name);
        // busybox insmod takes plain .ko files only.
        match src.extension().and_then(|e| e.to_str()) {
            Some("xz") => decompress(&src, &dst, "xz")?,
            Some("zst") => decompress(&src, &dst, "zstd")?,
            _ => {
                fs::copy(&src, &dst)?;
            }
        }
    }
    fs::write(dir.join("init"), init)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("init"), fs::Permissions::from_mode(0o755))?;
    cmd::run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        dir.display(),
        out.display()
    )))?;
    fs::write(stamp, init)?;
    Ok(out)
}

fn decompress(src: &Path, dst: &Path, tool: &str) -> anyhow::Result<()> {
    let o = Command::new(tool)
        .arg("-dc")
        .arg(src)
        .output()
        .with_context(|| format!("{tool} missing"))?;
    anyhow::ensure!(o.status.success(), "{tool} -dc {} failed", src.display());
    fs::write(dst, o.stdout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_once_builtins_skipped() {
        let dep = "\
kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/fs/netfs/netfs.ko.xz:
";
        let order = load_order(dep, &["virtio_pci", "9pnet_virtio", "9p"]);
        assert_eq!(
            order,
            [
                "kernel/net/9p/9pnet.ko.xz",
                "kernel/net/9p/9pnet_virtio.ko.xz",
                "kernel/fs/netfs/netfs.ko.xz",
                "kernel/fs/9p/9p.ko.xz"
            ]
        );
    }
}
