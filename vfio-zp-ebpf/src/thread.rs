//! A thread's type1 state in one map value: the MAP/UNMAP ioctl it is
//! inside, its open pin and unpin calls, and the run of like calls it holds
//! back. A type1 return program finds its call's arguments, the container
//! and the held run with one lookup, where separate slots took two.
//!
//! Inside a MAP/UNMAP ioctl, where nearly every pin and unpin runs, the
//! state lives in `SLOTS`, indexed by thread id: an array lookup the
//! verifier inlines, where a hash lookup was most of a hot program's cost.
//! Elsewhere, or when another thread holds the slot, it lives in `THREADS`.
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use vfio_zp_common::{ProbeId, counter, flag};

use crate::shared::{NO_REFCOUNT, Slot, Tally, ZeroIds, add, with_refcount, write};

/// The record a run will become: `probe` is the ProbeId + 1 (0: no run),
/// `flags` and `refcount` as in `Event` (the first call's reading).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Run {
    pub probe: u64,
    pub flags: u64,
    pub refcount: u64,
    pub args: [u64; 6],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Thread {
    /// MAP/UNMAP only: container, cmd, then the request (see type1_ioctl).
    pub ioctl: Slot,
    /// vfio_pin_pages_remote's arguments; `args[5]` counts the zero-page
    /// GUP unpins folded inside the call (see `NO_FOLD`).
    pub pin: Slot,
    /// vfio_unpin_pages_remote's arguments.
    pub unpin: Slot,
    pub run: Run,
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
    if t.owner == 0 || t.pin.live != 0 || t.unpin.live != 0 || t.run.probe != 0 {
        return;
    }
    let idx = slot_index(t.owner);
    t.owner = 0;
    let _ = LENT.remove(idx);
}

/// Zero-page `unpin_user_page` calls inside one `vfio_pin_pages_remote` call
/// (the 873aefb loop: 512 per GUP batch on 6.1) are counted in the call's
/// `pin.args[5]` and written as one GupUnpinPage record: a record costs
/// several times an entry program. This bit stops folding for the rest of
/// the call once a batch unpin ran inside it, whose nested
/// `unpin_user_page` the model matches against the batch record.
pub const NO_FOLD: u64 = 1 << 63;

const PAGE_SIZE: u64 = 4096;
const _: () = assert!(ProbeId::Type1Pin as u16 == 0 && ProbeId::Type1Unpin as u16 == 1);

impl Thread {
    /// The container of the ioctl this thread is inside (0: none).
    #[inline(always)]
    fn container(&self) -> u64 {
        if self.ioctl.live != 0 {
            self.ioctl.args[0]
        } else {
            0
        }
    }

    /// Parks a `vfio_pin_pages_remote` call's arguments. A call still open
    /// is one whose return was missed: its held-back unpins are written
    /// first, and it is counted here, as its return never will.
    #[inline(always)]
    pub fn park_pin<C: EbpfContext>(&mut self, ctx: &C, args: &[u64; 6]) {
        if self.flush_folded(ctx) {
            add(counter::HITS + ProbeId::Type1Pin as u32, 1);
        }
        self.pin.park(args);
    }

    /// Parks a `vfio_unpin_pages_remote` call's arguments; a call still
    /// open (its return missed) is counted here.
    #[inline(always)]
    pub fn park_unpin(&mut self, args: &[u64; 6]) {
        if self.unpin.live != 0 {
            add(counter::HITS + ProbeId::Type1Unpin as u32, 1);
        }
        self.unpin.park(args);
    }

    /// Takes the parked call of `probe` (Type1Pin or Type1Unpin); counts a
    /// return with none.
    #[inline(always)]
    pub fn take(&mut self, probe: ProbeId) -> Option<[u64; 6]> {
        let slot = if probe == ProbeId::Type1Pin {
            &mut self.pin
        } else {
            &mut self.unpin
        };
        slot.take()
    }

    /// Writes the unpins this thread's open pin call holds back, so they
    /// precede whatever it writes next: a refcount reading must follow
    /// every unpin that ran first. Returns whether a pin call is open (a
    /// closed one's count was written by its return).
    #[inline(always)]
    pub fn flush_folded<C: EbpfContext>(&mut self, ctx: &C) -> bool {
        if self.pin.live == 0 {
            return false;
        }
        let n = self.pin.args[5] & !NO_FOLD;
        if n != 0 {
            self.pin.args[5] &= NO_FOLD;
            self.emit_folded(ctx, n);
        }
        true
    }

