//! Maps and helpers every probe family uses.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use vfio_zp_common::{
    CAP_IPC_LOCK, Event, HUGE_ZERO_PAGES, ProbeId, RLIMIT_MEMLOCK, ZeroPageConfig, counter, flag,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
pub static CONFIG: Array<ZeroPageConfig> = Array::with_max_entries(1, 0);

/// Entry arguments parked until the matching return probe runs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StashKey {
    pub pid_tgid: u64,
    pub probe: u64,
}

#[map]
pub static STASH: LruHashMap<StashKey, [u64; 6]> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn add(idx: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // Per-CPU slot and BPF programs do not nest on one CPU: no atomics needed.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn hit(probe: ProbeId) {
    add(counter::HITS + probe as u32, 1);
}

#[inline(always)]
fn key(probe: ProbeId) -> StashKey {
    StashKey {
        pid_tgid: bpf_get_current_pid_tgid(),
        probe: probe as u64,
    }
}

#[inline(always)]
pub fn stash(probe: ProbeId, args: &[u64; 6]) {
    let _ = STASH.insert(&key(probe), args, 0);
}

/// Takes the parked entry arguments; counts a return with none.
#[inline(always)]
pub fn unstash(probe: ProbeId) -> Option<[u64; 6]> {
    let k = key(probe);
    let v = unsafe { STASH.get(&k) }.copied();
    if v.is_some() {
        let _ = STASH.remove(&k);
    } else {
        add(counter::UNMATCHED_RETURNS, 1);
    }
    v
}

#[inline(always)]
pub fn forget(probe: ProbeId) {
    let _ = STASH.remove(&key(probe));
}

#[inline(always)]
pub fn peek(probe: ProbeId) -> Option<[u64; 6]> {
    unsafe { STASH.get(&key(probe)) }.copied()
}

/// The container key of the type1 ioctl this thread is inside, or 0.
#[inline(always)]
pub fn current_container() -> u64 {
    peek(ProbeId::Type1Ioctl).map(|a| a[0]).unwrap_or(0)
}

/// Where the zero pages live in this kernel's memory map, read per event
/// because the huge zero page comes and goes.
#[derive(Clone, Copy)]
pub struct ZeroIds {
    vmemmap: u64,
    page_size: u64,
    refcount_offset: u64,
    pub zero_pfn: u64,
    huge_zero_pfn: u64,
}

/// Page class bits (`flag::PFN_ZERO` / `flag::PFN_HUGE_ZERO`), 0 for any other page.
impl ZeroIds {
    #[inline(always)]
    pub fn load() -> Option<ZeroIds> {
        let cfg = CONFIG.get(0)?;
        if cfg.valid != 1 {
            return None;
        }
        let vmemmap = if cfg.vmemmap_base_addr != 0 {
            unsafe { bpf_probe_read_kernel(cfg.vmemmap_base_addr as *const u64) }.ok()?
        } else {
            cfg.vmemmap_const
        };
        let huge_zero_pfn = if cfg.huge_zero_pfn_addr != 0 {
            unsafe { bpf_probe_read_kernel(cfg.huge_zero_pfn_addr as *const u64) }.unwrap_or(!0)
        } else {
            !0
        };
        Some(ZeroIds {
            vmemmap,
            page_size: cfg.page_size,
            refcount_offset: cfg.refcount_offset,
            zero_pfn: cfg.zero_pfn,
            huge_zero_pfn,
        })
    }

    #[inline(always)]
    pub fn class_of_pfn(&self, pfn: u64) -> u16 {
        if pfn == self.zero_pfn {
            flag::PFN_ZERO
        } else if self.huge_zero_pfn != !0
            && pfn >= self.huge_zero_pfn
            && pfn < self.huge_zero_pfn + HUGE_ZERO_PAGES
        {
            flag::PFN_HUGE_ZERO
        } else {
            0
        }
    }

    #[inline(always)]
    pub fn class_of_page(&self, page: u64) -> u16 {
        let zero = self.vmemmap + self.zero_pfn * self.page_size;
        if page == zero {
            return flag::PFN_ZERO;
        }
        if self.huge_zero_pfn != !0 {
            let huge = self.vmemmap + self.huge_zero_pfn * self.page_size;
            if page >= huge && page < huge + HUGE_ZERO_PAGES * self.page_size {
                return flag::PFN_HUGE_ZERO;
            }
        }
        0
    }

    /// The zero page's `_refcount`, read now.
    #[inline(always)]
    pub fn refcount(&self) -> Option<i32> {
        let at = self.vmemmap + self.zero_pfn * self.page_size + self.refcount_offset;
        unsafe { bpf_probe_read_kernel(at as *const i32) }.ok()
    }
}

/// Writes one event; a full ring buffer is counted per probe, never silent.
#[inline(always)]
pub fn emit<C: EbpfContext>(
    ctx: &C,
    probe: ProbeId,
    flags: u16,
    refcount: Option<i32>,
    container: u64,
    args: [u64; 6],
) {
    emit_with_limit(ctx, probe, flags, refcount, container, args, 0)
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

#[inline(always)]
pub fn emit_with_limit<C: EbpfContext>(
    _ctx: &C,
    probe: ProbeId,
    mut flags: u16,
    refcount: Option<i32>,
    container: u64,
    args: [u64; 6],
    limit: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        add(counter::DROPS + probe as u32, 1);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let zero_refcount = match refcount {
        Some(r) => {
            flags |= flag::REFCOUNT;
            r
        }
        None => 0,
    };
    entry.write(Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        container,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        probe: probe as u16,
        flags,
        zero_refcount,
        args,
        limit,
    });
    entry.submit(0);
}
