//! Golden recordings from each lab kernel (tests/fixtures/<kernel>/:
//! the recording, the live agent's verdicts, the workload's kernel truth;
//! regenerate with `cargo xtask fixtures`). Replay must reproduce the live
//! verdicts exactly, and those must agree with the kernel's truth.
mod common;

use std::path::Path;

#[test]
fn golden_recordings_replay_to_their_live_verdicts_and_the_truth() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut bad = Vec::new();
    let mut seen = 0;
    for k in ["5.10", "5.10-leaky", "6.1", "6.12"] {
        let dir = root.join(k);
        assert!(
            dir.join("recording.jsonl").exists(),
            "missing fixture {}",
            dir.display()
        );
        seen += 1;
        bad.extend(common::verdicts::check_golden(k, &dir));
    }
    assert_eq!(seen, 4);
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// Issue 15: a golden recording of two threads of one process mapping at
/// once, where the kernel interleaved their pin calls: the threads' map
/// calls overlapped by the workload's clock on every kernel, and on at
/// least one the recording holds a pin call with another thread's GUP
/// record inside it (the model keys calls by thread; the golden check
/// above holds its verdicts to the refcount growth).
#[test]
fn two_threads_mapping_at_once_are_in_the_golden_recordings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut interleaved = Vec::new();
    for k in ["5.10", "5.10-leaky", "6.1", "6.12"] {
        let dir = root.join(k);
        let text = std::fs::read_to_string(dir.join("truth-two-threads.json"))
            .unwrap_or_else(|e| panic!("{k}: no two-threads truth: {e}"));
        let t: serde_json::Value = serde_json::from_str(&text).unwrap();
        let threads = t["runs"][0]["threads"].as_array().unwrap();
        let tids: Vec<u32> = threads
            .iter()
            .map(|t| t["tid"].as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tids.len(), 4, "{k}: two threads, two phases");
        let n = common::verdicts::interleaved_pin_calls(&dir.join("recording.jsonl"), &tids);
        interleaved.push((k, n));
    }
    assert!(
        interleaved.iter().any(|(_, n)| *n > 0),
        "no kernel interleaved the threads' pin calls: {interleaved:?}"
    );
}

/// Live verdicts are compared with replayed ones through their JSON: a
/// float must read back to the same bits (serde_json's default parser is
/// off by one ulp on some, as on this overflow ETA from a 5.10-leaky run).
#[test]
fn json_floats_read_back_to_the_same_bits() {
    let eta = 2090971.0_f64 / 1.05;
    let text = serde_json::to_string(&eta).unwrap();
    let back: f64 = serde_json::from_str(&text).unwrap();
    assert_eq!(back.to_bits(), eta.to_bits(), "{text}");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value.as_f64().map(f64::to_bits), Some(eta.to_bits()));
}

/// Issue 15, case 2: the 5.10-leaky recording with its GUP pin events
/// removed, as if the pins went through a path not probed. The type1
/// records' refcount readings still climb by 1024 per pin: every container
/// that leaked must read `uncertain` with the growth no pin seen explains,
/// never `none` (it read `none` for all of them).
#[test]
fn a_leak_through_an_unprobed_pin_path_is_never_none() {
    use vfio_zp::model::{Config, Model, verdict::Leak};
    use vfio_zp::stream::event::What;
    use vfio_zp::stream::line::Line;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/5.10-leaky");
    let rec = vfio_zp::stream::read_path(&dir.join("recording.jsonl")).unwrap();
    let replay = |keep: &dyn Fn(&Line) -> bool| {
        let mut m = Model::new(&rec.header, Config::default());
        rec.lines
            .iter()
            .filter(|l| keep(l))
            .for_each(|l| m.apply(l));
        m.verdicts()
    };
    let whole = replay(&|_| true);
    let blind = replay(&|l| !matches!(l, Line::Event(e) if matches!(e.what, What::GupPin { .. })));
    // The kernel's truth for the libvirt VM's scenario: the refcount's growth.
    let truth: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("truth-ro-read-touched.json")).unwrap(),
    )
    .unwrap();
    let grew = (truth["refcount_after"].as_i64().unwrap()
        - truth["refcount_before"].as_i64().unwrap())
        / 1024;
    // Containers that lived at the same time share their growth: a
    // reading taken at one's return holds the other's unprobed pins too,
    // so only the group's sum is bounded by what the group leaked.
    let mut spans: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    for l in &rec.lines {
        if let Line::Event(e) = l
            && let Some(id) = e.container
        {
            let s = spans.entry(id).or_insert((e.t_ns, e.t_ns));
            s.0 = s.0.min(e.t_ns);
            s.1 = s.1.max(e.t_ns);
        }
    }
    let group_of = |id: u32| -> Vec<u32> {
        let Some(&(a, b)) = spans.get(&id) else {
            return vec![id];
        };
        spans
            .iter()
            .filter(|(_, (x, y))| *x <= b && a <= *y)
            .map(|(i, _)| *i)
            .collect()
    };
    let mut leaking = 0;
    for c in whole.containers.iter().filter(|c| c.leak == Leak::Leaking) {
        leaking += 1;
        let b = blind.containers.iter().find(|b| b.id == c.id).unwrap();
        assert_eq!(b.leak, Leak::Uncertain, "{}: {}", b.name, b.leak_reason);
        assert!(
            b.unseen_pins > 0 && b.leak_reason.contains("no GUP pin seen"),
            "{}: {}",
            b.name,
            b.leak_reason
        );
        let group = group_of(c.id);
        let sum = |v: &vfio_zp::model::verdict::Verdicts,
                   f: fn(&vfio_zp::model::verdict::ContainerVerdict) -> i64|
         -> i64 {
            v.containers
                .iter()
                .filter(|x| group.contains(&x.id))
                .map(f)
                .sum()
        };
        let (unseen, leaked) = (
            sum(&blind, |x| x.unseen_pins),
            sum(&whole, |x| x.zero_page_pins_leaked),
        );
        assert!(
            unseen <= leaked,
            "{} (with {group:?}): {unseen} unseen, {leaked} leaked",
            b.name,
        );
        if c.name == "vm1" {
            println!(
                "vm1: {} pins' worth unseen; the refcount grew by {grew} pins, {} leaked",
                b.unseen_pins, c.zero_page_pins_leaked
            );
        }
    }
    assert!(
        leaking >= 3,
        "only {leaking} leaking containers in the fixture"
    );
    // Where nothing leaked, no growth is invented.
    for c in whole.containers.iter().filter(|c| c.leak == Leak::None) {
        let b = blind.containers.iter().find(|b| b.id == c.id).unwrap();
        assert_eq!(b.unseen_pins, 0, "{}: {}", b.name, b.leak_reason);
    }
}

/// Issue 15: a flooded ring, committed. The lab's flood (six workloads
/// mapping at once into a 4 KiB ring buffer) on every fixture kernel: the
/// recorder's live verdicts are what its recording replays to, the exact
/// counters match the workloads' kernel truth, and no flooded container
/// gets a verdict that guesses (tests/common/flood.rs, as in the lab).
#[test]
fn flooded_rings_replay_to_their_live_verdicts_and_the_truth() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut bad = Vec::new();
    for k in ["5.10", "5.10-leaky", "6.1", "6.12"] {
        let dir = root.join(k).join("flood");
        assert!(
            dir.join("flood.jsonl").exists(),
            "missing fixture {}",
            dir.display()
        );
        bad.extend(common::flood::check(k, &dir));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
