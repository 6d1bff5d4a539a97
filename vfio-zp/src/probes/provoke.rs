//! Zero-page pins the agent takes itself, so the probes see how this
//! kernel's GUP counts them even where type1 never pins the zero page
//! (6.2+ unshares read-only long-term pins, 84209e87c696).
//!
//! process_vm_readv() on the agent's own memory pins the source pages with
//! pin_user_pages_remote() (FOLL_PIN since v5.6, "mm/process_vm_access:
//! set FOLL_PIN via pin_user_pages_remote()"), without FOLL_LONGTERM, so
//! nothing is unshared: pages of a fresh anonymous mapping nothing wrote
//! fault in as the zero page, are pinned, copied and unpinned with
//! unpin_user_pages() before the call returns. The gup_pin_remote probe
//! reads the zero page's refcount after each pin: moved by 1024 per page
//! (GUP_PIN_COUNTING_BIAS) or not at all (c8070b787519, v6.5, backported to
//! 6.1.y), a vote on `gup_pins_zero_page`. Every kernel unpins them again,
//! so this leaks nothing even where type1 does.
use std::io::IoSliceMut;

use memmap2::MmapOptions;
use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;

const PAGE: usize = 4096;

/// Reads 1 and then 2 untouched pages through process_vm_readv: two pin
/// calls of different sizes, so two readings differ by a known number of
/// pins whatever else holds the zero page. Three pages in all: a mapping
/// that small can never be a transparent huge page, whose huge zero page
/// GUP refcounts on every kernel.
pub fn pin_zero_pages() -> anyhow::Result<()> {
    let area = MmapOptions::new().len(3 * PAGE).map_anon()?;
    // The mapping is read only by the kernel, never written or read here.
    let base = area.as_ptr() as usize;
    let mut buf = vec![0u8; 2 * PAGE];
    for (offset, len) in [(0, PAGE), (PAGE, 2 * PAGE)] {
        let remote = [RemoteIoVec {
            base: base + offset,
            len,
        }];
        let mut local = [IoSliceMut::new(&mut buf[..len])];
        let n = process_vm_readv(Pid::this(), &mut local, &remote)?;
        anyhow::ensure!(n == len, "process_vm_readv read {n} of {len} bytes");
    }
    anyhow::ensure!(
        buf.iter().all(|b| *b == 0),
        "untouched anonymous memory read back non-zero"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Runs unprivileged on any host (its pins are what the probes see).
    #[test]
    fn reads_untouched_pages_as_zeros() {
        super::pin_zero_pages().unwrap();
    }
}
