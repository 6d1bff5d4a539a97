//! Property tests: random VFIO lives (open, map, partial unmap, close,
//! process exit) run through a small simulator of type1 + GUP under each
//! kernel behaviour profile, which emits the events the probes would see
//! and keeps the zero page's true refcount. The model, fed those events,
//! must find exactly the simulator's leaks, never a negative count, no
//! divergence, and the same verdicts again when replayed from a recording.
use std::collections::BTreeMap;

use proptest::prelude::*;
use vfio_zp::{
    event::{Event, Id, PageClass, Refcount, UnpinFn, What, When},
    model::{Config, Model, verdict::Leak},
    record::{Header, Line, ProbeState, ProbeStatus, Writer, read},
};

#[derive(Clone, Copy, Debug)]
struct Profile {
    gup_pins: bool,
    type1_unpins: bool,
    unshares: bool,
}

/// The combinations real kernels have (kernel-facts.md, "History").
const PROFILES: [Profile; 5] = [
    // < 5.10.146 (and 5.10-leaky)
    Profile {
        gup_pins: true,
        type1_unpins: false,
        unshares: false,
    },
    // 5.10.146+, 6.0, 6.1 before the GUP fix
    Profile {
        gup_pins: true,
        type1_unpins: true,
        unshares: false,
    },
    // 6.2 - 6.4
    Profile {
        gup_pins: true,
        type1_unpins: true,
        unshares: true,
    },
    // 6.1.y with c8070b787519
    Profile {
        gup_pins: false,
        type1_unpins: true,
        unshares: false,
    },
    // 6.9+
    Profile {
        gup_pins: false,
        type1_unpins: false,
        unshares: true,
    },
];

#[derive(Clone, Debug)]
enum Op {
    Open(u8),
    /// Container, pages (bit i of `zero` set: page i is zero-backed), read-only.
    Map(u8, u8, u8, bool),
    /// Unmap the container's oldest mapping.
    Unmap(u8),
    Close(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3).prop_map(Op::Open),
        (0u8..3, 1u8..7, any::<u8>(), any::<bool>()).prop_map(|(c, n, z, ro)| Op::Map(c, n, z, ro)),
        (0u8..3).prop_map(Op::Unmap),
        (0u8..3).prop_map(Op::Close),
    ]
}

/// A mapping: its dma id and the class of each page.
type Mapping = (Id, Vec<PageClass>);
/// An open container: its id, owner tgid and mappings, oldest first.
type Open = (Id, u32, Vec<Mapping>);

struct Sim {
    p: Profile,
    /// The probes fold 873aefb's unpin into one event with no refcount,
    /// written before the thread's next event (flag::FOLDED).
    fold: bool,
    t: u64,
    refcount: i32,
    next_id: Id,
    open: BTreeMap<u8, Open>,
    /// container id -> zero-page pins leaked (true count)
    leaked: BTreeMap<Id, i64>,
    lines: Vec<Line>,
}

impl Sim {
    fn emit(&mut self, tgid: u32, container: Option<Id>, what: What, rc: Option<When>) {
        self.t += 1000;
        self.lines.push(Line::Event(Event {
            t_ns: self.t,
            tgid,
            pid: tgid,
            comm: "qemu".into(),
            cgroup_id: 1,
            container,
            zero_refcount: rc.map(|when| Refcount {
                value: self.refcount,
                when,
            }),
            what,
        }));
    }

