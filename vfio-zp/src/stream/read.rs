//! Reading recordings back, with errors that name the line and the reason.
use std::io::BufRead;

use super::line::{FORMAT, Header, Line, VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: empty file, not a vfio-zp recording")]
    Empty { path: String },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// A whole recording in memory.
#[derive(Clone, Debug)]
pub struct Recording {
    pub header: Header,
    pub lines: Vec<Line>,
}

pub fn read_path(path: &std::path::Path) -> Result<Recording, ReadError> {
    let mut s = stream_path(path)?;
    let lines = s.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok(Recording {
        header: s.header,
        lines,
    })
}

pub fn read(r: impl BufRead, path: &str) -> Result<Recording, ReadError> {
    let mut s = Stream::new(r, path)?;
    let lines = s.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok(Recording {
        header: s.header,
        lines,
    })
}

/// Opens a recording for streaming: the header now, the lines one by one.
pub fn stream_path(
    path: &std::path::Path,
) -> Result<Stream<std::io::BufReader<std::fs::File>>, ReadError> {
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: p.clone(),
        source,
    })?;
    Stream::new(std::io::BufReader::new(f), &p)
}

/// The longest line read: a header with every probe is a few KiB, so a
/// line past this is not a recording's, and reading stops before memory
/// grows with it (`replay /dev/zero`).
pub const MAX_LINE: usize = 1 << 20;

/// How far a line's time may lie before the latest seen: events reach the
/// ring buffer from several CPUs and a counters line is stamped between
/// drains, so a recording steps back by up to one drain's span (500 ms);
/// anything further is a corrupt or spliced file.
pub const MAX_STEP_BACK_NS: u64 = 2_000_000_000;

/// One line of at most [`MAX_LINE`] bytes into `buf`: its length (0 at
/// the end), or why it cannot be read.
fn bounded_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<usize, String> {
    use std::io::Read;
    buf.clear();
    let n = r
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(|e| format!("unreadable: {e}"))?;
    if n > MAX_LINE {
        return Err(format!(
            "line longer than {} KiB: not a vfio-zp recording",
            MAX_LINE >> 10
        ));
    }
    Ok(n)
}

/// The lines after the header; stops at the first error, or before a last
/// line cut short (see [`Stream::cut_at`]).
pub struct Stream<R> {
    pub header: Header,
    reader: R,
    path: String,
    line: usize,
    buf: Vec<u8>,
    failed: bool,
    latest_ns: u64,
    cut_at: Option<usize>,
}

impl<R: BufRead> Stream<R> {
    pub fn new(mut reader: R, path: &str) -> Result<Stream<R>, ReadError> {
        let mut buf = Vec::new();
        let mut line = 0;
        let err = |line, reason| ReadError::Line {
            path: path.into(),
            line,
            reason,
        };
        let text = loop {
            line += 1;
            let n = bounded_line(&mut reader, &mut buf).map_err(|r| err(line, r))?;
            if n == 0 {
                return Err(ReadError::Empty { path: path.into() });
            }
            let text = std::str::from_utf8(&buf).map_err(|e| err(line, e.to_string()))?;
            if !text.trim().is_empty() {
                break text;
            }
        };
        let header = parse_header(text.trim_end()).map_err(|reason| err(line, reason))?;
        Ok(Stream {
            header,
            reader,
            path: path.into(),
            line,
            buf,
            failed: false,
            latest_ns: 0,
            cut_at: None,
        })
    }

    /// The line number of a last line cut short (no newline, not a whole
    /// record: the writer stopped mid-line), once the lines before it
    /// were read. A recording cut by a crash still holds everything
    /// before the cut.
    pub fn cut_at(&self) -> Option<usize> {
        self.cut_at
    }

    fn parse(&mut self) -> Result<Option<Line>, String> {
        let text = std::str::from_utf8(&self.buf).map_err(|e| e.to_string())?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        let whole = text.ends_with('\n');
        let line = match serde_json::from_str::<Line>(text) {
            Ok(Line::Header(_)) => return Err("a second header".into()),
            Ok(l) => l,
            Err(_) if !whole => {
                self.cut_at = Some(self.line);
                return Ok(None);
            }
            Err(e) => return Err(e.to_string()),
        };
        let t = match &line {
            Line::Event(e) => Some(e.t_ns),
            Line::Counters(c) => Some(c.t_ns),
            _ => None,
        };
        if let Some(t) = t {
            if t.saturating_add(MAX_STEP_BACK_NS) < self.latest_ns {
                return Err(format!(
                    "time goes backwards: t_ns {t} comes after {} (a corrupt or spliced recording)",
                    self.latest_ns
                ));
            }
            self.latest_ns = self.latest_ns.max(t);
        }
        Ok(Some(line))
    }
}

impl<R: BufRead> Iterator for Stream<R> {
    type Item = Result<Line, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && self.cut_at.is_none() {
            self.line += 1;
            let r = match bounded_line(&mut self.reader, &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => match self.parse() {
                    Ok(None) => continue,
                    Ok(Some(l)) => Ok(l),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            self.failed = r.is_err();
            return Some(r.map_err(|reason| ReadError::Line {
                path: self.path.clone(),
                line: self.line,
                reason,
            }));
        }
        None
    }
}

/// The header is read loosely first so a newer version gets a clear error
/// instead of a field-by-field complaint.
fn parse_header(text: &str) -> Result<Header, String> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("not JSON ({e}); not a vfio-zp recording"))?;
    if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(format!("first line is not a {FORMAT} header"));
    }
    match v.get("version").and_then(|x| x.as_u64()) {
        Some(ver) if ver > VERSION as u64 => {
            return Err(format!(
                "recording format version {ver} is newer than this vfio-zp reads ({VERSION}); upgrade vfio-zp"
            ));
        }
        Some(_) => {}
        None => return Err("header has no version".into()),
    }
    match serde_json::from_value::<Line>(v) {
        Ok(Line::Header(h)) => Ok(h),
        Ok(_) => Err("first line is not a header".into()),
        Err(e) => Err(format!("bad header: {e}")),
    }
}
