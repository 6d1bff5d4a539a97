//! Writing recordings. Lines are flushed in batches: at every line that
//! closes one (the header, a probes change, a counters line, which the
//! agent writes at least every 500 ms while events arrive). A flush per
//! line cost a write(2) per event: on a slow disk or a network file system
//! that made the agent the bottleneck, minutes behind a VM start. A crash
//! loses at most the lines since the last counters line; the recording
//! stays whole lines up to there (see `Stream::cut_at`).
use std::io::Write;

use super::line::Line;

pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out }
    }

    pub fn write(&mut self, line: &Line) -> std::io::Result<()> {
        if let Line::Ids(_) = line {
            return Ok(());
        }
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")?;
        if matches!(line, Line::Header(_) | Line::Probes(_) | Line::Counters(_)) {
            self.out.flush()?;
        }
        Ok(())
    }

    /// Flushes what is buffered: for a writer ended other than by a
    /// counters line.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}
