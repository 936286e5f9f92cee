//! Where a `.env` lives, resolved once: a descriptor of its directory and the file's name in it.
//!
//! The path is walked one component at a time from `/` (or the working directory), each
//! directory opened with `O_NOFOLLOW` relative to the one before (`openat`), and a symlink met
//! on the way is read (`readlinkat`) and followed by hand, under rules that decide whose links
//! are trusted:
//!
//! - a link to a directory, in a directory owned by root or by the user running, is followed
//!   freely (`/srv -> /data/srv`);
//! - a link in a directory of another user `D` (who can swap it at any time) is followed only
//!   into `D`'s own tree: every directory after it must be owned by `D` or root, and the file
//!   (or, when it is missing, its directory) by `D`;
//! - the `.env` itself may be a link only to a file of the owner of the link's directory (the
//!   rule of old), reached under the same rules.
//!
//! Every later step (read, temporary file, rename, safety copy, in-place open, leftover
//! removal) is made relative to the directory descriptor ([`Place::dir`]), never by path
//! again, so a component swapped for a link after the resolution changes nothing: the write
//! lands in the directory that was checked, or nowhere.
//!
//! This module must never follow a link implicitly (`O_NOFOLLOW` on every open) and never
//! open a path string twice. Errors name paths and uids only.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// The most links followed while resolving one path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Why the path could not be resolved safely. Names paths and uids only.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot resolve {}: {source}", at.display())]
    Io { at: PathBuf, source: std::io::Error },
    #[error("{} is not a directory", at.display())]
    NotDir { at: PathBuf },
    #[error("more than {MAX_LINKS} symlinks")]
    TooManyLinks,
    /// A link in another user's directory leads out of that user's tree.
    #[error(
        "the symlink {} (in a directory of uid {link_uid}) leads to {}, owned by uid {uid}: audsync follows a user's links only into that user's own files and directories; point the setting at the real path, or chown it; nothing was written",
        link.display(),
        at.display()
    )]
    ForeignTree {
        link: PathBuf,
        link_uid: u32,
        at: PathBuf,
        uid: u32,
    },
    /// The `.env` is a link to another user's file than the owner of the link's directory.
    #[error(
        "is a symlink to {}, owned by uid {target_uid}, but the link's directory is owned by uid {dir_uid}: audsync writes through a link only to a file of the directory's owner; point --env-file at the target itself, or chown it; nothing was written",
        target.display()
    )]
    ForeignLink {
        target: PathBuf,
        target_uid: u32,
        dir_uid: u32,
    },
    #[error("the path kept changing while audsync resolved it")]
    KeptChanging,
}

/// A resolved `.env`: its directory, held open, and its name in it.
#[derive(Debug)]
pub(crate) struct Place {
    /// The directory (`O_PATH`), the base of every later operation.
    pub(super) dir: OwnedFd,
    /// The file's name in [`Self::dir`].
    pub(super) name: OsString,
    /// The path the resolution reached (no links left in it), for messages and the journal.
    pub(super) path: PathBuf,
}

fn io_at(at: &Path) -> impl FnOnce(Errno) -> Error + '_ {
    move |e| Error::Io {
        at: at.to_path_buf(),
        source: e.into(),
    }
}

fn open_dir(base: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        base,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Who constrains the rest of the walk: the owner of a directory a followed link sat in.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
}

/// Resolve `path` as described in the module docs.
pub(crate) fn resolve(path: &Path) -> Result<Place, Error> {
    for _ in 0..3 {
        match resolve_once(path) {
            Err(Error::KeptChanging) => continue,
            r => return r,
        }
    }
    Err(Error::KeptChanging)
}

