//! The model of type1's zero-page and locked_vm accounting. Pure: it sees
//! only recording [`Line`]s, so a recorded stream replays through it to the
//! same verdicts the live agent reached.
//!
//! For each event it predicts the effect (zero page refcount delta,
//! locked_vm delta), compares with what the kernel reports, and counts every
//! divergence by kind with an explanation.
pub mod behaviour;
pub mod ledger;
pub mod needs;
pub mod refcount;
pub mod verdict;
pub mod workload;

use std::collections::{BTreeMap, HashMap};

use behaviour::{Behaviour, KernelVersion, Trait};
use ledger::{Container, Dma, Held, Pages, PinCall, Process};
use refcount::{PIN_BIAS, ReadingSource, Vote, ZeroLedger};
use serde::{Deserialize, Serialize};
use vfio_zp_common::FOLL_WRITE;

use crate::stream::event::{Event, Id, Memlock, PageClass, UnpinFn, What};
use crate::stream::{Header, Line, ProbeState, line::ProbesChanged};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// Leak rates are averaged over this much event time.
    pub rate_window_ns: u64,
    /// Closed containers with nothing leaked are forgotten after this long.
    pub retain_closed_ns: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rate_window_ns: 60_000_000_000,
            retain_closed_ns: 3_600_000_000_000,
        }
    }
}

/// Ways the kernel did something other than the model predicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Divergence {
    /// A zero page refcount reading the pins seen do not explain.
    ZeroRefcount,
    /// vfio_lock_acct charged a pin call other than the model predicted.
    LockAcctCharge,
    /// vfio_unpin_pages_remote released a different number of charged pages.
    UnpinUnlocked,
    /// After an ioctl or at a mapping's end, locked_vm differs from the model.
    LockedVm,
    /// Unpin or charge of a mapping the model never saw pinned (e.g. made
    /// before the agent started).
    UnknownMapping,
    /// A settled refcount reading below what the pins the model counted
    /// hold: the count is too high (records lost, a path unprobed).
    RefcountBound,
}

/// Every kind, for exporting zeros before the first one happens.
pub const DIVERGENCES: [Divergence; 6] = [
    Divergence::ZeroRefcount,
    Divergence::LockAcctCharge,
    Divergence::UnpinUnlocked,
    Divergence::LockedVm,
    Divergence::UnknownMapping,
    Divergence::RefcountBound,
];

impl Divergence {
    pub fn label(self) -> &'static str {
        match self {
            Divergence::ZeroRefcount => "zero_refcount",
            Divergence::LockAcctCharge => "lock_acct_charge",
            Divergence::UnpinUnlocked => "unpin_unlocked",
            Divergence::LockedVm => "locked_vm",
            Divergence::UnknownMapping => "unknown_mapping",
            Divergence::RefcountBound => "refcount_bound",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergenceCount {
    pub count: u64,
    /// The most recent explanation.
    pub last: String,
}

/// Divergences of one kind found since the last counters line, with the
/// first explanations (each is a log line once counted).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Found {
    count: u64,
    whys: Vec<String>,
    last: String,
}

/// Explanations kept per kind and counters interval; the rest are counted.
const MAX_WHYS: usize = 16;

/// Serializable so the agent can keep it across restarts (the state
/// directory's checkpoint); notes not yet taken are not kept.
#[derive(Serialize, Deserialize)]
pub struct Model {
    cfg: Config,
    kernel_release: String,
    pub(crate) behaviour: Behaviour,
    pub(crate) containers: BTreeMap<Id, Container>,
    dmas: HashMap<Id, Dma>,
    pub(crate) procs: BTreeMap<u32, Process>,
    pub(crate) cgroups: HashMap<u64, String>,
    in_flight: HashMap<u32, PinCall>,
    /// Each thread's last unpin call, to drop the nested calls of one unpin.
    last_unpin: HashMap<u32, (UnpinFn, u64, u64, u64)>,
    /// The container whose mapping each thread is removing (its unpins).
    #[serde(default)]
    removing: HashMap<u32, Id>,
    pub(crate) zero: ZeroLedger,
    /// Zero pins taken outside type1 (pin_user_pages users), still held.
    pub(crate) other_zero_pins: i64,
    pub(crate) divergences: BTreeMap<Divergence, DivergenceCount>,
    /// Divergences found in events since the last counters line: counted
    /// at the next one, or set aside if it shows records lost, which may
    /// explain them (a 5.10 bench run whose ring lost 146,666 records
    /// counted 4,040 refcount divergences, and the alert blamed the kernel).
    #[serde(default)]
    pending_divergences: BTreeMap<Divergence, Found>,
    /// Divergences set aside at once in the same interval (a blind window
    /// already reached their base), reported together at its close: a
    /// flood sets aside thousands, one log line per kind says so.
    #[serde(default)]
    pending_set_aside: BTreeMap<Divergence, Found>,
    /// Divergences that records lost, or a stretch the agent did not run,
    /// may explain: not the kernel's doing as far as anyone can tell.
    #[serde(default)]
    pub(crate) divergences_set_aside: BTreeMap<Divergence, DivergenceCount>,
    pub(crate) probes: BTreeMap<String, ProbeState>,
    pub(crate) events_lost: u64,
    /// When events may have gone unseen: between the counters lines that
    /// showed new losses, and while the agent was not running. Only the
    /// containers active in one of them get uncertain verdicts.
    pub(crate) blind: Vec<Blind>,
    /// The last counters line's time: losses it shows happened after it.
    counters_ns: u64,
    /// Trait observations made since that line, [trait][no, yes]:
    /// withdrawn if the next one shows losses (they may rest on incomplete
    /// records).
    #[serde(default)]
    pending_votes: [[u64; 2]; 4],
    /// Whether the latest settled refcount reading could not hold the
    /// count: a divergence is counted once per such stretch.
    #[serde(default)]
    overclaimed: bool,
    pub(crate) truncated_scans: u64,
    pub(crate) events: u64,
    pub(crate) now: u64,
    /// Uncharges type1 made after the process's mm was gone (-ESRCH):
    /// the ordinary exit of a VMM whose mappings were still live.
    #[serde(default)]
    pub(crate) uncharges_after_exit: u64,
    /// Since when the generic GUP unpin probes are left off (not_needed):
    /// zero-page unpins go unseen, so pins are not held against them.
    #[serde(default)]
    unpins_off_since: Option<u64>,
    /// Explanations not yet taken by [`Model::take_notes`].
    #[serde(skip)]
    notes: Vec<Note>,
}

/// How much a note matters to an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Worth a line in the log: a VM's ordinary start or exit.
    Info,
    /// Something to act on or to doubt a figure by.
    Warn,
}

