//! Installs what building and the VM lab need, only what is missing, saying
//! what it does; a second run does nothing and says so.
use std::process::Command;

use anyhow::Context;

use crate::cmd;

/// Debian packages: QEMU for the lab, busybox for its initramfs, kmod for
/// depmod/modprobe, cpio/xz for images, gcc/make for the leaky module.
const APT_PACKAGES: [&str; 13] = [
    "qemu-system-x86",
    // libvirt manages VMs in the guests (its daemon, QEMU driver, virsh).
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    // Loads the agent's /metrics endpoint in the guests while workloads run.
    "wrk",
    // `vfio-zp top` is tested in a real terminal in the guests.
    "tmux",
    // promtool checks and unit-tests the alert rules.
    "prometheus",
    "busybox-static",
    "kmod",
    "cpio",
    "xz-utils",
    "gcc",
    "make",
];

const LIBVIRT_DIRS: [&str; 3] = ["/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt"];

fn apt_installed(pkg: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

pub fn run() -> anyhow::Result<()> {
    let mut did = 0;
    anyhow::ensure!(
        cmd::succeeds(Command::new("rustc").arg("+nightly").arg("--version")),
        "the nightly toolchain is missing; it builds the probes (install it with rustup, then rerun)"
    );
    let src = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if src.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("bootstrap: ok: rust-src for nightly");
    } else {
        eprintln!("bootstrap: installing rust-src for nightly");
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        did += 1;
    }
    if cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        eprintln!("bootstrap: ok: bpf-linker");
    } else {
        eprintln!(
            "bootstrap: installing bpf-linker against the nightly toolchain's LLVM (about a minute)"
        );
        install_bpf_linker()?;
        did += 1;
    }
    if cmd::succeeds(Command::new("cargo").args(["deny", "--version"])) {
        eprintln!("bootstrap: ok: cargo-deny");
    } else {
        eprintln!("bootstrap: installing cargo-deny (licences and bans; a few minutes)");
        cmd::run(Command::new("cargo").args(["+stable", "install", "cargo-deny", "--locked"]))?;
        did += 1;
    }
    did += apt(&APT_PACKAGES)? as u32;
    // The guests mount tmpfs over libvirt's state directories, which the
    // packages create only with the daemon's configuration package.
    for d in LIBVIRT_DIRS {
        if !std::path::Path::new(d).is_dir() {
            eprintln!("bootstrap: creating {d} (libvirt's state, a tmpfs in the guests)");
            std::fs::create_dir_all(d).with_context(|| d.to_string())?;
            did += 1;
        }
    }
    if did == 0 {
        eprintln!("bootstrap: everything is in place, nothing to do");
    }
    Ok(())
}

/// Installs the Debian packages of `pkgs` that are missing; true if it did.
pub fn apt(pkgs: &[&str]) -> anyhow::Result<bool> {
    let missing: Vec<_> = pkgs.iter().copied().filter(|p| !apt_installed(p)).collect();
    if missing.is_empty() {
        eprintln!("bootstrap: ok: {}", pkgs.join(" "));
        return Ok(false);
    }
    eprintln!("bootstrap: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").arg("update").arg("-q"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(true)
}

/// bpf-linker must use rustc's LLVM major; linking it against the nightly
/// toolchain's own libLLVM needs no system LLVM.
fn install_bpf_linker() -> anyhow::Result<()> {
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = std::path::Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .context("no libLLVM in the nightly toolchain")?;
    let major = llvm_major(&llvm).context("cannot tell libLLVM's version")?;
    let flags = format!(
        "-C link-arg=-L{l} -C link-arg=-l:{llvm} -C link-arg=-Wl,-rpath,{l}",
        l = lib.display()
    );
    cmd::run(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .env("RUSTFLAGS", flags),
    )
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` or `libLLVM-22-rust-...so` -> 22.
fn llvm_major(file: &str) -> Option<u32> {
    let rest = file
        .strip_prefix("libLLVM.so.")
        .or_else(|| file.strip_prefix("libLLVM-"))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn llvm_major_from_file_names() {
        assert_eq!(
            super::llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"),
            Some(22)
        );
        assert_eq!(
            super::llvm_major("libLLVM-19-rust-1.84.0-nightly.so"),
            Some(19)
        );
        assert_eq!(super::llvm_major("libfoo.so"), None);
    }
}
