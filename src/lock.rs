//! The advisory locks that make runs take turns (cron, a deploy hook, `setup` and `watch`).
//!
//! Two kinds, always taken in this order: the configuration's own lock (next to the config
//! file; for a flag-only run, `run-*.lock` in the lock directory), then one lock per
//! [`Resource`] the pass may touch -- each `.env` written and each container, compose service
//! or Swarm service that may be restarted -- in sorted order, in the lock directory
//! (`/run/audsync` for root, `$XDG_RUNTIME_DIR/audsync` otherwise; 0700, owned by the user
//! running). So a config run and a flag run that share a container take turns, whichever way
//! they were started.
//!
//! A lock is an exclusive `flock`, released when the guard drops or the process dies, so a
//! crashed run never leaves a stale lock. Every file is opened without following a symlink,
//! created 0600 and must be owned by the user running. What belongs to a resource (a restart
//! owed, the values its container last ran with, the journal of an unfinished apply: a
//! container's recreate or rollout, a `.env`'s in-place write) is kept beside its lock
//! (`<lock>.json`), so whichever run takes the resource next finishes the job. `flock`
//! conflicts between two open descriptions even in one process: a pass never opens one lock
//! file twice (keys are deduplicated, and a flag run's configuration lock is not its `.env`'s).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

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
    /// The lock directory cannot be made or is not safe (a symlink, not a directory, another
    /// user's).
    #[error(
        "lock directory {}: {why}; fix it or point --lock-dir / AUDSYNC_LOCK_DIR elsewhere",
        .path.display()
    )]
    Dir { path: PathBuf, why: String },
    /// A resource's record (beside its lock) cannot be read safely.
    #[error("resource record: {0}")]
    Read(crate::fsx::Error),
    /// A resource's record cannot be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
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

/// The default lock directory: `/run/audsync` for root, `$XDG_RUNTIME_DIR/audsync` otherwise
/// (`/tmp/audsync-<uid>` when that is unset; owner-checked like any other).
pub(crate) fn default_dir(xdg_runtime_dir: Option<&str>) -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/audsync");
    }
    match xdg_runtime_dir.filter(|d| d.starts_with('/')) {
        Some(d) => Path::new(d).join("audsync"),
        None => PathBuf::from(format!("/tmp/audsync-{}", uid.as_raw())),
    }
}

/// Make `dir` (mode 0700) when missing, then check it: a real directory (never a symlink),
/// owned by the user running, that nobody else can enter. One of ours left more open is
/// tightened; another user's is refused, so nobody else can delete or replace a lock file.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let fail = |why: String| Error::Dir {
        path: dir.to_path_buf(),
        why,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
    if m.file_type().is_symlink() {
        return Err(fail(
            "is a symlink; audsync does not follow links for its lock directory".into(),
        ));
    }
    if !m.is_dir() {
        return Err(fail("not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if m.uid() != me {
        return Err(fail(format!(
            "owned by uid {}, not by the user running audsync (uid {me})",
            m.uid()
        )));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(format!("cannot make it private (0700): {e}")))?;
    }
    Ok(())
}

/// Something two runs may both touch: one lock file (and one record) each.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Resource {
    /// A flag-only run's configuration, by its `.env`'s real path (not the `.env`'s lock: one
    /// process must never open one lock file twice).
    FlagRun(PathBuf),
    /// A `.env` written, by its real path.
    EnvFile(PathBuf),
    /// A container, by the engine's `/info` ID and the container's name.
    Container { engine: String, name: String },
    /// A compose service, by engine, project and service (a rollout renames its containers).
    ComposeService {
        engine: String,
        project: String,
        service: String,
    },
    /// A Swarm service, by engine and name.
    SwarmService { engine: String, name: String },
}

/// Letters, digits, `.`, `_` and `-` kept, anything else `_`, at most 64 characters.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

