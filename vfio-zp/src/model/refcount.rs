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
    /// The last probe reading: the base a probe reading falls back on
    /// when `last` is a kcore reading that raced with a pin or unpin in
    /// progress (`raced_kcore`).
    #[serde(default)]
    pub last_probe: Option<Reading>,
    /// Whether any event changed `outstanding` since the last kcore reading.
    pub moved_since_kcore: bool,
    /// A kcore reading that moved with no event since the one before,
    /// held back until the next one: a pin in progress (its reference
    /// taken, its record not yet written) reads so too, and its record
    /// then moves `outstanding`. Another kernel user's references stay.
    #[serde(default)]
    pub kcore_suspect: Option<i64>,
    /// The latest reading that races with no event: a probe's (taken in
    /// the pin path), or kcore's with no pin or unpin since the previous
    /// kcore reading. The bound on every claim.
    #[serde(default)]
    pub settled: Option<Reading>,
    /// Whether the latest kcore reading taken with no pin outstanding read
    /// the bare base (nobody else holds the zero page): None before one.
    /// Only then does a reading's level say how GUP counts.
    #[serde(default)]
    pub bare: Option<bool>,
    /// At the last type1 pin reading: the refcount less what the pins
    /// seen hold. Only pins and unpins nobody saw move it.
    #[serde(default)]
    pub type1_unseen: Option<i64>,
    /// `outstanding` at that reading.
    #[serde(default)]
    pub type1_outstanding: i64,
    /// A rise of that level at one container's pin, in pins, kept until
    /// the next type1 reading shows it was not a race.
    #[serde(default)]
    pub rise: Option<Rise>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rise {
    pub container: u32,
    pub pins: i64,
    pub level: i64,
}

impl ZeroLedger {
    /// A type1 pin call's return reading `value`, for `container`. Returns
    /// a rise confirmed by this reading: another thread's pin whose GUP
    /// event had not arrived yet when the previous reading was taken
    /// brings the level back down once it arrives, and cancels the rise.
    pub fn type1_reading(&mut self, value: i64, per_pin: i64, container: u32) -> Option<Rise> {
        let level = value - per_pin * self.outstanding;
        if let Some(prev) = self.type1_unseen
            && level < prev
            && self.outstanding <= self.type1_outstanding
        {
            // Lower, with no pin seen since that explains it: a reading
            // taken before the last one (its call was preempted between its
            // GUP and its return while another VMM's calls ran; seen in the
            // 5.10-leaky golden recording), or unpins nobody saw. It says
            // nothing of growth: the baseline and a pending rise stay.
            return None;
        }
        let confirmed = self.rise.take().filter(|r| level >= r.level);
        if let Some(prev) = self.type1_unseen
            && level - prev >= PIN_BIAS
        {
            self.rise = Some(Rise {
                container,
                pins: (level - prev) / PIN_BIAS,
                level,
            });
        }
        self.type1_unseen = Some(level);
        self.type1_outstanding = self.outstanding;
        confirmed
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    pub value: i64,
    pub outstanding: i64,
    pub t_ns: u64,
    pub source: ReadingSource,
}

/// A settled reading that cannot hold the pins the model counted then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overclaim {
    pub reading: Reading,
    /// Pins the reading holds above the zero page's base.
    pub can_hold: i64,
}

