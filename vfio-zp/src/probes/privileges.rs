//! Capabilities after attach. Loading and attaching needs a lot (BPF, perf,
//! kallsyms addresses, pagemap pfns, /proc/kcore); running needs only what
//! re-attaching after a vfio_iommu_type1 reload takes:
//!
//! - CAP_BPF: every bpf() call, counter reads included, when unprivileged
//!   BPF is disabled (Debian's default), and attaching;
//! - CAP_PERFMON: perf_event_open for kprobes and tracefs events;
//! - CAP_SYSLOG: kallsyms addresses when the module's symbols are re-read;
//! - CAP_SYS_ADMIN on kernels without CAP_BPF/CAP_PERFMON (< 5.8), and where
//!   `kernel.perf_event_paranoid` is above 2: Debian's kernels (default 3)
//!   refuse every perf_event_open without it, CAP_PERFMON or not (measured
//!   in the lab: re-attach after a type1 reload failed without it).
//!
//! Dropped: CAP_SYS_RAWIO (/proc/kcore stays open), CAP_DAC_*, and all the
//! rest, from the effective, permitted, inheritable, ambient and bounding
//! sets. Capabilities are per thread: the agent runs on one thread
//! (current-thread runtime), and every task is checked afterwards.
use caps::{CapSet, Capability, CapsHashSet};

/// What to keep on this kernel.
pub fn keep() -> CapsHashSet {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    keep_for(&caps::runtime::thread_all_supported(), paranoid)
}

/// What to keep given the capabilities the kernel knows and its
/// `perf_event_paranoid` (unknown: assume the strictest).
pub fn keep_for(supported: &CapsHashSet, perf_event_paranoid: Option<i32>) -> CapsHashSet {
    let mut keep: CapsHashSet = [Capability::CAP_SYSLOG].into_iter().collect();
    let split =
        supported.contains(&Capability::CAP_BPF) && supported.contains(&Capability::CAP_PERFMON);
    if split {
        keep.extend([Capability::CAP_BPF, Capability::CAP_PERFMON]);
    }
    if !split || perf_event_paranoid.is_none_or(|p| p > 2) {
        keep.insert(Capability::CAP_SYS_ADMIN);
    }
    keep
}

/// Reduces the calling thread to `keep` (those of it it holds) in every set.
pub fn drop_to(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for c in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let held: CapsHashSet = caps::read(None, CapSet::Permitted)?
        .intersection(keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &held)?;
    caps::set(None, CapSet::Permitted, &held)
}

/// Threads of this process whose effective set exceeds `keep`.
pub fn tasks_exceeding(keep: &CapsHashSet) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| {
            let tid: i32 = t.file_name().to_str()?.parse().ok()?;
            let eff = caps::read(Some(tid), CapSet::Effective).ok()?;
            let extra: Vec<_> = eff.difference(keep).map(|c| c.to_string()).collect();
            (!extra.is_empty()).then(|| format!("{tid}: also {}", extra.join(", ")))
        })
        .collect()
}

/// Drops what the running agent does not need; says what it kept, or why not.
pub fn drop_after_attach() {
    let keep = keep();
    let mut names: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    names.sort();
    match drop_to(&keep) {
        Ok(()) => {
            let extra = tasks_exceeding(&keep);
            if extra.is_empty() {
                tracing::info!(
                    "capabilities dropped after attach; kept {} (to re-attach when vfio_iommu_type1 reloads)",
                    names.join(", ")
                );
            } else {
                tracing::warn!(
                    "capabilities dropped on the main thread, but other threads still hold more: {}",
                    extra.join("; ")
                );
            }
        }
        Err(e) => tracing::warn!("could not drop capabilities after attach: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_admin_is_kept_only_where_perf_needs_it() {
        use Capability::*;
        let modern: CapsHashSet = caps::all();
        let old: CapsHashSet = modern
            .iter()
            .copied()
            .filter(|c| ![CAP_BPF, CAP_PERFMON].contains(c))
            .collect();
        let set = |v: &[Capability]| v.iter().copied().collect::<CapsHashSet>();
        assert_eq!(
            keep_for(&modern, Some(2)),
            set(&[CAP_BPF, CAP_PERFMON, CAP_SYSLOG])
        );
        // Debian's paranoid level 3, or unknown: perf_event_open needs SYS_ADMIN.
        for p in [Some(3), None] {
            assert_eq!(
                keep_for(&modern, p),
                set(&[CAP_BPF, CAP_PERFMON, CAP_SYSLOG, CAP_SYS_ADMIN])
            );
        }
        assert_eq!(keep_for(&old, Some(1)), set(&[CAP_SYSLOG, CAP_SYS_ADMIN]));
    }

    /// Really drops, on a thread of its own (capabilities are per thread),
    /// and reads the result back from the kernel.
    #[test]
    fn a_thread_keeps_exactly_what_it_asked_for() {
        if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
            crate::testing::skip("cap-drop", "needs root (CAP_SETPCAP) to drop capabilities");
            return;
        }
        let keep = keep();
        let (eff, bounding, ambient) = std::thread::spawn(move || {
            drop_to(&keep).unwrap();
            (
                caps::read(None, CapSet::Effective).unwrap(),
                caps::read(None, CapSet::Bounding).unwrap(),
                caps::read(None, CapSet::Ambient).unwrap(),
            )
        })
        .join()
        .unwrap();
        let keep = super::keep();
        assert_eq!(eff, keep, "effective set");
        assert!(bounding.is_subset(&keep), "{bounding:?}");
        assert!(ambient.is_empty());
        assert!(!keep.contains(&Capability::CAP_SYS_RAWIO));
    }
}
