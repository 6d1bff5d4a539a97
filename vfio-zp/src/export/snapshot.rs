//! What the outputs (metrics, `top`, the snapshot endpoint) see: the
//! model's verdicts with the probes' coverage and exact counters, taken
//! at the counters' pace.
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::verdict::Verdicts;
use crate::stream::{Counters, ProbeStatus};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub agent_version: String,
    pub verdicts: Verdicts,
    pub probes: Vec<ProbeStatus>,
    /// Exact probe runs and ring-buffer drops per probe label.
    pub hits: BTreeMap<String, u64>,
    pub drops: BTreeMap<String, u64>,
    /// Return-probe runs missed (every kretprobe instance busy), per probe label.
    #[serde(default)]
    pub misses: BTreeMap<String, u64>,
    /// Containers no longer shown: closed longer than the expiry.
    #[serde(default)]
    pub expired: Vec<u32>,
    /// What the agent carried over from the one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuity: Option<Continuity>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Continuity {
    /// The model came back from the state directory.
    pub restored: bool,
    pub journal_lines_replayed: u64,
    /// How long no agent watched before this one started, in seconds.
    pub unwatched_s: Option<f64>,
    /// Maps this agent found pinned by an earlier run of its build.
    pub pinned_maps_reused: Vec<String>,
    /// Other builds whose pinned maps it removed.
    pub stale_builds_removed: Vec<String>,
}

impl Snapshot {
    pub fn new(verdicts: Verdicts, probes: &[ProbeStatus], counters: Option<&Counters>) -> Self {
        Snapshot {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            verdicts,
            probes: probes.to_vec(),
            hits: counters.map(|c| c.hits.clone()).unwrap_or_default(),
            drops: counters.map(|c| c.drops.clone()).unwrap_or_default(),
            misses: counters.map(|c| c.misses.clone()).unwrap_or_default(),
            expired: Vec::new(),
            continuity: None,
        }
    }
}

/// Closed containers stay visible for `after_ns` of event time, then their
/// series go (bounded cardinality on hosts that start and stop many VMs).
#[derive(Debug)]
pub struct Expiry {
    after_ns: u64,
    closed_seen: HashMap<u32, u64>,
}

impl Expiry {
    pub fn new(after: std::time::Duration) -> Expiry {
        Expiry {
            after_ns: after.as_nanos() as u64,
            closed_seen: HashMap::new(),
        }
    }

    /// Drops expired containers from `s.verdicts` (recording their ids).
    pub fn apply(&mut self, s: &mut Snapshot) {
        let now = s.verdicts.t_ns;
        let present: std::collections::HashSet<u32> =
            s.verdicts.containers.iter().map(|c| c.id).collect();
        // The model forgets containers too: so does this.
        self.closed_seen.retain(|id, _| present.contains(id));
        let mut expired = Vec::new();
        s.verdicts.containers.retain(|c| {
            if c.open {
                self.closed_seen.remove(&c.id);
                return true;
            }
            let since = *self.closed_seen.entry(c.id).or_insert(now);
            let keep = now.saturating_sub(since) < self.after_ns;
            if !keep {
                expired.push(c.id);
            }
            keep
        });
        s.expired = expired;
    }
}
