//! The containers of a pass: every binding's targets resolved to containers (a compose service
//! to its replicas), each container **once** however many bindings read it, recovered from a
//! cut-short recreate, and observed for every key that matters to it.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{BindingTarget, SyncConfig};
use crate::docker::swarm::{self, SwarmService};
use crate::docker::{Container, Engine};
use crate::exec::CommandTarget;
use crate::reconcile::{ActionError, RestartMode, Target, TargetIn, TargetObservation, Values};

/// A container target, or the reason none can be had (daemon unreachable).
pub enum Slot {
    Live(Container),
    Swarm(SwarmService),
    /// A command target: runs without Docker.
    Command(CommandTarget),
    Down(ActionError),
}

impl Target for Slot {
    fn group(&self) -> Option<String> {
        match self {
            Slot::Live(c) => c.group(),
            Slot::Swarm(_) | Slot::Command(_) | Slot::Down(..) => None,
        }
    }
    async fn observe(
        &mut self,
        keys: &[String],
        watch: &[String],
    ) -> Result<TargetObservation, ActionError> {
        match self {
            Slot::Live(c) => c.observe(keys, watch).await,
            Slot::Swarm(s) => s.observe(keys).await,
            Slot::Command(c) => c.observe(keys, watch).await,
            Slot::Down(e) => Err(e.clone()),
        }
    }
    async fn restart(&mut self) -> Result<(), ActionError> {
        match self {
            Slot::Live(c) => c.restart().await,
            Slot::Command(c) => c.restart().await,
            // A restart would not read a new value either: the spec holds it.
            Slot::Swarm(s) => Err(ActionError {
                rolled_back: false,
                message: format!("{}: a Swarm service is not restarted; its spec carries no such key to update", s.label()),
                hint: Some("put the key in the service's environment (docker service update --env-add KEY=…)".into()),
                logs: Vec::new(),
            }),
            Slot::Down(e) => Err(e.clone()),
        }
    }
    async fn recreate(&mut self, changes: &Values) -> Result<(), ActionError> {
        match self {
            Slot::Live(c) => c.recreate(changes).await,
            Slot::Command(c) => c.recreate(changes).await,
            Slot::Swarm(s) => s.update(&pairs(changes)).await,
            Slot::Down(e) => Err(e.clone()),
        }
    }
    fn pending(&self) -> Option<Vec<String>> {
        match self {
            Slot::Live(c) => match c.hash_outcome() {
                crate::docker::compose::HashOutcome::Pending(p) => Some(p.clone()),
                _ => None,
            },
            Slot::Swarm(_) | Slot::Command(_) | Slot::Down(..) => None,
        }
    }
    async fn rollout(&mut self, changes: &Values) -> Result<(), ActionError> {
        match self {
            Slot::Live(c) => c.rollout(changes).await,
            Slot::Command(c) => c.rollout(changes).await,
            Slot::Swarm(s) => s.update(&pairs(changes)).await,
            Slot::Down(e) => Err(e.clone()),
        }
    }
}

