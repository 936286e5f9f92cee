//! The `.env` sink: change the assignments of one key, and nothing else, byte for byte.
//!
//! The file is read by our own tolerant parser ([`parse`]), which accepts what docker compose
//! accepts as an `env_file` (v1 and v2): `KEY = value` with blanks around `=`, `export`, a bare
//! `KEY` (value from the shell), LF, CRLF and CR-only line endings, quoted values over several
//! lines, `\'` in single quotes. The edit is a pure function ([`set_key`]) checked afterwards
//! by parsing both versions: if any other key would read differently, nothing is written.
//! A line that does not parse is reported by its number only, never its text (an unclosed
//! quote swallows the lines after it, secrets included).
//!
//! Writes are atomic (temp file, fsync, rename, keeping mode and owner) or, with
//! `--write-mode in-place`, rewrite the same inode for a file bind-mounted into a container,
//! journalled in the record beside the `.env`'s lock so a run killed mid-write is finished or
//! undone by the next run that takes that lock, whichever configuration it runs. A file whose mode has no write bit is refused, not replaced.
//!
//! This module owns the sink type ([`EnvFileSink`]): which file is meant (symlinks, a missing
//! file, the dry run's checks), reading it, and driving an edit to a write, redone when someone
//! else changed the file meanwhile. The grammar is [`parse`]'s, the text edit [`edit`]'s, the
//! bytes on disk [`write`]'s and the crash journal [`journal`]'s. It must never write anything
//! but a proven edit, never write through a link to another user's file, and never put a value
//! into an error or a log: paths, line numbers and key names only.

mod edit;
mod journal;
mod parse;
mod place;
mod write;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::WriteOutcome;
pub use edit::{Error as EditError, checked_edit, set_key};
pub(crate) use journal::{pending_in_place, recover_in_place};
pub(crate) use parse::key_lines;
pub use parse::{ParseError, parse};
use place::Place;
use write::{Snapshot, WriteError, meta_key, parent_dir, temp_prefix};

/// Why the `.env` sink failed. Every message starts with the path of the file, and names line
/// numbers and keys only, never a value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The path could not be resolved safely (see [`place`]).
    #[error("{}: {source}", path.display())]
    Resolve { path: PathBuf, source: place::Error },
    /// A symlink to a file of another user than the owner of the link's directory.
    #[error(
        "{}: is a symlink to {}, owned by uid {target_uid}, but the link's directory is owned by uid {dir_uid}: audsync writes through a link only to a file of the directory's owner; point --env-file at the target itself, or chown it; nothing was written",
        path.display(),
        target.display()
    )]
    ForeignLink {
        path: PathBuf,
        target: PathBuf,
        target_uid: u32,
        dir_uid: u32,
    },
    /// The file does not exist and may not be created.
    #[error(
        "{}: does not exist{}; point --env-file (or the binding's env sink) at the stack's .env, or allow creating it with --create-env-file / AUDSYNC_CREATE_ENV_FILE (config file: create = true); nothing was written",
        path.display(),
        expected_in(project_dir.as_deref())
    )]
    Missing {
        path: PathBuf,
        /// The compose project directory of its containers, when known.
        project_dir: Option<PathBuf>,
    },
    #[error("{}: cannot stat: {source}", path.display())]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    /// The edit of one key was refused while observing.
    #[error("{}: {key}: {source}", path.display())]
    EditKey {
        path: PathBuf,
        key: String,
        source: edit::Error,
    },
    /// An edit was refused while writing.
    #[error("{}: {source}", path.display())]
    Edit { path: PathBuf, source: edit::Error },
    #[error("{}: does not parse as a .env file ({source}); fix it by hand", path.display())]
    Parse { path: PathBuf, source: ParseError },
    #[error("{}: the directory {} does not exist; nothing was written", path.display(), dir.display())]
    NoDirectory { path: PathBuf, dir: PathBuf },
    /// The file's mode has no write bit (`mode` is the permission bits).
    #[error(
        "{}: the file is read-only (mode {mode:o}); make it writable (chmod u+w) or stop syncing to it; nothing was written",
        path.display()
    )]
    ReadOnly { path: PathBuf, mode: u32 },
    #[error("{}: this user may not write the file; nothing was written", path.display())]
    NotWritable { path: PathBuf },
    #[error(
        "{}: cannot create a temporary file in {}: this user may not write there (use --write-mode in-place for a file in a directory you cannot write); nothing was written",
        path.display(),
        dir.display()
    )]
    DirNotWritable { path: PathBuf, dir: PathBuf },
    #[error("{}: {source}", path.display())]
    Write { path: PathBuf, source: write::Error },
    #[error(
        "{}: the file kept changing while audsync wrote it ({tries} tries); nothing was written, the next run tries again",
        path.display()
    )]
    KeptChanging { path: PathBuf, tries: usize },
}

