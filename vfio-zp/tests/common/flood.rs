//! The lab's ring-buffer flood (issue: survive faults): every VFIO group
//! maps at once while the recorder reads a one-page ring buffer. The probes'
//! exact counters must still match the kernel's truth, the drops be counted
//! and exported, and no flooded container get a verdict that guesses.
use std::path::Path;

use vfio_zp::{
    model::verdict::{Leak, Verdicts},
    stream::{Line, read_path},
};

const PIN_BIAS: i64 = 1024;

pub fn check(kernel: &str, dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut fail = |m: String| bad.push(format!("{kernel}: flood: {m}"));
    let leaky = kernel == "5.10-leaky";
    // GUP takes 1024 references per zero-page pin on the 5.10 kernels only.
    let gup_refcounts = kernel.starts_with("5.10");

    for f in [
        super::outputs::FLOOD_RECORDING,
        super::outputs::FLOOD_VERDICTS,
        super::outputs::FLOOD_METRICS,
        super::outputs::FLOOD_RECORDER_LOG,
    ] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if let Some(t) = super::hardening::kernel_address(&text) {
            fail(format!("{f} holds a kernel address: {t}"));
        }
    }
    // The recorder's live verdicts are what its recording replays to.
    if dir.join(super::outputs::FLOOD_RECORDING).exists() {
        let replayed = super::verdicts::replay_file(&dir.join(super::outputs::FLOOD_RECORDING));
        for d in super::verdicts::replay_differs(
            "flood",
            &replayed,
            &dir.join(super::outputs::FLOOD_VERDICTS),
            false,
        ) {
            fail(d);
        }
        // The flood only loses records: whatever the model could not
        // predict in it is set aside as the losses' doing, never blamed on
        // the kernel (vfio_zp_model_divergence_total).
        if !replayed.divergences.is_empty() {
            fail(format!(
                "divergences counted despite the losses: {:?}",
                replayed.divergences
            ));
        }
    }
    let rec = match read_path(&dir.join(super::outputs::FLOOD_RECORDING)) {
        Ok(r) => r,
        Err(e) => {
            fail(format!("flood.jsonl: {e}"));
            return bad;
        }
    };
    let counters: Vec<_> = rec
        .lines
        .iter()
        .filter_map(|l| match l {
            Line::Counters(c) => Some(c),
            _ => None,
        })
        .collect();
    let (Some(first), Some(last)) = (counters.first(), counters.last().filter(|c| c.last)) else {
        fail("no first or final counters".into());
        return bad;
    };
    let drops: u64 = last.drops.values().sum();
    if drops == 0 {
        fail("the ring buffer never overflowed: the flood proved nothing".into());
    }

    let truths: Vec<serde_json::Value> = (1..=8)
        .filter_map(|n| std::fs::read_to_string(dir.join(format!("flood-truth-{n}.json"))).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect();
    if truths.len() < 4 {
        fail(format!(
            "only {} flood workloads left a truth",
            truths.len()
        ));
    }
    // Exact counters against the kernel: type1's zero-page pins are the
    // pages pagemap showed zero-backed, whatever the ring buffer dropped.
    let zero_backed: u64 = truths
        .iter()
        .flat_map(|t| t["runs"].as_array().cloned().unwrap_or_default())
        .map(|r| r["zero_backed_after_map"].as_u64().unwrap_or(0))
        .sum();
    let t = &last.totals;
    if t.type1_zero_pinned != zero_backed {
        fail(format!(
            "type1 zero-page pins counted {}, pages zero-backed {zero_backed}",
            t.type1_zero_pinned
        ));
    }
    // And the zero page's refcount (kcore, before the first and after the
    // last workload) moved by 1024 per GUP pin the counters say is held.
    match (first.zero_refcount, last.zero_refcount) {
        (Some(a), Some(b)) => {
            let held = t.gup_zero_pinned as i64 - t.gup_zero_unpinned as i64;
            let explained = if gup_refcounts { held * PIN_BIAS } else { 0 };
            if b as i64 - a as i64 != explained {
                fail(format!(
                    "zero page refcount {a} -> {b}, the exact counters explain {explained} ({} pins, {} unpins)",
                    t.gup_zero_pinned, t.gup_zero_unpinned
                ));
            }
            // Where the agent left the unpin probes off (a GUP that takes
            // no reference: lean.rs checks which kernels) their unpins go
            // uncounted, and the refcount above is the whole truth.
            let last_probes = rec.lines.iter().rev().find_map(|l| match l {
                Line::Probes(p) => Some(p),
                _ => None,
            });
            if leaky != (held > 0) && !last_probes.is_some_and(super::lean::unpins_off) {
                fail(format!(
                    "{held} GUP zero-page pins still held after the flood"
                ));
            }
        }
        _ => fail("no kcore refcount readings".into()),
    }

    // Exported, and said in the verdicts.
    let metrics =
        std::fs::read_to_string(dir.join(super::outputs::FLOOD_METRICS)).unwrap_or_default();
    let lost: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vfio_zp_events_lost_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    if lost <= 0.0 {
        fail(format!(
            "vfio_zp_events_lost_total {lost} after {drops} drops"
        ));
    }
    let v: Verdicts = match std::fs::read_to_string(dir.join(super::outputs::FLOOD_VERDICTS))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            fail(format!("flood-verdicts.json: {e}"));
            return bad;
        }
    };
    if v.coverage.events_lost < drops {
        fail(format!(
            "verdicts count {} events lost, the probes dropped {drops}",
            v.coverage.events_lost
        ));
    }
    let flooded: Vec<_> = v
        .containers
        .iter()
        .filter(|c| c.name.starts_with("flood"))
        .collect();
    // A container all of whose events were dropped is unknown to the
    // model; the host-wide coverage says events were lost.
    if flooded.is_empty() || flooded.len() > truths.len() {
        fail(format!(
            "{} flood containers in the verdicts, {} workloads",
            flooded.len(),
            truths.len()
        ));
    }
    let mut uncertain = 0;
    for c in &flooded {
        let lost_said = c.leak_reason.contains("events lost");
        uncertain += lost_said as usize;
        let ok = match c.leak {
            Leak::Uncertain => lost_said,
            // A leak seen despite the drops: real, its count a lower bound.
            Leak::Leaking => leaky && (lost_said || c.zero_page_pins_leaked > 0),
            // Certain only if no drop touched its life.
            Leak::None => !leaky && !lost_said,
        };
        if !ok {
            fail(format!("{}: {:?}: {}", c.name, c.leak, c.leak_reason));
        }
    }
    if uncertain == 0 {
        fail("no flooded container says events were lost".into());
    }
    bad
}
