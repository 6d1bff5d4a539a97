// Each test binary uses its own part of these helpers.
#![allow(dead_code)]
pub mod flood;
pub mod hardening;
pub mod restart;
pub mod surfaces;
pub mod verdicts;
pub mod vmm;

/// Lab kernels whose read-only long-term pins unshare (84209e87c696, v6.2):
/// GUP never pins the zero page there.
pub fn unshares(kernel: &str) -> bool {
    matches!(kernel, "6.12" | "6.18" | "7.3")
}
