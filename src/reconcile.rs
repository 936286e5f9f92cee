//! The pure core: desired AUD + what the sinks and containers hold -> a [`Plan`] -> applied.
//!
//! Nothing here knows HTTP, clap, files or bollard. [`plan`] is a pure function; [`apply`]
//! drives the [`Sink`] and [`Target`] traits in the one order that is safe: every sink first,
//! then, only if every sink holds the new value, the containers one at a time. A journal records
//! which container actions are owed before any sink is written, so a run that dies (or a
//! restart that fails) is finished by the next run.

use std::collections::BTreeSet;
use std::future::Future;

use serde::Serialize;

use crate::sink::{Observation, Sink, SinkInfo, WriteOutcome};

/// What to do with containers when the value changes (`--restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Recreate containers whose environment carries the key; restart the others.
    Auto,
    /// Restart (same configuration; does NOT reload environment variables).
    Restart,
    /// Recreate with the key's value replaced; everything else preserved.
    Recreate,
    /// Touch no container.
    None,
}

/// A container as `reconcile` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetObservation {
    /// `Some(value)` when the container's configured environment carries the key.
    pub env_value: Option<String>,
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
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The interface to one container (or any other restartable consumer of the value).
pub trait Target: Send {
    fn name(&self) -> String;
    /// Targets of one group (e.g. a compose service) are acted on in order, and the first
    /// failure skips the rest of its group so a bad value never takes down every replica.
    fn group(&self) -> Option<String> {
        None
    }
    fn observe(
        &mut self,
        key: &str,
    ) -> impl Future<Output = Result<TargetObservation, ActionError>> + Send;
    fn restart(&mut self) -> impl Future<Output = Result<(), ActionError>> + Send;
    fn recreate(
        &mut self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), ActionError>> + Send;
}

