//! Struct layouts from the kernel's own BTF: `struct page`'s size and where
//! `_refcount` sits, and the path from a task to its memlock limit and
//! capabilities. Never hard-coded: all of them move with config options.
use btfparse::{Offset, Readable, TypeInformation, TypeVariant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLayout {
    pub size: u64,
    pub refcount_offset: u64,
    /// `None` when BTF lacks one of the members: limits then come from /proc only.
    pub task: Option<TaskLayout>,
}

/// Byte offsets of `task_struct.signal`, `signal_struct.rlim`,
/// `task_struct.cred` and `cred.cap_effective`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskLayout {
    pub task_signal: u64,
    pub signal_rlim: u64,
    pub task_cred: u64,
    pub cred_cap_effective: u64,
}

pub fn task_layout(btf: &TypeInformation) -> Option<TaskLayout> {
    Some(TaskLayout {
        task_signal: member_offset(btf, "task_struct", "signal").filter(|o| *o != 0)?,
        signal_rlim: member_offset(btf, "signal_struct", "rlim")?,
        task_cred: member_offset(btf, "task_struct", "cred")?,
        cred_cap_effective: member_offset(btf, "cred", "cap_effective")?,
    })
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's BTF, read whole (a few MiB) and parsed.
pub fn read_vmlinux() -> anyhow::Result<TypeInformation> {
    let bytes = std::fs::read(VMLINUX_BTF)
        .map_err(|e| anyhow::anyhow!("cannot read {VMLINUX_BTF}: {e}"))?;
    TypeInformation::new(&Bytes(bytes))
        .map_err(|e| anyhow::anyhow!("cannot parse {VMLINUX_BTF}: {e:?}"))
}

pub fn read_page_layout() -> anyhow::Result<PageLayout> {
    page_layout(&read_vmlinux()?)
}

pub fn page_layout(btf: &TypeInformation) -> anyhow::Result<PageLayout> {
    let page = struct_id(btf, "page").ok_or_else(|| anyhow::anyhow!("no `struct page` in BTF"))?;
    let size = btf
        .size_of(page)
        .map_err(|e| anyhow::anyhow!("`struct page` has no size: {e:?}"))?;
    let refcount_offset = member_offset(btf, "page", "_refcount")
        .ok_or_else(|| anyhow::anyhow!("`struct page` in BTF has no `_refcount` member"))?;
    Ok(PageLayout {
        size: size as u64,
        refcount_offset,
        task: task_layout(btf),
    })
}

/// The id of `struct name` (a function or variable may share the name).
fn struct_id(btf: &TypeInformation, name: &str) -> Option<u32> {
    btf.get().iter().find_map(|(id, t)| match t {
        TypeVariant::Struct(s) if s.name().as_deref() == Some(name) => Some(*id),
        _ => None,
    })
}

/// Byte offset of `member` in `struct st`, looking through anonymous
/// structs and unions (where `_refcount` lives on some configs).
fn member_offset(btf: &TypeInformation, st: &str, member: &str) -> Option<u64> {
    match btf.offset_of(struct_id(btf, st)?, member).ok()?.1 {
        Offset::ByteOffset(b) => Some(b as u64),
        Offset::BitOffsetAndSize(..) => None,
    }
}

/// A BTF file in memory, as btfparse reads it.
struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buf: &mut [u8]) -> btfparse::Result<()> {
        use btfparse::{Error, ErrorKind};
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(buf.len()) {
            _ if start == self.0.len() => Err(Error::new(ErrorKind::EOF, "end of BTF")),
            Some(end) if end <= self.0.len() => {
                buf.copy_from_slice(&self.0[start..end]);
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::InvalidOffset,
                "read past the end of BTF",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF: this is the real parser on real data. The
    /// values are checked against what every x86-64 build has (64-byte pages,
    /// a 4-byte `_refcount` inside them), not against a copy of the output.
    #[test]
    fn host_struct_page_layout_is_sane() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            crate::testing::skip("host-btf", &format!("{VMLINUX_BTF} missing on this host"));
            return;
        }
        let l = read_page_layout().unwrap();
        assert!(
            l.size >= 56 && l.size <= 128 && l.size.is_multiple_of(8),
            "{l:?}"
        );
        assert!(
            l.refcount_offset.is_multiple_of(4) && l.refcount_offset + 4 <= l.size,
            "{l:?}"
        );
        // Pointers are 8-aligned; rlim and cap_effective are u64 arrays/words.
        let t = l.task.expect("task_struct/signal_struct/cred in BTF");
        for o in [
            t.task_signal,
            t.signal_rlim,
            t.task_cred,
            t.cred_cap_effective,
        ] {
            assert!(o.is_multiple_of(8), "{t:?}");
        }
        assert_ne!(t.task_signal, t.task_cred, "{t:?}");
    }
}
