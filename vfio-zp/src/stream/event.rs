//! What happened in the kernel, as the agent tells it: decoded, with kernel
//! pointers replaced by small ids. This is the recording's event schema
//! (docs/recording.md), the input of the model and of every output.
use serde::{Deserialize, Serialize};

/// A container's or mapping's stable small id, assigned in order of first sight.
pub type Id = u32;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub t_ns: u64,
    pub tgid: u32,
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 id of the task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// The VFIO container the event belongs to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Id>,
    /// The 4 KiB zero page's `_refcount`, read by the probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_refcount: Option<Refcount>,
    #[serde(flatten)]
    pub what: What,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refcount {
    pub value: i32,
    /// `before` for unpins seen at entry, `after` for pins seen at return.
    pub when: When,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    Before,
    After,
}

/// Which page a pfn or `struct page *` is. Raw pfns are not recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PageClass {
    /// The shared 4 KiB zero page.
    Zero,
    /// A subpage of the THP huge zero page (type1 charges and releases it normally).
    HugeZero,
    /// Any other page.
    #[default]
    Other,
    /// The agent could not tell (zero-page identity unavailable).
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnpinFn {
    UnpinUserPage,
    UnpinUserPages,
    UnpinUserPagesDirtyLock,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// vfio_pin_pages_remote returned: `pinned` pages starting at a pfn of class `base`.
    Type1Pin {
        dma: Id,
        vaddr: u64,
        npage: u64,
        pinned: i64,
        base: PageClass,
        /// Of the `pinned` pages (one pfn run), the huge zero page's.
        /// Since format 4; absent when 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        huge_zero_pages: u64,
    },
    /// vfio_unpin_pages_remote: `npage` pages from a pfn of class `base`.
    Type1Unpin {
        dma: Id,
        iova: u64,
        npage: u64,
        do_accounting: bool,
        unlocked: i64,
        base: PageClass,
        /// Of the `npage` pages (one pfn run), the huge zero page's.
        /// Since format 4; absent when 0.
        #[serde(default, skip_serializing_if = "is_zero")]
        huge_zero_pages: u64,
    },
    /// put_pfn on a zero or huge-zero pfn; `released` is its return value.
    PutPfn {
        page: PageClass,
        prot: u32,
        released: bool,
    },
    /// vfio_lock_acct: locked_vm change in pages; `ret` non-zero means refused.
    LockAcct {
        dma: Id,
        npage: i64,
        is_async: bool,
        ret: i32,
    },
    /// pin_user_pages_remote (remote) or pin_user_pages returned.
    GupPin {
        remote: bool,
        start: u64,
        nr_pages: u64,
        gup_flags: u32,
        pinned: i64,
        zero_pages: u64,
        huge_zero_pages: u64,
        in_type1: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// unpin_user_page(s) called on zero or huge-zero pages.
    GupUnpin {
        func: UnpinFn,
        npages: u64,
        zero_pages: u64,
        huge_zero_pages: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// A type1 container was opened (`container` is set), or the open failed.
    ContainerOpen {
        ok: bool,
    },
    ContainerRelease,
    /// vfio_remove_dma: mapping `dma` of `container` goes away.
    RemoveDma {
        dma: Id,
    },
    /// VFIO_IOMMU_MAP_DMA returned `ret`.
    MapDma {
        flags: u32,
        vaddr: u64,
        iova: u64,
        size: u64,
        ret: i64,
        /// The caller's soft RLIMIT_MEMLOCK, read by the probe at map time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memlock: Option<Memlock>,
        /// The caller had CAP_IPC_LOCK (known when `memlock` is).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cap_ipc_lock: Option<bool>,
    },
    /// VFIO_IOMMU_UNMAP_DMA returned `ret`; `size` is what the kernel unmapped.
    UnmapDma {
        flags: u32,
        iova: u64,
        size: u64,
        ret: i64,
    },
}

impl What {
    /// Whether the event moved a zero page's references (what the agent
    /// logs at debug level: a VM start makes thousands).
    pub fn touches_zero_page(&self) -> bool {
        match self {
            What::Type1Pin { base, .. } | What::Type1Unpin { base, .. } => {
                matches!(base, PageClass::Zero | PageClass::HugeZero)
            }
            What::PutPfn { .. } => true,
            What::GupPin {
                zero_pages,
                huge_zero_pages,
                ..
            }
            | What::GupUnpin {
                zero_pages,
                huge_zero_pages,
                ..
            } => zero_pages + huge_zero_pages > 0,
            _ => false,
        }
    }

    /// The probe label (probes/probe_points.rs) the event came from.
    pub fn kind_name(&self) -> &'static str {
        match self {
            What::Type1Pin { .. } => "type1_pin",
            What::Type1Unpin { .. } => "type1_unpin",
            What::PutPfn { .. } => "put_pfn",
            What::LockAcct { .. } => "lock_acct",
            What::GupPin { .. } => "gup_pin",
            What::GupUnpin { .. } => "gup_unpin",
            What::ContainerOpen { .. } => "container_open",
            What::ContainerRelease => "container_release",
            What::RemoveDma { .. } => "remove_dma",
            What::MapDma { .. } => "map_dma",
            What::UnmapDma { .. } => "unmap_dma",
        }
    }
}

/// One human line per event, for `--print` and the agent's log.
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6}.{:06} {}[{}]",
            self.t_ns / 1_000_000_000,
            self.t_ns / 1000 % 1_000_000,
            self.comm,
            self.tgid
        )?;
        if let Some(c) = self.container {
            write!(f, " container={c}")?;
        }
        write!(f, " {}", self.what.kind_name())?;
        let v = serde_json::to_value(&self.what).unwrap_or_default();
        if let Some(m) = v.as_object() {
            for (k, val) in m.iter().filter(|(k, _)| *k != "kind") {
                write!(f, " {k}={val}")?;
            }
        }
        if let Some(r) = self.zero_refcount {
            let when = if r.when == When::Before {
                "before"
            } else {
                "after"
            };
            write!(f, " zero_refcount={}({when})", r.value)?;
        }
        Ok(())
    }
}

/// A soft RLIMIT_MEMLOCK as read from /proc/PID/limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Memlock {
    Bytes(u64),
    Unlimited,
    /// The process was gone (or /proc unreadable) before it could be read.
    Unknown,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
