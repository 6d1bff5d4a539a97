//! Standard output, whose write errors are errors: `vfio-zp replay > /dev/full`
//! must not exit 0 having written nothing.
use std::io::Write;
use std::process::ExitCode;

use crate::error::{Fatal, report};

/// Standard output may be a closed pipe (`| head`): the reader's choice,
/// not an error. Any other write error (a full disk, /dev/full) is one:
/// nothing written must not look like success.
pub fn written(r: std::io::Result<()>) -> Result<(), Fatal> {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Fatal::Output {
            path: "standard output".into(),
            reason: e.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `code` once the output was written, else the write error's.
pub fn exit_after(printed: Result<(), Fatal>, code: ExitCode) -> ExitCode {
    match printed {
        Ok(()) => code,
        Err(e) => report(&e.into()),
    }
}

pub fn print(text: &str) -> Result<(), Fatal> {
    let mut out = std::io::stdout().lock();
    written(out.write_all(text.as_bytes()).and_then(|_| out.flush()))
}
