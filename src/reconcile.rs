//! The pure core: every binding's desired AUD + what the sinks and containers hold -> a [`Plan`]
//! -> applied.
//!
//! This module owns its ports ([`Sink`], [`Target`], [`Journal`]) and its outcome enums, and
//! imports no other module of the crate: nothing here knows HTTP, clap, files or bollard.
//! [`plan`] is a pure function; [`apply`] drives the ports in the one order that is safe:
//! every sink first (each written once, all its keys in one write), then each container
//! **once**, and only when every sink of every binding that targets it holds its new value.
//! A journal records which container actions are owed before any sink is written, so a run
//! that dies (or an action that fails) is finished by the next run. A binding that fails does
//! not stop the others.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use serde::Serialize;

/// Key -> value.
pub type Values = BTreeMap<String, String>;

/// What to do with containers when the value changes (`--restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Recreate containers whose environment carries the key; restart the others.
    Auto,
    /// Restart (same configuration; does NOT reload environment variables).
    Restart,
    /// Recreate with the key's value replaced; everything else preserved.
    Recreate,
    /// Start the replacement beside the old container (same networks and aliases), wait until
    /// it is good, then retire the old one: no gap for clients that reach it by network alias.
    /// A container that cannot have a twin (host ports, `host`/`container:` network) is
    /// recreated instead, and the plan says so.
    Rollout,
    /// Touch no container.
    None,
}

// ---------------------------------------------------------------- sinks

/// What a sink is, for plans, logs and JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkInfo {
    /// `env` or `infisical`.
    pub kind: &'static str,
    /// A path, or `project/environment/path` for Infisical.
    pub target: String,
}

/// What a sink holds now for one key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyObservation {
    pub current: Option<String>,
    /// False only when the sink already holds exactly the desired value everywhere.
    pub needs_write: bool,
    /// The secret version, for sinks that have one.
    pub version: Option<u64>,
}

/// Per key.
pub type SinkObservation = BTreeMap<String, KeyObservation>;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum WriteOutcome {
    Unchanged,
    Written {
        /// New versions by key, for sinks that have them.
        versions: BTreeMap<String, u64>,
    },
    /// The write is held back for approval (Infisical change policies): the value is not live.
    PendingApproval {
        detail: String,
    },
}

/// A sink failure, phrased for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkError {
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The interface to one place the values are written (one `.env` file, one Infisical folder).
pub trait Sink: Send {
    fn info(&self) -> SinkInfo;
    fn observe(
        &mut self,
        desired: &Values,
    ) -> impl Future<Output = Result<SinkObservation, SinkError>> + Send;
    /// Write every key of `desired` that differs, in one go where the sink allows it.
    fn write(
        &mut self,
        desired: &Values,
    ) -> impl Future<Output = Result<WriteOutcome, SinkError>> + Send;
}

// ---------------------------------------------------------------- targets

/// A container as `reconcile` sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TargetObservation {
    /// The keys asked about that its configured environment carries, with their values.
    pub env: Values,
    /// The watched names (audsync's own settings) its environment carries: names only.
    pub carries: BTreeSet<String>,
    /// Why a second container cannot run beside it (it publishes a host port, or shares the
    /// host's or another container's network); `None` when a rollout is possible.
    pub rollout_blocker: Option<String>,
    /// It is reached through network aliases of its own (`auto` rolls such a container out).
    pub aliased: bool,
    /// The plan lists the change of each key it carries (`KEY: old -> new`, shortened): a
    /// Swarm service's spec, whose bound values are AUDs. Only keys of `env` are ever shown.
    pub shows_env_diff: bool,
    /// It does not run what its configuration says (a Swarm update paused, rolled back or
    /// still rolling out, or running tasks that carry another value), and why: even when the
    /// configured values are the desired ones, it is not in sync -- the action finishes it.
    pub unsettled: Option<String>,
}

/// A failure of a container action, already phrased for the user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionError {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// A recreate failed after the new container was started, and the old one was put back
    /// (or putting it back was attempted: the message says whether it worked).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
    /// The last log lines of a container that failed to start, redacted: for the terminal
    /// report only, never for a notification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The interface to one container (or any other restartable consumer of the values).
