//! Maps and helpers every probe family uses.
use crate::thread::Thread;
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use vfio_zp_common::{
    CAP_IPC_LOCK, CounterBlock, Event, HUGE_ZERO_PAGES, ProbeId, RLIMIT_MEMLOCK, ZeroPageConfig,
    counter, flag,
    payload::{Payload, Words},
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
pub static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static CONFIG: Array<ZeroPageConfig> = Array::with_max_entries(1, 0);

/// A call parked in a slot-held thread's state (`stash`): its probe and
/// arguments.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallSlot {
    pub probe: u64,
    pub args: Words,
}

/// Entry arguments parked until the matching return probe runs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StashKey {
    pub pid_tgid: u64,
    pub probe: u64,
}

/// A call's arguments parked until its return; `live` is cleared when the
/// return takes them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot<T> {
    pub args: T,
    pub live: u64,
}

impl<T: Copy> Slot<T> {
    #[inline(always)]
    pub fn park(&mut self, args: &T) {
        self.args = *args;
        self.live = 1;
    }

    /// The parked arguments, if any (the slot stays as it is).
    #[inline(always)]
    pub fn peek(&self) -> Option<T> {
        (self.live != 0).then_some(self.args)
    }

    /// Takes the parked arguments; counts a return with none.
    #[inline(always)]
    pub fn take(&mut self) -> Option<T> {
        if self.live != 0 {
            self.live = 0;
            return Some(self.args);
        }
        add(counter::UNMATCHED_RETURNS, 1);
        None
    }
}

/// One slot per (thread, probe) for the probes outside a thread's type1
/// state (thread.rs), reused call after call: a slot is written and
/// cleared in place, so the hot path costs two lookups, not an LRU update
/// (allocation and locks) and a delete. LRU only evicts the slots of
/// threads long gone.
#[map]
pub static STASH: LruHashMap<StashKey, Slot<Words>> = LruHashMap::with_max_entries(16384, 0);

/// This CPU's counters, looked up once per program run.
#[derive(Clone, Copy)]
pub struct Tally(*mut CounterBlock);

impl Tally {
    #[inline(always)]
    pub fn get() -> Tally {
        Tally(COUNTERS.get_ptr_mut(0).unwrap_or_default())
    }

    #[inline(always)]
    pub fn add(self, idx: u32, n: u64) {
        if self.0.is_null() {
            return;
        }
        // SAFETY: this CPU's block; BPF programs do not nest on one CPU, so
        // no atomics are needed.
        if let Some(slot) = unsafe { (*self.0).get_mut(idx as usize) } {
            *slot += n;
        }
    }
}

/// One counter, for paths that move only one (rare ones: drops, misses).
#[inline(always)]
pub fn add(idx: u32, n: u64) {
    Tally::get().add(idx, n);
}

/// Counts a run of `probe`; the tally serves the program's other counters.
#[inline(always)]
pub fn hit(probe: ProbeId) -> Tally {
    let t = Tally::get();
    t.add(counter::HITS + probe as u32, 1);
    t
}

#[inline(always)]
fn key(probe: ProbeId) -> StashKey {
    StashKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        probe: probe as u64,
    }
}

/// This thread's slot for `probe`, live or not.
#[inline(always)]
fn slot(probe: ProbeId) -> Option<&'static mut Slot<Words>> {
    let p = STASH.get_ptr_mut(key(probe))?;
    // SAFETY: only this thread uses this key, and a thread runs one program
    // at a time.
    Some(unsafe { &mut *p })
}

/// Parks a call's arguments (any plain struct of at most six words) until
/// its return: in the thread's type1 state `t` (the caller's lookup) while
/// it holds a slot (inside a MAP/UNMAP ioctl, where type1's GUP pins and
/// charges run), else in `STASH`.
#[inline(always)]
pub fn stash<A: Payload>(t: Option<&mut Thread>, probe: ProbeId, args: &A) {
    let args = args.words();
    if let Some(t) = t
        && t.holds_slot()
    {
        t.call.park(&CallSlot {
            probe: probe as u64,
            args,
        });
        return;
    }
    match slot(probe) {
        Some(p) => p.park(&args),
        None => {
            let _ = STASH.insert(key(probe), Slot { args, live: 1 }, 0);
        }
    }
}

