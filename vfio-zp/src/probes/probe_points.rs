//! Where each probe goes, and what is lost when it cannot go there.
//! Names are resolved at run time: static functions get inlined or cloned
//! with suffixes (`.constprop.0`, `.isra.0`, `.part.0`) from build to build.
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use vfio_zp_common::ProbeId;

use super::kallsyms::Kallsyms;

/// The module that owns the type1 functions.
pub const TYPE1_MODULE: &str = "vfio_iommu_type1";

#[derive(Clone, Copy, Debug)]
pub struct ProbePoint {
    pub probe: ProbeId,
    /// Stable label used in recordings and metrics.
    pub label: &'static str,
    /// Kernel function, without clone suffixes.
    pub function: &'static str,
    /// eBPF program names (see vfio-zp-ebpf).
    pub entry: Option<&'static str>,
    pub ret: Option<&'static str>,
    /// Lives in vfio_iommu_type1 (comes and goes with the module).
    pub in_type1: bool,
    /// What the verdicts lose without it.
    pub loses: &'static str,
}

pub const POINTS: [ProbePoint; vfio_zp_common::PROBE_COUNT] = [
    ProbePoint {
        probe: ProbeId::Type1Pin,
        label: "type1_pin",
        function: "vfio_pin_pages_remote",
        entry: Some("type1_pin"),
        ret: Some("type1_pin_ret"),
        in_type1: true,
        loses: "type1 pin calls and the zero-page pfns they map",
    },
    ProbePoint {
        probe: ProbeId::Type1Unpin,
        label: "type1_unpin",
        function: "vfio_unpin_pages_remote",
        entry: Some("type1_unpin"),
        ret: Some("type1_unpin_ret"),
        in_type1: true,
        loses: "type1 unpins at unmap (put_pfn is inlined into it on 6.1+)",
    },
    ProbePoint {
        probe: ProbeId::PutPfn,
        label: "put_pfn",
        function: "put_pfn",
        entry: Some("put_pfn"),
        ret: Some("put_pfn_ret"),
        in_type1: true,
        loses: "per-page put_pfn calls outside vfio_unpin_pages_remote (the 5.10 look-ahead drop); often inlined, then vfio_unpin_pages_remote covers unmaps",
    },
    ProbePoint {
        probe: ProbeId::LockAcct,
        label: "lock_acct",
        function: "vfio_lock_acct",
        entry: Some("lock_acct"),
        ret: Some("lock_acct_ret"),
        in_type1: true,
        loses: "the locked_vm (RLIMIT_MEMLOCK) charges type1 really makes",
    },
    ProbePoint {
        probe: ProbeId::GupPinRemote,
        label: "gup_pin_remote",
        function: "pin_user_pages_remote",
        entry: Some("gup_pin_remote"),
        ret: Some("gup_pin_remote_ret"),
        in_type1: false,
        loses: "zero-page pins taken by GUP for type1 and the refcount after them",
    },
    ProbePoint {
        probe: ProbeId::GupPin,
        label: "gup_pin",
        function: "pin_user_pages",
        entry: Some("gup_pin"),
        ret: Some("gup_pin_ret"),
        in_type1: false,
        loses: "zero-page pins taken through pin_user_pages (not type1's own path)",
    },
    ProbePoint {
        probe: ProbeId::GupUnpinPage,
        label: "gup_unpin_page",
        function: "unpin_user_page",
        entry: Some("gup_unpin_page"),
        ret: None,
        in_type1: false,
        loses: "zero-page unpins of single pages (type1's zero-page unpin loop)",
    },
    ProbePoint {
        probe: ProbeId::GupUnpinPages,
        label: "gup_unpin_pages",
        function: "unpin_user_pages",
        entry: Some("gup_unpin_pages"),
        ret: None,
        in_type1: false,
        loses: "zero-page unpins in page batches",
    },
    ProbePoint {
        probe: ProbeId::GupUnpinPagesDirty,
        label: "gup_unpin_pages_dirty",
        function: "unpin_user_pages_dirty_lock",
        entry: Some("gup_unpin_pages_dirty"),
        ret: None,
        in_type1: false,
        loses: "zero-page unpins in dirtying page batches",
    },
    ProbePoint {
        probe: ProbeId::Type1Open,
        label: "type1_open",
        function: "vfio_iommu_type1_open",
        entry: None,
        ret: Some("type1_open_ret"),
        in_type1: true,
        loses: "container creation (containers are then first seen at their first map)",
    },
    ProbePoint {
        probe: ProbeId::Type1Release,
        label: "type1_release",
        function: "vfio_iommu_type1_release",
        entry: Some("type1_release"),
        ret: None,
        in_type1: true,
        loses: "container teardown",
    },
    ProbePoint {
        probe: ProbeId::RemoveDma,
        label: "remove_dma",
        function: "vfio_remove_dma",
        entry: Some("remove_dma"),
        ret: None,
        in_type1: true,
        loses: "which container a mapping removed at teardown belonged to",
    },
    ProbePoint {
        probe: ProbeId::Type1Ioctl,
        label: "type1_ioctl",
        function: "vfio_iommu_type1_ioctl",
        entry: Some("type1_ioctl"),
        ret: Some("type1_ioctl_ret"),
        in_type1: true,
        loses: "MAP_DMA/UNMAP_DMA requests (iova, size, flags) and per-container attribution of pins",
    },
];

