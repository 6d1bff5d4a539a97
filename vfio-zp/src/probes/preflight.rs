//! Environment checks before touching the kernel, each failing with its own
//! [`Fatal`] so the operator gets one clear line, not a BPF errno.
use std::path::Path;

use crate::error::Fatal;

use super::{btf::VMLINUX_BTF, probe_points::TYPE1_MODULE};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn check_privileges() -> Result<(), Fatal> {
    use caps::{CapSet, Capability};
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    if has(Capability::CAP_SYS_ADMIN) || (has(Capability::CAP_BPF) && has(Capability::CAP_PERFMON))
    {
        return Ok(());
    }
    Err(Fatal::Privileges(if is_root() {
        "running as root without the needed capabilities".into()
    } else {
        "not running as root".into()
    }))
}

/// Why /proc/kallsyms shows this process only zeros: `kptr_restrict` 2
/// hides kernel addresses from everyone, 1 from all without CAP_SYSLOG.
pub fn hidden_addresses() -> String {
    let level = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    let syslog =
        caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYSLOG).unwrap_or(false);
    match (level, syslog) {
        (Some(2), _) => {
            "/proc/kallsyms hides addresses from every process (kernel.kptr_restrict = 2; 1 shows them to CAP_SYSLOG)".into()
        }
        (_, false) => {
            "/proc/kallsyms hides addresses without CAP_SYSLOG (kernel.kptr_restrict = 1): grant CAP_SYSLOG".into()
        }
        (l, true) => format!("/proc/kallsyms hides addresses (kernel.kptr_restrict = {l:?})"),
    }
}

pub fn check_btf() -> Result<(), Fatal> {
    if Path::new(VMLINUX_BTF).exists() {
        Ok(())
    } else {
        Err(Fatal::NoBtf(format!("{VMLINUX_BTF} missing")))
    }
}

/// kprobe PMU (perf_event_open) or the legacy kprobe_events file.
pub fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || super::tracefs::find_file("kprobe_events").is_some()
}

pub fn check_kprobes() -> Result<(), Fatal> {
    if kprobes_available() {
        Ok(())
    } else {
        Err(Fatal::NoKprobes(
            "no kprobe PMU in /sys/bus/event_source/devices".into(),
        ))
    }
}

pub fn type1_loaded() -> bool {
    type1_instance().is_some()
}

/// Which load of vfio_iommu_type1 is in the kernel: the inode of its
/// /sys/module directory, which every load makes afresh (kernfs numbers
/// its nodes cyclically). An unload and reload between two polls leaves
/// the module loaded at both, but not the same instance: its kprobes went
/// with the old one.
pub fn type1_instance() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(Path::new("/sys/module").join(TYPE1_MODULE))
        .ok()
        .map(|m| m.ino())
}
