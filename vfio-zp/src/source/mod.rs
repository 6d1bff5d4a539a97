//! Where the stream comes from: the probes' ring buffer drained by a
//! [`session::Session`], each raw record decoded into an event with kernel
//! pointers mapped to small ids, and the processes and cgroups behind it
//! looked up in /proc and cgroupfs.
pub mod cgroup_id;
pub mod decode;
pub mod drain;
pub mod ids;
pub mod resolve;
pub mod session;

pub use decode::{DecodeError, Decoder, parse};