fn resolve_once(path: &Path) -> Result<Place, Error> {
    let me = rustix::process::geteuid().as_raw();
    let mut queue: VecDeque<OsString> = VecDeque::new();
    let mut at = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
    };
    let mut dir = open_dir(rustix::fs::CWD, OsStr::new(".")).map_err(io_at(&at))?;
    push_front(&mut queue, path);
    let mut links = 0;
    // The owner whose tree the walk is in after following one of their links.
    let mut tree: Option<(Owner, PathBuf)> = None;
    // The `.env` was a link: the owner of its directory must own the file.
    let mut file_owner: Option<u32> = None;
    while let Some(comp) = queue.pop_front() {
        let last = queue.is_empty();
        if comp == "/" {
            dir = open_dir(rustix::fs::CWD, OsStr::new("/")).map_err(io_at(&at))?;
            at = PathBuf::from("/");
            continue;
        }
        if comp == "." {
            if last {
                return Err(Error::NotDir { at });
            }
            continue;
        }
        if comp == ".." {
            dir = open_dir(dir.as_fd(), &comp).map_err(io_at(&at))?;
            at.pop();
            check_tree(&tree, &dir, &at)?;
            if last {
                return Err(Error::NotDir { at });
            }
            continue;
        }
        let here = at.join(&comp);
        let st = match rustix::fs::statat(&dir, &comp, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) if last => None,
            Err(e) => return Err(io_at(&here)(e)),
        };
        let kind = st.as_ref().map(|s| FileType::from_raw_mode(s.st_mode));
        if kind == Some(FileType::Symlink) {
            links += 1;
            if links > MAX_LINKS {
                return Err(Error::TooManyLinks);
            }
            let dir_uid = rustix::fs::fstat(&dir).map_err(io_at(&at))?.st_uid;
            if last && file_owner.is_none() {
                file_owner = Some(dir_uid);
            }
            if dir_uid != 0 && dir_uid != me {
                match &tree {
                    Some((o, _)) if o.uid != dir_uid => {
                        return Err(Error::ForeignTree {
                            link: here,
                            link_uid: o.uid,
                            at: at.clone(),
                            uid: dir_uid,
                        });
                    }
                    Some(_) => {}
                    None => tree = Some((Owner { uid: dir_uid }, here.clone())),
                }
            }
            let target = rustix::fs::readlinkat(&dir, &comp, Vec::new()).map_err(io_at(&here))?;
            push_front(&mut queue, Path::new(OsStr::from_bytes(target.as_bytes())));
            continue;
        }
        if last {
            let uid = match st {
                Some(s) => s.st_uid,
                // Missing: whoever owns the directory decides what is created in it.
                None => rustix::fs::fstat(&dir).map_err(io_at(&at))?.st_uid,
            };
            if let Some((o, link)) = &tree
                && uid != o.uid
            {
                return Err(Error::ForeignTree {
                    link: link.clone(),
                    link_uid: o.uid,
                    at: here,
                    uid,
                });
            }
            if let Some(dir_uid) = file_owner
                && uid != dir_uid
            {
                return Err(Error::ForeignLink {
                    target: here,
                    target_uid: uid,
                    dir_uid,
                });
            }
            return Ok(Place {
                dir,
                name: comp,
                path: here,
            });
        }
        if kind != Some(FileType::Directory) {
            return Err(Error::NotDir { at: here });
        }
        dir = match open_dir(dir.as_fd(), &comp) {
            Ok(d) => d,
            // Swapped for a link (or removed) since the stat: start again.
            Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => return Err(Error::KeptChanging),
            Err(e) => return Err(io_at(&here)(e)),
        };
        at = here;
        check_tree(&tree, &dir, &at)?;
    }
    Err(Error::NotDir { at })
}

/// After a link of another user's, every directory must be theirs or root's.
fn check_tree(tree: &Option<(Owner, PathBuf)>, dir: &OwnedFd, at: &Path) -> Result<(), Error> {
    if let Some((o, link)) = tree {
        let uid = rustix::fs::fstat(dir).map_err(io_at(at))?.st_uid;
        if uid != o.uid && uid != 0 {
            return Err(Error::ForeignTree {
                link: link.clone(),
                link_uid: o.uid,
                at: at.to_path_buf(),
                uid,
            });
        }
    }
    Ok(())
}

/// Put the components of `p` at the front of the queue (`/` for an absolute path).
fn push_front(queue: &mut VecDeque<OsString>, p: &Path) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::RootDir => Some(OsString::from("/")),
            Component::CurDir => None,
            Component::ParentDir => Some(OsString::from("..")),
            Component::Normal(n) => Some(n.to_os_string()),
            Component::Prefix(_) => None,
        })
        .collect();
    for c in comps.into_iter().rev() {
        queue.push_front(c);
    }
}

