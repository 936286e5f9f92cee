//! Small persistent state, one file per configuration (next to the config file, or to the `.env`
//! of a flag-only run): container actions still owed, and where each host's application was last
//! found (so a no-change pass costs one API request per binding at most, or one listing).
//!
//! The file is JSON, written atomically with mode 0600. It holds no secret. Losing it is safe:
//! the next run looks the application up again, and drift detection still sees containers
//! whose environment carries the key. It also remembers an Infisical write held for approval
//! (so it is not submitted again every pass) and the last refused Infisical login (so no run
//! logs in again before the hold-off has passed; see `sink::infisical`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsx;
use crate::lock::InPlaceWrite;
use crate::reconcile::{self, Journal};

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The file cannot be read safely (a symlink, another user's, not a regular file, too
    /// large, or an I/O error): fsx's refusal, which names the file.
    #[error("the state file: {0}")]
    Read(crate::fsx::Error),
    /// Writing it failed.
    #[error("{}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state could not be encoded.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The file was written by a newer audsync: this binary neither reads nor writes it.
    #[error(
        "{}: written by a newer audsync (state schema {found}; this binary knows up to {SCHEMA_VERSION}); upgrade this audsync (an older and a newer one share the file, e.g. cron on the host and `watch` in a container); the file was left as it is",
        .path.display()
    )]
    Newer { path: PathBuf, found: u64 },
}

/// The state file's schema. 1: files without `schema_version` (audsync before it was
/// recorded). 2: `schema_version` itself, the AUD values of a journalled in-place write
/// (`in_place_writes[].values`), and the single cached `app` of old moved into `apps`. 3: the
/// in-place `.env` write journal lives in the record beside the `.env`'s lock
/// (`lock::Record::in_place_write`); `in_place_writes` is only read, and the next pass moves
/// its entries into the records (`sink::env::recover_in_place`). An older binary would not see
/// that journal -- it would take a torn file for the user's and remove the safety copy -- so it
/// must refuse the file. A newer binary migrates an older file on read; an older binary
/// refuses a newer file ([`Error::Newer`]) and never writes over it.
pub(crate) const SCHEMA_VERSION: u64 = 3;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The schema the file was written with ([`SCHEMA_VERSION`] once loaded: older files are
    /// migrated on read).
    #[serde(default)]
    pub(crate) schema_version: u64,
    /// Containers that still need a restart/recreate for the values already in the sinks.
    #[serde(default)]
    pub(crate) owed: BTreeSet<String>,
    /// Where the application for a host was last found (a flag-only run's single binding; kept
    /// for state files of older versions, read into `apps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) app: Option<CachedApp>,
    /// Where the application for each host was last found.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) apps: BTreeMap<String, CachedApp>,
    /// The application that last served each host (also a wildcard one): a change of name or
    /// kind is reported loudly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) served: BTreeMap<String, ServedApp>,
    /// How many applications the account had at the last full listing: decides whether a pass
    /// asks for each cached application or lists them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) app_count: Option<u64>,
    /// The page size the server served at that listing (it may cap the `per_page` asked for):
    /// what a listing costs in requests. Absent: the size asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) page_size: Option<u64>,
    /// The values each container last ran with after a pass (restarted, recreated, or found in
    /// sync), by key. A container whose value here differs from the desired one is owed an
    /// action even when this run wrote nothing: the sink was changed by someone else (another
    /// host sharing the Infisical secret, a person, `setup` elsewhere).
    #[serde(default, deserialize_with = "applied_compat")]
    pub(crate) applied: BTreeMap<String, BTreeMap<String, String>>,
    /// Infisical writes held back for approval: not submitted again while they wait.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "one_or_many")]
    pub(crate) infisical_pending: Vec<PendingWrite>,
    /// Recreates in progress, by the id of the container being replaced: the record that lets
    /// a later pass finish or undo one that was cut short (never a name alone). Written only
    /// through [`StateFile::update`]; [`StateFile::save`] keeps the file's copy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) recreating: BTreeMap<String, RecreateRecord>,
    /// The last Universal Auth login Infisical refused (401/403). Written only through
    /// [`StateFile::update`]; [`StateFile::save`] keeps the file's copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) infisical_login_refused: Option<LoginRefusal>,
    /// The failed `sync` runs in a row, for notifications (one `failed` when a streak starts,
    /// one `recovered` when it ends). Written only through [`StateFile::update`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failure_streak: Option<FailureStreak>,
    /// In-place `.env` writes journalled here by older versions (this one keeps the journal
    /// in the record beside the `.env`'s lock, see `lock::Record::in_place_write`): read so
    /// that the next pass moves each into its record, finishes it there, and drops it from
    /// here (`sink::env::recover_in_place`). Never added to by this version; written only
    /// through [`StateFile::update`]; [`StateFile::save`] keeps the file's copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) in_place_writes: Vec<InPlaceWrite>,
    /// Containers given by id (or id prefix) -> the name they had: a recreate gives a new
    /// id, and the next run finds the container by this name instead of chasing the dead id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) container_names: BTreeMap<String, String>,
    /// `--source edge`: by host (lowercase), the `iat` of the signed metadata that last set its
    /// value, and that value. Older metadata that would change it is a replay and is refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) edge_issued: BTreeMap<String, EdgeIssued>,
}

