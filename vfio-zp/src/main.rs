use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Args, CommandFactory, Parser, Subcommand};
use tracing::info;
use vfio_zp::{
    error::{EXIT_CODES, Fatal, report},
    event::{PageClass, What},
    model::{Config, Model, verdict::Leak},
    record::{Line, Writer, stream_path},
    session::{Options, Session},
    snapshot::{Expiry, Snapshot},
};

/// Watch VFIO type1 pin the kernel's shared zero page.
///
/// vfio-zp puts kprobes on the VFIO type1 IOMMU driver's pin and unpin paths
/// and on the kernel's pin_user_pages*/unpin_user_page* and follows every
/// zero-page pin, unpin and locked_vm charge, attributed to its process,
/// cgroup (VM, pod) and VFIO container. A model of type1's accounting turns
/// the stream into verdicts: zero-page pins leaked per container (kernels
/// without 873aefb leak 1024 references per pin until the refcount
/// overflows), the refcount headroom, and whether each process would
/// exceed RLIMIT_MEMLOCK on a kernel that charges zero-page-backed DMA.
///
/// Live commands need root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN), kernel
/// BTF and kprobes; `replay` needs nothing but a recording.
#[derive(Parser)]
#[command(version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log filter (tracing syntax), e.g. `debug` or `vfio_zp=trace`.
    #[arg(long, global = true, env = "VFIO_ZP_LOG", default_value = "info", value_parser = log_filter)]
    log: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the probes, serve the verdicts as Prometheus metrics, log leak
    /// verdicts and kernel behaviour as they change (each zero-page event
    /// too at debug level), and print the verdicts when stopped
    /// (SIGINT/SIGTERM).
    ///
    /// Endpoints: /metrics (Prometheus text format), /healthz, and
    /// /api/v1/snapshot (the verdicts, probe coverage and counters as JSON,
    /// what `vfio-zp top` reads).
    Agent {
        #[command(flatten)]
        probes: ProbeArgs,
        /// Where to serve /metrics, /healthz and /api/v1/snapshot: HOST:PORT
        /// (an address or a name), or :PORT for every IPv4 address; port 0
        /// picks a free one (logged). Loopback by default; anything else
        /// exposes them to the network. `systemd` takes the socket systemd
        /// passes (deploy/systemd/vfio-zp.socket).
        #[arg(long, value_name = "ADDR:PORT", default_value = vfio_zp::serve::DEFAULT_LISTEN, value_parser = vfio_zp::serve::listen_spec)]
        listen: String,
        /// Forget closed containers' metric series after this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        expire_after: Duration,
        /// Log every event at info level (default: zero-page events at
        /// debug level only).
        #[arg(long)]
        all_events: bool,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Write the event stream to FILE as JSON lines (format: docs/recording.md).
    ///
    /// The header line is written once the probes are attached, so a
    /// non-empty file means recording has begun. Stops on SIGINT/SIGTERM or
    /// after --duration, then writes the final exact counters.
    Record {
        /// Output file (`-` for standard output).
        #[arg(short, long)]
        output: PathBuf,
        /// Stop after this long (e.g. `30s`, `5m`).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Also print each event as a readable line on standard error.
        #[arg(long)]
        print: bool,
        /// When stopped, write the live verdicts here as JSON (what
        /// `replay --json` of the recording prints).
        #[arg(long, value_name = "FILE")]
        verdicts: Option<PathBuf>,
        /// Also serve /metrics, /healthz and /api/v1/snapshot here while
        /// recording (as `agent --listen`).
        #[arg(long, value_name = "ADDR:PORT", value_parser = vfio_zp::serve::listen_spec)]
        listen: Option<String>,
        /// With --listen: forget closed containers' metric series after
        /// this long (as `agent --expire-after`).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m", requires = "listen")]
        expire_after: Duration,
        /// Replace existing output files (-o, --verdicts), each in one
        /// rename once it is written. Without it an existing file is kept
        /// and nothing starts.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        probes: ProbeArgs,
    },
    /// A live view of the containers, their zero-page pins, leaks and
    /// memlock headroom.
    ///
    /// Reads a running agent's /api/v1/snapshot; when none answers at the
    /// default address, loads the probes itself (root needed). Keys: s
    /// sort, / filter, ? help, q quit.
    Top {
        /// The agent to read (its --listen address). Default: the agent's
        /// default address, falling back to loading the probes here.
        #[arg(long, value_name = "ADDR:PORT")]
        agent: Option<String>,
        /// Load the probes here instead of reading an agent.
        #[arg(long, conflicts_with = "agent")]
        local: bool,
        /// Print the table once (after two samples, for the rates) and exit.
        #[arg(long)]
        once: bool,
        /// Print the snapshot once as JSON and exit.
        #[arg(long, conflicts_with = "once")]
        json: bool,
        /// Refresh interval (and the sampling gap of --once).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        interval: Duration,
        #[command(flatten)]
        probes: ProbeArgs,
    },
    /// Check whether this host can run the agent, and with what coverage.
    ///
    /// Privileges, BTF, kprobes, the zero page's identity, kallsyms and
    /// tracefs, vfio_iommu_type1, every probe point (resolved, inlined or
    /// missing, and what each loss costs), the verdicts that remain
    /// certain, the kernel behaviour priors, and (unless --quick) whether
    /// the verifier accepts the probes. Exit code 0 ok, 1 degraded,
    /// 3 unusable (2 is a usage error).
    Check {
        /// Skip loading the probes through the verifier.
        #[arg(long)]
        quick: bool,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print a man page (roff) to standard output, or write them all.
    #[command(hide = true)]
    Man {
        /// The subcommand whose page to print (default: the main page).
        subcommand: Option<String>,
        /// Write every page (vfio-zp.1, vfio-zp-agent.1, ...) into DIR.
        #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
        out_dir: Option<PathBuf>,
    },
    /// Run a recording through the model and print its verdicts.
    ///
    /// Deterministic: the verdicts are those the live agent reached at the
    /// recording's last line. Errors name the file, line and reason.
    Replay {
        /// A recording from `vfio-zp record` (`-` for standard input).
        file: PathBuf,
        /// Print the verdicts as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What lets a restarted agent go on where the last one stopped.
#[derive(Args)]
struct StateArgs {
    /// Where the agent keeps its model across restarts (a checkpoint and a
    /// journal; per boot, so /run suits it).
    #[arg(long, value_name = "DIR", default_value = "/run/vfio-zp")]
    state_dir: PathBuf,
    /// The bpffs directory where the exact counters and the ring buffer
    /// stay pinned between runs (one subdirectory per build; other builds'
    /// pins are removed).
    #[arg(long, value_name = "DIR", default_value = vfio_zp::kernel::pins::ROOT)]
    pin_dir: PathBuf,
    /// Keep nothing across restarts: no pinned maps, no state directory.
    #[arg(long, conflicts_with = "fresh")]
    no_state: bool,
    /// Start afresh: discard the kept state and this build's pinned maps.
    #[arg(long)]
    fresh: bool,
    /// Fold the journal into a new checkpoint once it reaches this size.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    journal_max_mib: u64,
}

#[derive(Args)]
struct ProbeArgs {
    /// Fail if any probe point cannot be attached (default: report it and go on).
    #[arg(long)]
    strict: bool,
    /// Fail at once if vfio_iommu_type1 is not loaded (default: start, and
    /// attach its probes as soon as it loads).
    #[arg(long)]
    no_wait: bool,
    /// Size of the probes' ring buffer in KiB: a power of two from 4 (one
    /// page) to 1048576. Events that find it full are dropped and counted
    /// (vfio_zp_events_lost_total); the verdicts they touch say uncertain.
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = ring_kib)]
    ring_buffer_kib: u32,
}

fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e} (e.g. `info`, `debug`, `vfio_zp=trace`)"))
}

