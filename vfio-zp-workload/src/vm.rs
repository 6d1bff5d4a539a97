//! What both VMM clients (QEMU driven directly, and libvirt) share: the
//! VM's size, where its files live in the guest, its device, and the truth
//! recorded about it.
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Guest RAM of each VM, MiB: small, so a nested TCG QEMU starts quickly.
pub const RAM_MIB: u64 = 16;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmTruth {
    /// The VM's name, as libvirt would have it.
    pub name: String,
    pub cgroup: String,
    pub machine: String,
    /// The vfio-pci device it was given.
    pub device: String,
    pub pid: u32,
    /// Hot-plug: VmLck with the device first plugged, and once it was
    /// unplugged; `vmlck_kb_alive` is then read after it was plugged again.
    pub vmlck_kb_first: Option<u64>,
    pub vmlck_kb_unplugged: Option<u64>,
    /// /proc/<pid>/status once the VM was realized (its mappings made).
    pub vmlck_kb_alive: Option<u64>,
    pub vmpin_kb_alive: Option<u64>,
    /// RLIMIT_MEMLOCK it ran under, bytes (u64::MAX: unlimited; None:
    /// root's, not read).
    pub memlock_limit: Option<u64>,
    /// How the process ended, as wait(2) reported it.
    pub exit: String,
    /// For a scenario that must not start: what its VMM said.
    pub refused: Option<String>,
    pub errors: Vec<String>,
}

/// The PCI address behind a VFIO group node (`/dev/vfio/N`).
pub fn device_of(group: &str) -> anyhow::Result<String> {
    let n = Path::new(group)
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{group}: not a VFIO group node"))?;
    let dir = format!("/sys/kernel/iommu_groups/{n}/devices");
    let devices: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| dir.clone())?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match devices.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("{dir}: expected one device, found {devices:?}"),
    }
}

/// Where the lab keeps its files in the guest (tmpfs, readable by libvirt's
/// unprivileged QEMU).
pub const RUN_DIR: &str = "/run/vfio-zp-lab";
