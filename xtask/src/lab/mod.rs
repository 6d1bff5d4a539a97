//! The VM lab: real Debian kernels with live VFIO type1, under QEMU.
pub mod apt;
pub mod bench;
pub mod guest;
pub mod initramfs;
pub mod kernels;
pub mod leaky;
pub mod matrix;
pub mod qemu;

use std::path::PathBuf;

/// Where cargo put our binaries (xtask runs from the same directory), so
/// the guest, which sees the host tree at the same paths, runs them as is.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
}
