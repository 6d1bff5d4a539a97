//! `vfio-zp top`: a live view of the verdicts, from a running agent's
//! snapshot endpoint or from probes loaded by `top` itself.
pub mod tui;
pub mod view;

use std::sync::Arc;

use crate::serve::Shared;
use crate::snapshot::Snapshot;

pub enum Source {
    /// A running agent's /api/v1/snapshot.
    Agent(String),
    /// Probes loaded by this process, published by its own session.
    Local(Arc<Shared>),
}

impl Source {
    pub fn fetch(&self) -> anyhow::Result<Option<Snapshot>> {
        match self {
            Source::Agent(url) => {
                let s = ureq::get(url)
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
