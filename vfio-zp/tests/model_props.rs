//! Property tests against an independent oracle: a simulator of the kernel
//! that keeps the zero page's `_refcount` as an integer and changes it the
//! way each kernel profile does (docs/kernel-behaviour.md), and writes the
//! events the probes would. Whether a container leaks is judged from that
//! bookkeeping (the references its pins still hold, which no code path of
//! these kernels ever drops: put_pfn() skips the reserved zero page), not
//! from a restatement of the model's rule. GUP pins up to 512 pages per
//! call, two threads' calls interleave, the THP huge zero page appears, an
//! agent may start on a host that already leaked, and records get lost.
use std::collections::BTreeMap;

use proptest::prelude::*;
use vfio_zp::{
    model::{Config, Model, verdict::Leak},
    stream::event::{Event, Id, PageClass, Refcount, UnpinFn, What, When},
    stream::{
        Counters, Header, Line, ProbeState, ProbeStatus, Writer,
        line::{GUP_UNPIN_PROBES, ProbesChanged},
        read,
    },
};

const PIN_BIAS: i64 = 1024;
const FOLL_LONGTERM: u32 = 0x10000;

#[derive(Clone, Copy, Debug)]
struct Profile {
    name: &'static str,
    /// GUP adds 1024 to the zero page's refcount per pin.
    gup_pins: bool,
    /// type1 unpins the zero pages of a batch right after GUP (873aefb).
    type1_unpins: bool,
    /// Read-only long-term pins unshare instead of pinning the zero page.
    unshares: bool,
    /// Pages per GUP call: 1 with 5.10's look-ahead re-pin, else batches.
    batch: usize,
}

/// The combinations real kernels have (docs/kernel-behaviour.md).
const PROFILES: [Profile; 8] = [
    Profile {
        name: "5.10 before 873aefb (and 5.10-leaky)",
        gup_pins: true,
        type1_unpins: false,
        unshares: false,
        batch: 1,
    },
    Profile {
        name: "5.12-5.19 before 873aefb: batched GUP",
        gup_pins: true,
        type1_unpins: false,
        unshares: false,
        batch: 512,
    },
    Profile {
        name: "before 873aefb, 16-page batches (a map spans several GUP calls)",
        gup_pins: true,
        type1_unpins: false,
        unshares: false,
        batch: 16,
    },
    Profile {
        name: "5.10.146+",
        gup_pins: true,
        type1_unpins: true,
        unshares: false,
        batch: 1,
    },
    Profile {
        name: "6.0, 6.1 before the GUP backport",
        gup_pins: true,
        type1_unpins: true,
        unshares: false,
        batch: 512,
    },
    Profile {
        name: "6.1.y with c8070b787519 (GUP takes no reference)",
        gup_pins: false,
        type1_unpins: true,
        unshares: false,
        batch: 512,
    },
    Profile {
        name: "6.2-6.4 (unshare)",
        gup_pins: true,
        type1_unpins: true,
        unshares: true,
        batch: 512,
    },
    Profile {
        name: "6.9+ (6.12, 6.18, 7.3)",
        gup_pins: false,
        type1_unpins: false,
        unshares: true,
        batch: 512,
    },
];

#[derive(Clone, Debug)]
struct MapArgs {
    pages: u16,
    /// Bit i (mod 64) set: page i was never written (zero-backed if read-only).
    zero: u64,
    /// THP memory: the never-written pages are the huge zero page.
    huge: bool,
    read_only: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Open(u8),
    Map(u8, MapArgs),
    /// Two containers map at once, their threads' events interleaved.
    Both(u8, MapArgs, u8, MapArgs, u64),
    /// Unmap the container's oldest mapping.
    Unmap(u8),
    Close(u8),
    /// The next operation loses one of its records (a full ring).
    Lose(u64),
}

fn map_args() -> impl Strategy<Value = MapArgs> {
    (
        1u16..40,
        any::<u64>(),
        prop::bool::weighted(0.15),
        any::<bool>(),
    )
        .prop_map(|(pages, zero, huge, read_only)| MapArgs {
            pages,
            zero,
            huge,
            read_only,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3).prop_map(Op::Open),
        4 => (0u8..3, map_args()).prop_map(|(c, m)| Op::Map(c, m)),
        2 => (0u8..3, map_args(), 0u8..3, map_args(), any::<u64>())
            .prop_map(|(a, m, b, n, seed)| Op::Both(a, m, b, n, seed)),
        2 => (0u8..3).prop_map(Op::Unmap),
        1 => (0u8..3).prop_map(Op::Close),
        1 => any::<u64>().prop_map(Op::Lose),
    ]
}

/// One step of a thread: an event the probes write (or none: the kernel
/// acting before its folded record is written), and what it does to the
/// zero page's refcount.
struct Step {
    what: Option<What>,
    tgid: u32,
    container: Option<Id>,
    /// The probe reads the refcount before or after this step's change.
    read: Option<When>,
    delta: i64,
    /// Events its record carries (`Event::carried`, flag::CARRIES_PIN),
    /// written just before its own, with no reading.
    carried: Vec<What>,
}

