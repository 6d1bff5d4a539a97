//! The lab workload: drives VFIO type1 in a guest and records the kernel's
//! own truth around each step.
pub mod guest_rom;
pub mod kcore;
pub mod libvirt;
pub mod pagemap;
pub mod qmp;
pub mod scenarios;
pub mod vfio;
pub mod vm;
pub mod vmm;

/// A `kB` field of /proc/<pid>/status (`VmLck:`, `VmPin:`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_fields_in_kb() {
        let me = std::process::id();
        // Every process has a resident set; a field that is not there is None.
        assert!(super::status_kb(me, "VmRSS:").is_some_and(|kb| kb > 0));
        assert_eq!(super::status_kb(me, "NoSuchField:"), None);
    }
}