fn pairs(changes: &Values) -> Vec<(String, String)> {
    changes
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The targets of a pass, with what each binding targets (indexes into `slots`).
pub struct Resolved {
    pub slots: Vec<Slot>,
    pub observed: Vec<TargetIn>,
    /// For each binding, the indexes of its containers.
    pub of_binding: Vec<Vec<usize>>,
    /// Recreates, rollouts and Swarm updates cut short by an earlier run, finished or undone
    /// (with `--dry-run`: found).
    pub recovered: Vec<String>,
    /// Containers (and Swarm services) whose cut-short recreate, rollout or update was finished
    /// forward: they run with the values it was making, so the action they were owed is done.
    pub finished: BTreeSet<String>,
    /// Containers given by id (or prefix) -> their name, to remember in the state.
    pub names: BTreeMap<String, String>,
    /// Targets (indexes into `slots`) that do not exist or are audsync's own container: their
    /// bindings fail before any sink is written (see [`hold_back`]).
    pub refused: BTreeMap<usize, ActionError>,
}

/// Targets are resolved before any sink is written: a binding with a refused target (see
/// [`Resolved::refused`]) gets no desired value, so its key is written to no sink and its
/// containers wait; its target reports why. Keys that a binding still going ahead writes to
/// the same sink are kept.
pub fn hold_back(
    refused: &BTreeMap<usize, ActionError>,
    inputs: &mut [crate::reconcile::BindingIn],
    sinks: &mut [(
        crate::reconcile::SinkInfo,
        Values,
        Result<crate::reconcile::SinkObservation, crate::reconcile::SinkError>,
    )],
) {
    let held: Vec<bool> = inputs
        .iter()
        .map(|b| b.targets.iter().any(|t| refused.contains_key(t)))
        .collect();
    for (bi, b) in inputs.iter().enumerate() {
        if !held[bi] {
            continue;
        }
        for &si in &b.sinks {
            let shared = inputs
                .iter()
                .enumerate()
                .any(|(o, ob)| !held[o] && ob.key == b.key && ob.sinks.contains(&si));
            if shared {
                continue;
            }
            let (_, desired, obs) = &mut sinks[si];
            desired.remove(&b.key);
            if let Ok(obs) = obs {
                obs.remove(&b.key);
            }
        }
    }
    for (b, held) in inputs.iter_mut().zip(held) {
        if held {
            b.desired = None;
        }
    }
}

/// After the plan: a refused target fails with its reason (rather than waiting for the
/// binding that [`hold_back`] stopped).
pub fn refuse(refused: &BTreeMap<usize, ActionError>, plan: &mut crate::reconcile::Plan) {
    for (&i, e) in refused {
        if let Some(t) = plan.targets.get_mut(i) {
            t.blocked = Some(e.clone());
            t.waiting = None;
            t.reason = "resolved before any sink was written".into();
        }
    }
}

/// Resolve and observe the containers. Containers are only asked about when their answer can
/// matter: always for auto/recreate (drift), for restart only when something is owed or
/// changing (`may_act`). `watch` are the names of audsync's own settings to look for in their
/// environments (a leaked credential).
pub async fn resolve(
    cfg: &SyncConfig,
    may_act: bool,
    ran_with: &BTreeMap<String, Values>,
    watch: &[String],
    known_names: &BTreeMap<String, String>,
    records: &BTreeMap<String, std::path::PathBuf>,
) -> Resolved {
    let mut names_of_ids: BTreeMap<String, String> = BTreeMap::new();
    // The leak check (`watch`) rides on an inspection made anyway: a Docker round trip of its
    // own would triple the cost of a no-change pass (measured: 5 ms -> 16 ms).
    // A binding whose targets are all commands needs no Docker.
    let need_docker = cfg.bindings.iter().any(|b| {
        b.targets.iter().any(BindingTarget::is_docker)
            && match b.restart {
                RestartMode::None => false,
                RestartMode::Restart => may_act,
                RestartMode::Auto | RestartMode::Recreate | RestartMode::Rollout => true,
            }
    });
    let mut names: Vec<(String, Option<String>)> = Vec::new();
    let mut of_binding: Vec<Vec<usize>> = Vec::new();
    let mut down: BTreeMap<String, ActionError> = BTreeMap::new();
    // Target label -> Swarm service name.
    let mut services: BTreeMap<String, String> = BTreeMap::new();
    // Target label -> a command's words.
    let mut commands: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let engine = if need_docker {
        Some(Engine::connect(&cfg.docker_host).await)
    } else {
        None
    };
    let index =
        |name: String, group: Option<String>, names: &mut Vec<(String, Option<String>)>| -> usize {
            match names.iter().position(|(n, _)| *n == name) {
                Some(i) => i,
                None => {
                    names.push((name, group));
                    names.len() - 1
                }
            }
        };
    for b in &cfg.bindings {
        let mut mine = Vec::new();
        for t in &b.targets {
            match t {
                BindingTarget::Container(c) => {
                    // Given by id or id prefix: go by its name, which survives a recreate.
                    let name = match &engine {
                        Some(Ok(e)) => match e.name_of(c).await {
                            Ok(Some(n)) if n != *c => {
                                names_of_ids.insert(c.clone(), n.clone());
                                n
                            }
                            Ok(None) => match known_names.get(c) {
                                Some(n) => {
                                    names_of_ids.insert(c.clone(), n.clone());
                                    n.clone()
                                }
                                None => c.clone(),
                            },
                            _ => c.clone(),
                        },
                        _ => c.clone(),
                    };
                    mine.push(index(name, None, &mut names))
                }
                BindingTarget::Exec(argv) => {
                    // Two bindings naming the same words share one target: run once.
                    let l = crate::exec::label(argv);
                    commands.insert(l.clone(), argv.clone());
                    mine.push(index(l, None, &mut names));
                }
                BindingTarget::SwarmService(s) => {
                    let l = swarm::label(s);
                    services.insert(l.clone(), s.clone());
                    mine.push(index(l, None, &mut names));
                }
                BindingTarget::ComposeService { project, service } => {
                    let group = format!("{project}/{service}");
                    let found = match &engine {
                        Some(Ok(e)) => e.compose_service(project, service).await,
                        Some(Err(err)) => Err(err.clone()),
                        None => Ok(vec![]),
                    };
                    match (found, &engine) {
                        (Ok(list), Some(_)) => {
                            for n in list {
                                mine.push(index(
                                    n,
                                    Some(format!("compose service {group}")),
                                    &mut names,
                                ));
                            }
                        }
                        (Ok(_), None) => mine.push(index(group, None, &mut names)),
                        (Err(err), _) => {
                            down.insert(group.clone(), err);
                            mine.push(index(group, None, &mut names));
                        }
                    }
                }
            }
        }
        mine.dedup();
        of_binding.push(mine);
    }
    // The keys each container is asked about: those of every binding that targets it, and of
    // every binding that writes one of those bindings' sinks (the container may carry them
    // through `env_file`, and a recreate sets them too: reconcile's `target_step`).
    let keys_of = |i: usize| -> Vec<String> {
        let sinks: Vec<&crate::config::BindingSink> = cfg
            .bindings
            .iter()
            .zip(&of_binding)
            .filter(|(_, t)| t.contains(&i))
            .flat_map(|(b, _)| &b.sinks)
            .collect();
        let mut k: Vec<String> = cfg
            .bindings
            .iter()
            .zip(&of_binding)
            .filter(|(b, t)| t.contains(&i) || b.sinks.iter().any(|s| sinks.contains(&s)))
            .map(|(b, _)| b.key.clone())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let siblings = std::sync::Arc::new(records.clone());
    let mut slots = Vec::new();
    let mut observed = Vec::new();
    let mut recovered = Vec::new();
    let mut finished = BTreeSet::new();
    let mut refused = BTreeMap::new();
    for (i, (name, group)) in names.iter().enumerate() {
        let ran = ran_with.get(name).cloned().unwrap_or_default();
        if let Some(argv) = commands.get(name) {
            let mut slot = Slot::Command(CommandTarget::new(argv.clone(), cfg.exec.clone()));
            observed.push(TargetIn {
                name: name.clone(),
                observation: slot.observe(&keys_of(i), watch).await,
                ran_with: ran,
            });
            slots.push(slot);
            continue;
        }
        let mut slot = match (&engine, down.get(name)) {
            (_, Some(err)) => Slot::Down(err.clone()),
            (Some(Ok(e)), None) if services.contains_key(name) => Slot::Swarm(
                e.swarm_service(&services[name], cfg.recreate.health_timeout)
                    .with_record(records.get(name).cloned()),
            ),
            (Some(Ok(e)), None) => {
                let c = e
                    .container(name)
                    .with_options(cfg.recreate.clone())
                    .with_record(records.get(name).cloned(), siblings.clone())
                    .with_compose(cfg.compose.clone());
                // Compose's word before any sink is written, when this pass may replace it.
                let c = if may_act && !cfg.dry_run {
                    c.asking_compose_before()
                } else {
                    c
                };
                Slot::Live(match group {
                    Some(g) => c.in_group(g),
                    None => c,
                })
            }
            // The engine cannot be reached: the sinks are still written (the value is right
            // whatever the engine's state), the restart is owed and the next run does it.
            (Some(Err(err)), None) => Slot::Down(err.clone()),
            (None, None) => {
                let not_needed = ActionError {
                    rolled_back: false,
                    message: "not inspected".into(),
                    hint: None,
                    logs: Vec::new(),
                };
                slots.push(Slot::Down(not_needed));
                observed.push(TargetIn {
                    name: name.clone(),
                    observation: Ok(TargetObservation::default()),
                    ran_with: ran,
                });
                continue;
            }
        };
        let mut recovery_pending = false;
        if let Slot::Live(c) = &mut slot {
            match c.recover(cfg.dry_run).await {
                Ok(done) => {
                    recovery_pending = cfg.dry_run && !done.is_empty();
                    recovered.extend(done);
                    if c.finished_forward() {
                        finished.insert(name.clone());
                    }
                }
                Err(e) => slot = Slot::Down(e),
            }
        }
        if let Slot::Swarm(sv) = &mut slot {
            match sv.recover(cfg.dry_run).await {
                Ok(done) => {
                    recovered.extend(done);
                    if sv.finished_forward() {
                        finished.insert(name.clone());
                    }
                }
                Err(e) => slot = Slot::Down(e),
            }
        }
        let mut obs = slot.observe(&keys_of(i), watch).await;
        if let (Slot::Live(c), Err(e)) = (&slot, &obs)
            && c.refused()
            && !recovery_pending
        {
            refused.insert(i, e.clone());
        }
        if recovery_pending && obs.is_err() {
            // A dry run leaves the cut-short recreate as it is, so the name may be missing;
            // a real run would restore it first. Plan as for a container without the keys.
            obs = Ok(TargetObservation::default());
        }
        observed.push(TargetIn {
            name: name.clone(),
            observation: obs,
            ran_with: ran,
        });
        slots.push(slot);
    }
    Resolved {
        slots,
        observed,
        of_binding,
        recovered,
        finished,
        names: names_of_ids,
        refused,
    }
}

/// After the plan: each command target due to run is told what changed (the bindings whose
/// value it is to apply; key, new and old value when only one), and its step says so in a
/// command's words. A command is run, never restarted or recreated: whatever the restart mode,
/// its step is one run.
pub fn brief_commands(
    plan: &mut crate::reconcile::Plan,
    slots: &mut [Slot],
    ran_with: &BTreeMap<String, Values>,
    owed: &std::collections::BTreeSet<String>,
) {
    use crate::reconcile::Action;
    for (i, slot) in slots.iter_mut().enumerate() {
        let Slot::Command(cmd) = slot else { continue };
        let Some(step) = plan.targets.get(i) else {
            continue;
        };
        if step.action == Action::None {
            continue;
        }
        let ran = ran_with.get(&step.name);
        let mut changed = Vec::new();
        for &bi in &step.bindings {
            let b = &plan.bindings[bi];
            let Some(new) = b.input.desired.clone().filter(|_| b.error.is_none()) else {
                continue;
            };
            if b.input.restart == RestartMode::None {
                continue;
            }
            let before = ran.and_then(|r| r.get(&b.input.key));
            if !b.changed && before == Some(&new) {
                continue;
            }
            let old = if b.changed {
                b.input.sinks.iter().find_map(|&s| {
                    plan.sinks[s]
                        .observation
                        .as_ref()
                        .ok()?
                        .get(&b.input.key)?
                        .current
                        .clone()
                })
            } else {
                before.cloned()
            };
            changed.push((b.input.id.clone(), b.input.key.clone(), new, old));
        }
        let any_changed = step.bindings.iter().any(|&b| plan.bindings[b].changed);
        let single = match changed.as_slice() {
            [(_, key, new, old)] => {
                Some((key.clone(), new.clone(), old.clone().unwrap_or_default()))
            }
            _ => None,
        };
        cmd.set_change(crate::exec::Change {
            bindings: changed.into_iter().map(|(id, ..)| id).collect(),
            single,
        });
        let step = &mut plan.targets[i];
        step.action = Action::Restart;
        step.reason = if any_changed {
            "the value changed in the sinks: the command runs".into()
        } else if owed.contains(&step.name) {
            "an earlier pass changed the value but the command did not succeed: it runs again"
                .into()
        } else {
            "it last ran with another value (the sink was changed elsewhere): the command runs"
                .into()
        };
    }
}