fn expected_in(project_dir: Option<&Path>) -> String {
    match project_dir {
        Some(d) => format!(
            "; the compose project of its containers is in {} (label com.docker.compose.project.working_dir)",
            d.display()
        ),
        None => String::new(),
    }
}

/// How the new file reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// Temp file in the same directory, fsync, rename over the target. Never half-written.
    Atomic,
    /// Rewrite the same inode: for an `.env` bind-mounted into a container as a single file.
    InPlace,
}

/// The `.env` file sink: every key bound to this file, written in one write.
#[derive(Debug, Clone)]
pub(crate) struct EnvFileSink {
    pub(crate) path: PathBuf,
    pub(crate) mode: WriteMode,
    /// Create the file when it is missing (`create = true` / `--create-env-file`); without it a
    /// missing file is an error naming the directory the stack was expected in.
    pub(crate) create: bool,
    /// The record beside the `.env`'s lock (`lock::Record`) that journals its in-place writes
    /// (none: in-place writes are not journalled).
    pub(crate) journal: Option<PathBuf>,
    /// The compose project directory of the containers this file is for, when known.
    pub(crate) project_dir: Option<PathBuf>,
    /// A dry run: observe checks what the write would need (directory, write permission).
    pub(crate) dry_run: bool,
}

/// How often an edit is redone on content someone else changed meanwhile.
const EDIT_TRIES: usize = 3;

impl EnvFileSink {
    /// A sink with the defaults of old: atomic, created when missing, no journal.
    #[cfg(test)]
    pub(crate) fn new(path: PathBuf, mode: WriteMode) -> EnvFileSink {
        EnvFileSink {
            path,
            mode,
            create: true,
            journal: None,
            project_dir: None,
            dry_run: false,
        }
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The file to write, resolved once ([`place::resolve`]): the path itself, or a
    /// symlink's target under the rules of [`place`]. Every later step works relative to the
    /// directory descriptor it holds.
    fn place(&self) -> Result<Place, Error> {
        place::resolve(&self.path).map_err(|e| match e {
            place::Error::ForeignLink {
                target,
                target_uid,
                dir_uid,
            } => Error::ForeignLink {
                path: self.path(),
                target,
                target_uid,
                dir_uid,
            },
            place::Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound && !self.create =>
            {
                self.missing_error()
            }
            place::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::NoDirectory {
                    path: self.path(),
                    dir: parent_dir(&self.path).to_path_buf(),
                }
            }
            source => Error::Resolve {
                path: self.path(),
                source,
            },
        })
    }

    fn missing_error(&self) -> Error {
        Error::Missing {
            path: self.path(),
            project_dir: self.project_dir.clone(),
        }
    }

