//! The journal of every apply that changes a container or a service (recreate, rollout, Swarm
//! update): written before the first change, brought up to date at each step, cleared when the
//! apply is over. It is kept with the resource -- in the record beside the container's or
//! service's lock (`<lock>.json`, see `lock.rs`) -- not in one configuration's state file, so
//! whichever run takes that lock next (`sync` or `watch`, any configuration) finishes it
//! ([`super::recover`] for a container, [`super::swarm`] for a service).
//!
//! Only the container ids it records authorise a later run to remove a container: the new one
//! audsync created, and the user's original moved aside. Older versions kept a recreate's
//! journal in the state file (`recreating`); those entries are still read, and cleared once
//! the recreate they record is over. A Swarm update records the service's id, the version
//! index it was sent at and, per key, a hash of the value it sets -- never a value. This module
//! never talks to the engine.

use std::path::{Path, PathBuf};

use crate::lock::FailedUpdate;
pub(crate) use crate::lock::{ApplyKind, ApplyStep, Applying};

/// Where one container's journal is kept.
#[derive(Debug, Clone, Default)]
pub(super) struct Journal {
    /// The record beside the container's lock; `None`: no journal, so no recovery acts.
    record: Option<PathBuf>,
    /// An older version's state file, read for `recreating` entries only.
    legacy: Option<PathBuf>,
}

/// Why the journal could not be written.
pub(super) type Error = crate::lock::Error;

impl Journal {
    pub(super) fn new(record: Option<&Path>, legacy: Option<&Path>) -> Journal {
        Journal {
            record: record.map(Path::to_path_buf),
            legacy: legacy.map(Path::to_path_buf),
        }
    }

    /// Whether anything is recorded at all (else nothing may be recovered).
    pub(super) fn enabled(&self) -> bool {
        self.record.is_some()
    }

    /// Record an apply about to begin. Refuses when the record cannot be written: nothing is
    /// changed without its journal.
    pub(super) fn begin(&self, a: &Applying) -> Result<(), Error> {
        let Some(path) = &self.record else {
            return Ok(());
        };
        crate::lock::update_record(path, |r| r.applying = Some(a.clone()))?;
        kill_point(a.step);
        Ok(())
    }

    /// The apply reached `step` (`new_id`: the new container, once created).
    pub(super) fn step(&self, step: ApplyStep, new_id: Option<&str>) -> Result<(), Error> {
        let Some(path) = &self.record else {
            return Ok(());
        };
        crate::lock::update_record(path, |r| {
            if let Some(a) = r.applying.as_mut() {
                a.step = step;
                if let Some(id) = new_id {
                    a.new_id = Some(id.to_string());
                }
                if step == ApplyStep::Healthy {
                    a.healthy = true;
                }
            }
        })?;
        kill_point(step);
        Ok(())
    }

    /// [`Journal::step`], where a failure to write is only logged: the apply goes on, and a
    /// run that finds the older step still decides safely (a step it thinks not reached is
    /// checked against what exists).
    pub(super) fn note(&self, step: ApplyStep, new_id: Option<&str>) {
        if let Err(e) = self.step(step, new_id) {
            tracing::warn!(error = %e, "cannot record the step of the apply");
        }
    }

    /// The apply is over (done, undone, or recovered): clear its record (and an older
    /// version's entry for `old_id` in the state file).
    pub(super) fn clear(&self, old_id: &str) {
        if let Some(path) = &self.record
            && let Err(e) = crate::lock::update_record(path, |r| {
                if r.applying.as_ref().is_some_and(|a| a.old_id == old_id) {
                    r.applying = None;
                }
            })
        {
            tracing::warn!(error = %e, "cannot clear the journal of the apply");
        }
        if let Some(path) = &self.legacy
            && legacy_has(path, old_id)
        {
            super::ops::forget(Some(path), old_id);
        }
    }

    /// A Swarm update failed (Swarm stopped it, or it timed out): before audsync puts the
    /// previous value back, record that step and remember `failed` in the same write, so a
    /// run killed during the rollback leaves the failure known to the next one.
    pub(super) fn rolling_back(&self, failed: &FailedUpdate) -> Result<(), Error> {
        let Some(path) = &self.record else {
            return Ok(());
        };
        crate::lock::update_record(path, |r| {
            if let Some(a) = r.applying.as_mut() {
                a.step = ApplyStep::RollingBack;
            }
            r.failed = Some(failed.clone());
        })?;
        kill_point(ApplyStep::RollingBack);
        Ok(())
    }

