//! What the agent shows: a [`snapshot::Snapshot`] of the verdicts, rendered
//! as Prometheus metrics and JSON over HTTP.
pub mod http;
pub mod metrics;
pub mod snapshot;
