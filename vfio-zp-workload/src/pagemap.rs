//! Anonymous test memory and what backs it, from /proc/self/pagemap.
use std::os::unix::fs::FileExt;

use anyhow::Context;

pub const PAGE: usize = 4096;

/// A private anonymous mapping, unmapped on drop.
pub struct Region {
    pub addr: *mut u8,
    pub len: usize,
    map_len: usize,
    map_addr: *mut libc::c_void,
}

impl Region {
    /// `pages` pages starting `offset` bytes past a 2 MiB boundary (so the
    /// THP huge zero page can back the aligned part when asked to).
    pub fn new(pages: usize, offset: usize, hugepage: bool) -> anyhow::Result<Region> {
        let len = pages * PAGE;
        let map_len = len + offset + (2 << 20);
        // SAFETY: fresh anonymous private mapping.
        let map_addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        anyhow::ensure!(
            map_addr != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let aligned = (map_addr as usize).next_multiple_of(2 << 20) + offset;
        let addr = aligned as *mut u8;
        // SAFETY: advice on our own mapping.
        unsafe {
            libc::madvise(
                addr.cast(),
                len,
                if hugepage {
                    libc::MADV_HUGEPAGE
                } else {
                    libc::MADV_NOHUGEPAGE
                },
            );
        }
        Ok(Region {
            addr,
            len,
            map_len,
            map_addr,
        })
    }

    pub fn pages(&self) -> usize {
        self.len / PAGE
    }

    pub fn read_touch(&self) {
        for i in 0..self.pages() {
            // SAFETY: inside our mapping.
            let _ = unsafe { std::ptr::read_volatile(self.addr.add(i * PAGE)) };
        }
    }

    pub fn write_touch(&self) {
        for i in 0..self.pages() {
            // SAFETY: inside our writable mapping.
            unsafe { std::ptr::write_volatile(self.addr.add(i * PAGE), 1) };
        }
    }

    pub fn alternate_touch(&self) {
        for i in 0..self.pages() {
            // SAFETY: inside our writable mapping.
            unsafe {
                let at = self.addr.add(i * PAGE);
                if i % 2 == 0 {
                    let _ = std::ptr::read_volatile(at);
                } else {
                    std::ptr::write_volatile(at, 1);
                }
            }
        }
    }

    /// The pfn behind each page (None when not present).
    pub fn pfns(&self) -> anyhow::Result<Vec<Option<u64>>> {
        let f = std::fs::File::open("/proc/self/pagemap").context("/proc/self/pagemap")?;
        let mut buf = vec![0u8; self.pages() * 8];
        f.read_exact_at(&mut buf, (self.addr as u64 / PAGE as u64) * 8)?;
        Ok(buf
            .chunks_exact(8)
            .map(|c| decode(u64::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect())
    }
}

/// Bit 63: present; bits 0-54: pfn (0 without CAP_SYS_ADMIN).
pub fn decode(entry: u64) -> Option<u64> {
    (entry >> 63 == 1).then_some(entry & ((1 << 55) - 1))
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(self.map_addr, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_entries() {
        assert_eq!(decode((1 << 63) | 42), Some(42));
        assert_eq!(decode(42), None);
        assert_eq!(decode((1 << 63) | (1 << 55) | 7), Some(7));
    }

    #[test]
    fn written_pages_are_not_the_zero_page() {
        let r = Region::new(4, 0, false).unwrap();
        r.read_touch();
        let zero = r.pfns().unwrap();
        r.write_touch();
        let written = r.pfns().unwrap();
        if zero[0] == Some(0) {
            return vfio_zp::testing::skip("workload-pagemap", "pagemap hides pfns (not root)");
        }
        assert!(
            zero.iter().all(|p| *p == zero[0]),
            "all read-touched pages share one pfn"
        );
        assert!(written.iter().all(|p| p.is_some() && *p != zero[0]));
    }
}