pub fn point(probe: ProbeId) -> &'static ProbePoint {
    &POINTS[probe as usize]
}

pub fn by_label(label: &str) -> Option<&'static ProbePoint> {
    POINTS.iter().find(|p| p.label == label)
}

/// Where a probe point stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Resolution {
    /// Found under `symbol` (the base name or a suffixed clone).
    Found { symbol: String },
    /// In kallsyms but not in available_filter_functions: not probeable.
    NotTraceable { symbol: String },
    /// Not in kallsyms: inlined into its callers or absent from this build.
    Missing,
    /// The owning module is not loaded (yet).
    ModuleNotLoaded,
}

/// Picks the symbol to attach to for `p`. `filter` is tracefs'
/// available_filter_functions when readable.
pub fn resolve(
    p: &ProbePoint,
    syms: &Kallsyms,
    filter: Option<&HashSet<String>>,
    type1_loaded: bool,
) -> Resolution {
    let variants = syms.variants(p.function);
    if variants.is_empty() {
        return if p.in_type1 && !type1_loaded {
            Resolution::ModuleNotLoaded
        } else {
            Resolution::Missing
        };
    }
    // Prefer a traceable text symbol; the plain name sorts first.
    let text: Vec<_> = variants
        .iter()
        .filter(|s| matches!(s.kind, 't' | 'T'))
        .collect();
    let Some(first) = text.first() else {
        return Resolution::Missing;
    };
    match filter {
        Some(f) => match text.iter().find(|s| f.contains(&s.name)) {
            Some(s) => Resolution::Found {
                symbol: s.name.clone(),
            },
            None => Resolution::NotTraceable {
                symbol: first.name.clone(),
            },
        },
        None => Resolution::Found {
            symbol: first.name.clone(),
        },
    }
}

/// Names kallsyms must keep for resolution and zero-page identity.
pub fn wanted_symbol(name: &str) -> bool {
    super::zero_page::VARIABLES.contains(&name)
        || POINTS
            .iter()
            .any(|p| super::kallsyms::is_variant(p.function, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(text: &str) -> Kallsyms {
        Kallsyms::parse(text, wanted_symbol)
    }

    #[test]
    fn table_is_indexed_by_probe_id() {
        for (i, p) in POINTS.iter().enumerate() {
            assert_eq!(p.probe as usize, i, "{}", p.label);
            assert!(p.entry.is_some() || p.ret.is_some());
        }
    }

    #[test]
    fn suffixed_clone_is_found_and_plain_name_preferred() {
        let k = syms(
            "ffffffffc0000000 t vfio_lock_acct.part.0\t[vfio_iommu_type1]\n\
             ffffffffc0000100 t vfio_pin_pages_remote\t[vfio_iommu_type1]\n\
             ffffffffc0000200 t vfio_pin_pages_remote.isra.0\t[vfio_iommu_type1]\n",
        );
        let r = resolve(point(ProbeId::LockAcct), &k, None, true);
        assert_eq!(
            r,
            Resolution::Found {
                symbol: "vfio_lock_acct.part.0".into()
            }
        );
        let r = resolve(point(ProbeId::Type1Pin), &k, None, true);
        assert_eq!(
            r,
            Resolution::Found {
                symbol: "vfio_pin_pages_remote".into()
            }
        );
    }

    #[test]
    fn inlined_missing_and_unloaded_are_told_apart() {
        let k = syms("ffffffffc0000100 t vfio_unpin_pages_remote\t[vfio_iommu_type1]\n");
        assert_eq!(
            resolve(point(ProbeId::PutPfn), &k, None, true),
            Resolution::Missing
        );
        let empty = syms("");
        assert_eq!(
            resolve(point(ProbeId::Type1Pin), &empty, None, false),
            Resolution::ModuleNotLoaded
        );
        assert_eq!(
            resolve(point(ProbeId::GupPinRemote), &empty, None, false),
            Resolution::Missing
        );
    }

    #[test]
    fn tracefs_decides_traceability() {
        let k = syms(
            "ffffffffc0000000 t put_pfn\t[vfio_iommu_type1]\n\
             ffffffffc0000100 t put_pfn.isra.0\t[vfio_iommu_type1]\n",
        );
        let f: HashSet<String> = ["put_pfn.isra.0".to_string()].into();
        assert_eq!(
            resolve(point(ProbeId::PutPfn), &k, Some(&f), true),
            Resolution::Found {
                symbol: "put_pfn.isra.0".into()
            }
        );
        let none = HashSet::new();
        assert_eq!(
            resolve(point(ProbeId::PutPfn), &k, Some(&none), true),
            Resolution::NotTraceable {
                symbol: "put_pfn".into()
            }
        );
    }
}
