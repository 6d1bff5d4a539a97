//! The loaded probes: the eBPF object, its maps, and the links that tie
//! programs to resolved symbols. Only this file talks BPF to the kernel.
use std::{
    collections::{BTreeMap, HashSet},
    os::fd::AsFd,
    path::PathBuf,
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{KProbe, kprobe::KProbeLinkId},
};
use vfio_zp_common::{CounterBlock, PROBE_COUNT, ProbeId, ZeroPageConfig, counter};

use super::{
    kallsyms::Kallsyms,
    probe_points::{POINTS, ProbePoint, Resolution, resolve},
    retprobe::{self, TraceRetprobe},
};
use crate::error::Fatal;
use crate::stream::{Counters, ProbeState, ProbeStatus, Totals};

/// The probes, built by build.rs and embedded at compile time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vfio-zp"));

/// How one program is tied to its symbol.
enum Link {
    /// Through the perf kprobe PMU (entry probes; return probes without tracefs).
    Pmu(KProbeLinkId),
    /// A tracefs return probe with an explicit maxactive.
    Trace(TraceRetprobe),
}

pub struct Probes {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, CounterBlock>,
    links: BTreeMap<(ProbeId, &'static str), Link>,
    /// Where return probes are made; `None` without tracefs `kprobe_events`.
    tracefs: Option<PathBuf>,
    status: Vec<ProbeStatus>,
    /// How the type1 points stood before the module went away: a reload of
    /// the same module re-attaches at the same symbols without re-reading
    /// kallsyms (seconds on a slow machine).
    before_unload: Vec<ProbeStatus>,
    log: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Return-probe misses as last read from kprobe_profile, with the total
    /// hits and the time of that read: an idle agent re-reads the file only
    /// every [`MISSES_STALE`] (a miss where no program of ours ran moves no
    /// hit), a busy one on every counters read.
    misses: Option<(u64, std::time::Instant, BTreeMap<String, u64>)>,
}

/// How long unchanged hits let the last kprobe_profile reading stand.
const MISSES_STALE: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads every program (verifier only, no attach). Used by `Probes::load`
/// and by the verifier test, which runs on kernels without kprobes.
pub fn load_object() -> Result<Ebpf, Fatal> {
    load_object_pinned(None, None)
}

/// This build's id. `VFIO_ZP_BUILD_ID` overrides it (the VM lab uses that
/// to play an older build).
pub fn build_id() -> String {
    if let Ok(id) = std::env::var("VFIO_ZP_BUILD_ID")
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return id;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    OBJECT.hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    // 48 bits: plenty to tell builds apart, and never mistaken for a
    // kernel address by anyone scanning logs.
    format!("{:012x}", h.finish() >> 16)
}

/// As [`load_object`], with the maps of [`super::pins::PINNED_MAPS`]
/// reused from (or pinned to) `pins` when given, and a ring buffer of
/// `ring_bytes` (a power of two, at least a page) instead of the built-in 4 MiB.
pub fn load_object_pinned(
    pins: Option<&std::path::Path>,
    ring_bytes: Option<u32>,
) -> Result<Ebpf, Fatal> {
    if OBJECT.is_empty() {
        return Err(Fatal::NoProbes);
    }
    let mut loader = aya::EbpfLoader::new();
    if let Some(bytes) = ring_bytes {
        loader.map_max_entries("EVENTS", bytes);
    }
    if let Some(dir) = pins {
        for m in super::pins::PINNED_MAPS {
            loader.map_pin_path(m, dir.join(m));
        }
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| Fatal::Load(format!("{e:#}")))?;
    // The verifier's walk is most of an agent's start on old kernels (5.10
    // under TCG: tens of seconds), so its time is logged per program.
    let all = std::time::Instant::now();
    let mut took = Vec::new();
    for p in &POINTS {
        for name in [p.entry, p.ret].into_iter().flatten() {
            let prog: &mut KProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| Fatal::Load(format!("program {name} missing from the object")))?
                .try_into()
                .map_err(|e| Fatal::Load(format!("{name}: {e}")))?;
            let t = std::time::Instant::now();
            prog.load()
                .map_err(|e| Fatal::Load(format!("{name}: {e}")))?;
            tracing::debug!("{name}: verified and loaded in {:.2?}", t.elapsed());
            took.push((t.elapsed(), name));
        }
    }
    took.sort_unstable_by(|a, b| b.cmp(a));
    let slowest: Vec<String> = took
        .iter()
        .take(3)
        .map(|(d, name)| format!("{name} {d:.1?}"))
        .collect();
    tracing::info!(
        "{} programs verified and loaded in {:.1?} (slowest: {})",
        took.len(),
        all.elapsed(),
        slowest.join(", ")
    );
    Ok(ebpf)
}