/// A mapping: its dma id and each page's class.
type Mapping = (Id, Vec<PageClass>);
/// An open container: its id, owner tgid and mappings, oldest first.
type Open = (Id, u32, Vec<Mapping>);

struct Sim {
    p: Profile,
    /// The generic GUP unpin probes are off (not_needed): their records
    /// are never written. Only where GUP takes no zero-page reference.
    lean: bool,
    /// The probes fold type1's per-page zero-page unpins inside a pin call
    /// into one record without a refcount, written before the thread's
    /// next record (flag::FOLDED).
    fold: bool,
    t: u64,
    refcount: i64,
    next_id: Id,
    open: BTreeMap<u8, Open>,
    /// The truth: references each container's zero-page pins still hold.
    held: BTreeMap<Id, i64>,
    /// Huge zero page pins type1 holds per container.
    huge_held: BTreeMap<Id, i64>,
    lose_next: Option<u64>,
    drops: u64,
    saw_zero: bool,
    lines: Vec<Line>,
}

impl Sim {
    fn new(p: Profile, fold: bool, pre: i64) -> Sim {
        Sim::with(p, fold, pre, false)
    }

    /// `lean`: as an agent does where GUP takes no zero-page reference,
    /// reads zero pages at its start (probes/provoke.rs), then leaves the
    /// unpin probes off on that evidence.
    fn with(p: Profile, fold: bool, pre: i64, lean: bool) -> Sim {
        let mut sim = Sim {
            p,
            lean: false,
            fold,
            t: 0,
            refcount: 1 + PIN_BIAS * pre,
            next_id: 0,
            open: BTreeMap::new(),
            held: BTreeMap::new(),
            huge_held: BTreeMap::new(),
            lose_next: None,
            drops: 0,
            saw_zero: false,
            lines: vec![],
        };
        if lean {
            sim.provoke();
            sim.lean = true;
            let mut probes = header().probes;
            for s in &mut probes {
                if GUP_UNPIN_PROBES.contains(&s.probe.as_str()) {
                    s.state = ProbeState::NotNeeded;
                }
            }
            sim.t += 1000;
            sim.lines.push(Line::Probes(ProbesChanged {
                t_ns: sim.t,
                probes,
            }));
        }
        sim
    }

    /// The agent's own zero-page reads: one page, then two, pinned outside
    /// type1 and unpinned in the call, refcount read around each.
    fn provoke(&mut self) {
        let refs = if self.p.gup_pins { PIN_BIAS } else { 0 };
        for n in [1u64, 2] {
            let pin = What::GupPin {
                remote: true,
                start: 0,
                nr_pages: n,
                gup_flags: 0,
                pinned: n as i64,
                zero_pages: n,
                huge_zero_pages: 0,
                in_type1: false,
                truncated: false,
            };
            let unpin = What::GupUnpin {
                func: UnpinFn::UnpinUserPages,
                npages: n,
                zero_pages: n,
                huge_zero_pages: 0,
                truncated: false,
            };
            let delta = refs * n as i64;
            self.run(vec![
                Step {
                    read: Some(When::After),
                    delta,
                    ..Sim::step(999, None, pin)
                },
                Step {
                    read: Some(When::Before),
                    delta: -delta,
                    ..Sim::step(999, None, unpin)
                },
            ]);
        }
    }

    fn id(&mut self) -> Id {
        self.next_id += 1;
        self.next_id
    }

    fn step(tgid: u32, container: Option<Id>, what: What) -> Step {
        Step {
            what: Some(what),
            tgid,
            container,
            read: None,
            delta: 0,
            carried: Vec::new(),
        }
    }

    /// One event of `s`'s thread and container at the current time.
    fn event(&mut self, s: &Step, zero_refcount: Option<Refcount>, what: What) {
        self.lines.push(Line::Event(Event {
            t_ns: self.t,
            tgid: s.tgid,
            pid: s.tgid,
            comm: "qemu".into(),
            cgroup_id: 1,
            container: s.container,
            zero_refcount,
            what,
        }));
    }

