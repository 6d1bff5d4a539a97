//! Pinned maps on this host's kernel (BPF_OBJ_PIN/GET, no attach): a
//! second load of the same build reuses the first one's counters and ring
//! buffer with their contents, and another build's pins are removed.
//! The restart of a whole agent is proven in the VM lab.
use aya::maps::{MapInfo, PerCpuArray, PerCpuValues};
use vfio_zp::probes::{pins, preflight, programs};
use vfio_zp_common::{CounterBlock, counter};

const RING: u32 = pins::DEFAULT_RING_BYTES;

struct Bpffs(std::path::PathBuf);

impl Bpffs {
    fn mount() -> Option<Bpffs> {
        let dir = std::env::temp_dir().join(format!("vfio-zp-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let c = std::ffi::CString::new(dir.to_str()?).ok()?;
        // SAFETY: valid C strings; a fresh bpffs instance on our own directory.
        let r = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        (r == 0).then_some(Bpffs(dir))
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.0.to_str().unwrap_or("")) {
            // SAFETY: valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn pinned_counters_survive_a_reload_and_stale_builds_go() {
    if !preflight::is_root() {
        vfio_zp::testing::skip("pinned-maps", "needs root (bpffs mount, BPF_OBJ_PIN)");
        return;
    }
    assert!(
        !programs::OBJECT.is_empty(),
        "built with AYA_BUILD_SKIP: no eBPF object"
    );
    let Some(fs) = Bpffs::mount() else {
        panic!("cannot mount a bpffs instance (needed for map pinning)");
    };
    let root = fs.0.join("vfio-zp");

    // An "older build" pins its maps first.
    let old = pins::prepare(&root, "0ld", false, RING).unwrap();
    drop(programs::load_object_pinned(Some(&old.dir), None).unwrap());
    assert!(old.dir.join("COUNTERS").exists());

    let p = pins::prepare(&root, "new", false, RING).unwrap();
    assert_eq!(p.stale_removed, vec!["0ld".to_string()]);
    assert!(p.reused.is_empty());
    assert!(!old.dir.exists());

    let cpus = aya::util::nr_cpus().unwrap();
    let id = |m: &str| MapInfo::from_pin(p.dir.join(m)).unwrap().id();
    let (counters_id, events_id) = {
        let mut ebpf = programs::load_object_pinned(Some(&p.dir), None).unwrap();
        let mut c: PerCpuArray<_, CounterBlock> =
            PerCpuArray::try_from(ebpf.take_map("COUNTERS").unwrap()).unwrap();
        let mut block = [0u64; counter::COUNT as usize];
        block[3] = 7;
        c.set(0, PerCpuValues::try_from(vec![block; cpus]).unwrap(), 0)
            .unwrap();
        (id("COUNTERS"), id("EVENTS"))
    };
    // The first loader is gone; its pins keep the maps alive.
    let again = pins::prepare(&root, "new", false, RING).unwrap();
    assert_eq!(again.reused, pins::PINNED_MAPS);
    let mut ebpf = programs::load_object_pinned(Some(&again.dir), None).unwrap();
    assert_eq!((id("COUNTERS"), id("EVENTS")), (counters_id, events_id));
    let c: PerCpuArray<_, CounterBlock> =
        PerCpuArray::try_from(ebpf.take_map("COUNTERS").unwrap()).unwrap();
    assert_eq!(
        c.get(&0, 0).unwrap().iter().map(|b| b[3]).sum::<u64>(),
        7 * cpus as u64
    );
    drop(ebpf);

    // Another ring size replaces the kept ring buffer, not the counters.
    let resized = pins::prepare(&root, "new", false, RING / 2).unwrap();
    assert_eq!(resized.reused, vec!["COUNTERS", "THREADS", "SLOTS", "LENT"]);
    let ebpf = programs::load_object_pinned(Some(&resized.dir), Some(RING / 2)).unwrap();
    assert_eq!(
        MapInfo::from_pin(resized.dir.join("EVENTS"))
            .unwrap()
            .max_entries(),
        RING / 2
    );
    assert_eq!(id("COUNTERS"), counters_id);
    drop(ebpf);

    // --fresh drops this build's own pins too.
    let fresh = pins::prepare(&root, "new", true, RING).unwrap();
    assert!(fresh.reused.is_empty() && !fresh.dir.join("COUNTERS").exists());
}
