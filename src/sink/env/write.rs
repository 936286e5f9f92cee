//! Getting new `.env` content onto the disk: the atomic writer (temp file beside the target,
//! fsync, rename, keeping mode and owner) and the in-place writer (the same inode rewritten,
//! for a file bind-mounted into a container), both of which look at the file once more right
//! before they replace it and step back when someone else changed it.
//!
//! This module owns bytes on disk, not their meaning. It must never decide what the content
//! is (that is [`super::edit`]), never write a file it has not just checked is still what was
//! read, and never put the content into an error: errors name paths and the I/O failure only.
//! The journal that makes an in-place write recoverable is [`super::journal`]'s.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::journal;

/// Why the bytes did not reach the disk. Names paths and the I/O error, never the content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The target exists and is not a regular file.
    #[error("cannot replace {}: {source}", path.display())]
    NotReplaceable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The safety copy's path exists and is not a regular file.
    #[error("cannot write {}: {source}", path.display())]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot stat: {0}")]
    Stat(#[source] std::io::Error),
    #[error("cannot create a temporary file in {}: {source}", dir.display())]
    CreateTemp {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the temporary file: {0}")]
    WriteTemp(#[source] std::io::Error),
    #[error("cannot copy the file mode: {0}")]
    CopyMode(#[source] std::io::Error),
    #[error(
        "cannot keep the file's owner ({uid}:{gid}): {source}; run as that user or use --write-mode in-place"
    )]
    KeepOwner {
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
    #[error("fsync failed: {0}")]
    Fsync(#[source] std::io::Error),
    #[error("cannot create the file: {0}")]
    Create(#[source] std::io::Error),
    #[error("cannot replace the file: {0}")]
    Replace(#[source] std::io::Error),
    #[error("cannot write the safety copy: {0}; nothing was written")]
    SafetyCopy(#[source] std::io::Error),
    /// The state file could not record the in-place write.
    #[error("cannot journal the in-place write in the state file: {0}; nothing was written")]
    Journal(#[source] Box<journal::Error>),
    /// The file could not be read again right before it was replaced.
    #[error(transparent)]
    Recheck(Box<super::Error>),
    #[error("cannot open for writing: {0}")]
    OpenForWrite(#[source] std::io::Error),
    /// The file could not be opened to put the previous content back.
    #[error(transparent)]
    Reopen(std::io::Error),
    #[error("seek failed: {0}")]
    Seek(#[source] std::io::Error),
    #[error("write failed: no byte was written")]
    WroteNothing,
    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("truncate failed: {0}")]
    Truncate(#[source] std::io::Error),
    /// An in-place write failed before a byte reached the file.
    #[error("{0}; the file was not changed")]
    Untouched(#[source] Box<Error>),
    /// An in-place write failed halfway and the previous content was written back.
    #[error("{0}; the previous content was put back")]
    PutBack(#[source] Box<Error>),
    /// An in-place write failed halfway and the previous content could not be written back.
    #[error(
        "{source}; the previous content is saved in {}: the next run puts it back (or copy it back by hand)",
        backup.display()
    )]
    SavedIn { source: Box<Error>, backup: PathBuf },
}

/// Why a write did not happen.
pub(super) enum WriteError {
    /// The file changed since it was read: redo the edit on the new content.
    Changed,
    Failed(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Failed(e)
    }
}

/// What was read, to notice a change made by someone else before writing.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Snapshot {
    pub(super) content: Option<String>,
    /// dev, inode, size, mtime (s, ns), ctime (s, ns).
    pub(super) meta: Option<(u64, u64, u64, i64, i64, i64, i64)>,
}

pub(super) fn meta_key(m: &fs::Metadata) -> (u64, u64, u64, i64, i64, i64, i64) {
    (
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

pub(super) fn parent_dir(target: &Path) -> &Path {
    target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.audsync-<file name>.` : the temporary files of one target start so.
pub(super) fn temp_prefix(target: &Path) -> String {
    format!(
        ".audsync-{}.",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".env".into())
    )
}

/// Temp file beside `target`, fsync, then — if the file is still what was read — rename over
/// it (keeping mode and owner). A file that did not exist is created only if it still does not.
pub(super) fn write_atomic(
    target: &Path,
    bytes: &[u8],
    snap: &Snapshot,
    now: impl Fn(&Path) -> Result<Snapshot, super::Error>,
) -> Result<(), WriteError> {
    crate::fsx::check_writable_target(target).map_err(|source| Error::NotReplaceable {
        path: target.to_path_buf(),
        source,
    })?;
    let meta = match fs::metadata(target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::Stat(e).into()),
    };
    let dir = parent_dir(target);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(target))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|source| Error::CreateTemp {
            dir: dir.to_path_buf(),
            source,
        })?;
    tmp.write_all(bytes).map_err(Error::WriteTemp)?;
    if let Some(m) = &meta {
        let f = tmp.as_file();
        f.set_permissions(fs::Permissions::from_mode(m.permissions().mode() & 0o7777))
            .map_err(Error::CopyMode)?;
        if (m.uid(), m.gid()) != current_owner(f) {
            std::os::unix::fs::fchown(f, Some(m.uid()), Some(m.gid())).map_err(|source| {
                Error::KeepOwner {
                    uid: m.uid(),
                    gid: m.gid(),
                    source,
                }
            })?;
        }
    }
    tmp.as_file().sync_all().map_err(Error::Fsync)?;
    // Right before the rename: has anyone changed the file since it was read?
    match now(target) {
        Ok(n) if n == *snap => {}
        Ok(_) => return Err(WriteError::Changed),
        Err(e) => return Err(Error::Recheck(Box::new(e)).into()),
    }
    if snap.content.is_none() {
        match tmp.persist_noclobber(target) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(WriteError::Changed);
            }
            Err(e) => return Err(Error::Create(e.error).into()),
        }
    } else {
        tmp.persist(target).map_err(|e| Error::Replace(e.error))?;
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A plain atomic write (the safety copy): temp file, fsync, rename, mode 0600.
fn write_atomic_plain(target: &Path, bytes: &[u8]) -> Result<(), Error> {
    crate::fsx::check_writable_target(target).map_err(|source| Error::NotWritable {
        path: target.to_path_buf(),
        source,
    })?;
    let dir = parent_dir(target);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(target))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|source| Error::CreateTemp {
            dir: dir.to_path_buf(),
            source,
        })?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(Error::SafetyCopy)?;
    tmp.persist(target)
        .map_err(|e| Error::SafetyCopy(e.error))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn current_owner(f: &fs::File) -> (u32, u32) {
    f.metadata()
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((u32::MAX, u32::MAX))
}

/// Rewrite the same inode. Not atomic by nature, so it is journalled: a copy of the
/// current content is first written (atomically) beside the file and the write recorded in
/// the state file `journal`; the next run finishes or undoes a write that was cut short
/// ([`journal::recover_in_place`]). After a failed write the content is put back at once; the
/// copy is removed after a good write. `now` reads the file again right before it is touched.
pub(super) fn write_in_place(
    journal: Option<&Path>,
    target: &Path,
    old: &str,
    new: &str,
    snap: &Snapshot,
    now: impl Fn(&Path) -> Result<Snapshot, super::Error>,
) -> Result<(), WriteError> {
    let backup = journal::backup_path(target);
    write_atomic_plain(&backup, old.as_bytes())?;
    let entry = crate::state::InPlaceWrite {
        target: target.to_path_buf(),
        backup: backup.clone(),
        new_len: new.len() as u64,
        new_hash: journal::content_hash(new.as_bytes()),
    };
    let forget = |why: &str| {
        if let Some(j) = journal
            && let Err(e) = journal::clear(j, target)
        {
            tracing::warn!(error = %e, "cannot clear the in-place write journal ({why})");
        }
        let _ = fs::remove_file(&backup);
    };
    if let Some(j) = journal {
        journal::record(j, entry).map_err(|e| {
            let _ = fs::remove_file(&backup);
            Error::Journal(Box::new(e))
        })?;
    }
    // Right before touching the file: has anyone changed it since it was read?
    match now(target) {
        Ok(n) if n == *snap => {}
        Ok(_) => {
            forget("changed");
            return Err(WriteError::Changed);
        }
        Err(e) => {
            forget("unreadable");
            return Err(Error::Recheck(Box::new(e)).into());
        }
    }
    let mut touched = false;
    let result = (|| {
        let mut f = crate::fsx::open_regular(target, true, None).map_err(Error::OpenForWrite)?;
        rewrite(&mut f, new.as_bytes(), &mut touched)
    })();
    match result {
        Ok(()) => {
            forget("done");
            Ok(())
        }
        Err(e) if !touched => {
            forget("failed");
            Err(Error::Untouched(Box::new(e)).into())
        }
        Err(e) => {
            let restored = crate::fsx::open_regular(target, true, None)
                .map_err(Error::Reopen)
                .and_then(|mut f| rewrite(&mut f, old.as_bytes(), &mut true));
            match restored {
                Ok(()) => {
                    forget("put back");
                    Err(Error::PutBack(Box::new(e)).into())
                }
                Err(_) => Err(Error::SavedIn {
                    source: Box::new(e),
                    backup: backup.clone(),
                }
                .into()),
            }
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests only: every write of an in-place rewrite fails before it writes a byte (a full
    /// disk, a quota), so the failure paths can be driven without root-proof tricks.
    pub(super) static FAIL_WRITES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One `write` call of an in-place rewrite.
fn write_some(f: &mut fs::File, bytes: &[u8]) -> std::io::Result<usize> {
    #[cfg(test)]
    if FAIL_WRITES.with(|c| c.get()) {
        return Err(std::io::Error::other("no space left on device (injected)"));
    }
    f.write(bytes)
}

/// Write `bytes` over the whole of `f` from the start, truncate, fsync.
pub(super) fn rewrite(f: &mut fs::File, bytes: &[u8], touched: &mut bool) -> Result<(), Error> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(0)).map_err(Error::Seek)?;
    // `touched` once a byte reached the file: a write that failed before that (a full disk,
    // a quota) left it as it was, and says so instead of pointing at the safety copy.
    let mut rest = bytes;
    while !rest.is_empty() {
        match write_some(f, rest) {
            Ok(0) => return Err(Error::WroteNothing),
            Ok(n) => {
                *touched = true;
                rest = &rest[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Write(e)),
        }
    }
    *touched = true;
    f.set_len(bytes.len() as u64).map_err(Error::Truncate)?;
    f.sync_all().map_err(Error::Fsync)
}
