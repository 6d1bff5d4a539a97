//! The agent's memory across restarts, in its state directory (by default
//! /run/vfio-zp: per boot, like the pinned maps and the zero page's
//! refcount it explains).
//!
//! `checkpoint.json` holds the model and the decoder's id maps as of a
//! journal generation; `journal-<generation>.jsonl` every line the agent
//! applied after it, written before the ring-buffer record behind it is
//! released. The journal is a shared file mapping: a line is in the page
//! cache (safe from kill -9) once copied in, without a write per event.
//! A restart (SIGTERM or kill -9) loads the checkpoint and replays the
//! journal, then goes on reading the pinned ring buffer, so nothing is
//! counted twice and nothing already read is lost. The journal is folded
//! into a new checkpoint once it grows past a bound.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use memmap2::MmapMut;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::model::Model;
use crate::source::Decoder;
use crate::stream::Line;

const CHECKPOINT: &str = "checkpoint.json";
/// Bumped when the checkpoint's shape changes.
const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    build: String,
    boot_id: String,
    generation: u64,
    model: Model,
    decoder: Decoder,
}

/// A journal file mapped shared: appending is a copy, and a copied line is
/// in the page cache, so it outlives the process however it ends.
struct Journal {
    file: File,
    map: MmapMut,
    len: usize,
}

impl Journal {
    const FIRST: u64 = 1 << 20;

