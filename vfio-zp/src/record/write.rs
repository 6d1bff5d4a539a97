//! Writing recordings: every line is flushed as written, so a recording cut
//! short by a crash or power loss still holds everything up to that point.
use std::io::Write;

use super::format::Line;

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
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}
