//! vfio-zp: watches VFIO type1 pin the kernel's shared zero page.
//!
//! Data path: probes (vfio-zp-ebpf) -> [`kernel::programs`] ring buffer ->
//! [`ingest`] (decode, kernel pointers to small ids) -> [`event::Event`] ->
//! [`model`] (type1's accounting, leak verdicts, memlock advice) -> outputs
//! ([`record`] JSON lines, the agent's log, `replay`).
pub mod attribution;
pub mod check;
pub mod error;
pub mod event;
pub mod ingest;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod outfile;
pub mod record;
pub mod serve;
pub mod session;
pub mod snapshot;
pub mod state;
pub mod testing;
pub mod top;
