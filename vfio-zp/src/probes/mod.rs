//! Everything that touches the live kernel. Nothing outside this module
//! does I/O against the kernel, so the rest runs in tests and replay.
pub mod btf;
pub mod kallsyms;
pub mod kcore;
pub mod pins;
pub mod preflight;
pub mod privileges;
pub mod probe_points;
pub mod programs;
pub mod provoke;
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
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This boot's id: state kept for one boot is worthless after the next.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// 128 random bits from the kernel.
pub fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    let n = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    if n != Ok(b.len()) {
        // Never reached on Linux >= 3.17 with a full buffer request; the
        // clock is a weak but distinct fallback.
        return u128::from(monotonic_ns()) << 64 | u128::from(std::process::id());
    }
    u128::from_ne_bytes(b)
}