    /// The Swarm update recorded for service `service` (as the pass names it), if any.
    pub(super) fn pending_update(&self, service: &str) -> Option<Applying> {
        let path = self.record.as_ref()?;
        match crate::lock::read_record(path) {
            Ok(r) => r?
                .applying
                .filter(|a| a.kind == ApplyKind::SwarmUpdate && a.name == service),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the journal of the service");
                None
            }
        }
    }

    /// The apply recorded for container `name`, if any: the record's first, else an older
    /// version's state-file entry (migrated: finished like any other, then cleared).
    pub(super) fn pending(&self, name: &str) -> Option<Applying> {
        let path = self.record.as_ref()?;
        match crate::lock::read_record(path) {
            Ok(Some(r))
                if r.applying
                    .as_ref()
                    .is_some_and(|a| a.name == name && a.kind != ApplyKind::SwarmUpdate) =>
            {
                return r.applying;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the journal of the container"),
        }
        let (old_id, new_id) = super::ops::records(self.legacy.as_deref(), name)
            .into_iter()
            .next()?;
        Some(Applying {
            kind: ApplyKind::Recreate,
            name: name.to_string(),
            old_id,
            spec_hash: String::new(),
            // Decided from what is found (see recover.rs).
            was_running: true,
            new_name: String::new(),
            aside: String::new(),
            new_id,
            step: ApplyStep::Legacy,
            healthy: false,
            version: None,
            values: Default::default(),
        })
    }
}

fn legacy_has(path: &Path, old_id: &str) -> bool {
    crate::state::StateFile::load(path, true).is_ok_and(|f| f.state.recreating.contains_key(old_id))
}

/// A short stable hash of a create body (FNV-1a over its JSON), for the journal.
pub(super) fn spec_hash(body: &bollard::models::ContainerCreateBody) -> String {
    fnv(&serde_json::to_vec(body).unwrap_or_default())
}

/// A short stable hash of one value a Swarm update sets (FNV-1a): the journal holds this,
/// never the value.
pub(super) fn value_hash(value: &str) -> String {
    fnv(value.as_bytes())
}

fn fnv(bytes: &[u8]) -> String {
    format!("{:016x}", crate::tag::fnv1a(bytes))
}

