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
    let p = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: p.clone(),
        source,
    })?;
    read(std::io::BufReader::new(f), &p)
}

pub fn read(r: impl BufRead, path: &str) -> Result<Recording, ReadError> {
    let mut header = None;
    let mut lines = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let n = i + 1;
        let err = |reason: String| ReadError::Line {
            path: path.into(),
            line: n,
            reason,
        };
        let text = line.map_err(|e| err(format!("unreadable: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        if header.is_none() {
            header = Some(parse_header(&text).map_err(err)?);
            continue;
        }
        let parsed: Line = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if matches!(parsed, Line::Header(_)) {
            return Err(err("a second header".into()));
        }
        lines.push(parsed);
    }
    let header = header.ok_or_else(|| ReadError::Empty { path: path.into() })?;
    Ok(Recording { header, lines })
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
