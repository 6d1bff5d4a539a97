//! A thread's type1 state in one map value: the MAP/UNMAP ioctl it is
//! inside, its open pin and unpin calls, and the run of like calls it holds
//! back. A type1 return program finds its call's arguments, the container
//! and the held run with one lookup, where separate slots took two.
//!
//! Inside a MAP/UNMAP ioctl, where nearly every pin and unpin runs, the
//! state lives in `SLOTS`, indexed by thread id: an array lookup the
//! verifier inlines, where a hash lookup was most of a hot program's cost.
//! Elsewhere, or when another thread holds the slot, it lives in `THREADS`.
//! Measured against `THREADS` alone, turn by turn in one guest, the entry
//! programs cost 2.2-2.4x more without slots (docs/performance.md).
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use bytemuck::{Pod, Zeroable};
use vfio_zp_common::{
    ProbeId, counter, flag,
    payload::{GupUnpin, LockAcct, Payload, Type1Pin, Type1Unpin},
};

use crate::shared::{CARRIES_PIN_SHIFT, CallSlot, Record, Slot, Tally, ZeroIds, add, write};

/// `vfio_pin_pages_remote`'s arguments, parked at its entry.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct PinCall {
    pub dma: u64,
    pub vaddr: u64,
    pub npage: u64,
    /// Where the call writes the first pfn it pinned.
    pub pfn_base_at: u64,
    /// Zero-page GUP unpins folded inside the call, and `NO_FOLD`.
    pub folded: u64,
    /// Pages vfio_lock_acct charged to this call's mapping inside it,
    /// carried by the call's record (`Record::carried`).
    pub charged: u64,
    /// Zero and huge-zero pages GUP pinned inside the call: such a call's
    /// record is not held back (`fold_pin`), as the model sets aside other
    /// threads' refcount readings while it may hold unwritten unpins.
    pub gup_zero: u64,
    /// 4 KiB zero-page GUP pins less zero-page unpins this call has
    /// written (carried ones included): while above 0 the model sees the
    /// call as holding unpins it has not seen, and compares no other
    /// thread's reading (`Model::racing`), so a pin may be held back.
    pub zero_seen: i64,
    /// flag::CARRIES_PIN while a zero-page GUP pin of the call is held
    /// back unwritten (`gup::defer_pin`, 5.10's look-ahead), else 0, and
    /// its `Event::limit` word.
    pub deferred: u64,
    pub deferred_at: u64,
}

/// A MAP/UNMAP ioctl this thread is inside: the container and the
/// command, then for MAP the request, read at entry, and for UNMAP the
/// user pointer its reply is read back from at return.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct IoctlCall {
    pub container: u64,
    pub cmd: u64,
    pub arg: u64,
    pub size: u64,
    pub flags: u64,
    pub vaddr: u64,
    pub iova: u64,
    /// 1 once a GUP pin inside the ioctl's pin calls asked to write
    /// (FOLL_WRITE, set by `gup::pin_entry`): a MAP maps one mapping, whose
    /// protection every pin of it shares, and a write pin never returns a
    /// zero page, so its pin calls' pfns need not be read.
    pub write_pins: u64,
}

/// A `vfio_remove_dma` inside an UNMAP ioctl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Removal {
    pub dma: u64,
    pub huge_pfn: u64,
}

/// Calls held back to be written as one record: a Type1Pin or Type1Unpin
/// record of one page class whose payload sums the run (`held` 0: none), and the
/// amounts its counters add when it is written (`Counts`): a folded call
/// then makes no counter lookup, which on 6.1 (no inlined per-CPU lookup)
/// was a third of its return program.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Run {
    pub held: u64,
    pub record: Record,
    pub counts: Counts,
}

/// A held run's counter amounts: its calls, its pages, and its zero pages
/// (pins only). The counters they go to follow from the record's probe, so
/// `flush_run` adds to indexes the verifier can bound, where indexes read
/// back from map memory made it walk each add both ways, in every program
/// that writes a record (each ends the held run).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Counts {
    pub calls: u64,
    pub pages: u64,
    pub zero: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Thread {
    pub ioctl: Slot<IoctlCall>,
    pub pin: Slot<PinCall>,
    /// vfio_unpin_pages_remote's arguments (`unlocked` comes at return).
    pub unpin: Slot<Type1Unpin>,
    pub run: Run,
    /// A GUP pin, vfio_lock_acct or put_pfn call inside the ioctl, parked
    /// here while the state is in `SLOTS` (`shared::stash`).
    pub call: Slot<CallSlot>,
    /// The mapping an UNMAP on this thread is removing, and the huge zero
    /// page's pfn read as its `vfio_remove_dma` began: see
    /// `huge_pfn_for_unpin`.
    pub removal: Slot<Removal>,
    /// In `SLOTS`: the pid_tgid of the thread the slot is lent to (0: free).
    pub owner: u64,
}