/// Test hooks, compiled into debug builds only, right after the journal recorded `step` (its
/// snake_case name, e.g. `started`, `sent`, `rolling_back`): `AUDSYNC_TEST_KILL_AT=<step>` kills the process with SIGKILL -- a kill at
/// an exact step, no timing; `AUDSYNC_TEST_HOLD_AT=<step>` holds it on the FIFO of
/// `AUDSYNC_TEST_HOLD_APPLY` until the test releases it (see `lock::test_hold_apply`).
#[cfg(debug_assertions)]
fn kill_point(step: ApplyStep) {
    let name = serde_json::to_value(step)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    crate::lock::test_hold_at(&name);
    let Some(want) = std::env::var_os("AUDSYNC_TEST_KILL_AT") else {
        return;
    };
    if want.to_string_lossy() == name {
        tracing::warn!(step = %name, "test hook: killed at this step");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Release builds have no hook.
#[cfg(not(debug_assertions))]
fn kill_point(_: ApplyStep) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn applying() -> Applying {
        Applying {
            kind: ApplyKind::Rollout,
            name: "app".into(),
            old_id: "old".into(),
            spec_hash: "h".into(),
            was_running: true,
            new_name: "app-audsync-new-x".into(),
            aside: "app-audsync-old-x".into(),
            new_id: None,
            step: ApplyStep::Begun,
            healthy: false,
            version: None,
            values: Default::default(),
        }
    }

    #[test]
    fn the_journal_is_kept_beside_the_lock_and_cleared_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("container-app-0.json");
        let j = Journal::new(Some(&rec), None);
        j.begin(&applying()).unwrap();
        j.step(ApplyStep::Created, Some("new")).unwrap();
        j.step(ApplyStep::Started, None).unwrap();
        let a = j.pending("app").unwrap();
        assert_eq!(
            (a.new_id.as_deref(), a.step, a.healthy),
            (Some("new"), ApplyStep::Started, false)
        );
        j.step(ApplyStep::Healthy, None).unwrap();
        assert!(j.pending("app").unwrap().healthy);
        // Another configuration's run (same record, no state file of its own) sees it.
        let other = Journal::new(Some(&rec), None);
        assert_eq!(other.pending("app").unwrap().old_id, "old");
        assert!(other.pending("else").is_none());
        j.clear("old");
        assert!(j.pending("app").is_none());
        // The rest of the record (owed, ran_with) is kept as it was.
        crate::lock::update_record(&rec, |r| r.owed = true).unwrap();
        j.begin(&applying()).unwrap();
        j.clear("old");
        assert!(crate::lock::read_record(&rec).unwrap().unwrap().owed);
    }

    #[test]
    fn an_older_state_files_recreate_entry_is_read_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("container-app-0.json");
        let state = dir.path().join("state.json");
        std::fs::write(
            &state,
            r#"{"recreating": {"old1": {"name": "app", "new_id": "new1"}}}"#,
        )
        .unwrap();
        let j = Journal::new(Some(&rec), Some(&state));
        let a = j.pending("app").unwrap();
        assert_eq!(
            (a.kind, a.old_id.as_str(), a.new_id.as_deref(), a.step),
            (ApplyKind::Recreate, "old1", Some("new1"), ApplyStep::Legacy)
        );
        j.clear("old1");
        assert!(j.pending("app").is_none());
        let left = std::fs::read_to_string(&state).unwrap();
        assert!(!left.contains("recreating"), "{left}");
    }

    #[test]
    fn a_swarm_updates_journal_is_its_services_alone_and_its_rollback_remembers_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("swarm-web-0.json");
        let j = Journal::new(Some(&rec), None);
        let update = Applying {
            kind: ApplyKind::SwarmUpdate,
            name: "web".into(),
            old_id: "svc1".into(),
            step: ApplyStep::Begun,
            version: Some(7),
            values: [("KEY".to_string(), value_hash("aud"))].into(),
            ..applying()
        };
        j.begin(&update).unwrap();
        j.step(ApplyStep::Sent, None).unwrap();
        let a = j.pending_update("web").unwrap();
        assert_eq!((a.step, a.version), (ApplyStep::Sent, Some(7)));
        assert!(j.pending("web").is_none(), "not a container's apply");
        assert!(j.pending_update("other").is_none());
        let failed = FailedUpdate {
            values: [("KEY".to_string(), "aud".to_string())].into(),
            at: 1,
            attempts: 1,
        };
        j.rolling_back(&failed).unwrap();
        let r = crate::lock::read_record(&rec).unwrap().unwrap();
        assert_eq!(r.applying.unwrap().step, ApplyStep::RollingBack);
        assert_eq!(r.failed, Some(failed.clone()));
        j.clear("svc1");
        let r = crate::lock::read_record(&rec).unwrap().unwrap();
        assert_eq!((r.applying, r.failed), (None, Some(failed)));
        // A container's journal is never taken for a service's.
        j.begin(&applying()).unwrap();
        assert!(j.pending_update("app").is_none());
    }

    #[test]
    fn a_record_written_before_swarm_updates_were_journalled_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("container-app-0.json");
        std::fs::write(
            &rec,
            r#"{"owed": true, "ran_with": {}, "applying": {"kind": "rollout", "name": "app",
                "old_id": "old", "spec_hash": "h", "was_running": true, "new_name": "n",
                "aside": "a", "new_id": "new", "step": "started", "healthy": false}}"#,
        )
        .unwrap();
        let a = Journal::new(Some(&rec), None).pending("app").unwrap();
        assert_eq!(
            (a.kind, a.version, a.values.len()),
            (ApplyKind::Rollout, None, 0)
        );
        // And written back without the new fields (an older binary reads it).
        j_step_roundtrip(&rec);
    }

    fn j_step_roundtrip(rec: &Path) {
        Journal::new(Some(rec), None)
            .step(ApplyStep::Healthy, None)
            .unwrap();
        let text = std::fs::read_to_string(rec).unwrap();
        assert!(
            !text.contains("version") && !text.contains("\"values\""),
            "{text}"
        );
    }

    #[test]
    fn without_a_record_nothing_is_journalled_or_recovered() {
        let j = Journal::new(None, None);
        assert!(!j.enabled());
        j.begin(&applying()).unwrap();
        assert!(j.pending("app").is_none());
    }
}