/// Unread bytes at which the probes wake the agent: an eighth of the ring,
/// so a burst is taken in batches long before it could fill the ring. Less
/// than that waits for the agent's next tick.
pub fn wake_bytes(ring_bytes: u32) -> u64 {
    u64::from(ring_bytes / 8).max(1)
}

impl Probes {
    pub fn load(
        mut config: ZeroPageConfig,
        pins: Option<&std::path::Path>,
        ring_bytes: Option<u32>,
    ) -> Result<Probes, Fatal> {
        let mut ebpf = load_object_pinned(pins, ring_bytes)?;
        let load = |what: &str, e: &dyn std::fmt::Display| Fatal::Load(format!("{what}: {e}"));
        let mut cfg: Array<_, ZeroPageConfig> = Array::try_from(
            ebpf.map_mut("CONFIG")
                .ok_or_else(|| load("CONFIG", &"missing"))?,
        )
        .map_err(|e| load("CONFIG", &e))?;
        config.wake_bytes = wake_bytes(ring_bytes.unwrap_or(super::pins::DEFAULT_RING_BYTES));
        cfg.set(0, config, 0).map_err(|e| load("CONFIG", &e))?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("COUNTERS")
                .ok_or_else(|| load("COUNTERS", &"missing"))?,
        )
        .map_err(|e| load("COUNTERS", &e))?;
        // Probe-side log lines go to the agent's log; a probe build without
        // aya-log statements has no AYA_LOGS map, which is fine.
        let log = aya_log::EbpfLogger::init(&mut ebpf).ok();
        let tracefs = retprobe::tracefs();
        if let Some(t) = &tracefs {
            let n = retprobe::remove_stale(t);
            if n > 0 {
                tracing::info!(
                    "removed {n} return probes left by an agent that did not stop cleanly"
                );
            }
        }
        Ok(Probes {
            ebpf,
            counters,
            links: BTreeMap::new(),
            tracefs,
            status: Vec::new(),
            misses: None,
            before_unload: Vec::new(),
            log,
        })
    }

    /// The ring buffer of events, taken once by the reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, Fatal> {
        let m = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| Fatal::Load("EVENTS taken".into()))?;
        RingBuf::try_from(m).map_err(|e| Fatal::Load(format!("EVENTS: {e}")))
    }

    pub fn log_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.log.as_ref().map(|l| l.as_raw_fd())
    }

    pub fn flush_log(&mut self) {
        if let Some(l) = self.log.as_mut() {
            l.flush();
        }
    }

    /// Resolves and attaches every point not attached yet; returns the status of all.
    pub fn attach(
        &mut self,
        syms: &Kallsyms,
        filter: Option<&HashSet<String>>,
        type1_loaded: bool,
    ) -> &[ProbeStatus] {
        let mut status = Vec::with_capacity(POINTS.len());
        for p in &POINTS {
            // Left off on purpose (set_aside) stays off: put_back decides.
            let already = self
                .status
                .get(p.probe as usize)
                .filter(|s| matches!(s.state, ProbeState::Attached | ProbeState::NotNeeded));
            if let Some(s) = already {
                status.push(s.clone());
                continue;
            }
            let (state, symbol, detail) = match resolve(p, syms, filter, type1_loaded) {
                Resolution::Found { symbol } => match self.attach_point(p, &symbol) {
                    Ok(()) => (ProbeState::Attached, Some(symbol), None),
                    Err(e) => (ProbeState::Failed, Some(symbol), Some(e)),
                },
                Resolution::NotTraceable { symbol } => (
                    ProbeState::NotTraceable,
                    Some(symbol),
                    Some("not in available_filter_functions".into()),
                ),
                Resolution::Missing => (
                    ProbeState::Missing,
                    None,
                    Some("not in /proc/kallsyms: inlined into its callers or absent".into()),
                ),
                Resolution::ModuleNotLoaded => (ProbeState::ModuleNotLoaded, None, None),
            };
            status.push(ProbeStatus {
                probe: p.label.into(),
                function: p.function.into(),
                symbol,
                state,
                detail,
                loses: p.loses.into(),
            });
        }
        self.status = status;
        &self.status
    }

    fn attach_point(&mut self, p: &ProbePoint, symbol: &str) -> Result<(), String> {
        let mut done = Vec::new();
        for (name, is_ret) in [(p.entry, false), (p.ret, true)]
            .into_iter()
            .filter_map(|(n, r)| n.map(|n| (n, r)))
        {
            match self.attach_program(name, symbol, is_ret) {
                Ok(link) => done.push((name, link)),
                Err(e) => {
                    // All or nothing per point: an entry without its return is noise.
                    for (n, l) in done {
                        self.detach_link(n, l);
                    }
                    return Err(format!("{name}: {e}"));
                }
            }
        }
        for (name, link) in done {
            self.links.insert((p.probe, name), link);
        }
        Ok(())
    }

    fn attach_program(&mut self, name: &str, symbol: &str, is_ret: bool) -> Result<Link, String> {
        let prog: &mut KProbe = match self.ebpf.program_mut(name).map(TryInto::try_into) {
            Some(Ok(prog)) => prog,
            _ => return Err(format!("program {name} missing")),
        };
        if is_ret && let Some(t) = &self.tracefs {
            let fd = prog.fd().map_err(|e| e.to_string())?;
            match TraceRetprobe::attach(t, fd.as_fd(), name, symbol, retprobe::MAXACTIVE) {
                Ok(link) => return Ok(Link::Trace(link)),
                Err(e) => tracing::warn!(
                    "return probe {name} on {symbol} through tracefs failed ({e}); \
                     falling back to the perf PMU, whose default maxactive can miss \
                     concurrent calls uncounted"
                ),
            }
        }
        prog.attach(symbol, 0)
            .map(Link::Pmu)
            .map_err(|e| format!("{e}"))
    }

    fn detach_link(&mut self, name: &str, link: Link) {
        match link {
            Link::Pmu(l) => {
                if let Some(Ok(pr)) = self
                    .ebpf
                    .program_mut(name)
                    .map(TryInto::<&mut KProbe>::try_into)
                {
                    let _ = pr.detach(l);
                }
            }
            Link::Trace(t) => drop(t),
        }
    }

    /// vfio_iommu_type1 went away: its kprobes are dead; drop them so a
    /// reload attaches afresh.
    pub fn detach_type1(&mut self) {
        let gone: Vec<_> = self
            .links
            .keys()
            .filter(|(probe, _)| super::probe_points::point(*probe).in_type1)
            .copied()
            .collect();
        for key in gone {
            if let Some(link) = self.links.remove(&key) {
                self.detach_link(key.1, link);
            }
        }
        self.before_unload.clear();
        for s in &mut self.status {
            if super::probe_points::by_label(&s.probe).is_some_and(|p| p.in_type1) {
                self.before_unload.push(s.clone());
                s.state = ProbeState::ModuleNotLoaded;
                s.symbol = None;
                s.detail = None;
            }
        }
    }

    /// Leaves the points labelled `labels` off on purpose: their links go,
    /// their state becomes `NotNeeded` with `evidence` as detail, and the
    /// symbol stays for [`Probes::put_back`]. True when any was attached.
    pub fn set_aside(&mut self, labels: &[&str], evidence: &str) -> bool {
        let mut changed = false;
        for p in POINTS.iter().filter(|p| labels.contains(&p.label)) {
            let Some(s) = self.status.iter().position(|s| s.probe == p.label) else {
                continue;
            };
            if self.status[s].state != ProbeState::Attached {
                continue;
            }
            for name in [p.entry, p.ret].into_iter().flatten() {
                if let Some(link) = self.links.remove(&(p.probe, name)) {
                    self.detach_link(name, link);
                }
            }
            let s = &mut self.status[s];
            s.state = ProbeState::NotNeeded;
            s.detail = Some(evidence.into());
            changed = true;
        }
        changed
    }

    /// Attaches again, at the symbols they had, the points set aside.
    /// True when any was.
    pub fn put_back(&mut self) -> bool {
        let mut changed = false;
        for p in &POINTS {
            let Some(i) = self
                .status
                .iter()
                .position(|s| s.probe == p.label && s.state == ProbeState::NotNeeded)
            else {
                continue;
            };
            let symbol = self.status[i].symbol.clone().unwrap_or(p.function.into());
            let result = self.attach_point(p, &symbol);
            let s = &mut self.status[i];
            (s.state, s.detail) = match result {
                Ok(()) => (ProbeState::Attached, None),
                Err(e) => (ProbeState::Failed, Some(e)),
            };
            changed = true;
        }
        changed
    }

    /// After vfio_iommu_type1 loads for the first time: attaches each type1
    /// point at its function's name or a usual clone suffix, letting the
    /// kernel resolve the name, instead of reading all of /proc/kallsyms
    /// (seconds on a slow machine) before the first pin is missed. Points
    /// found under none of them are marked missing; true when there are
    /// such, which the caller then checks against /proc/kallsyms.
    pub fn attach_type1_by_name(&mut self) -> bool {
        const SUFFIXES: [&str; 4] = ["", ".part.0", ".isra.0", ".constprop.0"];
        let mut unsure = false;
        for p in POINTS.iter().filter(|p| p.in_type1) {
            let found = SUFFIXES
                .iter()
                .map(|s| format!("{}{s}", p.function))
                .find(|sym| self.attach_point(p, sym).is_ok());
            unsure |= found.is_none();
            if let Some(s) = self.status.iter_mut().find(|s| s.probe == p.label) {
                s.state = if found.is_some() {
                    ProbeState::Attached
                } else {
                    ProbeState::Missing
                };
                s.detail = found.is_none().then(|| {
                    "no function by this name or a usual clone of it: inlined into its callers or absent".into()
                });
                s.symbol = found;
            }
        }
        unsure
    }

    /// After vfio_iommu_type1 loads again: puts every type1 point back as it
    /// was before the unload, attaching at the same symbols. False when any
    /// of them would not attach (another build of the module): resolve afresh.
    pub fn reattach_type1(&mut self) -> bool {
        let before = std::mem::take(&mut self.before_unload);
        if before.is_empty() {
            return false;
        }
        for b in &before {
            let Some(p) = super::probe_points::by_label(&b.probe) else {
                return false;
            };
            let restored = match (b.state, &b.symbol) {
                (ProbeState::Attached, Some(sym)) => {
                    if self.attach_point(p, sym).is_err() {
                        return false;
                    }
                    b.clone()
                }
                // Missing or untraceable before: the same module, the same answer.
                (ProbeState::Missing | ProbeState::NotTraceable, _) => b.clone(),
                _ => return false,
            };
            if let Some(s) = self.status.iter_mut().find(|s| s.probe == b.probe) {
                *s = restored;
            }
        }
        true
    }

    pub fn status(&self) -> &[ProbeStatus] {
        &self.status
    }

    /// Sums the per-CPU counters; `settled` re-reads the misses whatever
    /// the hits say (the last line).
    ///
    /// The counters are stamped once they are read. A record takes its time
    /// after its hit is counted, so the drain that passes the stamp has
    /// handed on the events of every hit counted here, except a run of
    /// zero-page pins still held (written by its ioctl's return at the
    /// latest). Stamped before the read, a 7.3 lab guest's agent, preempted
    /// between stamp and read, published a workload's 139 type1 pins with
    /// none of their events.
    pub fn counters(&mut self, settled: bool) -> Counters {
        // One block per CPU; a failed read leaves every counter at 0.
        let blocks = self.counters.get(&0, 0).ok();
        let get = |i: u32| -> u64 {
            blocks
                .as_ref()
                .map_or(0, |b| b.iter().map(|c| c[i as usize]).sum())
        };
        let mut hits = BTreeMap::new();
        let mut drops = BTreeMap::new();
        for p in &POINTS {
            hits.insert(p.label.to_string(), get(counter::HITS + p.probe as u32));
            drops.insert(p.label.to_string(), get(counter::DROPS + p.probe as u32));
        }
        debug_assert_eq!(hits.len(), PROBE_COUNT);
        let total: u64 = hits.values().sum();
        let misses = match &self.misses {
            Some((h, at, m)) if !settled && *h == total && at.elapsed() < MISSES_STALE => m.clone(),
            _ => {
                let m = self.read_misses();
                self.misses = Some((total, std::time::Instant::now(), m.clone()));
                m
            }
        };
        Counters {
            t_ns: super::monotonic_ns(),
            hits,
            drops,
            misses,
            totals: Totals {
                gup_zero_pinned: get(counter::GUP_ZERO_PINNED),
                gup_zero_unpinned: get(counter::GUP_ZERO_UNPINNED),
                gup_huge_zero_pinned: get(counter::GUP_HUGE_ZERO_PINNED),
                gup_huge_zero_unpinned: get(counter::GUP_HUGE_ZERO_UNPINNED),
                type1_zero_pinned: get(counter::TYPE1_ZERO_PINNED),
                type1_pinned: get(counter::TYPE1_PINNED),
                type1_unpinned: get(counter::TYPE1_UNPINNED),
                lock_acct_charged: get(counter::LOCK_ACCT_CHARGED),
                lock_acct_uncharged: get(counter::LOCK_ACCT_UNCHARGED),
                unmatched_returns: get(counter::UNMATCHED_RETURNS),
            },
            zero_refcount: None,
            last: false,
        }
    }

    /// Return probes that found no free instance (kprobe_profile "misses").
    fn read_misses(&self) -> BTreeMap<String, u64> {
        let mut misses = BTreeMap::new();
        if let Some(t) = &self.tracefs {
            let profile = retprobe::read_profile(t);
            for ((probe, _), link) in &self.links {
                if let Link::Trace(tr) = link
                    && let Some((_, m)) = profile.get(tr.event())
                {
                    *misses
                        .entry(super::probe_points::point(*probe).label.to_string())
                        .or_insert(0) += m;
                }
            }
        }
        misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_is_stable() {
        assert_eq!(build_id(), build_id());
        assert_eq!(build_id().len(), 12);
    }
}