impl Resource {
    /// The real path of a `.env` (the parent's, for one not made yet): a symlink and its target
    /// are one resource.
    pub(crate) fn real_path(p: &Path) -> PathBuf {
        if let Ok(r) = std::fs::canonicalize(p) {
            return r;
        }
        match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::canonicalize(dir)
                    .map(|d| d.join(name))
                    .unwrap_or_else(|_| p.to_path_buf())
            }
            _ => p.to_path_buf(),
        }
    }

    /// The file name of its lock, without `.lock`: readable, and unique by a hash of the key.
    pub(crate) fn stem(&self) -> String {
        use std::os::unix::ffi::OsStrExt;
        let (kind, label, key): (&str, String, Vec<u8>) = match self {
            Resource::FlagRun(p) | Resource::EnvFile(p) => (
                if matches!(self, Resource::FlagRun(_)) {
                    "run"
                } else {
                    "env"
                },
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                p.as_os_str().as_bytes().to_vec(),
            ),
            Resource::Container { engine, name } => (
                "container",
                name.clone(),
                format!("{engine}\n{name}").into_bytes(),
            ),
            Resource::ComposeService {
                engine,
                project,
                service,
            } => (
                "compose",
                format!("{project}-{service}"),
                format!("{engine}\n{project}\n{service}").into_bytes(),
            ),
            Resource::SwarmService { engine, name } => (
                "swarm",
                name.clone(),
                format!("{engine}\n{name}").into_bytes(),
            ),
        };
        format!("{kind}-{}-{:016x}", clean(&label), crate::tag::fnv1a(&key))
    }
}

/// What is kept with a target's lock: whichever run takes it next reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Record {
    /// A restart/recreate is owed for values already in the sinks.
    #[serde(default)]
    pub(crate) owed: bool,
    /// The values the container last ran with after a pass, by key.
    #[serde(default)]
    pub(crate) ran_with: BTreeMap<String, String>,
    /// A Swarm service: the values whose update failed and was rolled back (not pushed again
    /// until they change or a growing backoff has passed; see docs/swarm.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failed: Option<FailedUpdate>,
    /// A recreate or rollout of the container, or an update of the Swarm service, in progress:
    /// written before its first change, cleared when it is over (see `docker/journal.rs`).
    /// Whichever run takes the lock next finishes or undoes what it records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) applying: Option<Applying>,
    /// A `.env`: an in-place write in progress, recorded before the file is touched and
    /// cleared once it is done or undone (see `sink/env/journal.rs`). Whichever run takes the
    /// `.env`'s lock next -- any configuration, a flag run, `watch` -- finishes or undoes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) in_place_write: Option<InPlaceWrite>,
}

/// One journalled in-place write: the file, its safety copy (the old content), and what the
/// new content is (length and hash), so the next run can tell finished from torn. Kept in the
/// record beside the `.env`'s lock (older versions kept it in the state file's
/// `in_place_writes`, still read and migrated).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct InPlaceWrite {
    pub(crate) target: PathBuf,
    pub(crate) backup: PathBuf,
    pub(crate) new_len: u64,
    pub(crate) new_hash: String,
    /// The values written (key -> AUD; an AUD is not a secret): the new content is the edit of
    /// the safety copy's, so recovery can tell a torn write from someone else's edit. Empty in
    /// the entries of state files of schema 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) values: BTreeMap<String, String>,
}

/// Which apply a journal records.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ApplyKind {
    /// Stop the old container, then start the new one under its name.
    Recreate,
    /// Start the new one beside the old one, swap them once it is good.
    Rollout,
    /// Update a Swarm service's spec; Swarm rolls its tasks out.
    SwarmUpdate,
}

/// The last step an apply reached (in the order each kind takes them).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ApplyStep {
    /// Recorded; the new container may be being created (its id is not known yet).
    Begun,
    /// The new container exists (`new_id`), not started.
    Created,
    /// The old container was stopped (recreate).
    OldStopped,
    /// The new container was started.
    Started,
    /// The new container proved good (healthy, or ran for the settle time).
    Healthy,
    /// The old container was renamed aside.
    OldAside,
    /// The new container took the name.
    Swapped,
    /// Read from an older version's state file (`recreating`): the step is unknown.
    Legacy,
    /// A Swarm update: the engine accepted the new spec; Swarm rolls the tasks out.
    Sent,
    /// A Swarm update: Swarm stopped it (a new task failed) or it timed out, and audsync is
    /// putting the previous value back (the values are already remembered as failed).
    RollingBack,
}

