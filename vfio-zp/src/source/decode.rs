//! Raw ring-buffer records (vfio_zp_common::Event) to [`Event`]s, each
//! payload read through its kind's struct (vfio_zp_common::payload).
use vfio_zp_common::payload::{self as p, Payload};
use vfio_zp_common::{Event as Raw, ProbeId, carried_pin, flag};

use super::ids::KeyIds;
use crate::stream::IdOp;
use crate::stream::event::Memlock;
use crate::stream::event::{Event, Id, PageClass, Refcount, UnpinFn, What, When};

const VFIO_IOMMU_MAP_DMA: u64 = 0x3b71;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {expected}", expected = Raw::SIZE)]
    Size(usize),
    #[error("unknown probe id {0}")]
    Probe(u16),
}

/// Keeps the id maps that make decoding stateful. Serializable, so the
/// agent can keep it across restarts: its keys are kernel pointers hashed
/// with a secret, so what is kept holds no kernel address either.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Decoder {
    containers: KeyIds,
    dmas: KeyIds,
    secret: u128,
    /// What each decode did to the id maps, when the caller journals it.
    #[serde(skip)]
    ops: Option<Vec<IdOp>>,
}

/// Reads a ring-buffer record; the buffer carries no alignment guarantee.
pub fn parse(bytes: &[u8]) -> Result<Raw, DecodeError> {
    if bytes.len() < Raw::SIZE {
        return Err(DecodeError::Size(bytes.len()));
    }
    Ok(bytemuck::pod_read_unaligned(&bytes[..Raw::SIZE]))
}

fn class(flags: u16) -> PageClass {
    if flags & flag::NO_ZERO_PAGE_ID != 0 {
        PageClass::Unknown
    } else if flags & flag::PFN_ZERO != 0 {
        PageClass::Zero
    } else if flags & flag::PFN_HUGE_ZERO != 0 {
        PageClass::HugeZero
    } else {
        PageClass::Other
    }
}

impl Decoder {
    /// A decoder whose kept state hashes pointers with `secret` and which
    /// logs its id steps for [`Decoder::take_ops`].
    pub fn journaled(secret: u128) -> Decoder {
        Decoder {
            secret,
            ops: Some(Vec::new()),
            ..Default::default()
        }
    }

    /// Turns journaling on for a decoder restored from a checkpoint.
    pub fn resume(mut self) -> Decoder {
        self.ops = Some(Vec::new());
        self
    }

