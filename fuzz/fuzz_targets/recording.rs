//! Any bytes as a recording: the reader returns lines or a FILE:LINE error,
//! and whatever it accepts the model replays, without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vfio_zp::model::{Config, Model};
use vfio_zp::stream::Stream;

fuzz_target!(|data: &[u8]| {
    let Ok(mut s) = Stream::new(data, "fuzz") else {
        return;
    };
    let mut m = Model::new(&s.header, Config::default());
    for line in s.by_ref() {
        match line {
            Ok(l) => m.apply(&l),
            Err(e) => {
                assert!(e.to_string().starts_with("fuzz:"));
                break;
            }
        }
    }
    let v = m.verdicts();
    let _ = v.to_string();
});