    fn id(&mut self) -> Id {
        self.next_id += 1;
        self.next_id
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Open(slot) if !self.open.contains_key(&slot) => {
                let id = self.id();
                let tgid = 1000 + id;
                self.open.insert(slot, (id, tgid, vec![]));
                self.emit(tgid, Some(id), What::ContainerOpen { ok: true }, None);
            }
            Op::Map(slot, n, zero, ro) if self.open.contains_key(&slot) => {
                let (c, tgid, _) = self.open[&slot].clone();
                let dma = self.id();
                let mut classes = Vec::new();
                let unshares = self.p.unshares;
                let zero_at = |i: u8| zero & (1 << i) != 0 && ro && !unshares;
                for i in 0..n {
                    // Written-to or RW-mapped memory is never the zero page;
                    // unsharing kernels replace it for R/O long-term pins.
                    let is_zero = zero_at(i);
                    let class = if is_zero {
                        PageClass::Zero
                    } else {
                        PageClass::Other
                    };
                    self.gup_one(c, tgid, is_zero, ro);
                    // 5.10's look-ahead: the next page is pinned, found not
                    // contiguous and dropped through put_pfn (a no-op for
                    // the zero page), then pinned again by the next call.
                    if i + 1 < n {
                        self.gup_one(c, tgid, zero_at(i + 1), ro);
                    }
                    if !is_zero {
                        self.emit(
                            tgid,
                            Some(c),
                            What::LockAcct {
                                dma,
                                npage: 1,
                                is_async: false,
                                ret: 0,
                            },
                            None,
                        );
                    }
                    self.emit(
                        tgid,
                        Some(c),
                        What::Type1Pin {
                            dma,
                            vaddr: 0x1000 * i as u64,
                            npage: 1,
                            pinned: 1,
                            base: class,
                        },
                        None,
                    );
                    classes.push(class);
                }
                self.emit(
                    tgid,
                    Some(c),
                    What::MapDma {
                        flags: if ro { 1 } else { 3 },
                        vaddr: 0,
                        iova: 0,
                        size: n as u64 * 4096,
                        ret: 0,
                        memlock: None,
                        cap_ipc_lock: None,
                    },
                    None,
                );
                self.open.get_mut(&slot).unwrap().2.push((dma, classes));
            }
            Op::Unmap(slot) if self.open.get(&slot).is_some_and(|o| !o.2.is_empty()) => {
                let (c, tgid, _) = self.open[&slot].clone();
                let m = self.open.get_mut(&slot).unwrap().2.remove(0);
                self.unmap(c, tgid, m, Some(c));
                self.emit(
                    tgid,
                    Some(c),
                    What::UnmapDma {
                        flags: 0,
                        iova: 0,
                        size: 4096,
                        ret: 0,
                    },
                    None,
                );
            }
            Op::Close(slot) if self.open.contains_key(&slot) => {
                let (c, tgid, maps) = self.open.remove(&slot).unwrap();
                self.emit(tgid, Some(c), What::ContainerRelease, None);
                for m in maps {
                    // The release path's unpins carry no container.
                    self.unmap(c, tgid, m, None);
                }
            }
            _ => {}
        }
    }

    /// One page through pin_user_pages_remote, and 873aefb's unpin if any.
    fn gup_one(&mut self, c: Id, tgid: u32, is_zero: bool, ro: bool) {
        if self.p.gup_pins && is_zero {
            self.refcount += 1024;
        }
        self.emit(
            tgid,
            Some(c),
            What::GupPin {
                remote: true,
                start: 0,
                nr_pages: 1,
                gup_flags: if ro { 0x10000 } else { 0x10001 },
                pinned: 1,
                zero_pages: is_zero as u64,
                huge_zero_pages: 0,
                in_type1: true,
                truncated: false,
            },
            Some(When::After),
        );
        if is_zero && self.p.type1_unpins {
            self.emit(
                tgid,
                Some(c),
                What::GupUnpin {
                    func: UnpinFn::UnpinUserPage,
                    npages: 1,
                    zero_pages: 1,
                    huge_zero_pages: 0,
                    truncated: false,
                },
                (!self.fold).then_some(When::Before),
            );
            if self.p.gup_pins {
                self.refcount -= 1024;
            }
        } else if is_zero && self.p.gup_pins {
            *self.leaked.entry(c).or_default() += 1;
        }
    }

    fn unmap(
        &mut self,
        c: Id,
        tgid: u32,
        (dma, classes): (Id, Vec<PageClass>),
        unpin_c: Option<Id>,
    ) {
        self.emit(tgid, Some(c), What::RemoveDma { dma }, None);
        let mut unlocked = 0;
        for class in classes {
            let u = (class != PageClass::Zero) as i64;
            unlocked += u;
            self.emit(
                tgid,
                unpin_c,
                What::Type1Unpin {
                    dma,
                    iova: 0,
                    npage: 1,
                    do_accounting: false,
                    unlocked: u,
                    base: class,
                },
                None,
            );
        }
        if unlocked > 0 {
            self.emit(
                tgid,
                Some(c),
                What::LockAcct {
                    dma,
                    npage: -unlocked,
                    is_async: true,
                    ret: 0,
                },
                None,
            );
        }
    }
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn model_matches_the_simulated_kernel(profile in 0usize..PROFILES.len(), fold in any::<bool>(), ops in prop::collection::vec(op(), 1..40)) {
        let p = PROFILES[profile];
        let mut sim = Sim { p, fold, t: 0, refcount: 1, next_id: 0, open: BTreeMap::new(), leaked: BTreeMap::new(), lines: vec![] };
        let mut live = Model::new(&header(), Config::default());
        for op in &ops {
            let from = sim.lines.len();
            sim.apply(op);
            for l in &sim.lines[from..] {
                live.apply(l);
            }
            let v = live.verdicts();
            for c in &v.containers {
                // Never a negative count.
                prop_assert!(c.pinned_pages.zero >= 0 && c.pinned_pages.other >= 0, "{c:?}");
                prop_assert!(c.zero_page_pins_live >= 0 && c.zero_page_pins_leaked >= 0, "{c:?}");
                prop_assert!(c.locked_vm_pages_kernel >= 0, "{c:?}");
                // Exactly the simulator's leaks, and only where the profile leaks.
                let truth = sim.leaked.get(&c.id).copied().unwrap_or(0);
                prop_assert_eq!(c.zero_page_pins_leaked, truth, "container {}", c.id);
                prop_assert_eq!(c.leak == Leak::Leaking, truth > 0);
                prop_assert!(truth == 0 || (p.gup_pins && !p.type1_unpins));
                prop_assert_eq!(c.locked_vm_pages_kernel, c.locked_vm_pages_model);
            }
            prop_assert!(v.divergences.is_empty(), "{:?}", v.divergences);
            if let Some(r) = v.host.zero_page_refcount {
                prop_assert_eq!(r, sim.refcount as i64);
                prop_assert_eq!(v.host.unexplained_refs, Some(0));
            }
        }
        // Whatever evidence there was, the inference agrees with the kernel.
        let v = live.verdicts();
        let saw_zero = sim.lines.iter().any(|l| matches!(l, Line::Event(Event { what: What::GupPin { zero_pages: 1, .. }, .. })));
        if saw_zero {
            prop_assert_eq!(v.behaviour[0].value, p.gup_pins, "{:?}", v.behaviour[0]);
            prop_assert_eq!(v.behaviour[1].value, p.type1_unpins, "{:?}", v.behaviour[1]);
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
