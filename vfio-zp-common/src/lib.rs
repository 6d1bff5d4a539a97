//! Types shared by the kernel side (`vfio-zp-ebpf`) and the agent (`vfio-zp`).
//!
//! Everything here is `#[repr(C)]` plain data: the probes write it into the
//! ring buffer and the counter map, the agent reads the same bytes back.
//! Kernel pointers travel in these structs only as opaque keys; the agent maps
//! them to small ids before anything leaves the process.
#![cfg_attr(not(test), no_std)]

pub mod payload;

/// Length of `task_struct::comm`.
pub const COMM_LEN: usize = 16;

/// Upper bound on the `struct page *` entries a probe inspects per GUP call.
/// type1 pins through a `vfio_batch` of PAGE_SIZE / 8 = 512 entries, so this
/// covers every call it makes; larger calls are flagged `FLAG_TRUNCATED`.
pub const MAX_PAGES_SCANNED: u32 = 512;

/// GUP's FOLL_WRITE, the one GUP flag whose value never moved (0x01 from
/// 5.10 to 7.3). A write pin breaks copy-on-write before it pins, on the
/// zero page and the huge zero page alike (follow_page_pte and
/// follow_trans_huge_pmd refuse a read-only entry to FOLL_WRITE and fault it
/// in for writing), so it never returns either.
pub const FOLL_WRITE: u32 = 0x01;

/// Pages in a THP huge zero page (2 MiB / 4 KiB on x86-64).
pub const HUGE_ZERO_PAGES: u64 = 512;

/// One probe point; its value indexes the per-probe counters.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeId {
    /// `vfio_pin_pages_remote` entry + return, one event per call.
    Type1Pin = 0,
    /// `vfio_unpin_pages_remote` entry + return.
    Type1Unpin = 1,
    /// `put_pfn` entry + return (inlined on many builds).
    PutPfn = 2,
    /// `vfio_lock_acct` (any suffix): locked_vm deltas type1 charges.
    LockAcct = 3,
    /// `pin_user_pages_remote` entry + return.
    GupPinRemote = 4,
    /// `pin_user_pages` entry + return.
    GupPin = 5,
    /// `unpin_user_page` entry.
    GupUnpinPage = 6,
    /// `unpin_user_pages` entry.
    GupUnpinPages = 7,
    /// `unpin_user_pages_dirty_lock` entry.
    GupUnpinPagesDirty = 8,
    /// `vfio_iommu_type1_open` return: a container is born.
    Type1Open = 9,
    /// `vfio_iommu_type1_release` entry: a container dies.
    Type1Release = 10,
    /// `vfio_remove_dma` entry: a DMA mapping of a container goes away.
    RemoveDma = 11,
    /// `vfio_iommu_type1_ioctl` entry + return: MAP_DMA / UNMAP_DMA requests.
    Type1Ioctl = 12,
}

/// Number of [`ProbeId`] values.
pub const PROBE_COUNT: usize = 13;

impl ProbeId {
    pub const ALL: [ProbeId; PROBE_COUNT] = [
        ProbeId::Type1Pin,
        ProbeId::Type1Unpin,
        ProbeId::PutPfn,
        ProbeId::LockAcct,
        ProbeId::GupPinRemote,
        ProbeId::GupPin,
        ProbeId::GupUnpinPage,
        ProbeId::GupUnpinPages,
        ProbeId::GupUnpinPagesDirty,
        ProbeId::Type1Open,
        ProbeId::Type1Release,
        ProbeId::RemoveDma,
        ProbeId::Type1Ioctl,
    ];

    pub fn from_u16(v: u16) -> Option<ProbeId> {
        Self::ALL.get(v as usize).copied()
    }
}

