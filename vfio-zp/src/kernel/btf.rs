//! Struct layouts from the kernel's own BTF: `struct page`'s size and where
//! `_refcount` sits, and the path from a task to its memlock limit and
//! capabilities. Never hard-coded: all of them move with config options.
use btf_rs::{Btf, Type};

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

pub fn task_layout(btf: &Btf) -> Option<TaskLayout> {
    let off = |st: &str, member: &str| -> Option<u64> {
        btf.resolve_types_by_name(st)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => member_offset_bits(btf, &s, member).map(|b| b / 8),
                _ => None,
            })
    };
    Some(TaskLayout {
        task_signal: off("task_struct", "signal").filter(|o| *o != 0)?,
        signal_rlim: off("signal_struct", "rlim")?,
        task_cred: off("task_struct", "cred")?,
        cred_cap_effective: off("cred", "cap_effective")?,
    })
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn read_page_layout() -> anyhow::Result<PageLayout> {
    let btf = Btf::from_file(VMLINUX_BTF)
        .map_err(|e| anyhow::anyhow!("cannot parse {VMLINUX_BTF}: {e}"))?;
    page_layout(&btf)
}

pub fn page_layout(btf: &Btf) -> anyhow::Result<PageLayout> {
    for t in btf
        .resolve_types_by_name("page")
        .map_err(|e| anyhow::anyhow!("no `struct page` in BTF: {e}"))?
    {
        if let Type::Struct(s) = t
            && let Some(bits) = member_offset_bits(btf, &s, "_refcount")
        {
            return Ok(PageLayout {
                size: s.size() as u64,
                refcount_offset: bits / 8,
                task: task_layout(btf),
            });
        }
    }
    anyhow::bail!("`struct page` in BTF has no `_refcount` member")
}

/// Offset in bits of the member `name`, looking through anonymous structs
/// and unions (where `_refcount` may live on some configs).
fn member_offset_bits(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Option<u64> {
    for m in &s.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            return Some(m.bit_offset() as u64);
        }
        if mname.is_empty()
            && let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
            && let Some(off) = member_offset_bits(btf, &inner, name)
        {
            return Some(m.bit_offset() as u64 + off);
        }
    }
    None
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
