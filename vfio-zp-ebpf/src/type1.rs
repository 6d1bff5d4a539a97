//! The VFIO type1 driver's own pin, unpin and accounting paths.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use vfio_zp_common::{
    ProbeId, counter, flag,
    payload::{Ioctl, LockAcct, PutPfn, Type1Pin, Type1Unpin},
};

use crate::{
    shared::{Record, Tally, ZeroIds, add, hit, stash, unstash},
    thread::{
        IoctlCall, NO_FOLD, PinCall, count_folded, emit, folded_unpins, give_back, slot_held,
        thread, thread_for_ioctl, thread_or_new, unmatched,
    },
};

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// vfio_pin_pages_remote(dma, vaddr, npage, *pfn_base, limit, batch): the
/// limit is the caller's, which the MAP ioctl's record carries.
#[kprobe]
pub fn type1_pin(ctx: ProbeContext) -> u32 {
    // Counted at the return (see counter::HITS), but for a thread with no
    // state, whose return cannot match.
    match thread_or_new() {
        Some(t) => t.park_pin(&PinCall {
            dma: arg(&ctx, 0),
            vaddr: arg(&ctx, 1),
            npage: arg(&ctx, 2),
            pfn_base_at: arg(&ctx, 3),
            folded: 0,
            charged: 0,
            gup_zero: 0,
            zero_seen: 0,
            deferred: 0,
            deferred_at: 0,
        }),
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
    let Some(call) = t.pin.take() else {
        return 0;
    };
    // The call's zero-page unpins, held back (gup.rs), ran before its
    // return: its record carries them (flag::FOLDED) where no charge rides
    // on it, else they are a record of their own first. So does the GUP
    // pin it held back (gup::defer_pin; flag::CARRIES_PIN, in `limit`),
    // read before them, as it ran before the last of them. take() ended
    // the call, so both are taken from its copy.
    let folded = call.folded & !NO_FOLD;
    let charged = call.charged;
    if folded != 0 {
        count_folded(folded);
    }
    // flag::CARRIES_PIN or 0 (`PinCall::deferred`), already counted.
    let (carries_pin, at) = (call.deferred as u16, call.deferred_at);
    let (carried, carries, limit) = if folded == 0 {
        (charged, carries_pin, at)
    } else if charged == 0 {
        (folded, flag::FOLDED | carries_pin, at)
    } else {
        // Never for the zero page, which type1 does not charge. The pin
        // rides on the unpins' record, before them: unpins written without
        // it could let another thread's reading be compared without it.
        t.emit(folded_unpins(folded).carry_pin(carries_pin, at));
        (charged, 0, 0)
    };
    // A write pin's pages are no zero page: its pfn and the huge zero
    // page's are not read (on 6.12 a VM's RAM is a pin call per few pages).
    let read = ret > 0 && !t.pins_write();
    let pfn_base = if read {
        unsafe { bpf_probe_read_kernel(call.pfn_base_at as *const u64) }.unwrap_or(0)
    } else {
        0
    };
    let (z, unknown) = ZeroIds::load_flagged();
    let (flags, huge_zero_pages) = if unknown != 0 {
        (unknown, 0)
    } else if read {
        z.class_of_run(pfn_base, ret as u64)
    } else {
        (0, 0)
    };
    let pin = Type1Pin {
        dma: call.dma,
        vaddr: call.vaddr,
        npage: call.npage,
        pinned: ret,
        pfn_base,
        huge_zero_pages,
    };
    // A run of the zero page (never charged), or of other pages charged
    // in full, may join the held run; folded, the call is counted when its
    // run is written. A partial charge (pages pinned through the mdev
    // path before) or none (reserved pfns) keeps a record of its own, for
    // the model's divergence and reserved tests, and so does a call whose
    // GUP pinned a zero page (PinCall::gup_zero).
    let whole = (flags == flag::PFN_ZERO && charged == 0)
        || (flags == 0 && charged == ret as u64 && call.gup_zero == 0);
    if ret > 0
        && huge_zero_pages == 0
        && whole
        && t.fold_pin(&z, &pin, flags, carried, carries, limit)
    {
        return 0;
    }
    let tally = Tally::get();
    tally.add(counter::HITS + ProbeId::Type1Pin as u32, 1);
    if ret > 0 {
        tally.add(counter::TYPE1_PINNED, ret as u64);
        if flags & flag::PFN_ZERO != 0 {
            tally.add(counter::TYPE1_ZERO_PINNED, ret as u64);
        }
    }
    let refcount = z.refcount_if(flags & flag::PFN_ZERO != 0);
    t.emit(
        Record::new(ProbeId::Type1Pin, flags | carries, &pin)
            .refcount(refcount)
            .carried(carried)
            .limit(limit),
    );
    0
}

/// vfio_unpin_pages_remote(dma, iova, pfn, npage, do_accounting)
#[kprobe]
pub fn type1_unpin(ctx: ProbeContext) -> u32 {
    let call = Type1Unpin {
        dma: arg(&ctx, 0),
        iova: arg(&ctx, 1),
        pfn: arg(&ctx, 2),
        npage: arg(&ctx, 3),
        do_accounting: (arg(&ctx, 4) & 0xff) as u32, // a bool in a full register
        huge_zero_pages: 0,
        unlocked: 0,
    };
    // Counted at the return, as type1_pin.
    match thread_or_new() {
        Some(t) => t.park_unpin(&call),
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
    let Some(call) = t.unpin.take() else {
        return 0;
    };
    let (z, unknown) = ZeroIds::load_flagged();
    // At the return, as the pin's: the pages are still type1's to the
    // end of the call, and one read of the huge pfn serves both.
    let (flags, huge_zero_pages) = if unknown != 0 {
        (unknown, 0)
    } else {
        z.class_of_run_with(call.pfn, call.npage, || t.huge_pfn_for_unpin(call.dma, &z))
    };
    let unpin = Type1Unpin {
        unlocked: ret,
        huge_zero_pages: huge_zero_pages as u32,
        ..call
    };
    // A run of the zero page, or of other pages all released from
    // locked_vm, with no accounting inside (the UNMAP path accounts once,
    // after its unpins), may join the held run; folded, the call is
    // counted when its run is written.
    let whole = flags == flag::PFN_ZERO
        || (flags == 0
            && huge_zero_pages == 0
            && call.do_accounting == 0
            && ret == call.npage as i64);
    if whole && t.fold_unpin(&z, &unpin, flags) {
        return 0;
    }
    let tally = Tally::get();
    tally.add(counter::HITS + ProbeId::Type1Unpin as u32, 1);
    tally.add(counter::TYPE1_UNPINNED, call.npage);
    let refcount = z.refcount_if(flags & flag::PFN_ZERO != 0);
    t.emit(Record::new(ProbeId::Type1Unpin, flags, &unpin).refcount(refcount));
    0
}

/// put_pfn(pfn, prot): per page, so only zero-page calls become events.
#[kprobe]
pub fn put_pfn(ctx: ProbeContext) -> u32 {
    hit(ProbeId::PutPfn);
    let call = PutPfn {
        pfn: arg(&ctx, 0),
        prot: arg(&ctx, 1),
        released: 0,
    };
    stash(slot_held(), ProbeId::PutPfn, &call);
    0
}

#[kretprobe]
pub fn put_pfn_ret(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    let mut t = slot_held();
    let Some(call) = unstash::<PutPfn>(t.as_deref_mut(), ProbeId::PutPfn) else {
        return 0;
    };
    let Some(z) = ZeroIds::load() else { return 0 };
    // Inside an UNMAP's removal, in type1's unpin of the mapping, the slot
    // holds the huge zero page's pfn; elsewhere it is read.
    let (f, _) = z.class_of_run_with(call.pfn, 1, || match t.as_deref() {
        Some(t) if t.unpin.live != 0 => t.huge_pfn_for_unpin(t.unpin.args.dma, &z),
        _ => z.huge_pfn(),
    });
    if f != 0 {
        // The look-ahead's zero-page unpin (5.10) ran just before: carried.
        if t.is_none() {
            t = thread();
        }
        let carried = t.as_deref_mut().map_or(0, |t| t.take_folded());
        let rc = z.refcount_if(f & flag::PFN_ZERO != 0);
        let put = PutPfn {
            released: ret as i64,
            ..call
        };
        emit(
            t,
            Record::new(ProbeId::PutPfn, f, &put)
                .refcount(rc)
                .carried(carried),
        );
    }
    0
}

/// vfio_lock_acct(dma, npage, async): the locked_vm deltas type1 charges.
#[kprobe]
pub fn lock_acct(ctx: ProbeContext) -> u32 {
    hit(ProbeId::LockAcct);
    let call = LockAcct {
        dma: arg(&ctx, 0),
        npage: arg(&ctx, 1) as i64,
        is_async: arg(&ctx, 2) & 0xff, // a bool in a full register
        ret: 0,
    };
    stash(slot_held(), ProbeId::LockAcct, &call);
    0
}

#[kretprobe]
pub fn lock_acct_ret(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    let mut t = slot_held();
    let Some(call) = unstash::<LockAcct>(t.as_deref_mut(), ProbeId::LockAcct) else {
        return 0;
    };
    let delta = call.npage;
    if ret == 0 {
        if delta > 0 {
            add(counter::LOCK_ACCT_CHARGED, delta as u64);
        } else {
            add(counter::LOCK_ACCT_UNCHARGED, delta.unsigned_abs());
        }
    }
    // A charge to the mapping of this thread's open pin call rides on the
    // call's record (`PinCall::charged`).
    if t.is_none() {
        t = thread();
    }
    if let Some(t) = t.as_deref_mut()
        && ret == 0
        && delta > 0
        && call.is_async == 0
        && t.pin.live != 0
        && t.pin.args.dma == call.dma
    {
        t.pin.args.charged += delta as u64;
        return 0;
    }
    let acct = LockAcct {
        ret: ret as i64,
        ..call
    };
    emit(t, Record::new(ProbeId::LockAcct, 0, &acct));
    0
}

const VFIO_IOMMU_MAP_DMA: u64 = 0x3b71;
pub const VFIO_IOMMU_UNMAP_DMA: u64 = 0x3b72;

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
    let cmd = arg(&ctx, 1) & 0xffff_ffff;
    if cmd != VFIO_IOMMU_MAP_DMA && cmd != VFIO_IOMMU_UNMAP_DMA {
        return 0;
    }
    let mut call = IoctlCall {
        container: arg(&ctx, 0),
        cmd,
        arg: arg(&ctx, 2),
        size: 0,
        flags: 0,
        vaddr: 0,
        iova: 0,
        write_pins: 0,
    };
    // MAP's request is read now; UNMAP's reply at the return.
    if cmd == VFIO_IOMMU_MAP_DMA
        && let Ok(m) = unsafe { bpf_probe_read_user(call.arg as *const DmaMap) }
    {
        call.size = m.size;
        call.flags = m.flags as u64;
        call.vaddr = m.vaddr;
        call.iova = m.iova;
    }
    // A run still held means the last ioctl's return was missed.
    if let Some(t) = thread_for_ioctl() {
        t.flush_run();
        t.ioctl.park(&call);
        t.removal.live = 0;
    }
    0
}

#[kretprobe]
pub fn type1_ioctl_ret(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    // Not take(): ioctls other than MAP/UNMAP were never parked.
    let Some(t) = thread() else { return 0 };
    let Some(call) = t.ioctl.peek() else {
        return 0;
    };
    t.ioctl.live = 0;
    t.removal.live = 0;
    // A pin call still open here is over, its return missed: its held-back
    // unpins go before the ioctl's record, which tells the model that the
    // thread's pin call ended (model `end_calls`).
    t.end_missed_pin();
    // MAP_DMA: the limit type1 checks the caller against, read while the
    // caller certainly still exists.
    let (limit, ev_flags) = if call.cmd == VFIO_IOMMU_MAP_DMA {
        crate::shared::current_limits()
    } else {
        (0, 0)
    };
    let (flags, vaddr, iova, size) = if call.cmd == VFIO_IOMMU_MAP_DMA {
        (call.flags, call.vaddr, call.iova, call.size)
    } else {
        // UNMAP: the kernel writes back how much it unmapped.
        match unsafe { bpf_probe_read_user(call.arg as *const DmaUnmap) } {
            Ok(u) => (u.flags as u64, 0, u.iova, u.size),
            Err(_) => (0, 0, 0, 0),
        }
    };
    let ioctl = Ioctl {
        cmd: call.cmd,
        ret,
        flags,
        vaddr,
        iova,
        size,
    };
    let record = Record::new(ProbeId::Type1Ioctl, ev_flags, &ioctl)
        .container(call.container)
        .limit(limit);
    t.emit(record);
    give_back(t);
    0
}
