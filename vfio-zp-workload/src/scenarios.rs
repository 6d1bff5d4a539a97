//! VFIO scenarios, each measured against the kernel's own truth (zero page
//! refcount through /proc/kcore, pagemap, VmLck) around every step.
use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{
    kcore::ZeroPageTruth,
    pagemap::{PAGE, Region},
    vfio::{Container, MAP_READ, MAP_WRITE},
};

pub const IOVA: u64 = 0x10_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touch {
    Read,
    Write,
    None,
    /// Read the even pages, write the odd ones.
    Alternate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmap {
    Whole,
    /// First half, then the rest.
    Halves,
    /// Close the container with the mapping still in it.
    Close,
}

#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    touch: Touch,
    flags: u32,
    unmap: Unmap,
    /// Processes, all at once, each with its own container.
    processes: u32,
    /// Threads of one process mapping at once, each into its own container
    /// (type1 holds a container's lock across a whole MAP_DMA, so threads
    /// of one container never overlap inside the kernel: QEMU with a
    /// vIOMMU gives each address space its own container, mapped from the
    /// vCPU thread that invalidated it).
    threads: usize,
    /// 2 MiB plus `pages` (at most 256) either side, MADV_HUGEPAGE, so the
    /// aligned middle can be backed by the THP huge zero page.
    huge: bool,
    /// Run with RLIMIT_MEMLOCK at half the mapping and without
    /// CAP_IPC_LOCK: fits only while zero pages go uncharged.
    tight_memlock: bool,
    /// One MAP_DMA per page (a mapping each), unmapped with one UNMAP_DMA:
    /// no type1 run spans two ioctls, so the probes fold nothing.
    per_page: bool,
}

pub const SCENARIOS: [Scenario; 10] = [
    Scenario {
        name: "ro-read-touched",
        about: "read every page, map READ, unmap",
        touch: Touch::Read,
        flags: MAP_READ,
        unmap: Unmap::Whole,
        processes: 1,
        threads: 1,
        huge: false,
        tight_memlock: false,
        per_page: false,
    },
    Scenario {
        name: "ro-written",
        about: "write every page, map READ, unmap",
        touch: Touch::Write,
        flags: MAP_READ,
        unmap: Unmap::Whole,
        processes: 1,
        threads: 1,
        huge: false,
        tight_memlock: false,
        per_page: false,
    },
    Scenario {
        name: "ro-untouched",
        about: "never touch, map READ, unmap",
        touch: Touch::None,
        flags: MAP_READ,
        unmap: Unmap::Whole,
        processes: 1,
        threads: 1,
        huge: false,
        tight_memlock: false,
        per_page: false,
    },
    Scenario {
        name: "rw-read-touched",
        about: "read every page, map READ|WRITE, unmap",
        touch: Touch::Read,
        flags: MAP_READ | MAP_WRITE,
        unmap: Unmap::Whole,
        processes: 1,
        threads: 1,
        huge: false,
        tight_memlock: false,
        per_page: false,
    },
    Scenario {
        name: "partial-unmap",
        about: "read-touched READ maps of two halves, unmap the first, then the rest",
        touch: Touch::Read,
        flags: MAP_READ,
        unmap: Unmap::Halves,
        processes: 1,
        threads: 1,
        huge: false,
        tight_memlock: false,
        per_page: false,
    },
    Scenario {
        name: "close-without-unmap",
        about: "read-touched READ map, close the container without UNMAP",
        touch: Touch::Read,
        flags: MAP_READ,
        unmap: Unmap::Close,
        processes: 1,
        threads: 1,
        huge: false,
        tight_memlock: false,
        per_page: false,
    },
    Scenario {
        name: "multi-container",
        about: "two processes at once, each with its own container and group, read-touched READ maps",
        touch: Touch::Read,
        flags: MAP_READ,
        unmap: Unmap::Whole,
        processes: 2,
        threads: 1,
        huge: false,
        tight_memlock: false,
        per_page: false,
    },
    Scenario {
        name: "huge-zero",
        about: "2 MiB-aligned middle plus up to 1 MiB either side, read-touched with MADV_HUGEPAGE (the middle may be the huge zero page), map READ, unmap",
        touch: Touch::Read,
        flags: MAP_READ,
        unmap: Unmap::Whole,
        processes: 1,
        threads: 1,
        huge: true,
        tight_memlock: false,
        per_page: false,
    },
    Scenario {
        name: "memlock-tight",
        about: "read-touched READ map with RLIMIT_MEMLOCK at half its size and no CAP_IPC_LOCK (refused where zero pages are charged)",
        touch: Touch::Read,
        flags: MAP_READ,
        unmap: Unmap::Whole,
        processes: 1,
        threads: 1,
        huge: false,
        tight_memlock: true,
        per_page: false,
    },
    Scenario {
        name: "two-threads",
        about: "one process, two threads mapping at once, each into its own container and group, read-touched READ maps in 8 pieces each, then unmapping at once",
        touch: Touch::Read,
        flags: MAP_READ,
        unmap: Unmap::Whole,
        processes: 1,
        threads: 2,
        huge: false,
        tight_memlock: false,
        per_page: false,
    },
];

