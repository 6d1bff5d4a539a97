//! Who a VFIO container belongs to: its process, cgroup and the workload
//! name an operator knows (libvirt domain, pod, container, unit).
pub mod cgroup_id;
pub mod cgroup_name;
pub mod resolve;

pub use cgroup_name::{Workload, classify};
