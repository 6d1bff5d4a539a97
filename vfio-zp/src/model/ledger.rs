//! What type1 holds, per DMA mapping, VFIO container and process.
use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::stream::event::Memlock;
use crate::stream::event::{Id, PageClass};

/// Pages by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pages {
    pub zero: i64,
    pub huge_zero: i64,
    /// Other reserved or invalid pfns (device memory): type1 charges none.
    pub reserved: i64,
    pub other: i64,
}

/// What type1 holds a page as: its class, and for other pages whether
/// type1 treated it as reserved (told by the charge it made for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub class: PageClass,
    pub reserved: bool,
}

impl Held {
    /// The pages of `n` type1 charges to locked_vm: none of the reserved
    /// (the zero page is one), all others (the huge zero page is an
    /// ordinary THP to type1).
    pub fn charged(self, n: i64) -> i64 {
        if self.class == PageClass::Zero || self.reserved {
            0
        } else {
            n
        }
    }
}

impl Pages {
    pub fn get_mut(&mut self, h: Held) -> &mut i64 {
        match h.class {
            PageClass::Zero => &mut self.zero,
            PageClass::HugeZero => &mut self.huge_zero,
            _ if h.reserved => &mut self.reserved,
            PageClass::Other | PageClass::Unknown => &mut self.other,
        }
    }

    pub fn total(&self) -> i64 {
        self.zero + self.huge_zero + self.reserved + self.other
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dma {
    pub container: Id,
    pub tgid: u32,
    /// vaddr of its first pin, then the MAP_DMA range once that returns.
    pub vaddr: u64,
    pub iova: Option<u64>,
    pub size: Option<u64>,
    pub read_only: Option<bool>,
    pub pinned: Pages,
    /// locked_vm pages: as the model predicts them, and as vfio_lock_acct did.
    pub locked_model: i64,
    pub locked_kernel: i64,
    pub removed: bool,
    /// When its first pin call began: its charges rest on records since.
    #[serde(default)]
    pub first_ns: u64,
}

/// A pin call in progress (between its first GUP call and its return).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PinCall {
    pub container: Option<Id>,
    pub zero_pinned: i64,
    pub zero_unpinned: i64,
    pub huge_zero_pinned: i64,
    pub charged: i64,
    /// Charges made before the mapping they belong to was first seen.
    pub unattached: i64,
    pub read_only_gup: bool,
    /// Its first GUP call (event time): a blind window since then may
    /// have hidden some of its records.
    #[serde(default)]
    pub started_ns: u64,
}

impl PinCall {
    /// Whether it holds GUP zero-page pins beyond the unpins seen: their
    /// unpins may have run in the kernel while their record (folded until
    /// the thread writes again) is still to come.
    pub fn may_hold_unwritten_unpins(&self) -> bool {
        self.zero_pinned > self.zero_unpinned
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Container {
    pub id: Id,
    pub tgid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub opened_ns: Option<u64>,
    pub closed_ns: Option<u64>,
    pub dmas: BTreeSet<Id>,
    pub pinned: Pages,
    /// GUP zero-page pins taken on its behalf (raw counts: references only
    /// if the kernel's GUP pins the zero page).
    pub zero_pins_taken: u64,
    pub zero_pins_released: u64,
    /// Pins that outlived the type1 call that took them.
    pub zero_pins_survived: i64,
    /// Pins' worth of refcount growth across its type1 zero-page pins
    /// that no GUP pin seen explains (a path not probed, lost records).
    #[serde(default)]
    pub unseen_pins: i64,
    pub huge_zero_pins_live: i64,
    pub locked_model: i64,
    pub locked_kernel: i64,
    /// (event time, pins) of recent survivals, for the rate.
    pub recent: VecDeque<(u64, i64)>,
}

impl Container {
    pub fn new(id: Id, tgid: u32, comm: &str, cgroup_id: u64) -> Container {
        Container {
            id,
            tgid,
            comm: comm.into(),
            cgroup_id,
            opened_ns: None,
            closed_ns: None,
            dmas: BTreeSet::new(),
            pinned: Pages::default(),
            zero_pins_taken: 0,
            zero_pins_released: 0,
            zero_pins_survived: 0,
            unseen_pins: 0,
            huge_zero_pins_live: 0,
            locked_model: 0,
            locked_kernel: 0,
            recent: VecDeque::new(),
        }
    }

    pub fn zero_pins_live(&self) -> i64 {
        self.zero_pins_taken as i64 - self.zero_pins_released as i64
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Process {
    pub tgid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub memlock: Memlock,
    pub cap_ipc_lock: bool,
    pub locked_kernel: i64,
    pub locked_model: i64,
    pub zero_held: i64,
    /// Highest locked_vm this process would have had if zero pages were charged.
    pub peak_if_charged: i64,
    /// Pages pinned by read-only long-term type1 pins (GUP without FOLL_WRITE).
    pub ro_longterm_pinned: i64,
    pub refusals: u64,
    /// Its mm was gone when type1 uncharged its mappings: it exited.
    #[serde(default)]
    pub exited: bool,
}

impl Process {
    pub fn new(tgid: u32, comm: &str, cgroup_id: u64) -> Process {
        Process {
            tgid,
            comm: comm.into(),
            cgroup_id,
            memlock: Memlock::Unknown,
            cap_ipc_lock: false,
            locked_kernel: 0,
            locked_model: 0,
            zero_held: 0,
            peak_if_charged: 0,
            ro_longterm_pinned: 0,
            refusals: 0,
            exited: false,
        }
    }

    pub fn note_peak(&mut self) {
        self.peak_if_charged = self
            .peak_if_charged
            .max(self.locked_kernel + self.zero_held);
    }
}
