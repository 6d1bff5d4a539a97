//! Return probes with room for concurrent callers.
//!
//! A kretprobe made through the perf kprobe PMU (aya's `KProbe::attach`) gets
//! the kernel's default `maxactive`: `num_possible_cpus()` on kernels built
//! without CONFIG_PREEMPTION (Debian's 5.10). One more thread sleeping inside
//! the same function (two VMs mapping at once on a one-CPU guest) and its
//! return is missed without a trace. tracefs `kprobe_events` takes an explicit
//! maxactive (`r512:`) and reports misses in `kprobe_profile`, so return
//! probes are made there (as bcc does) and the program attached to the event
//! through perf_event_open(PERF_TYPE_TRACEPOINT).
use std::{
    collections::BTreeMap,
    io::{self, Write},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use perf_event_open_sys as sys;

use super::tracefs::TRACEFS_DIRS;

/// Concurrent calls each return probe can follow. An instance is a few dozen
/// bytes of kernel memory; the kernel's own ceiling is 4096.
pub const MAXACTIVE: u32 = 512;

/// tracefs event group of every probe vfio-zp makes.
pub const GROUP: &str = "vfio_zp";

/// The tracefs directory that has `kprobe_events`, if any.
pub fn tracefs() -> Option<PathBuf> {
    TRACEFS_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("kprobe_events").exists())
}

/// The event name for `program` made by process `pid`: one agent's events
/// never collide with another's, and a dead agent's are recognisable.
pub fn event_name(program: &str, pid: u32) -> String {
    format!("{program}_{pid}")
}

/// A return probe living in tracefs with the program attached to it.
/// Dropping it detaches the program and removes the event.
#[derive(Debug)]
pub struct TraceRetprobe {
    tracefs: PathBuf,
    event: String,
    perf: Option<OwnedFd>,
}

impl TraceRetprobe {
    pub fn attach(
        tracefs: &Path,
        prog: BorrowedFd<'_>,
        program: &str,
        symbol: &str,
        maxactive: u32,
    ) -> io::Result<TraceRetprobe> {
        let event = event_name(program, std::process::id());
        let define = format!("r{maxactive}:{GROUP}/{event} {symbol}");
        if let Err(e) = append(tracefs, &define) {
            // Left over from an earlier run of this pid (pid reuse): replace it.
            if e.raw_os_error() != Some(libc::EEXIST) && e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e);
            }
            let _ = append(tracefs, &format!("-:{GROUP}/{event}"));
            append(tracefs, &define)?;
        }
        let mut probe = TraceRetprobe {
            tracefs: tracefs.to_path_buf(),
            event,
            perf: None,
        };
        let id_path = tracefs
            .join("events")
            .join(GROUP)
            .join(&probe.event)
            .join("id");
        let id: u64 = std::fs::read_to_string(&id_path)?
            .trim()
            .parse()
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", id_path.display()),
                )
            })?;
        probe.perf = Some(open_tracepoint(id, prog)?);
        Ok(probe)
    }

    pub fn event(&self) -> &str {
        &self.event
    }
}

impl Drop for TraceRetprobe {
    fn drop(&mut self) {
        // The event cannot be removed while a perf event holds it.
        drop(self.perf.take());
        let _ = append(&self.tracefs, &format!("-:{GROUP}/{}", self.event));
    }
}

fn append(tracefs: &Path, line: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(tracefs.join("kprobe_events"))?;
    f.write_all(format!("{line}\n").as_bytes())
}

/// A perf event on tracefs event `id` running `prog` on every hit, any CPU.
fn open_tracepoint(id: u64, prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = sys::bindings::perf_event_attr {
        type_: sys::bindings::PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
        config: id,
        ..Default::default()
    };
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    // SAFETY: attr is initialised; the kernel copies it.
    let fd = unsafe {
        sys::perf_event_open(
            &mut attr,
            -1,
            0,
            -1,
            sys::bindings::PERF_FLAG_FD_CLOEXEC as _,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let perf = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: valid fds; the ioctls take integer arguments.
    if unsafe { sys::ioctls::SET_BPF(perf.as_raw_fd(), prog.as_raw_fd() as u32) } < 0
        || unsafe { sys::ioctls::ENABLE(perf.as_raw_fd(), 0) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(perf)
}

/// `kprobe_profile`: event name -> (hits, misses).
pub fn parse_profile(text: &str) -> BTreeMap<String, (u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let hits = f.next()?.parse().ok()?;
            let misses = f.next()?.parse().ok()?;
            Some((name.to_string(), (hits, misses)))
        })
        .collect()
}

/// Misses per event of ours, read now; empty when tracefs is unreadable.
pub fn read_profile(tracefs: &Path) -> BTreeMap<String, (u64, u64)> {
    std::fs::read_to_string(tracefs.join("kprobe_profile"))
        .map(|t| parse_profile(&t))
        .unwrap_or_default()
}

/// Events of our group, from `kprobe_events` lines such as
/// `r512:vfio_zp/type1_pin_ret_4242 vfio_pin_pages_remote`.
pub fn parse_events(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let def = l.split_whitespace().next()?;
            let (_, name) = def.split_once(':')?;
            let (group, event) = name.split_once('/')?;
            (group == GROUP).then(|| event.to_string())
        })
        .collect()
}

/// The pid an event name of ours ends with.
pub fn event_pid(event: &str) -> Option<u32> {
    event.rsplit_once('_')?.1.parse().ok()
}

/// Removes events left by agents that died without cleaning up (kill -9):
/// they cost a kprobe on a hot path for nothing. Returns how many went.
pub fn remove_stale(tracefs: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(tracefs.join("kprobe_events")) else {
        return 0;
    };
    let me = std::process::id();
    parse_events(&text)
        .into_iter()
        .filter(|e| match event_pid(e) {
            Some(pid) => pid != me && !Path::new(&format!("/proc/{pid}")).exists(),
            None => false,
        })
        .filter(|e| append(tracefs, &format!("-:{GROUP}/{e}")).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_lines_give_hits_and_misses() {
        let p = parse_profile(
            "  type1_pin_ret_42                                  1234               7\n  other 5 0\nbroken line\n",
        );
        assert_eq!(p["type1_pin_ret_42"], (1234, 7));
        assert_eq!(p["other"], (5, 0));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn only_our_group_is_listed() {
        let e = parse_events(
            "r512:vfio_zp/type1_pin_ret_42 vfio_pin_pages_remote\np:kprobes/mine do_sys_open\nr:vfio_zp/lock_acct_ret_7 vfio_lock_acct.part.0\n",
        );
        assert_eq!(e, ["type1_pin_ret_42", "lock_acct_ret_7"]);
        assert_eq!(event_pid(&e[0]), Some(42));
        assert_eq!(event_pid("no_pid_here"), None);
        assert_eq!(event_name("put_pfn_ret", 9), "put_pfn_ret_9");
    }
}