/// An explanation of a divergence or a notable observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub level: Level,
    pub text: String,
}

impl Note {
    /// Logs the note at its level.
    pub fn log(&self) {
        match self.level {
            Level::Info => tracing::info!("{}", self.text),
            Level::Warn => tracing::warn!("{}", self.text),
        }
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A stretch of time in which events may have been lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blind {
    pub from_ns: u64,
    pub to_ns: u64,
    /// How many were lost; `None` when the agent was not running and the
    /// number is unknown.
    pub events: Option<u64>,
}

/// Blind windows kept; older ones merge, so uncertainty is never lost.
const MAX_BLIND: usize = 64;

/// Unattributed type1 activity (no container id seen) is kept under id 0.
pub const UNATTRIBUTED: Id = 0;
const MAX_NOTES: usize = 1000;

impl Model {
    pub fn new(header: &Header, cfg: Config) -> Model {
        let version =
            KernelVersion::parse(&header.kernel_release, header.kernel_version.as_deref());
        let mut m = Model {
            cfg,
            kernel_release: header.kernel_release.clone(),
            behaviour: Behaviour::new(version),
            containers: BTreeMap::new(),
            dmas: HashMap::new(),
            procs: BTreeMap::new(),
            cgroups: HashMap::new(),
            in_flight: HashMap::new(),
            last_unpin: HashMap::new(),
            removing: HashMap::new(),
            zero: ZeroLedger::default(),
            other_zero_pins: 0,
            divergences: BTreeMap::new(),
            pending_divergences: BTreeMap::new(),
            pending_set_aside: BTreeMap::new(),
            divergences_set_aside: BTreeMap::new(),
            probes: BTreeMap::new(),
            events_lost: 0,
            blind: Vec::new(),
            counters_ns: header.started_t_ns,
            pending_votes: Default::default(),
            overclaimed: false,
            truncated_scans: 0,
            uncharges_after_exit: 0,
            events: 0,
            now: header.started_t_ns,
            unpins_off_since: None,
            notes: Vec::new(),
        };
        m.set_probes(&ProbesChanged {
            t_ns: header.started_t_ns,
            probes: header.probes.clone(),
        });
        m
    }

    /// The agent was not running from `from_ns` to `to_ns` (kernel
    /// monotonic time): whatever happened then went unseen.
    pub fn gap(&mut self, from_ns: u64, to_ns: u64) {
        self.blind_window(Blind {
            from_ns,
            to_ns,
            events: None,
        });
        self.note(format!(
            "the agent was not running for {:.1}s: containers open then may have pins or unpins it did not see",
            to_ns.saturating_sub(from_ns) as f64 / 1e9
        ));
    }

    fn blind_window(&mut self, w: Blind) {
        if let Some(last) = self.blind.last_mut()
            && last.to_ns >= w.from_ns
            && last.events.is_some() == w.events.is_some()
        {
            last.to_ns = last.to_ns.max(w.to_ns);
            last.events = last.events.zip(w.events).map(|(a, b)| a + b);
            return;
        }
        self.blind.push(w);
        if self.blind.len() > MAX_BLIND {
            // Merge the two oldest: a wider window, never a lost one.
            let b = self.blind.remove(1);
            let a = &mut self.blind[0];
            a.to_ns = a.to_ns.max(b.to_ns);
            a.events = a.events.zip(b.events).map(|(x, y)| x + y);
        }
    }

    /// The latest event or counters time seen (kernel monotonic ns).
    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Explanations of divergences and notable observations since the last call.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    fn note(&mut self, s: String) {
        self.note_at(Level::Warn, s);
    }

    fn note_at(&mut self, level: Level, text: String) {
        if self.notes.len() < MAX_NOTES {
            self.notes.push(Note { level, text });
        }
    }

    /// Whether records may have been lost at or after `from_ns` (a blind
    /// window reaching that far).
    fn blind_since(&self, from_ns: u64) -> bool {
        self.blind.iter().any(|w| w.to_ns >= from_ns)
    }

    /// Counts an observation of `t` from records that began at `from_ns`,
    /// unless a blind window has overlapped them since: evidence that may
    /// be missing a record never decides a trait (nor overrides a prior).
    /// Losses not yet counted withdraw it at the next counters line.
    fn vote(&mut self, t: Trait, yes: bool, from_ns: u64) {
        if self.blind_since(from_ns) {
            self.behaviour.set_aside(t);
            return;
        }
        self.behaviour.observe(t, yes);
        self.pending_votes[t as usize][yes as usize] += 1;
    }

    /// A divergence whose prediction rests on the records since `from_ns`.
    /// Set aside when a known blind window reaches that far; else held
    /// until the counters line that closes its interval (`close_interval`):
    /// losses it shows set it aside too.
    fn diverge(&mut self, kind: Divergence, why: String, from_ns: u64) {
        if self.blind_since(from_ns) {
            let f = self.pending_set_aside.entry(kind).or_default();
            f.count += 1;
            f.last = why;
            return;
        }
        let f = self.pending_divergences.entry(kind).or_default();
        f.count += 1;
        if f.whys.len() < MAX_WHYS {
            f.whys.push(why.clone());
        }
        f.last = why;
    }

    fn set_aside(&mut self, kind: Divergence, n: u64, why: String, because: &str) {
        let d = self.divergences_set_aside.entry(kind).or_default();
        d.count += n;
        d.last = why.clone();
        self.note(format!(
            "{n} model divergence(s) {} set aside, as {because} (last: {why})",
            kind.label()
        ));
    }

    /// A counters line closes the interval since the one before: the
    /// divergences found in it count, unless it lost records (`lost`).
    fn close_interval(&mut self, lost: u64) {
        for (kind, f) in std::mem::take(&mut self.pending_set_aside) {
            self.set_aside(
                kind,
                f.count,
                f.last,
                "records were lost, or the agent was not running, since the records they rest on",
            );
        }
        for (kind, f) in std::mem::take(&mut self.pending_divergences) {
            if lost > 0 {
                let because = format!("{lost} events were lost in the same interval");
                self.set_aside(kind, f.count, f.last, &because);
                continue;
            }
            let d = self.divergences.entry(kind).or_default();
            d.count += f.count;
            d.last = f.last;
            let more = f.count - f.whys.len() as u64;
            for why in f.whys {
                self.note(format!("model divergence {}: {why}", kind.label()));
            }
            if more > 0 {
                self.note(format!(
                    "model divergence {}: {more} more in the same interval",
                    kind.label()
                ));
            }
        }
    }

    pub fn apply(&mut self, line: &Line) {
        match line {
            Line::Header(_) | Line::Ids(_) => {}
            Line::Event(e) => self.event(e),
            Line::Counters(c) => {
                self.now = self.now.max(c.t_ns);
                let since = std::mem::replace(&mut self.counters_ns, c.t_ns);
                let lost = c.drops.values().sum::<u64>() + c.misses.values().sum::<u64>();
                let votes = std::mem::take(&mut self.pending_votes);
                if lost > self.events_lost {
                    for t in behaviour::TRAITS {
                        for yes in [false, true] {
                            self.behaviour
                                .withdraw(t, yes, votes[t as usize][yes as usize]);
                        }
                    }
                    self.blind_window(Blind {
                        from_ns: since,
                        to_ns: c.t_ns,
                        events: Some(lost - self.events_lost),
                    });
                }
                self.close_interval(lost - self.events_lost.min(lost));
                self.events_lost = lost;
                if let Some(v) = c.zero_refcount {
                    self.kcore_reading(v as i64, c.t_ns);
                    // Taken after this line's losses were: it stands now.
                    self.close_interval(0);
                }
                self.expire();
            }
            Line::Probes(p) => self.set_probes(p),
            Line::Cgroup(c) => {
                // A removed cgroup keeps the last name it was seen with.
                if let Some(p) = &c.path {
                    self.cgroups.insert(c.id, p.clone());
                }
            }
            Line::Process(p) => {
                let proc = self
                    .procs
                    .entry(p.tgid)
                    .or_insert_with(|| Process::new(p.tgid, &p.comm, 0));
                // Never forget a limit already known (from a MAP_DMA probe).
                if p.memlock != Memlock::Unknown || proc.memlock == Memlock::Unknown {
                    proc.memlock = p.memlock;
                    proc.cap_ipc_lock = p.cap_ipc_lock;
                }
            }
        }
    }

    fn set_probes(&mut self, p: &ProbesChanged) {
        self.probes = p
            .probes
            .iter()
            .map(|s| (s.probe.clone(), s.state))
            .collect();
        self.follow_unpins(p.t_ns);
    }

    fn per_pin(&self) -> i64 {
        if self.behaviour.get(Trait::GupPinsZeroPage) {
            PIN_BIAS
        } else {
            0
        }
    }

    /// The settled reading's contradiction of the count, judged only
    /// against a known count per pin, never an assumed one.
    fn overclaim(&self) -> Option<refcount::Overclaim> {
        self.zero
            .overclaim(self.per_pin())
            .filter(|_| self.behaviour.known(Trait::GupPinsZeroPage))
    }

    /// Whether another thread is inside a pin call whose zero-page pins are
    /// not all accounted for: its unpins may already have run in the kernel
    /// while their event (folded until the thread writes again) is still to
    /// come, so a reading now compares with a count that is not there yet.
    fn racing(&self, pid: u32) -> bool {
        self.in_flight
            .iter()
            .any(|(p, c)| *p != pid && c.may_hold_unwritten_unpins())
    }

    /// Forgets a pin call of `e`'s thread whose return never came (a
    /// return probe that missed, a record lost) once the thread's MAP or
    /// UNMAP ioctl returns: the probes end such a call there and write the
    /// unpins it held back before the ioctl's record, so it holds nothing
    /// back any more. An order the probes guarantee, where a time window
    /// (1 s before) could expire under a call still running. A call outside
    /// an ioctl (group attach) ends at its thread's next pin call.
    fn end_calls(&mut self, e: &Event) {
        if matches!(e.what, What::MapDma { .. } | What::UnmapDma { .. }) {
            self.in_flight.remove(&e.pid);
        }
    }

    fn probe_reading(&mut self, value: i64, e: &Event) {
        let t_ns = e.t_ns;
        if self.racing(e.pid) {
            return;
        }
        // Pins lost in between would skew the comparison: it rests on the
        // records since the previous probe reading (all of them for a level).
        let since = self
            .zero
            .last
            .filter(|r| r.source == ReadingSource::Probe && r.outstanding != self.zero.outstanding)
            .map_or(0, |r| r.t_ns);
        match self.zero.vote(value) {
            Vote::Pins => self.vote(Trait::GupPinsZeroPage, true, since),
            Vote::Ignores => self.vote(Trait::GupPinsZeroPage, false, since),
            Vote::None | Vote::Neither => {}
        }
        // A prediction resting on an assumed trait is no prediction.
        if self.behaviour.known(Trait::GupPinsZeroPage)
            && let Some(expect) = self.zero.expected(self.per_pin())
            && expect != value
            && !self.zero.raced_kcore(value, self.per_pin())
        {
            self.diverge(
                Divergence::ZeroRefcount,
                format!(
                    "zero page refcount read {value}, the pins seen predict {expect} ({:+} references unexplained)",
                    value - expect
                ),
                self.zero.last.map_or(0, |r| r.t_ns),
            );
        }
        self.zero.record(value, t_ns, ReadingSource::Probe);
        self.check_bound(t_ns);
    }

    /// Counts a divergence when the reading just taken is settled and
    /// cannot hold the pins the model counts, once per such stretch (a
    /// kcore reading every tick would count it again and again).
    fn check_bound(&mut self, t_ns: u64) {
        // Only against a known count per pin, never an assumed one.
        if self.zero.settled.is_none_or(|r| r.t_ns != t_ns)
            || !self.behaviour.known(Trait::GupPinsZeroPage)
        {
            return;
        }
        let over = self.overclaim();
        if let (Some(o), false) = (over, self.overclaimed) {
            // The count rests on every record since the start.
            self.diverge(Divergence::RefcountBound, o.to_string(), 0);
        }
        self.overclaimed = over.is_some();
    }

    /// kcore readings race with events in flight, so they only re-anchor
    /// the ledger, and count as a divergence only when nothing moved since
    /// the previous one, twice running.
    fn kcore_reading(&mut self, value: i64, t_ns: u64) {
        // Taken while a pin call holds zero-page pins whose unpins may have
        // run unwritten (folded until its thread writes again), the reading
        // may be short of the count by those unpins: no base for later
        // readings (a 5.10 lab run's thread, preempted for seconds inside
        // its call, left such a base, and the next reading diverged). A
        // call that records lost since it began may have ended unseen does
        // not hold the reading back.
        let suspect = self.zero.kcore_suspect.take();
        if self
            .in_flight
            .values()
            .any(|c| c.may_hold_unwritten_unpins() && !self.blind_since(c.started_ns))
        {
            return;
        }
        if !self.zero.moved_since_kcore
            && self.behaviour.known(Trait::GupPinsZeroPage)
            && let Some(expect) = self.zero.expected(self.per_pin())
            && expect != value
        {
            // Counted when the next reading, with still no event between,
            // reads the same (ZeroLedger::kcore_suspect); until then it is
            // no base either.
            if suspect != Some(value) {
                self.zero.kcore_suspect = Some(value);
                return;
            }
            self.diverge(
                Divergence::ZeroRefcount,
                format!(
                    "zero page refcount is {value} (kcore) with no pin or unpin since, the model expects {expect}: another kernel user took or dropped {:+} references",
                    value - expect
                ),
                self.zero.last.map_or(0, |r| r.t_ns),
            );
        }
        self.zero.record(value, t_ns, ReadingSource::Kcore);
        self.check_bound(t_ns);
    }

    fn process(&mut self, e: &Event) -> &mut Process {
        self.procs
            .entry(e.tgid)
            .or_insert_with(|| Process::new(e.tgid, &e.comm, e.cgroup_id))
    }

    fn container(&mut self, id: Id, e: &Event) -> &mut Container {
        self.containers
            .entry(id)
            .or_insert_with(|| Container::new(id, e.tgid, &e.comm, e.cgroup_id))
    }

    fn event(&mut self, e: &Event) {
        self.events += 1;
        self.now = self.now.max(e.t_ns);
        let proc = self.process(e);
        if proc.cgroup_id == 0 {
            proc.cgroup_id = e.cgroup_id;
        }
        // The probe's reading at map time is the limit type1 checks against;
        // it beats /proc, which a short-lived process may leave unread.
        if let What::MapDma {
            memlock: Some(m),
            cap_ipc_lock,
            ..
        } = &e.what
        {
            proc.memlock = *m;
            proc.cap_ipc_lock = cap_ipc_lock.unwrap_or(proc.cap_ipc_lock);
        }
        if !matches!(e.what, What::GupUnpin { .. }) {
            self.last_unpin.remove(&e.pid);
        }
        if !matches!(
            e.what,
            What::GupUnpin { .. }
                | What::Type1Unpin { .. }
                | What::LockAcct { .. }
                | What::PutPfn { .. }
        ) {
            self.removing.remove(&e.pid);
        }
        self.end_calls(e);
        match &e.what {
            What::ContainerOpen { ok: true } => {
                if let Some(id) = e.container {
                    let mut c = Container::new(id, e.tgid, &e.comm, e.cgroup_id);
                    c.opened_ns = Some(e.t_ns);
                    self.containers.insert(id, c);
                }
            }
            What::ContainerOpen { ok: false } => {}
            What::ContainerRelease => {
                if let Some(id) = e.container {
                    self.container(id, e).closed_ns = Some(e.t_ns);
                }
            }
            What::GupPin { .. } => self.gup_pin(e),
            What::GupUnpin { .. } => self.gup_unpin(e),
            What::PutPfn {
                page: PageClass::Zero,
                released,
                ..
            } => self.vote(Trait::PutPfnSkipsReserved, !released, e.t_ns),
            What::PutPfn { .. } => {}
            What::Type1Pin {
                dma,
                vaddr,
                pinned,
                base,
                huge_zero_pages,
                ..
            } => {
                self.type1_pin(e, *dma, *vaddr, *pinned, *base);
                self.type1_huge_zero(e, *dma, *huge_zero_pages as i64);
            }
            What::Type1Unpin {
                dma,
                npage,
                unlocked,
                base,
                huge_zero_pages,
                ..
            } => {
                // Before the unpin settles a removed mapping away.
                self.type1_huge_zero(e, *dma, -(*huge_zero_pages as i64));
                self.type1_unpin(e, *dma, *npage as i64, *unlocked, *base);
            }
            What::LockAcct {
                dma, npage, ret, ..
            } => self.lock_acct(e, *dma, *npage, *ret),
            What::RemoveDma { dma } => self.remove_dma(e, dma),
            What::MapDma {
                ret: 0,
                vaddr,
                iova,
                size,
                flags,
                ..
            } => self.map_dma(e, *vaddr, *iova, *size, *flags),
            What::MapDma { ret, size, .. } if *ret == -(libc::ENOMEM as i64) => {
                // Refused and unwound: what the mapping would have locked.
                let p = self.process(e);
                p.peak_if_charged = p
                    .peak_if_charged
                    .max(p.locked_kernel + p.zero_held + (*size / 4096) as i64);
            }
            What::UnmapDma { ret: 0, .. } => self.quiescent(e),
            What::MapDma { .. } | What::UnmapDma { .. } => {}
        }
    }

    /// A mapping made: the pinned ranges seen in its pin calls learn their
    /// iova, size and direction.
    fn map_dma(&mut self, e: &Event, vaddr: u64, iova: u64, size: u64, flags: u32) {
        if let Some(c) = e.container.and_then(|id| self.containers.get(&id)) {
            let range = vaddr..vaddr.saturating_add(size);
            for id in c.dmas.clone() {
                if let Some(d) = self.dmas.get_mut(&id)
                    && d.iova.is_none()
                    && range.contains(&d.vaddr)
                {
                    d.vaddr = vaddr;
                    d.iova = Some(iova);
                    d.size = Some(size);
                    d.read_only = Some(flags & 2 == 0);
                }
            }
        }
        self.quiescent(e);
    }

    /// A GUP pin: zero pages pinned, inside a type1 pin call or not.
    fn gup_pin(&mut self, e: &Event) {
        let What::GupPin {
            in_type1,
            zero_pages,
            huge_zero_pages,
            gup_flags,
            pinned,
            truncated,
            ..
        } = &e.what
        else {
            return;
        };
        self.truncated_scans += *truncated as u64;
        let zero = *zero_pages as i64;
        let huge = *huge_zero_pages as i64;
        // Counted for the refcount readings' votes even with the unpins
        // unseen (the evidence must stay able to change, needs.rs).
        self.zero.pinned(zero);
        // Unpins unseen: no pin is held against them.
        let unseen = self.unpins_unseen();
        let held = if unseen { 0 } else { zero };
        if *in_type1 {
            let read_only = gup_flags & FOLL_WRITE == 0;
            if read_only && zero > 0 {
                self.vote(Trait::RoLongtermUnshares, false, e.t_ns);
            }
            let call = self.in_flight.entry(e.pid).or_insert_with(|| PinCall {
                started_ns: e.t_ns,
                ..Default::default()
            });
            call.container = call.container.or(e.container);
            call.zero_pinned += held;
            call.huge_zero_pinned += huge;
            call.read_only_gup |= read_only;
            let id = call.container.unwrap_or(UNATTRIBUTED);
            let c = self.container(id, e);
            c.zero_pins_taken += zero as u64;
            // Unpins unseen: type1's own records count them (below).
            if !unseen {
                c.huge_zero_pins_live += huge;
            }
            if read_only && *pinned > 0 {
                self.process(e).ro_longterm_pinned += pinned;
            }
        } else {
            self.other_zero_pins += held;
        }
        if let Some(r) = e.zero_refcount {
            self.probe_reading(r.value as i64, e);
        }
    }

    /// A GUP unpin: zero pages released, by the call or mapping that held them.
    fn gup_unpin(&mut self, e: &Event) {
        let What::GupUnpin {
            func,
            npages,
            zero_pages,
            huge_zero_pages,
            ..
        } = &e.what
        else {
            return;
        };
        let this = (*func, *npages, *zero_pages, *huge_zero_pages);
        if let Some(outer) = self.last_unpin.insert(e.pid, this)
            && nested_unpin(outer, this)
        {
            // Its reading, before the pages really went, is the outer
            // call's: the model has already let them go.
            return;
        }
        // Read before the unpin ran.
        if let Some(r) = e.zero_refcount {
            self.probe_reading(r.value as i64, e);
        }
        let zero = *zero_pages as i64;
        let huge = *huge_zero_pages as i64;
        self.zero.pinned(-zero);
        let in_call = self.in_flight.get_mut(&e.pid).map(|call| {
            call.zero_unpinned += zero;
            call.container
        });
        // On the release path the unpins carry no container: the
        // mapping being removed names it.
        let owner = in_call
            .unwrap_or(e.container)
            .or_else(|| self.removing.get(&e.pid).copied());
        match owner {
            Some(id) => {
                let c = self.container(id, e);
                c.zero_pins_released += zero as u64;
                c.huge_zero_pins_live -= huge;
                if in_call.is_none() {
                    c.zero_pins_survived -= zero;
                }
            }
            None => self.other_zero_pins -= zero,
        }
    }

    /// The huge zero pages a type1 pin (`huge` > 0) or unpin (< 0) took or
    /// let go, counted from its pfn run. While the generic unpin probes are
    /// off these keep the container's live count: exact, as type1's runs
    /// are what it holds (pages a pin call drops, or leaves in its batch
    /// for the next, never reach them). Otherwise GUP's events keep it.
    fn type1_huge_zero(&mut self, e: &Event, dma: Id, huge: i64) {
        if huge == 0 || !self.unpins_unseen() {
            return;
        }
        // A mapping pinned before vfio-zp was watching: its pins were
        // never counted (type1_unpin says so).
        if let Some(id) = e
            .container
            .or_else(|| self.dmas.get(&dma).map(|d| d.container))
        {
            self.container(id, e).huge_zero_pins_live += huge;
        }
    }

    /// A mapping being removed: the unpins that follow are its.
    fn remove_dma(&mut self, e: &Event, dma: &Id) {
        if let Some(d) = self.dmas.get_mut(dma) {
            d.removed = true;
            let c = d.container;
            self.removing.insert(e.pid, c);
            if let Some(c) = self.containers.get_mut(&c) {
                c.dmas.remove(dma);
            }
        }
        self.settle(*dma);
    }

    fn type1_pin(&mut self, e: &Event, dma: Id, vaddr: u64, pinned: i64, base: PageClass) {
        let mut call = self.in_flight.remove(&e.pid).unwrap_or_default();
        // A call whose first record is its return (no GUP or charge event).
        if call.started_ns == 0 {
            call.started_ns = e.t_ns;
        }
        if self.unpins_unseen() {
            // A call that began before the unpin probes went off may have
            // unpinned unseen since: its zero-page pins say nothing of
            // type1's unpinning, and hold nothing (needs.rs).
            (call.zero_pinned, call.zero_unpinned) = (0, 0);
        }
        let id = e
            .container
            .or(call.container)
            .or_else(|| self.dmas.get(&dma).map(|d| d.container))
            .unwrap_or(UNATTRIBUTED);
        // Growth no GUP pin seen explains, attributed to the container
        // whose zero-page pin it coincided with (issue 15: a pin path not
        // probed left every container `none`).
        // Only where GUP's refcounting of the zero page is known: an assumed
        // 1024 per pin would turn seen pins and unpins into false rises.
        if let Some(r) = e.zero_refcount
            && self.behaviour.known(Trait::GupPinsZeroPage)
            && !self.racing(e.pid)
            && let Some(rise) = self.zero.type1_reading(r.value as i64, self.per_pin(), id)
        {
            self.container(rise.container, e).unseen_pins += rise.pins;
        }
        // The call's GUP zero-page pins: unpinned in the call (873aefb) or kept.
        if call.zero_pinned > 0 {
            let kept = call.zero_pinned - call.zero_unpinned;
            if call.zero_unpinned > 0 {
                self.vote(Trait::Type1UnpinsZeroPage, true, call.started_ns);
            } else if kept > 0 && base == PageClass::Zero {
                self.vote(Trait::Type1UnpinsZeroPage, false, call.started_ns);
            }
        }
        let survived = call.zero_pinned - call.zero_unpinned;
        let now = e.t_ns;
        let c = self.container(id, e);
        if survived != 0 {
            c.zero_pins_survived += survived;
            c.recent.push_back((now, survived));
        }
        if pinned <= 0 {
            if pinned == -(libc::ENOMEM as i64) {
                // type1 checks RLIMIT_MEMLOCK inline before charging.
                self.refused(e, "type1 refused to pin (ENOMEM)".into());
            }
            return;
        }
        // A run of other pages type1 charged nothing for is reserved
        // (device memory); a partial charge is a divergence below.
        let held = Held {
            class: base,
            reserved: base != PageClass::Zero && base != PageClass::HugeZero && call.charged == 0,
        };
        c.dmas.insert(dma);
        *c.pinned.get_mut(held) += pinned;
        let charge = held.charged(pinned);
        c.locked_model += charge;
        let d = self.dmas.entry(dma).or_insert_with(|| Dma {
            container: id,
            tgid: e.tgid,
            vaddr,
            iova: None,
            size: None,
            read_only: None,
            pinned: Pages::default(),
            locked_model: 0,
            locked_kernel: 0,
            removed: false,
            first_ns: call.started_ns,
        });
        *d.pinned.get_mut(held) += pinned;
        d.locked_model += charge;
        d.locked_kernel += call.unattached;
        if let Some(c) = self.containers.get_mut(&id) {
            c.locked_kernel += call.unattached;
        }
        let p = self.process(e);
        p.locked_model += charge;
        p.locked_kernel += call.unattached;
        if base == PageClass::Zero {
            p.zero_held += pinned;
        }
        p.note_peak();
        if call.charged != charge {
            self.diverge(
                Divergence::LockAcctCharge,
                format!(
                    "{}[{}] pinned {pinned} {base:?} pages; the model charges {charge} to locked_vm, vfio_lock_acct charged {}",
                    e.comm, e.tgid, call.charged
                ),
                call.started_ns,
            );
        }
    }

    fn type1_unpin(&mut self, e: &Event, dma: Id, npage: i64, unlocked: i64, base: PageClass) {
        let Some(d) = self.dmas.get_mut(&dma) else {
            self.diverge(
                Divergence::UnknownMapping,
                format!(
                    "{}[{}] unpinned {npage} pages of a mapping pinned before vfio-zp was watching",
                    e.comm, e.tgid
                ),
                0,
            );
            return;
        };
        let held = Held {
            class: base,
            reserved: matches!(base, PageClass::Other | PageClass::Unknown)
                && unlocked == 0
                && d.pinned.reserved >= npage,
        };
        let predicted = held.charged(npage);
        *d.pinned.get_mut(held) -= npage;
        d.locked_model -= predicted;
        let (id, tgid, first_ns) = (d.container, d.tgid, d.first_ns);
        if let Some(c) = self.containers.get_mut(&id) {
            *c.pinned.get_mut(held) -= npage;
            c.locked_model -= predicted;
        }
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.locked_model -= predicted;
            if base == PageClass::Zero {
                p.zero_held -= npage;
            }
        }
        if unlocked != predicted {
            self.diverge(
                Divergence::UnpinUnlocked,
                format!(
                    "{}[{}] unpinned {npage} {base:?} pages: the kernel released {unlocked} from locked_vm, the model {predicted}",
                    e.comm, e.tgid
                ),
                first_ns,
            );
        }
        self.settle(dma);
    }

    fn lock_acct(&mut self, e: &Event, dma: Id, npage: i64, ret: i32) {
        if ret == -libc::ESRCH && npage < 0 {
            // The process's mm is gone, and its locked_vm with it: a VMM
            // that exits with mappings live releases its container after
            // its mm (vfio_lock_acct finds no mm to uncharge). What the
            // mapping had charged is released all the same.
            self.uncharges_after_exit += 1;
            if !std::mem::replace(&mut self.process(e).exited, true) {
                self.note_at(
                    Level::Info,
                    format!(
                        "{}[{}] exited with DMA mappings live: type1 releases them with no mm left to uncharge (its locked_vm went with it)",
                        e.comm, e.tgid
                    ),
                );
            }
        } else if ret == -libc::ENOMEM {
            self.refused(
                e,
                format!("vfio_lock_acct refused {npage} pages (error {ret})"),
            );
            return;
        } else if ret != 0 {
            self.note(format!(
                "{}[{}]: vfio_lock_acct failed to account {npage} pages (error {ret})",
                e.comm, e.tgid
            ));
            return;
        }
        if npage > 0 {
            let call = self.in_flight.entry(e.pid).or_insert_with(|| PinCall {
                started_ns: e.t_ns,
                ..Default::default()
            });
            call.container = call.container.or(e.container);
            call.charged += npage;
        }
        let Some(d) = self.dmas.get_mut(&dma) else {
            if npage > 0 {
                // A new mapping's first pin call: its return creates the mapping.
                self.in_flight.entry(e.pid).or_default().unattached += npage;
            } else {
                self.diverge(
                    Divergence::UnknownMapping,
                    format!(
                        "{}[{}] released {} locked pages of a mapping pinned before vfio-zp was watching",
                        e.comm, e.tgid, -npage
                    ),
                    0,
                );
            }
            return;
        };
        d.locked_kernel += npage;
        let (id, tgid) = (d.container, d.tgid);
        if let Some(c) = self.containers.get_mut(&id) {
            c.locked_kernel += npage;
        }
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.locked_kernel += npage;
            p.note_peak();
        }
        self.settle(dma);
    }

