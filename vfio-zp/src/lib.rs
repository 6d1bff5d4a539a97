//! vfio-zp: watches VFIO type1 pin the kernel's shared zero page.
//!
//! Data path: probes (vfio-zp-ebpf) -> [`kernel::programs`] ring buffer ->
//! [`ingest`] (decode, kernel pointers to small ids) -> [`event::Event`] ->
//! outputs ([`record`] JSON lines, the agent's log).
pub mod error;
pub mod event;
pub mod ingest;
pub mod kernel;
pub mod record;
pub mod session;
