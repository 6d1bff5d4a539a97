//! The VFIO type1 driver's own pin, unpin and accounting paths.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use vfio_zp_common::{ProbeId, counter, flag};

use crate::{
    shared::{NO_REFCOUNT, Tally, ZeroIds, add, hit, stash, unstash},
    thread::{
        NO_FOLD, emit, emit_keyed, emit_on, give_back, thread, thread_for_ioctl, thread_or_new,
        unmatched,
    },
};

#[inline(always)]
fn args<const N: usize>(ctx: &ProbeContext) -> [u64; 6] {
    let mut a = [0u64; 6];
    let mut i = 0;
    while i < N {
        a[i] = ctx.arg::<u64>(i).unwrap_or(0);
        i += 1;
    }
    a
}

/// vfio_pin_pages_remote(dma, vaddr, npage, *pfn_base, limit, batch)
#[kprobe]
pub fn type1_pin(ctx: ProbeContext) -> u32 {
    // Counted at the return (see counter::HITS), but for a thread with no
    // state, whose return cannot match.
    match thread_or_new() {
        Some(t) => t.park_pin(&ctx, &args::<5>(&ctx)),
        None => {
            hit(ProbeId::Type1Pin);
        }
    }
    0
}

#[kretprobe]
pub fn type1_pin_ret(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    let Some(t) = thread() else {
        unmatched();
        return 0;
    };
    let Some(a) = t.take(ProbeId::Type1Pin) else {
        return 0;
    };
    // The call's zero-page unpins, held back (gup.rs), go before its record.
    let folded = a[5] & !NO_FOLD;
    if folded != 0 {
        t.emit_folded(&ctx, folded);
    }
    let pfn_base = if ret > 0 {
        unsafe { bpf_probe_read_kernel(a[3] as *const u64) }.unwrap_or(0)
    } else {
        0
    };
    let (z, unknown) = ZeroIds::load_flagged();
    let flags = if unknown != 0 {
        unknown
    } else if ret > 0 {
        z.class_of_pfn(pfn_base)
    } else {
        0
    };
    let tally = Tally::get();
    tally.add(counter::HITS + ProbeId::Type1Pin as u32, 1);
    if ret > 0 {
        tally.add(counter::TYPE1_PINNED, ret as u64);
        if flags & flag::PFN_ZERO != 0 {
            tally.add(counter::TYPE1_ZERO_PINNED, ret as u64);
        }
    }
    let args = [a[0], a[1], a[2], ret as u64, pfn_base, a[4]];
    // Same dma, next vaddr, the zero pfn, the same limit: one run.
    if ret > 0 && flags == flag::PFN_ZERO && t.fold_run(ProbeId::Type1Pin, &z, &args, [4, 5], None)
    {
        return 0;
    }
    let refcount = z.refcount_if(flags & flag::PFN_ZERO != 0);
    t.emit(&ctx, ProbeId::Type1Pin, flags, refcount, args);
    0
}

/// vfio_unpin_pages_remote(dma, iova, pfn, npage, do_accounting)
#[kprobe]
pub fn type1_unpin(ctx: ProbeContext) -> u32 {
    let mut a = args::<5>(&ctx);
    a[4] &= 0xff; // bool in a full register
    // Counted at the return, as type1_pin.
    match thread_or_new() {
        Some(t) => t.park_unpin(&a),
        None => {
            hit(ProbeId::Type1Unpin);
        }
    }
    0
}

#[kretprobe]
pub fn type1_unpin_ret(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    let Some(t) = thread() else {
        unmatched();
        return 0;
    };
    let Some(a) = t.take(ProbeId::Type1Unpin) else {
        return 0;
    };
    let tally = Tally::get();
    tally.add(counter::HITS + ProbeId::Type1Unpin as u32, 1);
    tally.add(counter::TYPE1_UNPINNED, a[3]);
    let (z, unknown) = ZeroIds::load_flagged();
    let flags = if unknown != 0 {
        unknown
    } else {
        z.class_of_pfn(a[2])
    };
    let args = [a[0], a[1], a[2], a[3], a[4], ret as u64];
    // Same dma, next iova, the zero pfn, the same do_accounting: one run.
    if flags == flag::PFN_ZERO && t.fold_run(ProbeId::Type1Unpin, &z, &args, [2, 4], Some(5)) {
        return 0;
    }
    let refcount = z.refcount_if(flags & flag::PFN_ZERO != 0);
    t.emit(&ctx, ProbeId::Type1Unpin, flags, refcount, args);
    0
}

/// put_pfn(pfn, prot): per page, so only zero-page calls become events.
#[kprobe]
pub fn put_pfn(ctx: ProbeContext) -> u32 {
    hit(ProbeId::PutPfn);
    stash(ProbeId::PutPfn, &args::<2>(&ctx));
    0
}