    fn refused(&mut self, e: &Event, what: String) {
        self.process(e).refusals += 1;
        self.note(format!(
            "{}[{}]: {what}: locked_vm would exceed RLIMIT_MEMLOCK",
            e.comm, e.tgid
        ));
    }

    /// A removed mapping with nothing pinned must have given back all it
    /// was charged; then it is forgotten.
    fn settle(&mut self, dma: Id) {
        let Some(d) = self.dmas.get(&dma) else { return };
        if !d.removed || d.pinned.total() != 0 {
            return;
        }
        if d.locked_kernel == d.locked_model {
            self.dmas.remove(&dma);
        }
    }

    /// After a MAP_DMA or UNMAP_DMA returned, every charge of the call is
    /// done: the container's locked_vm must match the model.
    fn quiescent(&mut self, e: &Event) {
        let Some(c) = e.container.and_then(|id| self.containers.get(&id)) else {
            return;
        };
        if c.locked_kernel != c.locked_model {
            let why = format!(
                "container {} of {}[{}]: vfio_lock_acct charged {} pages net, the model {}",
                c.id, c.comm, c.tgid, c.locked_kernel, c.locked_model
            );
            let from_ns = c.opened_ns.unwrap_or(0);
            self.diverge(Divergence::LockedVm, why, from_ns);
        }
    }

