//! Maps and helpers every probe family uses.
use aya_ebpf::{
    EbpfContext,
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
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
pub static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static CONFIG: Array<ZeroPageConfig> = Array::with_max_entries(1, 0);

/// Entry arguments parked until the matching return probe runs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StashKey {
    pub pid_tgid: u64,
    pub probe: u64,
}

/// A thread's parked arguments; `live` is cleared when the return takes them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Parked {
    pub args: [u64; 6],
    pub live: u64,
    /// In the Type1Ioctl slot only: a run of like type1 calls held back as
    /// the one record it will become (see `fold_run`).
    pub run: Run,
}

/// The record a run will become: `probe` is the ProbeId + 1 (0: no run),
/// `flags` and `refcount` as in `Event` (the last call's reading).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Run {
    pub probe: u64,
    pub flags: u64,
    pub refcount: u64,
    pub args: [u64; 6],
}

const NO_RUN: Run = Run {
    probe: 0,
    flags: 0,
    refcount: 0,
    args: [0; 6],
};

/// One slot per (thread, probe), reused call after call: a slot is written
/// and cleared in place, so the hot path costs two lookups, not an LRU
/// update (allocation and locks) and a delete. LRU only evicts the slots of
/// threads long gone.
#[map]
pub static STASH: LruHashMap<StashKey, Parked> = LruHashMap::with_max_entries(16384, 0);

/// This CPU's counters, looked up once per program run.
#[derive(Clone, Copy)]
pub struct Tally(*mut CounterBlock);

impl Tally {
    #[inline(always)]
    pub fn get() -> Tally {
        Tally(COUNTERS.get_ptr_mut(0).unwrap_or(core::ptr::null_mut()))
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
fn slot(probe: ProbeId) -> Option<&'static mut Parked> {
    let p = STASH.get_ptr_mut(&key(probe))?;
    // SAFETY: only this thread uses this key, and a thread runs one program
    // at a time.
    Some(unsafe { &mut *p })
}

#[inline(always)]
pub fn stash(probe: ProbeId, args: &[u64; 6]) {
    match slot(probe) {
        Some(p) => {
            p.args = *args;
            p.live = 1;
        }
        None => {
            let _ = STASH.insert(
                &key(probe),
                &Parked {
                    args: *args,
                    live: 1,
                    run: NO_RUN,
                },
                0,
            );
        }
    }
}

/// Takes the parked entry arguments; counts a return with none.
#[inline(always)]
pub fn unstash(probe: ProbeId) -> Option<[u64; 6]> {
    if let Some(p) = slot(probe)
        && p.live != 0
    {
        p.live = 0;
        return Some(p.args);
    }
    add(counter::UNMATCHED_RETURNS, 1);
    None
}

#[inline(always)]
pub fn forget(probe: ProbeId) {
    if let Some(p) = slot(probe) {
        p.live = 0;
    }
}

#[inline(always)]
pub fn peek(probe: ProbeId) -> Option<[u64; 6]> {
    let p = slot(probe)?;
    (p.live != 0).then_some(p.args)
}

/// Zero-page `unpin_user_page` calls inside one `vfio_pin_pages_remote` call
/// (the 873aefb loop: 512 per GUP batch on 6.1) are counted in that call's
/// stash slot, `args[5]`, and written as one GupUnpinPage record: a record
/// costs several times an entry program. This bit in the slot stops folding
/// for the rest of the call once a batch unpin ran inside it, whose nested
/// `unpin_user_page` the model matches against the batch record.
pub const NO_FOLD: u64 = 1 << 63;

/// This thread's open `vfio_pin_pages_remote` call, if any.
#[inline(always)]
pub fn open_pin_call() -> Option<&'static mut Parked> {
    slot(ProbeId::Type1Pin).filter(|p| p.live != 0)
}

/// Writes the unpins `call` holds back, so they precede whatever this thread
/// writes next: a refcount reading must follow every unpin that ran first.
#[inline(always)]
pub fn flush_folded<C: EbpfContext>(ctx: &C, call: &mut Parked) {
    let n = call.args[5] & !NO_FOLD;
    if n != 0 {
        call.args[5] &= NO_FOLD;
        emit_folded(ctx, n);
    }
}

/// One GupUnpinPage record for `n` zero-page unpins (no refcount: it moved
/// during them).
#[inline(always)]
pub fn emit_folded<C: EbpfContext>(ctx: &C, n: u64) {
    emit(
        ctx,
        ProbeId::GupUnpinPage,
        flag::PFN_ZERO | flag::FOLDED,
        None,
        [n, n, 0, 0, 0, 0],
    );
}

/// Parks a `vfio_pin_pages_remote` call's arguments; unpins still held back
/// from an earlier call whose return was missed are written first.
#[inline(always)]
pub fn stash_pin_call<C: EbpfContext>(ctx: &C, args: &[u64; 6]) {
    match slot(ProbeId::Type1Pin) {
        Some(p) => {
            if p.live != 0 {
                flush_folded(ctx, p);
            }
            p.args = *args;
            p.live = 1;
        }
        None => stash(ProbeId::Type1Pin, args),
    }
}

/// This thread's Type1Ioctl slot, live or not: the container of the ioctl
/// it is inside, and the run it holds back.
#[inline(always)]
pub fn ioctl_slot() -> Option<&'static mut Parked> {
    slot(ProbeId::Type1Ioctl)
}

