//! What `top` shows, computed from snapshots: one row per container name,
//! rates from the difference of two snapshots (no clock of its own), sort
//! and filter. No terminal here, so it is tested like the model.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::export::snapshot::Snapshot;
use crate::model::verdict::Leak;
use crate::stream::{ProbeState, event::Memlock};

const PAGE: i64 = 4096;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    /// `comm[tgid]` of the processes owning its VFIO containers.
    pub processes: Vec<String>,
    pub containers: usize,
    pub zero_pins_live: i64,
    pub leaked: i64,
    /// Zero-page pins per second between the last two snapshots.
    pub pin_rate: f64,
    pub locked_vm_bytes: i64,
    /// RLIMIT_MEMLOCK minus locked_vm (None: unlimited, exempt or unknown).
    pub memlock_headroom_bytes: Option<i64>,
    pub leak: Leak,
    /// Total zero-page pins taken, for the next rate.
    #[serde(skip)]
    pins_total: u64,
}

impl Row {
    /// The first process, and how many more.
    pub fn processes_short(&self) -> String {
        match self.processes.as_slice() {
            [] => "-".into(),
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first},+{}", rest.len()),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    #[default]
    Leaked,
    Rate,
    Live,
    Locked,
    Name,
}

impl SortKey {
    pub const ALL: [SortKey; 5] = [
        SortKey::Leaked,
        SortKey::Rate,
        SortKey::Live,
        SortKey::Locked,
        SortKey::Name,
    ];

    pub fn next(self) -> SortKey {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Leaked => "leaked",
            SortKey::Rate => "pin rate",
            SortKey::Live => "live pins",
            SortKey::Locked => "locked_vm",
            SortKey::Name => "name",
        }
    }
}

/// The header: kernel behaviour, the zero page, coverage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Header {
    pub kernel: String,
    pub behaviour: Vec<(String, bool, bool)>,
    pub refcount: Option<i64>,
    pub headroom_pins: Option<i64>,
    pub unexplained_pins: Option<i64>,
    pub overflow_eta_s: Option<f64>,
    pub leak_rate: f64,
    pub probes_attached: usize,
    /// Left off because this kernel does not need them (not_needed).
    pub probes_not_needed: usize,
    pub probes: usize,
    pub events_lost: u64,
    pub divergences: u64,
    pub uncertain: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct View {
    pub sort: SortKey,
    pub filter: String,
    prev: Option<(u64, BTreeMap<String, u64>)>,
}

pub fn header(s: &Snapshot) -> Header {
    let v = &s.verdicts;
    Header {
        kernel: format!(
            "{} ({})",
            v.kernel_release,
            v.kernel_version.as_deref().unwrap_or("?")
        ),
        behaviour: v
            .behaviour
            .iter()
            .filter(|t| t.name != "put_pfn_skips_reserved")
            .map(|t| (t.name.clone(), t.value, t.contradiction.is_some()))
            .collect(),
        refcount: v.host.zero_page_refcount,
        headroom_pins: v.host.headroom_pins,
        unexplained_pins: v.host.unexplained_pins,
        overflow_eta_s: v.host.overflow_eta_s,
        leak_rate: v.host.leak_rate_pins_per_s,
        probes_attached: s
            .probes
            .iter()
            .filter(|p| p.state == ProbeState::Attached)
            .count(),
        probes_not_needed: s
            .probes
            .iter()
            .filter(|p| p.state == ProbeState::NotNeeded)
            .count(),
        probes: s.probes.len(),
        events_lost: s.drops.values().sum(),
        divergences: v.divergences.values().map(|d| d.count).sum(),
        uncertain: v.coverage.uncertain.clone(),
    }
}

impl View {
    /// Rows for `s`, rates against the previous call's snapshot.
    pub fn rows(&mut self, s: &Snapshot) -> Vec<Row> {
        let v = &s.verdicts;
        let mut by: BTreeMap<String, Row> = BTreeMap::new();
        for c in &v.containers {
            let r = by.entry(c.name.clone()).or_insert_with(|| Row {
                name: c.name.clone(),
                processes: Vec::new(),
                containers: 0,
                zero_pins_live: 0,
                leaked: 0,
                pin_rate: 0.0,
                locked_vm_bytes: 0,
                memlock_headroom_bytes: None,
                leak: Leak::None,
                pins_total: 0,
            });
            let p = format!("{}[{}]", c.comm, c.tgid);
            if !r.processes.contains(&p) {
                r.processes.push(p);
            }
            r.containers += 1;
            r.zero_pins_live += c.zero_page_pins_live;
            r.leaked += c.zero_page_pins_leaked;
            r.locked_vm_bytes += c.locked_vm_pages_kernel * PAGE;
            r.pins_total += c.zero_page_pins_total;
            r.leak = match (r.leak, c.leak) {
                (Leak::Leaking, _) | (_, Leak::Leaking) => Leak::Leaking,
                (Leak::Uncertain, _) | (_, Leak::Uncertain) => Leak::Uncertain,
                _ => Leak::None,
            };
        }
        for p in &v.processes {
            if let (Some(r), Memlock::Bytes(limit), false) =
                (by.get_mut(&p.name), p.memlock, p.cap_ipc_lock)
            {
                let h = limit as i64 - p.locked_vm_bytes_kernel;
                r.memlock_headroom_bytes = Some(r.memlock_headroom_bytes.map_or(h, |x| x.min(h)));
            }
        }
        let totals: BTreeMap<String, u64> = by
            .values()
            .map(|r| (r.name.clone(), r.pins_total))
            .collect();
        if let Some((t0, prev)) = &self.prev {
            let dt = v.t_ns.saturating_sub(*t0) as f64 / 1e9;
            for r in by.values_mut() {
                let before = prev.get(&r.name).copied().unwrap_or(r.pins_total);
                if dt > 0.0 {
                    r.pin_rate = r.pins_total.saturating_sub(before) as f64 / dt;
                }
            }
        }
        self.prev = Some((v.t_ns, totals));
        let f = self.filter.to_lowercase();
        let mut rows: Vec<Row> = by
            .into_values()
            .filter(|r| {
                f.is_empty()
                    || r.name.to_lowercase().contains(&f)
                    || r.processes.iter().any(|p| p.to_lowercase().contains(&f))
            })
            .collect();
        let key = self.sort;
        rows.sort_by(|a, b| {
            let o = match key {
                SortKey::Leaked => b.leaked.cmp(&a.leaked),
                SortKey::Rate => b.pin_rate.total_cmp(&a.pin_rate),
                SortKey::Live => b.zero_pins_live.cmp(&a.zero_pins_live),
                SortKey::Locked => b.locked_vm_bytes.cmp(&a.locked_vm_bytes),
                SortKey::Name => a.name.cmp(&b.name),
            };
            o.then_with(|| a.name.cmp(&b.name))
        });
        rows
    }
}

