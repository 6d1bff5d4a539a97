//! Draining the probes' ring buffer into the stream: bounded, so the event
//! loop always gets back to its ticks, and in time order with the lines the
//! agent stamps itself (counters, probe changes).
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tracing::warn;

use super::resolve::Resolver;
use super::{Decoder, parse};
use crate::stream::{Line, line::IdSteps};

/// Where records come from: the ring buffer, or a test's stand-in.
pub(crate) trait Records {
    /// Hands the next waiting record to `f`; `None` when none waits.
    fn next_with<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<T>;
}

impl Records for RingBuf<MapData> {
    fn next_with<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        self.next().map(|item| f(&item))
    }
}

/// How much one drain may take before the loop runs its ticks again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub records: usize,
    pub time: Duration,
}

/// One drain's share of the event loop. A producer as fast as the agent
/// (QEMU pinning a VM's RAM page by page, on a one-CPU host) never lets the
/// ring empty: an unbounded drain held the loop for minutes, with no tick,
/// no counters line and a stale /healthz, while every event still arrived.
pub(crate) const DRAIN_BUDGET: Budget = Budget {
    records: 8192,
    time: Duration::from_millis(50),
};
/// The drain when stopping: everything already waiting, unless a producer
/// that never pauses would hold the stop forever.
pub(crate) const FINAL_DRAIN_BUDGET: Budget = Budget {
    records: usize::MAX,
    time: Duration::from_secs(5),
};

/// Whether a drain emptied the ring or stopped at its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    Empty,
    More,
}

/// Lines the agent stamps itself, in the order made, each written before
/// the first event stamped after it (or when the ring is empty), so a
/// recording's time never steps back by the agent's backlog.
#[derive(Default)]
pub(crate) struct Stamped(std::collections::VecDeque<Line>);

impl Stamped {
    pub fn push(&mut self, line: Line) {
        self.0.push_back(line);
    }

    pub fn holds_counters(&self) -> bool {
        self.0.iter().any(|l| matches!(l, Line::Counters(_)))
    }

    /// Writes the lines stamped before `t_ns`.
    fn before(
        &mut self,
        t_ns: u64,
        sink: &mut impl FnMut(Line) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        while self.0.front().is_some_and(|l| stamp(l) < t_ns) {
            sink(self.0.pop_front().expect("a front line"))?;
        }
        Ok(())
    }

    pub fn flush(
        &mut self,
        sink: &mut impl FnMut(Line) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.before(u64::MAX, sink)
    }
}

fn stamp(line: &Line) -> u64 {
    match line {
        Line::Counters(c) => c.t_ns,
        Line::Probes(p) => p.t_ns,
        // Anything else carries no time of its own: at once.
        _ => 0,
    }
}