    /// What the file holds now, and the descriptor it was read through (kept: a write
    /// checks it again after replacing the file).
    fn read(&self, place: &Place) -> Result<(Snapshot, Option<fs::File>), Error> {
        match place.open(false) {
            Ok(f) => {
                let m = f.metadata().map_err(|source| Error::Stat {
                    path: self.path(),
                    source,
                })?;
                let bytes = read_at_start(&f).map_err(|source| Error::Read {
                    path: self.path(),
                    source,
                })?;
                let content =
                    String::from_utf8(bytes).map_err(|_| Error::NotUtf8 { path: self.path() })?;
                Ok((
                    Snapshot {
                        content: Some(content),
                        meta: Some(meta_key(&m)),
                    },
                    Some(f),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
                Snapshot {
                    content: None,
                    meta: None,
                },
                None,
            )),
            Err(source) => Err(Error::Read {
                path: self.path(),
                source,
            }),
        }
    }

    fn snapshot(&self, place: &Place) -> Result<Snapshot, Error> {
        self.read(place).map(|(s, _)| s)
    }

    /// Warn when the file written is not the `.env` of the compose project its containers
    /// came from (compose reads `<project dir>/.env`).
    fn warn_if_elsewhere(&self) {
        let Some(dir) = &self.project_dir else { return };
        let here = fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let there = fs::canonicalize(dir.join(".env")).unwrap_or_else(|_| dir.join(".env"));
        if here != there {
            tracing::warn!(
                env_file = %self.path.display(),
                project_dir = %dir.display(),
                "the .env written is not the one in the compose project directory of its containers; check that the stack reads this file (env_file:)"
            );
        }
    }

    /// What the file holds for each key of `desired`.
    pub(crate) fn observe_all(
        &self,
        desired: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, crate::reconcile::KeyObservation>, Error> {
        use crate::reconcile::KeyObservation;
        let place = self.place()?;
        let target = place.path.clone();
        let Some(content) = self.snapshot(&place)?.content else {
            if !self.create {
                return Err(self.missing_error());
            }
            if self.dry_run {
                self.preflight(&target, false)?;
            }
            return Ok(desired
                .keys()
                .map(|k| {
                    (
                        k.clone(),
                        KeyObservation {
                            current: None,
                            needs_write: true,
                            version: None,
                        },
                    )
                })
                .collect());
        };
        let mut parsed: Option<BTreeMap<String, String>> = None;
        let mut out = BTreeMap::new();
        for (key, value) in desired {
            let edited = set_key(&content, key, value).map_err(|source| Error::EditKey {
                path: self.path(),
                key: key.clone(),
                source,
            })?;
            if edited == content {
                // Every assignment already holds exactly `value`: no need to parse the file.
                out.insert(
                    key.clone(),
                    KeyObservation {
                        current: Some(value.clone()),
                        needs_write: false,
                        version: None,
                    },
                );
                continue;
            }
            if parsed.is_none() {
                parsed = Some(parse(&content).map_err(|source| Error::Parse {
                    path: self.path(),
                    source,
                })?);
            }
            let current = parsed.as_ref().and_then(|p| p.get(key).cloned());
            out.insert(
                key.clone(),
                KeyObservation {
                    current,
                    needs_write: true,
                    version: None,
                },
            );
        }
        if self.dry_run && out.values().any(|o| o.needs_write) {
            self.preflight(&target, true)?;
        }
        Ok(out)
    }

    /// A file whose mode has no write bit is refused, not replaced.
    fn read_only_check(&self, m: &fs::Metadata) -> Result<(), Error> {
        if m.permissions().mode() & 0o222 == 0 {
            return Err(Error::ReadOnly {
                path: self.path(),
                mode: m.permissions().mode() & 0o7777,
            });
        }
        Ok(())
    }

    /// What a write needs, checked without writing (a dry run fails as the real run would).
    fn preflight(&self, target: &Path, exists: bool) -> Result<(), Error> {
        use rustix::fs::{Access, access};
        let dir = parent_dir(target);
        if !dir.is_dir() {
            return Err(Error::NoDirectory {
                path: self.path(),
                dir: dir.to_path_buf(),
            });
        }
        if exists {
            let m = fs::metadata(target).map_err(|source| Error::Stat {
                path: self.path(),
                source,
            })?;
            self.read_only_check(&m)?;
            if access(target, Access::WRITE_OK).is_err() {
                return Err(Error::NotWritable { path: self.path() });
            }
        }
        let in_place = exists && self.mode == WriteMode::InPlace;
        if !in_place && access(dir, Access::WRITE_OK).is_err() {
            return Err(Error::DirNotWritable {
                path: self.path(),
                dir: dir.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Set every key of `desired`, each edit proven by re-parsing, in one write.
    pub(crate) fn write_all(
        &self,
        desired: &BTreeMap<String, String>,
    ) -> Result<WriteOutcome, Error> {
        self.write_all_between(desired, &mut || {})
    }

    /// [`Self::write_all`], calling `between` after the read and before the write (tests use it
    /// to edit the file in that window).
    pub(crate) fn write_all_between(
        &self,
        desired: &BTreeMap<String, String>,
        between: &mut dyn FnMut(),
    ) -> Result<WriteOutcome, Error> {
        let place = self.place()?;
        // After the atomic rename, someone's write to the file just replaced (an editor that
        // opened it before the rename): their content, and what is under the name now (ours).
        let mut carried: Option<(String, Snapshot, fs::File, Option<write::Watch>)> = None;
        let mut written = false;
        let (mut changed, mut redone) = (0, 0);
        loop {
            let (snap, file, base, mut watch) = match carried.take() {
                Some((theirs, snap, file, watch)) => (snap, Some(file), Some(theirs), watch),
                None => {
                    let (snap, file) = self.read(&place)?;
                    // Who opens the file read from now on (atomic mode: waited for after the
                    // rename, see write::Watch).
                    let watch = match (&file, self.mode) {
                        (Some(f), WriteMode::Atomic) => write::Watch::on(f),
                        _ => None,
                    };
                    let base = snap.content.clone();
                    (snap, file, base, watch)
                }
            };
            if base.is_none() && !self.create {
                return Err(self.missing_error());
            }
            let mut new = base.clone().unwrap_or_default();
            for (key, value) in desired {
                new = if base.is_some() {
                    checked_edit(&new, key, value)
                } else {
                    set_key(&new, key, value)
                }
                .map_err(|source| Error::Edit {
                    path: self.path(),
                    source,
                })?;
            }
            if snap.content.as_deref() == Some(new.as_str()) {
                return Ok(if written {
                    WriteOutcome::Written { version: None }
                } else {
                    WriteOutcome::Unchanged
                });
            }
            if let Some(f) = &file {
                let m = f.metadata().map_err(|source| Error::Stat {
                    path: self.path(),
                    source,
                })?;
                self.read_only_check(&m)?;
            }
            self.warn_if_elsewhere();
            between();
            let result = match (self.mode, &snap.content) {
                (WriteMode::InPlace, Some(old)) => write::write_in_place(
                    self.journal.as_deref(),
                    &place,
                    old,
                    &new,
                    desired,
                    &snap,
                    |p| self.snapshot(p),
                )
                .map(|()| None),
                _ => write::write_atomic(&place, new.as_bytes(), &snap, watch.as_mut(), |p| {
                    self.snapshot(p)
                })
                .map(Some),
            };
            match result {
                Ok(None) => return Ok(WriteOutcome::Written { version: None }),
                Ok(Some((ours, ours_watch))) => {
                    written = true;
                    // After the rename: did anyone write the file it replaced since it was
                    // read? Then their content gets the edit, and replaces ours.
                    let theirs = match (&file, &snap.content) {
                        (Some(f), Some(read)) => read_at_start(f)
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                            .filter(|now| now != read),
                        _ => None,
                    };
                    let Some(theirs) = theirs else {
                        return Ok(WriteOutcome::Written { version: None });
                    };
                    redone += 1;
                    if redone > EDIT_TRIES {
                        tracing::warn!(env_file = %self.path.display(), "the file replaced was written again and again after audsync's write; the last of those edits may be lost");
                        return Ok(WriteOutcome::Written { version: None });
                    }
                    tracing::info!(env_file = %self.path.display(), "the file was written by someone else right after audsync replaced it; redoing the edit on their content");
                    let meta = ours.metadata().map_err(|source| Error::Stat {
                        path: self.path(),
                        source,
                    })?;
                    carried = Some((
                        theirs,
                        Snapshot {
                            content: Some(new),
                            meta: Some(meta_key(&meta)),
                        },
                        ours,
                        ours_watch,
                    ));
                }
                Err(WriteError::Failed(source)) => {
                    return Err(Error::Write {
                        path: self.path(),
                        source,
                    });
                }
                Err(WriteError::Changed) => {
                    changed += 1;
                    if changed >= EDIT_TRIES {
                        if written {
                            tracing::warn!(env_file = %self.path.display(), "the file kept changing after audsync's write; an edit made to the file it replaced may be lost");
                            return Ok(WriteOutcome::Written { version: None });
                        }
                        return Err(Error::KeptChanging {
                            path: self.path(),
                            tries: EDIT_TRIES,
                        });
                    }
                    tracing::info!(env_file = %self.path.display(), attempt = changed, "the file changed while audsync was writing it; redoing the edit on the new content");
                }
            }
        }
    }

    /// Remove the temporary files an earlier, killed run left beside the file (atomic mode's
    /// `.audsync-<name>.*.tmp`, older versions' `.audsync-XXXXXX.tmp`, and an in-place safety
    /// copy no journal entry names). Under the lock, after [`recover_in_place`], so no other
    /// run is writing them. Returns the names removed.
    pub(crate) fn remove_leftovers(&self) -> Vec<String> {
        let Ok(place) = self.place() else {
            return vec![];
        };
        let mine = temp_prefix(&place.name);
        let regular = |n: &std::ffi::OsStr| {
            place.stat_in(n).ok().flatten().is_some_and(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            })
        };
        let mut removed = Vec::new();
        for n in place.names() {
            let name = n.to_string_lossy().into_owned();
            let legacy = name.len() == 19
                && name.starts_with(".audsync-")
                && name.ends_with(".tmp")
                && name[9..15].chars().all(|c| c.is_ascii_alphanumeric());
            if !(legacy || (name.starts_with(&mine) && name.ends_with(".tmp"))) {
                continue;
            }
            if regular(&n) && place.unlink(&n).is_ok() {
                tracing::info!(file = %place.sibling_path(&n).display(), "removed a temporary file left by an earlier run that was cut short");
                removed.push(name);
            }
        }
        // An in-place write's safety copy that no journal entry names any more: the file is
        // whole (the journal is written before the file is touched, cleared only after it is
        // done or put back, and the pending entries were recovered before this runs), and a
        // run killed between clearing the entry and removing the copy left it behind.
        let backup = journal::backup_name(&place.name);
        if self.journal.is_some() && regular(&backup) && place.unlink(&backup).is_ok() {
            tracing::info!(file = %place.sibling_path(&backup).display(), "removed the safety copy of an in-place write an earlier run finished but was cut short before removing it");
            removed.push(backup.to_string_lossy().into_owned());
        }
        removed
    }
}

/// Read an open file from its start (`pread`: its position is not used), at most
/// [`crate::fsx::MAX_TEXT`] bytes.
fn read_at_start(f: &fs::File) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let cap = crate::fsx::MAX_TEXT;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match f.read_at(&mut chunk, buf.len() as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() as u64 > cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than the {} KiB audsync reads", cap / 1024),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::journal::backup_path;
    use super::write::FAIL_WRITES;
    use super::*;

    const K: &str = "CLOUDFLARE_AUD_TAG";
    const V: &str = "newvalue";

    /// No temporary file of a write is left in `dir`.
    fn assert_no_temp_files(dir: &Path) {
        let left: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn sink_in(dir: &Path, mode: WriteMode) -> EnvFileSink {
        EnvFileSink {
            journal: Some(dir.join("env-record.json")),
            ..EnvFileSink::new(dir.join(".env"), mode)
        }
    }

    #[test]
    fn an_edit_made_between_read_and_write_is_kept_and_ours_redone_on_it() {
        for mode in [WriteMode::Atomic, WriteMode::InPlace] {
            let dir = tempfile::tempdir().unwrap();
            let sink = sink_in(dir.path(), mode);
            fs::write(&sink.path, "A=1\nCLOUDFLARE_AUD_TAG=old\n").unwrap();
            let desired = BTreeMap::from([(K.to_string(), V.to_string())]);
            let mut once = true;
            let path = sink.path.clone();
            let out = sink
                .write_all_between(&desired, &mut || {
                    if std::mem::take(&mut once) {
                        // Someone else's edit, same size: only the content tells.
                        fs::write(&path, "A=2\nCLOUDFLARE_AUD_TAG=old\n").unwrap();
                    }
                })
                .unwrap();
            assert_eq!(out, WriteOutcome::Written { version: None });
            assert_eq!(
                fs::read_to_string(&sink.path).unwrap(),
                "A=2\nCLOUDFLARE_AUD_TAG=newvalue\n",
                "{mode:?}: their edit kept, ours redone on it"
            );
            assert!(!backup_path(&sink.path).exists());
        }
    }

    /// Issue 24 #4: an editor that opened the file before the atomic rename writes after it,
    /// into the file just replaced. audsync checks that file after the rename and redoes the
    /// edit on their content.
    #[test]
    fn a_write_into_the_file_replaced_by_the_rename_is_kept() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let sink = sink_in(dir.path(), WriteMode::Atomic);
        fs::write(&sink.path, "A=1\nCLOUDFLARE_AUD_TAG=old\n").unwrap();
        let desired = BTreeMap::from([(K.to_string(), V.to_string())]);
        let path = sink.path.clone();
        let editor = std::rc::Rc::new(std::cell::RefCell::new(None::<fs::File>));
        let e2 = editor.clone();
        let out = sink
            .write_all_between(&desired, &mut || {
                // Opened before the rename (once: the redo must not see a new editor)...
                if e2.borrow().is_none() {
                    *e2.borrow_mut() =
                        Some(fs::OpenOptions::new().append(true).open(&path).unwrap());
                    let e3 = e2.clone();
                    // ...and written right after it.
                    write::AFTER_RENAME.with(|h| {
                        *h.borrow_mut() = Some(Box::new(move || {
                            let mut f = e3.borrow_mut();
                            f.as_mut().unwrap().write_all(b"THEIRS=1\n").unwrap();
                        }))
                    });
                }
            })
            .unwrap();
        assert_eq!(out, WriteOutcome::Written { version: None });
        assert_eq!(
            fs::read_to_string(&sink.path).unwrap(),
            "A=1\nCLOUDFLARE_AUD_TAG=newvalue\nTHEIRS=1\n",
            "their line kept, ours redone on it"
        );
        assert_no_temp_files(dir.path());
    }

    /// Issue 24 #4, the other side of the rename: an editor opened the file after audsync read
    /// it, and writes into it only after audsync has replaced it -- later than audsync's first
    /// look at the replaced file (it writes once it sees that look, an `IN_ACCESS`, or after
    /// 2 s). audsync waits for the editor to close the file before its last look, so the line
    /// is found and kept; checked at once after the rename (the old code), it is lost.
    #[test]
    fn an_editor_that_writes_the_replaced_file_after_the_first_look_is_waited_for() {
        use rustix::fs::inotify::{CreateFlags, ReadFlags, Reader, WatchFlags, add_watch, init};
        use std::io::Write as _;
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let sink = sink_in(dir.path(), WriteMode::Atomic);
        fs::write(&sink.path, "A=1\nCLOUDFLARE_AUD_TAG=old\n").unwrap();
        let desired = BTreeMap::from([(K.to_string(), V.to_string())]);
        let path = sink.path.clone();
        write::SETTLE_FOR_TESTS.with(|c| c.set(Some(std::time::Duration::from_secs(30))));
        let editor = std::rc::Rc::new(std::cell::RefCell::new(None::<fs::File>));
        let e2 = editor.clone();
        let thread = std::rc::Rc::new(std::cell::RefCell::new(None));
        let t2 = thread.clone();
        let out = sink
            .write_all_between(&desired, &mut || {
                if e2.borrow().is_some() {
                    return;
                }
                // Opened after audsync's read, before its rename...
                *e2.borrow_mut() = Some(fs::OpenOptions::new().append(true).open(&path).unwrap());
                let (e3, t3) = (e2.clone(), t2.clone());
                write::AFTER_RENAME.with(|h| {
                    *h.borrow_mut() = Some(Box::new(move || {
                        // ...written once audsync reads the replaced file (or after 2 s), then
                        // closed.
                        let mut f = e3.borrow_mut().take().unwrap();
                        let ino = init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
                        add_watch(
                            &ino,
                            format!("/proc/self/fd/{}", f.as_raw_fd()),
                            WatchFlags::ACCESS,
                        )
                        .unwrap();
                        *t3.borrow_mut() = Some(std::thread::spawn(move || {
                            let start = std::time::Instant::now();
                            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
                            let mut looked = false;
                            while !looked && start.elapsed() < std::time::Duration::from_secs(2) {
                                let mut r = Reader::new(&ino, &mut buf);
                                looked = r
                                    .next()
                                    .is_ok_and(|e| e.events().contains(ReadFlags::ACCESS));
                                std::thread::sleep(std::time::Duration::from_millis(1));
                            }
                            f.write_all(b"THEIRS=1\n").unwrap();
                            drop(f);
                            looked
                        }));
                    }))
                });
            })
            .unwrap();
        write::SETTLE_FOR_TESTS.with(|c| c.set(None));
        let looked_first = thread.borrow_mut().take().unwrap().join().unwrap();
        assert_eq!(out, WriteOutcome::Written { version: None });
        assert_eq!(
            fs::read_to_string(&sink.path).unwrap(),
            "A=1\nCLOUDFLARE_AUD_TAG=newvalue\nTHEIRS=1\n",
            "their line kept, ours redone on it (audsync looked before they wrote: {looked_first})"
        );
    }

    /// Issue 21 #2: a neighbour (uid 4242) owns `nbhome` with `.env -> sub/victim.env` and
    /// swaps `sub` between a directory and a link to a root-only directory while root syncs
    /// in a loop. The root-only file is never written, nor anything created beside it.
    #[test]
    fn a_neighbour_swapping_a_directory_for_a_link_never_gets_a_root_file_written() {
        use std::os::unix::fs::{chown, lchown, symlink};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root (uid switching)");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let rootdir = base.path().join("rootdir");
        fs::create_dir(&rootdir).unwrap();
        fs::set_permissions(&rootdir, fs::Permissions::from_mode(0o700)).unwrap();
        let victim = rootdir.join("victim.env");
        let root_content = "CLOUDFLARE_AUD_TAG=rootonly\n";
        fs::write(&victim, root_content).unwrap();
        let nb = base.path().join("nbhome");
        fs::create_dir(&nb).unwrap();
        fs::create_dir(nb.join("sub")).unwrap();
        fs::write(nb.join("sub/victim.env"), "CLOUDFLARE_AUD_TAG=old\n").unwrap();
        symlink("sub/victim.env", nb.join(".env")).unwrap();
        symlink(&rootdir, nb.join("sub.link")).unwrap();
        for p in [nb.clone(), nb.join("sub"), nb.join("sub/victim.env")] {
            chown(&p, Some(4242), Some(4242)).unwrap();
        }
        for p in [nb.join(".env"), nb.join("sub.link")] {
            lchown(&p, Some(4242), Some(4242)).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let neighbour = {
            let (stop, nb) = (stop.clone(), nb.clone());
            std::thread::spawn(move || {
                let mut swaps = 0;
                while !stop.load(Ordering::Relaxed) {
                    // sub: directory -> link to the root-only directory -> directory.
                    fs::rename(nb.join("sub"), nb.join("sub.dir")).unwrap();
                    fs::rename(nb.join("sub.link"), nb.join("sub")).unwrap();
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    fs::rename(nb.join("sub"), nb.join("sub.link")).unwrap();
                    fs::rename(nb.join("sub.dir"), nb.join("sub")).unwrap();
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    swaps += 1;
                }
                swaps
            })
        };
        let (mut ok, mut refused) = (0, 0);
        for i in 0..400 {
            let mode = if i % 2 == 0 {
                WriteMode::Atomic
            } else {
                WriteMode::InPlace
            };
            let sink = EnvFileSink {
                journal: Some(base.path().join("env-record.json")),
                ..EnvFileSink::new(nb.join(".env"), mode)
            };
            let desired = BTreeMap::from([(K.to_string(), format!("{:064x}", i + 1))]);
            match sink.write_all(&desired) {
                Ok(_) => ok += 1,
                Err(_) => refused += 1,
            }
            let records = BTreeMap::from([(
                crate::lock::Resource::real_path(&nb.join(".env")),
                base.path().join("env-record.json"),
            )]);
            let _ = recover_in_place(&records, None);
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = neighbour.join().unwrap();
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            root_content,
            "the root-only file was written ({ok} writes, {refused} refused, {swaps} swaps)"
        );
        let names: Vec<_> = fs::read_dir(&rootdir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("victim.env")]);
        assert!(
            ok > 0,
            "the neighbour's own file is still written ({refused} refused)"
        );
        eprintln!("{ok} writes, {refused} refused, {swaps} swaps");
    }

    #[test]
    fn a_file_that_keeps_changing_is_not_written() {
        for mode in [WriteMode::Atomic, WriteMode::InPlace] {
            let dir = tempfile::tempdir().unwrap();
            let sink = sink_in(dir.path(), mode);
            fs::write(&sink.path, "CLOUDFLARE_AUD_TAG=old\n").unwrap();
            let desired = BTreeMap::from([(K.to_string(), V.to_string())]);
            let path = sink.path.clone();
            let mut n = 0;
            let e = sink
                .write_all_between(&desired, &mut || {
                    n += 1;
                    fs::write(&path, format!("CLOUDFLARE_AUD_TAG=old\nTHEIRS={n}\n")).unwrap();
                })
                .unwrap_err()
                .to_string();
            assert!(e.contains("kept changing"), "{e}");
            assert_eq!(
                fs::read_to_string(&sink.path).unwrap(),
                format!("CLOUDFLARE_AUD_TAG=old\nTHEIRS={n}\n"),
                "{mode:?}: the last edit is kept, nothing of ours written"
            );
            assert_no_temp_files(dir.path());
        }
    }

    #[test]
    fn a_failed_in_place_write_that_never_touched_the_file_does_not_point_at_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink_in(dir.path(), WriteMode::InPlace);
        let old = "A=1\nCLOUDFLARE_AUD_TAG=old\n";
        fs::write(&sink.path, old).unwrap();
        let desired = BTreeMap::from([(K.to_string(), V.to_string())]);
        // The first write fails before a byte reaches the file (and so would a put-back).
        FAIL_WRITES.with(|c| c.set(true));
        let e = sink.write_all(&desired).unwrap_err().to_string();
        FAIL_WRITES.with(|c| c.set(false));
        assert!(e.contains("no space left"), "{e}");
        assert!(e.contains("the file was not changed"), "{e}");
        for wrong in ["backup", "copy it back", "put back", "next run"] {
            assert!(
                !e.contains(wrong),
                "says {wrong:?} though the file was never touched: {e}"
            );
        }
        assert_eq!(fs::read_to_string(&sink.path).unwrap(), old);
        assert!(
            !backup_path(&sink.path).exists(),
            "the safety copy is removed"
        );
        assert!(
            crate::lock::read_record(&dir.path().join("env-record.json"))
                .unwrap()
                .is_none_or(|r| r.in_place_write.is_none()),
            "nothing left in the journal"
        );
        // The next write goes through.
        assert_eq!(
            sink.write_all(&desired).unwrap(),
            WriteOutcome::Written { version: None }
        );
        assert_eq!(
            fs::read_to_string(&sink.path).unwrap(),
            "A=1\nCLOUDFLARE_AUD_TAG=newvalue\n"
        );
    }
}

/// The concurrent-editor loss rate (BENCHMARKS.md, "Concurrent edits"): an editor appends lines
/// (`open(O_APPEND)`, `write`, `close`, as `echo >> .env` does) while audsync writes the file
/// `AUDSYNC_LOSS_WRITES` times (default 200); every line the editor wrote must be in the file at
/// the end. `cargo nextest run --run-ignored only -E 'test(/editor_loss/)' --no-capture`.
#[cfg(test)]
mod editor_loss {
    use super::*;
    use std::io::Write as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn run(mode: WriteMode, writes: usize) -> (usize, usize, usize) {
        let dir = tempfile::tempdir().unwrap();
        let sink = EnvFileSink::new(dir.path().join(".env"), mode);
        let sink = EnvFileSink {
            journal: Some(dir.path().join("env-record.json")),
            ..sink
        };
        fs::write(&sink.path, "A=1\nCLOUDFLARE_AUD_TAG=old\n").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let editor = {
            let (stop, path) = (stop.clone(), sink.path.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
                    f.write_all(format!("EDITOR_{n}=x\n").as_bytes()).unwrap();
                    drop(f);
                    n += 1;
                    std::thread::sleep(std::time::Duration::from_millis(fastrand::u64(5..25)));
                }
                n
            })
        };
        let mut refused = 0;
        for i in 0..writes {
            let v = format!("{:064x}", i + 1);
            let desired = BTreeMap::from([("CLOUDFLARE_AUD_TAG".to_string(), v)]);
            if sink.write_all(&desired).is_err() {
                refused += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let appended = editor.join().unwrap();
        let end = fs::read_to_string(&sink.path).unwrap();
        let lost = (0..appended)
            .filter(|n| !end.contains(&format!("\nEDITOR_{n}=x\n")))
            .count();
        (appended, lost, refused)
    }

    #[test]
    #[ignore = "a measurement, minutes of I/O: run by hand for BENCHMARKS.md"]
    fn measure_editor_loss() {
        let writes = std::env::var("AUDSYNC_LOSS_WRITES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        for mode in [WriteMode::Atomic, WriteMode::InPlace] {
            let (appended, lost, refused) = run(mode, writes);
            println!(
                "{mode:?}: {writes} writes, {appended} lines appended, {lost} lost, {refused} writes refused (kept changing)"
            );
        }
    }
}