/// Takes the parked entry arguments, from `t` as `stash` put them; counts
/// a return with none.
#[inline(always)]
pub fn unstash<A: Payload>(t: Option<&mut Thread>, probe: ProbeId) -> Option<A> {
    // A call parked in the thread's slot: no hash lookup on either side.
    if let Some(t) = t
        && t.holds_slot()
        && t.call.live != 0
        && t.call.args.probe == probe as u64
    {
        t.call.live = 0;
        return Some(A::from_words(&t.call.args.args));
    }
    match slot(probe) {
        Some(p) => p.take().map(|w| A::from_words(&w)),
        None => {
            add(counter::UNMATCHED_RETURNS, 1);
            None
        }
    }
}

/// flag::CARRIES_PIN is this bit alone.
pub const CARRIES_PIN_SHIFT: u16 = flag::CARRIES_PIN.trailing_zeros() as u16;
const _: () = assert!(flag::CARRIES_PIN == 1 << CARRIES_PIN_SHIFT);

/// `ZeroIds::refcount_raw` when the read failed or was not made.
pub const NO_REFCOUNT: i64 = i64::MIN;

/// The record's flags and refcount field for a reading or `NO_REFCOUNT`
/// (a plain integer, never an `Option`: LLVM may leave a `None`'s payload
/// register unwritten, and the verifier refuses to read it).
#[inline(always)]
pub fn with_refcount(flags: u16, refcount: i64) -> (u16, i32) {
    if refcount != NO_REFCOUNT {
        (flags | flag::REFCOUNT, refcount as i32)
    } else {
        (flags, 0)
    }
}

/// Where the zero pages live in this kernel's memory map.
#[derive(Clone, Copy)]
pub struct ZeroIds {
    vmemmap: u64,
    page_size: u64,
    refcount_offset: u64,
    pub zero_pfn: u64,
    /// Where `huge_zero_pfn` lives (0: unknown), read when needed.
    huge_addr: u64,
}

/// Page class bits (`flag::PFN_ZERO` / `flag::PFN_HUGE_ZERO`), 0 for any other page.
impl ZeroIds {
    #[inline(always)]
    pub fn load() -> Option<ZeroIds> {
        let cfg = CONFIG.get_ptr_mut(0)?;
        // SAFETY: the one config entry; see below for the one write.
        let cfg = unsafe { &mut *cfg };
        if cfg.valid != 1 {
            return None;
        }
        let vmemmap = if cfg.vmemmap_base_addr != 0 {
            let v = unsafe { bpf_probe_read_kernel(cfg.vmemmap_base_addr as *const u64) }.ok()?;
            // vmemmap_base is fixed at boot: the first run caches it for all
            // (value before address, and every CPU stores the same value).
            cfg.vmemmap_const = v;
            cfg.vmemmap_base_addr = 0;
            v
        } else {
            cfg.vmemmap_const
        };
        Some(ZeroIds {
            vmemmap,
            page_size: cfg.page_size,
            refcount_offset: cfg.refcount_offset,
            zero_pfn: cfg.zero_pfn,
            huge_addr: cfg.huge_zero_pfn_addr,
        })
    }

    /// `load`, as a plain value for programs that keep it across helper
    /// calls (an `Option`'s unwritten payload is refused by 5.10's
    /// verifier): unknown ids come with `flag::NO_ZERO_PAGE_ID`, and then
    /// no page is of the zero page's class, so they are never used.
    #[inline(always)]
    pub fn load_flagged() -> (ZeroIds, u16) {
        match ZeroIds::load() {
            Some(z) => (z, 0),
            None => (
                ZeroIds {
                    vmemmap: 0,
                    page_size: 0,
                    refcount_offset: 0,
                    zero_pfn: 0,
                    huge_addr: 0,
                },
                flag::NO_ZERO_PAGE_ID,
            ),
        }
    }

    /// The huge zero page's pfn (`!0`: none), read now: it comes and goes.
    #[inline(always)]
    pub fn huge_pfn(&self) -> u64 {
        if self.huge_addr == 0 {
            return !0;
        }
        unsafe { bpf_probe_read_kernel(self.huge_addr as *const u64) }.unwrap_or(!0)
    }

