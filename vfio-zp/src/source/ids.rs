//! Kernel pointers (struct vfio_iommu *, struct vfio_dma *) become small ids
//! here and never travel further: KASLR must not leak through vfio-zp.
use std::collections::HashMap;

use crate::stream::event::Id;

/// Ids for one kind of kernel object. A pointer is reused by the allocator
/// once its object is freed, so a retired key gets a fresh id the next time
/// it is *born* again (a pin or an open), while late references to the old
/// object (the unpins that follow vfio_remove_dma) keep the old id.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
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

    proptest::proptest! {
        /// Over any sequence of sightings, births and frees of a few keys:
        /// a key keeps its id until it is retired and born again, and no
        /// id ever names two kernel objects.
        #[test]
        fn ids_follow_object_lifetimes(ops in proptest::collection::vec((0u64..4, 0u8..3), 0..200)) {
            let mut ids = KeyIds::default();
            let mut current: HashMap<u64, Id> = HashMap::new();
            let mut retired: HashMap<u64, bool> = HashMap::new();
            let mut owner: HashMap<Id, u64> = HashMap::new();
            for (key, op) in ops {
                let key = 0xffff_8880_0000_0000 + key * 0x1000;
                match op {
                    2 => {
                        ids.retire(key);
                        if current.contains_key(&key) {
                            retired.insert(key, true);
                        }
                    }
                    op => {
                        let birth = op == 1;
                        let id = ids.id(key, birth);
                        let renewed = birth && retired.get(&key).copied().unwrap_or(false);
                        match current.get(&key) {
                            Some(old) if !renewed => proptest::prop_assert_eq!(id, *old),
                            Some(old) => proptest::prop_assert!(id > *old),
                            None => {}
                        }
                        if renewed || !current.contains_key(&key) {
                            retired.insert(key, false);
                        }
                        current.insert(key, id);
                        proptest::prop_assert_eq!(*owner.entry(id).or_insert(key), key);
                    }
                }
            }
        }
    }
}