/// The signed edge metadata that last set a host's value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct EdgeIssued {
    /// Unix seconds (the metadata's `iat`).
    pub(crate) iat: i64,
    pub(crate) aud: String,
}

/// A run of failed `sync` runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct FailureStreak {
    pub(crate) failures: u32,
    /// Unix seconds of the first failure.
    pub(crate) since: u64,
}

impl State {
    /// The cached application for `host` (older files kept one in `app`).
    /// An entry whose application id is not a UUID, or whose account id is not one, is not
    /// used (the file is data, never a path): the host is looked up again.
    pub(crate) fn cached_app(&self, host: &str) -> Option<&CachedApp> {
        self.apps
            .get(host)
            .or(self.app.as_ref().filter(|a| a.host == host))
            .filter(|c| {
                let ok = crate::cloudflare::is_uuid(&c.app_id)
                    && crate::cloudflare::is_account_id(&c.account_id);
                if !ok {
                    tracing::warn!(
                        host,
                        "the cached application or account id is not one; ignored"
                    );
                }
                ok
            })
    }
}

/// Older state files recorded one value per container (`{"name": "aud"}`): read it as the
/// value of an unknown key, which simply makes the next pass look again.
fn applied_compat<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Keys(BTreeMap<String, String>),
        Old(#[allow(dead_code)] String),
    }
    let raw: BTreeMap<String, Entry> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, e)| match e {
            Entry::Keys(m) => (k, m),
            Entry::Old(_) => (k, BTreeMap::new()),
        })
        .collect())
}

/// One pending write is stored as an object (as older versions did), several as an array.
mod one_or_many {
    use super::PendingWrite;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[PendingWrite], s: S) -> Result<S::Ok, S::Error> {
        match v {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<PendingWrite>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(PendingWrite),
            Many(Vec<PendingWrite>),
        }
        Ok(match Option::<OneOrMany>::deserialize(d)? {
            None => vec![],
            Some(OneOrMany::One(p)) => vec![p],
            Some(OneOrMany::Many(v)) => v,
        })
    }
}

/// A write Infisical answered with `approval` instead of `secret`: the value is not live yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingWrite {
    /// `project/environment/path`.
    pub(crate) location: String,
    pub(crate) key: String,
    /// The value submitted (an AUD: not a secret).
    pub(crate) value: String,
    /// The change request's slug or id, when the answer carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) request: Option<String>,
    /// When it was submitted (Unix seconds).
    pub(crate) since: u64,
}

/// A refused login of one machine identity at one Infisical host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginRefusal {
    pub(crate) host: String,
    pub(crate) client_id: String,
    /// When it was refused (Unix seconds).
    pub(crate) at: u64,
    /// Infisical's answer (status and message; never a credential).
    pub(crate) reason: String,
    /// Infisical said the identity is temporarily locked (its answer carries no duration).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) locked: bool,
    /// How long no login is tried after `at` (seconds); absent in older files: the configured
    /// hold-off. Grows while the identity stays locked, up to the 24 h Infisical allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) holdoff: Option<u64>,
}

/// One recreate in progress: the container's name and the new container's id (the key is the
/// old container's id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RecreateRecord {
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) new_id: Option<String>,
}

/// The application that served a host at the last lookup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ServedApp {
    pub(crate) app_id: String,
    pub(crate) name: String,
    /// `exact`, or the `*.` pattern that covered the host.
    pub(crate) matched: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct CachedApp {
    pub(crate) host: String,
    pub(crate) account_id: String,
    pub(crate) app_id: String,
}

