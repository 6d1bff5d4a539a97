//! The agent's side of attribution, which reads the live system: cgroup ids
//! to paths, and a process's memlock limit. The results travel as recording
//! lines, so replay names things exactly as the live agent did.
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::record::format::{CgroupInfo, Memlock, ProcessInfo};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// A miss rescans the hierarchy at most this often (hosts with thousands
/// of pods have thousands of cgroups).
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Emits each cgroup and process once, before the first event that needs it.
pub struct Resolver {
    root: std::path::PathBuf,
    by_id: HashMap<u64, String>,
    scanned: Option<Instant>,
    cgroups_sent: HashSet<u64>,
    procs_sent: HashSet<u32>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new(CGROUP_ROOT)
    }
}

impl Resolver {
    pub fn new(root: impl AsRef<Path>) -> Resolver {
        Resolver {
            root: root.as_ref().into(),
            by_id: HashMap::new(),
            scanned: None,
            cgroups_sent: HashSet::new(),
            procs_sent: HashSet::new(),
        }
    }

    /// The cgroup line for `id` the first time it is asked for.
    pub fn cgroup(&mut self, id: u64) -> Option<CgroupInfo> {
        if !self.cgroups_sent.insert(id) {
            return None;
        }
        if !self.by_id.contains_key(&id) && self.scanned.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
        {
            self.scan();
        }
        Some(CgroupInfo {
            id,
            path: self.by_id.get(&id).cloned(),
        })
    }

    /// The process line for `tgid` the first time it is seen.
    pub fn process(&mut self, tgid: u32, comm: &str) -> Option<ProcessInfo> {
        if !self.procs_sent.insert(tgid) {
            return None;
        }
        let dir = format!("/proc/{tgid}");
        let memlock = std::fs::read_to_string(format!("{dir}/limits"))
            .ok()
            .and_then(|t| parse_memlock(&t))
            .unwrap_or(Memlock::Unknown);
        let cap_ipc_lock = std::fs::read_to_string(format!("{dir}/status"))
            .ok()
            .and_then(|t| parse_cap_eff(&t))
            .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0);
        Some(ProcessInfo {
            tgid,
            comm: comm.into(),
            memlock,
            cap_ipc_lock,
        })
    }

    /// The id of a cgroup v2 directory is its inode number.
    fn scan(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.scanned = Some(Instant::now());
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(m) = std::fs::metadata(&dir) {
                let rel = dir
                    .strip_prefix(&self.root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.by_id.insert(m.ino(), rel);
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
}

const CAP_IPC_LOCK: u32 = 14;

/// The soft limit of "Max locked memory" in /proc/PID/limits.
pub fn parse_memlock(limits: &str) -> Option<Memlock> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    let soft = line["Max locked memory".len()..]
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(Memlock::Unlimited);
    }
    soft.parse().ok().map(Memlock::Bytes)
}

/// CapEff from /proc/PID/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max locked memory         8388608              16777216             bytes
Max address space         unlimited            unlimited            bytes
";

    #[test]
    fn memlock_soft_limit() {
        assert_eq!(parse_memlock(LIMITS), Some(Memlock::Bytes(8 << 20)));
        let unl = LIMITS.replace("8388608 ", "unlimited");
        assert_eq!(parse_memlock(&unl), Some(Memlock::Unlimited));
        assert_eq!(parse_memlock("Max cpu time 1 2 s\n"), None);
        assert_eq!(parse_memlock("Max locked memory\n"), None);
    }

    #[test]
    fn cap_eff() {
        let s = "Name:\tqemu\nCapEff:\t0000000000004000\n";
        assert_eq!(parse_cap_eff(s), Some(1 << CAP_IPC_LOCK));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn resolves_directories_by_inode_once() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("vfio-zp-cg-{}", std::process::id()));
        let leaf = root.join("machine.slice/machine-qemu\\x2d1\\x2dvm1.scope");
        std::fs::create_dir_all(&leaf).unwrap();
        let ino = std::fs::metadata(&leaf).unwrap().ino();
        let mut r = Resolver::new(&root);
        let info = r.cgroup(ino).unwrap();
        assert_eq!(
            info.path.as_deref(),
            Some("machine.slice/machine-qemu\\x2d1\\x2dvm1.scope")
        );
        assert_eq!(r.cgroup(ino), None, "sent once");
        assert_eq!(r.cgroup(u64::MAX).unwrap().path, None);
        // Our own process: a live /proc entry with a readable limit.
        let me = r.process(std::process::id(), "test").unwrap();
        assert_ne!(me.memlock, Memlock::Unknown);
        assert!(r.process(std::process::id(), "test").is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
