//! The model as the live agent runs it, fed every line of the stream:
//! it publishes snapshots for the HTTP endpoints, keeps its state across
//! restarts, and logs what an operator must know as it changes.
use tracing::info;

use crate::export::snapshot::{Expiry, Snapshot};
use crate::model::{Config, Model, verdict::Leak};
use crate::stream::Line;

/// The model as the live agent runs it: fed every line, logging its
/// explanations and each container's leak verdict as it changes.
pub struct Live {
    pub model: Model,
    leak: std::collections::BTreeMap<u32, Leak>,
    behaviour: Vec<(bool, crate::model::behaviour::Source)>,
    probes: Vec<crate::stream::ProbeStatus>,
    /// Where the agent publishes snapshots for its HTTP endpoints.
    pub publish: Option<(std::sync::Arc<crate::export::http::Shared>, Expiry)>,
    /// The latest counters, for snapshots published between counters lines.
    counters: Option<crate::stream::Counters>,
    /// The agent's state directory and a mirror of the session's decoder
    /// (fed the journaled id steps), checkpointed together with the model.
    kept: Option<(crate::agent::state::State, crate::source::Decoder)>,
    continuity: Option<crate::export::snapshot::Continuity>,
    /// Whether the first refcount reading's unexplained pins were judged.
    unexplained_judged: bool,
    /// Where the model's probe needs go to the session (model/needs.rs).
    pub steer: Option<crate::source::session::Wanted>,
}

/// Opens the state directory; trouble there costs continuity, never the agent.
pub fn open_state(
    a: &crate::cli::StateArgs,
) -> (
    Option<crate::agent::state::State>,
    Option<crate::agent::state::Restored>,
) {
    if a.no_state {
        return (None, None);
    }
    match crate::agent::state::State::open(
        &a.state_dir,
        &crate::probes::programs::build_id(),
        &crate::probes::boot_id(),
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
    pub fn new(header: &crate::stream::Header) -> Live {
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
            steer: None,
        }
    }

    /// Takes over what the last agent left (if anything) and checkpoints
    /// at once, so the kept state always matches this session's decoder.
    pub fn keep(
        &mut self,
        state: Option<crate::agent::state::State>,
        restored: Option<crate::agent::state::Restored>,
        decoder: crate::source::Decoder,
        header: &crate::stream::Header,
        pins: Option<&crate::probes::pins::PinDir>,
    ) {
        let mut c = crate::export::snapshot::Continuity::default();
        if let Some(p) = pins {
            c.pinned_maps_reused = p.reused.clone();
            c.stale_builds_removed = p.stale_removed.clone();
        }
        if let Some(r) = restored {
            self.model = r.model;
            let down = header.started_t_ns.saturating_sub(r.last_t_ns);
            self.model.gap(r.last_t_ns, header.started_t_ns);
            self.model
                .apply(&Line::Probes(crate::stream::line::ProbesChanged {
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

    pub fn checkpoint(&mut self) {
        if let Some((st, decoder)) = &mut self.kept
            && let Err(e) = st.checkpoint(&self.model, decoder)
        {
            tracing::warn!("checkpoint failed, nothing kept across restarts from now: {e}");
            self.kept = None;
        }
    }

    fn publish(&mut self, v: crate::model::verdict::Verdicts, c: &crate::stream::Counters) {
        if let Some((shared, expiry)) = &mut self.publish {
            let mut snap = Snapshot::new(v, &self.probes, Some(c));
            snap.continuity = self.continuity.clone();
            expiry.apply(&mut snap);
            shared.publish(snap);
        }
    }

    pub fn apply(&mut self, line: &Line) {
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
            if let Some(w) = &self.steer {
                w.set(self.model.unpins_not_needed());
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::export::http::Shared;

    /// A lab recording (6.1: the scenarios, and type1 unloaded and loaded
    /// again half way), line by line: the agent's fake event source.
    fn lab_recording() -> Vec<Line> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/6.1/recording.jsonl"
        );
        let r = crate::stream::read_path(std::path::Path::new(path)).unwrap();
        std::iter::once(Line::Header(r.header))
            .chain(r.lines)
            .collect()
    }

    fn live_publishing(header: &crate::stream::Header) -> (Live, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let mut live = Live::new(header);
        live.publish = Some((
            shared.clone(),
            Expiry::new(std::time::Duration::from_secs(3600)),
        ));
        (live, shared)
    }

    /// The runtime publishes at counters lines (first snapshot with the
    /// first counters), follows probe coverage at once, and ends with the
    /// verdicts `replay` prints for the same lines (golden.rs checks those
    /// against the kernel's truth).
    #[test]
    fn publishes_what_replay_concludes_and_follows_coverage_at_once() {
        let lines = lab_recording();
        let Line::Header(header) = &lines[0] else {
            unreachable!()
        };
        let (mut live, shared) = live_publishing(header);
        let mut counters_seen = false;
        let mut coverage_changes = 0;
        for line in &lines[1..] {
            live.apply(line);
            counters_seen |= matches!(line, Line::Counters(_));
            let latest = shared.latest();
            assert_eq!(
                latest.is_some(),
                counters_seen,
                "published before any counters line"
            );
            if let (Line::Probes(p), Some(snap)) = (line, &latest) {
                assert_eq!(
                    snap.probes, p.probes,
                    "coverage not published at the probes line"
                );
                coverage_changes += 1;
            }
        }
        assert!(
            coverage_changes >= 2,
            "the recording unloads and reloads type1"
        );
        let text: String = lines[1..]
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect();
        let header_line = serde_json::to_string(&lines[0]).unwrap() + "\n";
        let stream = crate::stream::Stream::new(
            std::io::Cursor::new(header_line + &text),
            "recording.jsonl",
        )
        .unwrap();
        let replayed = crate::replay::run_model(stream, "recording.jsonl").unwrap();
        let published = shared.latest().unwrap();
        assert_eq!(
            serde_json::to_value(&published.verdicts).unwrap(),
            serde_json::to_value(&replayed).unwrap()
        );
        assert!(!replayed.containers.is_empty());
    }

    /// What the runtime keeps is what a restarted agent starts from: the
    /// state directory, opened again after half the stream, restores the
    /// model's verdicts as they were.
    #[test]
    fn the_kept_state_restores_the_model_half_way() {
        let lines = lab_recording();
        let Line::Header(header) = &lines[0] else {
            unreachable!()
        };
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let open =
            || crate::agent::state::State::open(&state_dir, "build", "boot", false, 64 << 20);
        let (state, restored) = open().unwrap();
        assert!(restored.is_none());
        let decoder = crate::source::Decoder::journaled(7);
        let mut live = Live::new(header);
        live.keep(Some(state), None, decoder, header, None);
        let half = lines.len() / 2;
        for line in &lines[1..half] {
            live.apply(line);
        }
        let (_, restored) = open().unwrap();
        let restored = restored.expect("nothing restored");
        assert_eq!(
            serde_json::to_value(restored.model.verdicts()).unwrap(),
            serde_json::to_value(live.model.verdicts()).unwrap()
        );
        assert!(
            restored.replayed > 0,
            "the journal since the checkpoint was not replayed"
        );
    }
}