/// Indexes of the exact kernel-side counters (a per-CPU array the agent sums).
/// Probe hits and ring-buffer drops are per probe; the rest are totals the
/// verdicts rest on, kept exact even when events are dropped.
pub mod counter {
    use super::PROBE_COUNT;
    /// `HITS + probe`: calls the probe saw. The type1 pin and unpin calls
    /// are counted at their return, whose counter lookup serves the other
    /// counters too (or at the thread's next call, when the return was
    /// missed), and so are the zero-page unpin_user_page calls a type1 pin
    /// call folds; every other call counts at entry. A zero-page type1 call
    /// folded into a held run (`TYPE1_*` too) is counted when the run is
    /// written, with the record, at the latest at its ioctl's return.
    pub const HITS: u32 = 0;
    /// `DROPS + probe`: events of that probe lost because the ring buffer was full.
    pub const DROPS: u32 = PROBE_COUNT as u32;
    const BASE: u32 = 2 * PROBE_COUNT as u32;
    /// Pages GUP returned that are the 4 KiB zero page (pin_user_pages*).
    pub const GUP_ZERO_PINNED: u32 = BASE;
    /// Zero-page entries handed to unpin_user_page(s)*.
    pub const GUP_ZERO_UNPINNED: u32 = BASE + 1;
    /// Pages GUP returned that belong to the THP huge zero page.
    pub const GUP_HUGE_ZERO_PINNED: u32 = BASE + 2;
    /// Huge-zero-page entries handed to unpin_user_page(s)*.
    pub const GUP_HUGE_ZERO_UNPINNED: u32 = BASE + 3;
    /// Pages vfio_pin_pages_remote returned whose base pfn is the zero page.
    pub const TYPE1_ZERO_PINNED: u32 = BASE + 4;
    /// Pages vfio_pin_pages_remote returned in all.
    pub const TYPE1_PINNED: u32 = BASE + 5;
    /// Pages passed to vfio_unpin_pages_remote in all.
    pub const TYPE1_UNPINNED: u32 = BASE + 6;
    /// Sum of positive vfio_lock_acct deltas (pages charged).
    pub const LOCK_ACCT_CHARGED: u32 = BASE + 7;
    /// Sum of negative vfio_lock_acct deltas, as a positive number.
    pub const LOCK_ACCT_UNCHARGED: u32 = BASE + 8;
    /// Return probes that found no matching entry (kretprobe misses, late attach).
    pub const UNMATCHED_RETURNS: u32 = BASE + 9;
    /// Number of counters.
    pub const COUNT: u32 = BASE + 10;
}

/// All counters of one CPU: the `COUNTERS` map has this one per-CPU entry,
/// so a probe pays one map lookup however many counters it moves.
pub type CounterBlock = [u64; counter::COUNT as usize];

/// Event flags.
pub mod flag {
    /// `zero_refcount` holds the zero page's `_refcount` read by the probe.
    pub const REFCOUNT: u16 = 1 << 0;
    /// The refcount was read before the operation (unpin entry), not after.
    pub const REFCOUNT_BEFORE: u16 = 1 << 1;
    /// The base pfn / the single page is the 4 KiB zero page.
    pub const PFN_ZERO: u16 = 1 << 2;
    /// The base pfn / the single page is part of the THP huge zero page.
    pub const PFN_HUGE_ZERO: u16 = 1 << 3;
    /// The page scan stopped at `MAX_PAGES_SCANNED`.
    pub const TRUNCATED: u16 = 1 << 4;
    /// The GUP call ran inside vfio_pin_pages_remote on this thread.
    pub const IN_TYPE1: u16 = 1 << 5;
    /// The zero page identity was not available (config not set).
    pub const NO_ZERO_PAGE_ID: u16 = 1 << 6;
    /// `limit` holds the caller's RLIMIT_MEMLOCK (MAP_DMA events), read in
    /// the kernel at map time: short-lived processes are gone before the
    /// agent could read /proc.
    pub const LIMITS: u16 = 1 << 7;
    /// With `LIMITS`: the caller had CAP_IPC_LOCK in its effective set.
    pub const CAP_IPC_LOCK: u16 = 1 << 8;
    /// A GupUnpinPage record that sums the zero-page `unpin_user_page`
    /// calls one `vfio_pin_pages_remote` call made (`payload::GupUnpin`'s
    /// `npages` counts the calls); written before that thread's next record.
    /// On a Type1Pin record: `carried` counts such calls, not a charge.
    pub const FOLDED: u16 = 1 << 9;
    /// The record carries one read-only zero-page GUP pin of its thread's
    /// type1 pin call, held back (5.10's look-ahead at the next page):
    /// the agent reads it as a `gup_pin` event before the record's other
    /// carried calls. `limit` holds it ([`super::carried_pin`]).
    pub const CARRIES_PIN: u16 = 1 << 10;
}

/// The `limit` word of a record with `flag::CARRIES_PIN`: the pin's start
/// page above its gup_flags.
pub mod carried_pin {
    /// gup_flags bits kept: type1 passes FOLL_WRITE and FOLL_LONGTERM
    /// (bit 16 on 5.10), and a pin with any higher flag is not carried.
    pub const FLAG_BITS: u32 = 19;
    const PAGE_SHIFT: u32 = 12;

    /// The word for a pin at `start` (page-aligned) with `gup_flags`, if
    /// they fit.
    #[inline(always)]
    pub fn encode(start: u64, gup_flags: u64) -> Option<u64> {
        let page = start >> PAGE_SHIFT;
        let fits = start & ((1 << PAGE_SHIFT) - 1) == 0
            && gup_flags >> FLAG_BITS == 0
            && page >> (64 - FLAG_BITS) == 0;
        fits.then_some(page << FLAG_BITS | gup_flags)
    }

