//! The agent's side of attribution, which reads the live system: cgroup ids
//! to paths, and a process's memlock limit. The results travel as recording
//! lines, so replay names things exactly as the live agent did.
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use super::cgroup_id;
use crate::stream::event::Memlock;
use crate::stream::line::{CgroupInfo, ProcessInfo};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where a lookup by id is not possible, a miss rescans the hierarchy at
/// most this often (hosts with thousands of pods have thousands of cgroups).
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Emits each cgroup's line before the first event that needs it, and once
/// more, with its path, when an id first sent without one is found later.
pub struct Resolver {
    root: std::path::PathBuf,
    /// The cgroup v2 mount, for lookups by id; None when `root` is not one.
    root_dir: Option<File>,
    /// Every path learned, kept after its cgroup is removed.
    by_id: HashMap<u64, String>,
    scanned: Option<Instant>,
    rescan_every: Duration,
    /// Ids sent with their path: never again.
    named: HashSet<u64>,
    /// Ids sent without one, with when they were last looked up: looked up
    /// again at their events, at most once per `rescan_every` each (a
    /// busy unnamed cgroup must not cost a syscall per event).
    unnamed: HashMap<u64, Instant>,
    procs_sent: HashSet<u32>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new(cgroup_id::cgroup2_root().unwrap_or_else(|| CGROUP_ROOT.into()))
    }
}

impl Resolver {
    pub fn new(root: impl AsRef<Path>) -> Resolver {
        let root = root.as_ref();
        Resolver {
            root: root.into(),
            root_dir: cgroup_id::is_cgroup2(root)
                .then(|| File::open(root).ok())
                .flatten(),
            by_id: HashMap::new(),
            scanned: None,
            rescan_every: RESCAN_EVERY,
            named: HashSet::new(),
            unnamed: HashMap::new(),
            procs_sent: HashSet::new(),
        }
    }

    /// The cgroup line for `id`: the first time it is asked for, and again
    /// when an id that had no path then has one now. A cgroup created a
    /// moment ago is found by id at once; one removed keeps its name in
    /// the recording (the model never forgets a name).
    pub fn cgroup(&mut self, id: u64) -> Option<CgroupInfo> {
        if self.named.contains(&id)
            || self
                .unnamed
                .get(&id)
                .is_some_and(|t| t.elapsed() < self.rescan_every)
        {
            return None;
        }
        let path = self.lookup(id);
        if path.is_some() {
            self.unnamed.remove(&id);
            self.named.insert(id);
        } else if self.unnamed.insert(id, Instant::now()).is_some() {
            return None;
        }
        Some(CgroupInfo { id, path })
    }

    fn lookup(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if let Some(dir) = &self.root_dir
            && let Some(p) = cgroup_id::path_of(dir, &self.root, id)
        {
            self.by_id.insert(id, p.clone());
            return Some(p);
        }
        if self
            .scanned
            .is_none_or(|t| t.elapsed() >= self.rescan_every)
        {
            self.scan();
        }
        self.by_id.get(&id).cloned()
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
        let cap_ipc_lock = caps::has_cap(
            Some(tgid as i32),
            caps::CapSet::Effective,
            caps::Capability::CAP_IPC_LOCK,
        )
        .unwrap_or(false);
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
        assert_eq!(r.cgroup(u64::MAX), None, "a miss is said once");
        // Our own process: a live /proc entry with a readable limit.
        let me = r.process(std::process::id(), "test").unwrap();
        assert_ne!(me.memlock, Memlock::Unknown);
        assert!(r.process(std::process::id(), "test").is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A directory created after the last walk, asked for before the next
    /// one may run: said without a path, then named once it is found (it
    /// was never named before: the first miss marked it sent for good).
    #[test]
    fn an_id_missed_is_named_when_found_later() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("vfio-zp-cg-late-{}", std::process::id()));
        std::fs::create_dir_all(root.join("first")).unwrap();
        let mut r = Resolver::new(&root);
        r.rescan_every = Duration::from_secs(3600);
        let first = std::fs::metadata(root.join("first")).unwrap().ino();
        assert_eq!(r.cgroup(first).unwrap().path.as_deref(), Some("first"));
        std::fs::create_dir_all(root.join("second")).unwrap();
        let second = std::fs::metadata(root.join("second")).unwrap().ino();
        assert_eq!(
            r.cgroup(second).unwrap().path,
            None,
            "no walk within the hour"
        );
        // Asked again at once: not looked up (a walk would be due now).
        r.scanned = None;
        assert_eq!(r.cgroup(second), None, "the miss is said once");
        assert!(
            r.scanned.is_none(),
            "an unnamed id is retried at most once per rescan_every"
        );
        r.rescan_every = Duration::ZERO;
        assert_eq!(r.cgroup(second).unwrap().path.as_deref(), Some("second"));
        assert_eq!(r.cgroup(second), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Real cgroups, created milliseconds apart and removed at once: each
    /// is named by its id (no walk: the second comes within RESCAN_EVERY
    /// of the first), and a removed one by the name it had.
    #[test]
    fn cgroups_created_moments_apart_are_named_by_id() {
        use std::os::unix::fs::MetadataExt;
        let Some(root) = cgroup_id::cgroup2_root() else {
            crate::testing::skip("cgroup-by-id", "no cgroup v2 mount here");
            return;
        };
        if !crate::probes::preflight::is_root() {
            crate::testing::skip("cgroup-by-id", "creating cgroups needs root");
            return;
        }
        let mut r = Resolver::new(&root);
        let name = |i: usize| format!("vfio-zp-test-{}-{i}", std::process::id());
        let create = |i: usize| {
            std::fs::create_dir(root.join(name(i))).unwrap();
            std::fs::metadata(root.join(name(i))).unwrap().ino()
        };
        // Each asked for as soon as it exists, the second a moment after
        // the first (a walk would wait RESCAN_EVERY), then removed.
        let mut ids = Vec::new();
        for i in 0..2 {
            let id = create(i);
            ids.push(id);
            let got = r.cgroup(id).map(|c| c.path);
            std::fs::remove_dir(root.join(name(i))).unwrap();
            assert_eq!(got, Some(Some(name(i))));
        }
        assert!(r.scanned.is_none(), "found by id, without a walk");
        // Gone before it was ever asked for: no name to give.
        let gone = create(2);
        std::fs::remove_dir(root.join(name(2))).unwrap();
        assert_eq!(r.cgroup(gone).unwrap().path, None);
        // Removed after they were named: nothing more to say about them.
        assert_eq!(r.cgroup(ids[0]), None);
        assert_eq!(r.cgroup(ids[1]), None);
    }
}