    /// The zero page's `struct page` address.
    #[inline(always)]
    pub fn zero_page(&self) -> u64 {
        self.vmemmap + self.zero_pfn * self.page_size
    }

    /// The huge zero page's `struct page` range (empty when there is none).
    #[inline(always)]
    pub fn huge_pages(&self) -> (u64, u64) {
        let pfn = self.huge_pfn();
        if pfn == !0 {
            return (0, 0);
        }
        let start = self.vmemmap + pfn * self.page_size;
        (start, start + HUGE_ZERO_PAGES * self.page_size)
    }

    /// The class of a run of `n` contiguous pfns from `pfn` (that of its
    /// first page), and how many of them are the huge zero page's: type1
    /// pins and unpins such runs, and the huge zero page is 512 of them.
    /// One read of its pfn serves both; only a run that does not start at
    /// the 4 KiB zero page costs that read.
    #[inline(always)]
    pub fn class_of_run(&self, pfn: u64, n: u64) -> (u16, u64) {
        self.class_of_run_with(pfn, n, || self.huge_pfn())
    }

    /// `class_of_run` with the huge zero page's pfn from `huge`, called
    /// only for a run that does not start at the 4 KiB zero page.
    #[inline(always)]
    pub fn class_of_run_with(&self, pfn: u64, n: u64, huge: impl FnOnce() -> u64) -> (u16, u64) {
        if pfn == self.zero_pfn {
            return (flag::PFN_ZERO, 0);
        }
        let huge = huge();
        if huge == !0 {
            return (0, 0);
        }
        let end = huge + HUGE_ZERO_PAGES;
        let from = if pfn > huge { pfn } else { huge };
        let to = if pfn + n < end { pfn + n } else { end };
        let count = to.saturating_sub(from);
        let class = if pfn >= huge && pfn < end {
            flag::PFN_HUGE_ZERO
        } else {
            0
        };
        (class, count)
    }

    #[inline(always)]
    pub fn class_of_page(&self, page: u64) -> u16 {
        if page == self.zero_page() {
            return flag::PFN_ZERO;
        }
        let (start, end) = self.huge_pages();
        if page >= start && page < end {
            flag::PFN_HUGE_ZERO
        } else {
            0
        }
    }

    /// For a record about the zero page (`zero`), its `_refcount` read
    /// now; `NO_REFCOUNT` for any other.
    #[inline(always)]
    pub fn refcount_if(&self, zero: bool) -> i64 {
        if zero {
            self.refcount_raw()
        } else {
            NO_REFCOUNT
        }
    }

    /// The zero page's `_refcount` read now, or `NO_REFCOUNT`.
    #[inline(always)]
    pub fn refcount_raw(&self) -> i64 {
        self.refcount().map_or(NO_REFCOUNT, |r| r as i64)
    }

    /// The zero page's `_refcount`, read now.
    #[inline(always)]
    pub fn refcount(&self) -> Option<i32> {
        let at = self.vmemmap + self.zero_pfn * self.page_size + self.refcount_offset;
        unsafe { bpf_probe_read_kernel(at as *const i32) }.ok()
    }
}

/// The current task's soft RLIMIT_MEMLOCK (bytes) and `flag::LIMITS`, plus
/// `flag::CAP_IPC_LOCK` when it holds that capability; (0, 0) when the
/// layout is unknown or a read fails.
#[inline(always)]
pub fn current_limits() -> (u64, u16) {
    let Some(cfg) = CONFIG.get(0) else {
        return (0, 0);
    };
    if cfg.task_signal == 0 {
        return (0, 0);
    }
    let task = unsafe { bpf_get_current_task() };
    let read = |at: u64| unsafe { bpf_probe_read_kernel(at as *const u64) }.ok();
    let Some(signal) = read(task + cfg.task_signal) else {
        return (0, 0);
    };
    // struct rlimit { rlim_cur, rlim_max }: 16 bytes each.
    let Some(limit) = read(signal + cfg.signal_rlim + RLIMIT_MEMLOCK * 16) else {
        return (0, 0);
    };
    let mut flags = flag::LIMITS;
    if cfg.task_cred != 0
        && let Some(cred) = read(task + cfg.task_cred)
        && let Some(caps) = read(cred + cfg.cred_cap_effective)
        && caps & (1 << CAP_IPC_LOCK) != 0
    {
        flags |= flag::CAP_IPC_LOCK;
    }
    (limit, flags)
}