/// Reused call after call like the stash: only threads that ran type1
/// (QEMU's vCPU and I/O threads, a few per VM) have one.
#[map]
static THREADS: LruHashMap<u64, Thread> = LruHashMap::with_max_entries(8192, 0);

const SLOT_COUNT: u32 = 4096;

/// States of threads inside a MAP/UNMAP ioctl, at thread id modulo
/// `SLOT_COUNT`. A slot is lent at the ioctl's entry and given back at its
/// return; two threads of one index cannot both hold it (`LENT`).
#[map]
static SLOTS: Array<Thread> = Array::with_max_entries(SLOT_COUNT, 0);

/// Slot index -> its holder. Lending is an insert that fails when the key
/// exists: the one atomic test-and-set every kernel has (BPF has no
/// compare-and-swap before 5.12).
#[map]
static LENT: HashMap<u32, u64> = HashMap::with_max_entries(SLOT_COUNT, 0);

/// The all-zero `Thread` a new entry starts from: in map memory, because
/// the value is too large to build on the 512-byte BPF stack.
#[map]
static BLANK: Array<Thread> = Array::with_max_entries(1, 0);

#[inline(always)]
fn slot_index(id: u64) -> u32 {
    (id as u32) & (SLOT_COUNT - 1)
}

/// The slot of thread `id`, held by whichever thread.
#[inline(always)]
fn slot(id: u64) -> Option<&'static mut Thread> {
    let p = SLOTS.get_ptr_mut(slot_index(id))?;
    // SAFETY: only the holder writes a slot's state, and a thread runs
    // one program at a time; others only compare `owner`.
    Some(unsafe { &mut *p })
}

/// This thread's state while it holds a slot (inside a MAP/UNMAP ioctl):
/// one array lookup, which every kernel inlines.
#[inline(always)]
pub fn slot_held() -> Option<&'static mut Thread> {
    let id = bpf_get_current_pid_tgid();
    let s = slot(id)?;
    (s.owner == id && id != 0).then_some(s)
}

/// This thread's state, if it ever ran type1.
#[inline(always)]
pub fn thread() -> Option<&'static mut Thread> {
    let id = bpf_get_current_pid_tgid();
    if let Some(s) = slot(id)
        && s.owner == id
        && id != 0
    {
        return Some(s);
    }
    let p = THREADS.get_ptr_mut(id)?;
    // SAFETY: only this thread uses this key, and a thread runs one program
    // at a time.
    Some(unsafe { &mut *p })
}

/// This thread's state, created on its first type1 call.
#[inline(always)]
pub fn thread_or_new() -> Option<&'static mut Thread> {
    if let Some(t) = thread() {
        return Some(t);
    }
    let blank = BLANK.get(0)?;
    let _ = THREADS.insert(bpf_get_current_pid_tgid(), blank, 0);
    thread()
}

/// This thread's state for a MAP/UNMAP ioctl: moved into its slot when the
/// slot is free, else where it is.
#[inline(always)]
pub fn thread_for_ioctl() -> Option<&'static mut Thread> {
    let id = bpf_get_current_pid_tgid();
    let Some(s) = slot(id) else {
        return thread_or_new();
    };
    if s.owner == id && id != 0 {
        return Some(s);
    }
    if id == 0 || s.owner != 0 || LENT.insert(slot_index(id), id, BPF_NOEXIST as u64).is_err() {
        return thread_or_new();
    }
    // Lent to this thread: its state moves in (or starts blank).
    if let Some(h) = THREADS.get_ptr_mut(id) {
        // SAFETY: this thread's own entry.
        *s = unsafe { *h };
        let _ = THREADS.remove(id);
    } else if let Some(b) = BLANK.get(0) {
        *s = *b;
    }
    s.owner = id;
    Some(s)
}

/// Gives this thread's slot back at its ioctl's return, when nothing in
/// it waits for a later call (a call whose return was missed keeps it
/// until the thread's next ioctl return).
#[inline(always)]
pub fn give_back(t: &mut Thread) {
    if t.owner == 0 || t.pin.live != 0 || t.unpin.live != 0 || t.run.held != 0 {
        return;
    }
    let idx = slot_index(t.owner);
    // A call parked in the slot returned inside the ioctl, or never will.
    t.call.live = 0;
    t.owner = 0;
    let _ = LENT.remove(idx);
}