impl std::fmt::Display for Overclaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.reading;
        write!(
            f,
            "the zero page's refcount read {} ({}) can hold at most {} pins above its base, but the model counted {} outstanding then: records were lost or a path went unprobed",
            r.value,
            match r.source {
                ReadingSource::Probe => "probe",
                ReadingSource::Kcore => "kcore",
            },
            self.can_hold,
            r.outstanding
        )
    }
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
    /// Starts the explanation afresh: the pins counted may have been
    /// released unseen (model/needs.rs), so no reading before now is a base.
    pub fn forget_outstanding(&mut self) {
        *self = ZeroLedger::default();
    }

    pub fn pinned(&mut self, n: i64) {
        self.outstanding += n;
        self.moved_since_kcore |= n != 0;
        if n != 0 {
            self.kcore_suspect = None;
        }
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
            // Foreign holders (pins from before the agent, say) would make
            // a coincidence of the level look like evidence.
            None if self.outstanding != 0 && self.bare != Some(false) => {
                (value - BASE_REFS, self.outstanding, BASE_REFS)
            }
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
        self.last.map(|r| self.expected_from(r, per_pin))
    }

    fn expected_from(&self, r: Reading, per_pin: i64) -> i64 {
        r.value + per_pin * (self.outstanding - r.outstanding)
    }

    /// Whether a probe reading of `value`, which the last reading (kcore's)
    /// does not explain, is explained by the last probe reading: kcore was
    /// read while a pin or unpin was in progress, between the refcount's
    /// move and the record that says so. A GUP pin takes its reference
    /// before its return writes the record, and an unpin's record, written
    /// at its entry, goes before the reference is dropped; a counters line
    /// goes out once the ring is empty, so kcore's value can hold a move
    /// the model has not applied, or miss one it has.
    pub fn raced_kcore(&self, value: i64, per_pin: i64) -> bool {
        self.last.is_some_and(|r| r.source == ReadingSource::Kcore)
            && self
                .last_probe
                .is_some_and(|p| self.expected_from(p, per_pin) == value)
    }

    pub fn record(&mut self, value: i64, t_ns: u64, source: ReadingSource) {
        let reading = Reading {
            value,
            outstanding: self.outstanding,
            t_ns,
            source,
        };
        if source == ReadingSource::Probe || !self.moved_since_kcore {
            self.settled = Some(reading);
        }
        if source == ReadingSource::Probe {
            self.last_probe = Some(reading);
        }
        if source == ReadingSource::Kcore {
            self.moved_since_kcore = false;
            if self.outstanding == 0 {
                self.bare = Some(value == BASE_REFS);
            }
        }
        self.last = Some(reading);
    }

    /// How many pins the settled reading says the model over-counts: the
    /// pins it held then, at `per_pin` references each, beyond what the
    /// refcount held above its base. None when the reading bears them.
    pub fn overclaim(&self, per_pin: i64) -> Option<Overclaim> {
        let r = self.settled?;
        let room = r.value - BASE_REFS;
        (per_pin > 0 && per_pin * r.outstanding > room).then(|| Overclaim {
            reading: r,
            can_hold: (room / per_pin).max(0),
        })
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
    fn only_settled_readings_bound_the_count() {
        let mut z = ZeroLedger::default();
        z.pinned(16);
        z.record(1 + 16 * PIN_BIAS, 1, ReadingSource::Probe);
        assert_eq!(z.overclaim(PIN_BIAS), None, "the reading bears 16 pins");
        // A kcore reading with pins moved since the last: it may race.
        z.record(1, 2, ReadingSource::Kcore);
        assert_eq!(z.overclaim(PIN_BIAS), None);
        // Nothing moved since: it holds nothing, the model counts 16.
        z.record(1, 3, ReadingSource::Kcore);
        let o = z.overclaim(PIN_BIAS).unwrap();
        assert_eq!((o.can_hold, o.reading.outstanding), (0, 16));
        assert!(o.to_string().contains("read 1 (kcore)"), "{o}");
        assert_eq!(
            z.overclaim(0),
            None,
            "no claim where GUP takes no reference"
        );
        // More held than seen (pins from before the agent): no overclaim.
        z.record(1 + 20 * PIN_BIAS, 4, ReadingSource::Kcore);
        assert_eq!(z.overclaim(PIN_BIAS), None);
    }

    /// Growth at type1 readings that no pin seen explains is a rise of the
    /// level; the next reading confirms it, or cancels it when a pin event
    /// that had not yet arrived brings the level back.
    #[test]
    fn unseen_growth_is_confirmed_by_the_next_reading() {
        let mut z = ZeroLedger::default();
        assert_eq!(z.type1_reading(1, PIN_BIAS, 1), None);
        // Container 1's call: +2 pins' worth, no GUP pin seen.
        assert_eq!(z.type1_reading(1 + 2 * PIN_BIAS, PIN_BIAS, 1), None);
        // Container 2's: nothing more; the level holds, 1's rise stands.
        let r = z.type1_reading(1 + 2 * PIN_BIAS, PIN_BIAS, 2).unwrap();
        assert_eq!((r.container, r.pins), (1, 2));
        // A rise at 2, then the GUP pin event it raced with arrives: the
        // level falls back and the rise is cancelled.
        assert_eq!(z.type1_reading(1 + 3 * PIN_BIAS, PIN_BIAS, 2), None);
        z.pinned(1);
        assert_eq!(z.type1_reading(1 + 3 * PIN_BIAS, PIN_BIAS, 1), None);
        // Seen pins move the refcount and the count alike: no rise.
        z.pinned(4);
        assert_eq!(z.type1_reading(1 + 7 * PIN_BIAS, PIN_BIAS, 1), None);
        assert_eq!(z.type1_reading(1 + 7 * PIN_BIAS, PIN_BIAS, 1), None);
    }

    /// A call preempted between its GUP and its return carries a reading
    /// older than the readings of the calls that ran meanwhile: it must not
    /// lower the baseline, or the next reading would count the others'
    /// growth again (the 5.10-leaky golden recording: vm-two was charged
    /// the pod's 31 pins as well as its own).
    #[test]
    fn a_stale_reading_neither_lowers_the_baseline_nor_cancels() {
        let mut z = ZeroLedger::default();
        assert_eq!(z.type1_reading(1, PIN_BIAS, 1), None);
        // The pod's calls: 31 pins nobody saw taken.
        assert_eq!(z.type1_reading(1 + 31 * PIN_BIAS, PIN_BIAS, 8), None);
        // vm-two's first return, read before the pod ran: 1 pin.
        assert_eq!(z.type1_reading(1 + PIN_BIAS, PIN_BIAS, 7), None);
        // vm-two's next call, after everything: 2 more pins in all.
        let r = z.type1_reading(1 + 33 * PIN_BIAS, PIN_BIAS, 7).unwrap();
        assert_eq!((r.container, r.pins), (8, 31));
        let r = z.type1_reading(1 + 33 * PIN_BIAS, PIN_BIAS, 7).unwrap();
        assert_eq!((r.container, r.pins), (7, 2));
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
