//! Swarm services as targets: the value lives in the service's spec
//! (`Spec.TaskTemplate.ContainerSpec.Env`), and Swarm itself rolls the tasks out.
//!
//! An update changes only the entries of the keys the spec carries (order kept, the rest of
//! the spec — its `UpdateConfig` above all — sent back exactly as read), with the version index
//! it was read at; an update refused for a stale index (someone else updated it meanwhile: a
//! 409, or the 500 "update out of sequence" after which the index has moved on) is read again
//! and retried. Then it waits until `UpdateStatus` says `completed` and every running task has
//! the new value; an update that Swarm paused (a new task failed, e.g. its healthcheck) or rolled
//! back is rolled back to the previous spec (`rollback=previous`) and reported as failed. It
//! never creates or removes a service and never prints an environment value.
//!
//! Every update is journalled like a container's recreate ([`super::journal`]): before it is
//! sent, the record beside the service's lock says which service (id), at which version index,
//! and a hash of each value it sets; then `sent`, then `rolling_back` when it failed; cleared
//! when it converged or was rolled back. The next run that takes the service's lock finds it
//! ([`SwarmService::recover`]), compares it with the service it sees, and finishes it: waits for
//! Swarm, resumes or rolls back as its own update would, and reports which.
//!
//! Everything goes through bollard (`inspect_service`, `list_tasks`, `update_service` for the
//! rollback) except reading the spec to change and sending it back: see [`raw`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{Service, ServiceSpec, ServiceUpdateStatusStateEnum, TaskState};
use bollard::query_parameters::ListTasksOptions;
use serde_json::Value;

use super::journal::{ApplyKind, ApplyStep, Applying, Journal, value_hash};
use super::{Error, env_value};
use crate::lock::FailedUpdate;
use crate::reconcile::{ActionError, TargetObservation, Values};

/// How often the service and its tasks are read while Swarm rolls out.
const POLL: Duration = Duration::from_millis(500);
/// Attempts at an update whose version index went stale meanwhile.
const ATTEMPTS: u32 = 5;
/// Swarm's defaults for a service without `UpdateConfig` (Monitor 5 s).
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);
/// Per task when neither --health-timeout nor the service says more: start and turn healthy.
const PER_TASK: Duration = Duration::from_secs(60);
/// How long Swarm may take to finish an update or rollback under way before audsync judges.
const SETTLE: Duration = Duration::from_secs(120);
/// The first wait before values whose update failed are pushed again (then doubling).
const BACKOFF: Duration = Duration::from_secs(5 * 60);
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

use ServiceUpdateStatusStateEnum as S;

/// One Swarm service, by name or id.
pub struct SwarmService {
    docker: std::sync::Arc<Docker>,
    /// The engine's address (`DOCKER_HOST` as config checked it): the raw calls' socket.
    host: String,
    name: String,
    health_timeout: Option<Duration>,
    /// Values whose update failed and was rolled back (see [`update`](Self::update)).
    failed: Option<FailedUpdate>,
    /// The record beside the service's lock, which holds the journal of its update.
    record: Option<PathBuf>,
    /// A recovery rolled back the update of these values in this pass: the pass's update of
    /// them reports that rollback (see [`recover`](Self::recover)).
    recovered: Option<(Values, ActionError)>,
    /// The last recovery finished an update forward.
    finished_forward: bool,
}

impl SwarmService {
    pub(super) fn new(
        docker: std::sync::Arc<Docker>,
        host: &str,
        name: &str,
        health_timeout: Option<Duration>,
    ) -> SwarmService {
        SwarmService {
            docker,
            host: host.to_string(),
            name: name.to_string(),
            health_timeout,
            failed: None,
            record: None,
            recovered: None,
            finished_forward: false,
        }
    }

    /// Keep the journal of its updates in `record` (beside its lock; `None`: no journal).
    pub(crate) fn with_record(mut self, record: Option<PathBuf>) -> SwarmService {
        self.record = record;
        self
    }

    fn journal(&self) -> Journal {
        Journal::new(self.record.as_deref(), None)
    }

    /// The last [`recover`](Self::recover) finished an update forward: the running tasks carry
    /// the values it was setting, so the action the service was owed is done.
    pub(crate) fn finished_forward(&self) -> bool {
        self.finished_forward
    }

