//! Which probes the model needs on the running kernel. The generic GUP
//! unpin points fire once per page of every read-write mapping type1
//! unmaps (16 M runs for a 64 GiB VM's stop), yet they only ever tell the
//! model that zero-page references went. Where GUP was seen to take none
//! on the zero page (c8070b787519, v6.5, backported to 6.1.y) they can
//! tell it nothing it needs: the huge zero page, which GUP refcounts on
//! every kernel and type1 holds where read-only pins do not unshare (6.1),
//! is counted from type1's own pin and unpin records instead. The agent
//! leaves them off (not_needed), and puts them back the moment the
//! evidence changes.
use super::Model;
use super::behaviour::{Source, Trait};
use crate::stream::ProbeState;
use crate::stream::line::GUP_UNPIN_PROBES;

impl Model {
    /// `Some(evidence)` when the generic unpin probes cannot matter on
    /// this kernel, `None` while they may. Rests on observations only,
    /// never on the version's prior: `gup_pins_zero_page` observed false,
    /// with no observation ever saying true (a single "yes" puts them
    /// back).
    pub fn unpins_not_needed(&self) -> Option<String> {
        let gup = self.behaviour.report(Trait::GupPinsZeroPage);
        if gup.source != Source::Observed || gup.value || gup.observed_yes > 0 {
            return None;
        }
        Some(format!(
            "this kernel's GUP takes no reference on the zero page ({}): zero-page unpins change nothing vfio-zp counts, and type1's own records count the huge zero page",
            gup.evidence
        ))
    }

    /// Whether zero-page unpins go unseen because their probes were left off.
    pub(super) fn unpins_unseen(&self) -> bool {
        self.unpins_off_since.is_some()
    }

    /// Follows the unpin probes' state at a probes line. Put back because
    /// the evidence no longer holds, the pins taken while they were off may
    /// have been released unseen: the refcount's explanation starts afresh,
    /// and containers open then are uncertain. (Put back by a restarted
    /// agent, which attaches everything first, they lost nothing.)
    pub(super) fn follow_unpins(&mut self, t_ns: u64) {
        let off = GUP_UNPIN_PROBES
            .iter()
            .any(|p| self.probes.get(*p) == Some(&ProbeState::NotNeeded));
        match (off, self.unpins_off_since) {
            (true, None) => self.unpins_off_since = Some(t_ns),
            (false, Some(from_ns)) => {
                self.unpins_off_since = None;
                if self.unpins_not_needed().is_none() {
                    self.zero.forget_outstanding();
                    self.other_zero_pins = 0;
                    self.blind_window(super::Blind {
                        from_ns,
                        to_ns: t_ns,
                        events: None,
                    });
                    self.note(format!(
                        "the zero-page unpin probes were off for {:.1}s on evidence that no longer holds: pins taken then may have been released unseen",
                        t_ns.saturating_sub(from_ns) as f64 / 1e9
                    ));
                }
            }
            _ => {}
        }
    }
}
