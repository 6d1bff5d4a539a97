//! Any text as /proc/kallsyms (and as tracefs kprobe_events / kprobe_profile,
//! the other kernel text the agent parses): parsed without panicking, and
//! every symbol kept is one the text really names.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vfio_zp::probes::{kallsyms, retprobe};

fuzz_target!(|text: &str| {
    let k = kallsyms::Kallsyms::parse(text, |_| true);
    for line in text.lines() {
        if let Some(s) = kallsyms::parse_line(line) {
            assert!(!s.name.is_empty() && line.contains(&s.name));
            assert!(k.get(&s.name).is_some());
        }
    }
    for e in retprobe::parse_events(text) {
        assert!(text.contains(&format!("{}/{e}", retprobe::GROUP)));
        let _ = retprobe::event_pid(&e);
    }
    let _ = retprobe::parse_profile(text);
});