    /// Finish an update of this service that a previous run began and did not see through (its
    /// journal is in the service's record): compare what the journal says with the service as
    /// it is, then wait for Swarm, resume, or roll back as that run would have; returns what
    /// was done (with `dry_run`: what would be). Run before observing it.
    pub(crate) async fn recover(&mut self, dry_run: bool) -> Result<Vec<String>, ActionError> {
        self.finished_forward = false;
        let journal = self.journal();
        let Some(j) = journal.pending_update(&self.name) else {
            return Ok(vec![]);
        };
        let found = match raw::inspect(&self.docker, &self.host, &self.name).await {
            Ok(v) => Some(Found::of(&v, &j)),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(self.inspect_failed(e)),
        };
        let step = serde_json::to_value(j.step)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let head = format!(
            "{}: finishing a Swarm update a previous run began (step {step})",
            self.label()
        );
        let finding = decide(&j, found.as_ref());
        if dry_run {
            return Ok(vec![format!(
                "{head}: {}; the next run does it",
                finding.planned()
            )]);
        }
        let id = j.old_id.clone();
        let line = |what: &str| format!("{head}: {what}");
        let done = match finding {
            Finding::Gone => line("the service no longer exists; nothing to finish"),
            Finding::Replaced(other) => line(&format!(
                "another service ({}) has the name now; the journal does not apply to it",
                super::ops::short_id(&other)
            )),
            Finding::NotSent => line(
                "it was never sent (the service is at the version it was read at); nothing to finish",
            ),
            Finding::Changed => line(
                "the service's spec no longer carries the values it was setting (changed since); left to this pass",
            ),
            Finding::Finish(values) => {
                let changes = pairs_of(&values);
                // A failure the killed run recorded is that failure, not another one.
                let recorded = self.failed_of_record();
                let on_fail = match recorded {
                    Some(f) if j.step == ApplyStep::RollingBack && f.values == values => f,
                    recorded => {
                        self.failed = recorded;
                        self.on_fail(&values)
                    }
                };
                let mut tried = false;
                match self
                    .update_inner(
                        &changes,
                        &mut tried,
                        &journal,
                        &on_fail,
                        j.step != ApplyStep::RollingBack,
                    )
                    .await
                {
                    Ok(()) => {
                        self.finished_forward = true;
                        self.failed = None;
                        line("done: every running task carries the new value")
                    }
                    Err(e) if tried && e.rolled_back => {
                        self.failed = Some(on_fail);
                        let e = ActionError {
                            message: line(&e.message),
                            ..e
                        };
                        self.recovered = Some((values, e.clone()));
                        // The journal was cleared by the rollback; the failure is reported
                        // by this pass's update of these values.
                        tracing::warn!(service = %self.name, "{}", e.message);
                        return Ok(vec![e.message]);
                    }
                    // Not finished: the journal stays, the next run tries again.
                    Err(e) => {
                        return Err(ActionError {
                            message: line(&e.message),
                            ..e
                        });
                    }
                }
            }
            Finding::RollBack(previous) => {
                let (state, message) = self.settle(&id).await;
                let keys: Vec<String> = previous.keys().cloned().collect();
                let running = self
                    .running(&id, &keys)
                    .await
                    .map_err(|e| self.inspect_failed(Error::engine("cannot list its tasks", e)))?;
                let replicas = found.as_ref().and_then(|f| f.replicas);
                journal.clear(&id);
                let failed = self.failed_of_record();
                let why = unsettled(state, &message, &previous, &running, replicas);
                let e = ActionError {
                    logs: Vec::new(),
                    rolled_back: why.is_none(),
                    message: match &why {
                        None => line(
                            "the update had failed and was being rolled back: the rollback is finished, the running tasks carry the previous value",
                        ),
                        Some(why) => line(&format!(
                            "the update had failed and was being rolled back: ROLLBACK INCOMPLETE, {why}"
                        )),
                    },
                    hint: Some(format!(
                        "see `docker service ps --no-trunc {}`; fix what the new task complains about, then run sync again",
                        self.name
                    )),
                };
                tracing::warn!(service = %self.name, "{}", e.message);
                match (why, failed) {
                    (None, Some(f)) => {
                        self.failed = Some(f.clone());
                        self.recovered = Some((f.values, e.clone()));
                        return Ok(vec![e.message]);
                    }
                    _ => return Err(e),
                }
            }
        };
        journal.clear(&id);
        tracing::warn!(service = %self.name, "{done}");
        Ok(vec![done])
    }

    /// The failed values remembered in the service's record (written with `rolling_back`).
    fn failed_of_record(&self) -> Option<FailedUpdate> {
        let path = self.record.as_ref()?;
        crate::lock::read_record(path).ok().flatten()?.failed
    }

    /// What is remembered when an update of `values` fails now.
    fn on_fail(&self, values: &Values) -> FailedUpdate {
        let attempts = match &self.failed {
            Some(f) if f.values == *values => f.attempts.saturating_add(1),
            _ => 1,
        };
        FailedUpdate {
            values: values.clone(),
            at: unix_now(),
            attempts,
        }
    }

    /// How reports and the state file name it.
    pub(crate) fn label(&self) -> String {
        label(&self.name)
    }

