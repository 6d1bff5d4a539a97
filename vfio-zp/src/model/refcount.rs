//! The zero page's `_refcount`: what the probes and /proc/kcore read,
//! against what the pins the model saw explain.

/// GUP_PIN_COUNTING_BIAS: one FOLL_PIN of a small page.
pub const PIN_BIAS: i64 = 1024;
/// `_refcount` is an atomic_t.
pub const REFCOUNT_MAX: i64 = i32::MAX as i64;
/// The zero page's own reference (what it reads with nothing pinned).
pub const BASE_REFS: i64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadingSource {
    Probe,
    Kcore,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ZeroLedger {
    /// Raw GUP zero-page pins outstanding, all holders the probes saw.
    pub outstanding: i64,
    /// Last reading and the outstanding count it was taken at.
    pub last: Option<Reading>,
    /// Whether any event changed `outstanding` since the last kcore reading.
    pub moved_since_kcore: bool,
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    pub value: i64,
    pub outstanding: i64,
    pub t_ns: u64,
    pub source: ReadingSource,
}

/// What a new probe reading says about GUP's refcounting of the zero page.
#[derive(Debug, PartialEq, Eq)]
pub enum Vote {
    /// Moved by 1024 per pin in between.
    Pins,
    /// Stayed put although pins or unpins happened in between.
    Ignores,
    /// Nothing to learn (no pins in between, or first reading).
    None,
    /// Neither hypothesis explains the change.
    Neither,
}

impl ZeroLedger {
    pub fn pinned(&mut self, n: i64) {
        self.outstanding += n;
        self.moved_since_kcore |= n != 0;
    }

    /// Compares a reading with the previous one under both hypotheses.
    pub fn vote(&self, value: i64) -> Vote {
        let relative = self
            .last
            .filter(|p| p.source == ReadingSource::Probe)
            .map(|prev| (value - prev.value, self.outstanding - prev.outstanding))
            .filter(|(_, d_pins)| *d_pins != 0);
        // Without a change to compare, the level itself: the zero page
        // rests at BASE_REFS when nobody else holds it.
        let (d, d_pins, base) = match relative {
            Some((d, d_pins)) => (d, d_pins, 0),
            None if self.outstanding != 0 => (value - BASE_REFS, self.outstanding, BASE_REFS),
            None => return Vote::None,
        };
        match () {
            _ if d == PIN_BIAS * d_pins => Vote::Pins,
            _ if d == 0 => Vote::Ignores,
            _ if base != 0 => Vote::None,
            _ => Vote::Neither,
        }
    }

    /// The value the model expects now, from the last reading.
    pub fn expected(&self, per_pin: i64) -> Option<i64> {
        self.last
            .map(|r| r.value + per_pin * (self.outstanding - r.outstanding))
    }

    pub fn record(&mut self, value: i64, t_ns: u64, source: ReadingSource) {
        if source == ReadingSource::Kcore {
            self.moved_since_kcore = false;
        }
        self.last = Some(Reading {
            value,
            outstanding: self.outstanding,
            t_ns,
            source,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_compare_readings_with_pins_in_between() {
        let mut z = ZeroLedger::default();
        assert_eq!(z.vote(1), Vote::None, "nothing pinned, nothing to learn");
        z.pinned(1);
        assert_eq!(z.vote(1025), Vote::Pins, "level: 1 + 1024 x 1");
        z.record(1025, 1, ReadingSource::Probe);
        z.pinned(1);
        assert_eq!(z.vote(2049), Vote::Pins);
        assert_eq!(z.vote(1025), Vote::Ignores);
        assert_eq!(z.vote(1500), Vote::Neither);
        assert_eq!(z.expected(PIN_BIAS), Some(2049));
        assert_eq!(z.expected(0), Some(1025));
    }

    #[test]
    fn foreign_holders_do_not_vote_on_level() {
        let mut z = ZeroLedger::default();
        z.pinned(2);
        // 5000 extra references held by someone else: the level proves nothing.
        assert_eq!(z.vote(5001 + 2048), Vote::None);
        z.record(5001 + 2048, 0, ReadingSource::Kcore);
        z.pinned(-1);
        // Kcore readings race with events: never a base for a vote.
        assert_eq!(z.vote(5001 + 1024), Vote::None);
    }
}
