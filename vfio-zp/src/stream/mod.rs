//! The pipeline's bus: [`Line`]s (a header, events, id steps, counters,
//! probe changes), the same live and in a recording, where they are
//! versioned JSON lines (docs/recording.md).
pub mod event;
pub mod line;
pub mod read;
pub mod write;

pub use line::{Counters, Header, IdOp, Line, ProbeState, ProbeStatus, Totals};
pub use read::{ReadError, Recording, Stream, read, read_path, stream_path};
pub use write::Writer;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::event::{Event, PageClass, What};

    fn header() -> Header {
        Header {
            format: line::FORMAT.into(),
            version: line::VERSION,
            agent_version: "0.1.0".into(),
            kernel_release: "6.1.0-test".into(),
            kernel_version: None,
            zero_pfn: 0x2a0b,
            struct_page_size: 64,
            refcount_offset: 52,
            started_unix_ms: 1,
            started_t_ns: 2,
            probes: vec![ProbeStatus {
                probe: "type1_pin".into(),
                function: "vfio_pin_pages_remote".into(),
                symbol: Some("vfio_pin_pages_remote".into()),
                state: ProbeState::Attached,
                detail: None,
                loses: "x".into(),
            }],
        }
    }

    fn event() -> Event {
        Event {
            t_ns: 5,
            tgid: 1,
            pid: 1,
            comm: "q".into(),
            cgroup_id: 9,
            container: Some(1),
            zero_refcount: None,
            what: What::Type1Pin {
                dma: 1,
                vaddr: 4096,
                npage: 1,
                pinned: 1,
                base: PageClass::Zero,
                huge_zero_pages: 0,
            },
        }
    }

    fn written(lines: &[Line]) -> String {
        let mut w = Writer::new(Vec::new());
        for l in lines {
            w.write(l).unwrap();
        }
        String::from_utf8(w.into_inner()).unwrap()
    }

    #[test]
    fn round_trip() {
        let lines = [
            Line::Header(header()),
            Line::Event(event()),
            Line::Counters(Counters::default()),
        ];
        let text = written(&lines);
        let rec = read(text.as_bytes(), "t").unwrap();
        assert_eq!(rec.header, header());
        assert_eq!(rec.lines, lines[1..]);
    }

    /// What reached the file, as the file sees it.
    #[derive(Default)]
    struct File {
        buffered: Vec<u8>,
        flushed: Vec<u8>,
    }

    impl std::io::Write for File {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.buffered.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.flushed.append(&mut self.buffered);
            Ok(())
        }
    }

    #[test]
    fn events_reach_the_file_in_batches_closed_by_a_counters_line() {
        let mut w = Writer::new(File::default());
        w.write(&Line::Header(header())).unwrap();
        let header_len = w.into_inner().flushed.len();
        assert!(header_len > 0, "the header is on disk at once");
        let mut w = Writer::new(File::default());
        w.write(&Line::Header(header())).unwrap();
        for _ in 0..3 {
            w.write(&Line::Event(event())).unwrap();
        }
        let f = w.into_inner();
        assert_eq!(f.flushed.len(), header_len, "events wait for their batch");
        assert_eq!(f.buffered.iter().filter(|c| **c == b'\n').count(), 3);
        let mut w = Writer::new(f);
        w.write(&Line::Counters(Counters::default())).unwrap();
        let f = w.into_inner();
        assert!(f.buffered.is_empty());
        let rec = read(f.flushed.as_slice(), "t").unwrap();
        assert_eq!(rec.lines.len(), 4);
    }

    #[test]
    fn errors_name_the_line_and_reason() {
        let good = written(&[Line::Header(header()), Line::Event(event())]);
        let bad = format!("{good}{{\"record\":\"event\",\"t_ns\":1}}\n");
        let e = read(bad.as_bytes(), "rec.jsonl").unwrap_err().to_string();
        assert!(e.starts_with("rec.jsonl:3: "), "{e}");
        // Cut mid-line (a crash while writing): the lines before the cut
        // read, and the stream says where it was cut.
        let cut = &good[..good.len() - 10];
        let mut s = Stream::new(cut.as_bytes(), "r").unwrap();
        assert_eq!(s.by_ref().count(), 0);
        assert_eq!(s.cut_at(), Some(2));
        // A last line that is whole but for its newline is read.
        let r = read(good.trim_end().as_bytes(), "r").unwrap();
        assert_eq!(r.lines, [Line::Event(event())]);
        assert!(
            read("".as_bytes(), "r")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let e = read("hello\n".as_bytes(), "r").unwrap_err().to_string();
        assert!(e.contains("r:1: not JSON"), "{e}");
    }

    #[test]
    fn newer_versions_are_refused_clearly() {
        let mut h = serde_json::to_value(Line::Header(header())).unwrap();
        h["version"] = 99.into();
        h["new_field"] = 1.into();
        let e = read(format!("{h}\n").as_bytes(), "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 99 is newer"), "{e}");
    }
}
