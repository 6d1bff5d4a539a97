//! A live session: preflight, probe set-up, then the event loop that turns
//! ring-buffer records into [`Line`]s for whichever output consumes them.
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, info, warn};

use super::drain::{Budget, DRAIN_BUDGET, Drained, FINAL_DRAIN_BUDGET, Stamped, drain};
use crate::error::Fatal;
use crate::probes::{
    self, btf,
    kallsyms::Kallsyms,
    kcore::ZeroRefcount,
    pins, preflight, probe_points,
    programs::{self, Probes},
    tracefs, zero_page,
};
use crate::source::Decoder;
use crate::source::resolve::Resolver;
use crate::stream::line::{GUP_UNPIN_PROBES, ProbesChanged};
use crate::stream::{Header, Line, ProbeState, ProbeStatus};

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Every probe point must attach, or fail.
    pub strict: bool,
    /// Fail instead of starting without vfio_iommu_type1 loaded.
    pub no_wait: bool,
    /// Keep the counters and ring buffer pinned under this bpffs directory
    /// (see [`pins`]); `None` for maps that die with the process.
    pub pin_root: Option<std::path::PathBuf>,
    /// Drop this build's own pinned maps first.
    pub fresh: bool,
    /// Ring buffer size in bytes (None: the built-in 4 MiB).
    pub ring_bytes: Option<u32>,
}

pub struct Session {
    probes: Probes,
    ring: AsyncFd<RingBuf<MapData>>,
    decoder: Decoder,
    resolver: Resolver,
    refcount: Option<ZeroRefcount>,
    /// The vfio_iommu_type1 load the type1 probes are attached to
    /// (preflight::type1_instance), None while it is not loaded.
    type1: Option<u64>,
    /// Ticks left to retry type1 points that failed to attach right after
    /// the module loaded (it may still be initialising).
    type1_retries: u32,
    /// Type1 points attached by name that found no symbol: checked against
    /// /proc/kallsyms on the next module tick.
    type1_verify: bool,
    pub header: Header,
    /// Where the maps are pinned, what was reused and what was stale.
    pub pins: Option<pins::PinDir>,
    /// The probe set the model asks for, followed at every tick.
    pub wanted: Wanted,
}

/// The probe set the model asks for: set by the agent's runtime at each
/// counters line (`Model::unpins_not_needed`), followed by the session at
/// its next tick. `Some(evidence)` leaves the generic GUP unpin probes off.
/// Shared because the runtime holds the sink while the session runs.
#[derive(Clone, Debug, Default)]
pub struct Wanted(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl Wanted {
    pub fn set(&self, unpins_not_needed: Option<String>) {
        if let Ok(mut w) = self.0.lock() {
            *w = unpins_not_needed;
        }
    }

    fn unpins_not_needed(&self) -> Option<String> {
        self.0.lock().ok().and_then(|w| w.clone())
    }
}

const POLL: Duration = Duration::from_millis(500);

/// How late the event loop's 500 ms tick runs, process-wide: what a scrape
/// storm or a slow sink would cost the event path shows here first.
/// Exported as `vfio_zp_event_loop_lag_seconds`.
pub static LOOP_LAG: std::sync::LazyLock<prometheus::Histogram> = std::sync::LazyLock::new(|| {
    prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(
            "vfio_zp_event_loop_lag_seconds",
            "How late the agent's 500 ms event-loop tick ran.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5,
        ]),
    )
    .expect("valid histogram")
});
/// How often /sys/module is looked at for vfio_iommu_type1 (one stat): a
/// reload is re-attached well inside 2 s of the load. The ring buffer is
/// drained on the same tick: the probes wake the agent only when an eighth
/// of the ring is unread, so a trickle of events waits at most this long.
const MODULE_POLL: Duration = Duration::from_millis(100);
/// Unchanged counters are written again after this long: a heartbeat that
/// keeps /healthz and the published snapshot fresh on an idle host.
const HEARTBEAT: Duration = Duration::from_secs(5);

impl Session {
    pub async fn start(opts: &Options) -> anyhow::Result<Session> {
        Self::start_with(opts, Decoder::default()).await
    }