    /// Forgets long-closed containers that hold and leaked nothing.
    fn expire(&mut self) {
        let keep_after = self.now.saturating_sub(self.cfg.retain_closed_ns);
        let window = self.now.saturating_sub(self.cfg.rate_window_ns);
        self.containers.retain(|_, c| {
            while c.recent.front().is_some_and(|(t, _)| *t < window) {
                c.recent.pop_front();
            }
            !(c.closed_ns.is_some_and(|t| t < keep_after)
                && c.zero_pins_survived == 0
                && c.dmas.is_empty())
        });
    }
}

/// unpin_user_pages_dirty_lock() hands pages it need not dirty to
/// unpin_user_pages(), which may call unpin_user_page(): one unpin seen by
/// two or three probes, back to back on one thread with the same pages.
fn nested_unpin(outer: (UnpinFn, u64, u64, u64), inner: (UnpinFn, u64, u64, u64)) -> bool {
    use UnpinFn::*;
    let callee = matches!(
        (outer.0, inner.0),
        (UnpinUserPagesDirtyLock, UnpinUserPages | UnpinUserPage) | (UnpinUserPages, UnpinUserPage)
    );
    callee && outer.1 == inner.1 && outer.2 == inner.2 && outer.3 == inner.3
}

#[cfg(test)]
mod tests;
