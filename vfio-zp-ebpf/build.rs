//! Linker flags for the BPF target, where aya-build's own RUSTFLAGS leave
//! no room for ours.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    // bpf-linker passes LLVM `-bpf-expand-memcpy-in-order` by default, which
    // sets the BPF backend's MaxStoresPerMemset to 0: every memset (LLVM
    // merges runs of zero stores into one, as in a fresh `PinCall`) and
    // memmove becomes a bpf-to-bpf call to compiler_builtins' byte loop, a
    // few hundred instructions for a 48-byte clear on each hot run. The flag
    // keeps load/store pairs in order for JITs that pattern-match memcpy
    // (offload NICs), which these probes never run on.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