    /// Runs steps: the kernel's changes in order, the records written
    /// unless the ring loses one, then the counters line (with a kcore
    /// reading) the agent writes at its next tick.
    fn run(&mut self, mut steps: Vec<Step>) {
        if self.lean {
            for s in &mut steps {
                if matches!(s.what, Some(What::GupUnpin { .. })) {
                    s.what = None;
                }
                s.carried.retain(|w| !matches!(w, What::GupUnpin { .. }));
            }
        }
        let events = steps.iter().filter(|s| s.what.is_some()).count();
        let lost = self
            .lose_next
            .take()
            .filter(|_| events > 0)
            .map(|seed| (seed % events as u64) as usize);
        let mut n = 0;
        for mut s in steps {
            let before = self.refcount;
            self.refcount += s.delta;
            let Some(what) = s.what.take() else { continue };
            n += 1;
            if lost == Some(n - 1) {
                self.drops += 1;
                continue;
            }
            self.t += 1000;
            for w in std::mem::take(&mut s.carried) {
                self.event(&s, None, w);
            }
            let reading = s.read.map(|when| Refcount {
                value: (if when == When::Before {
                    before
                } else {
                    self.refcount
                }) as i32,
                when,
            });
            self.event(&s, reading, what);
        }
        self.t += 1000;
        self.lines.push(Line::Counters(Counters {
            t_ns: self.t,
            drops: [("gup_pin_remote".to_string(), self.drops)].into(),
            zero_refcount: Some(self.refcount as i32),
            ..Default::default()
        }));
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Open(slot) if !self.open.contains_key(slot) => {
                let id = self.id();
                let tgid = 1000 + id;
                self.open.insert(*slot, (id, tgid, vec![]));
                let s = Sim::step(tgid, Some(id), What::ContainerOpen { ok: true });
                self.run(vec![s]);
            }
            Op::Map(slot, m) if self.open.contains_key(slot) => {
                let steps = self.map(*slot, m);
                self.run(steps);
            }
            Op::Both(a, m, b, n, seed)
                if a != b && self.open.contains_key(a) && self.open.contains_key(b) =>
            {
                let x = self.map(*a, m);
                let y = self.map(*b, n);
                self.run(interleave(x, y, *seed));
            }
            Op::Unmap(slot) if self.open.get(slot).is_some_and(|o| !o.2.is_empty()) => {
                let (c, tgid, _) = self.open[slot].clone();
                let m = self.open.get_mut(slot).unwrap().2.remove(0);
                let mut steps = self.unmap(c, tgid, m, Some(c));
                steps.push(Sim::step(
                    tgid,
                    Some(c),
                    What::UnmapDma {
                        flags: 0,
                        iova: 0,
                        size: 4096,
                        ret: 0,
                    },
                ));
                self.run(steps);
            }
            Op::Close(slot) if self.open.contains_key(slot) => {
                let (c, tgid, maps) = self.open.remove(slot).unwrap();
                let mut steps = vec![Sim::step(tgid, Some(c), What::ContainerRelease)];
                for m in maps {
                    // The release path's unpins carry no container.
                    steps.extend(self.unmap(c, tgid, m, None));
                }
                self.run(steps);
            }
            Op::Lose(seed) => self.lose_next = Some(*seed),
            _ => {}
        }
    }

    /// One GUP call of `classes` (the pages' classes as GUP finds them) and,
    /// where the profile has 873aefb, the unpin of its zero pages.
    fn gup(&mut self, c: Id, tgid: u32, classes: &[PageClass], ro: bool) -> Vec<Step> {
        let zero = classes.iter().filter(|k| **k == PageClass::Zero).count() as i64;
        let huge = classes
            .iter()
            .filter(|k| **k == PageClass::HugeZero)
            .count() as i64;
        if !ro {
            // The probes write no record of a write pin inside type1 (it
            // never finds a zero page: vfio_zp_common::FOLL_WRITE).
            assert!(zero == 0 && huge == 0);
            return Vec::new();
        }
        self.saw_zero |= zero > 0;
        let refs = if self.p.gup_pins { PIN_BIAS * zero } else { 0 };
        *self.huge_held.entry(c).or_default() += huge;
        let mut steps = vec![Step {
            read: Some(When::After),
            delta: refs,
            ..Sim::step(
                tgid,
                Some(c),
                What::GupPin {
                    remote: true,
                    start: 0,
                    nr_pages: classes.len() as u64,
                    gup_flags: FOLL_LONGTERM,
                    pinned: classes.len() as i64,
                    zero_pages: zero as u64,
                    huge_zero_pages: huge as u64,
                    in_type1: true,
                    truncated: false,
                },
            )
        }];
        if zero > 0 && self.p.type1_unpins {
            let unpin = What::GupUnpin {
                func: UnpinFn::UnpinUserPage,
                npages: zero as u64,
                zero_pages: zero as u64,
                huge_zero_pages: 0,
                truncated: false,
            };
            if self.fold {
                // The kernel drops the references now; the folded record
                // is written later, before the thread's next one: another
                // thread's records may come in between.
                steps.push(Step {
                    what: None,
                    tgid,
                    container: Some(c),
                    read: None,
                    delta: -refs,
                    carried: Vec::new(),
                });
                steps.push(Sim::step(tgid, Some(c), unpin));
            } else {
                steps.push(Step {
                    read: Some(When::Before),
                    delta: -refs,
                    ..Sim::step(tgid, Some(c), unpin)
                });
            }
        } else {
            *self.held.entry(c).or_default() += refs;
        }
        steps
    }

    /// vfio_pin_map_dma of one mapping: pin calls until every page is
    /// pinned, each returning one run (a zero page is a run of its own: its
    /// pfn is reserved and never contiguous with the next).
    fn map(&mut self, slot: u8, m: &MapArgs) -> Vec<Step> {
        let (c, tgid, _) = self.open[&slot].clone();
        let dma = self.id();
        let ro = m.read_only;
        let classes: Vec<PageClass> = (0..m.pages as usize)
            .map(
                |i| match (m.zero & (1 << (i % 64)) != 0, ro && !self.p.unshares) {
                    (true, true) if m.huge => PageClass::HugeZero,
                    (true, true) => PageClass::Zero,
                    _ => PageClass::Other,
                },
            )
            .collect();
        let mut steps = Vec::new();
        let mut i = 0;
        let mut batch: std::collections::VecDeque<PageClass> = Default::default();
        while i < classes.len() {
            let mut call = Vec::new();
            let mut carried = Vec::new();
            let run = if self.p.batch == 1 {
                // 5.10: pin the page, then look ahead at the next one, which
                // is dropped through put_pfn (a no-op for the zero page)
                // when not contiguous, and pinned again by the next call.
                call.extend(self.gup(c, tgid, &classes[i..=i], ro));
                if i + 1 < classes.len() {
                    let look = self.gup(c, tgid, &classes[i + 1..=i + 1], ro);
                    if self.fold
                        && ro
                        && classes[i] == PageClass::Zero
                        && classes[i + 1] == PageClass::Zero
                    {
                        // The probes hold the look-ahead's pin back (gup.rs
                        // defer_pin: the call wrote a zero-page pin and none
                        // of its unpins): the call's type1 pin carries it,
                        // then every unpin of the call, folded since.
                        call.extend(look);
                        carried = hold_look_ahead(&mut call);
                    } else {
                        call.extend(look);
                    }
                    if classes[i + 1] == PageClass::HugeZero {
                        // put_pfn releases the look-ahead huge zero page.
                        call.push(self.put_huge(c, tgid, Some(c)));
                    }
                }
                1
            } else {
                let mut run = 0;
                let mut class = None;
                loop {
                    if batch.is_empty() {
                        if i + run >= classes.len() {
                            break;
                        }
                        let end = (i + run + self.p.batch).min(classes.len());
                        let got = classes[i + run..end].to_vec();
                        call.extend(self.gup(c, tgid, &got, ro));
                        batch.extend(got);
                    }
                    let next = batch[0];
                    let contiguous = match class {
                        None => true,
                        Some(k) => k == next && next != PageClass::Zero,
                    };
                    if !contiguous {
                        break;
                    }
                    class = Some(next);
                    batch.pop_front();
                    run += 1;
                    if next == PageClass::Zero {
                        break;
                    }
                }
                run
            };
            let base = classes[i];
            steps.extend(call);
            if base != PageClass::Zero {
                steps.push(Sim::step(
                    tgid,
                    Some(c),
                    What::LockAcct {
                        dma,
                        npage: run as i64,
                        is_async: false,
                        ret: 0,
                    },
                ));
            }
            steps.push(Step {
                read: (base == PageClass::Zero).then_some(When::After),
                carried,
                ..Sim::step(
                    tgid,
                    Some(c),
                    What::Type1Pin {
                        dma,
                        vaddr: 0x1000 * i as u64,
                        npage: (classes.len() - i) as u64,
                        pinned: run as i64,
                        base,
                        huge_zero_pages: if base == PageClass::HugeZero {
                            run as u64
                        } else {
                            0
                        },
                    },
                )
            });
            i += run;
        }
        steps.push(Sim::step(
            tgid,
            Some(c),
            What::MapDma {
                flags: if ro { 1 } else { 3 },
                vaddr: 0,
                iova: 0,
                size: classes.len() as u64 * 4096,
                ret: 0,
                memlock: None,
                cap_ipc_lock: None,
            },
        ));
        self.open.get_mut(&slot).unwrap().2.push((dma, classes));
        steps
    }

    /// put_pfn on a huge zero page: not reserved, so unpinned.
    fn put_huge(&mut self, c: Id, tgid: u32, unpin_c: Option<Id>) -> Step {
        *self.huge_held.entry(c).or_default() -= 1;
        Sim::step(
            tgid,
            unpin_c,
            What::GupUnpin {
                func: UnpinFn::UnpinUserPagesDirtyLock,
                npages: 1,
                zero_pages: 0,
                huge_zero_pages: 1,
                truncated: false,
            },
        )
    }

    fn unmap(
        &mut self,
        c: Id,
        tgid: u32,
        (dma, classes): Mapping,
        unpin_c: Option<Id>,
    ) -> Vec<Step> {
        let mut steps = vec![Sim::step(tgid, Some(c), What::RemoveDma { dma })];
        let mut unlocked = 0;
        for (k, class) in classes.into_iter().enumerate() {
            // put_pfn skips the reserved zero page; anything else is
            // unpinned and uncharged.
            let u = (class != PageClass::Zero) as i64;
            unlocked += u;
            if class == PageClass::HugeZero {
                steps.push(self.put_huge(c, tgid, unpin_c));
            }
            steps.push(Sim::step(
                tgid,
                unpin_c,
                What::Type1Unpin {
                    dma,
                    iova: 0x1000 * k as u64,
                    npage: 1,
                    do_accounting: false,
                    unlocked: u,
                    base: class,
                    huge_zero_pages: (class == PageClass::HugeZero) as u64,
                },
            ));
        }
        if unlocked > 0 {
            steps.push(Sim::step(
                tgid,
                Some(c),
                What::LockAcct {
                    dma,
                    npage: -unlocked,
                    is_async: true,
                    ret: 0,
                },
            ));
        }
        steps
    }
}

