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
    let v: Verdicts = match serde_json::from_str(&read(super::outputs::VERDICTS)) {
        Ok(v) => v,
        Err(e) => return vec![format!("{kernel}: verdicts.json: {e}")],
    };
    // check: everything resolvable once type1 is loaded, verifier included.
    let check = read(super::outputs::CHECK);
    if read(super::outputs::CHECK_EXIT).trim() != "0"
        || !check.contains("ok   probes load (verifier)")
    {
        bad.push(format!(
            "{kernel}: `vfio-zp check` exit {}:\n{check}",
            read(super::outputs::CHECK_EXIT).trim()
        ));
    }
    let m = parse_metrics(&read(super::outputs::METRICS));
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
    for name in CONTRACT.iter().chain(&PROCESS) {
        if !read(super::outputs::METRICS).contains(&format!("# TYPE {name} ")) {
            bad.push(format!("{kernel}: metric {name} missing from the scrape"));
        }
    }
    // The event loop's own tick lateness, while /metrics was under load:
    // a figure (the lab is emulated), but the ticks must have been counted.
    let ticks = m
        .get("vfio_zp_event_loop_lag_seconds_count")
        .copied()
        .unwrap_or(0.0);
    if ticks < 10.0 {
        bad.push(format!("{kernel}: {ticks} event-loop ticks measured"));
    }
    let p99 = m
        .iter()
        .filter_map(|(k, n)| {
            let le = k.strip_prefix("vfio_zp_event_loop_lag_seconds_bucket{le=\"")?;
            Some((le.trim_end_matches("\"}").parse::<f64>().ok()?, *n))
        })
        .filter(|(_, n)| *n >= 0.99 * ticks)
        .map(|(le, _)| le)
        .fold(f64::INFINITY, f64::min);
    if p99.is_finite() {
        println!("{kernel}: event-loop tick lag p99 <= {p99} s over {ticks} ticks");
    } else {
        println!("{kernel}: event-loop tick lag p99 > 0.5 s over {ticks} ticks (emulated)");
    }
    // top shows the same numbers.
    let top = read(super::outputs::TOP);
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
    // What a real Prometheus server scraped: the same values.
    if dir.join(super::outputs::PROMETHEUS_SKIPPED).exists() {
        vfio_zp::testing::skip(
            "lab-prometheus",
            &format!("{kernel}: no Prometheus server; only the scrape client's view was checked"),
        );
    } else {
        bad.extend(check_prometheus(
            kernel,
            &read(super::outputs::PROMETHEUS_QUERY),
            &m,
        ));
    }
    // The interactive view in tmux, and top loading the probes itself.
    let screen = read(super::outputs::TOP_TMUX);
    if dir.join(super::outputs::TOP_TMUX_SKIPPED).exists() {
        vfio_zp::testing::skip(
            "lab-tmux",
            &format!("{kernel}: no tmux in the guest; the interactive view was not tested"),
        );
    } else if screen.trim().is_empty() {
        bad.push(format!(
            "{kernel}: top in tmux showed nothing (console.log says why)"
        ));
    } else {
        for (name, n) in &leaked {
            if !screen
                .lines()
                .any(|l| l.contains(name) && l.contains(&format!(" {n} ")))
            {
                bad.push(format!(
                    "{kernel}: tmux screen lacks {name} with {n} leaked:\n{screen}"
                ));
            }
        }
        let leaks = leaking.values().any(|l| *l);
        if leaks != screen.contains("Leaking") {
            bad.push(format!(
                "{kernel}: tmux screen shows Leaking = {}, verdicts {leaks}",
                !leaks
            ));
        }
        if !read(super::outputs::TOP_TMUX_SORTED).contains("sort: pin rate") {
            bad.push(format!("{kernel}: the s key did not change the sort"));
        }
    }
    let local = read(super::outputs::TOP_LOCAL);
    let rc = v.host.zero_page_refcount.unwrap_or(-1);
    if !local.contains("probes 13/13 attached")
        || !local.contains(&format!("zero page refcount {rc} "))
    {
        bad.push(format!(
            "{kernel}: top --local (refcount {rc} expected):\n{local}"
        ));
    }
    bad
}

/// Every metric of the contract (README, docs/operations.md).
pub const CONTRACT: [&str; 23] = [
    "vfio_zp_zero_page_unexplained_pins",
    "vfio_zp_uncharges_after_exit_total",
    "vfio_zp_zero_page_pins_total",
    "vfio_zp_zero_page_pinned_pages",
    "vfio_zp_zero_page_leaked_pins",
    "vfio_zp_leak_detected",
    "vfio_zp_pinned_pages",
    "vfio_zp_locked_vm_bytes",
    "vfio_zp_memlock_limit_bytes",
    "vfio_zp_memlock_uncharged_zero_page_bytes",
    "vfio_zp_memlock_shortfall_bytes",
    "vfio_zp_zero_page_refcount",
    "vfio_zp_zero_page_refcount_headroom_pins",
    "vfio_zp_kernel_behaviour_info",
    "vfio_zp_probe_attached",
    "vfio_zp_probe_state",
    "vfio_zp_events_total",
    "vfio_zp_events_lost_total",
    "vfio_zp_probe_missed_total",
    "vfio_zp_model_divergence_total",
    "vfio_zp_model_divergence_set_aside_total",
    "vfio_zp_build_info",
    "vfio_zp_event_loop_lag_seconds",
];

/// The agent's own footprint (prometheus' process collector).
pub const PROCESS: [&str; 5] = [
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// The instant query of every vfio_zp_* series must hold exactly the
/// scraped samples (Prometheus adds only `instance` and `job`).
fn check_prometheus(kernel: &str, text: &str, scraped: &BTreeMap<String, f64>) -> Vec<String> {
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return vec![format!(
                "{kernel}: Prometheus query result unreadable ({e}): {text:.200}"
            )];
        }
    };
    let Some(results) = v["data"]["result"].as_array() else {
        return vec![format!("{kernel}: Prometheus query failed: {text:.300}")];
    };
    let mut got = BTreeMap::new();
    for r in results {
        let mut labels: Vec<(String, String)> = r["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "instance" | "job"))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        labels.sort();
        let name = r["metric"]["__name__"].as_str().unwrap_or_default();
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        let value: f64 = r["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
        got.insert(key, value);
    }
    let mut bad = Vec::new();
    // The query asks for vfio_zp_* only (process_* is the collector's).
    let scraped: BTreeMap<&String, &f64> = scraped
        .iter()
        .filter(|(k, _)| k.starts_with("vfio_zp_"))
        .collect();
    // Probe hit counts may move between the two reads (other GUP users),
    // and the event loop ticks on.
    let moving = |k: &str| {
        k.starts_with("vfio_zp_events_total") || k.starts_with("vfio_zp_event_loop_lag_seconds")
    };
    for (k, want) in scraped.iter().filter(|(k, _)| !moving(k)) {
        match got.get(*k) {
            Some(v) if v == *want => {}
            other => bad.push(format!(
                "{kernel}: Prometheus has {k} = {other:?}, the scrape {want}"
            )),
        }
    }
    if got.len() != scraped.len() {
        bad.push(format!(
            "{kernel}: Prometheus holds {} series, the scrape {}",
            got.len(),
            scraped.len()
        ));
    }
    bad.truncate(10);
    bad
}
