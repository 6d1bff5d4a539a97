//! Reading recordings back, with errors that name the line and the reason.
use std::io::BufRead;

use super::format::{FORMAT, Header, Line, VERSION};

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

/// The lines after the header; stops at the first error.
pub struct Stream<R> {
    pub header: Header,
    reader: R,
    path: String,
    line: usize,
    buf: String,
    failed: bool,
}

impl<R: BufRead> Stream<R> {
    pub fn new(mut reader: R, path: &str) -> Result<Stream<R>, ReadError> {
        let mut buf = String::new();
        let mut line = 0;
        loop {
            buf.clear();
            line += 1;
            let n = reader.read_line(&mut buf).map_err(|e| ReadError::Line {
                path: path.into(),
                line,
                reason: format!("unreadable: {e}"),
            })?;
            if n == 0 {
                return Err(ReadError::Empty { path: path.into() });
            }
            if !buf.trim().is_empty() {
                break;
            }
        }
        let header = parse_header(buf.trim_end()).map_err(|reason| ReadError::Line {
            path: path.into(),
            line,
            reason,
        })?;
        Ok(Stream {
            header,
            reader,
            path: path.into(),
            line,
            buf,
            failed: false,
        })
    }
}

impl<R: BufRead> Iterator for Stream<R> {
    type Item = Result<Line, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed {
            self.buf.clear();
            self.line += 1;
            let err = |reason: String| ReadError::Line {
                path: self.path.clone(),
                line: self.line,
                reason,
            };
            let r = match self.reader.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) if self.buf.trim().is_empty() => continue,
                Ok(_) if !self.buf.ends_with('\n') => Err(err(
                    "truncated: the last line has no end (recording cut short?)".into(),
                )),
                Ok(_) => match serde_json::from_str::<Line>(&self.buf) {
                    Ok(Line::Header(_)) => Err(err("a second header".into())),
                    Ok(l) => Ok(l),
                    Err(e) => Err(err(e.to_string())),
                },
                Err(e) => Err(err(format!("unreadable: {e}"))),
            };
            self.failed = r.is_err();
            return Some(r);
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
