//! `struct page` layout from the kernel's own BTF: its size and where
//! `_refcount` sits. Never hard-coded: both move with config options.
use btf_rs::{Btf, Type};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLayout {
    pub size: u64,
    pub refcount_offset: u64,
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
            eprintln!("SKIPPED: {VMLINUX_BTF} missing on this host");
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
    }
}