/// Bytes for humans.
pub fn size(b: i64) -> String {
    let a = b.unsigned_abs();
    match a {
        _ if a >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        _ if a >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        _ if a >= 1 << 10 => format!("{:.0}K", b as f64 / 1024.0),
        _ => format!("{b}"),
    }
}

/// The table as plain text (`top --once`).
pub fn text(h: &Header, rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "vfio-zp top   kernel {}", h.kernel);
    let flags: Vec<String> = h
        .behaviour
        .iter()
        .map(|(n, v, c)| format!("{n}={v}{}", if *c { "(!)" } else { "" }))
        .collect();
    let _ = writeln!(s, "behaviour: {}", flags.join("  "));
    let _ = writeln!(
        s,
        "zero page refcount {}  headroom {} pins  held by nobody seen {} pins  leak rate {:.2}/s{}",
        h.refcount.map_or("?".into(), |r| r.to_string()),
        h.headroom_pins.map_or("?".into(), |r| r.to_string()),
        h.unexplained_pins.map_or("?".into(), |r| r.to_string()),
        h.leak_rate,
        h.overflow_eta_s
            .map(|e| format!("  overflow in {}", crate::model::verdict::eta(e)))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "probes {}/{} attached{}  events lost {}  model divergences {}{}",
        h.probes_attached,
        h.probes,
        match h.probes_not_needed {
            0 => String::new(),
            n => format!(" ({n} not needed)"),
        },
        h.events_lost,
        h.divergences,
        h.uncertain
            .as_ref()
            .map(|u| format!("  UNCERTAIN: {u}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "{:<34} {:<24} {:>8} {:>8} {:>9} {:>9} {:>9}  VERDICT",
        "CONTAINER", "PROCESSES", "LIVE", "LEAKED", "PINS/s", "LOCKED", "MEMLOCK+"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<34} {:<24} {:>8} {:>8} {:>9.1} {:>9} {:>9}  {:?}",
            r.name,
            r.processes_short(),
            r.zero_pins_live,
            r.leaked,
            r.pin_rate,
            size(r.locked_vm_bytes),
            r.memlock_headroom_bytes.map_or("-".into(), size),
            r.leak
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, Model};
    use crate::stream::{Header, Line};

    /// A snapshot of a model fed `pins` zero-page pins of container 1 at `t_ns`.
    fn snap(m: &mut Model, t_ns: u64, pins: u64) -> Snapshot {
        use crate::stream::event::{Event, What};
        m.apply(&Line::Event(Event {
            t_ns,
            tgid: 7,
            pid: 7,
            comm: "qemu".into(),
            cgroup_id: 1,
            container: Some(1),
            zero_refcount: None,
            what: What::GupPin {
                remote: true,
                start: 0,
                nr_pages: pins,
                gup_flags: 0,
                pinned: pins as i64,
                zero_pages: pins,
                huge_zero_pages: 0,
                in_type1: true,
                truncated: false,
            },
        }));
        Snapshot::new(m.verdicts(), &[], None)
    }

    #[test]
    fn rates_come_from_two_snapshots() {
        let h: Header = serde_json::from_value(serde_json::json!({
            "format": "vfio-zp-recording", "version": 2, "agent_version": "t",
            "kernel_release": "5.10.0", "zero_pfn": 1, "struct_page_size": 64,
            "refcount_offset": 52, "started_unix_ms": 0, "started_t_ns": 0, "probes": []
        }))
        .unwrap();
        let mut m = Model::new(&h, Config::default());
        let mut v = View::default();
        let first = v.rows(&snap(&mut m, 1_000_000_000, 10));
        assert_eq!(first[0].pin_rate, 0.0, "one snapshot: no rate yet");
        let second = v.rows(&snap(&mut m, 3_000_000_000, 30));
        assert_eq!(second[0].pin_rate, 15.0, "30 pins in 2 s");
        v.filter = "nothing-matches".into();
        assert!(v.rows(&snap(&mut m, 4_000_000_000, 1)).is_empty());
        v.filter = "QEMU".into();
        assert_eq!(
            v.rows(&snap(&mut m, 5_000_000_000, 1)).len(),
            1,
            "case-insensitive, on processes too"
        );
    }

    #[test]
    fn sort_keys_cycle() {
        let mut k = SortKey::default();
        for _ in 0..SortKey::ALL.len() {
            k = k.next();
        }
        assert_eq!(k, SortKey::default());
    }
}
