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
        bad.extend(common::verdicts::check(k, &dir));
    }
    assert_eq!(seen, 4);
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
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
