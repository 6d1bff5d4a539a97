//! Builds the probes for the BPF target with aya-build (nightly + rust-src +
//! bpf-linker, installed by `cargo xtask bootstrap`) and leaves the object in
//! OUT_DIR, where src/probes/programs.rs embeds it. AYA_BUILD_SKIP=1 skips the
//! build and embeds an empty object: the agent then says so at start-up.
use std::{fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "vfio-zp-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../vfio-zp-ebpf"),
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