#[kretprobe]
pub fn put_pfn_ret(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    let Some(a) = unstash(ProbeId::PutPfn) else {
        return 0;
    };
    let Some(z) = ZeroIds::load() else { return 0 };
    let f = z.class_of_pfn(a[0]);
    if f != 0 {
        let mut t = thread();
        if let Some(t) = t.as_deref_mut() {
            t.flush_folded(&ctx);
        }
        let rc = z.refcount_if(f & flag::PFN_ZERO != 0);
        emit_on(
            t,
            &ctx,
            ProbeId::PutPfn,
            f,
            rc,
            [a[0], a[1], ret as i64 as u64, 0, 0, 0],
        );
    }
    0
}

/// vfio_lock_acct(dma, npage, async): the locked_vm deltas type1 charges.
#[kprobe]
pub fn lock_acct(ctx: ProbeContext) -> u32 {
    hit(ProbeId::LockAcct);
    let mut a = args::<3>(&ctx);
    a[2] &= 0xff;
    stash(ProbeId::LockAcct, &a);
    0
}

#[kretprobe]
pub fn lock_acct_ret(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    let Some(a) = unstash(ProbeId::LockAcct) else {
        return 0;
    };
    let delta = a[1] as i64;
    if ret == 0 {
        if delta > 0 {
            add(counter::LOCK_ACCT_CHARGED, delta as u64);
        } else {
            add(counter::LOCK_ACCT_UNCHARGED, delta.unsigned_abs());
        }
    }
    emit(
        &ctx,
        ProbeId::LockAcct,
        0,
        NO_REFCOUNT,
        [a[0], a[1], a[2], ret as i64 as u64, 0, 0],
    );
    0
}

const VFIO_IOMMU_MAP_DMA: u64 = 0x3b71;
const VFIO_IOMMU_UNMAP_DMA: u64 = 0x3b72;

/// struct vfio_iommu_type1_dma_map (uapi): argsz, flags, vaddr, iova, size.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmaMap {
    _argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// struct vfio_iommu_type1_dma_unmap (uapi): argsz, flags, iova, size.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmaUnmap {
    _argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

/// vfio_iommu_type1_ioctl(iommu_data, cmd, arg): marks the thread as inside
/// a container so nested pins know whose they are.
#[kprobe]
pub fn type1_ioctl(ctx: ProbeContext) -> u32 {
    hit(ProbeId::Type1Ioctl);
    let a = args::<3>(&ctx);
    let cmd = a[1] & 0xffff_ffff;
    if cmd != VFIO_IOMMU_MAP_DMA && cmd != VFIO_IOMMU_UNMAP_DMA {
        return 0;
    }
    // Slots: container, cmd, then for MAP the request (size, flags, vaddr,
    // iova) read now; for UNMAP the user pointer, read back at return.
    let mut s = [a[0], cmd, a[2], 0, 0, 0];
    if cmd == VFIO_IOMMU_MAP_DMA
        && let Ok(m) = unsafe { bpf_probe_read_user(a[2] as *const DmaMap) }
    {
        s = [a[0], cmd, m.size, m.flags as u64, m.vaddr, m.iova];
    }
    // A run still held means the last ioctl's return was missed.
    if let Some(t) = thread_for_ioctl() {
        t.flush_run();
        t.ioctl.park(&s);
    }
    0
}

#[kretprobe]
pub fn type1_ioctl_ret(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    // Not take(): ioctls other than MAP/UNMAP were never parked.
    let Some(t) = thread() else { return 0 };
    let Some(s) = t.ioctl.peek() else {
        return 0;
    };
    t.ioctl.live = 0;
    // MAP_DMA: the limit type1 checks the caller against, read while the
    // caller certainly still exists.
    let (limit, ev_flags) = if s[1] == VFIO_IOMMU_MAP_DMA {
        crate::shared::current_limits()
    } else {
        (0, 0)
    };
    let (flags, vaddr, iova, size) = if s[1] == VFIO_IOMMU_MAP_DMA {
        (s[3], s[4], s[5], s[2])
    } else {
        // UNMAP: the kernel writes back how much it unmapped.
        match unsafe { bpf_probe_read_user(s[2] as *const DmaUnmap) } {
            Ok(u) => (u.flags as u64, 0, u.iova, u.size),
            Err(_) => (0, 0, 0, 0),
        }
    };
    emit_keyed(
        Some(&mut *t),
        ProbeId::Type1Ioctl,
        ev_flags,
        NO_REFCOUNT,
        s[0],
        [s[1], ret as u64, flags, vaddr, iova, size],
        limit,
    );
    give_back(t);
    0
}
