//! Failures the operator must act on, each with a one-line cause and its own
//! exit code (documented in `vfio-zp --help` and the README).
use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error(
        "not permitted: {0} (run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYSLOG and CAP_SYS_ADMIN)"
    )]
    Privileges(String),
    #[error("no kernel BTF ({0}): vfio-zp needs CONFIG_DEBUG_INFO_BTF to find struct page fields")]
    NoBtf(String),
    #[error(
        "this kernel has no kprobes ({0}); vfio-zp needs CONFIG_KPROBES and CONFIG_KPROBE_EVENTS"
    )]
    NoKprobes(String),
    #[error(
        "vfio_iommu_type1 is not loaded{0} (VMs using iommufd never load it: vfio-zp cannot see them)"
    )]
    Type1NotLoaded(String),
    #[error("cannot write {path}: {reason}")]
    Output { path: String, reason: String },
    #[error(
        "this vfio-zp was built without its eBPF object (AYA_BUILD_SKIP); rebuild it with `cargo xtask bootstrap` done"
    )]
    NoProbes,
    #[error("--strict: {0}")]
    Strict(String),
    #[error("loading the probes failed: {0}")]
    Load(String),
    #[error("{0}")]
    Input(String),
    #[error("cannot listen on {addr}: {reason} (choose another with --listen ADDR:PORT)")]
    Listen { addr: String, reason: String },
}

impl Fatal {
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Input(_) => 2,
            Fatal::Privileges(_) => 10,
            Fatal::NoBtf(_) => 11,
            Fatal::NoKprobes(_) => 12,
            Fatal::Type1NotLoaded(_) => 13,
            Fatal::Output { .. } => 14,
            Fatal::NoProbes => 15,
            Fatal::Strict(_) => 16,
            Fatal::Load(_) => 17,
            Fatal::Listen { .. } => 18,
        }
    }
}

/// Printed under `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   unexpected internal error (check: degraded)
  2   bad command line or input file
  3   check: unusable
  10  not root / missing capabilities
  11  kernel has no BTF (/sys/kernel/btf/vmlinux)
  12  kernel has no kprobes
  13  vfio_iommu_type1 not loaded and --no-wait given
  14  output file not writable
  15  built without the eBPF object
  16  --strict and a probe point is missing or failed
  17  the kernel refused to load the probes (verifier)
  18  the metrics address cannot be listened on (--listen)";

pub fn report(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<Fatal>() {
        Some(f) => {
            eprintln!("vfio-zp: {f}");
            ExitCode::from(f.exit_code())
        }
        None => {
            eprintln!("vfio-zp: {e:#}");
            ExitCode::from(1)
        }
    }
}