/// The man pages: the main one, one subcommand's, or all into a directory
/// (the main page's SEE ALSO names the subcommands' pages).
fn man(subcommand: Option<&str>, out_dir: Option<&std::path::Path>) -> ExitCode {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    if let Some(dir) = out_dir {
        let written = std::fs::create_dir_all(dir).and_then(|_| clap_mangen::generate_to(cmd, dir));
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report(
                &Fatal::Output {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                }
                .into(),
            ),
        };
    }
    let page = match subcommand {
        None => cmd,
        Some(name) => match cmd.find_subcommand(name).filter(|c| !c.is_hide_set()) {
            Some(c) => c.clone(),
            None => {
                return report(
                    &Fatal::Input(format!("no subcommand `{name}` (see vfio-zp --help)")).into(),
                );
            }
        },
    };
    let mut out = Vec::new();
    if let Err(e) = clap_mangen::Man::new(page).render(&mut out) {
        return report(&e.into());
    }
    exit_after(
        print_stdout(&String::from_utf8_lossy(&out)),
        ExitCode::SUCCESS,
    )
}

fn ring_kib(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(4..=1 << 20).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two from 4 to 1048576"));
    }
    Ok(n)
}

impl ProbeArgs {
    fn options(&self) -> Options {
        Options {
            strict: self.strict,
            no_wait: self.no_wait,
            ring_bytes: Some(self.ring_buffer_kib << 10),
            ..Default::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vfio-zp", &mut out);
            return exit_after(
                print_stdout(&String::from_utf8_lossy(&out)),
                ExitCode::SUCCESS,
            );
        }
        Cmd::Man {
            subcommand,
            out_dir,
        } => return man(subcommand.as_deref(), out_dir.as_deref()),
        _ => {}
    }
    // `check` reports every finding itself; its exit code is its verdict.
    if let Cmd::Check { quick, json } = cli.cmd {
        let r = vfio_zp::check::run(!quick);
        let printed = if json {
            print_stdout(&(serde_json::to_string_pretty(&r).unwrap_or_default() + "\n"))
        } else {
            print_stdout(&r.to_string())
        };
        return exit_after(printed, ExitCode::from(r.level.exit_code()));
    }
    // Checked by clap already (`log_filter`).
    let filter = tracing_subscriber::EnvFilter::new(&cli.log);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report(&e.into()),
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

async fn start(opts: &Options) -> anyhow::Result<Option<Session>> {
    start_with(opts, vfio_zp::ingest::Decoder::default()).await
}

async fn start_with(
    opts: &Options,
    decoder: vfio_zp::ingest::Decoder,
) -> anyhow::Result<Option<Session>> {
    let s = tokio::select! {
        s = Session::start_with(opts, decoder) => s.map(Some)?,
        _ = shutdown() => None,
    };
    if s.is_some() {
        vfio_zp::kernel::privileges::drop_after_attach();
    }
    Ok(s)
}

fn touches_zero_page(what: &What) -> bool {
    match what {
        What::Type1Pin { base, .. } | What::Type1Unpin { base, .. } => {
            matches!(base, PageClass::Zero | PageClass::HugeZero)
        }
        What::PutPfn { .. } => true,
        What::GupPin {
            zero_pages,
            huge_zero_pages,
            ..
        }
        | What::GupUnpin {
            zero_pages,
            huge_zero_pages,
            ..
        } => zero_pages + huge_zero_pages > 0,
        _ => false,
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Agent {
            probes,
            all_events,
            listen,
            expire_after,
            state,
        } => {
            // Nothing is created or served by an agent that cannot probe.
            vfio_zp::kernel::preflight::check_privileges()?;
            let publish = listen_on(&listen, expire_after).await?;
            let (kept, restored) = open_state(&state);
            let decoder = match &restored {
                Some(r) => r.decoder.clone(),
                None => vfio_zp::ingest::Decoder::journaled(vfio_zp::kernel::random_u128()),
            };
            let mut opts = probes.options();
            if !state.no_state {
                opts.pin_root = Some(state.pin_dir.clone());
                opts.fresh = state.fresh;
            }
            let Some(mut s) = start_with(&opts, decoder.clone()).await? else {
                return Ok(());
            };
            info!(
                "agent running on {}; Ctrl-C to stop",
                s.header.kernel_release
            );
            let mut live = Live::new(&s.header);
            live.publish = Some(publish);
            live.keep(kept, restored, decoder, &s);
            s.run(
                |line| {
                    match &line {
                        Line::Event(e) if all_events => info!("{e}"),
                        // A VM start pins thousands of zero pages: one log
                        // line each only when asked (VFIO_ZP_LOG=debug).
                        Line::Event(e) if touches_zero_page(&e.what) => {
                            tracing::debug!("{e}")
                        }
                        Line::Counters(c) if c.drops.values().any(|d| *d > 0) => {
                            tracing::warn!("ring buffer full: events lost so far {:?}", c.drops)
                        }
                        _ => {}
                    }
                    live.apply(&line);
                    Ok(())
                },
                shutdown(),
            )
            .await?;
            live.checkpoint();
            print_stdout(&live.model.verdicts().to_string())?;
            Ok(())
        }
        Cmd::Record {
            output,
            duration,
            print,
            verdicts,
            listen,
            expire_after,
            force,
            probes,
        } => {
            // Both outputs are checked before the probes load, so a bad
            // path or a file in the way fails fast.
            vfio_zp::kernel::preflight::check_privileges()?;
            if let Some(path) = &verdicts {
                vfio_zp::outfile::check_free(path, force)?;
            }
            let (out, pending): (Box<dyn Write>, _) = if output.as_os_str() == "-" {
                (Box::new(std::io::stdout()), None)
            } else {
                let p = vfio_zp::outfile::Pending::new(&output, force)?;
                (Box::new(p.handle()?), Some(p))
            };
            let publish = match listen {
                Some(addr) => Some(listen_on(&addr, expire_after).await?),
                None => None,
            };
            let mut w = Writer::new(std::io::BufWriter::new(out));
            // A failed or cancelled start drops `pending`: its temporary
            // file goes, and whatever was at `output` stays as it was.
            let Some(mut s) = start(&probes.options()).await? else {
                return Ok(());
            };
            let io = |e: std::io::Error| Fatal::Output {
                path: output.display().to_string(),
                reason: e.to_string(),
            };
            w.write(&Line::Header(s.header.clone())).map_err(io)?;
            // The recording appears, header first, once recording began.
            if let Some(p) = pending {
                p.commit()?;
            }
            info!("recording to {}", output.display());
            let mut live = Live::new(&s.header);
            live.publish = publish;
            let stop = async {
                match duration {
                    Some(d) => {
                        tokio::select! { _ = tokio::time::sleep(d) => {}, _ = shutdown() => {} }
                    }
                    None => shutdown().await,
                }
            };
            let mut n = 0u64;
            s.run(
                |line| {
                    if let (true, Line::Event(e)) = (print, &line) {
                        eprintln!("{e}");
                    }
                    n += matches!(line, Line::Event(_)) as u64;
                    w.write(&line).map_err(io)?;
                    live.apply(&line);
                    Ok(())
                },
                stop,
            )
            .await?;
            w.flush().map_err(io)?;
            info!("recorded {n} events to {}", output.display());
            if let Some(path) = verdicts {
                let json = serde_json::to_string_pretty(&live.model.verdicts())?;
                vfio_zp::outfile::write(&path, force, (json + "\n").as_bytes())?;
            }
            Ok(())
        }
        Cmd::Replay { file, json } => replay(&file, json),
        Cmd::Check { .. } | Cmd::Completions { .. } | Cmd::Man { .. } => {
            unreachable!("handled before the runtime starts")
        }
        Cmd::Top {
            agent,
            local,
            once,
            json,
            interval,
            probes,
        } => top(agent, local, once, json, interval, probes).await,
    }
}

/// The model as the live agent runs it: fed every line, logging its
/// explanations and each container's leak verdict as it changes.
struct Live {
    model: Model,
    leak: std::collections::BTreeMap<u32, Leak>,
    behaviour: Vec<(bool, vfio_zp::model::behaviour::Source)>,
    probes: Vec<vfio_zp::record::ProbeStatus>,
    /// Where the agent publishes snapshots for its HTTP endpoints.
    publish: Option<(std::sync::Arc<vfio_zp::serve::Shared>, Expiry)>,
    /// The latest counters, for snapshots published between counters lines.
    counters: Option<vfio_zp::record::Counters>,
    /// The agent's state directory and a mirror of the session's decoder
    /// (fed the journaled id steps), checkpointed together with the model.
    kept: Option<(vfio_zp::state::State, vfio_zp::ingest::Decoder)>,
    continuity: Option<vfio_zp::snapshot::Continuity>,
    /// Whether the first refcount reading's unexplained pins were judged.
    unexplained_judged: bool,
}

/// Opens the state directory; trouble there costs continuity, never the agent.
fn open_state(
    a: &StateArgs,
) -> (
    Option<vfio_zp::state::State>,
    Option<vfio_zp::state::Restored>,
) {
    if a.no_state {
        return (None, None);
    }
    match vfio_zp::state::State::open(
        &a.state_dir,
        &vfio_zp::kernel::pins::build_id(),
        &vfio_zp::kernel::boot_id(),
        a.fresh,
        a.journal_max_mib << 20,
    ) {
        Ok((s, r)) => (Some(s), r),
        Err(e) => {
            tracing::warn!("no state kept across restarts: {e}");
            (None, None)
        }
    }
}

impl Live {
    fn new(header: &vfio_zp::record::Header) -> Live {
        Live {
            model: Model::new(header, Config::default()),
            leak: Default::default(),
            behaviour: Vec::new(),
            probes: header.probes.clone(),
            publish: None,
            counters: None,
            kept: None,
            continuity: None,
            unexplained_judged: false,
        }
    }

