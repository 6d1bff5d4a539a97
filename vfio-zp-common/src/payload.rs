//! What each kind of record carries: one named `#[repr(C)]` struct per
//! kind. A probe builds one and stores its words in `Event::payload`; the
//! agent reads the same struct back from those words, so both sides name
//! every field the same way and neither counts positions.
use bytemuck::{Pod, Zeroable};

/// The room a payload has in `Event`.
pub type Words = [u64; 6];

/// A record's payload: plain data of at most six words, stored from the
/// first word on, the rest zero.
pub trait Payload: Pod {
    /// Refuses, at build time, a payload that does not fit.
    const FITS: () = assert!(core::mem::size_of::<Self>() <= core::mem::size_of::<Words>());

    #[inline(always)]
    fn words(&self) -> Words {
        let () = Self::FITS;
        let mut w = [0u64; 6];
        bytemuck::bytes_of_mut(&mut w)[..core::mem::size_of::<Self>()]
            .copy_from_slice(bytemuck::bytes_of(self));
        w
    }

    #[inline(always)]
    fn from_words(w: &Words) -> Self {
        let () = Self::FITS;
        bytemuck::pod_read_unaligned(&bytemuck::bytes_of(w)[..core::mem::size_of::<Self>()])
    }
}

/// `ProbeId::Type1Pin`: one `vfio_pin_pages_remote` call, or a run of
/// zero-page calls of one MAP_DMA (same dma, consecutive addresses, same
/// limit; `npage` and `pinned` summed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Type1Pin {
    /// The `vfio_dma` (opaque key).
    pub dma: u64,
    pub vaddr: u64,
    /// Pages requested.
    pub npage: u64,
    /// The return: pages pinned, or a negative errno.
    pub pinned: i64,
    /// The pfn of the first page pinned (never exported); 0 for a pin that
    /// writes, whose pfn is not read: it is never a zero page.
    pub pfn_base: u64,
    /// Of the pages pinned (a contiguous pfn run), those of the THP huge
    /// zero page: type1 holds them until its unpin of the same pfns.
    pub huge_zero_pages: u64,
}

/// `ProbeId::Type1Unpin`: one `vfio_unpin_pages_remote` call, or a run of
/// zero-page calls of one UNMAP (same dma, consecutive iovas, same
/// `do_accounting`; `npage` and `unlocked` summed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Type1Unpin {
    pub dma: u64,
    pub iova: u64,
    pub pfn: u64,
    pub npage: u64,
    /// 1 when type1 uncharges the pages from locked_vm.
    pub do_accounting: u32,
    /// Of the `npage` pfns from `pfn` (a contiguous run), those of the
    /// THP huge zero page.
    pub huge_zero_pages: u32,
    /// The return: pages uncharged.
    pub unlocked: i64,
}

/// `ProbeId::PutPfn`, written only for a zero page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PutPfn {
    pub pfn: u64,
    pub prot: u64,
    /// The return: 1 when the page was released.
    pub released: i64,
}

/// `ProbeId::LockAcct`: a locked_vm delta type1 charged (or failed to).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct LockAcct {
    pub dma: u64,
    /// Pages: positive charges, negative uncharges.
    pub npage: i64,
    /// 1 when the charge ran from the async path (no mm of the caller's).
    pub is_async: u64,
    /// The return: 0, or a negative errno (the limit was hit).
    pub ret: i64,
}

/// `ProbeId::GupPinRemote` and `ProbeId::GupPin`: one call, written when it
/// ran inside type1 or pinned a zero page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GupPin {
    pub start: u64,
    pub nr_pages: u64,
    pub gup_flags: u64,
    /// The return: pages pinned, or a negative errno.
    pub pinned: i64,
    /// Of those, entries that are the 4 KiB zero page.
    pub zero_pages: u64,
    /// Of those, entries of the THP huge zero page.
    pub huge_zero_pages: u64,
}

/// `ProbeId::GupUnpinPage`, `GupUnpinPages` and `GupUnpinPagesDirty`:
/// written when zero pages are among the pages unpinned. A GupUnpinPage
/// record with `flag::FOLDED` sums `npages` calls of one type1 pin call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GupUnpin {
    pub npages: u64,
    pub zero_pages: u64,
    pub huge_zero_pages: u64,
    pub make_dirty: u64,
}

/// `ProbeId::Type1Open` (the new container, 0 when the open failed) and
/// `ProbeId::Type1Release`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Container {
    pub container: u64,
}

/// `ProbeId::RemoveDma`: a mapping of a container goes away.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RemoveDma {
    pub container: u64,
    pub dma: u64,
}

/// `ProbeId::Type1Ioctl`: a MAP_DMA or UNMAP_DMA request and its return.
/// For UNMAP `iova` and `size` are what the kernel wrote back (what it
/// unmapped) and `vaddr` is 0; a MAP record also carries the caller's
/// limits (`flag::LIMITS`, `Event::limit`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Ioctl {
    pub cmd: u64,
    pub ret: i64,
    pub flags: u64,
    pub vaddr: u64,
    pub iova: u64,
    pub size: u64,
}

impl Payload for Type1Pin {}
impl Payload for Type1Unpin {}
impl Payload for PutPfn {}
impl Payload for LockAcct {}
impl Payload for GupPin {}
impl Payload for GupUnpin {}
impl Payload for Container {}
impl Payload for RemoveDma {}
impl Payload for Ioctl {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_takes_the_first_words_in_field_order_and_reads_back() {
        let p = PutPfn {
            pfn: 7,
            prot: 1,
            released: -1,
        };
        assert_eq!(p.words(), [7, 1, u64::MAX, 0, 0, 0]);
        assert_eq!(PutPfn::from_words(&p.words()), p);
        let i = Ioctl {
            cmd: 0x3b71,
            ret: -12,
            flags: 3,
            vaddr: 4,
            iova: 5,
            size: 6,
        };
        assert_eq!(i.words(), [0x3b71, (-12i64) as u64, 3, 4, 5, 6]);
        assert_eq!(Ioctl::from_words(&i.words()), i);
    }
}