pub trait Target: Send {
    /// Targets of one group (e.g. a compose service) are acted on in order, and the first
    /// failure skips the rest of its group so a bad value never takes down every replica.
    fn group(&self) -> Option<String> {
        None
    }
    fn observe(
        &mut self,
        keys: &[String],
        watch: &[String],
    ) -> impl Future<Output = Result<TargetObservation, ActionError>> + Send;
    fn restart(&mut self) -> impl Future<Output = Result<(), ActionError>> + Send;
    /// Recreate with every key of `changes` that the environment carries replaced, in one go.
    fn recreate(
        &mut self,
        changes: &Values,
    ) -> impl Future<Output = Result<(), ActionError>> + Send;
    /// Replace with `changes` applied while the old one keeps serving (see
    /// [`RestartMode::Rollout`]). Targets that cannot do better recreate.
    fn rollout(
        &mut self,
        changes: &Values,
    ) -> impl Future<Output = Result<(), ActionError>> + Send {
        self.recreate(changes)
    }
    /// After a recreate or rollout: the target runs the new values, but its orchestrator
    /// still holds other changes the next deploy applies (compose: the old config-hash was
    /// kept) -- the names of the variables that differ, never their values.
    fn pending(&self) -> Option<Vec<String>> {
        None
    }
}

/// Records the container actions that are owed, across runs.
pub trait Journal {
    fn owed(&self) -> BTreeSet<String>;
    fn set_owed(&mut self, names: &BTreeSet<String>) -> Result<(), JournalError>;
}

/// Why the owed actions could not be recorded (the adapter's own message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalError(pub String);

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------- plan

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    None,
    Restart,
    Recreate,
    Rollout,
}

/// One binding as the core sees it: a key, the value it should hold (None when the source
/// failed), where it is written and what reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingIn {
    pub id: String,
    pub key: String,
    pub desired: Option<String>,
    /// Indexes into the sinks.
    pub sinks: Vec<usize>,
    /// Indexes into the targets.
    pub targets: Vec<usize>,
    pub restart: RestartMode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SinkStep {
    pub info: SinkInfo,
    /// The keys this sink holds, with their desired values (bindings that failed left out).
    pub desired: Values,
    pub observation: Result<SinkObservation, SinkError>,
}

impl SinkStep {
    pub fn needs_write(&self) -> bool {
        self.observation
            .as_ref()
            .is_ok_and(|o| o.values().any(|k| k.needs_write))
    }