    /// The pin's start and gup_flags.
    #[inline(always)]
    pub fn decode(word: u64) -> (u64, u32) {
        (
            (word >> FLAG_BITS) << PAGE_SHIFT,
            (word & ((1 << FLAG_BITS) - 1)) as u32,
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_pin_round_trips_and_what_does_not_fit_is_refused() {
            let start = 0x7f12_3456_7000;
            assert_eq!(decode(encode(start, 0x10000).unwrap()), (start, 0x10000));
            // The highest user page of 5-level paging still fits.
            let top = (1u64 << 57) - 4096;
            assert_eq!(decode(encode(top, 0x40001).unwrap()), (top, 0x40001));
            assert_eq!(encode(start + 8, 0x10000), None, "not page-aligned");
            assert_eq!(encode(start, 1 << 19), None, "a flag above the kept bits");
            assert_eq!(encode(1 << 57, 0), None, "no user address");
        }
    }
}

/// One record in the ring buffer: who and when, then the payload of the
/// record's kind, one of the structs in [`payload`] (named by `probe`, as
/// each struct's doc says).
///
/// Type1Pin and Type1Unpin records of zero pages inside one MAP/UNMAP ioctl
/// may each sum a run of calls (docs/recording.md).
///
/// `container` is the container key of the enclosing type1 ioctl or release
/// on this thread (0 when none); kernel pointers are opaque keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Event {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub container: u64,
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    pub probe: u16,
    pub flags: u16,
    /// The zero page's `_refcount` when `flag::REFCOUNT` is set.
    pub zero_refcount: i32,
    /// The kind's payload ([`payload::Payload::words`]).
    pub payload: payload::Words,
    /// With `flag::LIMITS`: soft RLIMIT_MEMLOCK in bytes (`u64::MAX`:
    /// unlimited). With `flag::CARRIES_PIN`: the carried pin
    /// ([`carried_pin`]).
    pub limit: u64,
    /// Calls folded into this record that ran before it, which the agent
    /// reads as one event just before this one; carried here, they cost no
    /// record of their own. On a `Type1Pin` record: the pages vfio_lock_acct
    /// charged inside the pin call(s) (a `lock_acct` event; 6.2 and later
    /// charge every read-only run), or with `flag::FOLDED` the call's
    /// zero-page `unpin_user_page` calls (it then carries no charge). On
    /// any other: the zero-page `unpin_user_page` calls of this thread's
    /// open type1 pin call (a `gup_unpin` event, see
    /// `ProbeId::GupUnpinPage`; 5.10 wrote two such records per page of a
    /// read-only mapping).
    pub carried: u64,
}

impl Event {
    pub const SIZE: usize = core::mem::size_of::<Event>();
}

// The agent reads records with this layout from a build of the probes made
// from the same source; the size pins it against an accidental change.
const _: () = assert!(Event::SIZE == 120);

/// What the agent tells the probes about the zero page, written once into
/// the one-entry `CONFIG` array before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroPageConfig {
    /// 1 when the fields below are valid.
    pub valid: u64,
    /// PFN of the 4 KiB zero page.
    pub zero_pfn: u64,
    /// Kernel address of the `vmemmap_base` variable (0: use `vmemmap_const`).
    pub vmemmap_base_addr: u64,
    /// Fixed vmemmap start, when the kernel has no `vmemmap_base` variable.
    pub vmemmap_const: u64,
    /// `sizeof(struct page)`, from BTF.
    pub page_size: u64,
    /// `offsetof(struct page, _refcount)`, from BTF.
    pub refcount_offset: u64,
    /// Kernel address of the `huge_zero_pfn` variable (0: unknown).
    pub huge_zero_pfn_addr: u64,
    /// Byte offsets, from BTF, for reading the caller's memlock limit and
    /// capabilities: `task_struct.signal`, `signal_struct.rlim`,
    /// `task_struct.cred`, `cred.cap_effective`. 0 in `task_signal`: unknown.
    pub task_signal: u64,
    pub signal_rlim: u64,
    pub task_cred: u64,
    pub cred_cap_effective: u64,
    /// Unread bytes in the ring buffer at which a record wakes the agent
    /// (0: every record may wake it, the kernel's default). Below it records
    /// are written without a wake-up and the agent's timer collects them:
    /// a wake-up (irq_work, then the agent's epoll) costs more than the
    /// record itself.
    pub wake_bytes: u64,
}

/// `RLIMIT_MEMLOCK`'s index in `signal_struct.rlim` (asm-generic, x86-64).
pub const RLIMIT_MEMLOCK: u64 = 8;
/// `CAP_IPC_LOCK`'s bit in `kernel_cap_t`.
pub const CAP_IPC_LOCK: u64 = 14;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data with no padding holes that matter to readers.
    unsafe impl aya::Pod for super::ZeroPageConfig {}
}
