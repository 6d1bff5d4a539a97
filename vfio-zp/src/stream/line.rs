//! The recording format: JSON lines, one [`Line`] each. The first line is
//! the [`Header`]; a reader refuses versions newer than it knows.
//! Documented in docs/recording.md.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::{Event, Memlock};

pub const FORMAT: &str = "vfio-zp-recording";
/// 2 added `cgroup` and `process` lines, `kernel_version` and counters'
/// `zero_refcount`; version 1 files read as version 2 files without them.
/// 3 added the probe state `not_needed`; older files read unchanged.
/// 4 added type1 pins' and unpins' `huge_zero_pages`, which the model
/// needs while the generic unpin probes are off on a kernel where type1
/// holds the huge zero page (6.1); older files read with none.
pub const VERSION: u32 = 4;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Line {
    Header(Header),
    Event(Event),
    /// Exact kernel-side counters, written periodically and at the end.
    Counters(Counters),
    /// Probe coverage changed (module loaded or unloaded).
    Probes(ProbesChanged),
    /// A cgroup id's path, written before the first event from it.
    Cgroup(CgroupInfo),
    /// A process's memlock facts, written before its first event.
    Process(ProcessInfo),
    /// Only in the agent's journal, never in a recording: the id steps the
    /// next event's decode took (see [`IdOp`]).
    Ids(IdSteps),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdSteps {
    pub ops: Vec<IdOp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupInfo {
    pub id: u64,
    /// Path under the cgroup v2 root, `/`-separated, no leading slash
    /// (empty for the root). None when the cgroup was gone before it was seen.
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub tgid: u32,
    pub comm: String,
    /// Soft RLIMIT_MEMLOCK from /proc/PID/limits.
    pub memlock: Memlock,
    /// CAP_IPC_LOCK in the effective set: type1 then charges but never refuses.
    #[serde(default)]
    pub cap_ipc_lock: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub agent_version: String,
    /// `uname -r` of the recorded kernel.
    pub kernel_release: String,
    /// `uname -v`: distributions put the upstream sublevel here
    /// (Debian: "#1 SMP Debian 5.10.223-1 ...").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// Written as 0: the zero page's real pfn would reveal physical KASLR.
    /// Kept so older readers accept the file.
    pub zero_pfn: u64,
    /// `sizeof(struct page)` and `offsetof(struct page, _refcount)` from BTF.
    pub struct_page_size: u64,
    pub refcount_offset: u64,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Monotonic clock at start, to relate event `t_ns` to wall time.
    pub started_t_ns: u64,
    pub probes: Vec<ProbeStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// Stable label (probes/probe_points.rs).
    pub probe: String,
    /// Kernel function it hooks.
    pub function: String,
    /// Symbol really hooked (may carry a clone suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    pub state: ProbeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Coverage lost while not attached.
    pub loses: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    Attached,
    /// Not in kallsyms: inlined or absent in this build.
    Missing,
    /// In kallsyms, not in available_filter_functions.
    NotTraceable,
    /// vfio_iommu_type1 is not loaded.
    ModuleNotLoaded,
    /// Attach was tried and failed (`detail` says why).
    Failed,
    /// Left unattached on purpose: the running kernel was observed not to
    /// do what the point watches for (`detail` gives the evidence), so it
    /// could only cost. Attached again if the evidence changes.
    NotNeeded,
}

/// The generic GUP unpin points. They see only the zero page's references
/// going (type1 unpins read-write memory page by page through them, none
/// of it the zero page), so where GUP takes no reference on the zero page
/// they are left off: [`ProbeState::NotNeeded`].
pub const GUP_UNPIN_PROBES: [&str; 3] =
    ["gup_unpin_page", "gup_unpin_pages", "gup_unpin_pages_dirty"];

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub t_ns: u64,
    /// Probe runs per probe label.
    pub hits: BTreeMap<String, u64>,
    /// Events lost to a full ring buffer, per probe label.
    pub drops: BTreeMap<String, u64>,
    /// Return-probe runs lost because every instance was busy (kretprobe
    /// maxactive), per probe label: events that were never produced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub misses: BTreeMap<String, u64>,
    pub totals: Totals,
    /// The zero page's `_refcount` read through /proc/kcore at this moment
    /// (absent when kcore is unavailable, e.g. under kernel lockdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_refcount: Option<i32>,
    #[serde(default)]
    pub last: bool,
}

/// Exact totals kept by the probes (vfio_zp_common::counter).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub gup_zero_pinned: u64,
    pub gup_zero_unpinned: u64,
    pub gup_huge_zero_pinned: u64,
    pub gup_huge_zero_unpinned: u64,
    pub type1_zero_pinned: u64,
    pub type1_pinned: u64,
    pub type1_unpinned: u64,
    pub lock_acct_charged: u64,
    pub lock_acct_uncharged: u64,
    pub unmatched_returns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbesChanged {
    pub t_ns: u64,
    pub probes: Vec<ProbeStatus>,
}

/// One step of the id maps; replaying the steps of a journal after a
/// checkpoint rebuilds the maps exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdOp {
    Container { key: u64, birth: bool },
    RetireContainer { key: u64 },
    Dma { key: u64, birth: bool },
    RetireDma { key: u64 },
}