const PAGE_SIZE: u64 = 4096;
const _: () = assert!(ProbeId::Type1Pin as u16 == 0 && ProbeId::Type1Unpin as u16 == 1);

/// Inside a MAP/UNMAP ioctl, type1 pins and unpins a read-only mapping of
/// zero pages one call per page (each is its own pfn run). Such calls on one
/// thread (`probe` Type1Pin or Type1Unpin, zero-page class) join the held
/// run when they continue it: same dma, the next address (`args[1]`), and
/// the same `same` fields; `args[3]` (and `sum`) add up. Anything else
/// writes the held run and holds this call as a new one. Returns false when
/// the call must be written now (no ioctl on this thread).
#[inline(always)]
pub fn fold_run(
    probe: ProbeId,
    flags: u16,
    rc: i64,
    args: &[u64; 6],
    same: [usize; 2],
    sum: Option<usize>,
) -> bool {
    let Some(slot) = ioctl_slot() else {
        return false;
    };
    if slot.live == 0 {
        return false;
    }
    let r = &mut slot.run;
    let id = probe as u64 + 1;
    if r.probe == id
        && r.args[0] == args[0]
        && r.args[1] + r.args[3] * PAGE_SIZE == args[1]
        && r.args[same[0]] == args[same[0]]
        && r.args[same[1]] == args[same[1]]
    {
        r.args[3] += args[3];
        if let Some(i) = sum {
            r.args[i] += args[i];
        }
    } else {
        let container = slot.args[0];
        flush_run(&mut slot.run, container);
        slot.run.probe = id;
        slot.run.args = *args;
    }
    // Plain integers: an Option spilled across the lookups above leaves its
    // payload's stack slot unwritten when None, which 5.10's verifier
    // refuses to read.
    let has = (rc != NO_REFCOUNT) as u64;
    slot.run.flags = flags as u64 | has * flag::REFCOUNT as u64;
    slot.run.refcount = has * (rc as i32 as u32 as u64);
    true
}

/// `ZeroIds::refcount_raw` when the read failed or was not made.
pub const NO_REFCOUNT: i64 = i64::MIN;

#[inline(always)]
fn with_refcount(flags: u16, refcount: Option<i32>) -> (u16, i32) {
    match refcount {
        Some(r) => (flags | flag::REFCOUNT, r),
        None => (flags, 0),
    }
}

/// Writes the run `r` holds, if any. Straight from the slot, with no
/// branch on its contents: every record a program writes is verified after
/// each path before it.
#[inline(always)]
fn flush_run(r: &mut Run, container: u64) {
    if r.probe == 0 {
        return;
    }
    // Type1Pin (0) or Type1Unpin (1); the mask gives the verifier the bound
    // of the drop counter's index.
    let probe = ((r.probe - 1) & 1) as u16;
    r.probe = 0;
    write(
        probe,
        r.flags as u16,
        r.refcount as i32,
        container,
        r.args,
        0,
    );
}

/// Writes this thread's held run, so that whatever the thread writes next
/// follows it; returns the container of the ioctl the thread is inside (0:
/// none).
#[inline(always)]
pub fn flush_thread_run() -> u64 {
    let Some(slot) = ioctl_slot() else {
        return 0;
    };
    let container = slot.args[0];
    flush_run(&mut slot.run, container);
    if slot.live != 0 { container } else { 0 }
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

    /// The huge zero page's pfn (`!0`: none), read now: it comes and goes.
    #[inline(always)]
    fn huge_pfn(&self) -> u64 {
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

    /// Only a page that is not the 4 KiB zero page costs the huge read.
    #[inline(always)]
    pub fn class_of_pfn(&self, pfn: u64) -> u16 {
        if pfn == self.zero_pfn {
            return flag::PFN_ZERO;
        }
        let huge = self.huge_pfn();
        if huge != !0 && pfn >= huge && pfn < huge + HUGE_ZERO_PAGES {
            flag::PFN_HUGE_ZERO
        } else {
            0
        }
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

/// Writes one event for the container of the ioctl this thread is inside
/// (0: none), after the run the thread holds back, so a thread's records
/// keep their order.
#[inline(always)]
pub fn emit<C: EbpfContext>(
    _ctx: &C,
    probe: ProbeId,
    flags: u16,
    refcount: Option<i32>,
    args: [u64; 6],
) {
    let container = flush_thread_run();
    let (flags, refcount) = with_refcount(flags, refcount);
    write(probe as u16, flags, refcount, container, args, 0)
}

/// `emit` for a given container, with `limit` (see `Event`).
#[inline(always)]
pub fn emit_keyed<C: EbpfContext>(
    _ctx: &C,
    probe: ProbeId,
    flags: u16,
    refcount: Option<i32>,
    container: u64,
    args: [u64; 6],
    limit: u64,
) {
    flush_thread_run();
    let (flags, refcount) = with_refcount(flags, refcount);
    write(probe as u16, flags, refcount, container, args, limit)
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

/// Writes one event; a full ring buffer is counted per probe, never silent.
#[inline(always)]
fn write(probe: u16, flags: u16, zero_refcount: i32, container: u64, args: [u64; 6], limit: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        add(counter::DROPS + probe as u32, 1);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        container,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        probe,
        flags,
        zero_refcount,
        args,
        limit,
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