/// Not in the matrix (`--list-scenarios`): the ring flood's workload. No
/// two zero pages are adjacent, and each page is a mapping of its own, so
/// no probe folds a run (of the zero page or, where GUP allocates a
/// read-only mapping's pages from 6.2, of other pages): a type1 pin and a
/// MAP_DMA record per page, and the unmap's records per mapping.
pub const FLOOD: Scenario = Scenario {
    name: "ro-alternating",
    about: "read the even pages, write the odd ones, map READ one page a mapping, unmap all at once (the ring flood's workload)",
    touch: Touch::Alternate,
    flags: MAP_READ,
    unmap: Unmap::Whole,
    processes: 1,
    threads: 1,
    huge: false,
    tight_memlock: false,
    per_page: true,
};

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().chain([&FLOOD]).find(|s| s.name == name)
}

/// What the kernel itself said during one process's run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunTruth {
    pub pid: u32,
    pub pages: u64,
    pub map_flags: u32,
    /// Pages of the mapped range backed by the 4 KiB zero page, from
    /// pagemap, before the map and while mapped.
    pub zero_backed_before_map: u64,
    pub zero_backed_after_map: u64,
    /// Pages backed by the THP huge zero page while mapped.
    pub huge_zero_backed_after_map: u64,
    pub refcount_before: Option<i32>,
    pub refcount_after_map: Option<i32>,
    /// After the first half, for `partial-unmap`.
    pub refcount_after_first_unmap: Option<i32>,
    pub refcount_after_unmap: Option<i32>,
    pub vmlck_kb_after_map: Option<u64>,
    pub vmlck_kb_after_unmap: Option<u64>,
    pub unmapped_bytes: u64,
    /// cgroup v2 id (inode of the cgroup directory) the process ran in.
    pub cgroup_id: Option<u64>,
    /// RLIMIT_MEMLOCK set for `memlock-tight`, bytes.
    pub memlock_limit: Option<u64>,
    /// MAP_DMA's error, for `memlock-tight` (where it may be refused).
    pub map_error: Option<String>,
    /// Wall time of the MAP_DMA and UNMAP_DMA ioctls (the bench's figure).
    #[serde(default)]
    pub map_ns: u64,
    #[serde(default)]
    pub unmap_ns: u64,
    /// Containers the process mapped into (one per thread).
    pub containers: usize,
    /// Threaded scenarios: each thread's part, map phase then unmap phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<ThreadTruth>,
    pub errors: Vec<String>,
}

