//! Generic GUP pins and unpins: where the zero page's refcount really moves.
//! These functions serve the whole kernel, so only calls made inside type1 or
//! touching a zero page become events, and of those inside type1 only the
//! read-only or failed ones; every call is counted.
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::{kprobe, kretprobe, map},
    maps::PerCpuArray,
    programs::{ProbeContext, RetProbeContext},
};
use bytemuck::{Pod, Zeroable};
use vfio_zp_common::{
    FOLL_WRITE, MAX_PAGES_SCANNED, ProbeId, carried_pin, counter, flag,
    payload::{GupPin, GupUnpin, Payload},
};

use crate::{
    shared::{NO_REFCOUNT, Record, Tally, ZeroIds, add, hit, stash, unstash},
    thread::{NO_FOLD, Thread, emit, slot_held, thread},
};

/// A GUP pin call's arguments, parked at its entry.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PinCall {
    start: u64,
    nr_pages: u64,
    gup_flags: u64,
    /// The `struct page *` array the call fills in.
    pages: u64,
    /// 1 when the call runs inside a type1 pin call on this thread.
    in_type1: u64,
}

impl Payload for PinCall {}

const MAX: usize = MAX_PAGES_SCANNED as usize;

/// `scan`'s working memory, in map memory: the page pointers copied out of
/// the kernel's array, and running tallies (the verifier does not track map
/// contents, so the loop's states prune instead of multiplying with every
/// distinct (zero, huge) count).
#[repr(C)]
pub struct Scan {
    tally: [u64; 3],
    pages: [u64; MAX],
}

#[map]
static SCAN: PerCpuArray<Scan> = PerCpuArray::with_max_entries(1, 0);

/// Entries tested at once for "all the zero page".
const CHUNK: usize = 8;

/// `huge` is the huge zero page's first `struct page` and the length of its
/// range in bytes (0: none), so one unsigned compare tests it.
#[inline(always)]
fn count(tally: &mut [u64; 3], page: u64, zero: u64, huge: (u64, u64)) {
    if page == zero {
        tally[0] += 1;
    } else if page.wrapping_sub(huge.0) < huge.1 {
        tally[1] += 1;
    }
}

/// Zero and huge-zero entries among the first `n` of `pages`, and `n`
/// itself read back from map memory: the loop bounds `n` differently at
/// each of its exits, and a record that used those `n`s would be verified
/// once per exit.
#[inline(always)]
fn scan(z: &ZeroIds, pages: u64, n: u64) -> (u64, u64, u16, u64) {
    let flags = if n > MAX as u64 { flag::TRUNCATED } else { 0 };
    let Some(scan) = SCAN.get_ptr_mut(0) else {
        return (0, 0, flags, n);
    };
    // SAFETY: per-CPU slot; BPF programs do not nest on one CPU.
    let scan = unsafe { &mut *scan };
    // Plain bounds, read once: nothing in the loop branches on the config.
    let zero = z.zero_page();
    let (start, end) = z.huge_pages();
    let huge = (start, end - start);
    scan.tally = [0, 0, n];
    let len = if n > MAX as u64 { MAX } else { n as usize };
    // The whole array in one kernel read (a 512-page pin was 512 helper
    // calls, then 64): exactly the `n` entries the call filled in.
    // SAFETY: `len` <= MAX entries of map memory.
    let dst =
        unsafe { core::slice::from_raw_parts_mut(scan.pages.as_mut_ptr().cast::<u8>(), len * 8) };
    if unsafe { bpf_probe_read_kernel_buf(pages as *const u8, dst) }.is_err() {
        return (0, 0, flags, n);
    }
    let tally = &mut scan.tally;
    // Eight entries at a time; eight zero pages (every chunk of a read-only
    // mapping of untouched memory) are counted with one add.
    let whole = len / CHUNK;
    for c in 0..MAX / CHUNK {
        if c >= whole {
            break;
        }
        let chunk = &scan.pages[c * CHUNK..c * CHUNK + CHUNK];
        let other = chunk.iter().fold(0, |acc, p| acc | (p ^ zero));
        if other == 0 {
            tally[0] += CHUNK as u64;
        } else {
            for &page in chunk {
                count(tally, page, zero, huge);
            }
        }
    }
    for k in 0..CHUNK - 1 {
        let i = whole * CHUNK + k;
        if i >= len {
            break;
        }
        if let Some(&page) = scan.pages.get(i) {
            count(tally, page, zero, huge);
        }
    }
    // SAFETY: the slot above; volatile so the compiler does not forward `n`.
    let n = unsafe { core::ptr::read_volatile(&tally[2]) };
    (tally[0], tally[1], flags, n)
}