/// The journal of one apply that changes a container: what a later run needs to finish or
/// undo it, checking what it finds against these ids (never a name alone).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Applying {
    pub(crate) kind: ApplyKind,
    /// The container's name (the name the service keeps).
    pub(crate) name: String,
    /// The container being replaced: the user's, which carries no label of ours.
    pub(crate) old_id: String,
    /// A hash of the new container's create body.
    #[serde(default)]
    pub(crate) spec_hash: String,
    /// Whether the old container was running when the apply began.
    pub(crate) was_running: bool,
    /// The temporary name of the new container, and the one the old one is moved aside to.
    #[serde(default)]
    pub(crate) new_name: String,
    #[serde(default)]
    pub(crate) aside: String,
    /// The new container, once created.
    #[serde(default)]
    pub(crate) new_id: Option<String>,
    pub(crate) step: ApplyStep,
    /// Whether the new container ever proved good: a later run finishes forward when it did,
    /// rolls back when it did not.
    #[serde(default)]
    pub(crate) healthy: bool,
    /// A Swarm update: the service's version index the update was sent at (read just before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<u64>,
    /// A Swarm update: key -> a hash of the value being set (never the value itself), so a
    /// later run can tell whether the spec it finds is the one this update sent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) values: BTreeMap<String, String>,
}

/// Read the record at `path` (`None`: none yet; an unreadable one is ignored with a warning).
pub(crate) fn read_record(path: &Path) -> Result<Option<Record>, Error> {
    match crate::fsx::read_private(path, crate::fsx::MAX_TEXT).map_err(Error::Read)? {
        Some(b) => Ok(serde_json::from_slice(&b).ok().or_else(|| {
            tracing::warn!(path = %path.display(), "ignoring an unreadable resource record");
            None
        })),
        None => Ok(None),
    }
}