/// Two threads' steps merged in an order `seed` picks, each thread's own
/// order kept.
/// A 5.10 pin call's steps as the probes write them when they hold its
/// look-ahead pin back: the second GUP pin and every folded unpin event
/// leave their places (the kernel's changes stay) for the carried events
/// of the call's type1 pin, returned: the pin, then the unpins as one.
fn hold_look_ahead(call: &mut [Step]) -> Vec<What> {
    let mut pins = 0;
    let mut carried = Vec::new();
    let mut unpins = 0;
    for s in call.iter_mut() {
        match &s.what {
            Some(What::GupPin { .. }) => {
                pins += 1;
                if pins == 2 {
                    carried.push(s.what.take().unwrap());
                    s.read = None;
                }
            }
            Some(What::GupUnpin { zero_pages, .. }) => {
                unpins += zero_pages;
                s.what = None;
            }
            _ => {}
        }
    }
    if unpins > 0 {
        carried.push(What::GupUnpin {
            func: UnpinFn::UnpinUserPage,
            npages: unpins,
            zero_pages: unpins,
            huge_zero_pages: 0,
            truncated: false,
        });
    }
    carried
}

fn interleave(a: Vec<Step>, b: Vec<Step>, mut seed: u64) -> Vec<Step> {
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    let mut out = Vec::new();
    while a.peek().is_some() || b.peek().is_some() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let take_a = b.peek().is_none() || (a.peek().is_some() && seed >> 63 == 0);
        out.push(if take_a { a.next() } else { b.next() }.unwrap());
    }
    out
}

