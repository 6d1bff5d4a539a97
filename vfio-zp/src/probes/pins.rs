//! Maps pinned in bpffs so kernel-side counters, undelivered events and the
//! probes' per-thread state outlive the agent:
//! `/sys/fs/bpf/vfio-zp/<build>/{COUNTERS,EVENTS,THREADS,SLOTS,LENT}`.
//!
//! A pin is only reused by the build that made it (the build id hashes the
//! probe object and the agent version): another build's maps may have
//! another layout, so they are removed, and the agent says so.
use std::path::{Path, PathBuf};

use tracing::{info, warn};

pub const ROOT: &str = "/sys/fs/bpf/vfio-zp";
/// The maps kept: exact counters, the ring buffer (records a killed agent
/// never read are still there for the next one), and each thread's type1
/// state (THREADS, and SLOTS with LENT, which says whose each slot is):
/// some counts wait there for the call's return (counter::HITS), and a
/// call the agent stopped inside is then finished by the next agent's
/// probes, which see its return missed.
pub const PINNED_MAPS: [&str; 5] = ["COUNTERS", "EVENTS", "THREADS", "SLOTS", "LENT"];
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where this build's maps are pinned, once stale builds' pins are gone.
#[derive(Debug)]
pub struct PinDir {
    pub dir: PathBuf,
    /// Maps found pinned by an earlier run of this build (reused).
    pub reused: Vec<String>,
    /// Other builds whose pins were removed.
    pub stale_removed: Vec<String>,
}

pub fn is_bpffs(path: &Path) -> bool {
    // f_type is i64 on x86-64, narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == BPF_FS_MAGIC)
}

/// Removes a build's pin directory (pinned objects unlink like files).
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        std::fs::remove_file(e.path())?;
    }
    std::fs::remove_dir(dir)
}

/// The ring buffer's built-in size (vfio-zp-ebpf's EVENTS).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Prepares `root/<build>`; `fresh` also drops this build's own pins. A
/// kept ring buffer of another size than `ring_bytes` is replaced (the
/// loader would otherwise reuse it whatever its size).
/// Fails when `root`'s parent is not a bpffs mount (the caller goes on
/// without pins).
pub fn prepare(root: &Path, build: &str, fresh: bool, ring_bytes: u32) -> Result<PinDir, String> {
    let parent = root.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
        return Err(format!(
            "{} is not a bpffs mount (mount -t bpf bpf {})",
            parent.display(),
            parent.display()
        ));
    }
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut stale_removed = Vec::new();
    for e in std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == build && !fresh {
            continue;
        }
        match remove_dir(&e.path()) {
            Ok(()) if name == build => info!("--fresh: removed this build's pinned maps"),
            Ok(()) => {
                warn!(
                    "removed maps pinned by another vfio-zp build ({name}): their counters cannot carry over to this build ({build})"
                );
                stale_removed.push(name);
            }
            Err(err) => warn!("cannot remove stale pins {}: {err}", e.path().display()),
        }
    }
    let dir = root.join(build);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ring = dir.join("EVENTS");
    if let Ok(info) = aya::maps::MapInfo::from_pin(&ring)
        && info.max_entries() != ring_bytes
    {
        warn!(
            "the kept ring buffer holds {} KiB, {} KiB asked: replacing it (events it still held are lost)",
            info.max_entries() >> 10,
            ring_bytes >> 10
        );
        let _ = std::fs::remove_file(&ring);
    }
    let reused = PINNED_MAPS
        .iter()
        .filter(|m| dir.join(m).exists())
        .map(|m| m.to_string())
        .collect();
    Ok(PinDir {
        dir,
        reused,
        stale_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_directory_that_is_not_bpffs() {
        let tmp = std::env::temp_dir().join(format!("vfio-zp-pins-{}", std::process::id()));
        let err = prepare(&tmp.join("vfio-zp"), "b", false, DEFAULT_RING_BYTES).unwrap_err();
        assert!(err.contains("not a bpffs mount"), "{err}");
        assert!(!tmp.exists());
    }
}