    /// Starts with `decoder` (one restored from the agent's state, or a
    /// journaled one, whose id steps come out as [`Line::Ids`]).
    pub async fn start_with(opts: &Options, decoder: Decoder) -> anyhow::Result<Session> {
        preflight::check_privileges()?;
        preflight::check_btf()?;
        preflight::check_kprobes()?;
        if !preflight::type1_loaded() {
            if opts.no_wait {
                return Err(Fatal::Type1NotLoaded(" and --no-wait was given".into()).into());
            }
            // Everything else loads and attaches now, so the type1 probes
            // attach within a module poll of the load (watch_module).
            warn!(
                "vfio_iommu_type1 is not loaded: its probes attach when it loads (--no-wait to fail instead)"
            );
        }
        debug!("reading struct page layout from BTF");
        let layout = btf::read_page_layout().map_err(|e| Fatal::NoBtf(format!("{e:#}")))?;
        debug!(?layout, "finding the zero page");
        let zero_pfn = zero_page::zero_pfn_from_pagemap()
            .map_err(|e| Fatal::Privileges(format!("cannot find the zero page's pfn: {e:#}")))?;
        let syms = Kallsyms::read(probe_points::wanted_symbol)
            .map_err(|e| Fatal::Privileges(format!("/proc/kallsyms: {e}")))?;
        if syms.addresses_hidden {
            return Err(Fatal::Privileges(preflight::hidden_addresses()).into());
        }
        debug!("loading the probes (verifier)");
        let config = zero_page::config(&syms, layout, zero_pfn);
        let refcount = ZeroRefcount::open(
            zero_pfn,
            config.vmemmap_base_addr,
            config.vmemmap_const,
            layout,
        )
        .inspect_err(|e| {
            info!(
                "zero page refcount via /proc/kcore unavailable ({e:#}); using the probes' readings"
            )
        })
        .ok();
        let pins = opts.pin_root.as_deref().and_then(|root| {
            let ring = opts.ring_bytes.unwrap_or(pins::DEFAULT_RING_BYTES);
            pins::prepare(root, &programs::build_id(), opts.fresh, ring)
                .inspect_err(|e| warn!("maps not pinned ({e}): counters restart with the agent"))
                .ok()
        });
        if let Some(p) = &pins {
            match p.reused.len() {
                0 => info!("maps pinned under {}", p.dir.display()),
                _ => info!(
                    "reusing pinned maps {} under {}: counters and unread events carry over",
                    p.reused.join(", "),
                    p.dir.display()
                ),
            }
        }
        let mut probes = Probes::load(
            config,
            pins.as_ref().map(|p| p.dir.as_path()),
            opts.ring_bytes,
        )?;
        debug!("attaching");
        let type1 = preflight::type1_instance();
        let type1_loaded = type1.is_some();
        let status = probes
            .attach(
                &syms,
                tracefs::read_filter_functions().as_ref(),
                type1_loaded,
            )
            .to_vec();
        report_coverage(&status);
        if opts.strict {
            let bad: Vec<_> = status
                .iter()
                // A module not loaded yet is no failure: its probes attach
                // when it loads.
                .filter(|s| !matches!(s.state, ProbeState::Attached | ProbeState::ModuleNotLoaded))
                .map(|s| format!("{} ({:?})", s.function, s.state))
                .collect();
            if !bad.is_empty() {
                return Err(Fatal::Strict(format!(
                    "probe points not attached: {}",
                    bad.join(", ")
                ))
                .into());
            }
        }
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd lives.
        let ring =
            unsafe { AsyncFd::register_with_interest(probes.take_events()?, Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("ring buffer: {}", e.into_parts().1))?;
        let header = Header {
            format: crate::stream::line::FORMAT.into(),
            version: crate::stream::line::VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: probes::release(),
            kernel_version: probes::version(),
            // Never the real pfn: it gives away where physical KASLR put the
            // kernel. The probes classify pages; replay needs no pfn.
            zero_pfn: 0,
            struct_page_size: layout.size,
            refcount_offset: layout.refcount_offset,
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            started_t_ns: probes::monotonic_ns(),
            probes: status,
        };
        // Evidence of how GUP counts the zero page on every kernel, even
        // one whose type1 never pins it (probes/provoke.rs).
        if header
            .probes
            .iter()
            .any(|s| s.probe == "gup_pin_remote" && s.state == ProbeState::Attached)
            && let Err(e) = crate::probes::provoke::pin_zero_pages()
        {
            warn!("could not pin zero pages to see how this kernel counts them: {e:#}");
        }
        Ok(Session {
            probes,
            ring,
            decoder,
            resolver: Resolver::default(),
            refcount,
            type1,
            type1_retries: 0,
            type1_verify: false,
            header,
            pins,
            wanted: Wanted::default(),
        })
    }

    /// Runs until `stop` resolves, handing every line to `sink`. Ends with a
    /// final drain and a `last` counters line, so nothing already in the
    /// ring buffer is lost on a clean stop.
    pub async fn run(
        &mut self,
        mut sink: impl FnMut(Line) -> anyhow::Result<()>,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(POLL);
        let mut module_tick = tokio::time::interval(MODULE_POLL);
        // A late loop runs one tick, not a burst of the ones it missed.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        module_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_counters = None;
        let mut last_sent = std::time::Instant::now();
        // Lines stamped by the agent (counters, probe changes) wait here
        // until the drain passes their time: events stamped before them may
        // still be in the ring when one drain's budget runs out.
        let mut stamped = Stamped::default();
        // Events handed on since the last counters line: the next tick
        // writes one even if no counter moved (a held run's record comes
        // after its hits), so a snapshot never waits for the heartbeat to
        // show them.
        let fresh = std::sync::atomic::AtomicBool::new(false);
        let mut sink = |line: Line| {
            if matches!(line, Line::Event(_)) {
                fresh.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            sink(line)
        };
        loop {
            tokio::select! {
                _ = &mut stop => break,
                guard = self.ring.readable_mut() => {
                    let mut guard = guard?;
                    let drained = drain(
                        guard.get_inner_mut(),
                        &mut self.decoder,
                        &mut self.resolver,
                        &mut sink,
                        &mut stamped,
                        DRAIN_BUDGET,
                    )?;
                    // Still readable when the budget ran out: the next turn
                    // drains on, after whichever tick is due.
                    if drained == Drained::Empty {
                        guard.clear_ready();
                    }
                }
                _ = module_tick.tick() => {
                    self.watch_module(&mut |line| {
                        stamped.push(line);
                        Ok(())
                    })?;
                    self.drain_ring(&mut sink, &mut stamped, DRAIN_BUDGET)?;
                }
                due = tick.tick() => {
                    LOOP_LAG.observe(due.elapsed().as_secs_f64());
                    self.probes.flush_log();
                    self.follow_wanted(&mut |line| {
                        stamped.push(line);
                        Ok(())
                    })?;
                    // One counters line at a time: read at T, written once
                    // the drain has passed every event stamped before T.
                    if !stamped.holds_counters() {
                        let c = self.counters(false);
                        let key = (c.hits.clone(), c.drops.clone(), c.zero_refcount);
                        if last_counters.as_ref() != Some(&key)
                            || fresh.swap(false, std::sync::atomic::Ordering::Relaxed)
                            || last_sent.elapsed() >= HEARTBEAT
                        {
                            last_counters = Some(key);
                            last_sent = std::time::Instant::now();
                            stamped.push(Line::Counters(c));
                        }
                    }
                    self.drain_ring(&mut sink, &mut stamped, DRAIN_BUDGET)?;
                }
            }
        }
        if self.drain_ring(&mut sink, &mut stamped, FINAL_DRAIN_BUDGET)? == Drained::More {
            warn!(
                "stopped with events still arriving: the rest stay in the ring buffer (kept for the next agent when the maps are pinned)"
            );
        }
        stamped.flush(&mut sink)?;
        self.probes.flush_log();
        let mut c = self.counters(true);
        c.last = true;
        sink(Line::Counters(c))
    }

    fn counters(&mut self, settled: bool) -> crate::stream::Counters {
        let mut c = self.probes.counters(settled);
        c.zero_refcount = self.refcount.as_ref().and_then(|r| r.read().ok());
        c
    }

    fn drain_ring(
        &mut self,
        sink: &mut impl FnMut(Line) -> anyhow::Result<()>,
        stamped: &mut Stamped,
        budget: Budget,
    ) -> anyhow::Result<Drained> {
        drain(
            self.ring.get_mut(),
            &mut self.decoder,
            &mut self.resolver,
            sink,
            stamped,
            budget,
        )
    }

    /// Re-attaches when vfio_iommu_type1 (re)loads, detaches when it goes.
    fn watch_module(
        &mut self,
        sink: &mut impl FnMut(Line) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let now = preflight::type1_instance();
        if now.is_some() && self.type1.is_some() && now != self.type1 {
            // Unloaded and loaded again between two polls (or while the
            // agent was stopped): the probes went with the old module.
            warn!(
                "vfio_iommu_type1 was reloaded between two looks at /sys/module: re-attaching its probes"
            );
            self.probes.detach_type1();
            self.type1 = None;
        }
        let loaded = now.is_some();
        if loaded && self.type1.is_some() && std::mem::take(&mut self.type1_verify) {
            return self.resolve_type1(sink);
        }
        if loaded == self.type1.is_some() {
            let failed = self.probes.status().iter().any(|s| {
                s.state == ProbeState::Failed
                    && probe_points::by_label(&s.probe).is_some_and(|p| p.in_type1)
            });
            if !(loaded && failed && self.type1_retries > 0) {
                return Ok(());
            }
            self.type1_retries -= 1;
            info!("retrying the type1 probes that failed to attach");
            return self.resolve_type1(sink);
        }
        self.type1 = now;
        self.type1_retries = 3;
        if loaded {
            info!("vfio_iommu_type1 loaded: attaching its probes");
            let t = std::time::Instant::now();
            // Its symbols are in kallsyms before /sys/module shows it; an
            // attach that still fails is retried on the next ticks.
            if self.probes.reattach_type1() {
                info!(
                    "vfio_iommu_type1 probes re-attached at their previous symbols {:.0?} after the load was seen",
                    t.elapsed()
                );
            } else {
                self.type1_verify = self.probes.attach_type1_by_name();
                info!(
                    "vfio_iommu_type1 probes attached by name {:.0?} after the load was seen{}",
                    t.elapsed(),
                    if self.type1_verify {
                        "; the ones not found are checked against /proc/kallsyms next"
                    } else {
                        ""
                    }
                );
            }
        } else {
            warn!("vfio_iommu_type1 unloaded: its probes are detached until it returns");
            self.probes.detach_type1();
        }
        self.announce(sink)
    }

    /// Leaves the generic unpin probes off, or puts them back, as the
    /// model asks (`wanted`), announcing the change.
    fn follow_wanted(
        &mut self,
        sink: &mut impl FnMut(Line) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let off = self
            .probes
            .status()
            .iter()
            .any(|s| s.state == ProbeState::NotNeeded);
        let changed = match self.wanted.unpins_not_needed() {
            Some(evidence) if !off => self.probes.set_aside(&GUP_UNPIN_PROBES, &evidence),
            None if off => {
                warn!("the zero-page unpin probes are needed again: attaching them");
                self.probes.put_back()
            }
            _ => false,
        };
        if changed {
            self.announce(sink)?;
        }
        Ok(())
    }

    /// Attaches the points not attached yet at symbols read from kallsyms.
    fn resolve_type1(
        &mut self,
        sink: &mut impl FnMut(Line) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let syms = Kallsyms::read(probe_points::wanted_symbol)?;
        self.probes
            .attach(&syms, tracefs::read_filter_functions().as_ref(), true);
        self.announce(sink)
    }

    /// Logs the coverage and hands it on as a `probes` line.
    fn announce(&self, sink: &mut impl FnMut(Line) -> anyhow::Result<()>) -> anyhow::Result<()> {
        report_coverage(self.probes.status());
        sink(Line::Probes(ProbesChanged {
            t_ns: probes::monotonic_ns(),
            probes: self.probes.status().to_vec(),
        }))
    }
}

/// One log line per point that is not attached: which, why, what is lost.
pub fn report_coverage(status: &[ProbeStatus]) {
    let attached = status
        .iter()
        .filter(|s| s.state == ProbeState::Attached)
        .count();
    info!("probes: {attached}/{} attached", status.len());
    let off: Vec<&ProbeStatus> = status
        .iter()
        .filter(|s| s.state == ProbeState::NotNeeded)
        .collect();
    if let Some(first) = off.first() {
        let names: Vec<&str> = off.iter().map(|s| s.probe.as_str()).collect();
        info!(
            "probes left off, not needed: {}: {}",
            names.join(", "),
            first.detail.as_deref().unwrap_or("")
        );
    }
    for s in status
        .iter()
        .filter(|s| !matches!(s.state, ProbeState::Attached | ProbeState::NotNeeded))
    {
        let why = s.detail.as_deref().unwrap_or("");
        warn!(
            "probe {} ({}) {:?} {why}; lost: {}",
            s.probe, s.function, s.state, s.loses
        );
    }
}