impl Place {
    /// A name beside the file (the safety copy, a temporary file), in the same directory.
    pub(super) fn sibling_path(&self, name: &OsStr) -> PathBuf {
        self.path.with_file_name(name)
    }

    /// Open `name` in the directory: never through a link, never blocking, a regular file only.
    pub(super) fn open_in(&self, name: &OsStr, write: bool) -> std::io::Result<File> {
        let mut flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        flags |= if write {
            OFlags::WRONLY
        } else {
            OFlags::RDONLY
        };
        let fd = match rustix::fs::openat(&self.dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NXIO | Errno::LOOP) => return Err(crate::fsx::not_regular()),
            Err(e) => return Err(e.into()),
        };
        let f = File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(crate::fsx::not_regular());
        }
        if let Ok(fl) = rustix::fs::fcntl_getfl(&f) {
            let _ = rustix::fs::fcntl_setfl(&f, fl - OFlags::NONBLOCK);
        }
        Ok(f)
    }

    /// The file itself ([`Self::open_in`] of its name).
    pub(super) fn open(&self, write: bool) -> std::io::Result<File> {
        self.open_in(&self.name, write)
    }

    /// `lstat` of `name` in the directory; `None` when it does not exist.
    pub(super) fn stat_in(&self, name: &OsStr) -> std::io::Result<Option<rustix::fs::Stat>> {
        match rustix::fs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn unlink(&self, name: &OsStr) -> std::io::Result<()> {
        rustix::fs::unlinkat(&self.dir, name, AtFlags::empty()).map_err(Into::into)
    }

    /// Rename `from` over `to`, both in the directory; `noclobber`: fail when `to` exists.
    pub(super) fn rename(&self, from: &OsStr, to: &OsStr, noclobber: bool) -> std::io::Result<()> {
        let flags = if noclobber {
            rustix::fs::RenameFlags::NOREPLACE
        } else {
            rustix::fs::RenameFlags::empty()
        };
        rustix::fs::renameat_with(&self.dir, from, &self.dir, to, flags).map_err(Into::into)
    }

    /// A new file in the directory, `<prefix>XXXXXX.tmp`, mode 0600, removed when dropped
    /// unless [`Temp::keep`] is called.
    pub(super) fn temp(&self, prefix: &str) -> std::io::Result<Temp<'_>> {
        let mut last = Errno::EXIST;
        for _ in 0..16 {
            let name: String = (0..6).map(|_| fastrand::alphanumeric()).collect();
            let name = OsString::from(format!("{prefix}{name}.tmp"));
            match rustix::fs::openat(
                &self.dir,
                &name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    return Ok(Temp {
                        place: self,
                        name,
                        file: Some(File::from(fd)),
                    });
                }
                Err(Errno::EXIST) => last = Errno::EXIST,
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.into())
    }

    /// fsync the directory (best effort: it is opened for reading, which may be refused).
    pub(super) fn sync_dir(&self) {
        if let Ok(d) = rustix::fs::openat(
            &self.dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = rustix::fs::fsync(&d);
        }
    }

    /// The names in the directory.
    pub(super) fn names(&self) -> Vec<OsString> {
        let Ok(d) = rustix::fs::openat(
            &self.dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return vec![];
        };
        let Ok(rd) = rustix::fs::Dir::new(d) else {
            return vec![];
        };
        rd.flatten()
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect()
    }
}

/// A temporary file in a [`Place`]'s directory.
pub(super) struct Temp<'a> {
    place: &'a Place,
    pub(super) name: OsString,
    file: Option<File>,
}

impl Temp<'_> {
    pub(super) fn file(&self) -> &File {
        self.file.as_ref().expect("present until kept")
    }

    /// It was renamed into place: do not remove it; its handle.
    pub(super) fn keep(mut self) -> File {
        self.file.take().expect("present until kept")
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = self.place.unlink(&self.name);
        }
    }
}
