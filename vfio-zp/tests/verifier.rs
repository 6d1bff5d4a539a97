//! Every probe program passes the running kernel's verifier (BPF_PROG_LOAD,
//! no attach: this host may lack kprobes). Attach is proven in the VM lab.
use vfio_zp::probes::{preflight, probe_points::POINTS, programs};

#[test]
fn every_program_loads_on_this_kernel() {
    if !preflight::is_root() {
        vfio_zp::testing::skip("verifier", "needs root (BPF_PROG_LOAD)");
        return;
    }
    if programs::OBJECT.is_empty() {
        panic!("built with AYA_BUILD_SKIP: no eBPF object to verify");
    }
    let start = std::time::Instant::now();
    let ebpf = programs::load_object().unwrap_or_else(|e| panic!("{e}"));
    // Load time is the verifier's, where the kernel does not count what it walked.
    println!("verified: 20 programs loaded in {:.2?}", start.elapsed());
    let names: Vec<_> = POINTS
        .iter()
        .flat_map(|p| [p.entry, p.ret])
        .flatten()
        .collect();
    assert_eq!(names.len(), 20);
    // Instructions the verifier walked, per program (kernel 5.16+): what load
    // time on an old kernel grows with. 5.10 under TCG loads all 20 in ~25 s.
    let mut walked = 0;
    for name in names {
        let prog = ebpf
            .program(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let info = prog
            .info()
            .unwrap_or_else(|e| panic!("{name} not loaded: {e}"));
        assert!(info.id() > 0, "{name}");
        let n = info.verified_instruction_count().unwrap_or(0);
        walked += n;
        println!("verified {name}: {n} instructions walked");
    }
    println!("verified all: {walked} instructions walked");
    for map in ["EVENTS", "COUNTERS", "CONFIG", "STASH", "THREADS", "BLANK"] {
        assert!(ebpf.map(map).is_some(), "{map} missing");
    }
}
