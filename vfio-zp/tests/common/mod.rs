// Each test binary uses its own part of these helpers.
#![allow(dead_code)]
pub mod flood;
pub mod hardening;
pub mod lean;
#[path = "../../../xtask/src/lab/outputs.rs"]
mod outputs;
pub mod restart;
pub mod sandbox;
pub mod surfaces;
pub mod verdicts;
pub mod vmm;

/// Lab kernels whose GUP takes no reference on the zero page
/// (c8070b787519, v6.5; Debian's 6.1 has the backport): the agent leaves
/// the generic unpin probes off there (issue 18).
pub fn gup_ignores_zero_page(kernel: &str) -> bool {
    matches!(kernel, "6.1" | "6.12" | "6.18" | "7.3")
}

/// Lab kernels whose read-only long-term pins unshare (84209e87c696, v6.2):
/// GUP never pins the zero page there.
pub fn unshares(kernel: &str) -> bool {
    matches!(kernel, "6.12" | "6.18" | "7.3")
}

/// Runs the vfio-zp binary with `args` (and `env`): its exit code, standard
/// output and standard error.
pub fn vfio_zp(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vfio-zp"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