/// Change the record at `path` and write it atomically (a temporary file beside it, synced,
/// then renamed). Only ever called by the run that holds the resource's lock.
pub(crate) fn update_record(path: &Path, change: impl FnOnce(&mut Record)) -> Result<(), Error> {
    let mut r = read_record(path)?.unwrap_or_default();
    let before = r.clone();
    change(&mut r);
    if r == before && path.exists() {
        return Ok(());
    }
    let io = |source: std::io::Error| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let body = serde_json::to_vec_pretty(&r).map_err(|e| io(e.into()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".record-")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(&body).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Values whose update of a target failed and was rolled back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct FailedUpdate {
    /// Key -> the value that failed.
    pub(crate) values: BTreeMap<String, String>,
    /// When it failed last (seconds since the Unix epoch).
    pub(crate) at: u64,
    /// How many updates to these values failed in a row.
    pub(crate) attempts: u32,
}

/// The resource locks of a pass (none in a dry run, which only reads the records), and the
/// target names whose records they hold.
#[derive(Debug, Default)]
pub(crate) struct Held {
    dir: PathBuf,
    held: BTreeSet<String>,
    _guards: Vec<LockGuard>,
    /// Target name (as the pass names it) -> the stem of its resource.
    targets: BTreeMap<String, String>,
    read_only: bool,
}

/// Take the lock of every resource, in sorted order (so two runs never wait on each other
/// crosswise), each waiting up to what is left of `timeout`. `targets` maps the pass's target
/// names to their resources, whose records [`Held`] reads and writes. A dry run takes no lock.
pub(crate) async fn acquire_all(
    dir: &Path,
    resources: &[Resource],
    targets: BTreeMap<String, Resource>,
    timeout: Duration,
    dry_run: bool,
) -> Result<Held, Error> {
    let stems: BTreeSet<String> = resources
        .iter()
        .chain(targets.values())
        .map(Resource::stem)
        .collect();
    let targets = targets.into_iter().map(|(n, r)| (n, r.stem())).collect();
    let mut held = Held {
        dir: dir.to_path_buf(),
        held: BTreeSet::new(),
        _guards: Vec::new(),
        targets,
        read_only: dry_run,
    };
    if dry_run {
        return Ok(held);
    }
    ensure_dir(dir)?;
    let start = Instant::now();
    for stem in stems {
        let left = timeout.saturating_sub(start.elapsed());
        let g = acquire(&dir.join(format!("{stem}.lock")), left)
            .await
            .map_err(|e| match e {
                Error::Held { path, .. } => Error::Held {
                    path,
                    waited: timeout,
                },
                e => e,
            })?;
        held._guards.push(g);
        held.held.insert(stem);
    }
    Ok(held)
}

impl Held {
    fn record_path(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.json"))
    }

    /// The target names whose resources this pass holds (or, in a dry run, reads).
    pub(crate) fn targets(&self) -> impl Iterator<Item = &String> {
        self.targets.keys()
    }

    /// The record of target `name`; `None` when there is none yet (a resource no run of this
    /// version has finished with), or `name` is not one of the pass's targets.
    pub(crate) fn record(&self, name: &str) -> Result<Option<Record>, Error> {
        let Some(stem) = self.targets.get(name) else {
            return Ok(None);
        };
        read_record(&self.record_path(stem))
    }

    /// Where the record of `resource` is kept, when this pass holds its lock (a dry run: where
    /// it would be read). For a `.env`, whose record keeps its in-place write journal.
    pub(crate) fn resource_record(&self, resource: &Resource) -> Option<PathBuf> {
        let stem = resource.stem();
        (self.read_only || self.held.contains(&stem)).then(|| self.record_path(&stem))
    }

    /// Where the record of target `name` is kept, when this pass holds its lock (a dry run:
    /// where it would be read).
    pub(crate) fn record_file(&self, name: &str) -> Option<PathBuf> {
        let stem = self.targets.get(name)?;
        (self.read_only || self.held.contains(stem)).then(|| self.record_path(stem))
    }

    /// Change the record of target `name` (when the pass holds its lock).
    pub(crate) fn update(&self, name: &str, change: impl FnOnce(&mut Record)) -> Result<(), Error> {
        let Some(stem) = self.targets.get(name).filter(|s| self.held.contains(*s)) else {
            return Ok(());
        };
        if self.read_only {
            return Ok(());
        }
        update_record(&self.record_path(stem), change)
    }
}

/// A test hook, compiled into debug builds only: `AUDSYNC_TEST_HOLD_APPLY=<path of a FIFO>`
/// holds a pass just before it recreates or rolls out a container (under its locks) until the
/// test releases it -- or, with `AUDSYNC_TEST_HOLD_AT=<step>` (a journal step's snake_case
/// name, e.g. `created`), right after the apply's journal recorded that step instead
/// ([`test_hold_at`]). Entering it creates `<path>.held`; opening the FIFO for reading blocks
/// until the test opens it for writing, and reading ends when the test closes it: a barrier,
/// no timing. A path that is not a FIFO does nothing.
#[cfg(debug_assertions)]
pub(crate) fn test_hold_apply() {
    if std::env::var_os("AUDSYNC_TEST_HOLD_AT").is_none() {
        hold();
    }
}

/// The hold of [`test_hold_apply`] at journal step `step` (debug builds only).
#[cfg(debug_assertions)]
pub(crate) fn test_hold_at(step: &str) {
    if std::env::var_os("AUDSYNC_TEST_HOLD_AT").is_some_and(|s| s == step) {
        hold();
    }
}

#[cfg(debug_assertions)]
fn hold() {
    use std::os::unix::fs::FileTypeExt;
    let Some(fifo) = std::env::var_os("AUDSYNC_TEST_HOLD_APPLY") else {
        return;
    };
    let fifo = PathBuf::from(fifo);
    if !std::fs::symlink_metadata(&fifo).is_ok_and(|m| m.file_type().is_fifo()) {
        return;
    }
    let mut held = fifo.clone().into_os_string();
    held.push(".held");
    let _ = std::fs::write(&held, "");
    tracing::debug!(fifo = %fifo.display(), "test hook: holding the apply");
    let _ = std::fs::read(&fifo);
}

/// Release builds have no hook (`test_hold_at` is called only from debug-only code).
#[cfg(not(debug_assertions))]
pub(crate) fn test_hold_apply() {}

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

    #[test]
    fn the_lock_directory_is_private_and_never_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("locks");
        ensure_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        ensure_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = ensure_dir(&link).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        // Another user's directory (only root can set that up) is refused.
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_ok() {
            let e = ensure_dir(&theirs).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }

    #[test]
    fn a_flag_runs_own_lock_is_never_its_env_files_lock() {
        let p = PathBuf::from("/srv/app/.env");
        assert_ne!(
            Resource::FlagRun(p.clone()).stem(),
            Resource::EnvFile(p).stem()
        );
    }

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