/// One thread's calls in a threaded scenario: its kernel thread id, and
/// when its first call began and its last ended, in CLOCK_MONOTONIC
/// nanoseconds (the clock the probes stamp records with).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ThreadTruth {
    pub phase: String,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Truth {
    pub scenario: String,
    pub kernel_release: String,
    pub cgroup: Option<String>,
    /// The second process's cgroup, for two-process scenarios.
    pub cgroup2: Option<String>,
    pub zero_pfn: Option<u64>,
    /// The zero page refcount before the first process starts and after
    /// the last one ends: with processes running at once, only these
    /// bracket the whole scenario.
    pub refcount_before: Option<i32>,
    pub refcount_after: Option<i32>,
    pub runs: Vec<RunTruth>,
    pub errors: Vec<String>,
}

/// Moves this process into cgroup v2 `path` (under /sys/fs/cgroup, created if needed).
pub fn enter_cgroup(path: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !path.split('/').any(|p| p == ".."),
        "cgroup path must stay under /sys/fs/cgroup"
    );
    let dir = std::path::PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    std::fs::write(dir.join("cgroup.procs"), "0")
        .with_context(|| format!("entering cgroup {}", dir.display()))
}

/// The inode of this process's cgroup v2 directory: what bpf_get_current_cgroup_id() returns.
fn cgroup_id() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = s.lines().find_map(|l| l.strip_prefix("0::"))?;
    std::fs::metadata(format!("/sys/fs/cgroup{path}"))
        .ok()
        .map(|m| m.ino())
}

fn vmlck_kb() -> Option<u64> {
    super::status_kb(std::process::id(), "VmLck:")
}

/// Holds processes that run at once until all are ready to map, so their
/// MAP_DMA calls overlap inside the kernel: the case where a second thread
/// enters vfio_pin_pages_remote while the first sleeps in it (and where a
/// kretprobe with too few instances loses returns).
/// How long the mapping is kept: a time, or until a file appears (the lab
/// restarts the agent in between). With a file `F`, `F.mapped` is created
/// once the mapping is made.
#[derive(Clone, Debug)]
pub struct Hold {
    pub at_most: std::time::Duration,
    pub until: Option<std::path::PathBuf>,
}

