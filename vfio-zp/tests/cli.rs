//! The binary on bad input: a clear one-line error naming the file (and
//! line), exit code 2, never a panic; and `replay` on a golden recording.
mod common;

use std::process::Command;

/// `vfio-zp replay ARGS`, fed `stdin` when given.
fn replay(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let Some(text) = stdin else {
        return common::vfio_zp(&[&["replay"], args].concat(), &[]);
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-zp"))
        .arg("replay")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Written from a thread: the reader may stop at an error before the
    // end (a broken pipe here is its right).
    let mut input = child.stdin.take().unwrap();
    let text = text.to_string();
    let writer = std::thread::spawn(move || {
        if let Err(e) = input.write_all(text.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
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
    // Whatever version the fixture was recorded at, one past any this reads.
    let mut newer: serde_json::Value = serde_json::from_str(header).unwrap();
    newer["version"] = serde_json::json!(u32::MAX);
    let newer = newer.to_string();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty file"),
        ("not json\n".into(), "<stdin>:1: not JSON"),
        (
            format!("{header}\n{{\"record\":\"event\"}}\n"),
            "<stdin>:2: ",
        ),
        (format!("{newer}\n"), "newer than this vfio-zp reads"),
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

/// Issue 16: input is bounded. A line past the cap is refused at once,
/// naming the file and line, before memory grows with it.
#[test]
fn overlong_lines_are_refused_with_bounded_memory() {
    let (code, _, err) = replay(&["/dev/zero"], None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("/dev/zero:1: line longer than 1024 KiB"),
        "{err}"
    );
    let good = std::fs::read_to_string(fixture()).unwrap();
    let header = good.lines().next().unwrap();
    let long = format!("{header}\n{}\n", "x".repeat(3 << 20));
    let (code, _, err) = replay(&["-"], Some(&long));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("<stdin>:2: line longer"), "{err}");
}

/// Issue 16: a recording cut mid-line (a crash, a full disk) replays to
/// the verdicts of the lines before the cut, and says so.
#[test]
fn a_cut_recording_replays_up_to_its_last_whole_line() {
    let good = std::fs::read_to_string(fixture()).unwrap();
    // Cut in the middle of some line past the first half.
    let half = good.len() / 2;
    let end_of_whole = half + good[half..].find('\n').unwrap() + 1;
    let whole_lines = good[..end_of_whole].lines().count();
    let cut = &good[..end_of_whole + 20];
    let (code, text, err) = replay(&["--json", "-"], Some(cut));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "<stdin>:{}: the last line is cut short",
            whole_lines + 1
        )),
        "{err}"
    );
    // The oracle: the same lines, whole, replay to the same verdicts.
    let (code, want, err2) = replay(&["--json", "-"], Some(&good[..end_of_whole]));
    assert_eq!(code, 0, "{err2}");
    assert!(err2.is_empty(), "{err2}");
    assert_eq!(text, want);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(!v["containers"].as_array().unwrap().is_empty());
}

/// Issue 16: time that runs backwards by more than reordering between
/// CPUs allows is a corrupt file: an error naming the line.
#[test]
fn time_going_backwards_is_an_error_naming_the_line() {
    let good = std::fs::read_to_string(fixture()).unwrap();
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    // Move an event 10 s into the past, far behind the lines before it.
    let (i, t) = lines
        .iter()
        .enumerate()
        .skip(lines.len() / 2)
        .find_map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["record"] == "event").then(|| (i, v["t_ns"].as_u64().unwrap()))
        })
        .unwrap();
    let back = t - 10_000_000_000;
    lines[i] = lines[i].replace(&format!("\"t_ns\":{t}"), &format!("\"t_ns\":{back}"));
    let (code, _, err) = replay(&["-"], Some(&(lines.join("\n") + "\n")));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("<stdin>:{}: time goes backwards", i + 1)),
        "{err}"
    );
}

fn record(args: &[&str]) -> (i32, String) {
    let (code, _, err) =
        common::vfio_zp(&[&["record"], args].concat(), &[("VFIO_ZP_LOG", "error")]);
    (code, err)
}

