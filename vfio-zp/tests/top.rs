//! `vfio-zp top` against an agent's endpoint serving a golden snapshot:
//! `--once`, `--json`, and the interactive view in a real terminal (tmux).
mod common;

use std::{path::Path, process::Command, time::Duration};

use vfio_zp::{export::http::Shared, export::snapshot::Snapshot};

fn snapshot(k: &str) -> Snapshot {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(k);
    let rec = vfio_zp::stream::read_path(&dir.join("recording.jsonl")).unwrap();
    Snapshot::new(common::verdicts::replay(&dir), &rec.header.probes, None)
}

/// Serves `s` on a loopback port from a thread of its own.
fn agent(s: Snapshot) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let shared = std::sync::Arc::new(Shared::default());
            shared.publish(s);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap().to_string()).unwrap();
            vfio_zp::export::http::serve(l, shared).await;
        });
    });
    rx.recv().unwrap()
}

fn top(args: &[&str]) -> (i32, String, String) {
    common::vfio_zp(&[&["top"], args].concat(), &[])
}

#[test]
fn once_and_json_show_the_leak() {
    let s = snapshot("5.10-leaky");
    let vm1 = s
        .verdicts
        .containers
        .iter()
        .find(|c| c.name == "vm1")
        .unwrap()
        .zero_page_pins_leaked;
    let addr = agent(s);
    let (code, text, err) = top(&["--once", "--interval", "100ms", "--agent", &addr]);
    assert_eq!(code, 0, "{err}");
    let row = text
        .lines()
        .find(|l| l.starts_with("vm1 "))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[3], vm1.to_string(), "{row}");
    assert!(row.ends_with("Leaking"), "{row}");
    assert!(text.contains("type1_unpins_zero_page=false(!)"), "{text}");
    let (code, json, _) = top(&["--json", "--agent", &addr]);
    assert_eq!(code, 0);
    let s: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(s.verdicts.kernel_version.as_deref(), Some("5.10.223"));
}

#[test]
fn an_agent_that_is_not_there_is_a_clear_error() {
    let (code, _, err) = top(&["--once", "--agent", "127.0.0.1:9"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("127.0.0.1:9") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn interactive_view_in_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        vfio_zp::testing::skip(
            "top-tmux",
            "tmux not installed; the interactive view was not tested",
        );
        return;
    }
    let addr = agent(snapshot("5.10-leaky"));
    let name = format!("vfio-zp-top-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().unwrap();
    let cmd = format!(
        "{} top --agent {addr} --interval 200ms",
        env!("CARGO_BIN_EXE_vfio-zp")
    );
    assert!(
        tmux(&[
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "160",
            "-y",
            "40",
            &cmd
        ])
        .status
        .success()
    );
    let capture = || {
        std::thread::sleep(Duration::from_millis(1500));
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &name]).stdout).into_owned()
    };
    let screen = capture();
    let result = std::panic::catch_unwind(|| {
        assert!(
            screen.contains("vm1") && screen.contains("Leaking"),
            "{screen}"
        );
        assert!(screen.contains("sort: leaked"), "{screen}");
        // Sort key, help overlay, filter.
        tmux(&["send-keys", "-t", &name, "s"]);
        assert!(capture().contains("sort: pin rate"));
        tmux(&["send-keys", "-t", &name, "?"]);
        assert!(capture().contains("pins that will never be released"));
        // Escape on its own: followed at once by a key it reads as Alt+key.
        tmux(&["send-keys", "-t", &name, "Escape"]);
        assert!(!capture().contains("pins that will never be released"));
        tmux(&["send-keys", "-t", &name, "/", "v", "m", "-", "t", "Enter"]);
        let s = capture();
        assert!(s.contains("vm-two") && !s.contains("vm1 "), "{s}");
        // q quits and gives the terminal back.
        tmux(&["send-keys", "-t", &name, "q"]);
        // Polled: on a loaded machine the exit can take more than a moment.
        let alive = (0..50).all(|_| {
            std::thread::sleep(Duration::from_millis(100));
            tmux(&["has-session", "-t", &name]).status.success()
        });
        assert!(!alive, "top did not exit within 5 s of q");
    });
    let _ = tmux(&["kill-session", "-t", &name]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
