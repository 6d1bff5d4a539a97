//! Output files that never destroy what was there. A file is written under
//! a temporary name beside its target (created exclusively and 0600, so
//! never through a symlink and never readable by others: recordings hold
//! process names, pids, cgroup paths and user addresses), and renamed onto
//! the target only once it holds what it should. A start that fails leaves
//! every existing file as it was; an existing target, a symlink included,
//! is kept unless forced, and then replaced in one rename.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use crate::error::Fatal;

fn fail(target: &Path, reason: impl std::fmt::Display) -> Fatal {
    Fatal::Output {
        path: target.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Fails unless `target` is free to write (absent, or `force`): for a file
/// written only at the end, so a run never ends unable to save its work.
pub fn check_free(target: &Path, force: bool) -> Result<(), Fatal> {
    match std::fs::symlink_metadata(target) {
        Ok(_) if !force => Err(fail(target, "it exists (--force replaces it)")),
        Ok(m) if m.is_dir() => Err(fail(target, "it is a directory")),
        _ => Ok(()),
    }
}

/// A file being written under its temporary name.
pub struct Pending {
    tmp: tempfile::NamedTempFile,
    target: PathBuf,
    force: bool,
}

impl Pending {
    pub fn new(target: &Path, force: bool) -> Result<Pending, Fatal> {
        check_free(target, force)?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| fail(target, "not a file name"))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".part")
            .tempfile_in(dir)
            .map_err(|e| fail(target, e))?;
        Ok(Pending {
            tmp,
            target: target.into(),
            force,
        })
    }

    /// A second handle on the file, for a writer that goes on after
    /// [`Pending::commit`] (a rename leaves open files as they are).
    pub fn handle(&self) -> Result<File, Fatal> {
        self.tmp
            .as_file()
            .try_clone()
            .map_err(|e| fail(&self.target, e))
    }

    /// Puts the file in place: over the target when forced, else only if
    /// nothing appeared there meanwhile.
    pub fn commit(self) -> Result<(), Fatal> {
        let target = self.target;
        let kept = if self.force {
            self.tmp.persist(&target)
        } else {
            self.tmp.persist_noclobber(&target)
        };
        kept.map(drop).map_err(|e| fail(&target, e.error))
    }
}

/// Writes `bytes` to `target` as one step: all of it, or nothing changed.
pub fn write(target: &Path, force: bool, bytes: &[u8]) -> Result<(), Fatal> {
    use std::io::Write;
    let p = Pending::new(target, force)?;
    p.tmp
        .as_file()
        .write_all(bytes)
        .and_then(|_| p.tmp.as_file().sync_all())
        .map_err(|e| fail(target, e))?;
    p.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn an_existing_file_is_kept_unless_forced() {
        let d = dir();
        let f = d.path().join("rec.jsonl");
        std::fs::write(&f, "old").unwrap();
        let e = write(&f, false, b"new").unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "old");
        write(&f, true, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "new");
    }

    #[test]
    fn a_pending_file_dropped_leaves_the_old_one_and_no_trace() {
        let d = dir();
        let f = d.path().join("rec.jsonl");
        std::fs::write(&f, "old").unwrap();
        let p = Pending::new(&f, true).unwrap();
        use std::io::Write;
        p.handle().unwrap().write_all(b"half").unwrap();
        drop(p);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "old");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_symlink_is_replaced_never_followed() {
        let d = dir();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = d.path().join("out.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(write(&link, false, b"x").is_err());
        write(&link, true, b"x").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }

    #[test]
    fn new_files_are_private() {
        let d = dir();
        let f = d.path().join("v.json");
        write(&f, false, b"{}").unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn writes_after_commit_land_in_the_target() {
        use std::io::Write;
        let d = dir();
        let f = d.path().join("rec.jsonl");
        let p = Pending::new(&f, false).unwrap();
        let mut h = p.handle().unwrap();
        h.write_all(b"header\n").unwrap();
        p.commit().unwrap();
        h.write_all(b"line\n").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "header\nline\n");
    }
}
