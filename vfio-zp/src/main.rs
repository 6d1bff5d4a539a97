//! `vfio-zp`: parses the command line and hands each subcommand to the
//! library module that runs it.
use std::{io::IsTerminal, process::ExitCode};

use clap::{CommandFactory, Parser};
use vfio_zp::{
    agent, check,
    cli::{Cli, Cmd},
    error::{Fatal, report},
    replay, stdout, top,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vfio-zp", &mut out);
            return stdout::exit_after(
                stdout::print(&String::from_utf8_lossy(&out)),
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
    if let Cmd::Check { quick, json, agent } = cli.cmd {
        let r = check::run(!quick, agent.as_deref());
        let printed = if json {
            stdout::print(&(serde_json::to_string_pretty(&r).unwrap_or_default() + "\n"))
        } else {
            stdout::print(&r.to_string())
        };
        return stdout::exit_after(printed, ExitCode::from(r.level.exit_code()));
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

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Agent(args) => agent::agent(args).await,
        Cmd::Record(args) => agent::record(args).await,
        Cmd::Replay { file, json } => replay::run(&file, json),
        Cmd::Top {
            agent,
            local,
            once,
            json,
            interval,
            probes,
        } => top::run(agent, local, once, json, interval, probes).await,
        Cmd::Check { .. } | Cmd::Completions { .. } | Cmd::Man { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
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
    stdout::exit_after(
        stdout::print(&String::from_utf8_lossy(&out)),
        ExitCode::SUCCESS,
    )
}
