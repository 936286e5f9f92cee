//! The advisory lock that serialises runs on one configuration (cron, a deploy hook and `watch`).
//!
//! An exclusive `flock` on a file next to the config file (or the `.env` of a flag-only run);
//! released when the guard drops or the process dies, so a crashed run never leaves a stale
//! lock. The file is opened without following a symlink, created 0600 and must be owned by the
//! user running.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The lock file cannot be opened safely (a symlink, another user's, not a regular file,
    /// or an I/O error): fsx's refusal, which names the file.
    #[error("lock file: {0}")]
    Open(crate::fsx::Error),
    /// Another run held it for the whole wait.
    #[error(
        "another audsync run holds the lock {} (waited {}); it will finish the job, or retry later (--lock-timeout)",
        .path.display(),
        humantime::format_duration(*.waited)
    )]
    Held { path: PathBuf, waited: Duration },
    /// `flock` itself failed.
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub(crate) struct LockGuard {
    _file: File,
}

/// Wait up to `timeout` for the lock at `path`.
pub(crate) async fn acquire(path: &Path, timeout: Duration) -> Result<LockGuard, Error> {
    // Never through a symlink, mode 0600, owned by the user running (see fsx::open_private).
    let file = crate::fsx::open_private(path, true).map_err(Error::Open)?;
    let start = Instant::now();
    let mut logged = false;
    let mut _progress = None;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(LockGuard { _file: file }),
            Err(TryLockError::WouldBlock) => {
                if start.elapsed() >= timeout {
                    return Err(Error::Held {
                        path: path.to_path_buf(),
                        waited: timeout,
                    });
                }
                if !logged {
                    tracing::info!(lock = %path.display(), "another audsync run is in progress; waiting");
                    logged = true;
                    _progress = Some(crate::progress::wait(
                        "the lock held by another audsync run",
                        timeout,
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_times_out_then_succeeds_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let g = acquire(&p, Duration::ZERO).await.unwrap();
        let e = acquire(&p, Duration::from_millis(150))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("another audsync run"), "{e}");
        drop(g);
        acquire(&p, Duration::ZERO).await.unwrap();
    }

    #[tokio::test]
    async fn a_lock_path_that_is_a_fifo_or_device_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.lock");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = acquire(&fifo, Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let null = dir.path().join("y.lock");
        std::os::unix::fs::symlink("/dev/null", &null).unwrap();
        let e = acquire(&null, Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a symlink"), "never followed: {e}");
    }
}

#[cfg(test)]
mod trust_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, "keep me").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("x.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = acquire(&link, Duration::ZERO)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
        // A dangling link is not followed into a new file either.
        let dangling = dir.path().join("y.lock");
        std::os::unix::fs::symlink(dir.path().join("created"), &dangling).unwrap();
        assert!(acquire(&dangling, Duration::ZERO).await.is_err());
        assert!(!dir.path().join("created").exists());
    }

    #[tokio::test]
    async fn the_lock_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let _g = acquire(&p, Duration::ZERO).await.unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(_g);
        // An existing lock file left too open is tightened.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let _g = acquire(&p, Duration::ZERO).await.unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
