//! Any cgroup path names to something non-empty, without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    assert!(!vfio_zp::model::workload::classify(path).name().is_empty());
});
