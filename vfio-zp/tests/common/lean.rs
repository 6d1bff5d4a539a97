//! The lean probe set (issue 18): the recorder leaves the generic GUP
//! unpin probes off exactly on the lab kernels whose GUP takes no reference
//! on the zero page (kernel facts, measured: 6.1, 6.12, 6.18, 7.3), keeps
//! them on 5.10 (GUP refcounts the zero page), and says so in the
//! recording, the metrics and `check --agent`. The other checks of the
//! same run show the verdicts still match the kernel's truth (on 6.1 the
//! huge zero page type1 keeps is counted from type1's records).
use std::path::Path;

use vfio_zp::stream::{
    Line, ProbeState,
    line::{GUP_UNPIN_PROBES, ProbesChanged},
    read_path,
};

pub fn check(kernel: &str, dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let lean = super::gup_ignores_zero_page(kernel);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let rec = match read_path(&dir.join(super::outputs::RECORDING)) {
        Ok(r) => r,
        Err(e) => return vec![format!("{kernel}: recording: {e}")],
    };
    // Each unpin probe's states over the recording's probes lines.
    let mut off_with = None;
    let mut back = false;
    for l in &rec.lines {
        let Line::Probes(p) = l else { continue };
        if unpins_off(p) {
            let evidence = p
                .probes
                .iter()
                .find(|s| GUP_UNPIN_PROBES.contains(&s.probe.as_str()))
                .and_then(|s| s.detail.clone());
            off_with = off_with.or(evidence);
        } else if off_with.is_some() {
            back = true;
        }
    }
    match (lean, &off_with) {
        (true, None) => bad.push(format!(
            "{kernel}: the generic unpin probes stayed attached on a kernel that does not need them"
        )),
        (false, Some(why)) => bad.push(format!(
            "{kernel}: the generic unpin probes were left off on a kernel that needs them ({why})"
        )),
        (true, Some(why)) if !why.contains("no reference on the zero page") => bad.push(format!(
            "{kernel}: not_needed without its evidence: {why:?}"
        )),
        _ => {}
    }
    if back {
        bad.push(format!(
            "{kernel}: the unpin probes came back: the evidence changed on a kernel whose GUP does not"
        ));
    }
    if let Some(why) = &off_with {
        println!("{kernel}: generic unpin probes not needed: {why}");
    }
    let metrics = read(super::outputs::METRICS);
    for p in GUP_UNPIN_PROBES {
        let line = format!("vfio_zp_probe_state{{probe=\"{p}\",state=\"not_needed\"}} 1");
        if metrics.contains(&line) != lean {
            bad.push(format!(
                "{kernel}: metrics {} {line}",
                if lean { "lack" } else { "show" }
            ));
        }
    }
    let check = read(super::outputs::CHECK_AGENT);
    let listed = GUP_UNPIN_PROBES
        .iter()
        .filter(|p| check.contains(&format!("agent: probe {p} ")))
        .count();
    let want = if lean { GUP_UNPIN_PROBES.len() } else { 0 };
    if listed != want || !check.contains("running agent") {
        bad.push(format!(
            "{kernel}: check --agent lists {listed} unpin probes not needed, want {want}:\n{check}"
        ));
    }
    bad
}

/// Whether a probes line has every generic unpin probe off (not_needed).
pub fn unpins_off(p: &ProbesChanged) -> bool {
    GUP_UNPIN_PROBES.iter().all(|name| {
        p.probes
            .iter()
            .any(|s| s.probe == *name && s.state == ProbeState::NotNeeded)
    })
}