    /// One GupUnpinPage record for `n` zero-page unpins (no refcount: it
    /// moved during them), and their counters: gup_unpin_page leaves both
    /// to this one counter lookup (every path that ends a pin call, or
    /// finds it still open, comes here).
    #[inline(always)]
    pub fn emit_folded<C: EbpfContext>(&mut self, ctx: &C, n: u64) {
        let tally = Tally::get();
        tally.add(counter::HITS + ProbeId::GupUnpinPage as u32, n);
        tally.add(counter::GUP_ZERO_UNPINNED, n);
        self.emit(
            ctx,
            ProbeId::GupUnpinPage,
            flag::PFN_ZERO | flag::FOLDED,
            NO_REFCOUNT,
            [n, n, 0, 0, 0, 0],
        );
    }

    /// Inside a MAP/UNMAP ioctl, type1 pins and unpins a read-only mapping
    /// of zero pages one call per page (each is its own pfn run). Such calls
    /// (`probe` Type1Pin or Type1Unpin, of the zero page) join the held run
    /// when they continue it: same dma, the next address (`args[1]`), and
    /// the same `same` fields; `args[3]` (and `sum`) add up. Anything else
    /// writes the held run and holds this call as a new one, with the zero
    /// page's refcount read now: one reading serves the run, as whatever
    /// this thread does that moves the refcount writes a record first,
    /// which ends the run. Returns false when the call must be written now
    /// (no ioctl on this thread).
    #[inline(always)]
    pub fn fold_run(
        &mut self,
        probe: ProbeId,
        z: &ZeroIds,
        args: &[u64; 6],
        same: [usize; 2],
        sum: Option<usize>,
    ) -> bool {
        if self.ioctl.live == 0 {
            return false;
        }
        let r = &mut self.run;
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
            return true;
        }
        self.flush_run();
        self.run.probe = id;
        self.run.args = *args;
        // Plain integers: an Option spilled across the lookups above leaves
        // its payload's stack slot unwritten when None, which 5.10's
        // verifier refuses to read.
        let rc = z.refcount_raw();
        let has = (rc != NO_REFCOUNT) as u64;
        self.run.flags = flag::PFN_ZERO as u64 | (has * flag::REFCOUNT as u64);
        self.run.refcount = has * (rc as i32 as u32 as u64);
        true
    }

    /// Writes the held run, if any. Straight from the slot, with no branch
    /// on its contents: every record a program writes is verified after
    /// each path before it.
    #[inline(always)]
    pub fn flush_run(&mut self) {
        let r = &mut self.run;
        if r.probe == 0 {
            return;
        }
        // Type1Pin (0) or Type1Unpin (1); the mask gives the verifier the
        // bound of the drop counter's index.
        let probe = ((r.probe - 1) & 1) as u16;
        r.probe = 0;
        write(
            probe,
            r.flags as u16,
            r.refcount as i32,
            self.ioctl.args[0],
            r.args,
            0,
        );
    }

    /// Writes one event for the container of the ioctl this thread is
    /// inside, after the run the thread holds back, so a thread's records
    /// keep their order.
    #[inline(always)]
    pub fn emit<C: EbpfContext>(
        &mut self,
        _ctx: &C,
        probe: ProbeId,
        flags: u16,
        refcount: i64,
        args: [u64; 6],
    ) {
        self.flush_run();
        let (flags, refcount) = with_refcount(flags, refcount);
        write(probe as u16, flags, refcount, self.container(), args, 0)
    }
}

/// `Thread::emit` for the current thread, or with no container when it
/// never ran type1.
#[inline(always)]
pub fn emit<C: EbpfContext>(ctx: &C, probe: ProbeId, flags: u16, refcount: i64, args: [u64; 6]) {
    emit_on(thread(), ctx, probe, flags, refcount, args)
}

/// `emit` with the thread already looked up.
#[inline(always)]
pub fn emit_on<C: EbpfContext>(
    t: Option<&mut Thread>,
    ctx: &C,
    probe: ProbeId,
    flags: u16,
    refcount: i64,
    args: [u64; 6],
) {
    match t {
        Some(t) => t.emit(ctx, probe, flags, refcount, args),
        None => {
            let (flags, refcount) = with_refcount(flags, refcount);
            write(probe as u16, flags, refcount, 0, args, 0)
        }
    }
}

/// Writes for a given container, with `limit` (see `Event`), after the
/// run thread `t` holds.
#[inline(always)]
pub fn emit_keyed(
    t: Option<&mut Thread>,
    probe: ProbeId,
    flags: u16,
    refcount: i64,
    container: u64,
    args: [u64; 6],
    limit: u64,
) {
    if let Some(t) = t {
        t.flush_run();
    }
    let (flags, refcount) = with_refcount(flags, refcount);
    write(probe as u16, flags, refcount, container, args, limit)
}

/// A return that found no thread state at all (its entry was missed).
#[inline(always)]
pub fn unmatched() {
    add(counter::UNMATCHED_RETURNS, 1);
}