#[derive(Debug)]
pub(crate) struct StateFile {
    pub(crate) path: PathBuf,
    pub(crate) state: State,
    /// Set by `--dry-run`: reads only.
    pub(crate) read_only: bool,
}

impl StateFile {
    /// Load. A missing file is an empty state; a corrupt one is ignored with a warning (it is
    /// only a cache and a journal: the worst case is one extra lookup or restart); a file that
    /// exists but cannot be read is an error, so it is never silently overwritten.
    pub(crate) fn load(path: &Path, read_only: bool) -> Result<StateFile, Error> {
        // Not through a symlink, and only a file of the user running (fsx::read_private).
        let state = match fsx::read_private(path, fsx::MAX_TEXT).map_err(Error::Read)? {
            Some(b) => decode(path, &b)?,
            None => State::default(),
        };
        Ok(StateFile {
            path: path.to_path_buf(),
            state,
            read_only,
        })
    }

    /// Write the state. The login refusal is not this copy's to write: the file's is kept
    /// (it may have been recorded since this copy was loaded).
    pub(crate) fn save(&self) -> Result<(), Error> {
        if self.read_only {
            return Ok(());
        }
        let mut state = self.state.clone();
        let on_disk = match StateFile::load(&self.path, true) {
            Ok(f) => Some(f.state),
            // Never over a newer binary's file.
            Err(e @ Error::Newer { .. }) => return Err(e),
            Err(_) => None,
        };
        state.infisical_login_refused = on_disk
            .as_ref()
            .and_then(|s| s.infisical_login_refused.clone());
        state.failure_streak = on_disk.as_ref().and_then(|s| s.failure_streak);
        state.in_place_writes = on_disk
            .as_ref()
            .map(|s| s.in_place_writes.clone())
            .unwrap_or_default();
        state.recreating = on_disk.map(|s| s.recreating).unwrap_or_default();
        write(&self.path, &state)
    }

    /// Load the file afresh, change it and write it at once (also for a read-only run: used
    /// only for the login refusal, which protects the machine identity).
    pub(crate) fn update(path: &Path, change: impl FnOnce(&mut State)) -> Result<(), Error> {
        let mut state = StateFile::load(path, true)?.state;
        change(&mut state);
        write(path, &state)
    }
}

/// Read the file's bytes: a newer schema is refused before anything else is looked at (its
/// fields may mean something else); an older one is migrated; a corrupt file is ignored with a
/// warning (it is only a cache and a journal).
fn decode(path: &Path, b: &[u8]) -> Result<State, Error> {
    let value: serde_json::Value = match serde_json::from_slice(b) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable state file");
            return Ok(State::default());
        }
    };
    let found = match value.get("schema_version") {
        None => 1,
        Some(v) => v.as_u64().unwrap_or(u64::MAX),
    };
    if found > SCHEMA_VERSION {
        return Err(Error::Newer {
            path: path.to_path_buf(),
            found,
        });
    }
    let mut state: State = match serde_json::from_value(value) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable state file");
            return Ok(State::default());
        }
    };
    if found < 2 {
        // 1 -> 2: the single cached application of old joins the map.
        if let Some(app) = state.app.take() {
            state.apps.entry(app.host.clone()).or_insert(app);
        }
    }
    // 2 -> 3: nothing to change on read; the in-place entries (`in_place_writes`) are moved into
    // the records beside the `.env` locks by the next pass, which holds those locks.
    if found < SCHEMA_VERSION {
        tracing::info!(path = %path.display(), from = found, to = SCHEMA_VERSION, "migrated the state file");
    }
    state.schema_version = SCHEMA_VERSION;
    Ok(state)
}

/// The temporary files of [`write`]: `.audsync-state-XXXXXX.tmp` beside the state file.
const TEMP_PREFIX: &str = ".audsync-state-";
const TEMP_SUFFIX: &str = ".tmp";