    /// The id steps since the last call.
    pub fn take_ops(&mut self) -> Vec<IdOp> {
        self.ops.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Replays journaled steps (after a checkpoint) without logging them.
    pub fn replay(&mut self, ops: &[IdOp]) {
        let log = self.ops.take();
        for op in ops {
            self.step(*op);
        }
        self.ops = log;
    }

    fn key(&self, ptr: u64) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.secret, ptr).hash(&mut h);
        h.finish()
    }

    fn step(&mut self, op: IdOp) -> Id {
        if let Some(log) = &mut self.ops {
            log.push(op);
        }
        match op {
            IdOp::Container { key, birth } => self.containers.id(key, birth),
            IdOp::Dma { key, birth } => self.dmas.id(key, birth),
            IdOp::RetireContainer { key } => {
                self.containers.retire(key);
                0
            }
            IdOp::RetireDma { key } => {
                self.dmas.retire(key);
                0
            }
        }
    }

    fn container(&mut self, ptr: u64, birth: bool) -> Id {
        let key = self.key(ptr);
        self.step(IdOp::Container { key, birth })
    }

    fn dma(&mut self, ptr: u64, birth: bool) -> Id {
        let key = self.key(ptr);
        self.step(IdOp::Dma { key, birth })
    }

    /// A record's events: the calls it carries, as the events the probes
    /// once wrote for them just before the record (same thread, time and
    /// container, no refcount reading: it moved during them), then its
    /// own. `Event::carried` counts, on a type1 pin, what vfio_lock_acct
    /// charged inside it to the same mapping, or with flag::FOLDED its
    /// call's zero-page `unpin_user_page` calls; on any other record those
    /// of its thread's pin call. A record with flag::CARRIES_PIN also
    /// carries one zero-page GUP pin of that call, first: it ran before
    /// the last of those unpins.
    pub fn decode_all(&mut self, raw: &Raw) -> Result<(Vec<Event>, Event), DecodeError> {
        let event = self.decode(raw)?;
        let mut before = Vec::new();
        let carried = |what| Event {
            zero_refcount: None,
            what,
            ..event.clone()
        };
        if raw.flags & flag::CARRIES_PIN != 0 {
            let (start, gup_flags) = carried_pin::decode(raw.limit);
            before.push(carried(What::GupPin {
                remote: true,
                start,
                nr_pages: 1,
                gup_flags,
                pinned: 1,
                zero_pages: 1,
                huge_zero_pages: 0,
                in_type1: true,
                truncated: false,
            }));
        }
        let n = raw.carried;
        if n != 0 {
            before.push(carried(match event.what {
                What::Type1Pin { dma, .. } if raw.flags & flag::FOLDED == 0 => What::LockAcct {
                    dma,
                    npage: n as i64,
                    is_async: false,
                    ret: 0,
                },
                _ => What::GupUnpin {
                    func: UnpinFn::UnpinUserPage,
                    npages: n,
                    zero_pages: n,
                    huge_zero_pages: 0,
                    truncated: false,
                },
            }));
        }
        Ok((before, event))
    }

    /// A record's own event.
    pub fn decode(&mut self, raw: &Raw) -> Result<Event, DecodeError> {
        let probe = ProbeId::from_u16(raw.probe).ok_or(DecodeError::Probe(raw.probe))?;
        let w = &raw.payload;
        let f = raw.flags;
        let truncated = f & flag::TRUNCATED != 0;
        let what = match probe {
            ProbeId::Type1Pin => {
                let r = p::Type1Pin::from_words(w);
                What::Type1Pin {
                    dma: self.dma(r.dma, true),
                    vaddr: r.vaddr,
                    npage: r.npage,
                    pinned: r.pinned,
                    base: class(f),
                    huge_zero_pages: r.huge_zero_pages,
                }
            }
            ProbeId::Type1Unpin => {
                let r = p::Type1Unpin::from_words(w);
                What::Type1Unpin {
                    dma: self.dma(r.dma, false),
                    iova: r.iova,
                    npage: r.npage,
                    do_accounting: r.do_accounting != 0,
                    unlocked: r.unlocked,
                    base: class(f),
                    huge_zero_pages: r.huge_zero_pages as u64,
                }
            }
            ProbeId::PutPfn => {
                let r = p::PutPfn::from_words(w);
                What::PutPfn {
                    page: class(f),
                    prot: r.prot as u32,
                    released: r.released != 0,
                }
            }
            ProbeId::LockAcct => {
                let r = p::LockAcct::from_words(w);
                What::LockAcct {
                    dma: self.dma(r.dma, false),
                    npage: r.npage,
                    is_async: r.is_async != 0,
                    ret: r.ret as i32,
                }
            }
            ProbeId::GupPinRemote | ProbeId::GupPin => {
                let r = p::GupPin::from_words(w);
                What::GupPin {
                    remote: probe == ProbeId::GupPinRemote,
                    start: r.start,
                    nr_pages: r.nr_pages,
                    gup_flags: r.gup_flags as u32,
                    pinned: r.pinned,
                    zero_pages: r.zero_pages,
                    huge_zero_pages: r.huge_zero_pages,
                    in_type1: f & flag::IN_TYPE1 != 0,
                    truncated,
                }
            }
            ProbeId::GupUnpinPage | ProbeId::GupUnpinPages | ProbeId::GupUnpinPagesDirty => {
                let r = p::GupUnpin::from_words(w);
                What::GupUnpin {
                    func: match probe {
                        ProbeId::GupUnpinPage => UnpinFn::UnpinUserPage,
                        ProbeId::GupUnpinPages => UnpinFn::UnpinUserPages,
                        _ => UnpinFn::UnpinUserPagesDirtyLock,
                    },
                    npages: r.npages,
                    zero_pages: r.zero_pages,
                    huge_zero_pages: r.huge_zero_pages,
                    truncated,
                }
            }
            ProbeId::Type1Open => What::ContainerOpen {
                ok: p::Container::from_words(w).container != 0,
            },
            ProbeId::Type1Release => What::ContainerRelease,
            ProbeId::RemoveDma => {
                let r = p::RemoveDma::from_words(w);
                let dma = self.dma(r.dma, false);
                let key = self.key(r.dma);
                self.step(IdOp::RetireDma { key });
                What::RemoveDma { dma }
            }
            ProbeId::Type1Ioctl => {
                let r = p::Ioctl::from_words(w);
                if r.cmd == VFIO_IOMMU_MAP_DMA {
                    let limits = f & flag::LIMITS != 0;
                    What::MapDma {
                        ret: r.ret,
                        flags: r.flags as u32,
                        vaddr: r.vaddr,
                        iova: r.iova,
                        size: r.size,
                        memlock: limits.then_some(match raw.limit {
                            u64::MAX => Memlock::Unlimited,
                            b => Memlock::Bytes(b),
                        }),
                        cap_ipc_lock: limits.then_some(f & flag::CAP_IPC_LOCK != 0),
                    }
                } else {
                    What::UnmapDma {
                        ret: r.ret,
                        flags: r.flags as u32,
                        iova: r.iova,
                        size: r.size,
                    }
                }
            }
        };
        let container = match (probe, raw.container) {
            (_, 0) => None,
            (ProbeId::Type1Open, k) => Some(self.container(k, true)),
            (ProbeId::Type1Release, k) => {
                let id = self.container(k, false);
                let key = self.key(k);
                self.step(IdOp::RetireContainer { key });
                Some(id)
            }
            (_, k) => Some(self.container(k, false)),
        };
        let zero_refcount = (f & flag::REFCOUNT != 0).then_some(Refcount {
            value: raw.zero_refcount,
            when: if f & flag::REFCOUNT_BEFORE != 0 {
                When::Before
            } else {
                When::After
            },
        });
        let comm_len = raw
            .comm
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(raw.comm.len());
        Ok(Event {
            t_ns: raw.ts_ns,
            tgid: raw.tgid,
            pid: raw.pid,
            comm: String::from_utf8_lossy(&raw.comm[..comm_len]).into_owned(),
            cgroup_id: raw.cgroup_id,
            container,
            zero_refcount,
            what,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vfio_zp_common::COMM_LEN;

    const CONTAINER: u64 = 0xffff_8881_0000_1000;
    const DMA: u64 = 0xffff_8881_0000_2000;

    fn raw(probe: ProbeId, flags: u16, args: [u64; 6]) -> Raw {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"qemu");
        Raw {
            ts_ns: 42,
            cgroup_id: 7,
            container: CONTAINER,
            tgid: 100,
            pid: 101,
            comm,
            probe: probe as u16,
            flags,
            zero_refcount: 1025,
            payload: args,
            limit: 0,
            carried: 0,
        }
    }

    /// A record as the ring buffer holds it.
    pub(crate) fn bytes(r: &Raw) -> Vec<u8> {
        bytemuck::bytes_of(r).to_vec()
    }

    #[test]
    fn type1_pin_of_zero_page_with_refcount() {
        let r = raw(
            ProbeId::Type1Pin,
            flag::PFN_ZERO | flag::REFCOUNT,
            [DMA, 0x7f00, 256, 1, 0x1234, 0],
        );
        let e = Decoder::default()
            .decode(&parse(&bytes(&r)).unwrap())
            .unwrap();
        assert_eq!(e.comm, "qemu");
        assert_eq!(e.container, Some(1));
        assert_eq!(
            e.zero_refcount,
            Some(Refcount {
                value: 1025,
                when: When::After
            })
        );
        assert_eq!(
            e.what,
            What::Type1Pin {
                dma: 1,
                vaddr: 0x7f00,
                npage: 256,
                pinned: 1,
                base: PageClass::Zero,
                huge_zero_pages: 0,
            }
        );
        // No kernel pointer or pfn survives into the JSON.
        let json = serde_json::to_string(&e).unwrap();
        for secret in [CONTAINER, DMA, 0x1234] {
            assert!(!json.contains(&secret.to_string()), "{json}");
        }
    }

    #[test]
    fn negative_returns_and_deltas_keep_their_sign() {
        let mut d = Decoder::default();
        let r = raw(
            ProbeId::LockAcct,
            0,
            [DMA, (-256i64) as u64, 1, (-12i64) as u64, 0, 0],
        );
        let e = d.decode(&r).unwrap();
        assert_eq!(e.zero_refcount.map(|r| r.value), None);
        assert_eq!(
            e.what,
            What::LockAcct {
                dma: 1,
                npage: -256,
                is_async: true,
                ret: -12
            }
        );
    }

    #[test]
    fn unpin_seen_before_and_huge_zero_class() {
        let r = raw(
            ProbeId::GupUnpinPages,
            flag::REFCOUNT | flag::REFCOUNT_BEFORE,
            [3, 2, 1, 0, 0, 0],
        );
        let e = Decoder::default().decode(&r).unwrap();
        assert_eq!(e.zero_refcount.unwrap().when, When::Before);
        assert!(matches!(
            e.what,
            What::GupUnpin {
                func: UnpinFn::UnpinUserPages,
                zero_pages: 2,
                huge_zero_pages: 1,
                ..
            }
        ));
        let r = raw(
            ProbeId::Type1Unpin,
            flag::PFN_HUGE_ZERO,
            [DMA, 0x1000, 0, 512, 1, 512],
        );
        let e = Decoder::default().decode(&r).unwrap();
        assert!(matches!(
            e.what,
            What::Type1Unpin {
                base: PageClass::HugeZero,
                npage: 512,
                do_accounting: true,
                ..
            }
        ));
    }

    /// Unpins a record carries read as the record the probes wrote for them
    /// before they rode on the next one (one GupUnpinPage record, zero
    /// pages, folded, no reading), placed just before the carrier.
    #[test]
    fn carried_unpins_read_as_their_own_record_before_the_carrier() {
        let mut r = raw(
            ProbeId::GupPinRemote,
            flag::IN_TYPE1 | flag::REFCOUNT,
            [0x7f00_0000, 1, 0x10000, 1, 1, 0],
        );
        r.carried = 3;
        let (before, e) = Decoder::default().decode_all(&r).unwrap();
        let old = raw(
            ProbeId::GupUnpinPage,
            flag::PFN_ZERO | flag::FOLDED,
            [3, 3, 0, 0, 0, 0],
        );
        let want = Decoder::default().decode(&old).unwrap();
        assert_eq!(before, vec![want]);
        assert_eq!(e.zero_refcount.map(|r| r.value), Some(1025));
        assert!(matches!(e.what, What::GupPin { zero_pages: 1, .. }));
        r.carried = 0;
        let (before, again) = Decoder::default().decode_all(&r).unwrap();
        assert_eq!((before, again), (vec![], e));
    }

    /// A zero-page type1 pin carries its call's folded unpins (flag::FOLDED,
    /// no charge): they read as the GupUnpinPage record the probes wrote
    /// for them at the call's return, placed just before the pin, whose
    /// class and reading stay its own.
    #[test]
    fn a_zero_page_pin_carries_its_calls_unpins_as_the_record_before_it() {
        let flags = flag::PFN_ZERO | flag::FOLDED | flag::REFCOUNT;
        let mut r = raw(ProbeId::Type1Pin, flags, [DMA, 0x7f00, 14, 1, 0x1234, 0]);
        r.zero_refcount = 1;
        r.carried = 1;
        let (before, e) = Decoder::default().decode_all(&r).unwrap();
        let old = raw(
            ProbeId::GupUnpinPage,
            flag::PFN_ZERO | flag::FOLDED,
            [1, 1, 0, 0, 0, 0],
        );
        let want = Decoder::default().decode(&old).unwrap();
        assert_eq!(before, vec![want]);
        assert_eq!(e.zero_refcount.map(|r| r.value), Some(1));
        assert!(matches!(
            e.what,
            What::Type1Pin {
                pinned: 1,
                base: PageClass::Zero,
                ..
            }
        ));
        // Without the flag the same count is a charge.
        r.flags = flag::PFN_ZERO | flag::REFCOUNT;
        let (before, _) = Decoder::default().decode_all(&r).unwrap();
        assert!(matches!(
            &before[..],
            [Event {
                what: What::LockAcct { npage: 1, .. },
                ..
            }]
        ));
    }

    /// 5.10's look-ahead pin rides on its call's type1 pin
    /// (flag::CARRIES_PIN): it reads as the GupPin record the probes wrote
    /// for it (its start and gup_flags from `limit`, no reading), then the
    /// call's folded unpins, then the pin itself.
    #[test]
    fn a_look_ahead_pin_rides_on_its_calls_pin_before_the_unpins() {
        let flags = flag::PFN_ZERO | flag::FOLDED | flag::CARRIES_PIN | flag::REFCOUNT;
        let mut r = raw(
            ProbeId::Type1Pin,
            flags,
            [DMA, 0x7f00_0000, 14, 1, 0x1234, 0],
        );
        r.zero_refcount = 1025;
        r.carried = 2;
        r.limit = carried_pin::encode(0x7f00_1000, 0x10000).unwrap();
        let (before, e) = Decoder::default().decode_all(&r).unwrap();
        let old = raw(
            ProbeId::GupPinRemote,
            flag::IN_TYPE1,
            [0x7f00_1000, 1, 0x10000, 1, 1, 0],
        );
        let pin = Decoder::default().decode(&old).unwrap();
        let unpins = raw(
            ProbeId::GupUnpinPage,
            flag::PFN_ZERO | flag::FOLDED,
            [2, 2, 0, 0, 0, 0],
        );
        let unpins = Decoder::default().decode(&unpins).unwrap();
        assert_eq!(before, vec![pin.clone(), unpins]);
        assert_eq!(e.zero_refcount.map(|r| r.value), Some(1025));
        assert!(matches!(e.what, What::Type1Pin { pinned: 1, .. }));
        // Without the flag `limit` says nothing: no pin.
        r.flags &= !flag::CARRIES_PIN;
        let (before, _) = Decoder::default().decode_all(&r).unwrap();
        assert!(matches!(
            &before[..],
            [Event {
                what: What::GupUnpin { zero_pages: 2, .. },
                ..
            }]
        ));
        // Any record of the call may carry it: a later GUP pin's, with the
        // unpins, then the record and its own reading.
        let mut g = raw(
            ProbeId::GupPinRemote,
            flag::IN_TYPE1 | flag::CARRIES_PIN | flag::REFCOUNT,
            [0x7f00_2000, 1, 0x10000, 1, 1, 0],
        );
        g.limit = r.limit;
        g.carried = 1;
        let (before, e) = Decoder::default().decode_all(&g).unwrap();
        assert_eq!(before[0], pin);
        assert!(matches!(
            before[1].what,
            What::GupUnpin { zero_pages: 1, .. }
        ));
        assert!(matches!(
            e.what,
            What::GupPin {
                start: 0x7f00_2000,
                ..
            }
        ));
        assert_eq!(e.zero_refcount.map(|r| r.value), Some(1025));
    }

    /// A type1 pin carries the charge of its call(s): it reads as the
    /// vfio_lock_acct record the probes wrote inside the call before,
    /// about the same mapping, placed just before the pin.
    #[test]
    fn a_pin_carries_its_charge_as_the_lock_acct_record_before_it() {
        let mut r = raw(ProbeId::Type1Pin, 0, [DMA, 0x7f00, 512, 37, 0x1234, 0]);
        r.carried = 37;
        let (before, e) = Decoder::default().decode_all(&r).unwrap();
        let old = raw(ProbeId::LockAcct, 0, [DMA, 37, 0, 0, 0, 0]);
        let want = Decoder::default().decode(&old).unwrap();
        assert_eq!(before, vec![want]);
        assert!(matches!(
            e.what,
            What::Type1Pin {
                dma: 1,
                pinned: 37,
                base: PageClass::Other,
                ..
            }
        ));
    }

    #[test]
    fn ioctl_map_and_unmap() {
        let mut d = Decoder::default();
        let m = d
            .decode(&raw(
                ProbeId::Type1Ioctl,
                0,
                [0x3b71, 0, 1, 0x7f00, 0x10_0000, 4096],
            ))
            .unwrap();
        assert_eq!(
            m.what,
            What::MapDma {
                flags: 1,
                vaddr: 0x7f00,
                iova: 0x10_0000,
                size: 4096,
                ret: 0,
                memlock: None,
                cap_ipc_lock: None,
            }
        );
        // With the limits the probe read: 64 KiB, no CAP_IPC_LOCK; unlimited with it.
        let mut r = raw(ProbeId::Type1Ioctl, 0, [0x3b71, 0, 1, 0x7f00, 0, 4096]);
        r.flags = flag::LIMITS;
        r.limit = 65536;
        let m = d.decode(&r).unwrap();
        assert!(matches!(
            m.what,
            What::MapDma {
                memlock: Some(Memlock::Bytes(65536)),
                cap_ipc_lock: Some(false),
                ..
            }
        ));
        r.flags = flag::LIMITS | flag::CAP_IPC_LOCK;
        r.limit = u64::MAX;
        let m = d.decode(&r).unwrap();
        assert!(matches!(
            m.what,
            What::MapDma {
                memlock: Some(Memlock::Unlimited),
                cap_ipc_lock: Some(true),
                ..
            }
        ));
        let u = d
            .decode(&raw(
                ProbeId::Type1Ioctl,
                0,
                [0x3b72, (-22i64) as u64, 0, 0, 0x10_0000, 0],
            ))
            .unwrap();
        assert_eq!(
            u.what,
            What::UnmapDma {
                flags: 0,
                iova: 0x10_0000,
                size: 0,
                ret: -22
            }
        );
    }

    #[test]
    fn container_ids_follow_lifetimes() {
        let mut d = Decoder::default();
        let open = d
            .decode(&raw(ProbeId::Type1Open, 0, [CONTAINER, 0, 0, 0, 0, 0]))
            .unwrap();
        let rel = d
            .decode(&raw(ProbeId::Type1Release, 0, [CONTAINER, 0, 0, 0, 0, 0]))
            .unwrap();
        let again = d
            .decode(&raw(ProbeId::Type1Open, 0, [CONTAINER, 0, 0, 0, 0, 0]))
            .unwrap();
        assert_eq!(
            (open.container, rel.container, again.container),
            (Some(1), Some(1), Some(2))
        );
    }

    #[test]
    fn short_records_and_unknown_probes_are_errors() {
        assert_eq!(parse(&[0u8; 10]).unwrap_err(), DecodeError::Size(10));
        let mut r = raw(ProbeId::Type1Pin, 0, [0; 6]);
        r.probe = 99;
        assert_eq!(
            Decoder::default().decode(&r).unwrap_err(),
            DecodeError::Probe(99)
        );
    }

    /// A decoder checkpointed mid-stream and replayed from its journaled
    /// id steps names every later object as the uninterrupted one does,
    /// and its kept state holds no pointer.
    #[test]
    fn checkpoint_plus_journal_replay_keeps_ids() {
        let open = |c| {
            let mut r = raw(ProbeId::Type1Open, 0, [1, 0, 0, 0, 0, 0]);
            r.container = c;
            r
        };
        let pin = |c, d| {
            let mut r = raw(ProbeId::Type1Pin, 0, [d, 0x7f00, 1, 1, 0, 0]);
            r.container = c;
            r
        };
        let remove = |c, d| {
            let mut r = raw(ProbeId::RemoveDma, 0, [0, d, 0, 0, 0, 0]);
            r.container = c;
            r
        };
        let c2 = CONTAINER + 0x1000;
        let before = [open(CONTAINER), pin(CONTAINER, DMA), open(c2)];
        let after = [
            remove(CONTAINER, DMA),
            pin(c2, DMA), // the address reused by a new mapping
            pin(CONTAINER, DMA + 8),
            raw(ProbeId::Type1Release, 0, [0; 6]),
        ];
        let mut live = Decoder::journaled(0x5eed);
        let ids = |d: &mut Decoder, r: &Raw| {
            let e = d.decode(r).unwrap();
            (e.container, format!("{:?}", e.what))
        };
        for r in &before {
            ids(&mut live, r);
        }
        live.take_ops();
        let checkpoint = serde_json::to_string(&live).unwrap();
        for p in [CONTAINER, DMA, c2] {
            assert!(!checkpoint.contains(&p.to_string()), "{checkpoint}");
        }
        let expected: Vec<_> = after.iter().map(|r| ids(&mut live, r)).collect();
        let journal = live.take_ops();
        // The restarted agent: checkpoint, then the journal, then the same
        // records (as if they had still been in the ring buffer).
        let restored: Decoder = serde_json::from_str(&checkpoint).unwrap();
        let mut restored = restored.resume();
        let mut again = serde_json::from_str::<Decoder>(&checkpoint)
            .unwrap()
            .resume();
        again.replay(&journal);
        assert!(again.take_ops().is_empty(), "replay is not journaled again");
        let got: Vec<_> = after.iter().map(|r| ids(&mut restored, r)).collect();
        assert_eq!(got, expected);
        assert_eq!(again.containers.len(), live.containers.len());
        assert_eq!(again.dmas.len(), live.dmas.len());
        // A new container after the replay gets the next id, not a reused one.
        assert_eq!(ids(&mut again, &open(CONTAINER + 0x9000)).0, Some(3));
    }
}