/// Zero-page `unpin_user_page` calls inside one `vfio_pin_pages_remote` call
/// (the 873aefb loop: 512 per GUP batch on 6.1) are counted in the call's
/// `pin.args.folded` and carried by the thread's next record, or written as
/// one GupUnpinPage record: a record costs several times an entry program.
/// This bit stops folding for the rest of the call once a batch unpin ran
/// inside it, whose nested `unpin_user_page` the model matches against the
/// batch record.
pub const NO_FOLD: u64 = 1 << 63;

const PAGE_SIZE: u64 = 4096;
// A held run's probe is one of these two, which `flush_run` relies on.
const _: () = assert!(ProbeId::Type1Pin as u16 == 0 && ProbeId::Type1Unpin as u16 == 1);
// And so do its counters: a pin's pages, then an unpin's.
const _: () = assert!(counter::TYPE1_UNPINNED == counter::TYPE1_PINNED + 1);

impl Counts {
    /// A folded call: one more call, with its pages.
    #[inline(always)]
    fn add(&mut self, pages: u64, zero: u64) {
        self.calls += 1;
        self.pages += pages;
        self.zero += zero;
    }
}

impl Thread {
    /// Whether this state is the thread's slot in `SLOTS`: `thread()` only
    /// returns a slot its caller holds, and `THREADS` entries have no owner.
    #[inline(always)]
    pub fn holds_slot(&self) -> bool {
        self.owner != 0
    }

    /// The container of the ioctl this thread is inside (0: none).
    #[inline(always)]
    fn container(&self) -> u64 {
        if self.ioctl.live != 0 {
            self.ioctl.args.container
        } else {
            0
        }
    }

    /// Parks a `vfio_pin_pages_remote` call's arguments. A call still open
    /// is one whose return was missed: its held-back unpins are written
    /// first, and it is counted here, as its return never will.
    #[inline(always)]
    pub fn park_pin(&mut self, args: &PinCall) {
        self.end_missed_pin();
        self.pin.park(args);
    }

    /// Whether the pin calls of the ioctl this thread is inside pin to
    /// write (`IoctlCall::write_pins`): none of their pages is a zero page.
    #[inline(always)]
    pub fn pins_write(&self) -> bool {
        self.ioctl.live != 0 && self.ioctl.args.write_pins != 0
    }

    /// The huge zero page's pfn, to class pages of mapping `dma` that this
    /// thread unpins: while an UNMAP on it removes that mapping, the one
    /// read as the removal began, else read now. Type1 unpins a mapping a
    /// few pages a call, and the pages a removal unpins were pinned before
    /// it began: if the huge zero page was among them it was at that pfn
    /// then, and one allocated since holds none of them. Outside an UNMAP
    /// (a container's release, a group's detach) it is read as ever: no
    /// probe marks where those removals end, and a later mapping may reuse
    /// the address.
    #[inline(always)]
    pub fn huge_pfn_for_unpin(&self, dma: u64, z: &ZeroIds) -> u64 {
        if self.ioctl.live != 0 && self.removal.live != 0 && self.removal.args.dma == dma {
            self.removal.args.huge_pfn
        } else {
            z.huge_pfn()
        }
    }

    /// Ends a pin call whose return was missed, if one is open: writes the
    /// unpins it holds back and the charge its record would have carried,
    /// and counts it, as its return never will.
    #[inline(always)]
    pub fn end_missed_pin(&mut self) {
        if self.flush_folded() {
            add(counter::HITS + ProbeId::Type1Pin as u32, 1);
            self.pin.live = 0;
            let charged = self.pin.args.charged;
            if charged != 0 {
                let acct = LockAcct {
                    dma: self.pin.args.dma,
                    npage: charged as i64,
                    is_async: 0,
                    ret: 0,
                };
                self.emit(Record::new(ProbeId::LockAcct, 0, &acct));
            }
        }
    }

    /// Parks a `vfio_unpin_pages_remote` call's arguments; a call still
    /// open (its return missed) is counted here.
    #[inline(always)]
    pub fn park_unpin(&mut self, args: &Type1Unpin) {
        if self.unpin.live != 0 {
            add(counter::HITS + ProbeId::Type1Unpin as u32, 1);
        }
        self.unpin.park(args);
    }

