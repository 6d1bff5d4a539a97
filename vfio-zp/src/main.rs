use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use tracing::info;
use vfio_zp::{
    error::{EXIT_CODES, Fatal, report},
    event::{PageClass, What},
    model::{Config, Model, verdict::Leak},
    record::{Line, Writer, stream_path},
    session::{Options, Session},
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
    #[arg(long, global = true, env = "VFIO_ZP_LOG", default_value = "info")]
    log: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the probes, log zero-page activity and leak verdicts as they
    /// happen, and print the verdicts when stopped (SIGINT/SIGTERM).
    Agent {
        #[command(flatten)]
        probes: ProbeArgs,
        /// Print every event, not only the ones touching a zero page.
        #[arg(long)]
        all_events: bool,
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
        #[command(flatten)]
        probes: ProbeArgs,
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

#[derive(Args)]
struct ProbeArgs {
    /// Fail if any probe point cannot be attached (default: report it and go on).
    #[arg(long)]
    strict: bool,
    /// Fail at once if vfio_iommu_type1 is not loaded (default: wait for it).
    #[arg(long)]
    no_wait: bool,
}

impl ProbeArgs {
    fn options(&self) -> Options {
        Options {
            strict: self.strict,
            no_wait: self.no_wait,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    tokio::select! {
        s = Session::start(opts) => s.map(Some),
        _ = shutdown() => Ok(None),
    }
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
        Cmd::Agent { probes, all_events } => {
            let Some(mut s) = start(&probes.options()).await? else {
                return Ok(());
            };
            info!(
                "agent running on {}; Ctrl-C to stop",
                s.header.kernel_release
            );
            let mut live = Live::new(&s.header);
            s.run(
                |line| {
                    match &line {
                        Line::Event(e) if all_events || touches_zero_page(&e.what) => info!("{e}"),
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
            print_stdout(&live.model.verdicts().to_string());
            Ok(())
        }
        Cmd::Record {
            output,
            duration,
            print,
            verdicts,
            probes,
        } => {
            let out: Box<dyn Write> = if output.as_os_str() == "-" {
                Box::new(std::io::stdout())
            } else {
                // Opened before the probes load, so a bad path fails fast.
                Box::new(std::fs::File::create(&output).map_err(|e| Fatal::Output {
                    path: output.display().to_string(),
                    reason: e.to_string(),
                })?)
            };
            let mut w = Writer::new(std::io::BufWriter::new(out));
            let started = start(&probes.options()).await;
            let Ok(Some(mut s)) = started else {
                // Leave no empty recording behind a failed or cancelled start.
                if output.as_os_str() != "-" {
                    let _ = std::fs::remove_file(&output);
                }
                return started.map(drop);
            };
            let io = |e: std::io::Error| Fatal::Output {
                path: output.display().to_string(),
                reason: e.to_string(),
            };
            w.write(&Line::Header(s.header.clone())).map_err(io)?;
            info!("recording to {}", output.display());
            let mut live = Live::new(&s.header);
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
            info!("recorded {n} events to {}", output.display());
            if let Some(path) = verdicts {
                let json = serde_json::to_string_pretty(&live.model.verdicts())?;
                std::fs::write(&path, json + "\n").map_err(|e| Fatal::Output {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            Ok(())
        }
        Cmd::Replay { file, json } => replay(&file, json),
    }
}

/// The model as the live agent runs it: fed every line, logging its
/// explanations and each container's leak verdict as it changes.
struct Live {
    model: Model,
    leak: std::collections::BTreeMap<u32, Leak>,
    behaviour: Vec<(bool, vfio_zp::model::behaviour::Source)>,
}

impl Live {
    fn new(header: &vfio_zp::record::Header) -> Live {
        Live {
            model: Model::new(header, Config::default()),
            leak: Default::default(),
            behaviour: Vec::new(),
        }
    }

    fn apply(&mut self, line: &Line) {
        self.model.apply(line);
        for n in self.model.take_notes() {
            tracing::warn!("{n}");
        }
        // Verdicts are worth computing at the counters' pace, not per event.
        if let Line::Counters(_) = line {
            let v = self.model.verdicts();
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

/// Standard output may be a closed pipe (`| head`): that is not an error.
fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn replay(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let bad = |e: vfio_zp::record::ReadError| Fatal::Input(e.to_string());
    let verdicts = if file.as_os_str() == "-" {
        let s = vfio_zp::record::Stream::new(std::io::stdin().lock(), "<stdin>").map_err(bad)?;
        run_model(s)?
    } else {
        run_model(stream_path(file).map_err(bad)?)?
    };
    if json {
        print_stdout(&(serde_json::to_string_pretty(&verdicts)? + "\n"));
    } else {
        print_stdout(&verdicts.to_string());
    }
    Ok(())
}

fn run_model<R: std::io::BufRead>(
    mut s: vfio_zp::record::Stream<R>,
) -> anyhow::Result<vfio_zp::model::verdict::Verdicts> {
    let mut m = Model::new(&s.header, Config::default());
    for line in s.by_ref() {
        m.apply(&line.map_err(|e| Fatal::Input(e.to_string()))?);
        m.take_notes();
    }
    Ok(m.verdicts())
}