/// Issue 16: `record` never destroys a file. An existing output is kept
/// unless --force; a start that fails (on a host that cannot probe, as
/// here, or any other reason) leaves it as it was, leaves no temporary
/// file behind, and never writes through a symlink.
#[test]
fn record_keeps_existing_files() {
    let dir = std::env::temp_dir().join(format!("vfio-zp-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("rec.jsonl");
    let old = std::fs::read(fixture()).unwrap();
    std::fs::write(&rec, &old).unwrap();
    let rec_s = rec.to_str().unwrap();
    let (code, err) = record(&["-o", rec_s, "--duration", "1s"]);
    assert_eq!(code, 14, "{err}");
    assert!(err.contains("exists (--force replaces it)"), "{err}");
    // The verdicts file is checked before anything starts too.
    let v = dir.join("verdicts.json");
    std::fs::write(&v, "keep").unwrap();
    let (code, err) = record(&[
        "-o",
        dir.join("new.jsonl").to_str().unwrap(),
        "--verdicts",
        v.to_str().unwrap(),
    ]);
    assert_eq!(code, 14, "{err}");
    assert!(!dir.join("new.jsonl").exists());
    // A symlink is an existing file: refused, its target untouched.
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let (code, err) = record(&["-o", link.to_str().unwrap()]);
    assert_eq!(code, 14, "{err}");
    if std::path::Path::new("/sys/module/vfio_iommu_type1").exists() {
        return vfio_zp::testing::skip(
            "record-failed-start",
            "vfio_iommu_type1 is loaded: a start may not fail here",
        );
    }
    // --force with a start that fails: nothing changes.
    for target in [rec_s, link.to_str().unwrap()] {
        let (code, err) = record(&["-o", target, "--force", "--no-wait"]);
        assert_ne!(code, 0, "{err}");
    }
    assert_eq!(std::fs::read(&rec).unwrap(), old);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["link.jsonl", "rec.jsonl", "verdicts.json", "victim"],
        "a temporary file was left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn vfio_zp(args: &[&str]) -> (i32, String, String) {
    common::vfio_zp(args, &[])
}

/// Issue 16: a log filter that does not parse is a usage error, not a
/// silent `info`; `--listen` takes the forms operators write, and the log
/// names the address really bound.
#[test]
fn log_filters_and_listen_addresses() {
    let (code, _, err) = vfio_zp(&["--log", "vfio_zp=[", "replay", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid value 'vfio_zp=[' for '--log"),
        "{err}"
    );
    for bad in ["10983", "::1:10983", "127.0.0.1:http", "127.0.0.1:70000"] {
        let (code, _, err) = vfio_zp(&["agent", "--listen", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("for '--listen"), "{bad}: {err}");
    }
    let dir = std::env::temp_dir().join(format!("vfio-zp-listen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (spec, host) in [("localhost:0", "127.0.0.1:"), (":0", "0.0.0.0:")] {
        let out = dir.join("r.jsonl");
        let (_, _, err) = vfio_zp(&[
            "record",
            "-o",
            out.to_str().unwrap(),
            "--duration",
            "1s",
            "--force",
            "--listen",
            spec,
        ]);
        let line = err
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .unwrap_or_else(|| panic!("{spec}: no serving line in {err}"));
        let port: u16 = line
            .rsplit_once(host)
            .and_then(|(_, p)| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{spec}: {line}"));
        assert_ne!(port, 0, "{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 16: `--listen systemd` serves the socket systemd passes (the unit
/// then gives the agent no network of its own), and says so when none was.
#[test]
fn a_socket_passed_by_systemd_is_served() {
    let (code, _, err) = vfio_zp(&["record", "-o", "-", "--listen", "systemd"]);
    assert_eq!(code, 18, "{err}");
    assert!(err.contains("no socket passed"), "{err}");
    if std::process::Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        return vfio_zp::testing::skip(
            "socket-activation",
            "systemd-socket-activate not installed",
        );
    }
    // A port free a moment ago; systemd-socket-activate binds it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new("systemd-socket-activate")
        .args(["-l", &addr, env!("CARGO_BIN_EXE_vfio-zp")])
        .args([
            "record",
            "-o",
            "-",
            "--duration",
            "1s",
            "--listen",
            "systemd",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its first connection makes it exec the agent with the socket.
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(t.elapsed().as_secs() < 30, "nothing listens on {addr}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The agent ends either way: no kprobes here, or one second recorded.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "serving /metrics, /healthz and /api/v1/snapshot on http://{addr}"
        )),
        "{err}"
    );
}

/// Issue 16: every subcommand has its page, and the main page's SEE ALSO
/// names only pages that exist; `check`'s "unusable" is not a usage error.
#[test]
fn man_pages_and_check_exit_codes() {
    let dir = std::env::temp_dir().join(format!("vfio-zp-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (code, _, err) = vfio_zp(&["man", "--out-dir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let main = std::fs::read_to_string(dir.join("vfio-zp.1")).unwrap();
    for sub in ["agent", "record", "top", "check", "replay"] {
        assert!(main.contains(&format!("vfio\\-zp\\-{sub}(1)")), "{sub}");
        let page = std::fs::read_to_string(dir.join(format!("vfio-zp-{sub}.1"))).unwrap();
        assert!(page.contains(".SH OPTIONS"), "{sub}: {page}");
    }
    let agent = std::fs::read_to_string(dir.join("vfio-zp-agent.1")).unwrap();
    assert!(agent.contains("state\\-dir"), "{agent}");
    let (code, out, _) = vfio_zp(&["man", "record"]);
    assert_eq!(code, 0);
    assert!(out.contains("\\-\\-force"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
    let (code, out, _) = vfio_zp(&["check", "--quick"]);
    assert!([0, 1, 3].contains(&code), "{code}: {out}");
    let unusable = out.lines().any(|l| l.starts_with("FAIL "));
    assert_eq!(code == 3, unusable, "{out}");
}
