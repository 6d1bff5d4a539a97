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
    record::{Line, Writer},
    session::{Options, Session},
};

/// Watch VFIO type1 pin the kernel's shared zero page.
///
/// vfio-zp puts kprobes on the VFIO type1 IOMMU driver's pin and unpin paths
/// and on the kernel's pin_user_pages*/unpin_user_page* and reports every
/// zero-page pin, unpin and locked_vm charge, attributed to its process,
/// cgroup and VFIO container. Needs root (CAP_BPF, CAP_PERFMON,
/// CAP_SYS_ADMIN), kernel BTF and kprobes.
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
    /// Run the probes and log zero-page activity as it happens.
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
        #[command(flatten)]
        probes: ProbeArgs,
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
            s.run(
                |line| {
                    match line {
                        Line::Event(e) if all_events || touches_zero_page(&e.what) => info!("{e}"),
                        Line::Counters(c) if c.drops.values().any(|d| *d > 0) => {
                            tracing::warn!("ring buffer full: events lost so far {:?}", c.drops)
                        }
                        _ => {}
                    }
                    Ok(())
                },
                shutdown(),
            )
            .await
        }
        Cmd::Record {
            output,
            duration,
            print,
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
                    Ok(())
                },
                stop,
            )
            .await?;
            info!("recorded {n} events to {}", output.display());
            Ok(())
        }
    }
}