    /// Takes over what the last agent left (if anything) and checkpoints
    /// at once, so the kept state always matches this session's decoder.
    fn keep(
        &mut self,
        state: Option<vfio_zp::state::State>,
        restored: Option<vfio_zp::state::Restored>,
        decoder: vfio_zp::ingest::Decoder,
        s: &Session,
    ) {
        let mut c = vfio_zp::snapshot::Continuity::default();
        if let Some(p) = &s.pins {
            c.pinned_maps_reused = p.reused.clone();
            c.stale_builds_removed = p.stale_removed.clone();
        }
        if let Some(r) = restored {
            let header = &s.header;
            self.model = r.model;
            let down = header.started_t_ns.saturating_sub(r.last_t_ns);
            self.model.gap(r.last_t_ns, header.started_t_ns);
            self.model
                .apply(&Line::Probes(vfio_zp::record::format::ProbesChanged {
                    t_ns: header.started_t_ns,
                    probes: header.probes.clone(),
                }));
            for n in self.model.take_notes() {
                n.log();
            }
            c.restored = true;
            c.journal_lines_replayed = r.replayed;
            c.unwatched_s = Some(down as f64 / 1e9);
        }
        self.continuity = Some(c);
        self.kept = state.map(|st| (st, decoder));
        self.checkpoint();
    }