    fn create(path: &Path) -> std::io::Result<Journal> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(Self::FIRST)?;
        let map = Self::map(&file)?;
        Ok(Journal { file, map, len: 0 })
    }

    fn map(file: &File) -> std::io::Result<MmapMut> {
        // SAFETY: the file is ours, in a root-only directory, and only this
        // process writes it while mapped; nothing truncates it under us.
        unsafe { MmapMut::map_mut(file) }
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let end = self.len + bytes.len();
        if end > self.map.len() {
            let size = (self.map.len() * 2).max(end);
            self.file.set_len(size as u64)?;
            self.map = Self::map(&self.file)?;
        }
        self.map[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

/// What a restart found.
pub struct Restored {
    pub model: Model,
    pub decoder: Decoder,
    /// Journal lines replayed on top of the checkpoint.
    pub replayed: u64,
    /// The last event or counters time the previous agent saw.
    pub last_t_ns: u64,
}

pub struct State {
    dir: PathBuf,
    build: String,
    boot_id: String,
    generation: u64,
    journal: Option<Journal>,
    journal_bytes: u64,
    max_journal_bytes: u64,
    buf: Vec<u8>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

impl State {
    /// Opens (creating) `dir` and restores what an earlier agent of this
    /// build, in this boot, left there, unless `fresh`. State from another
    /// build or boot is discarded with a warning.
    pub fn open(
        dir: &Path,
        build: &str,
        boot_id: &str,
        fresh: bool,
        max_journal_bytes: u64,
    ) -> Result<(State, Option<Restored>), String> {
        private_dir(dir)?;
        let mut state = State {
            dir: dir.to_path_buf(),
            build: build.into(),
            boot_id: boot_id.into(),
            generation: 0,
            journal: None,
            journal_bytes: 0,
            max_journal_bytes,
            buf: Vec::new(),
        };
        let restored = if fresh {
            info!("--fresh: starting without the kept state");
            None
        } else {
            state.restore()
        };
        Ok((state, restored))
    }

    fn journal_path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("journal-{generation}.jsonl"))
    }

    fn restore(&mut self) -> Option<Restored> {
        let path = self.dir.join(CHECKPOINT);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!("{}: {e}; starting afresh", path.display());
                return None;
            }
        };
        let cp: Checkpoint = match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(e) => {
                warn!("{}: unreadable ({e}); starting afresh", path.display());
                return None;
            }
        };
        if cp.version != STATE_VERSION || cp.build != self.build {
            warn!(
                "kept state is from another vfio-zp build ({}, this is {}): starting afresh",
                cp.build, self.build
            );
            return None;
        }
        if cp.boot_id != self.boot_id {
            info!("kept state is from an earlier boot: starting afresh");
            return None;
        }
        self.generation = cp.generation;
        let (mut model, decoder) = (cp.model, cp.decoder);
        let mut decoder = decoder.resume();
        let journal = self.journal_path(cp.generation);
        let mut replayed = 0;
        if let Ok(bytes) = std::fs::read(&journal) {
            // The mapped file is zero-filled past the last line written.
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            for text in bytes[..end]
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                match serde_json::from_slice::<Line>(text) {
                    Ok(Line::Ids(steps)) => decoder.replay(&steps.ops),
                    Ok(line) => model.apply(&line),
                    // A line cut by a kill: its record is still in the ring.
                    Err(e) => {
                        warn!(
                            "{} line {}: {e}; ignoring the rest",
                            journal.display(),
                            replayed + 1
                        );
                        break;
                    }
                }
                replayed += 1;
            }
        }
        model.take_notes();
        let last_t_ns = model.now();
        info!(
            "restored the model of an earlier agent: checkpoint {} + {replayed} journal lines",
            cp.generation
        );
        Some(Restored {
            model,
            decoder,
            replayed,
            last_t_ns,
        })
    }

    /// Writes a checkpoint of `model` and `decoder` and starts a new
    /// journal; the old journal goes only once the checkpoint is in place.
    pub fn checkpoint(&mut self, model: &Model, decoder: &Decoder) -> Result<(), String> {
        // The model and decoder are moved into a borrowed view for writing.
        #[derive(Serialize)]
        struct View<'a> {
            version: u32,
            build: &'a str,
            boot_id: &'a str,
            generation: u64,
            model: &'a Model,
            decoder: &'a Decoder,
        }
        let next = self.generation + 1;
        let path = self.dir.join(CHECKPOINT);
        let tmp = self.dir.join("checkpoint.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(File::create(&tmp)?);
            serde_json::to_writer(
                &mut f,
                &View {
                    version: STATE_VERSION,
                    build: &self.build,
                    boot_id: &self.boot_id,
                    generation: next,
                    model,
                    decoder,
                },
            )?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| io(&path, e))?;
        let old = self.journal_path(self.generation);
        self.generation = next;
        self.journal = None;
        self.journal_bytes = 0;
        let _ = std::fs::remove_file(old);
        // Journals of older generations a crash may have left behind.
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("journal-") && e.path() != self.journal_path(next) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Appends one line: it must be in the file before the record behind
    /// it leaves the ring buffer.
    pub fn append(&mut self, line: &Line) -> Result<(), String> {
        let path = self.journal_path(self.generation);
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, line).map_err(|e| io(&path, e))?;
        self.buf.push(b'\n');
        if self.journal.is_none() {
            self.journal = Some(Journal::create(&path).map_err(|e| io(&path, e))?);
        }
        if let Some(j) = &mut self.journal {
            j.append(&self.buf).map_err(|e| io(&path, e))?;
        }
        self.journal_bytes += self.buf.len() as u64;
        Ok(())
    }

    /// Whether the journal has grown enough to fold into a checkpoint.
    pub fn due(&self) -> bool {
        self.journal_bytes >= self.max_journal_bytes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Makes `dir` root's alone (it describes every VM on the host) when the
/// agent creates it; a directory that exists keeps its mode, but one that
/// others can write (where they could plant a checkpoint) is refused.
fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => Err(format!("{}: not a directory", dir.display())),
        Ok(m) if m.permissions().mode() & 0o022 != 0 => Err(format!(
            "{}: others can write it (mode {:o}); choose a directory only root writes",
            dir.display(),
            m.permissions().mode() & 0o7777
        )),
        Ok(_) => Ok(()),
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Config;
    use crate::stream::Header;

    fn header() -> Header {
        serde_json::from_str(
            r#"{"format":"vfio-zp-recording","version":2,"agent_version":"t","kernel_release":"6.1.0","zero_pfn":0,"struct_page_size":64,"refcount_offset":52,"started_unix_ms":0,"started_t_ns":5,"probes":[]}"#,
        )
        .unwrap()
    }

    fn counters(t_ns: u64) -> Line {
        Line::Counters(crate::stream::Counters {
            t_ns,
            ..Default::default()
        })
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vfio-zp-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn checkpoint_and_journal_restore_the_model_and_a_cut_line_is_ignored() {
        let dir = tmp("restore");
        let (mut s, r) = State::open(&dir, "b1", "boot", false, 1 << 20).unwrap();
        assert!(r.is_none());
        let mut m = Model::new(&header(), Config::default());
        s.checkpoint(&m, &Decoder::journaled(7)).unwrap();
        for t in [10, 20] {
            let l = counters(t);
            s.append(&l).unwrap();
            m.apply(&l);
        }
        // A kill in the middle of a copy: part of a line after the last one.
        let path = dir.join("journal-1.jsonl");
        let bytes = std::fs::read(&path).unwrap();
        let end = bytes.iter().position(|b| *b == 0).unwrap();
        use std::os::unix::fs::FileExt;
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(br#"{"record":"counters","t_"#, end as u64)
            .unwrap();
        let (_, r) = State::open(&dir, "b1", "boot", false, 1 << 20).unwrap();
        let r = r.unwrap();
        assert_eq!((r.replayed, r.last_t_ns), (2, 20));
        assert_eq!(r.model.verdicts(), m.verdicts());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_mapped_journal_grows_and_a_killed_agent_leaves_every_line() {
        let dir = tmp("grow");
        let (mut s, _) = State::open(&dir, "b", "boot", false, u64::MAX).unwrap();
        let mut m = Model::new(&header(), Config::default());
        s.checkpoint(&m, &Decoder::default()).unwrap();
        // Past the first mapping (1 MiB) twice over.
        let mut t = 0;
        while s.journal_bytes < 3 * Journal::FIRST {
            t += 1;
            s.append(&counters(t)).unwrap();
            m.apply(&counters(t));
        }
        // No drop, no flush: as after kill -9.
        std::mem::forget(s);
        let r = State::open(&dir, "b", "boot", false, u64::MAX)
            .unwrap()
            .1
            .unwrap();
        assert_eq!((r.replayed, r.last_t_ns), (t, t));
        assert_eq!(r.model.verdicts(), m.verdicts());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_build_or_boot_or_fresh_starts_afresh() {
        let dir = tmp("stale");
        let (mut s, _) = State::open(&dir, "b1", "boot", false, 1 << 20).unwrap();
        s.checkpoint(
            &Model::new(&header(), Config::default()),
            &Decoder::default(),
        )
        .unwrap();
        let restores = |build, boot, fresh| {
            State::open(&dir, build, boot, fresh, 1)
                .unwrap()
                .1
                .is_some()
        };
        assert!(!restores("b2", "boot", false));
        assert!(!restores("b1", "boot2", false));
        assert!(!restores("b1", "boot", true));
        assert!(restores("b1", "boot", false));
        std::fs::write(dir.join(CHECKPOINT), "{not json").unwrap();
        assert!(!restores("b1", "boot", false));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_checkpoint_folds_the_journal_away() {
        let dir = tmp("fold");
        let (mut s, _) = State::open(&dir, "b", "boot", false, 100).unwrap();
        let mut m = Model::new(&header(), Config::default());
        s.checkpoint(&m, &Decoder::default()).unwrap();
        let mut t = 100;
        while !s.due() {
            t += 1;
            s.append(&counters(t)).unwrap();
            m.apply(&counters(t));
        }
        s.checkpoint(&m, &Decoder::default()).unwrap();
        assert!(!dir.join("journal-1.jsonl").exists());
        s.append(&counters(t + 1)).unwrap();
        m.apply(&counters(t + 1));
        let r = State::open(&dir, "b", "boot", false, 100)
            .unwrap()
            .1
            .unwrap();
        assert_eq!((r.replayed, r.last_t_ns), (1, t + 1));
        assert_eq!(r.model.verdicts(), m.verdicts());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 16: the mode is set only on a directory the agent creates;
    /// one others can write is refused, and left as it was.
    #[test]
    fn the_state_dir_is_private_only_when_created_here() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let base = tmp("modes");
        std::fs::create_dir_all(&base).unwrap();
        let made = base.join("new/state");
        State::open(&made, "b", "boot", false, 1 << 20).unwrap();
        assert_eq!(mode(&made), 0o700);
        let shared = base.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        State::open(&shared, "b", "boot", false, 1 << 20).unwrap();
        assert_eq!(mode(&shared), 0o755, "an existing directory keeps its mode");
        let open = base.join("tmp-like");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = State::open(&open, "b", "boot", false, 1 << 20)
            .err()
            .unwrap();
        assert!(e.contains("others can write it (mode 1777)"), "{e}");
        assert_eq!(mode(&open), 0o1777);
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&base);
    }
}
