//! Everything that touches the live kernel. Nothing outside this module
//! does I/O against the kernel, so the rest runs in tests and replay.
pub mod btf;
pub mod kallsyms;
pub mod kcore;
pub mod preflight;
pub mod privileges;
pub mod probe_points;
pub mod programs;
pub mod retprobe;
pub mod tracefs;
pub mod zero_page;

/// `uname -r`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `uname -v` (distributions put the upstream sublevel here).
pub fn version() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/version")
        .ok()
        .map(|s| s.trim().to_string())
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() uses.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