#[inline(always)]
fn pin_entry(ctx: &ProbeContext, probe: ProbeId, first: usize) {
    hit(probe);
    // The unpins the thread's pin call holds back stay held: the return's
    // record carries them, before its refcount reading (take_folded).
    let mut t = thread();
    let in_type1 = t.as_deref().is_some_and(|t| t.pin.live != 0) as u64;
    // (start, nr_pages, gup_flags, pages) start at argument `first`.
    let arg = |n: usize| ctx.arg::<u64>(first + n).unwrap_or(0);
    let call = PinCall {
        start: arg(0),
        nr_pages: arg(1),
        gup_flags: arg(2) & 0xffff_ffff,
        pages: arg(3),
        in_type1,
    };
    // The kernel's own flags, not the MAP request's (which the caller
    // could change under type1): type1's pin calls need not read their
    // pfns when the mapping's pins write (IoctlCall::write_pins).
    if let Some(t) = t.as_deref_mut()
        && in_type1 != 0
        && t.ioctl.live != 0
    {
        t.ioctl.args.write_pins = (call.gup_flags & FOLL_WRITE as u64 != 0) as u64;
    }
    stash(t, probe, &call);
}

#[inline(always)]
fn pin_return(ctx: &RetProbeContext, probe: ProbeId) {
    let ret: i64 = ctx.ret();
    // Not the thread() the record below needs: a thread state held across
    // the page scan doubles the states the verifier walks through it.
    let Some(call) = unstash::<PinCall>(slot_held(), probe) else {
        return;
    };
    // A write pin never returns a zero page (FOLL_WRITE): nothing to scan
    // for. Inside type1 its record would tell the model nothing either (no
    // zero page, no read-only pin; type1's own record names the container):
    // on 5.10, which pins a read-write mapping one GUP call per page, these
    // records were most of the agent's cost (docs/performance.md).
    let write = call.gup_flags & FOLL_WRITE as u64 != 0;
    if write && ret > 0 {
        return;
    }
    let mut flags = if call.in_type1 != 0 {
        flag::IN_TYPE1
    } else {
        0
    };
    let (mut zero, mut huge, mut pinned, mut ids) = (0, 0, ret as u64, None);
    match ZeroIds::load() {
        Some(z) if ret > 0 && call.pages != 0 => {
            let (zz, hh, f, n) = scan(&z, call.pages, ret as u64);
            (zero, huge, pinned, ids) = (zz, hh, n, Some(z));
            flags |= f;
        }
        Some(_) => {}
        None => flags |= flag::NO_ZERO_PAGE_ID,
    }
    if flags & flag::IN_TYPE1 == 0 && zero == 0 && huge == 0 {
        return;
    }
    // One lookup after the scan serves the look-ahead and the record: each
    // lookup's branches are walked again from every state the scan leaves.
    let mut t = thread();
    if call.in_type1 != 0
        && probe == ProbeId::GupPinRemote
        && zero == 1
        && pinned == 1
        && defer_pin(t.as_deref_mut(), &call)
    {
        return;
    }
    let mut refcount = NO_REFCOUNT;
    if let Some(z) = ids {
        let tally = Tally::get();
        tally.add(counter::GUP_ZERO_PINNED, zero);
        tally.add(counter::GUP_HUGE_ZERO_PINNED, huge);
        refcount = z.refcount_if(zero > 0);
    }
    let pin = GupPin {
        start: call.start,
        nr_pages: call.nr_pages,
        gup_flags: call.gup_flags,
        pinned: pinned as i64,
        zero_pages: zero,
        huge_zero_pages: huge,
    };
    let mut carried = 0;
    if let Some(t) = t.as_deref_mut()
        && t.pin.live != 0
    {
        carried = t.take_folded();
        t.pin.args.gup_zero += zero + huge;
        t.pin.args.zero_seen += zero as i64;
    }
    emit(
        t,
        Record::new(probe, flags, &pin)
            .refcount(refcount)
            .carried(carried),
    );
}

