//! The exporter on a golden recording: the metric contract, values that
//! agree with the kernel's truth, bounded labels, expiry of gone
//! containers, and the HTTP endpoints (including malformed requests).
mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use vfio_zp::{
    export::http::{Shared, router},
    export::metrics::render,
    export::snapshot::{Expiry, Snapshot},
    stream::read_path,
};

fn fixture(k: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(k)
}

fn snapshot(k: &str) -> Snapshot {
    let dir = fixture(k);
    let rec = read_path(&dir.join("recording.jsonl")).unwrap();
    let last = rec.lines.iter().rev().find_map(|l| match l {
        vfio_zp::stream::Line::Counters(c) => Some(c.clone()),
        _ => None,
    });
    Snapshot::new(
        common::verdicts::replay(&dir),
        &rec.header.probes,
        last.as_ref(),
    )
}

fn parse(text: &str) -> BTreeMap<String, f64> {
    common::surfaces::parse_metrics(text)
}

#[test]
fn leaky_kernel_metrics_follow_the_contract_and_the_truth() {
    let text = render(&snapshot("5.10-leaky"));
    for m in common::surfaces::CONTRACT {
        assert!(
            text.contains(&format!("# TYPE {m} ")),
            "{m} missing:\n{text}"
        );
    }
    let m = parse(&text);
    // The libvirt VM that leaked: pins x 1024 = its scenario's refcount growth.
    let truth: common::verdicts::Truth = serde_json::from_str(
        &std::fs::read_to_string(fixture("5.10-leaky").join("truth-ro-read-touched.json")).unwrap(),
    )
    .unwrap();
    let growth = (truth.refcount_after.unwrap() - truth.refcount_before.unwrap()) as f64;
    assert_eq!(
        m[r#"vfio_zp_zero_page_leaked_pins{container="vm1"}"#] * 1024.0,
        growth
    );
    assert_eq!(m[r#"vfio_zp_leak_detected{container="vm1"}"#], 1.0);
    // Every scenario container that leaked adds to the host refcount.
    let leaked: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("vfio_zp_zero_page_leaked_pins{"))
        .map(|(_, v)| v)
        .sum();
    let rc = m["vfio_zp_zero_page_refcount"];
    assert_eq!(rc, 1.0 + 1024.0 * leaked);
    // The agent ran from boot: every reference is one it saw taken.
    assert_eq!(m["vfio_zp_zero_page_unexplained_pins"], 0.0);
    assert_eq!(
        m["vfio_zp_zero_page_refcount_headroom_pins"],
        ((i32::MAX as f64 - rc) / 1024.0).floor()
    );
    assert_eq!(
        m[r#"vfio_zp_kernel_behaviour_info{gup_pins_zero_page="true",ro_longterm_unshares="false",type1_unpins_zero_page="false"}"#],
        1.0
    );
    assert_eq!(m[r#"vfio_zp_probe_attached{probe="gup_pin_remote"}"#], 1.0);
    // One state per probe is 1, and it agrees with the header's.
    assert_eq!(
        m[r#"vfio_zp_probe_state{probe="gup_pin_remote",state="attached"}"#],
        1.0
    );
    let states: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with(r#"vfio_zp_probe_state{probe="gup_pin_remote","#))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(states, 1.0);
    assert_eq!(m["vfio_zp_events_lost_total"], 0.0);
    // The agent's own footprint, as every exporter gives it.
    assert!(m["process_resident_memory_bytes"] > 1e6);
    assert!(m["process_open_fds"] >= 3.0);
    assert!(m["process_max_fds"] >= m["process_open_fds"]);
    assert_eq!(
        m[r#"vfio_zp_model_divergence_total{kind="zero_refcount"}"#],
        0.0
    );
    // Only names, probe labels, kinds and fixed words as label values.
    for k in m.keys() {
        for pid in ["[", "0x", "ffff"] {
            assert!(!k.contains(pid), "address or pid in a label: {k}");
        }
    }
}

#[test]
fn memlock_metrics_on_a_kernel_that_charges() {
    let m = parse(&render(&snapshot("6.12")));
    // memlock-tight was refused: its limit and shortfall are exported.
    let limit = m[r#"vfio_zp_memlock_limit_bytes{container="tight"}"#];
    let short = m[r#"vfio_zp_memlock_shortfall_bytes{container="tight"}"#];
    assert!(limit > 0.0 && short > 0.0, "{limit} {short}");
    assert_eq!(m[r#"vfio_zp_leak_detected{container="vm1"}"#], 0.0);
    // vm1 read-only mapped 16 read-touched pages: 6.12 unshared and charged them.
    assert_eq!(m[r#"vfio_zp_zero_page_pinned_pages{container="vm1"}"#], 0.0);
}

#[test]
fn closed_containers_expire() {
    let mut s = snapshot("6.1");
    let n = s.verdicts.containers.len();
    assert!(n >= 9 && s.verdicts.containers.iter().all(|c| !c.open));
    let mut e = Expiry::new(Duration::from_secs(60));
    e.apply(&mut s);
    assert_eq!(s.verdicts.containers.len(), n, "just seen closed: kept");
    let mut later = snapshot("6.1");
    later.verdicts.t_ns += 61_000_000_000;
    e.apply(&mut later);
    assert!(later.verdicts.containers.is_empty());
    assert_eq!(later.expired.len(), n);
    assert!(!render(&later).contains("container=\"vm1\""));
}

async fn get(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out)).await;
    out
}

#[tokio::test]
async fn endpoints_answer_and_survive_garbage() {
    let shared = std::sync::Arc::new(Shared::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(vfio_zp::export::http::serve(l, shared.clone()));
    let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        get(addr, &req("/metrics"))
            .await
            .starts_with("HTTP/1.1 503")
    );
    shared.publish(snapshot("5.10-leaky"));
    let m = get(addr, &req("/metrics")).await;
    assert!(
        m.starts_with("HTTP/1.1 200") && m.contains("vfio_zp_leak_detected"),
        "{m}"
    );
    assert!(
        get(addr, &req("/healthz"))
            .await
            .starts_with("HTTP/1.1 200")
    );
    let snap = get(addr, &req("/api/v1/snapshot")).await;
    let body = snap.split("\r\n\r\n").nth(1).unwrap();
    let parsed: Snapshot = serde_json::from_str(body).unwrap();
    assert_eq!(parsed.verdicts.kernel_release, "5.10.0-32-amd64");
    assert!(get(addr, &req("/nope")).await.starts_with("HTTP/1.1 404"));
    // Malformed requests get an error, and the server keeps serving.
    let bad = get(addr, "\x00\x01garbage\r\n\r\n").await;
    assert!(bad.is_empty() || bad.starts_with("HTTP/1.1 400"), "{bad}");
    let post = get(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(
        get(addr, &req("/healthz"))
            .await
            .starts_with("HTTP/1.1 200")
    );
    // The router alone (no socket) too.
    let _ = router(shared);
}
