//! What runs inside the guest: /init (in the initramfs) mounts the host
//! root read-only and the results directory read-write at the same path, then
//! chroots into the host tree and runs the set-up script (VFIO binding) and
//! the caller's command. Host paths therefore work unchanged in the guest.
use std::path::Path;

use super::{kernels::Kernel, preamble};

/// /init: PID 1 in the initramfs (busybox sh).
pub const INIT: &str = include_str!("sh/init.sh");

/// The set-up script (the host's /bin/sh, dash), after its preamble.
const SETUP: &str = include_str!("sh/setup.sh");

/// The set-up script: loads VFIO from the kernel's own tree (the leaky
/// type1 in place of the stock one for 5.10-leaky), binds every e1000e to
/// vfio-pci (each its own IOMMU group), then runs guest-cmd.sh and stores its exit code.
pub fn setup_script(k: &Kernel, results: &Path) -> String {
    let tree = k.tree.display().to_string();
    let leaky = k
        .leaky_module
        .as_ref()
        .map(|ko| ko.display().to_string())
        .unwrap_or_default();
    // How guest commands load type1 again after unloading it (fault tests).
    let reload = match &k.leaky_module {
        Some(ko) => format!("insmod {}", ko.display()),
        None => format!("modprobe -d {tree} vfio_iommu_type1"),
    };
    let results = results.display().to_string();
    preamble(&[
        ("RESULTS", &results),
        ("TREE", &tree),
        ("LEAKY_KO", &leaky),
        ("TYPE1_LOAD", &reload),
        ("LAB_KERNEL", &k.name),
    ]) + SETUP
}
