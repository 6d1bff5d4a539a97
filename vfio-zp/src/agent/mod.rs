//! The agent runtime: `vfio-zp agent` and `record` start a probe session,
//! serve the endpoints, and feed the stream to a [`Live`] model (and, for
//! `record`, to a file) until told to stop.
pub mod live;
pub mod state;

use std::io::Write;
use std::time::Duration;

use tracing::info;

pub use live::{Live, open_state};

use crate::error::Fatal;
use crate::export::snapshot::Expiry;
use crate::source::session::{Options, Session};
use crate::stream::{Line, Writer};

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown() {
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

pub async fn start(opts: &Options) -> anyhow::Result<Option<Session>> {
    start_with(opts, crate::source::Decoder::default()).await
}

pub async fn start_with(
    opts: &Options,
    decoder: crate::source::Decoder,
) -> anyhow::Result<Option<Session>> {
    let s = tokio::select! {
        s = Session::start_with(opts, decoder) => s.map(Some)?,
        _ = shutdown() => None,
    };
    if s.is_some() {
        crate::probes::privileges::drop_after_attach();
    }
    Ok(s)
}

/// `vfio-zp agent`: runs until SIGINT or SIGTERM, then prints the verdicts.
pub async fn agent(args: crate::cli::AgentArgs) -> anyhow::Result<()> {
    let crate::cli::AgentArgs {
        probes,
        listen,
        expire_after,
        all_events,
        state,
    } = args;
    // Nothing is created or served by an agent that cannot probe.
    crate::probes::preflight::check_privileges()?;
    let publish = listen_on(&listen, expire_after).await?;
    let (kept, restored) = open_state(&state);
    let decoder = match &restored {
        Some(r) => r.decoder.clone(),
        None => crate::source::Decoder::journaled(crate::probes::random_u128()),
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
    live.steer = Some(s.wanted.clone());
    live.keep(kept, restored, decoder, &s.header, s.pins.as_ref());
    s.run(
        |line| {
            match &line {
                Line::Event(e) if all_events => info!("{e}"),
                // A VM start pins thousands of zero pages: one log
                // line each only when asked (VFIO_ZP_LOG=debug).
                Line::Event(e) if e.what.touches_zero_page() => {
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
    crate::stdout::print(&live.model.verdicts().to_string())?;
    Ok(())
}

/// `vfio-zp record`: the stream to a file (or standard output) until
/// SIGINT, SIGTERM or `--duration`; the verdicts to `--verdicts`.
pub async fn record(args: crate::cli::RecordArgs) -> anyhow::Result<()> {
    let crate::cli::RecordArgs {
        output,
        duration,
        print,
        verdicts,
        listen,
        expire_after,
        force,
        probes,
    } = args;
    // Both outputs are checked before the probes load, so a bad
    // path or a file in the way fails fast.
    crate::probes::preflight::check_privileges()?;
    if let Some(path) = &verdicts {
        crate::outfile::check_free(path, force)?;
    }
    let (out, pending): (Box<dyn Write>, _) = if output.as_os_str() == "-" {
        (Box::new(std::io::stdout()), None)
    } else {
        let p = crate::outfile::Pending::new(&output, force)?;
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
    live.steer = Some(s.wanted.clone());
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
        crate::outfile::write(&path, force, (json + "\n").as_bytes())?;
    }
    Ok(())
}

/// Binds the HTTP endpoints before the probes load, so a taken port fails
/// fast; the agent loop publishes into the returned state.
pub async fn listen_on(
    spec: &str,
    expire_after: Duration,
) -> anyhow::Result<(std::sync::Arc<crate::export::http::Shared>, Expiry)> {
    let listener = crate::export::http::bind(spec).await?;
    // The address bound, not the one asked for (port 0, a name).
    let addr = listener
        .local_addr()
        .map_or_else(|_| spec.to_string(), |a| a.to_string());
    let shared = std::sync::Arc::new(crate::export::http::Shared::default());
    match crate::export::http::raise_nofile() {
        Ok(n) => tracing::debug!("descriptor limit raised to {n}"),
        Err(e) => tracing::warn!("descriptor limit not raised: {e}"),
    }
    crate::export::http::spawn(listener, shared.clone()).map_err(|e| Fatal::Listen {
        addr: addr.clone(),
        reason: e.to_string(),
    })?;
    info!("serving /metrics, /healthz and /api/v1/snapshot on http://{addr}");
    Ok((shared, Expiry::new(expire_after)))
}