fn header() -> Header {
    Header {
        format: "vfio-zp-recording".into(),
        version: 2,
        agent_version: "test".into(),
        // No version prior: the model must infer everything it says.
        kernel_release: "unknown".into(),
        kernel_version: None,
        zero_pfn: 1,
        struct_page_size: 64,
        refcount_offset: 52,
        started_unix_ms: 0,
        started_t_ns: 0,
        probes: [
            "type1_pin",
            "gup_pin_remote",
            "gup_unpin_page",
            "gup_unpin_pages",
            "gup_unpin_pages_dirty",
        ]
        .iter()
        .map(|p| ProbeStatus {
            probe: p.to_string(),
            function: p.to_string(),
            symbol: None,
            state: ProbeState::Attached,
            detail: None,
            loses: String::new(),
        })
        .collect(),
    }
}

/// The model's verdicts against the simulator's truth after an operation;
/// once a record was lost, only what must hold whatever was lost.
fn check(sim: &Sim, lossy: bool, pre: i64, live: &Model) -> Result<(), TestCaseError> {
    let p = sim.p;
    let v = live.verdicts();
    for c in &v.containers {
        let held = sim.held.get(&c.id).copied().unwrap_or(0);
        let ctx = format!(
            "{}: container {} ({:?}: {})",
            p.name, c.id, c.leak, c.leak_reason
        );
        // What an operator reads is never negative.
        prop_assert!(
            c.zero_page_pins_leaked >= 0 && c.zero_page_pins_live >= 0,
            "{ctx}: {c:?}"
        );
        // Never a false leak, never more than the kernel holds.
        prop_assert!(c.leak != Leak::Leaking || held > 0, "{ctx}: nothing held");
        prop_assert!(
            c.zero_page_pins_leaked * PIN_BIAS <= held,
            "{ctx}: held {held}"
        );
        // Never a missed one.
        prop_assert!(
            held == 0 || c.leak != Leak::None,
            "{ctx}: holds {held} references"
        );
        if lossy {
            continue;
        }
        // With every record seen: exactly the kernel's references.
        prop_assert_eq!(c.zero_page_pins_leaked * PIN_BIAS, held, "{}", ctx);
        prop_assert_eq!(c.leak == Leak::Leaking, held > 0, "{}", ctx);
        prop_assert!(c.leak != Leak::Uncertain, "{ctx}");
        prop_assert!(
            c.pinned_pages.zero >= 0 && c.pinned_pages.other >= 0,
            "{ctx}"
        );
        prop_assert_eq!(
            c.huge_zero_page_pins_live,
            sim.huge_held.get(&c.id).copied().unwrap_or(0),
            "{}",
            ctx
        );
        prop_assert_eq!(c.locked_vm_pages_kernel, c.locked_vm_pages_model, "{}", ctx);
    }
    // Every container the kernel says holds references is in the verdicts.
    for (id, held) in &sim.held {
        prop_assert!(
            *held == 0 || v.containers.iter().any(|c| c.id == *id),
            "{}: container {id} holds {held} references and has no verdict",
            p.name
        );
    }
    let read = sim.lines.iter().any(|l| matches!(l, Line::Counters(_)));
    if !lossy && read {
        prop_assert!(v.divergences.is_empty(), "{}: {:?}", p.name, v.divergences);
        prop_assert_eq!(v.host.zero_page_refcount, Some(sim.refcount), "{}", p.name);
        // Pins from before the agent started: held by nobody it saw.
        prop_assert_eq!(v.host.unexplained_pins, Some(pre), "{}", p.name);
        prop_assert_eq!(v.host.overclaim, None, "{}", p.name);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn model_matches_the_simulated_kernel(
        profile in 0usize..PROFILES.len(),
        fold in any::<bool>(),
        pre in prop_oneof![3 => Just(0i64), 1 => 1i64..600],
        lossy in prop::bool::weighted(0.3),
        lean in any::<bool>(),
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let ops: Vec<Op> = ops.into_iter().filter(|o| lossy || !matches!(o, Op::Lose(_))).collect();
        let p = PROFILES[profile];
        // The agent leaves the unpin probes off only where GUP takes no
        // zero-page reference (model/needs.rs), where no earlier pins can
        // hold references either (`pre` counts GUP's 1024s).
        let lean = lean && !p.gup_pins && pre == 0;
        let mut sim = Sim::with(p, fold, pre, lean);
        let mut live = Model::new(&header(), Config::default());
        for l in &sim.lines {
            live.apply(l);
        }
        for op in &ops {
            let from = sim.lines.len();
            sim.apply(op);
            for l in &sim.lines[from..] {
                live.apply(l);
            }
            check(&sim, sim.drops > 0, pre, &live)?;
        }
        let v = live.verdicts();
        // What was observed is what the kernel does, records lost or not
        // (evidence that may be incomplete is set aside).
        for (t, want) in [(0, p.gup_pins), (1, p.type1_unpins)] {
            let b = &v.behaviour[t];
            if b.source == vfio_zp::model::behaviour::Source::Observed {
                prop_assert_eq!(b.value, want, "{}: {:?}", p.name, b);
            }
        }
        if sim.drops == 0 && sim.saw_zero && pre == 0 {
            // With every record and no foreign references, GUP's counting
            // is decided by the readings. (Whether type1 unpins may stay
            // open: in batches, the call that pinned a zero page may
            // return a run of other pages.)
            prop_assert_eq!(v.behaviour[0].value, p.gup_pins, "{}: {:?}", p.name, v.behaviour[0]);
            prop_assert!(!v.behaviour[2].value, "a R/O pin got the zero page: not unsharing");
        }
        // Replay of the recording equals live.
        let mut w = Writer::new(Vec::new());
        w.write(&Line::Header(header())).unwrap();
        for l in &sim.lines {
            w.write(l).unwrap();
        }
        let rec = read(w.into_inner().as_slice(), "sim").unwrap();
        let mut replayed = Model::new(&rec.header, Config::default());
        for l in &rec.lines {
            replayed.apply(l);
        }
        prop_assert_eq!(replayed.verdicts(), v);
    }
}

/// A type1 pin of other pages and the charge before it as one page a call:
/// what type1 does where the pages are not physically contiguous (a VM's
/// RAM without huge pages, or a read-only mapping from 6.2 on).
fn split_runs(lines: &[Line]) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    for l in lines {
        let Line::Event(e) = l else {
            out.push(l.clone());
            continue;
        };
        let What::Type1Pin {
            dma,
            vaddr,
            npage,
            pinned,
            base: PageClass::Other,
            huge_zero_pages: 0,
        } = e.what
        else {
            out.push(l.clone());
            continue;
        };
        // The thread's charge just before it, to the same mapping.
        let last = out
            .iter()
            .rposition(|l| matches!(l, Line::Event(x) if x.pid == e.pid));
        let charged = match last.map(|i| (i, &out[i])) {
            Some((
                i,
                Line::Event(Event {
                    what:
                        What::LockAcct {
                            dma: d,
                            npage,
                            is_async: false,
                            ret: 0,
                        },
                    ..
                }),
            )) if *d == dma && *npage == pinned => {
                out.remove(i);
                true
            }
            _ => false,
        };
        for k in 0..pinned.max(1) {
            let one = |what| Line::Event(Event { what, ..e.clone() });
            if charged {
                out.push(one(What::LockAcct {
                    dma,
                    npage: 1,
                    is_async: false,
                    ret: 0,
                }));
            }
            out.push(one(What::Type1Pin {
                dma,
                vaddr: vaddr + 0x1000 * k as u64,
                npage: npage - k as u64,
                pinned: pinned.min(1),
                base: PageClass::Other,
                huge_zero_pages: 0,
            }));
        }
    }
    out
}

