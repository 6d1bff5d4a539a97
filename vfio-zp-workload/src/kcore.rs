//! The kernel's own truth about the zero page, read without vfio-zp's
//! probes: kallsyms for where the variables are, /proc/kcore for their
//! values and for the zero page's `struct page`, BTF for its layout.
use std::{collections::HashMap, fs::File, os::unix::fs::FileExt};

use anyhow::{Context, bail};
use object::{
    Endianness, ReadCache,
    read::elf::{FileHeader, ProgramHeader},
};

/// PT_LOAD segments of /proc/kcore: (vaddr, size, file offset).
pub struct Kcore {
    file: File,
    segments: Vec<(u64, u64, u64)>,
}

impl Kcore {
    pub fn open() -> anyhow::Result<Kcore> {
        let file = File::open("/proc/kcore").context("/proc/kcore")?;
        let segments = {
            let cache = ReadCache::new(&file);
            let hdr = object::elf::FileHeader64::<Endianness>::parse(&cache)
                .context("kcore ELF header")?;
            let e = hdr.endian().context("kcore endianness")?;
            hdr.program_headers(e, &cache)
                .context("kcore program headers")?
                .iter()
                .filter(|p| p.p_type(e) == object::elf::PT_LOAD)
                .map(|p| (p.p_vaddr(e), p.p_memsz(e), p.p_offset(e)))
                .collect()
        };
        Ok(Kcore { file, segments })
    }

    pub fn read(&self, vaddr: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let &(start, _, off) = self
            .segments
            .iter()
            .find(|(s, len, _)| vaddr >= *s && vaddr + buf.len() as u64 <= s + len)
            .with_context(|| {
                format!(
                    "address not covered by /proc/kcore ({} segments)",
                    self.segments.len()
                )
            })?;
        self.file
            .read_exact_at(buf, off + (vaddr - start))
            .context("reading /proc/kcore")
    }

    pub fn u64(&self, vaddr: u64) -> anyhow::Result<u64> {
        let mut b = [0u8; 8];
        self.read(vaddr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn i32(&self, vaddr: u64) -> anyhow::Result<i32> {
        let mut b = [0u8; 4];
        self.read(vaddr, &mut b)?;
        Ok(i32::from_le_bytes(b))
    }
}

/// Addresses of the named symbols in /proc/kallsyms.
pub fn kallsyms(names: &[&str]) -> anyhow::Result<HashMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/kallsyms")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let name = it.nth(1)?;
            names.contains(&name).then(|| (name.to_string(), addr))
        })
        .collect())
}

/// `sizeof(struct page)` and `offsetof(struct page, _refcount)` (looked
/// up through anonymous unions: where it sits moves with the config).
pub fn page_layout() -> anyhow::Result<(u64, u64)> {
    use btfparse::{Offset, TypeInformation, TypeVariant};
    let btf = TypeInformation::new(&Bytes(std::fs::read("/sys/kernel/btf/vmlinux")?))
        .map_err(|e| anyhow::anyhow!("BTF: {e:?}"))?;
    let page = btf
        .get()
        .iter()
        .find_map(|(id, t)| match t {
            TypeVariant::Struct(s) if s.name().as_deref() == Some("page") => Some(*id),
            _ => None,
        })
        .context("no struct page in BTF")?;
    let size = btf
        .size_of(page)
        .map_err(|e| anyhow::anyhow!("BTF: {e:?}"))?;
    match btf
        .offset_of(page, "_refcount")
        .map_err(|e| anyhow::anyhow!("BTF: {e:?}"))?
        .1
    {
        Offset::ByteOffset(off) => Ok((size as u64, off as u64)),
        o => bail!("struct page's _refcount at {o:?}"),
    }
}

/// A BTF file in memory, as btfparse reads it. (The agent's
/// `vfio-zp/src/probes/btf.rs` has its twin: the workload's truth keeps its own code,
/// apart from the code it checks.)
struct Bytes(Vec<u8>);

impl btfparse::Readable for Bytes {
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

/// Where the zero page's refcount and the huge zero pfn live right now.
pub struct ZeroPageTruth {
    kcore: Kcore,
    pub zero_pfn: u64,
    refcount_addr: u64,
    huge_zero_pfn_addr: Option<u64>,
}

impl ZeroPageTruth {
    pub fn open() -> anyhow::Result<ZeroPageTruth> {
        // 7.2 renamed the zero page's pfn variable to zero_page_pfn.
        let syms = kallsyms(&["zero_pfn", "zero_page_pfn", "vmemmap_base", "huge_zero_pfn"])?;
        let sym = |n: &str| {
            syms.get(n)
                .copied()
                .filter(|a| *a != 0)
                .with_context(|| format!("{n} not in /proc/kallsyms"))
        };
        let kcore = Kcore::open()?;
        let zero_pfn = kcore.u64(sym("zero_pfn").or_else(|_| sym("zero_page_pfn"))?)?;
        let vmemmap = kcore.u64(sym("vmemmap_base")?)?;
        let (size, off) = page_layout()?;
        Ok(ZeroPageTruth {
            refcount_addr: vmemmap + zero_pfn * size + off,
            huge_zero_pfn_addr: sym("huge_zero_pfn").ok(),
            kcore,
            zero_pfn,
        })
    }

    pub fn refcount(&self) -> anyhow::Result<i32> {
        self.kcore.i32(self.refcount_addr)
    }

    /// The THP huge zero page's first pfn, None while it is not allocated.
    pub fn huge_zero_pfn(&self) -> Option<u64> {
        let v = self.kcore.u64(self.huge_zero_pfn_addr?).ok()?;
        (v != u64::MAX).then_some(v)
    }
}

// No host test: the build hosts have no /proc/kcore. The lab proves this
// truth in every guest: a wrong zero pfn or refcount address would make the
// zero-backed pages pagemap shows differ from the type1 zero-page pins the
// probes count, or the refcount growth differ from the leaked pins x 1024
// (vfio-zp/tests/common/verdicts.rs).
