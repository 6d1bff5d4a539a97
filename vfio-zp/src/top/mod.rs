//! `vfio-zp top`: a live view of the verdicts, from a running agent's
//! snapshot endpoint or from probes loaded by `top` itself.
pub mod tui;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::export::http::Shared;
use crate::export::snapshot::Snapshot;

pub enum Source {
    /// A running agent's /api/v1/snapshot.
    Agent(String),
    /// Probes loaded by this process, published by its own session.
    Local(Arc<Shared>),
}

impl Source {
    pub fn fetch(&self) -> anyhow::Result<Option<Snapshot>> {
        self.fetch_within(Duration::from_secs(30))
    }

    /// `fetch`, giving up on an agent that has not answered in `limit`.
    pub fn fetch_within(&self, limit: Duration) -> anyhow::Result<Option<Snapshot>> {
        match self {
            Source::Agent(url) => {
                let s = ureq::get(url)
                    .config()
                    .timeout_global(Some(limit))
                    .build()
                    .call()
                    .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
                    .body_mut()
                    .with_config()
                    .limit(64 << 20)
                    .read_json::<Snapshot>()
                    .map_err(|e| anyhow::anyhow!("{url}: not a vfio-zp snapshot: {e}"))?;
                Ok(Some(s))
            }
            Source::Local(shared) => Ok(shared.latest().map(|s| s.as_ref().clone())),
        }
    }
}

/// `vfio-zp top`: reads the agent at `agent` (or the default address),
/// or loads the probes here when asked to or when none answers.
pub async fn run(
    agent: Option<String>,
    local: bool,
    once: bool,
    json: bool,
    interval: Duration,
    probes: crate::cli::ProbeArgs,
) -> anyhow::Result<()> {
    let explicit = agent.is_some();
    let url = format!(
        "http://{}/api/v1/snapshot",
        agent.unwrap_or_else(|| crate::export::http::DEFAULT_LISTEN.into())
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
        let Some(mut s) = crate::agent::start(&probes.options()).await? else {
            return Ok(());
        };
        let shared = std::sync::Arc::new(crate::export::http::Shared::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut live = crate::agent::Live::new(&s.header);
        live.publish = Some((
            shared.clone(),
            crate::export::snapshot::Expiry::new(Duration::from_secs(600)),
        ));
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
        let first = || -> anyhow::Result<crate::export::snapshot::Snapshot> {
            for _ in 0..600 {
                if let Some(s) = source.fetch()? {
                    return Ok(s);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            anyhow::bail!("no snapshot within a minute")
        };
        if json {
            crate::stdout::print(&(serde_json::to_string_pretty(&first()?)? + "\n"))?;
        } else if once {
            let mut v = view::View::default();
            v.rows(&first()?);
            std::thread::sleep(interval);
            let s = first()?;
            crate::stdout::print(&view::text(&view::header(&s), &v.rows(&s)))?;
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
