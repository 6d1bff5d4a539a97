//! The zero page's identity for the probes: its pfn, where `struct page`s
//! live, and where the huge zero page's pfn is kept.
use vfio_zp_common::ZeroPageConfig;

use super::{btf::PageLayout, kallsyms::Kallsyms};

/// Kernel variables vfio-zp reads (by address, inside the probes).
pub const VARIABLES: [&str; 3] = ["zero_pfn", "vmemmap_base", "huge_zero_pfn"];

/// x86-64 vmemmap start when the kernel does not randomize it
/// (CONFIG_RANDOMIZE_MEMORY=n: no `vmemmap_base` variable).
const VMEMMAP_START_4LEVEL: u64 = 0xffff_ea00_0000_0000;

/// A 4 KiB anonymous page that was only read maps the zero page: its pfn,
/// from /proc/self/pagemap, is the zero pfn. Needs CAP_SYS_ADMIN for pfns.
pub fn zero_pfn_from_pagemap() -> anyhow::Result<u64> {
    use std::os::unix::fs::FileExt;
    let page = 4096usize;
    // A private anonymous mapping, read once (never written): the read
    // fault maps the zero page.
    let map = memmap2::MmapOptions::new()
        .len(page)
        .map_anon()
        .map_err(|e| anyhow::anyhow!("mmap: {e}"))?;
    std::hint::black_box(map[0]);
    let addr = map.as_ptr() as u64;
    let mut buf = [0u8; 8];
    std::fs::File::open("/proc/self/pagemap")
        .and_then(|f| f.read_exact_at(&mut buf, (addr / page as u64) * 8))
        .map_err(|e| anyhow::anyhow!("/proc/self/pagemap: {e}"))?;
    drop(map);
    decode_pagemap(u64::from_le_bytes(buf))
}

/// Bit 63 present, bits 0-54 pfn (zero when the reader lacks CAP_SYS_ADMIN).
pub fn decode_pagemap(entry: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(entry >> 63 == 1, "pagemap: page not present");
    let pfn = entry & ((1 << 55) - 1);
    anyhow::ensure!(pfn != 0, "pagemap hides pfns (needs CAP_SYS_ADMIN)");
    Ok(pfn)
}

/// Builds the probes' config. `zero_pfn` comes from pagemap (no kernel
/// memory read needed); vmemmap and huge_zero_pfn are read by the probes.
pub fn config(syms: &Kallsyms, layout: PageLayout, zero_pfn: u64) -> ZeroPageConfig {
    let vmemmap_base_addr = syms.addr("vmemmap_base").unwrap_or(0);
    ZeroPageConfig {
        valid: 1,
        zero_pfn,
        vmemmap_base_addr,
        vmemmap_const: if vmemmap_base_addr == 0 {
            VMEMMAP_START_4LEVEL
        } else {
            0
        },
        page_size: layout.size,
        refcount_offset: layout.refcount_offset,
        huge_zero_pfn_addr: syms.addr("huge_zero_pfn").unwrap_or(0),
        task_signal: layout.task.map_or(0, |t| t.task_signal),
        signal_rlim: layout.task.map_or(0, |t| t.signal_rlim),
        task_cred: layout.task.map_or(0, |t| t.task_cred),
        cred_cap_effective: layout.task.map_or(0, |t| t.cred_cap_effective),
        wake_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_decoding() {
        assert_eq!(decode_pagemap((1 << 63) | 0x1234).unwrap(), 0x1234);
        assert!(decode_pagemap(0x1234).is_err(), "not present");
        assert!(decode_pagemap(1 << 63).is_err(), "pfn hidden");
        // Soft-dirty (55) and exclusive (56) bits are not part of the pfn.
        assert_eq!(
            decode_pagemap((1 << 63) | (1 << 55) | (1 << 56) | 7).unwrap(),
            7
        );
    }

    #[test]
    fn host_zero_pfn_is_stable() {
        // Two independent reads must agree: the zero page never moves.
        match (zero_pfn_from_pagemap(), zero_pfn_from_pagemap()) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(e), _) => {
                crate::testing::skip("host-zero-pfn", &format!("pagemap unreadable here: {e}"))
            }
            _ => panic!("second pagemap read failed"),
        }
    }
}
