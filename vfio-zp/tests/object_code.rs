//! The probes' object code, read back from the embedded ELF: no program
//! calls a memory builtin. bpf-linker links compiler_builtins' memset,
//! memcpy and memmove as byte-at-a-time loops, reached by a bpf-to-bpf
//! call: before vfio-zp-ebpf/build.rs every record and every parked call
//! cleared its zero fields one byte an instruction, and the verifier
//! walked each loop (194 call sites, 531 012 instructions walked on 6.18).
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};
use vfio_zp::probes::programs;

const BUILTINS: [&str; 5] = ["memset", "memcpy", "memmove", "memcmp", "bcmp"];

#[test]
fn no_program_calls_a_memory_builtin() {
    assert!(
        !programs::OBJECT.is_empty(),
        "built with AYA_BUILD_SKIP: no eBPF object to read"
    );
    let obj = object::File::parse(programs::OBJECT).expect("the embedded object parses as ELF");
    let mut programs_seen = 0;
    let mut map_refs = 0;
    let mut calls = Vec::new();
    for section in obj.sections().filter(|s| s.kind() == SectionKind::Text) {
        let name = section.name().unwrap_or("?").to_string();
        if name == ".text" {
            continue; // the builtins themselves, exported but unused
        }
        programs_seen += 1;
        for (offset, rel) in section.relocations() {
            let RelocationTarget::Symbol(i) = rel.target() else {
                continue;
            };
            let Ok(target) = obj.symbol_by_index(i).and_then(|s| s.name()) else {
                continue;
            };
            if BUILTINS.contains(&target) {
                calls.push(format!("{name}+{offset:#x} calls {target}"));
            } else if target.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                map_refs += 1;
            }
        }
    }
    // The reading works: the program sections name their maps (EVENTS,
    // SLOTS, ...) through the same relocations.
    assert!(programs_seen >= 2, "kprobe and kretprobe sections");
    assert!(map_refs > 20, "only {map_refs} map references read");
    assert!(
        calls.is_empty(),
        "{} calls to byte-loop builtins, e.g. {:?}",
        calls.len(),
        &calls[..calls.len().min(5)]
    );
}