/// Holds back a read-only pin of one zero page inside a type1 pin call
/// whose written zero-page pins outnumber its written unpins
/// (`zero_seen`): on 5.10, which pins one page per GUP call, that is the
/// look-ahead at the next page, dropped again when the run ends, and its
/// record was a third of a read-only mapping's. The call's return carries
/// it (flag::CARRIES_PIN), or whatever else the call writes first
/// (`thread::emit`). Until then the model sets aside
/// other threads' readings, as that call holds unpins it has not seen, so
/// none is compared without the pin.
#[inline(always)]
fn defer_pin(t: Option<&mut Thread>, call: &PinCall) -> bool {
    let Some(t) = t else { return false };
    let p = &mut t.pin;
    if p.live == 0 || p.args.zero_seen <= 0 || p.args.deferred != 0 {
        return false;
    }
    // Its page and gup_flags in one word (flag::CARRIES_PIN); a pin they
    // do not fit is written as ever.
    let Some(at) = carried_pin::encode(call.start, call.gup_flags) else {
        return false;
    };
    p.args.deferred = flag::CARRIES_PIN as u64;
    p.args.deferred_at = at;
    p.args.gup_zero += 1;
    // Counted now, not when carried: the carry stays branch-free.
    add(counter::GUP_ZERO_PINNED, 1);
    true
}

/// pin_user_pages_remote(mm, start, nr_pages, gup_flags, pages, ...)
#[kprobe]
pub fn gup_pin_remote(ctx: ProbeContext) -> u32 {
    pin_entry(&ctx, ProbeId::GupPinRemote, 1);
    0
}

#[kretprobe]
pub fn gup_pin_remote_ret(ctx: RetProbeContext) -> u32 {
    pin_return(&ctx, ProbeId::GupPinRemote);
    0
}

/// pin_user_pages(start, nr_pages, gup_flags, pages, ...)
#[kprobe]
pub fn gup_pin(ctx: ProbeContext) -> u32 {
    pin_entry(&ctx, ProbeId::GupPin, 0);
    0
}

#[kretprobe]
pub fn gup_pin_ret(ctx: RetProbeContext) -> u32 {
    pin_return(&ctx, ProbeId::GupPin);
    0
}

/// Unpins are seen at entry, so the refcount is the one before the unpin.
#[inline(always)]
fn unpin(probe: ProbeId, pages: u64, n: u64, make_dirty: u64) {
    let t = hit(probe);
    let Some(z) = ZeroIds::load() else { return };
    // One page (type1's put_pfn unpins page by page): classified directly,
    // without the scan's tallies.
    let (zero, huge, flags, n) = if n == 1 {
        let page = unsafe { bpf_probe_read_kernel(pages as *const u64) }.unwrap_or(0);
        let class = z.class_of_page(page);
        (
            (class == flag::PFN_ZERO) as u64,
            (class == flag::PFN_HUGE_ZERO) as u64,
            0,
            1,
        )
    } else {
        scan(&z, pages, n)
    };
    if zero == 0 && huge == 0 {
        return;
    }
    t.add(counter::GUP_ZERO_UNPINNED, zero);
    t.add(counter::GUP_HUGE_ZERO_UNPINNED, huge);
    // A batch unpin inside a type1 pin may call unpin_user_page for the
    // same pages: those must stay records of their own (see NO_FOLD). The
    // ones folded before it ride on its record.
    let mut t = thread();
    let mut carried = 0;
    if let Some(t) = t.as_deref_mut()
        && t.pin.live != 0
    {
        carried = t.take_folded();
        t.pin.args.folded |= NO_FOLD;
        t.pin.args.zero_seen -= zero as i64;
    }
    let rc = z.refcount_if(zero > 0);
    let unpin = GupUnpin {
        npages: n,
        zero_pages: zero,
        huge_zero_pages: huge,
        make_dirty,
    };
    emit(
        t,
        Record::new(probe, flags | flag::REFCOUNT_BEFORE, &unpin)
            .refcount(rc)
            .carried(carried),
    );
}