    /// Writes the unpins this thread's open pin call holds back, and the
    /// GUP pin it holds back before them, so they precede whatever it
    /// writes next: a refcount reading must follow every pin and unpin
    /// that ran first. Returns whether a pin call is open (a closed one's
    /// count was written by its return).
    #[inline(always)]
    pub fn flush_folded(&mut self) -> bool {
        if self.pin.live == 0 {
            return false;
        }
        let (pin, at) = self.take_deferred();
        let n = self.take_folded();
        if n != 0 || pin != 0 {
            self.emit(folded_unpins(n).carry_pin(pin, at));
        }
        true
    }

    /// Takes the unpins this thread's open pin call holds back, counted, for
    /// the record about to be written to carry (`Record::carried`):
    /// the agent reads them before that record, as if written just before
    /// it. Every program that writes a refcount reading inside a pin call
    /// passes them on, or writes them with `flush_folded`.
    #[inline(always)]
    pub fn take_folded(&mut self) -> u64 {
        if self.pin.live == 0 {
            return 0;
        }
        let n = self.pin.args.folded & !NO_FOLD;
        if n != 0 {
            self.pin.args.folded &= NO_FOLD;
            self.pin.args.zero_seen -= n as i64;
            count_folded(n);
        }
        n
    }

    /// Takes the zero-page GUP pin this thread's open pin call holds back
    /// (`gup::defer_pin`, which counted it), for the record about to be
    /// written to carry (flag::CARRIES_PIN, `limit`): whatever the call writes next
    /// ran after that pin, and a reading it takes includes it. Its return
    /// carries it otherwise.
    #[inline(always)]
    pub fn take_deferred(&mut self) -> (u16, u64) {
        // Branch-free, as every record of a thread passes here (a branch
        // made 5.10's verifier walk the unpin programs 25% longer). `live`
        // is 0 or 1: a closed call's fields read as 0.
        let live = self.pin.live.wrapping_neg();
        let f = self.pin.args.deferred & live;
        let at = self.pin.args.deferred_at & live;
        // Both cleared: the call's return passes `deferred_at` on as the
        // record's `limit` word.
        self.pin.args.deferred &= !live;
        self.pin.args.deferred_at &= !live;
        self.pin.args.zero_seen += (f >> CARRIES_PIN_SHIFT) as i64;
        (f as u16, at)
    }

    /// Inside a MAP/UNMAP ioctl type1 pins a read-only mapping of zero
    /// pages one call per page (each is its own pfn run), and memory whose
    /// pages are not physically contiguous (a VM's RAM without huge pages;
    /// from 6.2 any read-only mapping, whose pages GUP allocates) one call
    /// per few pages. A pin of the same class (`flags`: the zero page, or
    /// other pages that vfio_lock_acct charged in full, `charged`) that
    /// continues the held run (same dma, the next address; for the zero
    /// page the same pfn) joins it: its pages and charge summed, its
    /// counters (a call, its pages, of the zero page or not) added when the
    /// run is written. A call that carries its folded unpins (`unpins`:
    /// flag::FOLDED, `carried` their count) starts a run: the run's reading
    /// is taken at its first call, after the unpins it carries, and a
    /// charge never joins them. Returns false when the call must be written
    /// and counted now (no ioctl on this thread).
    #[inline(always)]
    pub fn fold_pin(
        &mut self,
        z: &ZeroIds,
        p: &Type1Pin,
        flags: u16,
        carried: u64,
        unpins: u16,
        limit: u64,
    ) -> bool {
        if self.ioctl.live == 0 {
            return false;
        }
        let pages = p.pinned as u64;
        let zero = if flags == flag::PFN_ZERO { pages } else { 0 };
        let held = self.run.record.flags;
        if self.run.held != 0
            && self.run.record.probe == ProbeId::Type1Pin as u16
            && unpins == 0
            && held & !(flag::FOLDED | flag::CARRIES_PIN) == flags
            && (held & flag::FOLDED == 0 || carried == 0)
        {
            let mut run = Type1Pin::from_words(&self.run.record.payload);
            if run.dma == p.dma
                && run.vaddr + run.pinned as u64 * PAGE_SIZE == p.vaddr
                && (zero == 0 || run.pfn_base == p.pfn_base)
            {
                run.pinned += p.pinned;
                self.run.record.payload = run.words();
                self.run.record.carried += carried;
                self.run.counts.add(pages, zero);
                return true;
            }
        }
        self.hold(
            z,
            Record::new(ProbeId::Type1Pin, flags | unpins, p)
                .carried(carried)
                .limit(limit),
        );
        self.run.counts = Counts {
            calls: 1,
            pages,
            zero,
        };
        true
    }