/// What the probes write of `lines` (thread.rs `fold_pin`, `fold_unpin`,
/// type1.rs `lock_acct_ret`), restated from their rules: a thread's
/// consecutive type1 pins of other pages of one mapping, each charged in
/// full just before it, at the next address, whose GUP calls pinned no
/// zero page, become one charge and one pin, written before the thread's
/// next event; likewise its unpins of other pages, all released from
/// locked_vm with no accounting inside, at the next iova.
fn fold_runs(lines: &[Line]) -> Vec<Line> {
    // Per thread: the charge not yet written, and the held run.
    let mut charge: BTreeMap<u32, Event> = BTreeMap::new();
    let mut held: BTreeMap<u32, (i64, Event)> = BTreeMap::new();
    // Per thread: its open pin call's GUP pinned a zero page.
    let mut gup_zero: BTreeMap<u32, bool> = BTreeMap::new();
    let mut out = Vec::new();
    let flush = |out: &mut Vec<Line>, held: &mut BTreeMap<u32, (i64, Event)>, pid: u32| {
        if let Some((charged, run)) = held.remove(&pid) {
            if let What::Type1Pin { dma, .. } = run.what
                && charged > 0
            {
                out.push(Line::Event(Event {
                    what: What::LockAcct {
                        dma,
                        npage: charged,
                        is_async: false,
                        ret: 0,
                    },
                    ..run.clone()
                }));
            }
            out.push(Line::Event(run));
        }
    };
    for l in lines {
        let Line::Event(e) = l else {
            out.push(l.clone());
            continue;
        };
        if let What::LockAcct {
            npage,
            is_async: false,
            ret: 0,
            ..
        } = e.what
            && npage > 0
        {
            charge.insert(e.pid, e.clone());
            continue;
        }
        if let What::GupPin {
            in_type1: true,
            zero_pages,
            huge_zero_pages,
            ..
        } = e.what
        {
            *gup_zero.entry(e.pid).or_default() |= zero_pages + huge_zero_pages > 0;
        }
        let zero_in_call = match e.what {
            What::Type1Pin { .. } => gup_zero.remove(&e.pid).unwrap_or(false),
            _ => false,
        };
        let charged = match (charge.remove(&e.pid), &e.what) {
            (
                Some(Event {
                    what: What::LockAcct { dma: d, npage, .. },
                    ..
                }),
                What::Type1Pin { dma, .. },
            ) if d == *dma => npage,
            (Some(c), _) => {
                flush(&mut out, &mut held, e.pid);
                out.push(Line::Event(c));
                0
            }
            (None, _) => 0,
        };
        let joins = match (held.get(&e.pid).map(|(_, r)| &r.what), &e.what) {
            (
                Some(What::Type1Pin {
                    dma: hd,
                    vaddr: hv,
                    pinned: hp,
                    base: PageClass::Other,
                    ..
                }),
                What::Type1Pin {
                    dma,
                    vaddr,
                    pinned,
                    base: PageClass::Other,
                    huge_zero_pages: 0,
                    ..
                },
            ) => {
                hd == dma
                    && hv + 0x1000 * *hp as u64 == *vaddr
                    && *pinned > 0
                    && charged == *pinned
                    && !zero_in_call
            }
            (
                Some(What::Type1Unpin {
                    dma: hd,
                    iova: hi,
                    npage: hn,
                    base: PageClass::Other,
                    ..
                }),
                What::Type1Unpin {
                    dma,
                    iova,
                    npage,
                    unlocked,
                    do_accounting: false,
                    base: PageClass::Other,
                    huge_zero_pages: 0,
                },
            ) => hd == dma && hi + 0x1000 * hn == *iova && *unlocked == *npage as i64,
            _ => false,
        };
        if joins {
            let (c, run) = held.get_mut(&e.pid).unwrap();
            *c += charged;
            match (&mut run.what, &e.what) {
                (What::Type1Pin { pinned, .. }, What::Type1Pin { pinned: p, .. }) => *pinned += p,
                (
                    What::Type1Unpin {
                        npage, unlocked, ..
                    },
                    What::Type1Unpin {
                        npage: n,
                        unlocked: u,
                        ..
                    },
                ) => {
                    *npage += n;
                    *unlocked += u;
                }
                _ => unreachable!(),
            }
            continue;
        }
        flush(&mut out, &mut held, e.pid);
        let starts = match e.what {
            What::Type1Pin {
                pinned,
                base: PageClass::Other,
                huge_zero_pages: 0,
                ..
            } => pinned > 0 && charged == pinned && !zero_in_call,
            What::Type1Unpin {
                npage,
                unlocked,
                do_accounting: false,
                base: PageClass::Other,
                huge_zero_pages: 0,
                ..
            } => unlocked == npage as i64,
            _ => false,
        };
        if starts {
            held.insert(e.pid, (charged, e.clone()));
            continue;
        }
        if charged > 0
            && let What::Type1Pin { dma, .. } = e.what
        {
            out.push(Line::Event(Event {
                what: What::LockAcct {
                    dma,
                    npage: charged,
                    is_async: false,
                    ret: 0,
                },
                ..e.clone()
            }));
        }
        out.push(l.clone());
    }
    for pid in held.keys().copied().collect::<Vec<_>>() {
        flush(&mut out, &mut held, pid);
    }
    out
}

