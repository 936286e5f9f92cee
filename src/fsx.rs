//! The files audsync is given (`.env`, the config file, `*_FILE` secrets, the state and lock
//! files): regular files only, never more than a cap, so a FIFO, a device, a socket or an
//! endless file fails fast with a clear error instead of hanging or eating memory.
//!
//! Every open is non-blocking (`O_NONBLOCK`, so opening a FIFO never waits for a writer) and
//! checked on the open descriptor (`fstat`), so a path swapped for a FIFO between a check and
//! the open is still refused. A symlink is followed, and its target must be a regular file.
//!
//! Errors name the path, never the content.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

/// Why a file could not be read or opened. Names the path, never the content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    /// A secret file (`*_FILE`) could not be read; the caller names the path.
    #[error("cannot read the file: {source}")]
    SecretRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A secret file is not UTF-8; the caller names the path.
    #[error("the file is not UTF-8 text")]
    SecretNotUtf8 { path: PathBuf },
    #[error("{}: larger than the {} KiB audsync reads", path.display(), cap / 1024)]
    TooLarge { path: PathBuf, cap: u64 },
    #[error("{} is not a regular file; point the setting at a regular file", path.display())]
    PrivateNotRegular { path: PathBuf },
    #[error(
        "{} is a symlink: audsync does not follow links for its own files; remove the link (or point the setting at a real file)",
        path.display()
    )]
    PrivateSymlink { path: PathBuf },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Stat {
        path: PathBuf,
        source: rustix::io::Errno,
    },
    /// A private file (lock, state) owned by another user than the one running.
    #[error(
        "{} is owned by uid {uid}, not by the user running audsync (uid {me}); remove it or run as its owner",
        path.display()
    )]
    PrivateNotOwned { path: PathBuf, uid: u32, me: u32 },
    #[error("cannot make {} private (0600): {source}", path.display())]
    MakePrivate {
        path: PathBuf,
        source: rustix::io::Errno,
    },
}

/// The largest `.env` or config file read.
pub(crate) const MAX_TEXT: u64 = 4 * 1024 * 1024;
/// The largest secret file (`*_FILE`) read.
pub(crate) const MAX_SECRET: u64 = 64 * 1024;

/// The error for a path that exists but is not a regular file.
pub(crate) fn not_regular() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "not a regular file (a directory, device, FIFO or socket, or a symlink to one); point it at a regular file",
    )
}

/// Open `path` as a regular file: for reading, or for writing (`create`: made with `mode` when
/// missing). Never blocks on a FIFO; refuses anything but a regular file.
pub(crate) fn open_regular(path: &Path, write: bool, create: Option<u32>) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(!write).write(write);
    if let Some(mode) = create {
        o.create(true).mode(mode);
    }
    o.custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32);
    let f = match o.open(path) {
        Ok(f) => f,
        // A FIFO opened for writing without a reader.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
            return Err(not_regular());
        }
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Err(not_regular());
    }
    // A regular file ignores O_NONBLOCK; drop it all the same.
    if let Ok(flags) = rustix::fs::fcntl_getfl(&f) {
        let _ = rustix::fs::fcntl_setfl(&f, flags - OFlags::NONBLOCK);
    }
    Ok(f)
}

/// The file's text; `None` when it does not exist.
pub(crate) fn read_text(path: &Path) -> Result<Option<String>, Error> {
    match read_bounded(path, MAX_TEXT) {
        Ok(b) => String::from_utf8(b).map(Some).map_err(|_| Error::NotUtf8 {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A secret file's text (a missing file is an error).
pub(crate) fn read_secret_file(path: &Path) -> Result<String, Error> {
    let b = read_bounded(path, MAX_SECRET).map_err(|source| Error::SecretRead {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(b).map_err(|_| Error::SecretNotUtf8 {
        path: path.to_path_buf(),
    })
}

/// Read a regular file (following symlinks), at most `cap` bytes.
pub(crate) fn read_bounded(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let f = open_regular(path, false, None)?;
    read_open(f, cap)
}

/// Read an open file to its end, at most `cap` bytes.
pub(crate) fn read_open(f: File, cap: u64) -> std::io::Result<Vec<u8>> {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::with_capacity(len.min(cap) as usize);
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the {} KiB audsync reads", cap / 1024),
        ));
    }
    Ok(buf)
}

/// A private file's bytes (see [`open_private`]), at most `cap`; `None` when it does not exist.
pub(crate) fn read_private(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, Error> {
    if let Err(rustix::io::Errno::NOENT) = rustix::fs::lstat(path) {
        return Ok(None);
    }
    let f = open_private(path, false)?;
    let mut buf = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > cap {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            cap,
        });
    }
    Ok(Some(buf))
}

/// Open (creating when missing, mode 0600) a private file audsync owns — the lock file, the
/// state file — without following a symlink at the last component, then check that the file
/// is a regular file owned by the user running and tighten its mode to 0600. A link planted
/// where the file should be (pointing at `/etc/shadow` or a file of another user) is refused,
/// never written through. Errors name the path and the fix.
pub(crate) fn open_private(path: &Path, write: bool) -> Result<std::fs::File, Error> {
    use rustix::fs::{Mode, OFlags};
    // Non-blocking: a FIFO in its place must fail, not hang the open.
    let mut flags = OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    flags |= if write {
        OFlags::RDWR | OFlags::CREATE
    } else {
        OFlags::RDONLY
    };
    let fd = rustix::fs::open(path, flags, Mode::from_raw_mode(0o600)).map_err(|e| {
        let path = path.to_path_buf();
        if e == rustix::io::Errno::NXIO {
            Error::PrivateNotRegular { path }
        } else if e == rustix::io::Errno::LOOP {
            Error::PrivateSymlink { path }
        } else {
            Error::Open {
                path,
                source: std::io::Error::from(e),
            }
        }
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|source| Error::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Error::PrivateNotRegular {
            path: path.to_path_buf(),
        });
    }
    let me = rustix::process::geteuid();
    if st.st_uid != me.as_raw() {
        return Err(Error::PrivateNotOwned {
            path: path.to_path_buf(),
            uid: st.st_uid,
            me: me.as_raw(),
        });
    }
    if let Ok(fl) = rustix::fs::fcntl_getfl(&fd) {
        let _ = rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK);
    }
    if write && st.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(|source| {
            Error::MakePrivate {
                path: path.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_regular_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_text(dir.path())
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 70 * 1024]).unwrap();
        assert!(
            read_secret_file(&big)
                .unwrap_err()
                .to_string()
                .contains("64 KiB")
        );
        assert_eq!(read_text(&dir.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn devices_fifos_and_links_to_them_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let null = dir.path().join("null");
        std::os::unix::fs::symlink("/dev/null", &null).unwrap();
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        for p in [&fifo, &null, &zero] {
            let e = read_text(p).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{}: {e}", p.display());
            let e = open_regular(p, true, Some(0o600)).unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::InvalidInput,
                "{}",
                p.display()
            );
        }
        let ok = dir.path().join("ok");
        open_regular(&ok, true, Some(0o600)).unwrap();
    }
}
