//! The operator surfaces the lab reads from the running recorder (its
//! /metrics scraped, `top --once`, `check`), against its live verdicts.
use std::{collections::BTreeMap, path::Path};

use vfio_zp::model::verdict::{Leak, Verdicts};

/// `name{labels}` -> value, from the Prometheus text format.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

pub fn check(kernel: &str, dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let v: Verdicts = match serde_json::from_str(&read("verdicts.json")) {
        Ok(v) => v,
        Err(e) => return vec![format!("{kernel}: verdicts.json: {e}")],
    };
    // check: everything resolvable once type1 is loaded, verifier included.
    let check = read("check.txt");
    if read("check-exit").trim() != "0" || !check.contains("ok   probes load (verifier)") {
        bad.push(format!(
            "{kernel}: `vfio-zp check` exit {}:\n{check}",
            read("check-exit").trim()
        ));
    }
    let m = parse_metrics(&read("metrics.txt"));
    if m.is_empty() {
        bad.push(format!("{kernel}: no metrics scraped"));
        return bad;
    }
    let mut leaked: BTreeMap<&str, i64> = BTreeMap::new();
    let mut leaking: BTreeMap<&str, bool> = BTreeMap::new();
    for c in &v.containers {
        *leaked.entry(&c.name).or_default() += c.zero_page_pins_leaked;
        *leaking.entry(&c.name).or_default() |= c.leak == Leak::Leaking;
    }
    for (name, n) in &leaked {
        let got = m.get(&format!(
            "vfio_zp_zero_page_leaked_pins{{container=\"{name}\"}}"
        ));
        if got != Some(&(*n as f64)) {
            bad.push(format!(
                "{kernel}: metric leaked pins of {name} {got:?}, verdicts {n}"
            ));
        }
        let flag = m.get(&format!("vfio_zp_leak_detected{{container=\"{name}\"}}"));
        if flag != Some(&(leaking[name] as u8 as f64)) {
            bad.push(format!("{kernel}: metric leak_detected of {name} {flag:?}"));
        }
    }
    if m.get("vfio_zp_zero_page_refcount").copied() != v.host.zero_page_refcount.map(|r| r as f64) {
        bad.push(format!(
            "{kernel}: metric refcount {:?}, verdicts {:?}",
            m.get("vfio_zp_zero_page_refcount"),
            v.host.zero_page_refcount
        ));
    }
    let attached = m
        .iter()
        .filter(|(k, _)| k.starts_with("vfio_zp_probe_attached{"))
        .count();
    if attached != 13 || m["vfio_zp_events_lost_total"] != 0.0 {
        bad.push(format!(
            "{kernel}: {attached} probe series, events lost {}",
            m["vfio_zp_events_lost_total"]
        ));
    }
    // top shows the same numbers.
    let top = read("top.txt");
    for (name, n) in &leaked {
        let row = top
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name));
        match row.map(|r| r.split_whitespace().collect::<Vec<_>>()) {
            Some(cols) if cols.get(3) == Some(&n.to_string().as_str()) => {}
            other => bad.push(format!(
                "{kernel}: top row for {name}: {other:?}, leaked {n}"
            )),
        }
    }
    bad
}