/// The verdicts of `lines`, but for how many events made them.
fn verdicts_of(lines: &[Line]) -> vfio_zp::model::verdict::Verdicts {
    let mut m = Model::new(&header(), Config::default());
    for l in lines {
        m.apply(l);
    }
    let mut v = m.verdicts();
    v.coverage.events = 0;
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// The probes fold runs of other pages (with their charges) as they
    /// fold zero-page runs: the model must say the same of the call-by-call
    /// stream, of the same stream one page a call, and of what the probes
    /// write of that.
    #[test]
    fn folding_runs_of_other_pages_changes_no_verdict(
        profile in 0usize..PROFILES.len(),
        fold in any::<bool>(),
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let ops: Vec<Op> = ops.into_iter().filter(|o| !matches!(o, Op::Lose(_))).collect();
        let mut sim = Sim::new(PROFILES[profile], fold, 0);
        for op in &ops {
            sim.apply(op);
        }
        let split = split_runs(&sim.lines);
        let folded = fold_runs(&split);
        let want = verdicts_of(&sim.lines);
        prop_assert_eq!(&verdicts_of(&split), &want, "one page a call");
        prop_assert_eq!(&verdicts_of(&folded), &want, "folded as the probes do");
        let events = |l: &[Line]| l.iter().filter(|l| matches!(l, Line::Event(_))).count();
        prop_assert!(events(&folded) <= events(&split));
    }
}

