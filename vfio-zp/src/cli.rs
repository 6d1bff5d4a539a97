//! The command line: every subcommand and option, with the help text
//! `--help`, the man pages and the completions are made from.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::error::EXIT_CODES;
use crate::source::session::Options;

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
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// Log filter (tracing syntax), e.g. `debug` or `vfio_zp=trace`.
    #[arg(long, global = true, env = "VFIO_ZP_LOG", default_value = "info", value_parser = log_filter)]
    pub log: String,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the probes, serve the verdicts as Prometheus metrics, log leak
    /// verdicts and kernel behaviour as they change (each zero-page event
    /// too at debug level), and print the verdicts when stopped
    /// (SIGINT/SIGTERM).
    ///
    /// Endpoints: /metrics (Prometheus text format), /healthz, and
    /// /api/v1/snapshot (the verdicts, probe coverage and counters as JSON,
    /// what `vfio-zp top` reads).
    Agent(AgentArgs),
    /// Write the event stream to FILE as JSON lines (format: docs/recording.md).
    ///
    /// The header line is written once the probes are attached, so a
    /// non-empty file means recording has begun. Stops on SIGINT/SIGTERM or
    /// after --duration, then writes the final exact counters.
    Record(RecordArgs),
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
    /// the verifier accepts the probes; with --agent, the running agent's
    /// probe decisions and their evidence (a point it left off as not
    /// needed, and why). Exit code 0 ok, 1 degraded, 3 unusable (2 is a
    /// usage error).
    Check {
        /// Skip loading the probes through the verifier.
        #[arg(long)]
        quick: bool,
        /// Also read the probe states of the agent serving at HOST:PORT
        /// (e.g. 127.0.0.1:10983): which points it left off as not needed
        /// on this kernel, with the evidence. An agent that does not
        /// answer is a degraded finding.
        #[arg(long, value_name = "HOST:PORT")]
        agent: Option<String>,
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

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// Where to serve /metrics, /healthz and /api/v1/snapshot: HOST:PORT
    /// (an address or a name), or :PORT for every IPv4 address; port 0
    /// picks a free one (logged). Loopback by default; anything else
    /// exposes them to the network. `systemd` takes the socket systemd
    /// passes (deploy/systemd/vfio-zp.socket).
    #[arg(long, value_name = "ADDR:PORT", default_value = crate::export::http::DEFAULT_LISTEN, value_parser = crate::export::http::listen_spec)]
    pub listen: String,
    /// Forget closed containers' metric series after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub expire_after: Duration,
    /// Log every event at info level (default: zero-page events at
    /// debug level only).
    #[arg(long)]
    pub all_events: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args)]
pub struct RecordArgs {
    /// Output file (`-` for standard output).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Stop after this long (e.g. `30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Also print each event as a readable line on standard error.
    #[arg(long)]
    pub print: bool,
    /// When stopped, write the live verdicts here as JSON (what
    /// `replay --json` of the recording prints).
    #[arg(long, value_name = "FILE")]
    pub verdicts: Option<PathBuf>,
    /// Also serve /metrics, /healthz and /api/v1/snapshot here while
    /// recording (as `agent --listen`).
    #[arg(long, value_name = "ADDR:PORT", value_parser = crate::export::http::listen_spec)]
    pub listen: Option<String>,
    /// With --listen: forget closed containers' metric series after
    /// this long (as `agent --expire-after`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m", requires = "listen")]
    pub expire_after: Duration,
    /// Replace existing output files (-o, --verdicts), each in one
    /// rename once it is written. Without it an existing file is kept
    /// and nothing starts.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

/// What lets a restarted agent go on where the last one stopped.
#[derive(Args)]
pub struct StateArgs {
    /// Where the agent keeps its model across restarts (a checkpoint and a
    /// journal; per boot, so /run suits it).
    #[arg(long, value_name = "DIR", default_value = "/run/vfio-zp")]
    pub state_dir: PathBuf,
    /// The bpffs directory where the exact counters and the ring buffer
    /// stay pinned between runs (one subdirectory per build; other builds'
    /// pins are removed).
    #[arg(long, value_name = "DIR", default_value = crate::probes::pins::ROOT)]
    pub pin_dir: PathBuf,
    /// Keep nothing across restarts: no pinned maps, no state directory.
    #[arg(long, conflicts_with = "fresh")]
    pub no_state: bool,
    /// Start afresh: discard the kept state and this build's pinned maps.
    #[arg(long)]
    pub fresh: bool,
    /// Fold the journal into a new checkpoint once it reaches this size.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub journal_max_mib: u64,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// Fail if any probe point cannot be attached (default: report it and go on).
    #[arg(long)]
    pub strict: bool,
    /// Fail at once if vfio_iommu_type1 is not loaded (default: start, and
    /// attach its probes as soon as it loads).
    #[arg(long)]
    pub no_wait: bool,
    /// Size of the probes' ring buffer in KiB: a power of two from 4 (one
    /// page) to 1048576. Events that find it full are dropped and counted
    /// (vfio_zp_events_lost_total); the verdicts they touch say uncertain.
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = ring_kib)]
    pub ring_buffer_kib: u32,
}

pub fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e} (e.g. `info`, `debug`, `vfio_zp=trace`)"))
}

fn ring_kib(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(4..=1 << 20).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two from 4 to 1048576"));
    }
    Ok(n)
}

impl ProbeArgs {
    pub fn options(&self) -> Options {
        Options {
            strict: self.strict,
            no_wait: self.no_wait,
            ring_bytes: Some(self.ring_buffer_kib << 10),
            ..Default::default()
        }
    }
}
