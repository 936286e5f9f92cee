//! Getting new `.env` content onto the disk: the atomic writer (temp file beside the target,
//! fsync, rename, keeping mode and owner) and the in-place writer (the same inode rewritten,
//! for a file bind-mounted into a container), both of which look at the file once more right
//! before they replace it and step back when someone else changed it.
//!
//! This module owns bytes on disk, not their meaning. It must never decide what the content
//! is (that is [`super::edit`]), never write a file it has not just checked is still what was
//! read, and never put the content into an error: errors name paths and the I/O failure only.
//! The journal that makes an in-place write recoverable is [`super::journal`]'s.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use super::journal;
use super::place::Place;

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
    /// The record beside the `.env`'s lock could not journal the in-place write.
    #[error("cannot journal the in-place write: {0}; nothing was written")]
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
pub(super) fn temp_prefix(name: &OsStr) -> String {
    format!(".audsync-{}.", name.to_string_lossy())
}

/// How long, after the rename, audsync waits for the writers of the file it replaced to close
/// it (each `open` seen since the watch was set, not yet closed) before it checks that file a
/// last time. An editor appending (`open`, `write`, `close`) takes microseconds; a reader that
/// keeps it open costs this wait once per write, no more.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Who opens and closes one inode: an inotify watch on it (through a descriptor on it, so it is
/// the inode read, never what the name holds now). Set on the file read right after the read,
/// and on the atomic writer's new file before the rename (nobody can have opened it by name
/// before). After the rename, [`Watch::settle`] waits (at most [`SETTLE`]) until every open of
/// the replaced file seen since is closed again, so an editor that opened it before the rename
/// and writes after it has written before the last check. An open made before the watch was
/// set is not seen: its write, if it comes after the last check, is the loss that remains.
/// Without inotify (or `/proc`), there is no watch and the check is made at once, as before.
pub(super) struct Watch {
    fd: rustix::fd::OwnedFd,
    /// Opens minus closes seen since the watch was set.
    open: i64,
}

impl Watch {
    pub(super) fn on(f: &fs::File) -> Option<Watch> {
        use rustix::fs::inotify::{CreateFlags, WatchFlags, add_watch, init};
        use std::os::fd::AsRawFd;
        let fd = init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
        let flags = WatchFlags::OPEN | WatchFlags::CLOSE_WRITE | WatchFlags::CLOSE_NOWRITE;
        add_watch(&fd, format!("/proc/self/fd/{}", f.as_raw_fd()), flags).ok()?;
        Some(Watch { fd, open: 0 })
    }

    /// Count the events that came since the last look. The kernel merges an event into the
    /// one before it when both are alike and that one was not read yet: two opens in a row
    /// count once. So this is called before audsync opens the file itself (its own open would
    /// merge into an editor's).
    pub(super) fn drain(&mut self) {
        use rustix::fs::inotify::{ReadFlags, Reader};
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut r = Reader::new(&self.fd, &mut buf);
        while let Ok(e) = r.next() {
            let ev = e.events();
            if ev.contains(ReadFlags::OPEN) {
                self.open += 1;
            }
            if ev.intersects(ReadFlags::CLOSE_WRITE | ReadFlags::CLOSE_NOWRITE) {
                self.open -= 1;
            }
        }
    }