    fn key_needs_write(&self, key: &str) -> bool {
        self.observation
            .as_ref()
            .is_ok_and(|o| o.get(key).is_some_and(|k| k.needs_write))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetStep {
    pub name: String,
    pub action: Action,
    pub reason: String,
    /// The values a recreate sets (every active binding's key).
    pub changes: Values,
    /// Indexes of the bindings that target it.
    pub bindings: Vec<usize>,
    /// Set when the container could not be inspected; the action then fails.
    pub blocked: Option<ActionError>,
    /// Set when a binding that targets it failed: acted on by a later pass, once.
    pub waiting: Option<String>,
    /// audsync's own settings found in its environment (names only).
    pub leaked: Vec<String>,
    /// Keys whose desired value it will still not run after this pass, and why.
    pub keeps_old: BTreeMap<String, KeepsOld>,
}

/// Why a container keeps running an old value after a pass that wrote the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepsOld {
    /// `--restart none`: the container is not touched.
    RestartNone,
    /// `--restart restart` on a container whose environment carries the key: a restart keeps
    /// the value fixed at creation.
    RestartKeepsEnv,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingStep {
    pub input: BindingIn,
    /// Some sink of this binding needs a write of its key.
    pub changed: bool,
    /// A sink of it could not be read: nothing of this binding is written or applied.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub bindings: Vec<BindingStep>,
    pub sinks: Vec<SinkStep>,
    pub targets: Vec<TargetStep>,
}

impl Plan {
    pub fn sinks_change(&self) -> bool {
        self.sinks.iter().any(SinkStep::needs_write)
    }

    #[cfg(test)]
    pub fn has_work(&self) -> bool {
        self.sinks_change()
            || self
                .targets
                .iter()
                .any(|t| t.action != Action::None || t.blocked.is_some())
    }
}

/// What is known of one container before the plan.
#[derive(Debug, Clone)]
pub struct TargetIn {
    pub name: String,
    pub observation: Result<TargetObservation, ActionError>,
    /// Key -> the value it last ran with after a pass (the state file).
    pub ran_with: Values,
}

/// Decide what to do. Pure.
pub fn plan(
    bindings: Vec<BindingIn>,
    sinks: Vec<(SinkInfo, Values, Result<SinkObservation, SinkError>)>,
    targets: Vec<TargetIn>,
    owed: &BTreeSet<String>,
) -> Plan {
    let sinks: Vec<SinkStep> = sinks
        .into_iter()
        .map(|(info, desired, observation)| SinkStep {
            info,
            desired,
            observation,
        })
        .collect();
    let bindings: Vec<BindingStep> = bindings
        .into_iter()
        .map(|b| {
            let error =
                b.sinks.iter().find_map(|&i| {
                    sinks[i].observation.as_ref().err().map(|e| {
                        format!("sink {} {}: {e}", sinks[i].info.kind, sinks[i].info.target)
                    })
                });
            let changed =
                b.desired.is_some() && b.sinks.iter().any(|&i| sinks[i].key_needs_write(&b.key));
            BindingStep {
                input: b,
                changed,
                error,
            }
        })
        .collect();
    let targets = targets
        .into_iter()
        .enumerate()
        .map(|(ti, t)| target_step(ti, t, &bindings, owed))
        .collect();
    Plan {
        bindings,
        sinks,
        targets,
    }
}

fn target_step(
    ti: usize,
    t: TargetIn,
    bindings: &[BindingStep],
    owed: &BTreeSet<String>,
) -> TargetStep {
    let mine: Vec<usize> = (0..bindings.len())
        .filter(|&bi| bindings[bi].input.targets.contains(&ti))
        .collect();
    let was_owed = owed.contains(&t.name);
    let waiting = mine
        .iter()
        .map(|&bi| &bindings[bi])
        .filter(|b| b.input.restart != RestartMode::None)
        .find(|b| b.input.desired.is_none() || b.error.is_some())
        .map(|b| {
            format!(
                "binding {} failed; the next pass applies every value at once",
                b.input.id
            )
        });
    let leaked = t
        .observation
        .as_ref()
        .map(|o| o.carries.iter().cloned().collect())
        .unwrap_or_default();
    let mut action = Action::None;
    let mut reasons: Vec<String> = Vec::new();
    let mut changes = Values::new();
    let mut blocked = None;
    let mut keeps_old = BTreeMap::new();
    let multi = mine.len() > 1;
    for &bi in &mine {
        let b = &bindings[bi];
        let (Some(desired), None) = (&b.input.desired, &b.error) else {
            continue;
        };
        let mode = b.input.restart;
        let carried = t
            .observation
            .as_ref()
            .ok()
            .and_then(|o| o.env.get(&b.input.key));
        let differs = carried.is_some_and(|v| v != desired);
        if mode == RestartMode::None {
            if b.changed || differs {
                keeps_old.insert(b.input.key.clone(), KeepsOld::RestartNone);
            }
            if !multi {
                reasons.push("--restart none".into());
            }
            continue;
        }
        if mode == RestartMode::Restart && differs {
            keeps_old.insert(b.input.key.clone(), KeepsOld::RestartKeepsEnv);
        }
        changes.insert(b.input.key.clone(), desired.clone());
        let key = &b.input.key;
        let elsewhere = t.ran_with.get(key).is_some_and(|v| v != desired);
        let cause = if b.changed {
            Some("the value changed in the sinks")
        } else if was_owed {
            Some("an earlier run changed the value but did not finish this container")
        } else if elsewhere {
            Some("it last ran with another value (the sink was changed elsewhere)")
        } else {
            None
        };
        let (a, why) = match &t.observation {
            Err(e) => {
                blocked = Some(e.clone());
                let a = if mode == RestartMode::Recreate {
                    Action::Recreate
                } else if mode == RestartMode::Rollout {
                    Action::Rollout
                } else {
                    Action::Restart
                };
                (a, "cannot inspect the container".to_string())
            }
            Ok(obs) => rollout_or_not(
                mode,
                obs,
                need(
                    mode,
                    key,
                    desired,
                    obs.env.get(key),
                    cause,
                    was_owed,
                    b.changed,
                ),
            ),
        };
        if a != Action::None || !multi {
            reasons.push(if multi {
                format!("{}: {why}", b.input.id)
            } else {
                why
            });
        }
        action = action.max(a);
    }
    if mine.is_empty() {
        reasons.push("no binding targets it".into());
    }
    if action == Action::None
        && blocked.is_none()
        && !changes.is_empty()
        && let Ok(TargetObservation {
            unsettled: Some(why),
            ..
        }) = &t.observation
    {
        action = Action::Recreate;
        reasons = vec![why.clone()];
    }
    // A replacement carries the other keys of the `.env` it reads, too: a key another binding of
    // this pass manages in one of this container's sinks, which the container carries with
    // another value, is set in the same recreate (its new value is known), so the container
    // does not come back with a stale copy that compose's next `up -d` would have to fix.
    if matches!(action, Action::Recreate | Action::Rollout)
        && let Ok(obs) = &t.observation
    {
        let my_sinks: BTreeSet<usize> = mine
            .iter()
            .flat_map(|&bi| bindings[bi].input.sinks.iter().copied())
            .collect();
        for (bi, b) in bindings.iter().enumerate() {
            let (Some(desired), None) = (&b.input.desired, &b.error) else {
                continue;
            };
            if mine.contains(&bi)
                || changes.contains_key(&b.input.key)
                || !b.input.sinks.iter().any(|i| my_sinks.contains(i))
            {
                continue;
            }
            if obs.env.get(&b.input.key).is_some_and(|v| v != desired) {
                changes.insert(b.input.key.clone(), desired.clone());
                reasons.push(format!(
                    "{} of binding {} (same sink) set too",
                    b.input.key, b.input.id
                ));
            }
        }
    }
    if action != Action::None
        && let Ok(obs) = &t.observation
        && obs.shows_env_diff
    {
        let diff = env_diff(&obs.env, &changes);
        if !diff.is_empty() {
            reasons.push(format!("env {}", diff.join(", ")));
        }
    }
    TargetStep {
        name: t.name,
        action,
        reason: reasons.join("; "),
        changes,
        bindings: mine,
        blocked,
        waiting,
        leaked,
        keeps_old,
    }
}

/// A recreate asked for by `rollout` (always) or `auto` (for a container reached by network
/// alias) becomes a rollout when a twin can run beside the container; an explicit `rollout`
/// that cannot says why it recreates instead.
fn rollout_or_not(
    mode: RestartMode,
    obs: &TargetObservation,
    (action, why): (Action, String),
) -> (Action, String) {
    if action != Action::Recreate {
        return (action, why);
    }
    match (mode, &obs.rollout_blocker) {
        (RestartMode::Rollout, None) => (
            Action::Rollout,
            format!("{why}; rolled out: the new container starts beside the old one"),
        ),
        (RestartMode::Rollout, Some(b)) => (
            Action::Recreate,
            format!("{why}; no rollout ({b}): recreated instead"),
        ),
        (RestartMode::Auto, None) if obs.aliased => (
            Action::Rollout,
            format!("{why}; rolled out: reached by network alias and publishes no host port"),
        ),
        _ => (action, why),
    }
}

/// The action one binding asks of a container, and why.
fn need(
    mode: RestartMode,
    key: &str,
    desired: &str,
    env: Option<&String>,
    cause: Option<&str>,
    was_owed: bool,
    changed: bool,
) -> (Action, String) {
    match (mode, env) {
        (RestartMode::None, _) => (Action::None, "--restart none".into()),
        (RestartMode::Auto | RestartMode::Recreate | RestartMode::Rollout, Some(v)) => {
            if v != desired {
                let why = if changed {
                    format!(
                        "its environment carries {key} (value baked in at creation): recreate to apply"
                    )
                } else {
                    format!(
                        "drifted: its environment carries {key}={} but the desired value is {}",
                        short(v),
                        short(desired)
                    )
                };
                (Action::Recreate, why)
            } else if was_owed && matches!(mode, RestartMode::Recreate | RestartMode::Rollout) {
                (Action::Recreate, cause.unwrap_or_default().to_string())
            } else {
                (
                    Action::None,
                    format!("its environment already carries the desired {key}"),
                )
            }
        }
        (RestartMode::Auto, None) => match cause {
            Some(c) => (
                Action::Restart,
                format!("{c}; no {key} in its environment, so it reads the value at start-up"),
            ),
            None => (Action::None, "in sync".into()),
        },
        (RestartMode::Recreate | RestartMode::Rollout, None) => match cause {
            Some(c) => (Action::Recreate, c.to_string()),
            None => (Action::None, "in sync".into()),
        },
        (RestartMode::Restart, env) => match cause {
            Some(c) => {
                let warn = match env {
                    Some(_) => format!(
                        " (warning: its environment carries {key}; a restart keeps the old value, use --restart recreate)"
                    ),
                    None => String::new(),
                };
                (Action::Restart, format!("{c}{warn}"))
            }
            None => (Action::None, "in sync".into()),
        },
    }
}

/// `KEY: old -> new` (both shortened) for each key of `changes` that `env` carries with
/// another value; keys `env` does not carry are not changed by an update, so not listed.
fn env_diff(env: &Values, changes: &Values) -> Vec<String> {
    changes
        .iter()
        .filter_map(|(k, new)| {
            let old = env.get(k).filter(|old| *old != new)?;
            Some(format!("{k}: {} -> {}", short(old), short(new)))
        })
        .collect()
}

/// First 8 characters of an AUD (64 lowercase hex, the rule of `crate::aud`), enough to tell
/// two apart in a log line. Any other value is never shown, not even in part: a key pointed at
/// a password must not print it ("(not an AUD)").
pub fn short(v: &str) -> String {
    if is_aud(v) {
        format!("{}…", &v[..8])
    } else {
        "(not an AUD)".into()
    }
}

/// 64 characters out of `0-9a-f`: the shape of an AUD, the only old value ever shown.
pub fn is_aud(v: &str) -> bool {
    v.len() == 64
        && v.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---------------------------------------------------------------- outcome

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkResult {
    Planned,
    Written,
    Unchanged,
    PendingApproval,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetResult {
    Planned,
    Done,
    None,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteAction {
    Write,
    None,
}

/// One key of one sink.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyReport {
    pub key: String,
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub action: WriteAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_version: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkReport {
    #[serde(flatten)]
    pub info: SinkInfo,
    pub keys: Vec<KeyReport>,
    pub result: SinkResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetReport {
    pub name: String,
    pub action: Action,
    pub reason: String,
    pub result: TargetResult,
    /// The bindings (ids) whose values it reads.
    pub bindings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ActionError>,
    /// Keys whose new value it still does not run after this pass (`--restart none`, or a
    /// restart of a container whose environment carries the key), and why.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub keeps_old: BTreeMap<String, KeepsOld>,
    /// Replaced, but other changes of its orchestrator's configuration are pending (the next
    /// `docker compose up -d` recreates it): the variable names that differ, never values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Vec<String>>,
    /// How long its restart, recreate, rollout or command took, when one ran (not in the
    /// report's JSON: it differs from run to run; `watch` turns it into a metric).
    #[serde(skip)]
    pub duration: Option<std::time::Duration>,
}

/// The outcome of a pass.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    pub changed: bool,
    pub pending_approval: bool,
    pub failed: bool,
    pub sinks: Vec<SinkReport>,
    pub targets: Vec<TargetReport>,
}

impl Outcome {
    /// The sinks of binding `bi` that were all written or already held the value.
    pub fn binding_sinks_ok(&self, plan: &Plan, bi: usize) -> bool {
        plan.bindings[bi].input.sinks.iter().all(|&i| {
            matches!(
                self.sinks[i].result,
                SinkResult::Written | SinkResult::Unchanged
            )
        })
    }
}

/// Carry out `plan`. Sinks in order; each container once, when every sink of every binding
/// that targets it holds the value.
pub async fn apply<S: Sink, T: Target, J: Journal>(
    plan: &Plan,
    sinks: &mut [S],
    targets: &mut [T],
    journal: &mut J,
    dry_run: bool,
) -> Outcome {
    let mut out = Outcome {
        changed: plan.sinks_change(),
        pending_approval: false,
        failed: plan
            .bindings
            .iter()
            .any(|b| b.input.desired.is_none() || b.error.is_some()),
        sinks: plan.sinks.iter().map(|s| sink_report(s, dry_run)).collect(),
        targets: Vec::new(),
    };
    let ids = |t: &TargetStep| -> Vec<String> {
        t.bindings
            .iter()
            .map(|&i| plan.bindings[i].input.id.clone())
            .collect()
    };
    let target_report =
        |t: &TargetStep, result: TargetResult, error: Option<ActionError>| TargetReport {
            name: t.name.clone(),
            action: t.action,
            reason: match &t.waiting {
                Some(w) if t.action != Action::None && result == TargetResult::Skipped => {
                    format!("{}; {w}", t.reason)
                }
                _ => t.reason.clone(),
            },
            result,
            bindings: ids(t),
            error: error.or_else(|| t.blocked.clone()),
            keeps_old: t.keeps_old.clone(),
            pending: None,
            duration: None,
        };
    if dry_run {
        out.targets = plan
            .targets
            .iter()
            .map(|t| {
                let result = if t.blocked.is_some() {
                    // A real run would fail here too: say so, with the same exit code.
                    TargetResult::Failed
                } else if t.action == Action::None {
                    TargetResult::None
                } else {
                    TargetResult::Planned
                };
                target_report(t, result, None)
            })
            .collect();
        out.failed |= plan.targets.iter().any(|t| t.blocked.is_some());
        return out;
    }

    // Owe the container actions before touching any sink: if we die after the write, the next
    // run still knows the containers have not caught up.
    let mut owed = journal.owed();
    let due: BTreeSet<String> = plan
        .targets
        .iter()
        .filter(|t| t.action != Action::None)
        .map(|t| t.name.clone())
        .collect();
    if plan.sinks_change() && !due.is_subset(&owed) {
        owed.extend(due.iter().cloned());
        if let Err(e) = journal.set_owed(&owed) {
            out.failed = true;
            for (r, s) in out.sinks.iter_mut().zip(&plan.sinks) {
                if s.needs_write() {
                    r.result = SinkResult::Skipped;
                    r.error = Some(format!(
                        "not written: cannot record the state journal ({e})"
                    ));
                }
            }
            out.targets = plan
                .targets
                .iter()
                .map(|t| target_report(t, TargetResult::Skipped, None))
                .collect();
            return out;
        }
    }

    // Bindings with a failed or held sink: their later sinks are not written either.
    let mut stopped: BTreeSet<usize> = BTreeSet::new();
    for (i, step) in plan.sinks.iter().enumerate() {
        if !step.needs_write() {
            continue;
        }
        let serves: Vec<usize> = (0..plan.bindings.len())
            .filter(|&b| plan.bindings[b].input.sinks.contains(&i))
            .collect();
        let report = &mut out.sinks[i];
        if serves.iter().any(|b| stopped.contains(b)) {
            report.result = SinkResult::Skipped;
            continue;
        }
        match sinks[i].write(&step.desired).await {
            Ok(WriteOutcome::Written { versions }) => {
                report.result = SinkResult::Written;
                for k in &mut report.keys {
                    k.new_version = versions.get(&k.key).copied();
                }
            }
            Ok(WriteOutcome::Unchanged) => report.result = SinkResult::Unchanged,
            Ok(WriteOutcome::PendingApproval { detail }) => {
                report.result = SinkResult::PendingApproval;
                report.error = Some(detail);
                out.pending_approval = true;
                stopped.extend(serves);
            }
            Err(e) => {
                report.result = SinkResult::Failed;
                report.error = Some(match &e.hint {
                    Some(h) => format!("{e} (hint: {h})"),
                    None => e.to_string(),
                });
                out.failed = true;
                stopped.extend(serves);
            }
        }
    }

    let mut failed_groups: BTreeSet<String> = BTreeSet::new();
    for (i, step) in plan.targets.iter().enumerate() {
        let group = targets[i].group();
        let ready = step.waiting.is_none()
            && step.bindings.iter().all(|&b| {
                plan.bindings[b].input.restart == RestartMode::None || out.binding_sinks_ok(plan, b)
            });
        if step.action == Action::None && step.blocked.is_none() {
            out.targets
                .push(target_report(step, TargetResult::None, None));
            // Nothing is owed to a container that already runs with the values.
            if ready
                && owed.remove(&step.name)
                && let Err(e) = journal.set_owed(&owed)
            {
                tracing::warn!(error = %e, "cannot update the state journal");
            }
            continue;
        }
        if !ready {
            out.targets
                .push(target_report(step, TargetResult::Skipped, None));
            continue;
        }
        if let Some(g) = group.as_ref().filter(|g| failed_groups.contains(*g)) {
            let e = ActionError {
                rolled_back: false,
                message: format!("not attempted: an earlier container of {g} failed"),
                hint: None,
                logs: Vec::new(),
            };
            out.targets
                .push(target_report(step, TargetResult::Skipped, Some(e)));
            continue;
        }
        if step.blocked.is_some() {
            out.failed = true;
            out.targets
                .push(target_report(step, TargetResult::Failed, None));
            failed_groups.extend(group);
            continue;
        }
        let started = std::time::Instant::now();
        let res = match step.action {
            Action::Restart => targets[i].restart().await,
            Action::Recreate => targets[i].recreate(&step.changes).await,
            Action::Rollout => targets[i].rollout(&step.changes).await,
            Action::None => Ok(()),
        };
        let took = Some(started.elapsed());
        match res {
            Ok(()) => {
                let mut r = target_report(step, TargetResult::Done, None);
                r.pending = targets[i].pending();
                r.duration = took;
                out.targets.push(r);
                if owed.remove(&step.name)
                    && let Err(e) = journal.set_owed(&owed)
                {
                    tracing::warn!(error = %e, "cannot update the state journal; the next run may restart again");
                }
            }
            Err(e) => {
                out.failed = true;
                let mut r = target_report(step, TargetResult::Failed, Some(e));
                r.duration = took;
                out.targets.push(r);
                failed_groups.extend(group);
            }
        }
    }
    out
}

fn sink_report(s: &SinkStep, dry_run: bool) -> SinkReport {
    let (keys, result, error) = match &s.observation {
        Ok(obs) => (
            s.desired
                .keys()
                .map(|k| {
                    let o = obs.get(k).cloned().unwrap_or_default();
                    KeyReport {
                        key: k.clone(),
                        old: o.current,
                        version: o.version,
                        action: if o.needs_write {
                            WriteAction::Write
                        } else {
                            WriteAction::None
                        },
                        new_version: None,
                    }
                })
                .collect(),
            if dry_run && s.needs_write() {
                SinkResult::Planned
            } else {
                SinkResult::Unchanged
            },
            None,
        ),
        Err(e) => (
            s.desired
                .keys()
                .map(|k| KeyReport {
                    key: k.clone(),
                    old: None,
                    version: None,
                    action: WriteAction::None,
                    new_version: None,
                })
                .collect(),
            SinkResult::Failed,
            Some(match &e.hint {
                Some(h) => format!("{e} (hint: {h})"),
                None => e.to_string(),
            }),
        ),
    };
    SinkReport {
        info: s.info.clone(),
        keys,
        result,
        error,
    }
}

#[cfg(test)]
mod tests;
