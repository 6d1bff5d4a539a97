//! The binary on bad input: a clear one-line error naming the file (and
//! line), exit code 2, never a panic; and `replay` on a golden recording.
use std::process::Command;

fn replay(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfio-zp"));
    cmd.arg("replay").args(args);
    let out = match stdin {
        Some(text) => {
            use std::io::Write;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
        None => cmd.output().unwrap(),
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn fixture() -> String {
    format!(
        "{}/tests/fixtures/5.10-leaky/recording.jsonl",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn bad_recordings_get_one_clear_line() {
    let good = std::fs::read_to_string(fixture()).unwrap();
    let header = good.lines().next().unwrap();
    let newer = header.replace("\"version\":2", "\"version\":9");
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty file"),
        ("not json\n".into(), "<stdin>:1: not JSON"),
        (
            format!("{header}\n{{\"record\":\"event\"}}\n"),
            "<stdin>:2: ",
        ),
        (format!("{newer}\n"), "newer than this vfio-zp reads"),
        (good[..good.len() / 2].to_string(), "truncated"),
        (format!("{header}\n{header}\n"), "a second header"),
    ];
    for (input, want) in cases {
        let (code, _, err) = replay(&["-"], Some(&input));
        assert_eq!(code, 2, "{want}: {err}");
        assert!(err.contains(want), "wanted {want:?} in {err:?}");
        assert!(
            !err.contains("panicked") && err.lines().count() == 1,
            "{err}"
        );
    }
    let (code, _, err) = replay(&["/nonexistent/rec.jsonl"], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/rec.jsonl: No such file"),
        "{err}"
    );
}

#[test]
fn replay_prints_text_and_json_verdicts() {
    let (code, text, err) = replay(&[&fixture()], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("type1_unpins_zero_page") && text.contains("Leaking"),
        "{text}"
    );
    let (code, json, _) = replay(&["--json", &fixture()], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["containers"].as_array().unwrap().len() >= 9);
}

/// Issue 16: output that cannot be written is an error, never a silent
/// success. Each of these exited 0 having written nothing to /dev/full.
#[test]
fn write_errors_end_with_a_message_and_a_code() {
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full");
    if full().is_err() {
        return vfio_zp::testing::skip("dev-full", "no /dev/full here");
    }
    let fixture = fixture();
    for args in [
        vec!["replay", fixture.as_str()],
        vec!["replay", "--json", fixture.as_str()],
        vec!["man"],
        vec!["completions", "bash"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vfio-zp"))
            .args(&args)
            .stdout(full().unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(14), "{args:?}: {err}");
        assert!(
            err.contains("cannot write standard output") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    // A reader that stops early (`| head`) is no error.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-zp"))
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
