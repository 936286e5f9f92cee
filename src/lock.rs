//! The advisory lock that serialises runs on one `.env` (cron, a deploy hook and `watch`).
//!
//! An exclusive `flock` on a file next to the `.env`; released when the guard drops or the
//! process dies, so a crashed run never leaves a stale lock.

use std::fs::{File, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

/// Wait up to `timeout` for the lock at `path`.
pub async fn acquire(path: &Path, timeout: Duration) -> Result<LockGuard, String> {
    // A regular file only: a FIFO would block the open, a device would lock nothing.
    let file = crate::fsx::open_regular(path, true, Some(0o600))
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    let start = Instant::now();
    let mut logged = false;
    let mut _progress = None;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(LockGuard { _file: file }),
            Err(TryLockError::WouldBlock) => {
                if start.elapsed() >= timeout {
                    return Err(format!(
                        "another audsync run holds the lock {} (waited {}); it will finish the job, or retry later (--lock-timeout)",
                        path.display(),
                        humantime::format_duration(timeout)
                    ));
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
                return Err(format!("cannot lock {}: {e}", path.display()));
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
        let e = acquire(&p, Duration::from_millis(150)).await.unwrap_err();
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
        let e = acquire(&fifo, Duration::ZERO).await.unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let null = dir.path().join("y.lock");
        std::os::unix::fs::symlink("/dev/null", &null).unwrap();
        let e = acquire(&null, Duration::ZERO).await.unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