    /// Whether the engine knows the service (a 404 is `false`; other failures are errors).
    pub(crate) async fn exists(&self) -> Result<bool, ActionError> {
        match self.inspect().await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.inspect_failed(e)),
        }
    }

    pub(crate) async fn observe(&self, keys: &[String]) -> Result<TargetObservation, ActionError> {
        let svc = self.inspect().await.map_err(|e| self.inspect_failed(e))?;
        let spec = svc.spec.clone().unwrap_or_default();
        let env: Values = keys
            .iter()
            .filter_map(|k| Some((k.clone(), env_value(&env_of(&spec), k)?)))
            .collect();
        // Converged is what the running tasks carry, not what the spec says.
        let unsettled = if env.is_empty() {
            None
        } else {
            let id = svc.id.clone().unwrap_or_else(|| self.name.clone());
            let running = self
                .running(&id, keys)
                .await
                .map_err(|e| self.inspect_failed(Error::engine("cannot list its tasks", e)))?;
            let status = svc.update_status.as_ref();
            let why = unsettled(
                status.and_then(|s| s.state),
                status
                    .and_then(|s| s.message.as_deref())
                    .unwrap_or_default(),
                &env,
                &running,
                replicas_of(&spec),
            );
            if why.is_none()
                && let Some(state @ (S::PAUSED | S::ROLLBACK_PAUSED)) = status.and_then(|s| s.state)
            {
                // Paused stays paused: its running tasks carry the values (see docs/swarm.md).
                tracing::info!(service = %self.name, "its update is {state}, but not on the values audsync keeps: left as it is");
            }
            why
        };
        Ok(TargetObservation {
            env,
            // Swarm replaces tasks itself, by the service's own UpdateConfig.
            rollout_blocker: Some("a Swarm service: Swarm rolls it out by its UpdateConfig".into()),
            // The plan shows what the update changes in the spec: the bound keys only.
            shows_env_diff: true,
            unsettled,
            ..TargetObservation::default()
        })
    }

    /// The values of an update that failed and was rolled back, as remembered (the target's
    /// lock record); after [`update`](Self::update), as they are to be remembered.
    pub(crate) fn failed(&self) -> Option<&FailedUpdate> {
        self.failed.as_ref()
    }

    pub(crate) fn remember_failed(&mut self, failed: Option<FailedUpdate>) {
        self.failed = failed;
    }

    /// Set every key of `changes` the spec carries, let Swarm roll it out, wait for the end;
    /// or, when the spec carries them already but the running tasks do not, finish that
    /// update. Values whose update failed and was rolled back are not pushed again before
    /// their backoff has passed.
    pub(crate) async fn update(&mut self, changes: &[(String, String)]) -> Result<(), ActionError> {
        let values: Values = changes.iter().cloned().collect();
        if let Some((v, e)) = self.recovered.take()
            && v == values
        {
            // This pass's recovery just rolled these values back: that is the outcome.
            return Err(e);
        }
        let now = unix_now();
        if let Some(f) = self.failed.as_ref().filter(|f| f.values == values) {
            let due = f.at.saturating_add(backoff(f.attempts).as_secs());
            if now < due {
                return Err(self.held_back(f, due));
            }
        }
        crate::lock::test_hold_apply();
        let mut tried = false;
        let on_fail = self.on_fail(&values);
        let journal = self.journal();
        let result = self
            .update_inner(changes, &mut tried, &journal, &on_fail, true)
            .await;
        match &result {
            Ok(()) => self.failed = None,
            Err(_) if tried => self.failed = Some(on_fail),
            Err(_) => {}
        }
        result
    }

    /// Why values that failed are not pushed again now.
    fn held_back(&self, f: &FailedUpdate, due: u64) -> ActionError {
        let values = f
            .values
            .iter()
            .map(|(k, v)| format!("{k}={}", crate::reconcile::short(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let left = Duration::from_secs(due.saturating_sub(unix_now()));
        self.fail(
            &format!(
                "the update to {values} failed and was rolled back ({} in a row); not pushed again for {} or until the desired value changes",
                f.attempts,
                humantime::format_duration(left)
            ),
            Some(format!(
                "see `docker service ps --no-trunc {}`; fix what the new task complains about (the next try comes after the backoff)",
                self.name
            )),
        )
    }

    /// `journal`: where the update is recorded before it is sent; `on_fail`: what is
    /// remembered (with the `rolling_back` step) when it fails; `resume`: whether an update of
    /// these values found not converged may be resumed (not when it is known to have failed:
    /// then it is rolled back).
    async fn update_inner(
        &self,
        changes: &[(String, String)],
        tried: &mut bool,
        journal: &Journal,
        on_fail: &FailedUpdate,
        resume: bool,
    ) -> Result<(), ActionError> {
        let values: Values = changes.iter().cloned().collect();
        let mut attempt = 0;
        let (id, replicas, monitor, old) = loop {
            attempt += 1;
            // The spec goes back exactly as the engine gave it (see `raw`).
            let (id, version, mut spec, previous) = self.raw_inspect().await?;
            let replicas = spec
                .pointer("/Mode/Replicated/Replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1) as u32;
            let monitor = spec
                .pointer("/UpdateConfig/Monitor")
                .and_then(Value::as_u64)
                .filter(|m| *m > 0)
                .map_or(DEFAULT_MONITOR, Duration::from_nanos);
            let before = env_json(&spec, &values);
            let old = if set_env_json(&mut spec, changes) {
                before
            } else {
                // The spec carries the values: is the service running them?
                let svc = self.inspect().await.map_err(|e| self.inspect_failed(e))?;
                let running = self
                    .running(&id, &values.keys().cloned().collect::<Vec<_>>())
                    .await
                    .map_err(|e| {
                        self.fail(&Error::engine("cannot list its tasks", e).to_string(), None)
                    })?;
                let status = svc.update_status.as_ref();
                let state = status.and_then(|s| s.state);
                let carried: Values = values
                    .iter()
                    .filter(|(k, _)| before.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let message = status
                    .and_then(|s| s.message.as_deref())
                    .unwrap_or_default();
                if unsettled(state, message, &carried, &running, replicas_of_json(&spec)).is_none()
                {
                    return Ok(());
                }
                // What to go back to: what a running task still carries, else the previous spec.
                let old = running
                    .iter()
                    .find(|t| carried.iter().any(|(k, v)| t.get(k) != Some(v)))
                    .map(|t| {
                        carried
                            .keys()
                            .filter_map(|k| Some((k.clone(), t.get(k)?.clone())))
                            .collect::<Values>()
                    })
                    .filter(|o| !o.is_empty())
                    .unwrap_or_else(|| {
                        env_json(&previous, &carried)
                            .into_iter()
                            .filter(|(k, v)| carried.get(k) != Some(v))
                            .collect()
                    });
                if !resume {
                    *tried = true;
                    return Err(self
                        .roll_back(&id, &old, Error::FailedBefore, journal, on_fail)
                        .await);
                }
                if matches!(state, Some(S::UPDATING | S::ROLLBACK_STARTED)) {
                    // An update under way (a run killed while Swarm rolled it out, or Swarm
                    // rolling back by itself): let Swarm finish it, then judge it.
                    tracing::info!(service = %self.name, "an update is under way; waiting for Swarm to finish it");
                    let (done, message) = self.settle(&id).await;
                    match (state, done) {
                        (_, Some(S::COMPLETED)) => {
                            *tried = true;
                            break (id, replicas, monitor, old);
                        }
                        (
                            Some(S::UPDATING),
                            Some(
                                stopped @ (S::PAUSED
                                | S::ROLLBACK_STARTED
                                | S::ROLLBACK_PAUSED
                                | S::ROLLBACK_COMPLETED),
                            ),
                        ) => {
                            // The values failed while nobody watched: what the killed run
                            // would have done, done now.
                            *tried = true;
                            let why = Error::SwarmStopped {
                                state: stopped,
                                message,
                                failed_task: self.failed_task(&id).await,
                            };
                            return Err(self.roll_back(&id, &old, why, journal, on_fail).await);
                        }
                        _ if attempt >= ATTEMPTS => {
                            return Err(self.fail(
                                "Swarm did not finish the update under way",
                                Some(format!("see `docker service inspect {}`", self.name)),
                            ));
                        }
                        _ => continue,
                    }
                }
                // Paused (or done with tasks that carry other values): resume it, the way
                // `docker service update` without changes does, and judge it like any update.
                tracing::warn!(service = %self.name, "its update is {}: resuming it", state.map(|s| s.to_string()).unwrap_or_else(|| "done".into()));
                old
            };
            // Nothing is changed without its journal.
            let sending = Applying {
                kind: ApplyKind::SwarmUpdate,
                name: self.name.clone(),
                old_id: id.clone(),
                spec_hash: String::new(),
                was_running: true,
                new_name: String::new(),
                aside: String::new(),
                new_id: None,
                step: ApplyStep::Begun,
                healthy: false,
                version: Some(version),
                values: hashes(&env_json(&spec, &values)),
            };
            if let Err(e) = journal.begin(&sending) {
                return Err(self.fail(
                    &format!(
                        "cannot record the update before sending it (nothing was changed): {e}"
                    ),
                    None,
                ));
            }
            match raw::update(&self.docker, &self.host, &id, version, &spec, false).await {
                Ok(warnings) => {
                    for w in warnings {
                        // Typically "image could not be accessed on a registry" for local images.
                        tracing::debug!(service = %self.name, "engine: {w}");
                    }
                    *tried = true;
                    journal.note(ApplyStep::Sent, None);
                    break (id, replicas, monitor, old);
                }
                Err(e) if attempt < ATTEMPTS && self.stale(&id, version, &e).await => {
                    tracing::info!(service = %self.name, attempt, "update out of sequence; reading the service again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => {
                    journal.clear(&id);
                    return Err(
                        self.fail(&format!("the update was refused: {}", refused(&e)), None)
                    );
                }
            }
        };
        tracing::info!(service = %self.name, "service updated; Swarm rolls the tasks out");
        let per_task = self.health_timeout.unwrap_or(PER_TASK) + monitor;
        let bound = per_task * replicas + Duration::from_secs(10);
        match self.wait(&id, changes, replicas, bound).await {
            Ok(()) => {
                journal.clear(&id);
                Ok(())
            }
            Err(why) => Err(self.roll_back(&id, &old, why, journal, on_fail).await),
        }
    }

    /// The failure of an update (`why`), after putting `old` back into the spec. The journal
    /// says so first (with the values remembered as failed), and is cleared once the rollback
    /// is done; a rollback that failed leaves it for the next run.
    async fn roll_back(
        &self,
        id: &str,
        old: &Values,
        why: Error,
        journal: &Journal,
        on_fail: &FailedUpdate,
    ) -> ActionError {
        if let Err(e) = journal.rolling_back(on_fail) {
            tracing::warn!(error = %e, "cannot record the rollback of the update");
        }
        let back = if old.is_empty() {
            Err(Error::NothingToRollBackTo)
        } else {
            self.put_back(id, old).await
        };
        if back.is_ok() {
            journal.clear(id);
        }
        ActionError {
            logs: Vec::new(),
            rolled_back: back.is_ok(),
            message: format!(
                "swarm service {}: {why}; {}",
                self.name,
                match back {
                    Ok(()) => "rolled back to the previous value".to_string(),
                    Err(e) => format!("ROLLBACK FAILED: {e}"),
                }
            ),
            hint: Some(format!(
                "see `docker service ps --no-trunc {}`; fix what the new task complains about, then run sync again",
                self.name
            )),
        }
    }

    /// Wait (bounded) until Swarm is no longer updating or rolling back; the state and its
    /// message then.
    async fn settle(&self, id: &str) -> (Option<ServiceUpdateStatusStateEnum>, String) {
        let begin = Instant::now();
        loop {
            let status = self
                .docker
                .inspect_service(id, None)
                .await
                .ok()
                .and_then(|s| s.update_status);
            let state = status.as_ref().and_then(|s| s.state);
            if !matches!(state, Some(S::UPDATING | S::ROLLBACK_STARTED)) || begin.elapsed() > SETTLE
            {
                return (state, status.and_then(|s| s.message).unwrap_or_default());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// For each running task (state `running`), the values of `keys` its spec carries.
    async fn running(&self, id: &str, keys: &[String]) -> Result<Vec<Values>, BollardError> {
        let tasks = self.tasks(id, "running").await?;
        Ok(tasks
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
            .map(|t| {
                let env = t
                    .spec
                    .as_ref()
                    .and_then(|s| s.container_spec.as_ref())
                    .and_then(|c| c.env.clone())
                    .unwrap_or_default();
                keys.iter()
                    .filter_map(|k| Some((k.clone(), env_value(&env, k)?)))
                    .collect()
            })
            .collect())
    }

    /// Whether an update at index `sent` was refused because the index went stale: a 409, or
    /// a 500 (how the engines we know answer "update out of sequence") after which the
    /// service's index is no longer `sent`. Decided by status and index, never by the message.
    async fn stale(&self, id: &str, sent: u64, e: &Error) -> bool {
        match e {
            Error::Conflict { .. } => true,
            Error::Status { status: 500, .. } => {
                match self.docker.inspect_service(id, None).await {
                    Ok(svc) => svc
                        .version
                        .and_then(|v| v.index)
                        .is_some_and(|now| now != sent),
                    Err(_) => false,
                }
            }
            _ => false,
        }
    }

    /// Until the update completed and every running task carries the new values.
    async fn wait(
        &self,
        id: &str,
        changes: &[(String, String)],
        replicas: u32,
        bound: Duration,
    ) -> Result<(), Error> {
        let begin = Instant::now();
        loop {
            let svc = self.inspect().await?;
            let status = svc.update_status.as_ref();
            let state = status.and_then(|s| s.state);
            let message = status.and_then(|s| s.message.clone()).unwrap_or_default();
            if let Some(
                stopped @ (S::PAUSED
                | S::ROLLBACK_STARTED
                | S::ROLLBACK_PAUSED
                | S::ROLLBACK_COMPLETED),
            ) = state
            {
                return Err(Error::SwarmStopped {
                    state: stopped,
                    message,
                    failed_task: self.failed_task(id).await,
                });
            }
            let done_state = matches!(state, Some(S::COMPLETED));
            if done_state && self.all_new(id, changes, replicas).await {
                return Ok(());
            }
            if begin.elapsed() >= bound {
                return Err(Error::SwarmTimeout { bound, state });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every task meant to run runs, with the new values, and there are `replicas` of them.
    async fn all_new(&self, id: &str, changes: &[(String, String)], replicas: u32) -> bool {
        let Ok(tasks) = self.tasks(id, "running").await else {
            return false;
        };
        let new: Vec<_> = tasks
            .iter()
            .filter(|t| {
                let env = t
                    .spec
                    .as_ref()
                    .and_then(|s| s.container_spec.as_ref())
                    .and_then(|c| c.env.clone())
                    .unwrap_or_default();
                changes
                    .iter()
                    .all(|(k, v)| env_value(&env, k).is_none_or(|have| have == *v))
            })
            .collect();
        new.len() == tasks.len()
            && new.len() >= replicas as usize
            && new
                .iter()
                .all(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
    }

    /// The error of the newest failed task, for the report.
    async fn failed_task(&self, id: &str) -> Option<String> {
        let tasks = self.tasks(id, "shutdown").await.ok()?;
        tasks
            .iter()
            .filter_map(|t| t.status.as_ref()?.err.clone())
            .next_back()
    }

    async fn tasks(
        &self,
        id: &str,
        desired: &str,
    ) -> Result<Vec<bollard::models::Task>, BollardError> {
        let filters = HashMap::from([
            ("service".to_string(), vec![id.to_string()]),
            ("desired-state".to_string(), vec![desired.to_string()]),
        ]);
        self.docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
    }

    /// Put `old` back into the spec (after Swarm's own rollback, if it rolls back, has
    /// finished), then wait (bounded) until the running tasks carry it. Written into the spec
    /// as read, not `rollback=previous`: after a resumed update the previous spec is the
    /// failing one.
    async fn put_back(&self, id: &str, old: &Values) -> Result<(), Error> {
        let (state, _) = self.settle(id).await;
        if state == Some(S::ROLLBACK_PAUSED) {
            return Err(Error::RollbackPaused);
        }
        let old_pairs: Vec<(String, String)> =
            old.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let v = raw::inspect(&self.docker, &self.host, id).await?;
            let version = v
                .pointer("/Version/Index")
                .and_then(Value::as_u64)
                .ok_or(Error::NoVersion)?;
            let mut spec = v["Spec"].clone();
            if !set_env_json(&mut spec, &old_pairs) {
                break;
            }
            match raw::update(&self.docker, &self.host, id, version, &spec, false).await {
                Ok(_) => break,
                Err(e) if attempt < ATTEMPTS && self.stale(id, version, &e).await => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::warn!(service = %self.name, "rolling the service back to its previous value");
        let begin = Instant::now();
        while begin.elapsed() < SETTLE {
            let svc = self.inspect().await?;
            let state = svc.update_status.and_then(|s| s.state);
            if matches!(state, Some(S::PAUSED | S::ROLLBACK_PAUSED)) {
                return Err(Error::RollbackPaused);
            }
            let running = self
                .running(id, &old.keys().cloned().collect::<Vec<_>>())
                .await
                .map_err(|e| Error::engine("cannot list its tasks", e))?;
            if !matches!(state, Some(S::UPDATING | S::ROLLBACK_STARTED))
                && !running.is_empty()
                && running
                    .iter()
                    .all(|t| old.iter().all(|(k, v)| t.get(k) == Some(v)))
            {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        // Requested and under way: the previous value is in the spec, its tasks still starting.
        Ok(())
    }

    /// (id, version index, spec and previous spec as raw JSON).
    async fn raw_inspect(&self) -> Result<(String, u64, Value, Value), ActionError> {
        let v = raw::inspect(&self.docker, &self.host, &self.name)
            .await
            .map_err(|e| self.inspect_failed(e))?;
        let id = v["ID"].as_str().unwrap_or(&self.name).to_string();
        let version = v
            .pointer("/Version/Index")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.fail(&Error::NoVersion.to_string(), None))?;
        Ok((id, version, v["Spec"].clone(), v["PreviousSpec"].clone()))
    }

    async fn inspect(&self) -> Result<Service, Error> {
        self.docker
            .inspect_service(&self.name, None)
            .await
            .map_err(|e| Error::engine("cannot inspect it", e))
    }

    /// Phrase a failed inspect for the user (404: no such service, 503: not a manager).
    fn inspect_failed(&self, e: Error) -> ActionError {
        match (&e, e.answer()) {
            (Error::NotFound { .. }, _) => self.fail(
                "no such service",
                Some("check --swarm-service against `docker service ls`".into()),
            ),
            (_, Some((503, message))) => self.fail(
                &format!("this engine is not a Swarm manager ({message})"),
                Some(
                    "run audsync on a manager node (docker node ls), or point DOCKER_HOST at one"
                        .into(),
                ),
            ),
            _ => self.fail(&e.to_string(), None),
        }
    }

    fn fail(&self, why: &str, hint: Option<String>) -> ActionError {
        ActionError {
            rolled_back: false,
            message: format!("swarm service {}: {why}", self.name),
            hint,
            logs: Vec::new(),
        }
    }
}

/// Why a service whose spec carries `spec` (the bound keys it carries) does not run it, from
/// its update state and the values of `keys` each running task carries; `None` when it does,
/// or when it is paused but not on these values (a pause is left to whoever made it). A
/// service scaled to 0 runs no task and is not short of any.
fn unsettled(
    state: Option<ServiceUpdateStatusStateEnum>,
    message: &str,
    spec: &Values,
    running: &[Values],
    replicas: Option<u64>,
) -> Option<String> {
    if spec.is_empty() {
        return None;
    }
    let carrying = running
        .iter()
        .filter(|t| spec.iter().all(|(k, v)| t.get(k) == Some(v)))
        .count();
    let other = running.len() - carrying;
    let short = replicas.is_some_and(|r| (carrying as u64) < r);
    let keys = spec.keys().cloned().collect::<Vec<_>>().join(", ");
    let tasks = format!(
        "{carrying} of {} running tasks carry the spec's {keys}",
        replicas.map_or(running.len() as u64, |r| r.max(running.len() as u64))
    );
    let message = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    match state {
        Some(s @ (S::UPDATING | S::PAUSED | S::ROLLBACK_STARTED | S::ROLLBACK_PAUSED))
            if other > 0 || short =>
        {
            Some(format!(
                "not converged: its update is {s}{message}; {tasks}"
            ))
        }
        _ if other > 0 => Some(format!("not converged: {tasks}")),
        _ => None,
    }
}

/// The journal's form of values: key -> a hash of the value.
fn hashes(values: &Values) -> BTreeMap<String, String> {
    values
        .iter()
        .map(|(k, v)| (k.clone(), value_hash(v)))
        .collect()
}

fn pairs_of(values: &Values) -> Vec<(String, String)> {
    values.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A service as a recovery finds it, against its journal.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    id: String,
    version: Option<u64>,
    /// The values of the journal's keys that its spec carries.
    carried: Values,
    replicas: Option<u64>,
}

impl Found {
    fn of(v: &Value, j: &Applying) -> Found {
        let spec = &v["Spec"];
        let keys: Values = j
            .values
            .keys()
            .map(|k| (k.clone(), String::new()))
            .collect();
        Found {
            id: v["ID"].as_str().unwrap_or_default().to_string(),
            version: v.pointer("/Version/Index").and_then(Value::as_u64),
            carried: env_json(spec, &keys),
            replicas: replicas_of_json(spec),
        }
    }
}

/// What a recovery makes of a Swarm update's journal and the service it finds.
#[derive(Debug, Clone, PartialEq)]
enum Finding {
    /// No service has the name any more.
    Gone,
    /// Another service (this id) has the name.
    Replaced(String),
    /// Recorded, never sent: the service is at the version it was read at.
    NotSent,
    /// The spec carries other values than those sent (someone changed it since).
    Changed,
    /// The spec carries the values sent (these): see the update through.
    Finish(Values),
    /// The update failed and its rollback was sent: see the rollback through (the spec's
    /// values now).
    RollBack(Values),
}

impl Finding {
    /// What a dry run says the next run does.
    fn planned(&self) -> &'static str {
        match self {
            Finding::Gone | Finding::Replaced(_) | Finding::NotSent | Finding::Changed => {
                "nothing to finish, the journal is to be cleared"
            }
            Finding::Finish(_) => {
                "to be seen through (wait for Swarm, resume, or roll back if it failed)"
            }
            Finding::RollBack(_) => "its rollback to be seen through",
        }
    }
}

/// Pure: the tests below go through every case.
fn decide(j: &Applying, found: Option<&Found>) -> Finding {
    let Some(f) = found else {
        return Finding::Gone;
    };
    if f.id != j.old_id {
        return Finding::Replaced(f.id.clone());
    }
    let unsent = j.step == ApplyStep::Begun && f.version.is_some() && f.version == j.version;
    let carries = !j.values.is_empty() && hashes(&f.carried) == j.values;
    match (unsent, carries, j.step) {
        (true, _, _) => Finding::NotSent,
        (false, true, _) => Finding::Finish(f.carried.clone()),
        (false, false, ApplyStep::RollingBack) => Finding::RollBack(f.carried.clone()),
        (false, false, _) => Finding::Changed,
    }
}

/// How long values whose update failed `attempts` times in a row wait before the next try:
/// 5 min, doubling, at most 6 h.
fn backoff(attempts: u32) -> Duration {
    let base = BACKOFF.as_secs();
    let secs = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(16));
    Duration::from_secs(secs.min(BACKOFF_MAX.as_secs()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The replicas a replicated service asks for (`None`: global).
fn replicas_of(spec: &ServiceSpec) -> Option<u64> {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .map(|r| r.replicas.unwrap_or(1).max(0) as u64)
}

fn replicas_of_json(spec: &Value) -> Option<u64> {
    spec.pointer("/Mode/Replicated")
        .map(|r| r.get("Replicas").and_then(Value::as_u64).unwrap_or(1))
}

/// The values of the keys of `of` that the raw JSON spec carries.
fn env_json(spec: &Value, of: &Values) -> Values {
    let env: Vec<String> = spec
        .pointer("/TaskTemplate/ContainerSpec/Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    of.keys()
        .filter_map(|k| Some((k.clone(), env_value(&env, k)?)))
        .collect()
}

/// How a refused update is reported: the engine's status and message, else what failed.
fn refused(e: &Error) -> String {
    match e.answer() {
        Some((status, message)) => format!("the engine answered {status}: {message}"),
        None => e.to_string(),
    }
}

/// The target name of service `name` in reports and the state file.
pub(crate) fn label(name: &str) -> String {
    format!("swarm:{name}")
}

fn env_of(spec: &ServiceSpec) -> Vec<String> {
    spec.task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
}

/// Replace the entries of the keys the raw JSON spec carries; whether anything changed.
fn set_env_json(spec: &mut Value, changes: &[(String, String)]) -> bool {
    let Some(env) = spec
        .pointer_mut("/TaskTemplate/ContainerSpec/Env")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let mut changed = false;
    for kv in env.iter_mut() {
        let Some((k, v)) = kv.as_str().and_then(|s| s.split_once('=')) else {
            continue;
        };
        if let Some((_, new)) = changes.iter().rev().find(|(ck, _)| ck == k)
            && v != new
        {
            *kv = Value::String(format!("{k}={new}"));
            changed = true;
        }
    }
    changed
}

/// The two calls whose bodies must round-trip untyped: reading the spec to change and sending
/// it back. bollard lacks them: its `Service`/`ServiceSpec` model names the container spec's
/// healthcheck `HealthCheck` where the engine writes `Healthcheck` (and drops any field it does
/// not name), so `inspect_service` followed by `update_service` would silently remove the
/// service's healthcheck, and bollard has no call that answers a body untyped or sends one as
/// given. These two go over the engine's unix socket with hyper (bollard's own HTTP client);
/// the API version is the one bollard negotiated, and the request timeout bollard's.
mod raw {
    use bollard::Docker;
    use bollard::errors::Error as BollardError;
    use http_body_util::{BodyExt, Limited};
    use hyper::body::Bytes;
    use hyper::{Method, header};
    use hyper_util::rt::TokioIo;
    use serde_json::Value;

    use super::Error;

    /// Answers larger than this are refused (a service spec is a few KiB).
    const LIMIT: usize = 16 * 1024 * 1024;

    /// `GET /services/{name}`: the service as the engine wrote it.
    pub(super) async fn inspect(docker: &Docker, host: &str, name: &str) -> Result<Value, Error> {
        let path = format!("/services/{}", escape(name));
        let body = request(docker, host, Method::GET, &path, String::new()).await?;
        serde_json::from_slice(&body).map_err(|e| Error::engine("unreadable answer", e.into()))
    }

    /// `POST /services/{id}/update?version=…` with `spec` as given (`rollback`: to the previous
    /// spec); the engine's warnings.
    pub(super) async fn update(
        docker: &Docker,
        host: &str,
        id: &str,
        version: u64,
        spec: &Value,
        rollback: bool,
    ) -> Result<Vec<String>, Error> {
        let mut path = format!("/services/{}/update?version={version}", escape(id));
        if rollback {
            path.push_str("&rollback=previous");
        }
        let answer = request(docker, host, Method::POST, &path, spec.to_string()).await?;
        let warnings = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v["Warnings"].as_array().cloned())
            .unwrap_or_default();
        Ok(warnings
            .into_iter()
            .filter_map(|w| w.as_str().map(str::to_string))
            .collect())
    }

    /// The unix socket of `host` (`DOCKER_HOST` as config checked it, or its default).
    fn socket(host: &str) -> Result<&str, Error> {
        host.strip_prefix("unix://")
            .ok_or_else(|| Error::NotUnixSocket {
                host: host.to_string(),
            })
    }

    fn escape(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    /// One request; the body of a 2xx answer, else the engine's status and message as bollard
    /// reports them.
    async fn request(
        docker: &Docker,
        host: &str,
        method: Method,
        path: &str,
        body: String,
    ) -> Result<Bytes, Error> {
        let socket = socket(host)?;
        let v = docker.client_version();
        let uri = format!("/v{}.{}{path}", v.major_version, v.minor_version);
        let talk = |e: BollardError| Error::engine("talking to the engine", e);
        let call = async {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| Error::engine("cannot connect to the engine", e.into()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| talk(e.into()))?;
            tokio::spawn(conn);
            let request = hyper::Request::builder()
                .method(method)
                .uri(uri)
                .header(header::HOST, "docker")
                .header(header::USER_AGENT, "audsync")
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .map_err(|e| talk(e.into()))?;
            let answer = sender
                .send_request(request)
                .await
                .map_err(|e| talk(e.into()))?;
            let status = answer.status();
            let body = Limited::new(answer.into_body(), LIMIT)
                .collect()
                .await
                .map_err(|e| talk(std::io::Error::other(e).into()))?
                .to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                Err(Error::engine(
                    "the engine refused the call",
                    BollardError::DockerResponseServerError {
                        status_code: status.as_u16(),
                        message: message(&body),
                    },
                ))
            }
        };
        let limit = docker.timeout();
        tokio::time::timeout(limit, call).await.map_err(|_| {
            Error::engine(
                format!(
                    "the engine did not answer within {}",
                    humantime::format_duration(limit)
                ),
                BollardError::RequestTimeoutError,
            )
        })?
    }

    /// The engine's `{"message": …}`, else the body as text.
    fn message(body: &[u8]) -> String {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
    }

    #[cfg(test)]
    #[test]
    fn the_socket_is_the_checked_docker_host() {
        assert_eq!(
            socket("unix:///var/run/docker.sock").ok(),
            Some("/var/run/docker.sock")
        );
        assert!(
            socket("tcp://10.0.0.1:2375").is_err_and(|e| e.to_string().contains("DOCKER_HOST"))
        );
        assert_eq!(message(br#"{"message":"m"}"#), "m");
        assert_eq!(message(b" plain \n"), "plain");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_carried_keys_change_in_place() {
        let mut spec = serde_json::json!({
            "TaskTemplate": {"ContainerSpec": {
                "Env": ["A=1", "KEY=old", "KEY_OLD=x"],
                "Healthcheck": {"Interval": 500_000_000u64}
            }}
        });
        let ch = vec![
            ("KEY".to_string(), "new".to_string()),
            ("MISSING".into(), "y".into()),
        ];
        assert!(set_env_json(&mut spec, &ch));
        assert_eq!(
            spec["TaskTemplate"]["ContainerSpec"]["Env"],
            serde_json::json!(["A=1", "KEY=new", "KEY_OLD=x"])
        );
        assert!(!set_env_json(&mut spec, &ch), "already there: no update");
        assert_eq!(
            spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Interval"], 500_000_000u64,
            "the rest of the spec stays as read"
        );
        assert_eq!(
            spec.get("UpdateConfig"),
            None,
            "an absent UpdateConfig stays absent"
        );
        assert!(
            !set_env_json(&mut serde_json::json!({}), &ch),
            "no Env: nothing to do"
        );
    }

    #[test]
    fn the_typed_model_loses_the_engines_healthcheck() {
        // Why the spec is read and sent raw (see `raw`): if bollard's model learns the engine's
        // spelling, the raw calls can go.
        let engine = serde_json::json!({"TaskTemplate": {"ContainerSpec": {
            "Image": "busybox", "Healthcheck": {"Test": ["CMD", "true"]}
        }}});
        let typed: ServiceSpec = serde_json::from_value(engine).unwrap();
        let spec = typed.task_template.unwrap().container_spec.unwrap();
        assert_eq!(spec.image.as_deref(), Some("busybox"));
        assert_eq!(spec.health_check, None);
    }

    #[test]
    fn a_refused_update_shows_the_engines_answer() {
        let e = Error::engine(
            "the engine refused the call",
            BollardError::DockerResponseServerError {
                status_code: 500,
                message: "rpc error: code = Unknown desc = update out of sequence".into(),
            },
        );
        assert!(matches!(e, Error::Status { status: 500, .. }));
        assert_eq!(
            refused(&e),
            "the engine answered 500: rpc error: code = Unknown desc = update out of sequence"
        );
    }

    fn vals(pairs: &[(&str, &str)]) -> Values {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn converged_is_the_running_tasks_not_the_spec() {
        let spec = vals(&[("KEY", "new")]);
        let new = vals(&[("KEY", "new")]);
        let old = vals(&[("KEY", "old")]);
        // Completed, every task on the value: in sync.
        assert_eq!(
            unsettled(
                Some(S::COMPLETED),
                "",
                &spec,
                &[new.clone(), new.clone()],
                Some(2)
            ),
            None
        );
        // No update status at all (created with it): in sync.
        assert_eq!(
            unsettled(None, "", &spec, std::slice::from_ref(&new), Some(1)),
            None
        );
        // The issue: paused with the old task still running.
        let why = unsettled(
            Some(S::PAUSED),
            "update paused due to failure or early termination of task x",
            &spec,
            std::slice::from_ref(&old),
            Some(1),
        )
        .unwrap();
        assert!(
            why.contains("paused") && why.contains("0 of 1 running tasks"),
            "{why}"
        );
        // Paused with no task running at all (stop-first, the new one failing).
        assert!(unsettled(Some(S::PAUSED), "", &spec, &[], Some(1)).is_some());
        // Rolled back or rolling back, tasks on another value.
        for s in [
            S::ROLLBACK_STARTED,
            S::ROLLBACK_PAUSED,
            S::ROLLBACK_COMPLETED,
        ] {
            assert!(
                unsettled(Some(s), "", &spec, std::slice::from_ref(&old), Some(1)).is_some(),
                "{s}"
            );
        }
        // Still rolling out.
        assert!(
            unsettled(
                Some(S::UPDATING),
                "",
                &spec,
                &[old.clone(), new.clone()],
                Some(2)
            )
            .is_some()
        );
        // "Completed" but a task carries another value (FailureAction continue).
        assert!(unsettled(Some(S::COMPLETED), "", &spec, &[new.clone(), old], Some(2)).is_some());
        // Paused stays paused: a pause whose tasks all carry the values is not about them.
        assert_eq!(
            unsettled(
                Some(S::PAUSED),
                "",
                &spec,
                std::slice::from_ref(&new),
                Some(1)
            ),
            None
        );
        // Scaled to 0: no task to carry anything, nothing to resume.
        assert_eq!(unsettled(Some(S::PAUSED), "", &spec, &[], Some(0)), None);
        assert_eq!(unsettled(Some(S::COMPLETED), "", &spec, &[], Some(0)), None);
        // A crash-looping task (fewer running, none wrong) after a completed update: not ours.
        assert_eq!(
            unsettled(
                Some(S::COMPLETED),
                "",
                &spec,
                std::slice::from_ref(&new),
                Some(2)
            ),
            None
        );
        // A global service (no replica count): by the running tasks only.
        assert_eq!(unsettled(Some(S::COMPLETED), "", &spec, &[new], None), None);
        // The spec carries none of the keys: nothing of ours to judge.
        assert_eq!(
            unsettled(Some(S::PAUSED), "", &Values::new(), &[], Some(1)),
            None
        );
    }

    fn journal(step: ApplyStep, values: &Values) -> Applying {
        Applying {
            kind: ApplyKind::SwarmUpdate,
            name: "web".into(),
            old_id: "svc1".into(),
            spec_hash: String::new(),
            was_running: true,
            new_name: String::new(),
            aside: String::new(),
            new_id: None,
            step,
            healthy: false,
            version: Some(10),
            values: hashes(values),
        }
    }

    fn found(id: &str, version: u64, carried: &Values) -> Found {
        Found {
            id: id.into(),
            version: Some(version),
            carried: carried.clone(),
            replicas: Some(1),
        }
    }

    #[test]
    fn a_swarm_updates_journal_is_judged_against_the_service_found() {
        let new = vals(&[("KEY", "new")]);
        let old = vals(&[("KEY", "old")]);
        // The journal holds hashes, never the values.
        let j = journal(ApplyStep::Sent, &new);
        assert!(!serde_json::to_string(&j).unwrap().contains("new\""));
        assert_eq!(j.values["KEY"], value_hash("new"));
        // Sent, the spec carries the values: see it through.
        assert_eq!(
            decide(&j, Some(&found("svc1", 11, &new))),
            Finding::Finish(new.clone())
        );
        // Killed before sending: the version has not moved, nothing to finish.
        let begun = journal(ApplyStep::Begun, &new);
        assert_eq!(
            decide(&begun, Some(&found("svc1", 10, &old))),
            Finding::NotSent
        );
        // Begun, but the version moved and the spec carries them: it was sent.
        assert_eq!(
            decide(&begun, Some(&found("svc1", 11, &new))),
            Finding::Finish(new.clone())
        );
        // Someone changed the spec since: left to the pass.
        assert_eq!(decide(&j, Some(&found("svc1", 12, &old))), Finding::Changed);
        // A rollback under way: the spec carries the previous value.
        let back = journal(ApplyStep::RollingBack, &new);
        assert_eq!(
            decide(&back, Some(&found("svc1", 12, &old))),
            Finding::RollBack(old.clone())
        );
        // A rollback recorded, not sent yet: the update is judged again (it fails again).
        assert_eq!(
            decide(&back, Some(&found("svc1", 11, &new))),
            Finding::Finish(new.clone())
        );
        // The service is gone, or another one has the name: never acted on.
        assert_eq!(decide(&j, None), Finding::Gone);
        assert_eq!(
            decide(&j, Some(&found("svc2", 1, &new))),
            Finding::Replaced("svc2".into())
        );
        // A journal without values (nothing of ours in the spec) finishes nothing.
        let empty = journal(ApplyStep::Sent, &Values::new());
        assert_eq!(
            decide(&empty, Some(&found("svc1", 11, &Values::new()))),
            Finding::Changed
        );
    }

    #[test]
    fn the_service_found_is_read_from_the_engines_answer() {
        let j = journal(ApplyStep::Sent, &vals(&[("KEY", "new")]));
        let v = serde_json::json!({
            "ID": "svc1",
            "Version": {"Index": 11},
            "Spec": {
                "Mode": {"Replicated": {"Replicas": 2}},
                "TaskTemplate": {"ContainerSpec": {"Env": ["A=1", "KEY=new"]}}
            }
        });
        assert_eq!(
            Found::of(&v, &j),
            found("svc1", 11, &vals(&[("KEY", "new")])).with_replicas(Some(2))
        );
    }

    impl Found {
        fn with_replicas(mut self, r: Option<u64>) -> Found {
            self.replicas = r;
            self
        }
    }

    #[test]
    fn the_backoff_of_failed_values_grows_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(300));
        assert_eq!(backoff(2), Duration::from_secs(600));
        assert_eq!(backoff(3), Duration::from_secs(1200));
        assert_eq!(backoff(10), Duration::from_secs(6 * 3600));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(6 * 3600));
        assert_eq!(backoff(0), Duration::from_secs(300));
    }

    #[test]
    fn the_replicas_of_a_spec() {
        let replicated = serde_json::json!({"Mode": {"Replicated": {"Replicas": 0}}});
        assert_eq!(replicas_of_json(&replicated), Some(0));
        assert_eq!(
            replicas_of_json(&serde_json::json!({"Mode": {"Global": {}}})),
            None
        );
        let typed: ServiceSpec = serde_json::from_value(replicated).unwrap();
        assert_eq!(replicas_of(&typed), Some(0));
        let spec = serde_json::json!({"TaskTemplate": {"ContainerSpec": {"Env": ["A=1", "K=v"]}}});
        assert_eq!(
            env_json(&spec, &vals(&[("K", "x"), ("B", "y")])),
            vals(&[("K", "v")])
        );
    }
}
