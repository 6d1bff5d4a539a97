//! The probe cost per point: each vfio-zp program next to the bpftrace
//! program on the same function and side (entry or return), from bpf_stats
//! listings (`bpftool prog show -j`) and, for bpftrace, whose names are cut
//! to 15 characters and alike for entry and return, the attach list
//! (`bpftool perf list -j`).
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

#[derive(Deserialize, Clone)]
pub struct Prog {
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub run_time_ns: u64,
    #[serde(default)]
    pub run_cnt: u64,
}

/// One kprobe attachment of `bpftool perf list -j`.
#[derive(Deserialize)]
pub struct Attach {
    pub prog_id: u64,
    #[serde(default)]
    pub fd_type: String,
    #[serde(default)]
    pub func: String,
}

/// Time and runs summed over programs.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct Cost {
    pub ns: u64,
    pub runs: u64,
}

impl Cost {
    pub fn of(p: &Prog) -> Cost {
        Cost {
            ns: p.run_time_ns,
            runs: p.run_cnt,
        }
    }

    pub fn per_run(self) -> Option<f64> {
        (self.runs > 0).then(|| self.ns as f64 / self.runs as f64)
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.ns += o.ns;
        self.runs += o.runs;
    }
}

impl<'a> std::iter::Sum<&'a Prog> for Cost {
    fn sum<I: Iterator<Item = &'a Prog>>(progs: I) -> Cost {
        let mut c = Cost::default();
        for p in progs {
            c += Cost::of(p);
        }
        c
    }
}

/// One side of one point.
#[derive(Debug, PartialEq)]
pub struct Row {
    /// vfio-zp's program name: the point's label, `_ret` for the return.
    pub program: String,
    pub ours: Cost,
    pub bpftrace: Cost,
    pub empty: Cost,
}

/// The programs of `after` that `before` did not list (loaded in between).
pub fn loaded_between(before: &[Prog], after: &[Prog]) -> Vec<Prog> {
    let old: BTreeSet<u64> = before.iter().map(|p| p.id).collect();
    after
        .iter()
        .filter(|p| !old.contains(&p.id))
        .cloned()
        .collect()
}

/// What the programs attached to `symbol` on `fd_type`'s side cost.
fn attached(progs: &[Prog], attach: &[Attach], symbol: &str, fd_type: &str) -> Cost {
    let ids: BTreeSet<u64> = attach
        .iter()
        .filter(|a| a.func == symbol && a.fd_type == fd_type)
        .map(|a| a.prog_id)
        .collect();
    progs.iter().filter(|p| ids.contains(&p.id)).sum()
}

/// A row per (point, side) that ran: `points` are (label, symbol) as the
/// agent attached them; `ours` every vfio-zp program of the measured sets
/// (several loads of one program add up); bpftrace's and the empty
/// programs' listings each with their attach list.
pub fn rows(
    points: &[(String, String)],
    ours: &[Prog],
    bpftrace: (&[Prog], &[Attach]),
    empty: (&[Prog], &[Attach]),
) -> Vec<Row> {
    let mut by_name: BTreeMap<&str, Cost> = BTreeMap::new();
    for p in ours {
        *by_name.entry(p.name.as_str()).or_default() += Cost::of(p);
    }
    let mut out = Vec::new();
    for (label, symbol) in points {
        for (suffix, fd_type) in [("", "kprobe"), ("_ret", "kretprobe")] {
            let program = format!("{label}{suffix}");
            let row = Row {
                ours: by_name.get(program.as_str()).copied().unwrap_or_default(),
                bpftrace: attached(bpftrace.0, bpftrace.1, symbol, fd_type),
                empty: attached(empty.0, empty.1, symbol, fd_type),
                program,
            };
            if row.ours.runs > 0 {
                out.push(row);
            }
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.ours.runs));
    out
}

/// Sums over the rows bpftrace also ran, and the programs it did not.
#[derive(Debug, Default)]
pub struct Common {
    pub programs: usize,
    pub ours: Cost,
    pub bpftrace: Cost,
    pub empty: Cost,
    pub unmatched: Vec<String>,
}

/// Our programs and bpftrace's over the points and sides both ran, so a
/// point bpftrace did not attach weighs on neither side.
pub fn common(rows: &[Row]) -> Common {
    let mut c = Common::default();
    for r in rows {
        if r.bpftrace.runs == 0 {
            c.unmatched.push(r.program.clone());
            continue;
        }
        c.programs += 1;
        c.ours += r.ours;
        c.bpftrace += r.bpftrace;
        c.empty += r.empty;
    }
    c
}

