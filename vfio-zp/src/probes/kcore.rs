//! The zero page's `_refcount` read straight from kernel memory through
//! /proc/kcore: the host truth the model's pin ledger is checked against.
//! Optional: under kernel lockdown kcore is closed and the probes' own
//! readings are used instead.
use std::{fs::File, os::unix::fs::FileExt};

use anyhow::Context;
use object::read::elf::{FileHeader, ProgramHeader};

use super::btf::PageLayout;

pub struct ZeroRefcount {
    kcore: File,
    /// File offset of the zero page's `_refcount`.
    offset: u64,
}

/// File offset of kernel virtual address `vaddr` (`len` bytes) in kcore.
fn offset_of(kcore: &File, vaddr: u64, len: u64) -> anyhow::Result<u64> {
    let data = object::ReadCache::new(kcore);
    let elf = object::elf::FileHeader64::<object::Endianness>::parse(&data)
        .context("/proc/kcore is not ELF")?;
    let endian = elf.endian()?;
    elf.program_headers(endian, &data)?
        .iter()
        .filter(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
        .find_map(|ph| {
            let start = ph.p_vaddr(endian);
            (vaddr >= start && vaddr + len <= start + ph.p_memsz(endian))
                .then(|| ph.p_offset(endian) + (vaddr - start))
        })
        .context("address outside every /proc/kcore segment")
}

impl ZeroRefcount {
    /// `vmemmap_base_addr` is the address of the `vmemmap_base` variable
    /// (0: vmemmap is not randomized and starts at `vmemmap_const`).
    pub fn open(
        zero_pfn: u64,
        vmemmap_base_addr: u64,
        vmemmap_const: u64,
        layout: PageLayout,
    ) -> anyhow::Result<ZeroRefcount> {
        let kcore = File::open("/proc/kcore").context("/proc/kcore")?;
        let vmemmap = if vmemmap_base_addr == 0 {
            vmemmap_const
        } else {
            let mut b = [0u8; 8];
            kcore.read_exact_at(&mut b, offset_of(&kcore, vmemmap_base_addr, 8)?)?;
            u64::from_le_bytes(b)
        };
        let addr = vmemmap + zero_pfn * layout.size + layout.refcount_offset;
        let offset = offset_of(&kcore, addr, 4)?;
        Ok(ZeroRefcount { kcore, offset })
    }

    pub fn read(&self) -> anyhow::Result<i32> {
        let mut b = [0u8; 4];
        self.kcore.read_exact_at(&mut b, self.offset)?;
        Ok(i32::from_le_bytes(b))
    }
}