    fn checkpoint(&mut self) {
        if let Some((st, decoder)) = &mut self.kept
            && let Err(e) = st.checkpoint(&self.model, decoder)
        {
            tracing::warn!("checkpoint failed, nothing kept across restarts from now: {e}");
            self.kept = None;
        }
    }

    fn publish(&mut self, v: vfio_zp::model::verdict::Verdicts, c: &vfio_zp::record::Counters) {
        if let Some((shared, expiry)) = &mut self.publish {
            let mut snap = Snapshot::new(v, &self.probes, Some(c));
            snap.continuity = self.continuity.clone();
            expiry.apply(&mut snap);
            shared.publish(snap);
        }
    }

    fn apply(&mut self, line: &Line) {
        if let Some((st, decoder)) = &mut self.kept {
            if let Err(e) = st.append(line) {
                tracing::warn!("journal write failed, nothing kept across restarts from now: {e}");
                self.kept = None;
            } else if let Line::Ids(steps) = line {
                decoder.replay(&steps.ops);
            }
        }
        self.model.apply(line);
        for n in self.model.take_notes() {
            n.log();
        }
        if let Line::Probes(p) = line {
            self.probes = p.probes.clone();
            // Coverage changed (type1 unloaded or back): publish now, not at
            // the next counters line, so vfio_zp_probe_attached follows.
            if let Some(c) = self.counters.clone() {
                self.publish(self.model.verdicts(), &c);
            }
        }
        // Verdicts are worth computing at the counters' pace, not per event.
        if let Line::Counters(counters) = line {
            self.counters = Some(counters.clone());
            if self.kept.as_ref().is_some_and(|(st, _)| st.due()) {
                self.checkpoint();
            }
            let v = self.model.verdicts();
            self.publish(v.clone(), counters);
            if let (false, Some(n)) = (self.unexplained_judged, v.host.unexplained_pins) {
                self.unexplained_judged = true;
                if n > 0 {
                    let leak = v
                        .behaviour
                        .iter()
                        .any(|t| t.name == "gup_pins_zero_page" && t.value);
                    tracing::warn!(
                        "the zero page holds {n} pins' worth of references nobody vfio-zp saw take{}",
                        if leak {
                            ": on this kernel, most likely pins leaked before the agent started (vfio_zp_zero_page_unexplained_pins)"
                        } else {
                            " (another kernel user: this kernel's GUP takes no reference on it)"
                        }
                    );
                }
            }
            let now: Vec<_> = v.behaviour.iter().map(|t| (t.value, t.source)).collect();
            if now != self.behaviour {
                for (i, t) in v.behaviour.iter().enumerate() {
                    if self.behaviour.get(i) == Some(&(t.value, t.source)) {
                        continue;
                    }
                    info!(
                        "kernel behaviour {} = {} ({:?}: {})",
                        t.name, t.value, t.source, t.evidence
                    );
                    if let Some(c) = &t.contradiction {
                        tracing::warn!("kernel behaviour {}: {c}", t.name);
                    }
                }
                self.behaviour = now;
            }
            for c in v.containers {
                if self.leak.insert(c.id, c.leak) != Some(c.leak) && c.leak != Leak::None {
                    tracing::warn!(
                        "container {} ({}, {}[{}]): {:?}: {}",
                        c.id,
                        c.name,
                        c.comm,
                        c.tgid,
                        c.leak,
                        c.leak_reason
                    );
                }
            }
        }
    }
}

/// Binds the HTTP endpoints before the probes load, so a taken port fails
/// fast; the agent loop publishes into the returned state.
async fn listen_on(
    spec: &str,
    expire_after: Duration,
) -> anyhow::Result<(std::sync::Arc<vfio_zp::serve::Shared>, Expiry)> {
    let listener = vfio_zp::serve::bind(spec).await?;
    // The address bound, not the one asked for (port 0, a name).
    let addr = listener
        .local_addr()
        .map_or_else(|_| spec.to_string(), |a| a.to_string());
    let shared = std::sync::Arc::new(vfio_zp::serve::Shared::default());
    match vfio_zp::serve::raise_nofile() {
        Ok(n) => tracing::debug!("descriptor limit raised to {n}"),
        Err(e) => tracing::warn!("descriptor limit not raised: {e}"),
    }
    vfio_zp::serve::spawn(listener, shared.clone()).map_err(|e| Fatal::Listen {
        addr: addr.clone(),
        reason: e.to_string(),
    })?;
    info!("serving /metrics, /healthz and /api/v1/snapshot on http://{addr}");
    Ok((shared, Expiry::new(expire_after)))
}

/// Standard output may be a closed pipe (`| head`): the reader's choice,
/// not an error. Any other write error (a full disk, /dev/full) is one:
/// nothing written must not look like success.
fn stdout_written(r: std::io::Result<()>) -> Result<(), Fatal> {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Fatal::Output {
            path: "standard output".into(),
            reason: e.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `code` once the output was written, else the write error's.
fn exit_after(printed: Result<(), Fatal>, code: ExitCode) -> ExitCode {
    match printed {
        Ok(()) => code,
        Err(e) => report(&e.into()),
    }
}

fn print_stdout(text: &str) -> Result<(), Fatal> {
    let mut out = std::io::stdout().lock();
    stdout_written(out.write_all(text.as_bytes()).and_then(|_| out.flush()))
}

fn replay(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let bad = |e: vfio_zp::record::ReadError| Fatal::Input(e.to_string());
    let verdicts = if file.as_os_str() == "-" {
        let s = vfio_zp::record::Stream::new(std::io::stdin().lock(), "<stdin>").map_err(bad)?;
        run_model(s, "<stdin>")?
    } else {
        run_model(stream_path(file).map_err(bad)?, &file.display().to_string())?
    };
    // Written straight to stdout: with thousands of containers the text
    // would double the peak memory.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &verdicts)
            .map_err(std::io::Error::from)
            .and_then(|_| out.write_all(b"\n"))
    } else {
        write!(out, "{verdicts}")
    };
    stdout_written(written.and_then(|_| out.flush()))?;
    Ok(())
}

fn run_model<R: std::io::BufRead>(
    mut s: vfio_zp::record::Stream<R>,
    name: &str,
) -> anyhow::Result<vfio_zp::model::verdict::Verdicts> {
    let mut m = Model::new(&s.header, Config::default());
    for line in s.by_ref() {
        m.apply(&line.map_err(|e| Fatal::Input(e.to_string()))?);
        m.take_notes();
    }
    if let Some(n) = s.cut_at() {
        eprintln!(
            "vfio-zp: warning: {name}:{n}: the last line is cut short (the recorder stopped mid-write); these are the verdicts of the lines before it"
        );
    }
    Ok(m.verdicts())
}

async fn top(
    agent: Option<String>,
    local: bool,
    once: bool,
    json: bool,
    interval: Duration,
    probes: ProbeArgs,
) -> anyhow::Result<()> {
    use vfio_zp::top::{Source, tui, view};
    let explicit = agent.is_some();
    let url = format!(
        "http://{}/api/v1/snapshot",
        agent.unwrap_or_else(|| vfio_zp::serve::DEFAULT_LISTEN.into())
    );
    let mut source = Source::Agent(url.clone());
    let mut session = None;
    // Nothing else runs yet: a blocking probe of the agent is fine here.
    if local || source.fetch().is_err() {
        if explicit {
            // Said which agent to read: its failure is the answer.
            source.fetch()?;
        }
        if !local {
            info!("no agent answers at {url}; loading the probes here");
        }
        let Some(mut s) = start(&probes.options()).await? else {
            return Ok(());
        };
        let shared = std::sync::Arc::new(vfio_zp::serve::Shared::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut live = Live::new(&s.header);
        live.publish = Some((shared.clone(), Expiry::new(Duration::from_secs(600))));
        session = Some((
            tokio::spawn(async move {
                s.run(
                    move |line| {
                        live.apply(&line);
                        Ok(())
                    },
                    async move {
                        let _ = stop_rx.await;
                    },
                )
                .await
            }),
            stop_tx,
        ));
        source = Source::Local(shared);
    }
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let first = || -> anyhow::Result<vfio_zp::snapshot::Snapshot> {
            for _ in 0..600 {
                if let Some(s) = source.fetch()? {
                    return Ok(s);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            anyhow::bail!("no snapshot within a minute")
        };
        if json {
            print_stdout(&(serde_json::to_string_pretty(&first()?)? + "\n"))?;
        } else if once {
            let mut v = view::View::default();
            v.rows(&first()?);
            std::thread::sleep(interval);
            let s = first()?;
            print_stdout(&view::text(&view::header(&s), &v.rows(&s)))?;
        } else {
            tui::run(&source, interval)?;
        }
        Ok(())
    })
    .await?;
    if let Some((task, stop)) = session {
        let _ = stop.send(());
        task.await??;
    }
    result
}