/// A record before it is written: its kind, flags and payload, and the
/// optional parts, each set by name.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Record {
    pub payload: Words,
    container: u64,
    limit: u64,
    /// The zero page's `_refcount` or `NO_REFCOUNT` (see `with_refcount`).
    refcount: i64,
    pub probe: u16,
    pub flags: u16,
    /// 1 when `container` was named: the thread's ioctl does not apply.
    keyed: u16,
    _pad: u16,
    /// Calls folded into this record that ran before it (`Event::carried`).
    pub carried: u64,
}

impl Record {
    #[inline(always)]
    pub fn new<P: Payload>(probe: ProbeId, flags: u16, payload: &P) -> Record {
        Record {
            payload: payload.words(),
            container: 0,
            limit: 0,
            refcount: NO_REFCOUNT,
            probe: probe as u16,
            flags,
            keyed: 0,
            _pad: 0,
            carried: 0,
        }
    }

    /// Carries `n` folded calls that ran before this record (`Event::carried`).
    #[inline(always)]
    pub fn carried(mut self, n: u64) -> Record {
        self.carried = n;
        self
    }

    /// The zero page's `_refcount` read for this record, or `NO_REFCOUNT`.
    #[inline(always)]
    pub fn refcount(mut self, refcount: i64) -> Record {
        self.refcount = refcount;
        self
    }

    /// The container the record is about, named by the probe (open,
    /// release, remove, the ioctl's return) rather than taken from the
    /// ioctl the thread is inside.
    #[inline(always)]
    pub fn container(mut self, container: u64) -> Record {
        self.container = container;
        self.keyed = 1;
        self
    }

    /// The caller's memlock limit (with `flag::LIMITS` in the flags).
    #[inline(always)]
    pub fn limit(mut self, limit: u64) -> Record {
        self.limit = limit;
        self
    }

    /// Carries a held-back GUP pin (`Thread::take_deferred`): `flag` is
    /// flag::CARRIES_PIN or 0 (nothing), `at` its `limit` word. Branch-free,
    /// as every record of a thread passes here: a branch would have the
    /// verifier walk the rest of the program once per outcome.
    #[inline(always)]
    pub fn carry_pin(mut self, flag: u16, at: u64) -> Record {
        let mask = u64::from(flag >> CARRIES_PIN_SHIFT).wrapping_neg();
        self.flags |= flag;
        self.limit = (self.limit & !mask) | (at & mask);
        self
    }

    /// The container of the thread's ioctl, unless one was named.
    #[inline(always)]
    pub fn in_container(self, container: u64) -> Record {
        if self.keyed != 0 {
            self
        } else {
            self.container(container)
        }
    }
}

/// Writes one record: the only way a record reaches the ring buffer. A
/// full ring buffer is counted per probe, never silent.
#[inline(always)]
pub fn write(r: &Record) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        add(counter::DROPS + r.probe as u32, 1);
        return;
    };
    let (flags, zero_refcount) = with_refcount(r.flags, r.refcount);
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        container: r.container,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        probe: r.probe,
        flags,
        zero_refcount,
        payload: r.payload,
        limit: r.limit,
        carried: r.carried,
    });
    entry.submit(wake_flags());
}

/// Wakes the agent only for the record that brings the unread bytes up to
/// the configured mark (records are all one size, so exactly one lands in
/// the window while the agent sleeps); any other record is written without
/// a wake-up and waits for the agent's tick or that record.
#[inline(always)]
fn wake_flags() -> u64 {
    const RECORD: u64 = (core::mem::size_of::<Event>() as u64 + 8 + 7) & !7;
    let wake = match CONFIG.get(0) {
        Some(c) if c.wake_bytes != 0 => c.wake_bytes,
        _ => return 0,
    };
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if avail >= wake && avail < wake + RECORD {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