    /// As `fold_pin`, for unpins of an UNMAP of one class: same dma, the
    /// next iova and the same `do_accounting` (for the zero page the same
    /// pfn); pages and `unlocked` summed, the call and its pages counted
    /// when the run is written.
    #[inline(always)]
    pub fn fold_unpin(&mut self, z: &ZeroIds, p: &Type1Unpin, flags: u16) -> bool {
        if self.ioctl.live == 0 {
            return false;
        }
        if self.run.held != 0
            && self.run.record.probe == ProbeId::Type1Unpin as u16
            && self.run.record.flags == flags
        {
            let mut run = Type1Unpin::from_words(&self.run.record.payload);
            if run.dma == p.dma
                && run.iova + run.npage * PAGE_SIZE == p.iova
                && (flags != flag::PFN_ZERO || run.pfn == p.pfn)
                && run.do_accounting == p.do_accounting
            {
                run.npage += p.npage;
                run.unlocked += p.unlocked;
                self.run.record.payload = run.words();
                self.run.counts.add(p.npage, 0);
                return true;
            }
        }
        self.hold(z, Record::new(ProbeId::Type1Unpin, flags, p));
        self.run.counts = Counts {
            calls: 1,
            pages: p.npage,
            zero: 0,
        };
        true
    }

    /// Writes the held run and holds `record` as a new one, with the zero
    /// page's refcount read now for a run of the zero page: one reading
    /// serves the run, as whatever this thread does that moves the
    /// refcount writes a record first, which ends the run.
    #[inline(always)]
    fn hold(&mut self, z: &ZeroIds, record: Record) {
        self.flush_run();
        // A plain integer: an Option spilled across the lookups above
        // leaves its payload's stack slot unwritten when None, which
        // 5.10's verifier refuses to read.
        let refcount = z.refcount_if(record.flags & flag::PFN_ZERO != 0);
        self.run.record = record.refcount(refcount).container(self.container());
        self.run.held = 1;
    }

    /// Writes the held run, if any, and adds its counters. Straight from
    /// the slot, with no branch on its contents: every record a program
    /// writes is verified after each path before it.
    #[inline(always)]
    pub fn flush_run(&mut self) {
        if self.run.held == 0 {
            return;
        }
        self.run.held = 0;
        let mut record = self.run.record;
        // Type1Pin (0) or Type1Unpin (1): the mask bounds, for the verifier,
        // the counter indexes below and the drop counter's in `write`.
        record.probe &= 1;
        let unpin = record.probe as u32;
        let Counts { calls, pages, zero } = self.run.counts;
        let tally = Tally::get();
        tally.add(counter::HITS + unpin, calls);
        tally.add(counter::TYPE1_PINNED + unpin, pages);
        tally.add(counter::TYPE1_ZERO_PINNED, zero);
        write(&record);
    }

    /// Writes one record, after the run the thread holds back, so a
    /// thread's records keep their order; it is about the container of the
    /// ioctl this thread is inside unless the record names one.
    #[inline(always)]
    pub fn emit(&mut self, record: Record) {
        self.flush_run();
        write(&record.in_container(self.container()));
    }
}

/// One GupUnpinPage record for `n` zero-page unpins already counted
/// (`count_folded`; no refcount: it moved during them), where no record
/// carries them: a pin call's end, or a call found still open (with `n` 0
/// when it only carries the call's held-back pin).
#[inline(always)]
pub fn folded_unpins(n: u64) -> Record {
    let calls = GupUnpin {
        npages: n,
        zero_pages: n,
        ..GupUnpin::default()
    };
    Record::new(ProbeId::GupUnpinPage, flag::PFN_ZERO | flag::FOLDED, &calls)
}

/// Counts `n` folded zero-page unpin_user_page calls: gup_unpin_page
/// leaves its counters to this one lookup.
#[inline(always)]
pub fn count_folded(n: u64) {
    let tally = Tally::get();
    tally.add(counter::HITS + ProbeId::GupUnpinPage as u32, n);
    tally.add(counter::GUP_ZERO_UNPINNED, n);
}

/// Writes one record for thread `t` (`Thread::emit`), or as it is when the
/// thread never ran type1.
#[inline(always)]
pub fn emit(t: Option<&mut Thread>, record: Record) {
    match t {
        Some(t) => {
            let (f, at) = t.take_deferred();
            t.emit(record.carry_pin(f, at))
        }
        None => write(&record),
    }
}

/// A return that found no thread state at all (its entry was missed).
#[inline(always)]
pub fn unmatched() {
    add(counter::UNMATCHED_RETURNS, 1);
}