/// The folding above, on a case worked by hand: two threads, each mapping
/// three pages one call a page, then unmapping them.
#[test]
fn runs_of_other_pages_fold_per_thread() {
    let ev = |pid: u32, what| {
        Line::Event(Event {
            t_ns: 0,
            tgid: pid,
            pid,
            comm: "qemu".into(),
            cgroup_id: 1,
            container: Some(pid as Id),
            zero_refcount: None,
            what,
        })
    };
    let acct = |pid, dma| {
        ev(
            pid,
            What::LockAcct {
                dma,
                npage: 1,
                is_async: false,
                ret: 0,
            },
        )
    };
    let pin = |pid, dma, k: u64| {
        ev(
            pid,
            What::Type1Pin {
                dma,
                vaddr: 0x1000 * k,
                npage: 3 - k,
                pinned: 1,
                base: PageClass::Other,
                huge_zero_pages: 0,
            },
        )
    };
    let unpin = |pid, dma, k: u64| {
        ev(
            pid,
            What::Type1Unpin {
                dma,
                iova: 0x1000 * k,
                npage: 1,
                do_accounting: false,
                unlocked: 1,
                base: PageClass::Other,
                huge_zero_pages: 0,
            },
        )
    };
    let mut lines = Vec::new();
    for k in 0..3 {
        lines.extend([acct(1, 10), acct(2, 20), pin(1, 10, k), pin(2, 20, k)]);
    }
    for k in 0..3 {
        lines.extend([unpin(1, 10, k), unpin(2, 20, k)]);
    }
    let folded = fold_runs(&lines);
    let whats: Vec<(u32, What)> = folded
        .iter()
        .filter_map(|l| match l {
            Line::Event(e) => Some((e.pid, e.what.clone())),
            _ => None,
        })
        .collect();
    let run = |pid, dma| {
        [
            (
                pid,
                What::LockAcct {
                    dma,
                    npage: 3,
                    is_async: false,
                    ret: 0,
                },
            ),
            (
                pid,
                What::Type1Pin {
                    dma,
                    vaddr: 0,
                    npage: 3,
                    pinned: 3,
                    base: PageClass::Other,
                    huge_zero_pages: 0,
                },
            ),
        ]
    };
    let unrun = |pid, dma| {
        (
            pid,
            What::Type1Unpin {
                dma,
                iova: 0,
                npage: 3,
                do_accounting: false,
                unlocked: 3,
                base: PageClass::Other,
                huge_zero_pages: 0,
            },
        )
    };
    let mut want = Vec::new();
    want.extend(run(1, 10));
    want.extend(run(2, 20));
    want.extend([unrun(1, 10), unrun(2, 20)]);
    assert_eq!(whats, want);
}

/// The simulator itself, on a case worked by hand: 5.10 before 873aefb,
/// three read-only zero pages, the look-ahead re-pinning the next two.
#[test]
fn the_simulator_pins_as_the_lab_measured() {
    let mut sim = Sim::new(PROFILES[0], false, 0);
    sim.apply(&Op::Open(0));
    let m = MapArgs {
        pages: 3,
        zero: 0b111,
        huge: false,
        read_only: true,
    };
    sim.apply(&Op::Map(0, m));
    // 3 pins + 2 look-ahead re-pins, 1024 references each (the lab's
    // 256-page map: 511 pins).
    assert_eq!(sim.refcount, 1 + 5 * PIN_BIAS);
    assert_eq!(sim.held[&1], 5 * PIN_BIAS);
    // Fixed, batched: pinned and unpinned in the call, nothing held.
    let mut sim = Sim::new(PROFILES[4], true, 0);
    sim.apply(&Op::Open(0));
    sim.apply(&Op::Map(
        0,
        MapArgs {
            pages: 39,
            zero: u64::MAX,
            huge: false,
            read_only: true,
        },
    ));
    assert_eq!(sim.refcount, 1);
    let gups = sim
        .lines
        .iter()
        .filter(|l| {
            matches!(
                l,
                Line::Event(Event {
                    what: What::GupPin { .. },
                    ..
                })
            )
        })
        .count();
    assert_eq!(gups, 1, "one GUP call of all 39 pages");
}
