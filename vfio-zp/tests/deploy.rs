//! The deployment files speak of what the agent really exports: every
//! `vfio_zp_*` name in them is in the metric contract, the dashboard is
//! valid JSON, and the port is the agent's default. (promtool checks the
//! alert rules themselves in `cargo xtask test`.)
mod common;

use std::path::Path;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `vfio_zp_...` identifier in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("vfio_zp_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn deployment_files_use_only_contract_metrics() {
    let files = [
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts_test.yml",
        "deploy/grafana/vfio-zp-dashboard.json",
        "docs/operations.md",
        "README.md",
    ];
    let mut seen = 0;
    for f in files {
        for name in metric_names(&read(f)) {
            seen += 1;
            assert!(
                common::surfaces::CONTRACT.contains(&name.as_str()),
                "{f}: {name} is not a metric vfio-zp exports"
            );
        }
    }
    assert!(seen > 40, "only {seen} metric references found");
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/vfio-zp-dashboard.json")).unwrap();
    assert!(dash["panels"].as_array().unwrap().len() >= 8);
}

#[test]
fn deployment_files_use_the_default_port() {
    let port = vfio_zp::serve::DEFAULT_LISTEN.rsplit_once(':').unwrap().1;
    for f in [
        "deploy/systemd/vfio-zp.service",
        "deploy/kubernetes/daemonset.yaml",
    ] {
        assert!(read(f).contains(port), "{f} does not use port {port}");
    }
}
