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