    /// Wait until every open seen since the watch was set is closed again, at most
    /// [`SETTLE`]. Returns whether it waited in vain (someone still holds it open).
    pub(super) fn settle(&mut self) -> bool {
        #[cfg(test)]
        let limit = SETTLE_FOR_TESTS.with(|c| c.get()).unwrap_or(SETTLE);
        #[cfg(not(test))]
        let limit = SETTLE;
        let start = std::time::Instant::now();
        loop {
            self.drain();
            if self.open <= 0 {
                return false;
            }
            if start.elapsed() >= limit {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests only: a longer [`SETTLE`], so a test's editor is waited for however slow the
    /// machine is.
    pub(super) static SETTLE_FOR_TESTS: std::cell::Cell<Option<std::time::Duration>> =
        const { std::cell::Cell::new(None) };
    /// Tests only: called right after the atomic writer's rename (an editor that opened the
    /// file before it writes now).
    pub(super) static AFTER_RENAME: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        std::cell::RefCell::new(None);
}

/// Temp file beside the target (in the resolved directory), fsync, then — if the file is still
/// what was read (`snap`: content, and the inode under the name) — rename over it (keeping
/// mode and owner). A file that did not exist is created only if it still does not. `old`:
/// the watch on the file read; after the rename, its writers are waited for
/// ([`Watch::settle`]). Returns the new file, now under the name, and a watch on it set before
/// the rename (the caller checks the replaced one afterwards, and the new one on a redo).
pub(super) fn write_atomic(
    place: &Place,
    bytes: &[u8],
    snap: &Snapshot,
    old: Option<&mut Watch>,
    now: impl Fn(&Place) -> Result<Snapshot, super::Error>,
) -> Result<(fs::File, Option<Watch>), WriteError> {
    let meta = match place.stat_in(&place.name) {
        Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
            return Err(Error::NotReplaceable {
                path: place.path.clone(),
                source: crate::fsx::not_regular(),
            }
            .into());
        }
        Ok(m) => m,
        Err(e) => return Err(Error::Stat(e).into()),
    };
    let dir = parent_dir(&place.path).to_path_buf();
    let tmp = place
        .temp(&temp_prefix(&place.name))
        .map_err(|source| Error::CreateTemp { dir, source })?;
    let mut f = tmp.file();
    f.write_all(bytes).map_err(Error::WriteTemp)?;
    if let Some(m) = &meta {
        f.set_permissions(fs::Permissions::from_mode(m.st_mode & 0o7777))
            .map_err(Error::CopyMode)?;
        if (m.st_uid, m.st_gid) != current_owner(f) {
            std::os::unix::fs::fchown(f, Some(m.st_uid), Some(m.st_gid)).map_err(|source| {
                Error::KeepOwner {
                    uid: m.st_uid,
                    gid: m.st_gid,
                    source,
                }
            })?;
        }
    }
    f.sync_all().map_err(Error::Fsync)?;
    // Nobody can have opened the new file by name yet: every open of it from here is seen.
    let watch = Watch::on(f);
    // Right before the rename: has anyone changed the file (or put another inode under the
    // name) since it was read? (The opens seen so far are counted first: the check's own open
    // of the file must not merge into an editor's.)
    let mut old = old;
    if let Some(w) = old.as_mut() {
        w.drain();
    }
    match now(place) {
        Ok(n) if n == *snap => {}
        Ok(_) => return Err(WriteError::Changed),
        Err(e) => return Err(Error::Recheck(Box::new(e)).into()),
    }
    let name = tmp.name.clone();
    if snap.content.is_none() {
        match place.rename(&name, &place.name, true) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(WriteError::Changed);
            }
            Err(e) => return Err(Error::Create(e).into()),
        }
    } else {
        place
            .rename(&name, &place.name, false)
            .map_err(Error::Replace)?;
    }
    let ours = tmp.keep();
    #[cfg(test)]
    if let Some(hook) = AFTER_RENAME.with(|h| h.borrow_mut().take()) {
        hook();
    }
    place.sync_dir();
    // Whoever opened the replaced file before the rename writes into it now, or has: let them
    // finish before the caller looks at it again.
    if let Some(w) = old
        && w.settle()
    {
        tracing::debug!(file = %place.path.display(), "the file replaced is still held open by someone");
    }
    Ok((ours, watch))
}

/// A plain atomic write (the safety copy `name` beside the file): temp file, fsync, rename,
/// mode 0600.
fn write_atomic_plain(place: &Place, name: &OsStr, bytes: &[u8]) -> Result<(), Error> {
    if let Ok(Some(st)) = place.stat_in(name)
        && FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
    {
        return Err(Error::NotWritable {
            path: place.sibling_path(name),
            source: crate::fsx::not_regular(),
        });
    }
    let tmp = place
        .temp(&temp_prefix(&place.name))
        .map_err(|source| Error::CreateTemp {
            dir: parent_dir(&place.path).to_path_buf(),
            source,
        })?;
    let mut f = tmp.file();
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(Error::SafetyCopy)?;
    place
        .rename(&tmp.name, name, false)
        .map_err(Error::SafetyCopy)?;
    drop(tmp.keep());
    place.sync_dir();
    Ok(())
}

fn current_owner(f: &fs::File) -> (u32, u32) {
    f.metadata()
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((u32::MAX, u32::MAX))
}

/// Rewrite the same inode. Not atomic by nature, so it is journalled: a copy of the
/// current content is first written (atomically) beside the file and the write recorded in
/// `journal`, the record beside the `.env`'s lock; the next run that takes that lock (any
/// configuration's) finishes or undoes a write that was cut short
/// ([`journal::recover_in_place`]). After a failed write the content is put back at once; the
/// copy is removed after a good write. `now` reads the file again right before it is touched.
pub(super) fn write_in_place(
    journal: Option<&Path>,
    place: &Place,
    old: &str,
    new: &str,
    values: &std::collections::BTreeMap<String, String>,
    snap: &Snapshot,
    now: impl Fn(&Place) -> Result<Snapshot, super::Error>,
) -> Result<(), WriteError> {
    let backup = journal::backup_name(&place.name);
    write_atomic_plain(place, &backup, old.as_bytes())?;
    let entry = crate::lock::InPlaceWrite {
        target: place.path.clone(),
        backup: place.sibling_path(&backup),
        new_len: new.len() as u64,
        new_hash: journal::content_hash(new.as_bytes()),
        values: values.clone(),
    };
    let forget = |why: &str| {
        if let Some(j) = journal
            && let Err(e) = journal::clear(j, &place.path)
        {
            tracing::warn!(error = %e, "cannot clear the in-place write journal ({why})");
        }
        let _ = place.unlink(&backup);
    };
    if let Some(j) = journal {
        journal::record(j, entry).map_err(|e| {
            let _ = place.unlink(&backup);
            Error::Journal(Box::new(e))
        })?;
    }
    // Right before touching the file: has anyone changed it since it was read?
    match now(place) {
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
        let mut f = place.open(true).map_err(Error::OpenForWrite)?;
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
            let restored = place
                .open(true)
                .map_err(Error::Reopen)
                .and_then(|mut f| rewrite(&mut f, old.as_bytes(), &mut true));
            match restored {
                Ok(()) => {
                    forget("put back");
                    Err(Error::PutBack(Box::new(e)).into())
                }
                Err(_) => Err(Error::SavedIn {
                    source: Box::new(e),
                    backup: place.sibling_path(&backup),
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
