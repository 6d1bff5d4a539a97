//! Environment checks before touching the kernel, each failing with its own
//! [`Fatal`] so the operator gets one clear line, not a BPF errno.
use std::path::Path;

use crate::error::Fatal;

use super::{btf::VMLINUX_BTF, probe_points::TYPE1_MODULE};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no failure modes.
    unsafe { libc::geteuid() == 0 }
}

/// Effective capabilities from /proc/self/status (CapEff, hex).
pub fn effective_caps() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&s)
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn check_privileges() -> Result<(), Fatal> {
    let caps = effective_caps().unwrap_or(0);
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    Err(Fatal::Privileges(if is_root() {
        "running as root without the needed capabilities".into()
    } else {
        "not running as root".into()
    }))
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
    Path::new("/sys/module").join(TYPE1_MODULE).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_parsing() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(parse_cap_eff(""), None);
    }
}