/// The table the bench prints under the probe cost per run.
pub fn table(rows: &[Row]) -> String {
    let ns = |c: Cost| c.per_run().map_or("-".to_string(), |x| format!("{x:.0}"));
    let mut s = format!(
        "    {:<24} {:>8} {:>8} {:>8} {:>6} {:>6}\n",
        "ns per run", "runs", "vfio-zp", "bpftrace", "empty", "ratio"
    );
    for r in rows {
        let ratio = match (r.ours.per_run(), r.bpftrace.per_run()) {
            (Some(o), Some(b)) => format!("{:.2}x", o / b),
            _ => "-".into(),
        };
        s += &format!(
            "    {:<24} {:>8} {:>8} {:>8} {:>6} {:>6}\n",
            r.program,
            r.ours.runs,
            ns(r.ours),
            ns(r.bpftrace),
            ns(r.empty),
            ratio,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog(id: u64, name: &str, ns: u64, runs: u64) -> Prog {
        Prog {
            id,
            name: name.into(),
            run_time_ns: ns,
            run_cnt: runs,
        }
    }

    fn at(prog_id: u64, fd_type: &str, func: &str) -> Attach {
        Attach {
            prog_id,
            fd_type: fd_type.into(),
            func: func.into(),
        }
    }

    #[test]
    fn sides_are_told_apart_by_the_attach_list_not_the_name() {
        let points = vec![("type1_pin".to_string(), "vfio_pin_pages_remote".to_string())];
        // Two loads of our programs (two measured sets) add up.
        let ours = vec![
            prog(1, "type1_pin", 3_000, 10),
            prog(2, "type1_pin_ret", 5_000, 10),
            prog(7, "type1_pin", 3_400, 10),
            prog(8, "type1_pin_ret", 4_600, 10),
        ];
        // bpftrace's two programs share one cut name.
        let bt = vec![
            prog(30, "vfio_pin_pages_", 7_000, 10),
            prog(31, "vfio_pin_pages_", 9_000, 10),
            prog(32, "unpin_user_page", 1, 1),
        ];
        let bt_at = vec![
            at(31, "kprobe", "vfio_pin_pages_remote"),
            at(30, "kretprobe", "vfio_pin_pages_remote"),
            at(32, "kprobe", "unpin_user_page"),
        ];
        let rows = rows(&points, &ours, (&bt, &bt_at), (&[], &[]));
        assert_eq!(rows.len(), 2);
        let entry = rows.iter().find(|r| r.program == "type1_pin").unwrap();
        assert_eq!(
            entry.ours,
            Cost {
                ns: 6_400,
                runs: 20
            }
        );
        assert_eq!(
            entry.bpftrace,
            Cost {
                ns: 9_000,
                runs: 10
            }
        );
        assert_eq!(entry.empty.per_run(), None);
        let ret = rows.iter().find(|r| r.program == "type1_pin_ret").unwrap();
        assert_eq!(
            ret.bpftrace,
            Cost {
                ns: 7_000,
                runs: 10
            }
        );
        let t = table(&rows);
        // 320 ns against 900: 0.36x; 480 against 700: 0.69x.
        assert!(t.contains("0.36x") && t.contains("0.69x"), "{t}");
    }

    #[test]
    fn the_headline_sums_only_what_both_tools_ran() {
        let points = vec![
            ("type1_pin".to_string(), "vfio_pin_pages_remote".to_string()),
            ("lock_acct".to_string(), "vfio_lock_acct.part.0".to_string()),
        ];
        let ours = vec![
            prog(1, "type1_pin", 3_000, 10),
            // Costly, and bpftrace's wildcard did not attach here.
            prog(2, "lock_acct", 90_000, 10),
        ];
        let bt = vec![prog(30, "vfio_pin_pages_", 9_000, 10)];
        let bt_at = vec![at(30, "kprobe", "vfio_pin_pages_remote")];
        let em = vec![prog(40, "vfio_pin_pages_", 1_000, 10)];
        let em_at = vec![at(40, "kprobe", "vfio_pin_pages_remote")];
        let c = common(&rows(&points, &ours, (&bt, &bt_at), (&em, &em_at)));
        assert_eq!(c.programs, 1);
        assert_eq!(
            c.ours,
            Cost {
                ns: 3_000,
                runs: 10
            }
        );
        assert_eq!(c.bpftrace.per_run(), Some(900.0));
        assert_eq!(c.empty.per_run(), Some(100.0));
        assert_eq!(c.unmatched, vec!["lock_acct".to_string()]);
    }

    #[test]
    fn points_our_programs_never_ran_are_left_out() {
        let points = vec![
            ("put_pfn".to_string(), "put_pfn".to_string()),
            (
                "type1_open".to_string(),
                "vfio_iommu_type1_open".to_string(),
            ),
        ];
        let ours = vec![prog(1, "put_pfn", 0, 0), prog(2, "type1_open_ret", 500, 2)];
        let rows = rows(&points, &ours, (&[], &[]), (&[], &[]));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].program, "type1_open_ret");
        assert!(table(&rows).contains("type1_open_ret"));
    }

    #[test]
    fn programs_loaded_between_two_listings() {
        let before = vec![prog(1, "a", 5, 1)];
        let after = vec![prog(1, "a", 9, 2), prog(2, "b", 3, 1)];
        let new = loaded_between(&before, &after);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].name, "b");
    }
}
