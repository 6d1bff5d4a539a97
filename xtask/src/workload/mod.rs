//! The lab workload: drives VFIO type1 in a guest and records the kernel's
//! own truth around each step.
pub mod kcore;
pub mod libvirt;
pub mod pagemap;
pub mod scenarios;
pub mod vfio;
pub mod vmm;
