//! A cgroup v2 id to its path without walking the tree. The id the probes
//! read (`bpf_get_current_cgroup_id`) is the cgroup's kernfs node id, which
//! is also its file handle on cgroupfs (`FILEID_KERNFS`, kernfs's exportfs
//! operations): `open_by_handle_at(2)` opens the directory by id and
//! /proc/self/fd names it. It needs CAP_DAC_READ_SEARCH; without it, or
//! where the root is not cgroupfs, the resolver walks the tree instead.
use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// include/linux/exportfs.h.
const FILEID_KERNFS: i32 = 0xfe;

/// Where cgroup v2 is mounted: /sys/fs/cgroup, or /sys/fs/cgroup/unified
/// under systemd's hybrid layout (cgroup v1 controllers beside it).
pub fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
}

pub fn is_cgroup2(path: &Path) -> bool {
    // f_type is i64 on x86-64, narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// `struct file_handle` with kernfs's 8-byte handle: the node id.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    id: u64,
}

/// The path of cgroup `id` below `root` (the cgroup v2 mount, opened as
/// `root_dir`), `""` for the root itself; None when no cgroup has that id
/// now (removed, or never one) or the lookup is not permitted.
pub fn path_of(root_dir: &File, root: &Path, id: u64) -> Option<String> {
    let mut h = KernfsHandle {
        handle_bytes: std::mem::size_of::<u64>() as libc::c_uint,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `h` is a file_handle whose f_handle holds handle_bytes bytes;
    // the kernel only reads it. The result is checked before use.
    let fd = unsafe {
        libc::open_by_handle_at(
            root_dir.as_raw_fd(),
            (&raw mut h).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just returned to us, owned (and closed) here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let rel = target.strip_prefix(root).ok()?;
    Some(rel.to_string_lossy().into_owned())
}