/// unpin_user_page(page): classified by the page pointer itself. Inside a
/// type1 pin call, zero pages are only tallied in the call; the thread's
/// next record carries them and counts them (take_folded), or the call's
/// return writes them as one record, so this hot path makes no counter
/// lookup.
#[kprobe]
pub fn gup_unpin_page(ctx: ProbeContext) -> u32 {
    let page = ctx.arg::<u64>(0).unwrap_or(0);
    let Some(z) = ZeroIds::load() else {
        hit(ProbeId::GupUnpinPage);
        return 0;
    };
    let class = z.class_of_page(page);
    if class == 0 {
        hit(ProbeId::GupUnpinPage);
        return 0;
    }
    let zero = (class == flag::PFN_ZERO) as u64;
    let mut t = thread();
    let mut carried = 0;
    if let Some(t) = t.as_deref_mut()
        && t.pin.live != 0
    {
        if zero != 0 && t.pin.args.folded & NO_FOLD == 0 {
            t.pin.args.folded += 1;
            return 0;
        }
        carried = t.take_folded();
        t.pin.args.zero_seen -= zero as i64;
    }
    let tally = hit(ProbeId::GupUnpinPage);
    if zero != 0 {
        tally.add(counter::GUP_ZERO_UNPINNED, 1);
    } else {
        tally.add(counter::GUP_HUGE_ZERO_UNPINNED, 1);
    }
    let rc = z.refcount_if(zero != 0);
    let unpin = GupUnpin {
        npages: 1,
        zero_pages: zero,
        huge_zero_pages: 1 - zero,
        make_dirty: 0,
    };
    emit(
        t,
        Record::new(ProbeId::GupUnpinPage, class | flag::REFCOUNT_BEFORE, &unpin)
            .refcount(rc)
            .carried(carried),
    );
    0
}

/// unpin_user_pages(pages, npages)
#[kprobe]
pub fn gup_unpin_pages(ctx: ProbeContext) -> u32 {
    let pages = ctx.arg::<u64>(0).unwrap_or(0);
    let n = ctx.arg::<u64>(1).unwrap_or(0);
    unpin(ProbeId::GupUnpinPages, pages, n, 0);
    0
}

/// unpin_user_pages_dirty_lock(pages, npages, make_dirty)
#[kprobe]
pub fn gup_unpin_pages_dirty(ctx: ProbeContext) -> u32 {
    let pages = ctx.arg::<u64>(0).unwrap_or(0);
    let n = ctx.arg::<u64>(1).unwrap_or(0);
    let dirty = ctx.arg::<u64>(2).unwrap_or(0) & 0xff;
    if dirty == 0 {
        // Hands every page to unpin_user_pages() (5.10 to 7.3 alike), whose
        // probe counts and writes them: counted here too, the exact
        // counters took each of process_vm_readv's zero-page unpins twice.
        hit(ProbeId::GupUnpinPagesDirty);
        return 0;
    }
    unpin(ProbeId::GupUnpinPagesDirty, pages, n, dirty);
    0
}
