//! Small persistent state next to the `.env` file: container actions still owed, and the
//! application id last found for the host (so a no-change pass costs one API request).
//!
//! The file is JSON, written atomically with mode 0600. It holds no secret. Losing it is safe:
//! the next run looks the application up again, and drift detection still sees containers
//! whose environment carries the key. It also remembers an Infisical write held for approval
//! (so it is not submitted again every pass) and the last refused Infisical login (so no run
//! logs in again before the hold-off has passed; see `sink::infisical`).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::reconcile::Journal;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Containers that still need a restart/recreate for the value already in the sinks.
    #[serde(default)]
    pub owed: BTreeSet<String>,
    /// Where the application for a host was last found.
    #[serde(default)]
    pub app: Option<CachedApp>,
    /// The value each container last ran with after a pass (restarted, recreated, or found in
    /// sync). A container whose value here differs from the desired one is owed an action even
    /// when this run wrote nothing: the sink was changed by someone else (another host sharing
    /// the Infisical secret, a person, `setup` elsewhere).
    #[serde(default)]
    pub applied: std::collections::BTreeMap<String, String>,
    /// An Infisical write held back for approval: not submitted again while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infisical_pending: Option<PendingWrite>,
    /// The last Universal Auth login Infisical refused (401/403). Written only through
    /// [`StateFile::update`]; [`StateFile::save`] keeps the file's copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infisical_login_refused: Option<LoginRefusal>,
}

/// A write Infisical answered with `approval` instead of `secret`: the value is not live yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingWrite {
    /// `project/environment/path`.
    pub location: String,
    pub key: String,
    /// The value submitted (an AUD: not a secret).
    pub value: String,
    /// The change request's slug or id, when the answer carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// When it was submitted (Unix seconds).
    pub since: u64,
}

/// A refused login of one machine identity at one Infisical host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginRefusal {
    pub host: String,
    pub client_id: String,
    /// When it was refused (Unix seconds).
    pub at: u64,
    /// Infisical's answer (status and message; never a credential).
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedApp {
    pub host: String,
    pub account_id: String,
    pub app_id: String,
}

#[derive(Debug)]
pub struct StateFile {
    pub path: PathBuf,
    pub state: State,
    /// Set by `--dry-run`: reads only.
    pub read_only: bool,
}

impl StateFile {
    /// Load. A missing file is an empty state; a corrupt one is ignored with a warning (it is
    /// only a cache and a journal: the worst case is one extra lookup or restart); a file that
    /// exists but cannot be read is an error, so it is never silently overwritten.
    pub fn load(path: &Path, read_only: bool) -> Result<StateFile, String> {
        let state = match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable state file");
                State::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(format!("cannot read the state file {}: {e}", path.display())),
        };
        Ok(StateFile {
            path: path.to_path_buf(),
            state,
            read_only,
        })
    }

    /// Write the state. The login refusal is not this copy's to write: the file's is kept
    /// (it may have been recorded since this copy was loaded).
    pub fn save(&self) -> Result<(), String> {
        if self.read_only {
            return Ok(());
        }
        let mut state = self.state.clone();
        state.infisical_login_refused = StateFile::load(&self.path, true)
            .ok()
            .and_then(|f| f.state.infisical_login_refused);
        write(&self.path, &state)
    }

    /// Load the file afresh, change it and write it at once (also for a read-only run: used
    /// only for the login refusal, which protects the machine identity).
    pub fn update(path: &Path, change: impl FnOnce(&mut State)) -> Result<(), String> {
        let mut state = StateFile::load(path, true)?.state;
        change(&mut state);
        write(path, &state)
    }
}

fn write(path: &Path, state: &State) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".audsync-state-")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let body = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    tmp.write_all(&body)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| format!("{}: {}", path.display(), e.error))?;
    Ok(())
}

impl Journal for StateFile {
    fn owed(&self) -> BTreeSet<String> {
        self.state.owed.clone()
    }

    fn set_owed(&mut self, names: &BTreeSet<String>) -> Result<(), String> {
        self.state.owed = names.clone();
        self.save()
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
    fn save_keeps_a_login_refusal_recorded_since_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        let mut pass = StateFile::load(&p, false).unwrap();
        let refusal = LoginRefusal {
            host: "https://infisical.example".into(),
            client_id: "id".into(),
            at: 1,
            reason: "HTTP 401".into(),
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
