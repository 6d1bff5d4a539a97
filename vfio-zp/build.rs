//! Builds the probes for the BPF target with aya-build (nightly + rust-src +
//! bpf-linker, installed by `cargo xtask bootstrap`) and leaves the object in
//! OUT_DIR, where src/probes/programs.rs embeds it. AYA_BUILD_SKIP=1 skips the
//! build and embeds an empty object: the agent then says so at start-up.
use std::{fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    // Read when the script runs, not when it is compiled: cargo shares one
    // compiled build script between checkouts of the workspace that use the
    // same target directory, so a compiled-in path would build the probes
    // of whichever checkout built the script first.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest}/../vfio-zp-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "vfio-zp-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )?;
    let obj = PathBuf::from(std::env::var("OUT_DIR")?).join("vfio-zp");
    if !obj.exists() {
        fs::write(&obj, b"")?;
    }
    Ok(())
}
