use super::*;

const NEW: &str = "new";
const K: &str = "CLOUDFLARE_AUD_TAG";

fn info() -> SinkInfo {
    SinkInfo {
        kind: "env",
        target: ".env".into(),
    }
}

fn sink(needs_write: bool) -> (SinkInfo, Values, Result<SinkObservation, SinkError>) {
    let obs = KeyObservation {
        current: Some(if needs_write { "old" } else { NEW }.into()),
        needs_write,
        version: None,
    };
    (
        info(),
        [(K.to_string(), NEW.to_string())].into(),
        Ok([(K.to_string(), obs)].into()),
    )
}

fn tgt(env: Option<&str>) -> TargetIn {
    TargetIn {
        name: "lambda-server".into(),
        observation: Ok(TargetObservation {
            env: env
                .map(|v| [(K.to_string(), v.to_string())].into())
                .unwrap_or_default(),
            carries: BTreeSet::new(),
            ..TargetObservation::default()
        }),
        ran_with: Values::new(),
    }
}

/// One binding of key K to every sink and target given.
fn one(sinks: usize, targets: usize, mode: RestartMode) -> Vec<BindingIn> {
    vec![BindingIn {
        id: "api.example.com".into(),
        key: K.into(),
        desired: Some(NEW.into()),
        sinks: (0..sinks).collect(),
        targets: (0..targets).collect(),
        restart: mode,
    }]
}

