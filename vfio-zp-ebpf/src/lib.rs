//! The probes live in the `vfio-zp` binary target (src/main.rs); this empty
//! library keeps `cargo test --workspace` from linking that binary for the host.
#![no_std]