impl Hold {
    fn wait(&self) {
        let Some(f) = &self.until else {
            return std::thread::sleep(self.at_most);
        };
        let mut mapped = f.clone().into_os_string();
        mapped.push(".mapped");
        if let Err(e) = std::fs::write(&mapped, b"") {
            eprintln!("workload: cannot write {}: {e}", mapped.to_string_lossy());
        }
        let t0 = std::time::Instant::now();
        while !f.exists() && t0.elapsed() < self.at_most {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

pub struct StartGate {
    ready: [libc::c_int; 2],
    go: [libc::c_int; 2],
}

impl StartGate {
    pub fn new() -> anyhow::Result<StartGate> {
        let (mut ready, mut go) = ([0; 2], [0; 2]);
        // SAFETY: pipe with valid 2-int arrays.
        anyhow::ensure!(
            unsafe { libc::pipe(ready.as_mut_ptr()) == 0 && libc::pipe(go.as_mut_ptr()) == 0 },
            "pipe failed"
        );
        Ok(StartGate { ready, go })
    }

    /// In a child: says it is ready, then waits for the start.
    fn wait(&self) {
        let mut b = [0u8; 1];
        // SAFETY: the gate's pipe fds, inherited over fork; one-byte buffers.
        unsafe {
            libc::write(self.ready[1], b.as_ptr().cast(), 1);
            libc::read(self.go[0], b.as_mut_ptr().cast(), 1);
        }
    }

    /// In the parent: waits for `n` ready children, then starts all. A child
    /// that failed before the gate never says ready: after 60 s the rest go.
    fn open(&self, n: usize) {
        // SAFETY: the gate's pipe fds; one-byte buffers; one pollfd.
        unsafe {
            libc::close(self.ready[1]);
            let mut b = [0u8; 1];
            for _ in 0..n {
                let mut p = libc::pollfd {
                    fd: self.ready[0],
                    events: libc::POLLIN,
                    revents: 0,
                };
                if libc::poll(&mut p, 1, 60_000) != 1
                    || libc::read(self.ready[0], b.as_mut_ptr().cast(), 1) != 1
                {
                    break;
                }
            }
            for _ in 0..n {
                libc::write(self.go[1], b.as_ptr().cast(), 1);
            }
        }
    }
}

/// One process's part: map, measure, unmap, measure.
pub fn run_once(
    s: &Scenario,
    groups: &[String],
    pages: usize,
    hold: &Hold,
    gate: Option<&StartGate>,
) -> anyhow::Result<RunTruth> {
    let truth = ZeroPageTruth::open();
    let mut t = RunTruth {
        pid: std::process::id(),
        pages: pages as u64,
        map_flags: s.flags,
        cgroup_id: cgroup_id(),
        containers: s.threads,
        ..Default::default()
    };
    let note = |t: &mut RunTruth, e: anyhow::Error| t.errors.push(format!("{e:#}"));
    let refcount = |t: &mut RunTruth| match &truth {
        Ok(z) => z.refcount().map_err(|e| note(t, e)).ok(),
        Err(_) => None,
    };
    if let Err(e) = &truth {
        t.errors.push(format!("zero page truth unavailable: {e:#}"));
    }
    let region = if s.huge {
        // `side` pages either side of a 2 MiB-aligned middle (512 pages).
        let side = pages.min(256);
        Region::new(512 + 2 * side, (512 - side) * PAGE, true)?
    } else if s.threads > 1 {
        // At least 256 pages a thread, whatever --pages says: the kernel
        // switches threads inside a call only when the calls last long
        // enough (16-page golden runs never interleaved).
        Region::new(pages.max(256) * s.threads, 0, false)?
    } else {
        Region::new(pages, 0, false)?
    };
    t.pages = (region.len / PAGE) as u64;
    // Each thread's share, in bytes.
    let each = region.len as u64 / s.threads as u64;
    match s.touch {
        Touch::Read => region.read_touch(),
        Touch::Write => region.write_touch(),
        Touch::None => {}
        Touch::Alternate => region.alternate_touch(),
    }
    let zero_pfn = truth.as_ref().ok().map(|z| z.zero_pfn);
    let count = |region: &Region, t: &mut RunTruth| -> (u64, u64) {
        let huge = truth.as_ref().ok().and_then(|z| z.huge_zero_pfn());
        match region.pfns() {
            Ok(pfns) => (
                pfns.iter()
                    .filter(|p| p.is_some() && **p == zero_pfn)
                    .count() as u64,
                pfns.iter()
                    .filter(|p| matches!((p, huge), (Some(p), Some(h)) if *p >= h && *p < h + 512))
                    .count() as u64,
            ),
            Err(e) => {
                t.errors.push(format!("pagemap: {e:#}"));
                (0, 0)
            }
        }
    };
    t.zero_backed_before_map = count(&region, &mut t).0;
    anyhow::ensure!(
        groups.len() >= s.threads,
        "{} needs {} VFIO groups (--group and --group2)",
        s.name,
        s.threads
    );
    let containers = groups[..s.threads]
        .iter()
        .map(|g| Container::open(g))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let c = &containers[0];
    t.refcount_before = refcount(&mut t);
    if let Some(g) = gate {
        g.wait();
    }
    let size = region.len as u64;
    let half = (pages / 2 * PAGE) as u64;
    if s.tight_memlock {
        t.memlock_limit = Some(half);
        limit_memlock(half)?;
        if let Err(e) = c.map(region.addr as u64, IOVA, size, s.flags) {
            t.map_error = Some(format!("{e:#}"));
            t.refcount_after_map = refcount(&mut t);
            t.vmlck_kb_after_map = vmlck_kb();
            t.refcount_after_unmap = t.refcount_after_map;
            t.vmlck_kb_after_unmap = t.vmlck_kb_after_map;
            return Ok(t);
        }
    } else if s.threads > 1 {
        let (parts, _) = at_once(
            "map",
            &containers,
            region.addr as u64,
            each,
            |c, a, i, n| c.map(a, i, n, s.flags).map(|()| n),
        )?;
        t.threads = parts;
    } else if s.per_page {
        for off in (0..size).step_by(PAGE) {
            c.map(region.addr as u64 + off, IOVA + off, PAGE as u64, s.flags)?;
        }
    } else if s.unmap == Unmap::Halves {
        // type1v2 refuses to split a mapping: map the halves separately.
        c.map(region.addr as u64, IOVA, half, s.flags)?;
        c.map(region.addr as u64 + half, IOVA + half, size - half, s.flags)?;
    } else {
        let t0 = std::time::Instant::now();
        c.map(region.addr as u64, IOVA, size, s.flags)?;
        t.map_ns = t0.elapsed().as_nanos() as u64;
    }
    t.refcount_after_map = refcount(&mut t);
    t.vmlck_kb_after_map = vmlck_kb();
    (t.zero_backed_after_map, t.huge_zero_backed_after_map) = count(&region, &mut t);
    hold.wait();
    match s.unmap {
        Unmap::Whole if s.threads > 1 => {
            let (parts, bytes) = at_once(
                "unmap",
                &containers,
                region.addr as u64,
                each,
                |c, _, i, n| c.unmap(i, n),
            )?;
            t.threads.extend(parts);
            t.unmapped_bytes = bytes;
        }
        Unmap::Whole => {
            let t0 = std::time::Instant::now();
            t.unmapped_bytes = c.unmap(IOVA, size)?;
            t.unmap_ns = t0.elapsed().as_nanos() as u64;
        }
        Unmap::Halves => {
            t.unmapped_bytes = c.unmap(IOVA, half)?;
            t.refcount_after_first_unmap = refcount(&mut t);
            t.unmapped_bytes += c.unmap(IOVA + half, size - half)?;
        }
        Unmap::Close => drop(containers),
    }
    t.refcount_after_unmap = refcount(&mut t);
    t.vmlck_kb_after_unmap = vmlck_kb();
    Ok(t)
}

/// Pieces each thread maps (or unmaps) in a threaded scenario: more calls
/// give the scheduler more chances to switch threads inside one.
const PIECES: u64 = 8;

/// One thread per container, started together, each calling `op(container,
/// vaddr, iova, bytes)` on its `each` bytes of the region at `base` (iova
/// alike from [`IOVA`]) in [`PIECES`] pieces. Each thread's id and time
/// span, and the sum of what `op` returned.
fn at_once(
    phase: &str,
    containers: &[Container],
    base: u64,
    each: u64,
    op: impl Fn(&Container, u64, u64, u64) -> anyhow::Result<u64> + Sync,
) -> anyhow::Result<(Vec<ThreadTruth>, u64)> {
    let piece = (each / PIECES / PAGE as u64).max(1) * PAGE as u64;
    let start = std::sync::Barrier::new(containers.len());
    // Every thread's first call is made before any goes on: each thread's
    // span then holds a moment inside every other's, however the
    // scheduler runs them (on one vCPU a thread could otherwise finish
    // before the next one starts).
    let first = std::sync::Barrier::new(containers.len());
    std::thread::scope(|scope| {
        let threads: Vec<_> = containers
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let (start, first, op) = (&start, &first, &op);
                scope.spawn(move || -> anyhow::Result<(ThreadTruth, u64)> {
                    start.wait();
                    let mut t = ThreadTruth {
                        phase: phase.into(),
                        // SAFETY: gettid has no preconditions.
                        tid: unsafe { libc::gettid() } as u32,
                        start_ns: monotonic_ns(),
                        end_ns: 0,
                    };
                    let (mut done, mut sum) = (0, 0);
                    while done < each {
                        let n = piece.min(each - done);
                        let off = k as u64 * each + done;
                        let r = op(c, base + off, IOVA + off, n)
                            .with_context(|| format!("thread {k}: {phase} at +{off:#x}"));
                        if done == 0 {
                            first.wait();
                        }
                        sum += r?;
                        done += n;
                    }
                    t.end_ns = monotonic_ns();
                    Ok((t, sum))
                })
            })
            .collect();
        let mut out = (Vec::new(), 0);
        for th in threads {
            let (t, n) = th
                .join()
                .map_err(|_| anyhow::anyhow!("a {phase} thread panicked"))??;
            out.0.push(t);
            out.1 += n;
        }
        Ok(out)
    })
}

/// CLOCK_MONOTONIC in nanoseconds: bpf_ktime_get_ns's clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// RLIMIT_MEMLOCK to `bytes`, and CAP_IPC_LOCK out of the effective set
/// (type1 enforces the limit only without it).
fn limit_memlock(bytes: u64) -> anyhow::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: valid rlimit struct.
    anyhow::ensure!(
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } == 0,
        "setrlimit: {}",
        std::io::Error::last_os_error()
    );
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs.
    unsafe {
        anyhow::ensure!(
            libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) == 0,
            "capget: {}",
            std::io::Error::last_os_error()
        );
        d[0].effective &= !(1 << CAP_IPC_LOCK);
        anyhow::ensure!(
            libc::syscall(libc::SYS_capset, &h, d.as_ptr()) == 0,
            "capset: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Runs `s` (one forked child per process, all at once, each on its own
/// group) and gathers the truth.
pub fn run(
    s: &Scenario,
    groups: &[String],
    cgroup2: Option<&str>,
    pages: usize,
    hold: &Hold,
) -> anyhow::Result<Truth> {
    let zero = ZeroPageTruth::open();
    let refcount = || zero.as_ref().ok().and_then(|z| z.refcount().ok());
    let mut truth = Truth {
        scenario: s.name.into(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        zero_pfn: zero.as_ref().ok().map(|z| z.zero_pfn),
        refcount_before: refcount(),
        ..Default::default()
    };
    let n = s.processes as usize;
    if n == 1 {
        truth.runs.push(run_once(s, groups, pages, hold, None)?);
    } else {
        anyhow::ensure!(
            groups.len() >= n,
            "{} needs {n} VFIO groups (--group and --group2)",
            s.name
        );
        let gate = StartGate::new()?;
        let children = groups[..n]
            .iter()
            .enumerate()
            .map(|(i, g)| {
                Child::spawn(|| {
                    if let (1, Some(cg)) = (i, cgroup2) {
                        enter_cgroup(cg)?;
                    }
                    run_once(s, std::slice::from_ref(g), pages, hold, Some(&gate))
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        gate.open(n);
        for c in children {
            truth.runs.push(c.collect()?);
        }
    }
    truth.refcount_after = refcount();
    Ok(truth)
}

/// A forked child running one process's part (its own tgid).
struct Child {
    pid: libc::pid_t,
    out: std::fs::File,
}

impl Child {
    fn spawn(f: impl FnOnce() -> anyhow::Result<RunTruth>) -> anyhow::Result<Child> {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe with a valid 2-int array.
        anyhow::ensure!(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe failed");
        // SAFETY: single-threaded here; the child only runs `f` and exits.
        match unsafe { libc::fork() } {
            -1 => anyhow::bail!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                // SAFETY: fds[1] is ours to own in the child.
                let mut w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
                let r = f().map_err(|e| format!("{e:#}"));
                let _ = w.write_all(serde_json::to_string(&r).unwrap_or_default().as_bytes());
                drop(w);
                // SAFETY: leave without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
            pid => {
                // SAFETY: closing the child's end; fds[0] is ours to own.
                unsafe { libc::close(fds[1]) };
                Ok(Child {
                    pid,
                    out: unsafe { std::fs::File::from_raw_fd(fds[0]) },
                })
            }
        }
    }

    fn collect(mut self) -> anyhow::Result<RunTruth> {
        use std::io::Read;
        let mut text = String::new();
        self.out.read_to_string(&mut text)?;
        let mut status = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        let r: Result<RunTruth, String> = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("child {} reported nothing ({e})", self.pid))?;
        r.map_err(|e| anyhow::anyhow!("child {}: {e}", self.pid))
    }
}