fn state_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether `name` is one of [`write`]'s temporary files.
fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .and_then(|r| r.strip_suffix(TEMP_SUFFIX))
        .is_some_and(|mid| {
            (1..=16).contains(&mid.len()) && mid.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

impl StateFile {
    /// Remove the temporary files a run killed while writing the state file at `path` left
    /// beside it. A temporary file is held locked by its writer until it is renamed into
    /// place, so one still being written (a process outside the pass lock: a dry run, the
    /// notification bookkeeping) is left alone. Call under the pass lock, never in a dry run.
    /// Returns the names removed.
    pub(crate) fn remove_leftovers(path: &Path) -> Vec<String> {
        let Ok(rd) = fs::read_dir(state_dir(path)) else {
            return vec![];
        };
        let mut removed = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_temp_name(&name) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            // Not through a symlink (swapped in since the listing), never blocking.
            let opened = fs::OpenOptions::new()
                .read(true)
                .custom_flags(
                    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
                )
                .open(e.path());
            let Ok(f) = opened else { continue };
            if !f.metadata().is_ok_and(|m| m.is_file()) || f.try_lock().is_err() {
                continue;
            }
            // Removed while locked: a writer that created it meanwhile finds it unlinked.
            if fs::remove_file(e.path()).is_ok() {
                tracing::info!(file = %e.path().display(), "removed a temporary state file left by an earlier run that was cut short");
                removed.push(name);
            }
        }
        removed
    }
}

fn write(path: &Path, state: &State) -> Result<(), Error> {
    let io = |source: std::io::Error| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = state_dir(path);
    let mut tmp = locked_temp(dir).map_err(io)?;
    let state = State {
        schema_version: SCHEMA_VERSION,
        ..state.clone()
    };
    let body = serde_json::to_vec_pretty(&state)?;
    tmp.write_all(&body).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A new temporary file in `dir`, locked (`flock`) so [`StateFile::remove_leftovers`] knows it
/// is being written. One removed by a leftover cleaner between its creation and the lock is
/// unlinked by then: a fresh one is made.
fn locked_temp(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..3 {
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(TEMP_SUFFIX)
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)?;
        tmp.as_file().lock()?;
        if tmp.as_file().metadata()?.nlink() > 0 {
            return Ok(tmp);
        }
    }
    Err(std::io::Error::other(
        "the temporary file kept being removed while it was written",
    ))
}

impl Journal for StateFile {
    fn owed(&self) -> BTreeSet<String> {
        self.state.owed.clone()
    }

    fn set_owed(&mut self, names: &BTreeSet<String>) -> Result<(), reconcile::JournalError> {
        self.state.owed = names.clone();
        self.save()
            .map_err(|e| reconcile::JournalError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        let mut s = StateFile::load(&p, false).unwrap();
        assert_eq!(s.state, State::default());
        s.set_owed(&["a".to_string()].into()).unwrap();
        assert_eq!(StateFile::load(&p, false).unwrap().state.owed.len(), 1);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(&p, "{not json").unwrap();
        assert_eq!(StateFile::load(&p, false).unwrap().state, State::default());
        let dir_as_file = dir.path().to_path_buf();
        assert!(
            StateFile::load(&dir_as_file, false).is_err(),
            "an unreadable state is an error"
        );
        assert_eq!(StateFile::load(&p, false).unwrap().state, State::default());
    }

    #[test]
    fn a_symlinked_or_foreign_state_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        fs::write(&target, "{}").unwrap();
        let link = dir.path().join("s.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = StateFile::load(&link, false).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert!(StateFile::update(&link, |s| s.app_count = Some(1)).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "{}");
        // Owned by another user (only root can set that up).
        let p = dir.path().join("t.json");
        fs::write(&p, "{}").unwrap();
        if std::os::unix::fs::chown(&p, Some(65534), Some(65534)).is_ok() {
            let e = StateFile::load(&p, false).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }

    #[test]
    fn leftover_temp_files_are_removed_unless_a_writer_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        fs::write(dir.path().join(".audsync-state-Ab12Cd.tmp"), "{").unwrap();
        fs::write(dir.path().join(".audsync-state-x.json"), "{").unwrap();
        fs::write(dir.path().join(".audsync-state-a b.tmp"), "{").unwrap();
        let busy = dir.path().join(".audsync-state-Zz9Yy8.tmp");
        let held = fs::File::create(&busy).unwrap();
        held.lock().unwrap();
        assert_eq!(
            StateFile::remove_leftovers(&p),
            vec![".audsync-state-Ab12Cd.tmp".to_string()]
        );
        assert!(busy.exists());
        assert!(dir.path().join(".audsync-state-x.json").exists());
        assert!(dir.path().join(".audsync-state-a b.tmp").exists());
        drop(held);
        // A write of its own leaves nothing behind, and is not disturbed by the cleaner.
        StateFile::update(&p, |s| s.app_count = Some(2)).unwrap();
        assert_eq!(
            StateFile::remove_leftovers(&p),
            vec![".audsync-state-Zz9Yy8.tmp".to_string()]
        );
        assert_eq!(StateFile::load(&p, true).unwrap().state.app_count, Some(2));
    }

    #[test]
    fn an_older_file_is_migrated_and_a_newer_one_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        // Schema 1: no version, the single cached application, an in-place entry without values.
        fs::write(
            &p,
            r#"{"owed":["web"],"app":{"host":"a.example","account_id":"0123456789abcdef0123456789abcdef","app_id":"00000001-0000-4000-8000-000000000000"},"in_place_writes":[{"target":"/x/.env","backup":"/x/.env.audsync-backup","new_len":3,"new_hash":"00"}]}"#,
        )
        .unwrap();
        let s = StateFile::load(&p, false).unwrap();
        assert_eq!(s.state.schema_version, SCHEMA_VERSION);
        assert_eq!(
            s.state.apps["a.example"].app_id,
            "00000001-0000-4000-8000-000000000000"
        );
        assert_eq!(
            s.state.cached_app("a.example").unwrap().app_id,
            "00000001-0000-4000-8000-000000000000"
        );
        assert_eq!(s.state.in_place_writes.len(), 1);
        assert!(s.state.in_place_writes[0].values.is_empty());
        s.save().unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(raw["schema_version"], SCHEMA_VERSION);
        assert_eq!(
            raw["apps"]["a.example"]["app_id"],
            "00000001-0000-4000-8000-000000000000"
        );
        assert_eq!(raw["owed"][0], "web");

        // A newer binary's file: refused by every way in, and never written over.
        let newer = format!(
            r#"{{"schema_version":{},"owed":{{"renamed":"shape"}},"future":true}}"#,
            SCHEMA_VERSION + 1
        );
        fs::write(&p, &newer).unwrap();
        let e = StateFile::load(&p, true).unwrap_err().to_string();
        assert!(e.contains("newer audsync"), "{e}");
        assert!(e.contains(&format!("schema {}", SCHEMA_VERSION + 1)), "{e}");
        assert!(StateFile::update(&p, |st| st.app_count = Some(1)).is_err());
        let mut stale = s;
        stale.state.owed.insert("db".into());
        assert!(
            stale.save().is_err(),
            "a copy loaded earlier does not write over it"
        );
        assert!(stale.set_owed(&["x".to_string()].into()).is_err());
        assert_eq!(fs::read_to_string(&p).unwrap(), newer, "left byte for byte");
    }

    /// Schema 2 kept the in-place journal here: its entries are still read (the next pass moves
    /// them beside the `.env`'s lock) and the file is written back as schema 3, which a schema-2
    /// binary (that would not look for the journal there) refuses.
    #[test]
    fn a_schema_2_file_keeps_its_in_place_entries_for_the_pass_and_becomes_3() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        fs::write(
            &p,
            r#"{"schema_version":2,"in_place_writes":[{"target":"/x/.env","backup":"/x/.env.audsync-backup","new_len":3,"new_hash":"00","values":{"K":"v"}}]}"#,
        )
        .unwrap();
        let s = StateFile::load(&p, false).unwrap();
        assert_eq!(s.state.in_place_writes.len(), 1);
        assert_eq!(s.state.in_place_writes[0].values["K"], "v");
        s.save().unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(raw["schema_version"], 3);
        assert_eq!(raw["in_place_writes"][0]["target"], "/x/.env");
    }

    #[test]
    fn save_keeps_a_login_refusal_recorded_since_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        let mut pass = StateFile::load(&p, false).unwrap();
        let refusal = LoginRefusal {
            host: "https://infisical.example".into(),
            client_id: "id".into(),
            at: 1,
            reason: "HTTP 401".into(),
            locked: false,
            holdoff: None,
        };
        StateFile::update(&p, |s| s.infisical_login_refused = Some(refusal.clone())).unwrap();
        pass.set_owed(&["a".to_string()].into()).unwrap();
        let now = StateFile::load(&p, false).unwrap().state;
        assert_eq!(now.infisical_login_refused, Some(refusal));
        assert_eq!(now.owed.len(), 1);
        StateFile::update(&p, |s| s.infisical_login_refused = None).unwrap();
        pass.save().unwrap();
        assert_eq!(
            StateFile::load(&p, false)
                .unwrap()
                .state
                .infisical_login_refused,
            None
        );
    }
}