/// Decodes what the ring buffer holds, up to `budget`; each event is
/// preceded by the stamped lines older than it and by the cgroup and
/// process lines it is the first to need.
pub(crate) fn drain(
    ring: &mut impl Records,
    decoder: &mut Decoder,
    resolver: &mut Resolver,
    sink: &mut impl FnMut(Line) -> anyhow::Result<()>,
    stamped: &mut Stamped,
    budget: Budget,
) -> anyhow::Result<Drained> {
    let start = std::time::Instant::now();
    let mut n = 0usize;
    loop {
        // The clock is read once per 64 records: cheap, and fine-grained
        // enough for a 50 ms budget.
        if n >= budget.records || (n > 0 && n.is_multiple_of(64) && start.elapsed() >= budget.time)
        {
            return Ok(Drained::More);
        }
        let Some(decoded) = ring.next_with(|b| parse(b).and_then(|raw| decoder.decode_all(&raw)))
        else {
            stamped.flush(sink)?;
            return Ok(Drained::Empty);
        };
        match decoded {
            Ok((before, e)) => {
                stamped.before(e.t_ns, sink)?;
                let ops = decoder.take_ops();
                if !ops.is_empty() {
                    sink(Line::Ids(IdSteps { ops }))?;
                }
                if let Some(c) = resolver.cgroup(e.cgroup_id) {
                    sink(Line::Cgroup(c))?;
                }
                if let Some(p) = resolver.process(e.tgid, &e.comm) {
                    sink(Line::Process(p))?;
                }
                for b in before {
                    sink(Line::Event(b))?
                }
                sink(Line::Event(e))?
            }
            Err(e) => warn!("undecodable probe record: {e}"),
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_zp_common::{COMM_LEN, Event as Raw, ProbeId};

    /// A ring whose producer keeps up with the agent: `left` records (or
    /// never-ending), each a type1 pin call.
    struct Producer {
        left: usize,
        taken: usize,
        record: Vec<u8>,
    }

    impl Producer {
        fn new(left: usize) -> Producer {
            let mut comm = [0u8; COMM_LEN];
            comm[..4].copy_from_slice(b"qemu");
            let raw = Raw {
                ts_ns: 1,
                cgroup_id: 0,
                container: 0xffff_8881_0000_1000,
                tgid: 0,
                pid: 0,
                comm,
                probe: ProbeId::Type1Pin as u16,
                flags: 0,
                zero_refcount: 0,
                payload: [0x1000, 1, 1, 0, 0, 0],
                limit: 0,
                carried: 0,
            };
            let record = crate::source::decode::tests::bytes(&raw);
            Producer {
                left,
                taken: 0,
                record,
            }
        }
    }

    impl Records for Producer {
        /// Record n is stamped n ns.
        fn next_with<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
            self.left = self.left.checked_sub(1)?;
            self.taken += 1;
            self.record[..8].copy_from_slice(&(self.taken as u64).to_ne_bytes());
            Some(f(&self.record))
        }
    }

    fn drain_into(
        ring: &mut Producer,
        stamped: &mut Stamped,
        budget: Budget,
        lines: &mut Vec<Line>,
    ) -> Drained {
        let dir = tempfile::tempdir().unwrap();
        drain(
            ring,
            &mut Decoder::default(),
            &mut Resolver::new(dir.path()),
            &mut |line| {
                lines.push(line);
                Ok(())
            },
            stamped,
            budget,
        )
        .unwrap()
    }

    fn run(ring: &mut Producer, budget: Budget) -> (Drained, usize) {
        let mut lines = Vec::new();
        let drained = drain_into(ring, &mut Stamped::default(), budget, &mut lines);
        let events = lines.iter().filter(|l| matches!(l, Line::Event(_))).count();
        (drained, events)
    }

    fn counters_at(t_ns: u64) -> Line {
        Line::Counters(crate::stream::Counters {
            t_ns,
            ..Default::default()
        })
    }

    /// Time in the written lines: events' and stamped lines' alike.
    fn times(lines: &[Line]) -> Vec<u64> {
        lines
            .iter()
            .filter_map(|l| match l {
                Line::Event(e) => Some(e.t_ns),
                Line::Counters(c) => Some(c.t_ns),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_counters_line_waits_for_the_events_stamped_before_it() {
        // A backlog of 3000 events; counters read at 2500 ns, drained 1000
        // records at a time.
        let mut ring = Producer::new(3000);
        let mut stamped = Stamped::default();
        stamped.push(counters_at(2500));
        let budget = Budget {
            records: 1000,
            time: Duration::from_secs(3600),
        };
        let mut lines = Vec::new();
        assert_eq!(
            drain_into(&mut ring, &mut stamped, budget, &mut lines),
            Drained::More
        );
        assert!(
            stamped.holds_counters(),
            "not yet: events before 2500 ns wait"
        );
        assert_eq!(
            drain_into(&mut ring, &mut stamped, budget, &mut lines),
            Drained::More
        );
        assert!(stamped.holds_counters());
        assert_eq!(
            drain_into(&mut ring, &mut stamped, budget, &mut lines),
            Drained::More
        );
        assert!(!stamped.holds_counters());
        let t = times(&lines);
        assert!(t.windows(2).all(|w| w[0] <= w[1]), "time steps back");
        assert_eq!(t.len(), 3001);
        // After the events stamped up to its time, before the next.
        let at = lines
            .iter()
            .filter(|l| matches!(l, Line::Event(_) | Line::Counters(_)))
            .position(|l| matches!(l, Line::Counters(_)));
        assert_eq!(at, Some(2500));
        assert_eq!(t[2499..2502], [2500, 2500, 2501]);
        // An empty ring writes what waits, whatever its time.
        stamped.push(counters_at(u64::MAX - 1));
        let mut rest = Vec::new();
        assert_eq!(
            drain_into(&mut ring, &mut stamped, budget, &mut rest),
            Drained::Empty
        );
        assert_eq!(times(&rest), [u64::MAX - 1]);
    }

    #[test]
    fn a_ring_that_never_empties_still_hands_the_loop_back() {
        let mut ring = Producer::new(usize::MAX);
        let budget = Budget {
            records: 1000,
            time: Duration::from_secs(3600),
        };
        assert_eq!(run(&mut ring, budget), (Drained::More, 1000));
        assert_eq!(ring.taken, 1000, "no record is read and then dropped");
        // The time budget alone ends it too.
        let mut ring = Producer::new(usize::MAX);
        let budget = Budget {
            records: usize::MAX,
            time: Duration::ZERO,
        };
        let (drained, events) = run(&mut ring, budget);
        assert_eq!(drained, Drained::More);
        assert_eq!(events, ring.taken);
        assert!(
            ring.taken < 1000,
            "{} records past a zero budget",
            ring.taken
        );
    }

    #[test]
    fn a_ring_that_empties_is_read_to_the_end() {
        // The agent's record budget with no time bound: a loaded machine
        // (the test ran niced beside a lab once) must not make it fail.
        let mut ring = Producer::new(2500);
        let unhurried = Budget {
            time: Duration::from_secs(3600),
            ..DRAIN_BUDGET
        };
        assert_eq!(run(&mut ring, unhurried), (Drained::Empty, 2500));
        // Exactly at the budget: empty is only known on the next read.
        let mut ring = Producer::new(1000);
        let budget = Budget {
            records: 1000,
            time: Duration::from_secs(3600),
        };
        assert_eq!(run(&mut ring, budget), (Drained::More, 1000));
        assert_eq!(run(&mut ring, budget), (Drained::Empty, 0));
    }
}