fn action(changed: bool, env: Option<&str>, mode: RestartMode, owed: bool) -> Action {
    let owed: BTreeSet<String> = if owed {
        ["lambda-server".to_string()].into()
    } else {
        BTreeSet::new()
    };
    plan(one(1, 1, mode), vec![sink(changed)], vec![tgt(env)], &owed).targets[0].action
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
fn a_container_that_last_ran_with_another_value_is_acted_on() {
    let mut t = tgt(None);
    t.ran_with = [(K.to_string(), "old".to_string())].into();
    let p = plan(
        one(1, 1, RestartMode::Auto),
        vec![sink(false)],
        vec![t],
        &BTreeSet::new(),
    );
    assert_eq!(p.targets[0].action, Action::Restart);
}

#[test]
fn only_an_aud_is_shortened_anything_else_is_not_shown() {
    assert_eq!(short("未設定のプレースホルダーです"), "(not an AUD)");
    assert_eq!(short(&"ab".repeat(32)), "abababab…");
    assert_eq!(short("old"), "(not an AUD)");
    assert_eq!(short("hunter2-admin-password-0123456789"), "(not an AUD)");
    assert_eq!(short(&"AB".repeat(32)), "(not an AUD)");
}

#[test]
fn recreate_mode_recreates_even_without_the_key_in_the_environment() {
    assert_eq!(
        action(true, None, RestartMode::Recreate, false),
        Action::Recreate
    );
    assert_eq!(
        action(false, None, RestartMode::Recreate, true),
        Action::Recreate
    );
    assert_eq!(
        action(true, Some("old"), RestartMode::Recreate, false),
        Action::Recreate
    );
    assert_eq!(
        action(false, Some(NEW), RestartMode::Recreate, true),
        Action::Recreate,
        "owed although the env already holds the value (an earlier recreate half done)"
    );
    assert_eq!(
        action(false, Some("old"), RestartMode::Recreate, false),
        Action::Recreate
    );
}

#[test]
fn recreate_mode_leaves_a_container_in_sync_alone() {
    assert_eq!(
        action(false, Some(NEW), RestartMode::Recreate, false),
        Action::None
    );
    assert_eq!(
        action(true, Some(NEW), RestartMode::Recreate, false),
        Action::None
    );
    assert_eq!(
        action(false, None, RestartMode::Recreate, false),
        Action::None
    );
}

fn gone() -> ActionError {
    ActionError {
        rolled_back: false,
        message: "gone".into(),
        hint: None,
        logs: Vec::new(),
    }
}

#[test]
fn recreate_mode_recreates_a_container_that_cannot_be_inspected() {
    let mut t = tgt(None);
    t.observation = Err(gone());
    let p = plan(
        one(1, 1, RestartMode::Recreate),
        vec![sink(true)],
        vec![t],
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
        one(1, 1, RestartMode::Restart),
        vec![sink(true)],
        vec![tgt(Some("old"))],
        &BTreeSet::new(),
    );
    assert_eq!(p.targets[0].action, Action::Restart);
    assert!(
        p.targets[0].reason.contains("--restart recreate"),
        "{}",
        p.targets[0].reason
    );
    assert_eq!(
        p.targets[0].keeps_old.get(K),
        Some(&KeepsOld::RestartKeepsEnv),
        "a restart keeps the baked-in value"
    );
}

#[test]
fn keeps_old_says_which_containers_miss_the_new_value() {
    // --restart none on a changed value: the container still runs the old one.
    let p = plan(
        one(1, 1, RestartMode::None),
        vec![sink(true)],
        vec![tgt(None)],
        &BTreeSet::new(),
    );
    assert_eq!(p.targets[0].keeps_old.get(K), Some(&KeepsOld::RestartNone));
    // A restart of a container that reads the value at start-up applies it.
    let p = plan(
        one(1, 1, RestartMode::Restart),
        vec![sink(true)],
        vec![tgt(None)],
        &BTreeSet::new(),
    );
    assert!(p.targets[0].keeps_old.is_empty());
    // So does a recreate of one that carries it.
    let p = plan(
        one(1, 1, RestartMode::Auto),
        vec![sink(true)],
        vec![tgt(Some("old"))],
        &BTreeSet::new(),
    );
    assert!(p.targets[0].keeps_old.is_empty());
}

// --- apply, with in-memory sinks and targets ---

struct MemSink {
    values: Values,
    fail: bool,
    writes: usize,
}

impl MemSink {
    /// A working sink that holds `value` for K.
    fn holding(value: &str) -> MemSink {
        MemSink {
            values: [(K.to_string(), value.to_string())].into(),
            fail: false,
            writes: 0,
        }
    }
}

impl Sink for MemSink {
    fn info(&self) -> SinkInfo {
        info()
    }
    async fn observe(&mut self, desired: &Values) -> Result<SinkObservation, SinkError> {
        Ok(desired
            .iter()
            .map(|(k, v)| {
                let cur = self.values.get(k).cloned();
                (
                    k.clone(),
                    KeyObservation {
                        needs_write: cur.as_ref() != Some(v),
                        current: cur,
                        version: None,
                    },
                )
            })
            .collect())
    }
    async fn write(&mut self, desired: &Values) -> Result<WriteOutcome, SinkError> {
        if self.fail {
            return Err(SinkError {
                message: "disk full".into(),
                hint: None,
            });
        }
        self.writes += 1;
        self.values.extend(desired.clone());
        Ok(WriteOutcome::Written {
            versions: BTreeMap::new(),
        })
    }
}

#[derive(Default)]
struct MemTarget {
    name: String,
    env: Values,
    restarts: usize,
    recreates: Vec<Values>,
    fail: bool,
    group: Option<String>,
}

impl MemTarget {
    fn named(name: &str) -> MemTarget {
        MemTarget {
            name: name.into(),
            ..MemTarget::default()
        }
    }
}

impl Target for MemTarget {
    fn group(&self) -> Option<String> {
        self.group.clone()
    }
    async fn observe(
        &mut self,
        keys: &[String],
        _watch: &[String],
    ) -> Result<TargetObservation, ActionError> {
        Ok(TargetObservation {
            env: self
                .env
                .iter()
                .filter(|(k, _)| keys.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            carries: BTreeSet::new(),
            ..TargetObservation::default()
        })
    }
    async fn restart(&mut self) -> Result<(), ActionError> {
        if self.fail {
            return Err(ActionError {
                rolled_back: false,
                message: "daemon gone".into(),
                hint: None,
                logs: Vec::new(),
            });
        }
        self.restarts += 1;
        Ok(())
    }
    async fn recreate(&mut self, changes: &Values) -> Result<(), ActionError> {
        if self.fail {
            return Err(ActionError {
                rolled_back: false,
                message: "unhealthy; rolled back".into(),
                hint: None,
                logs: Vec::new(),
            });
        }
        self.recreates.push(changes.clone());
        for (k, v) in changes {
            if let Some(old) = self.env.get_mut(k) {
                *old = v.clone();
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct MemJournal(BTreeSet<String>);

impl Journal for MemJournal {
    fn owed(&self) -> BTreeSet<String> {
        self.0.clone()
    }
    fn set_owed(&mut self, names: &BTreeSet<String>) -> Result<(), JournalError> {
        self.0 = names.clone();
        Ok(())
    }
}

/// A full pass: observe everything, plan, apply.
async fn pass(
    bindings: &[BindingIn],
    sinks: &mut [MemSink],
    targets: &mut [MemTarget],
    j: &mut MemJournal,
    dry_run: bool,
) -> (Plan, Outcome) {
    let mut obs = Vec::new();
    for (i, s) in sinks.iter_mut().enumerate() {
        let desired: Values = bindings
            .iter()
            .filter(|b| b.sinks.contains(&i))
            .filter_map(|b| Some((b.key.clone(), b.desired.clone()?)))
            .collect();
        let o = s.observe(&desired).await;
        obs.push((s.info(), desired, o));
    }
    let mut tins = Vec::new();
    for (i, t) in targets.iter_mut().enumerate() {
        let my_sinks: Vec<usize> = bindings
            .iter()
            .filter(|b| b.targets.contains(&i))
            .flat_map(|b| b.sinks.iter().copied())
            .collect();
        let keys: Vec<String> = bindings
            .iter()
            .filter(|b| b.targets.contains(&i) || b.sinks.iter().any(|s| my_sinks.contains(s)))
            .map(|b| b.key.clone())
            .collect();
        tins.push(TargetIn {
            name: t.name.clone(),
            observation: t.observe(&keys, &[]).await,
            ran_with: Values::new(),
        });
    }
    let p = plan(bindings.to_vec(), obs, tins, &j.owed());
    let out = apply(&p, sinks, targets, j, dry_run).await;
    (p, out)
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
    let mut t = vec![MemTarget::named("lambda-server")];
    let mut j = MemJournal::default();
    let b = one(2, 1, RestartMode::Auto);
    let (_, out) = pass(&b, &mut sinks, &mut t, &mut j, false).await;
    assert!(out.failed);
    assert_eq!(t[0].restarts, 0);
    assert_eq!(out.targets[0].result, TargetResult::Skipped);
    assert!(j.0.contains("lambda-server"), "the restart is owed");

    sinks[1].fail = false;
    let (_, out) = pass(&b, &mut sinks, &mut t, &mut j, false).await;
    assert!(!out.failed);
    assert_eq!((sinks[0].writes, sinks[1].writes, t[0].restarts), (1, 1, 1));
    assert!(j.0.is_empty());
}

#[tokio::test]
async fn a_failed_restart_is_retried_by_the_next_run_without_a_write() {
    let mut sinks = vec![MemSink::holding("old")];
    let mut t = vec![MemTarget {
        fail: true,
        ..MemTarget::named("lambda-server")
    }];
    let mut j = MemJournal::default();
    let b = one(1, 1, RestartMode::Auto);
    let (_, out) = pass(&b, &mut sinks, &mut t, &mut j, false).await;
    assert!(out.failed && sinks[0].writes == 1 && t[0].restarts == 0);
    t[0].fail = false;
    let (_, out) = pass(&b, &mut sinks, &mut t, &mut j, false).await;
    assert!(!out.failed && !out.changed);
    assert_eq!((sinks[0].writes, t[0].restarts), (1, 1));
    let (_, out) = pass(&b, &mut sinks, &mut t, &mut j, false).await;
    assert_eq!(
        (out.targets[0].result, t[0].restarts),
        (TargetResult::None, 1),
        "third run is a no-op"
    );
}

#[tokio::test]
async fn a_failure_stops_the_rest_of_its_group_only() {
    let replica = |name: &str, group: Option<&str>, fail| MemTarget {
        fail,
        group: group.map(String::from),
        env: [(K.to_string(), "old".to_string())].into(),
        ..MemTarget::named(name)
    };
    let mut targets = vec![
        replica("p_svc_1", Some("p/svc"), true),
        replica("p_svc_2", Some("p/svc"), false),
        replica("other", None, false),
        replica("q_svc_1", Some("q/svc"), false),
    ];
    let mut sinks = vec![MemSink::holding("old")];
    let mut j = MemJournal::default();
    let (_, out) = pass(
        &one(1, 4, RestartMode::Auto),
        &mut sinks,
        &mut targets,
        &mut j,
        false,
    )
    .await;
    let results: Vec<TargetResult> = out.targets.iter().map(|c| c.result).collect();
    assert_eq!(
        results,
        vec![
            TargetResult::Failed,
            TargetResult::Skipped,
            TargetResult::Done,
            TargetResult::Done
        ]
    );
    assert!(out.failed);
    assert!(
        targets[1].recreates.is_empty(),
        "the second replica was left alone"
    );
    assert_eq!(
        (targets[2].recreates.len(), targets[3].recreates.len()),
        (1, 1)
    );
    assert_eq!(
        j.0,
        ["p_svc_1".to_string(), "p_svc_2".to_string()].into(),
        "both replicas are still owed"
    );
}

#[tokio::test]
async fn dry_run_fails_like_a_real_run_when_a_container_cannot_be_inspected() {
    let sinks = [MemSink::holding("old")];
    let desired: Values = [(K.to_string(), NEW.to_string())].into();
    let mut s = sinks;
    let obs = vec![(info(), desired.clone(), s[0].observe(&desired).await)];
    let mut t = tgt(None);
    t.observation = Err(gone());
    let p = plan(one(1, 1, RestartMode::Auto), obs, vec![t], &BTreeSet::new());
    let mut targets = vec![MemTarget::named("lambda-server")];
    let out = apply(&p, &mut s, &mut targets, &mut MemJournal::default(), true).await;
    assert!(out.failed);
    assert_eq!(out.targets[0].result, TargetResult::Failed);
    assert_eq!(s[0].writes, 0);
}

#[tokio::test]
async fn an_owed_container_that_already_carries_the_value_is_cleared() {
    let mut sinks = vec![MemSink::holding(NEW)];
    let mut t = vec![MemTarget {
        env: [(K.to_string(), NEW.to_string())].into(),
        ..MemTarget::named("lambda-server")
    }];
    let mut j = MemJournal(["lambda-server".to_string()].into());
    let (p, _) = pass(
        &one(1, 1, RestartMode::Auto),
        &mut sinks,
        &mut t,
        &mut j,
        false,
    )
    .await;
    assert_eq!(p.targets[0].action, Action::None);
    assert!(j.0.is_empty(), "journal cleared");
    assert_eq!(t[0].restarts, 0);
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    let mut sinks = vec![MemSink::holding("old")];
    let mut t = vec![MemTarget::named("lambda-server")];
    let mut j = MemJournal::default();
    let (_, out) = pass(
        &one(1, 1, RestartMode::Auto),
        &mut sinks,
        &mut t,
        &mut j,
        true,
    )
    .await;
    assert_eq!((sinks[0].writes, t[0].restarts), (0, 0));
    assert!(j.0.is_empty());
    assert_eq!(out.sinks[0].result, SinkResult::Planned);
    assert_eq!(out.targets[0].result, TargetResult::Planned);
}

// --- many bindings ---

fn binding(
    id: &str,
    key: &str,
    aud: Option<&str>,
    sinks: &[usize],
    targets: &[usize],
) -> BindingIn {
    BindingIn {
        id: id.into(),
        key: key.into(),
        desired: aud.map(String::from),
        sinks: sinks.to_vec(),
        targets: targets.to_vec(),
        restart: RestartMode::Auto,
    }
}

#[tokio::test]
async fn a_container_reading_two_keys_is_recreated_once_with_both() {
    // One .env holds API_AUD and N8N_AUD; "shared" reads both, "web" only N8N_AUD.
    let mut env = MemSink::holding("x");
    env.values = [
        ("API_AUD".into(), "a0".into()),
        ("N8N_AUD".into(), "n0".into()),
    ]
    .into();
    let mut sinks = vec![env];
    let carried: Values = [
        ("API_AUD".into(), "a0".into()),
        ("N8N_AUD".into(), "n0".into()),
    ]
    .into();
    let mut targets = vec![
        MemTarget {
            env: carried.clone(),
            ..MemTarget::named("shared")
        },
        MemTarget {
            env: [("N8N_AUD".to_string(), "n0".to_string())].into(),
            ..MemTarget::named("web")
        },
    ];
    let b = vec![
        binding("api", "API_AUD", Some("a1"), &[0], &[0]),
        binding("n8n", "N8N_AUD", Some("n1"), &[0], &[0, 1]),
    ];
    let mut j = MemJournal::default();
    let (p, out) = pass(&b, &mut sinks, &mut targets, &mut j, false).await;
    assert!(!out.failed, "{out:?}");
    assert_eq!(sinks[0].writes, 1, "one write of the shared .env");
    assert_eq!(targets[0].recreates.len(), 1, "acted on once");
    assert_eq!(
        targets[0].recreates[0],
        [
            ("API_AUD".to_string(), "a1".to_string()),
            ("N8N_AUD".to_string(), "n1".to_string())
        ]
        .into()
    );
    assert_eq!(targets[1].recreates.len(), 1);
    assert_eq!(p.targets[0].bindings, vec![0, 1]);
    assert_eq!(out.targets.len(), 2);
    // A second pass does nothing.
    let (p, out) = pass(&b, &mut sinks, &mut targets, &mut j, false).await;
    assert!(!p.has_work() && !out.changed);
    assert_eq!((sinks[0].writes, targets[0].recreates.len()), (1, 1));
}

#[tokio::test]
async fn a_recreate_carries_the_other_bindings_keys_of_the_same_env() {
    // One .env holds API_AUD and N8N_AUD; "api" targets the container, "n8n" targets nothing
    // (or another container), but the container carries N8N_AUD through `env_file: .env`.
    let mut env = MemSink::holding("x");
    env.values = [
        ("API_AUD".into(), "a0".into()),
        ("N8N_AUD".into(), "n0".into()),
    ]
    .into();
    // A sink of its own that the container does not read: its key is never set there.
    let mut other = MemSink::holding("y");
    other.values = [("OTHER_AUD".into(), "o0".into())].into();
    let mut sinks = vec![env, other];
    let mut targets = vec![MemTarget {
        env: [
            ("API_AUD".to_string(), "a0".to_string()),
            ("N8N_AUD".to_string(), "n0".to_string()),
            ("OTHER_AUD".to_string(), "o0".to_string()),
        ]
        .into(),
        ..MemTarget::named("api")
    }];
    let b = vec![
        binding("api", "API_AUD", Some("a1"), &[0], &[0]),
        binding("n8n", "N8N_AUD", Some("n1"), &[0], &[]),
        binding("other", "OTHER_AUD", Some("o1"), &[1], &[]),
    ];
    let mut j = MemJournal::default();
    let (p, out) = pass(&b, &mut sinks, &mut targets, &mut j, false).await;
    assert!(!out.failed, "{out:?}");
    assert_eq!(targets[0].recreates.len(), 1, "acted on once");
    assert_eq!(
        targets[0].recreates[0],
        [
            ("API_AUD".to_string(), "a1".to_string()),
            ("N8N_AUD".to_string(), "n1".to_string())
        ]
        .into(),
        "the other binding's key of the same .env, not the key of another sink"
    );
    assert!(
        p.targets[0].reason.contains("N8N_AUD of binding n8n"),
        "{}",
        p.targets[0].reason
    );
}

#[tokio::test]
async fn a_failing_binding_does_not_stop_a_healthy_one_and_the_next_pass_finishes() {
    // Binding "api" (sink 0, container 0 alone) is healthy; "n8n" (sink 1) failed at its
    // source; container 1 reads both.
    let mut sinks = vec![MemSink::holding("x"), MemSink::holding("x")];
    sinks[0].values = [("API_AUD".into(), "a0".into())].into();
    sinks[1].values = [("N8N_AUD".into(), "n0".into())].into();
    let mut targets = vec![MemTarget::named("api-server"), MemTarget::named("both")];
    let mut b = vec![
        binding("api", "API_AUD", Some("a1"), &[0], &[0, 1]),
        binding("n8n", "N8N_AUD", None, &[1], &[1]),
    ];
    let mut j = MemJournal::default();
    let (_, out) = pass(&b, &mut sinks, &mut targets, &mut j, false).await;
    assert!(out.failed);
    assert_eq!(
        (sinks[0].writes, sinks[1].writes),
        (1, 0),
        "the healthy binding is written"
    );
    assert_eq!(targets[0].restarts, 1, "its own container is applied");
    assert_eq!(
        targets[1].restarts, 0,
        "the shared container waits for the failed binding"
    );
    assert_eq!(out.targets[1].result, TargetResult::Skipped);
    assert!(
        out.targets[1].reason.contains("binding n8n failed"),
        "{}",
        out.targets[1].reason
    );
    assert!(j.0.contains("both"), "still owed");
    // The source heals: the next pass writes n8n and acts on the shared container once.
    b[1].desired = Some("n1".into());
    let (_, out) = pass(&b, &mut sinks, &mut targets, &mut j, false).await;
    assert!(!out.failed, "{out:?}");
    assert_eq!((sinks[0].writes, sinks[1].writes), (1, 1));
    assert_eq!((targets[0].restarts, targets[1].restarts), (1, 1));
    assert!(j.0.is_empty());
}

#[test]
fn rollout_is_chosen_for_an_aliased_container_and_refused_with_a_reason() {
    let with = |aliased: bool, blocker: Option<&str>| {
        let mut t = tgt(Some("old"));
        if let Ok(o) = &mut t.observation {
            o.aliased = aliased;
            o.rollout_blocker = blocker.map(String::from);
        }
        t
    };
    let step = |mode: RestartMode, t: TargetIn| {
        plan(one(1, 1, mode), vec![sink(true)], vec![t], &BTreeSet::new())
            .targets
            .remove(0)
    };
    assert_eq!(
        step(RestartMode::Auto, with(true, None)).action,
        Action::Rollout
    );
    assert_eq!(
        step(RestartMode::Auto, with(false, None)).action,
        Action::Recreate,
        "no alias of its own: nothing to keep up by name"
    );
    assert_eq!(
        step(
            RestartMode::Auto,
            with(true, Some("it publishes host port 8080/tcp"))
        )
        .action,
        Action::Recreate
    );
    assert_eq!(
        step(RestartMode::Rollout, with(false, None)).action,
        Action::Rollout
    );
    let s = step(
        RestartMode::Rollout,
        with(true, Some("it uses the host's network")),
    );
    assert_eq!(s.action, Action::Recreate);
    assert!(
        s.reason
            .ends_with("no rollout (it uses the host's network): recreated instead"),
        "{}",
        s.reason
    );
    // In sync: nothing, whatever the mode.
    let mut t = with(true, None);
    t.observation.as_mut().unwrap().env = [(K.to_string(), NEW.to_string())].into();
    assert_eq!(
        plan(
            one(1, 1, RestartMode::Rollout),
            vec![sink(false)],
            vec![t],
            &BTreeSet::new()
        )
        .targets[0]
            .action,
        Action::None
    );
}

#[test]
fn a_spec_target_lists_the_change_of_each_bound_key_and_a_container_does_not() {
    let old = "ab".repeat(32);
    let reason = |shows_env_diff: bool| {
        let mut t = tgt(Some(&old));
        if let Ok(o) = &mut t.observation {
            o.shows_env_diff = shows_env_diff;
        }
        let p = plan(
            one(1, 1, RestartMode::Auto),
            vec![sink(true)],
            vec![t],
            &BTreeSet::new(),
        );
        assert_eq!(p.targets[0].action, Action::Recreate);
        p.targets[0].reason.clone()
    };
    let shown = reason(true);
    assert!(
        shown.contains(&format!("env {K}: abababab… -> {}", short(NEW))),
        "{shown}"
    );
    assert!(!reason(false).contains(" -> "), "{}", reason(false));
    // In sync: nothing to list.
    let mut t = tgt(Some(NEW));
    if let Ok(o) = &mut t.observation {
        o.shows_env_diff = true;
    }
    let p = plan(
        one(1, 1, RestartMode::Auto),
        vec![sink(false)],
        vec![t],
        &BTreeSet::new(),
    );
    assert!(!p.targets[0].reason.contains(" -> "));
}

/// A Swarm service whose spec carries the desired value but whose running tasks do not (a
/// paused update) is not in sync: its action finishes the update, and says why.
#[test]
fn an_unsettled_target_is_acted_on_though_its_spec_carries_the_value() {
    let mut t = tgt(Some(NEW));
    if let Ok(o) = &mut t.observation {
        o.unsettled = Some("not converged: its update is paused".into());
    }
    for mode in [
        RestartMode::Auto,
        RestartMode::Recreate,
        RestartMode::Rollout,
    ] {
        let p = plan(
            one(1, 1, mode),
            vec![sink(false)],
            vec![t.clone()],
            &BTreeSet::new(),
        );
        assert_eq!(p.targets[0].action, Action::Recreate, "{mode:?}");
        assert_eq!(p.targets[0].reason, "not converged: its update is paused");
        assert_eq!(p.targets[0].changes[K], NEW);
    }
    // --restart none touches nothing, unsettled or not.
    let p = plan(
        one(1, 1, RestartMode::None),
        vec![sink(false)],
        vec![t],
        &BTreeSet::new(),
    );
    assert_eq!(p.targets[0].action, Action::None);
}
