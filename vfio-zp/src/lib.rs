//! vfio-zp: watches VFIO type1 pin the kernel's shared zero page.
//!
//! The modules read as the pipeline an event travels:
//! - [`probes`]: the eBPF programs (vfio-zp-ebpf) loaded and attached, and
//!   the kernel facts they need (BTF, kallsyms, the zero page);
//! - [`source`]: their ring buffer drained by a session, each record
//!   decoded with kernel pointers mapped to small ids, its process and
//!   cgroup looked up;
//! - [`stream`]: the bus, [`stream::Line`]s, the same live and recorded;
//! - [`model`]: type1's accounting, leak verdicts, memlock advice (pure);
//! - [`export`]: snapshots, Prometheus metrics and the HTTP endpoints;
//! - [`agent`]: the runtime that wires them (`agent`, `record`), and the
//!   commands [`replay`], [`top`] and [`check`].
pub mod agent;
pub mod check;
pub mod cli;
pub mod error;
pub mod export;
pub mod model;
pub mod outfile;
pub mod probes;
pub mod replay;
pub mod source;
pub mod stdout;
pub mod stream;
pub mod testing;
pub mod top;