/// Records the container actions that are owed, across runs.
pub trait Journal {
    fn owed(&self) -> BTreeSet<String>;
    fn set_owed(&mut self, names: &BTreeSet<String>) -> Result<(), String>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    None,
    Restart,
    Recreate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SinkStep {
    pub info: SinkInfo,
    pub observation: Observation,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetStep {
    pub name: String,
    pub action: Action,
    pub reason: String,
    /// Set when the container could not be inspected; the action then fails.
    pub blocked: Option<ActionError>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub desired: String,
    /// The variable that carries the value (in sinks and container environments).
    pub key: String,
    pub sinks: Vec<SinkStep>,
    pub targets: Vec<TargetStep>,
}

impl Plan {
    pub fn sinks_change(&self) -> bool {
        self.sinks.iter().any(|s| s.observation.needs_write)
    }

    pub fn has_work(&self) -> bool {
        self.sinks_change()
            || self
                .targets
                .iter()
                .any(|t| t.action != Action::None || t.blocked.is_some())
    }
}

/// Decide what to do. Pure.
pub fn plan(
    desired: &str,
    key: &str,
    sinks: Vec<(SinkInfo, Observation)>,
    targets: Vec<(String, Result<TargetObservation, ActionError>)>,
    mode: RestartMode,
    owed: &BTreeSet<String>,
) -> Plan {
    let changed = sinks.iter().any(|(_, o)| o.needs_write);
    let targets = targets
        .into_iter()
        .map(|(name, obs)| {
            let was_owed = owed.contains(&name);
            let cause = if changed {
                Some("the value changed in the sinks")
            } else if was_owed {
                Some("an earlier run changed the value but did not finish this container")
            } else {
                None
            };
            let (action, reason, blocked) = match (mode, obs) {
                (RestartMode::None, _) => (Action::None, "--restart none".to_string(), None),
                (_, Err(e)) => {
                    let action = if mode == RestartMode::Recreate { Action::Recreate } else { Action::Restart };
                    (action, "cannot inspect the container".to_string(), Some(e))
                }
                (RestartMode::Auto | RestartMode::Recreate, Ok(TargetObservation { env_value: Some(v) })) => {
                    if v != desired {
                        let why = if changed {
                            format!("its environment carries {key} (value baked in at creation): recreate to apply")
                        } else {
                            format!("drifted: its environment carries {key}={} but the desired value is {}", short(&v), short(desired))
                        };
                        (Action::Recreate, why, None)
                    } else if was_owed && mode == RestartMode::Recreate {
                        (Action::Recreate, cause.unwrap_or_default().to_string(), None)
                    } else {
                        (Action::None, format!("its environment already carries the desired {key}"), None)
                    }
                }
                (RestartMode::Auto, Ok(TargetObservation { env_value: None })) => match cause {
                    Some(c) => (Action::Restart, format!("{c}; no {key} in its environment, so it reads the value at start-up"), None),
                    None => (Action::None, "in sync".to_string(), None),
                },
                (RestartMode::Recreate, Ok(TargetObservation { env_value: None })) => match cause {
                    Some(c) => (Action::Recreate, c.to_string(), None),
                    None => (Action::None, "in sync".to_string(), None),
                },
                (RestartMode::Restart, Ok(obs)) => match cause {
                    Some(c) => {
                        let warn = match obs.env_value {
                            Some(_) => format!(" (warning: its environment carries {key}; a restart keeps the old value, use --restart recreate)"),
                            None => String::new(),
                        };
                        (Action::Restart, format!("{c}{warn}"), None)
                    }
                    None => (Action::None, "in sync".to_string(), None),
                },
            };
            TargetStep {
                name,
                action,
                reason,
                blocked,
            }
        })
        .collect();
    Plan {
        desired: desired.to_string(),
        key: key.to_string(),
        sinks: sinks
            .into_iter()
            .map(|(info, observation)| SinkStep { info, observation })
            .collect(),
        targets,
    }
}

/// First 8 characters of an AUD, enough to tell two apart in a log line.
pub fn short(v: &str) -> String {
    if v.chars().count() > 12 {
        format!("{}…", v.chars().take(8).collect::<String>())
    } else {
        v.to_string()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkReport {
    #[serde(flatten)]
    pub info: SinkInfo,
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// `write` or `none`.
    pub action: &'static str,
    /// `planned`, `written`, `unchanged`, `pending_approval`, `failed`, `skipped`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetReport {
    pub name: String,
    pub action: Action,
    pub reason: String,
    /// `planned`, `done`, `none`, `failed`, `skipped`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ActionError>,
}

/// The outcome of a pass: printed as text, or as JSON with `--output json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    pub changed: bool,
    pub pending_approval: bool,
    pub failed: bool,
    pub sinks: Vec<SinkReport>,
    pub containers: Vec<TargetReport>,
}

/// Carry out `plan`. Sinks in order; containers only when every sink holds the value.
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
        failed: false,
        sinks: Vec::new(),
        containers: Vec::new(),
    };
    for step in &plan.sinks {
        out.sinks.push(SinkReport {
            info: step.info.clone(),
            old: step.observation.current.clone(),
            version: step.observation.version,
            action: if step.observation.needs_write {
                "write"
            } else {
                "none"
            },
            result: if dry_run && step.observation.needs_write {
                "planned"
            } else {
                "unchanged"
            },
            new_version: None,
            error: None,
        });
    }
    let target_report =
        |t: &TargetStep, result: &'static str, error: Option<ActionError>| TargetReport {
            name: t.name.clone(),
            action: t.action,
            reason: t.reason.clone(),
            result,
            error: error.or_else(|| t.blocked.clone()),
        };
    if dry_run {
        out.containers = plan
            .targets
            .iter()
            .map(|t| {
                let result = if t.blocked.is_some() {
                    // A real run would fail here too: say so, with the same exit code.
                    "failed"
                } else if t.action == Action::None {
                    "none"
                } else {
                    "planned"
                };
                target_report(t, result, None)
            })
            .collect();
        out.failed = plan.targets.iter().any(|t| t.blocked.is_some());
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
            for r in &mut out.sinks {
                if r.action == "write" {
                    r.result = "skipped";
                }
            }
            out.containers = plan
                .targets
                .iter()
                .map(|t| target_report(t, "skipped", None))
                .collect();
            out.sinks.iter_mut().for_each(|r| {
                if r.result == "skipped" {
                    r.error = Some(format!(
                        "not written: cannot record the state journal ({e})"
                    ));
                }
            });
            return out;
        }
    }

    let mut sinks_ok = true;
    for (i, step) in plan.sinks.iter().enumerate() {
        if !step.observation.needs_write {
            continue;
        }
        let report = &mut out.sinks[i];
        if !sinks_ok {
            report.result = "skipped";
            continue;
        }
        match sinks[i].write(&plan.desired).await {
            Ok(WriteOutcome::Written { version }) => {
                report.result = "written";
                report.new_version = version;
            }
            Ok(WriteOutcome::Unchanged) => report.result = "unchanged",
            Ok(WriteOutcome::PendingApproval { detail }) => {
                report.result = "pending_approval";
                report.error = Some(detail);
                out.pending_approval = true;
                sinks_ok = false;
            }
            Err(e) => {
                report.result = "failed";
                report.error = Some(match e.hint() {
                    Some(h) => format!("{e} (hint: {h})"),
                    None => e.to_string(),
                });
                out.failed = true;
                sinks_ok = false;
            }
        }
    }

    let mut failed_groups: BTreeSet<String> = BTreeSet::new();
    for (i, step) in plan.targets.iter().enumerate() {
        let group = targets[i].group();
        if step.action == Action::None && step.blocked.is_none() {
            out.containers.push(target_report(step, "none", None));
            // Nothing is owed to a container that already runs with the value.
            if sinks_ok
                && owed.remove(&step.name)
                && let Err(e) = journal.set_owed(&owed)
            {
                tracing::warn!(error = %e, "cannot update the state journal");
            }
            continue;
        }
        if !sinks_ok {
            out.containers.push(target_report(step, "skipped", None));
            continue;
        }
        if let Some(g) = group.as_ref().filter(|g| failed_groups.contains(*g)) {
            let e = ActionError {
                rolled_back: false,
                message: format!("not attempted: an earlier container of {g} failed"),
                hint: None,
            };
            out.containers.push(target_report(step, "skipped", Some(e)));
            continue;
        }
        if step.blocked.is_some() {
            out.failed = true;
            out.containers.push(target_report(step, "failed", None));
            failed_groups.extend(group);
            continue;
        }
        let res = match step.action {
            Action::Restart => targets[i].restart().await,
            Action::Recreate => targets[i].recreate(&plan.key, &plan.desired).await,
            Action::None => Ok(()),
        };
        match res {
            Ok(()) => {
                out.containers.push(target_report(step, "done", None));
                if owed.remove(&step.name)
                    && let Err(e) = journal.set_owed(&owed)
                {
                    tracing::warn!(error = %e, "cannot update the state journal; the next run may restart again");
                }
            }
            Err(e) => {
                out.failed = true;
                out.containers.push(target_report(step, "failed", Some(e)));
                failed_groups.extend(group);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "new";
    const K: &str = "CLOUDFLARE_AUD_TAG";

    fn sink(needs_write: bool) -> (SinkInfo, Observation) {
        (
            SinkInfo {
                kind: "env",
                target: ".env".into(),
                key: K.into(),
            },
            Observation {
                current: Some(if needs_write { "old" } else { NEW }.into()),
                needs_write,
                version: None,
            },
        )
    }

    fn tgt(env: Option<&str>) -> (String, Result<TargetObservation, ActionError>) {
        (
            "lambda-server".into(),
            Ok(TargetObservation {
                env_value: env.map(String::from),
            }),
        )
    }

    fn action(changed: bool, env: Option<&str>, mode: RestartMode, owed: bool) -> Action {
        let owed: BTreeSet<String> = if owed {
            ["lambda-server".to_string()].into()
        } else {
            BTreeSet::new()
        };
        plan(NEW, K, vec![sink(changed)], vec![tgt(env)], mode, &owed).targets[0].action
    }

    #[test]
    fn auto_recreates_when_env_carries_a_stale_value_and_restarts_otherwise() {
        assert_eq!(
            action(true, Some("old"), RestartMode::Auto, false),
            Action::Recreate
        );
        assert_eq!(
            action(true, None, RestartMode::Auto, false),
            Action::Restart
        );
        assert_eq!(
            action(true, Some(NEW), RestartMode::Auto, false),
            Action::None,
            "already recreated"
        );
    }

    #[test]
    fn drift_is_converged_even_when_sinks_are_in_sync() {
        assert_eq!(
            action(false, Some("old"), RestartMode::Auto, false),
            Action::Recreate
        );
        assert_eq!(
            action(false, Some(NEW), RestartMode::Auto, false),
            Action::None
        );
        assert_eq!(action(false, None, RestartMode::Auto, false), Action::None);
    }

    #[test]
    fn owed_restart_is_retried() {
        assert_eq!(
            action(false, None, RestartMode::Restart, true),
            Action::Restart
        );
        assert_eq!(
            action(false, None, RestartMode::Auto, true),
            Action::Restart
        );
        assert_eq!(
            action(false, None, RestartMode::Restart, false),
            Action::None
        );
    }

    #[test]
    fn short_cuts_on_characters_not_bytes() {
        assert_eq!(short("未設定のプレースホルダーです"), "未設定のプレース…");
        assert_eq!(short(&"ab".repeat(32)), "abababab…");
        assert_eq!(short("old"), "old");
    }

    #[test]
    fn recreate_mode_recreates_even_without_the_key_in_the_environment() {
        // `auto` would only restart these: `recreate` is the user's explicit choice.
        assert_eq!(
            action(true, None, RestartMode::Recreate, false),
            Action::Recreate,
            "changed, no key in env"
        );
        assert_eq!(
            action(false, None, RestartMode::Recreate, true),
            Action::Recreate,
            "owed, no key in env"
        );
        assert_eq!(
            action(true, Some("old"), RestartMode::Recreate, false),
            Action::Recreate,
            "changed, stale key in env"
        );
        assert_eq!(
            action(false, Some(NEW), RestartMode::Recreate, true),
            Action::Recreate,
            "owed although the env already holds the value (an earlier recreate half done)"
        );
        assert_eq!(
            action(false, Some("old"), RestartMode::Recreate, false),
            Action::Recreate,
            "drifted"
        );
    }

    #[test]
    fn recreate_mode_leaves_a_container_in_sync_alone() {
        assert_eq!(
            action(false, Some(NEW), RestartMode::Recreate, false),
            Action::None,
            "env holds the desired value and nothing is owed"
        );
        assert_eq!(
            action(true, Some(NEW), RestartMode::Recreate, false),
            Action::None,
            "already recreated with the value the sinks are about to get"
        );
        assert_eq!(
            action(false, None, RestartMode::Recreate, false),
            Action::None,
            "nothing changed, nothing owed"
        );
    }

    #[test]
    fn recreate_mode_recreates_a_container_that_cannot_be_inspected() {
        let p = plan(
            NEW,
            K,
            vec![sink(true)],
            vec![(
                "lambda-server".into(),
                Err(ActionError {
                    rolled_back: false,
                    message: "gone".into(),
                    hint: None,
                }),
            )],
            RestartMode::Recreate,
            &BTreeSet::new(),
        );
        assert_eq!(p.targets[0].action, Action::Recreate);
        assert!(p.targets[0].blocked.is_some());
    }

    #[test]
    fn none_mode_touches_nothing() {
        assert_eq!(
            action(true, Some("old"), RestartMode::None, true),
            Action::None
        );
    }

    #[test]
    fn restart_mode_warns_when_env_is_baked_in() {
        let p = plan(
            NEW,
            K,
            vec![sink(true)],
            vec![tgt(Some("old"))],
            RestartMode::Restart,
            &BTreeSet::new(),
        );
        assert_eq!(p.targets[0].action, Action::Restart);
        assert!(
            p.targets[0].reason.contains("--restart recreate"),
            "{}",
            p.targets[0].reason
        );
    }

    // --- apply, with in-memory sinks and targets ---

    struct MemSink {
        value: Option<String>,
        fail: bool,
        writes: usize,
    }

    impl MemSink {
        /// A working sink that holds `value`.
        fn holding(value: &str) -> MemSink {
            MemSink {
                value: Some(value.into()),
                fail: false,
                writes: 0,
            }
        }
    }

    impl Sink for MemSink {
        fn info(&self) -> SinkInfo {
            sink(true).0
        }
        async fn observe(&mut self, desired: &str) -> Result<Observation, crate::sink::Error> {
            Ok(Observation {
                current: self.value.clone(),
                needs_write: self.value.as_deref() != Some(desired),
                version: None,
            })
        }
        async fn write(&mut self, desired: &str) -> Result<WriteOutcome, crate::sink::Error> {
            if self.fail {
                return Err(crate::sink::Error::EnvFile {
                    path: ".env".into(),
                    message: "disk full".into(),
                });
            }
            self.writes += 1;
            self.value = Some(desired.into());
            Ok(WriteOutcome::Written { version: None })
        }
    }

    #[derive(Default)]
    struct MemTarget {
        restarts: usize,
        fail: bool,
    }

    impl Target for MemTarget {
        fn name(&self) -> String {
            "lambda-server".into()
        }
        async fn observe(&mut self, _key: &str) -> Result<TargetObservation, ActionError> {
            Ok(TargetObservation { env_value: None })
        }
        async fn restart(&mut self) -> Result<(), ActionError> {
            if self.fail {
                return Err(ActionError {
                    rolled_back: false,
                    message: "daemon gone".into(),
                    hint: None,
                });
            }
            self.restarts += 1;
            Ok(())
        }
        async fn recreate(&mut self, _k: &str, _v: &str) -> Result<(), ActionError> {
            unreachable!("not planned in these tests")
        }
    }

    #[derive(Default)]
    struct MemJournal(BTreeSet<String>);

    impl Journal for MemJournal {
        fn owed(&self) -> BTreeSet<String> {
            self.0.clone()
        }
        fn set_owed(&mut self, names: &BTreeSet<String>) -> Result<(), String> {
            self.0 = names.clone();
            Ok(())
        }
    }

    async fn pass(sinks: &mut [MemSink], t: &mut MemTarget, j: &mut MemJournal) -> Outcome {
        let mut obs = Vec::new();
        for s in sinks.iter_mut() {
            obs.push((s.info(), s.observe(NEW).await.unwrap()));
        }
        let p = plan(NEW, K, obs, vec![tgt(None)], RestartMode::Auto, &j.owed());
        apply(&p, sinks, std::slice::from_mut(t), j, false).await
    }

    #[tokio::test]
    async fn a_failing_sink_blocks_every_restart_and_the_next_run_finishes() {
        let mut sinks = vec![
            MemSink::holding("old"),
            MemSink {
                fail: true,
                ..MemSink::holding("old")
            },
        ];
        let mut t = MemTarget::default();
        let mut j = MemJournal::default();
        let out = pass(&mut sinks, &mut t, &mut j).await;
        assert!(out.failed);
        assert_eq!(t.restarts, 0);
        assert_eq!(out.containers[0].result, "skipped");
        assert!(j.0.contains("lambda-server"), "the restart is owed");

        sinks[1].fail = false;
        let out = pass(&mut sinks, &mut t, &mut j).await;
        assert!(!out.failed);
        assert_eq!((sinks[0].writes, sinks[1].writes, t.restarts), (1, 1, 1));
        assert!(j.0.is_empty());
    }

    #[tokio::test]
    async fn a_failed_restart_is_retried_by_the_next_run_without_a_write() {
        let mut sinks = vec![MemSink::holding("old")];
        let mut t = MemTarget {
            restarts: 0,
            fail: true,
        };
        let mut j = MemJournal::default();
        let out = pass(&mut sinks, &mut t, &mut j).await;
        assert!(out.failed && sinks[0].writes == 1 && t.restarts == 0);
        t.fail = false;
        let out = pass(&mut sinks, &mut t, &mut j).await;
        assert!(!out.failed && !out.changed);
        assert_eq!((sinks[0].writes, t.restarts), (1, 1));
        let out = pass(&mut sinks, &mut t, &mut j).await;
        assert_eq!(
            (out.containers[0].result, t.restarts),
            ("none", 1),
            "third run is a no-op"
        );
    }

    /// A replica of a compose service: recreates, or fails when `fail` is set.
    struct Replica {
        name: &'static str,
        group: Option<&'static str>,
        fail: bool,
        recreated: bool,
    }

    impl Target for Replica {
        fn name(&self) -> String {
            self.name.into()
        }
        fn group(&self) -> Option<String> {
            self.group.map(String::from)
        }
        async fn observe(&mut self, _key: &str) -> Result<TargetObservation, ActionError> {
            Ok(TargetObservation {
                env_value: Some("old".into()),
            })
        }
        async fn restart(&mut self) -> Result<(), ActionError> {
            unreachable!("auto mode recreates containers that carry the key")
        }
        async fn recreate(&mut self, _k: &str, _v: &str) -> Result<(), ActionError> {
            if self.fail {
                return Err(ActionError {
                    rolled_back: false,
                    message: "unhealthy; rolled back".into(),
                    hint: None,
                });
            }
            self.recreated = true;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failure_stops_the_rest_of_its_group_only() {
        let replica = |name, group, fail| Replica {
            name,
            group,
            fail,
            recreated: false,
        };
        let mut targets = vec![
            replica("p_svc_1", Some("p/svc"), true),
            replica("p_svc_2", Some("p/svc"), false),
            replica("other", None, false),
            replica("q_svc_1", Some("q/svc"), false),
        ];
        let mut sinks = vec![MemSink::holding("old")];
        let obs = vec![(sinks[0].info(), sinks[0].observe(NEW).await.unwrap())];
        let tobs = targets
            .iter()
            .map(|t| {
                (
                    t.name(),
                    Ok(TargetObservation {
                        env_value: Some("old".into()),
                    }),
                )
            })
            .collect();
        let p = plan(NEW, K, obs, tobs, RestartMode::Auto, &BTreeSet::new());
        let mut j = MemJournal::default();
        let out = apply(&p, &mut sinks, &mut targets, &mut j, false).await;
        let results: Vec<&str> = out.containers.iter().map(|c| c.result).collect();
        assert_eq!(results, vec!["failed", "skipped", "done", "done"]);
        assert!(out.failed);
        assert!(!targets[1].recreated, "the second replica was left alone");
        assert!(targets[2].recreated && targets[3].recreated);
        assert_eq!(
            j.0,
            ["p_svc_1".to_string(), "p_svc_2".to_string()].into(),
            "both replicas are still owed"
        );
    }

    #[tokio::test]
    async fn dry_run_fails_like_a_real_run_when_a_container_cannot_be_inspected() {
        let mut sinks = vec![MemSink::holding("old")];
        let mut t = MemTarget::default();
        let mut j = MemJournal::default();
        let obs = vec![(sinks[0].info(), sinks[0].observe(NEW).await.unwrap())];
        let down = Err(ActionError {
            rolled_back: false,
            message: "cannot reach the Docker daemon".into(),
            hint: None,
        });
        let p = plan(
            NEW,
            K,
            obs,
            vec![("lambda-server".into(), down)],
            RestartMode::Auto,
            &BTreeSet::new(),
        );
        let out = apply(&p, &mut sinks, std::slice::from_mut(&mut t), &mut j, true).await;
        assert!(out.failed);
        assert_eq!(out.containers[0].result, "failed");
        assert_eq!(sinks[0].writes, 0);
    }

    #[tokio::test]
    async fn an_owed_container_that_already_carries_the_value_is_cleared() {
        let mut sinks = vec![MemSink::holding(NEW)];
        let mut t = MemTarget::default();
        let mut j = MemJournal(["lambda-server".to_string()].into());
        let obs = vec![(sinks[0].info(), sinks[0].observe(NEW).await.unwrap())];
        let p = plan(
            NEW,
            K,
            obs,
            vec![tgt(Some(NEW))],
            RestartMode::Auto,
            &j.owed(),
        );
        assert_eq!(p.targets[0].action, Action::None);
        apply(&p, &mut sinks, std::slice::from_mut(&mut t), &mut j, false).await;
        assert!(j.0.is_empty(), "journal cleared");
        assert_eq!(t.restarts, 0);
    }

    #[tokio::test]
    async fn dry_run_changes_nothing() {
        let mut sinks = vec![MemSink::holding("old")];
        let mut t = MemTarget::default();
        let mut j = MemJournal::default();
        let obs = vec![(sinks[0].info(), sinks[0].observe(NEW).await.unwrap())];
        let p = plan(
            NEW,
            K,
            obs,
            vec![tgt(None)],
            RestartMode::Auto,
            &BTreeSet::new(),
        );
        let out = apply(&p, &mut sinks, std::slice::from_mut(&mut t), &mut j, true).await;
        assert_eq!((sinks[0].writes, t.restarts), (0, 0));
        assert!(j.0.is_empty());
        assert_eq!(out.sinks[0].result, "planned");
        assert_eq!(out.containers[0].result, "planned");
    }
}
