//! Kernel pointers (struct vfio_iommu *, struct vfio_dma *) become small ids
//! here and never travel further: KASLR must not leak through vfio-zp.
use std::collections::HashMap;

use crate::event::Id;

/// Ids for one kind of kernel object. A pointer is reused by the allocator
/// once its object is freed, so a retired key gets a fresh id the next time
/// it is *born* again (a pin or an open), while late references to the old
/// object (the unpins that follow vfio_remove_dma) keep the old id.
#[derive(Debug, Default)]
pub struct KeyIds {
    live: HashMap<u64, (Id, bool)>,
    next: Id,
}

impl KeyIds {
    /// The id of `key`, assigning one on first sight. `birth` marks events
    /// that only a new object produces.
    pub fn id(&mut self, key: u64, birth: bool) -> Id {
        if let Some((id, retired)) = self.live.get(&key).copied()
            && !(retired && birth)
        {
            return id;
        }
        self.next += 1;
        self.live.insert(key, (self.next, false));
        self.next
    }

    /// The object behind `key` is being freed.
    pub fn retire(&mut self, key: u64) {
        if let Some(e) = self.live.get_mut(&key) {
            e.1 = true;
        }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_small_stable_and_renewed_after_reuse() {
        let mut ids = KeyIds::default();
        let a = ids.id(0xffff_8880_1234_5000, true);
        let b = ids.id(0xffff_8880_9999_0000, true);
        assert_eq!((a, b), (1, 2));
        assert_eq!(ids.id(0xffff_8880_1234_5000, false), a);
        ids.retire(0xffff_8880_1234_5000);
        // Unpins after removal still belong to the old object...
        assert_eq!(ids.id(0xffff_8880_1234_5000, false), a);
        // ...a new pin at the same address is a new object.
        let c = ids.id(0xffff_8880_1234_5000, true);
        assert_eq!(c, 3);
        assert_eq!(ids.id(0xffff_8880_1234_5000, false), c);
    }
}
