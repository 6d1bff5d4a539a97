//! `vfio-zp replay`: a recording through the model, its verdicts printed.
use std::io::Write;

use crate::error::Fatal;
use crate::model::{Config, Model};
use crate::stream::stream_path;

pub fn run(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let bad = |e: crate::stream::ReadError| Fatal::Input(e.to_string());
    let verdicts = if file.as_os_str() == "-" {
        let s = crate::stream::Stream::new(std::io::stdin().lock(), "<stdin>").map_err(bad)?;
        run_model(s, "<stdin>")?
    } else {
        run_model(stream_path(file).map_err(bad)?, &file.display().to_string())?
    };
    // Written straight to stdout: with thousands of containers the text
    // would double the peak memory.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &verdicts)
            .map_err(std::io::Error::from)
            .and_then(|_| out.write_all(b"\n"))
    } else {
        write!(out, "{verdicts}")
    };
    crate::stdout::written(written.and_then(|_| out.flush()))?;
    Ok(())
}

/// The verdicts of a whole stream, as `replay` prints them.
pub fn run_model<R: std::io::BufRead>(
    mut s: crate::stream::Stream<R>,
    name: &str,
) -> anyhow::Result<crate::model::verdict::Verdicts> {
    let mut m = Model::new(&s.header, Config::default());
    for line in s.by_ref() {
        m.apply(&line.map_err(|e| Fatal::Input(e.to_string()))?);
        m.take_notes();
    }
    if let Some(n) = s.cut_at() {
        eprintln!(
            "vfio-zp: warning: {name}:{n}: the last line is cut short (the recorder stopped mid-write); these are the verdicts of the lines before it"
        );
    }
    Ok(m.verdicts())
}
