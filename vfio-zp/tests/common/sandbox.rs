//! The systemd unit's sandbox, checked against the agent as it really ran
//! in the lab (matrix.rs, `sandbox_script`): every system call strace saw
//! it make is allowed by the unit's `SystemCallFilter=` lines, as systemd
//! itself expands their groups (`systemd-analyze syscall-filter`); it
//! served through the socket passed in, from a network namespace of its
//! own; and it attributed the workload it watched.
use std::collections::BTreeSet;
use std::path::Path;

use vfio_zp::{export::snapshot::Snapshot, stream::ProbeState};

/// The unit the check reads.
pub fn unit() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/vfio-zp.service");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A syscall group (`@name`) or a call, expanded by systemd; `None` when
/// systemd-analyze is not installed.
fn expand(item: &str, out: &mut BTreeSet<String>) -> Result<Option<()>, String> {
    if !item.starts_with('@') {
        out.insert(item.to_string());
        return Ok(Some(()));
    }
    let o = match std::process::Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", item])
        .output()
    {
        Ok(o) => o,
        Err(_) => return Ok(None),
    };
    if !o.status.success() {
        return Err(format!(
            "systemd-analyze syscall-filter {item}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    // The group's own name first, then its members indented: calls, nested
    // groups, and comments.
    for l in text.lines().skip(1) {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if expand(l, out)?.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(()))
}

/// What a unit's `SystemCallFilter=` lines allow, applied in order as
/// systemd does (an allow list; `~` lines take calls out; `@default` is
/// always allowed). `None` when systemd-analyze is not installed.
pub fn allowed(unit: &str) -> Result<Option<BTreeSet<String>>, String> {
    let mut allow = BTreeSet::new();
    if expand("@default", &mut allow)?.is_none() {
        return Ok(None);
    }
    for line in unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
    {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut set = BTreeSet::new();
        for item in items.split_whitespace() {
            if expand(item, &mut set)?.is_none() {
                return Ok(None);
            }
        }
        if deny {
            allow.retain(|c| !set.contains(c));
        } else {
            allow.extend(set);
        }
    }
    Ok(Some(allow))
}

/// The calls in a `strace -f` trace from the exec of a program whose path
/// ends in `program` on (the launchers before it, which name it in their
/// arguments, are not the agent).
pub fn calls_after_exec(trace: &str, program: &str) -> Option<BTreeSet<String>> {
    let suffix = format!("/{program}");
    let lines: Vec<&str> = trace.lines().collect();
    let start = lines.iter().position(|l| {
        let Some((_, rest)) = l.split_once("execve(\"") else {
            return false;
        };
        let path = rest.split('"').next().unwrap_or("");
        path.ends_with(&suffix) && l.trim_end().ends_with("= 0")
    })?;
    Some(
        lines[start + 1..]
            .iter()
            .filter_map(|l| {
                // "PID name(args...) = ret" or "PID name(args <unfinished ...>".
                let (_, rest) = l.split_once(' ')?;
                let rest = rest.trim_start();
                let name = &rest[..rest.find('(')?];
                (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                    .then(|| name.to_string())
            })
            .collect(),
    )
}

pub fn check(kernel: &str, dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    if let Ok(why) = std::fs::read_to_string(dir.join(super::outputs::SANDBOX_SKIPPED)) {
        vfio_zp::testing::skip("lab-sandbox", why.trim());
        return bad;
    }
    if read(super::outputs::SANDBOX_EXIT).trim() != "0" {
        bad.push(format!(
            "{kernel}: the sandboxed agent exited {:?}:\n{}",
            read(super::outputs::SANDBOX_EXIT).trim(),
            read(super::outputs::SANDBOX_AGENT_LOG)
        ));
    }
    // Served from a network namespace of its own, through the socket passed in.
    let ns: Vec<String> = read(super::outputs::SANDBOX_NETNS)
        .lines()
        .map(str::to_string)
        .collect();
    if ns.len() != 2 || ns[0] == ns[1] || !ns[1].starts_with("net:") {
        bad.push(format!(
            "{kernel}: the sandboxed agent's network namespace is not its own: {ns:?}"
        ));
    }
    match serde_json::from_str::<Snapshot>(&read(super::outputs::SANDBOX_SNAPSHOT)) {
        Ok(v) => {
            let names: Vec<&str> = v
                .verdicts
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            if !names.contains(&"sandbox") {
                bad.push(format!(
                    "{kernel}: the sandboxed agent did not attribute the workload to VM \"sandbox\": {names:?}"
                ));
            }
            // Every point as the recorder had it at its end on this kernel:
            // the type1 ones re-attached after the reload, the generic
            // unpin ones left off where the kernel does not need them.
            match vfio_zp::stream::read_path(&dir.join(super::outputs::RECORDING)) {
                Ok(rec) => {
                    let states = |p: &[vfio_zp::stream::ProbeStatus]| -> Vec<(String, ProbeState)> {
                        p.iter().map(|s| (s.probe.clone(), s.state)).collect()
                    };
                    let last = rec
                        .lines
                        .iter()
                        .rev()
                        .find_map(|l| match l {
                            vfio_zp::stream::Line::Probes(p) => Some(p.probes.as_slice()),
                            _ => None,
                        })
                        .unwrap_or(&rec.header.probes);
                    let (want, got) = (states(last), states(&v.probes));
                    if want != got {
                        // How long the script waited for the re-attach
                        // ("start end" in guest uptime seconds), and the
                        // agent's own account of it.
                        bad.push(format!(
                            "{kernel}: the sandboxed agent's probes {got:?}, the recorder's {want:?}; re-attach wait (uptime) {:?}; agent log:\n{}",
                            read(super::outputs::SANDBOX_REATTACH_UPTIME).trim(),
                            read(super::outputs::SANDBOX_AGENT_LOG)
                        ));
                    }
                }
                Err(e) => bad.push(format!("{kernel}: recording.jsonl: {e}")),
            }
        }
        Err(e) => bad.push(format!("{kernel}: sandbox-snapshot.json: {e}")),
    }
    // Every call it made is one the unit allows.
    let Some(calls) = calls_after_exec(&read(super::outputs::SANDBOX_STRACE), "vfio-zp") else {
        bad.push(format!(
            "{kernel}: sandbox-strace.txt has no exec of the agent"
        ));
        return bad;
    };
    // RestrictAddressFamilies=none: the unit denies every socket(2); the
    // agent's one socket is the one passed in.
    if calls.contains("socket") {
        bad.push(format!(
            "{kernel}: the agent made a socket of its own, which the unit denies"
        ));
    }
    match allowed(&unit()) {
        Ok(Some(allow)) => {
            let denied: Vec<&String> = calls.iter().filter(|c| !allow.contains(*c)).collect();
            if !denied.is_empty() {
                bad.push(format!(
                    "{kernel}: the agent made calls the unit's SystemCallFilter= denies: {denied:?}"
                ));
            }
            println!(
                "{kernel}: sandboxed agent: {} distinct system calls, all allowed by the unit",
                calls.len()
            );
        }
        Ok(None) => vfio_zp::testing::skip("lab-syscall-filter", "systemd-analyze not installed"),
        Err(e) => bad.push(format!("{kernel}: {e}")),
    }
    bad
}
