//! Target containers through the Docker Engine API (bollard): find, inspect, restart, recreate.
//!
//! Owns every call to the engine. `DOCKER_HOST` is honoured; the API version is negotiated so
//! older engines accept the requests. Errors name the container and the fix. It must never
//! remove a container before its replacement is good, nor remove a volume.
//! [`spec`] computes the create request (pure); [`recreate`] runs the never-lose-the-service
//! sequence with its health gate and roll back; [`rollout`] the one without a gap; both keep
//! a journal beside the container's lock ([`journal`]), from which [`recover`] finishes or
//! undoes one that was cut short.

pub(crate) mod compose;
mod error;
pub(crate) mod inspect;
mod journal;
pub(crate) mod labels;
mod logs;
mod netns;
mod ops;
mod own;
mod recover;
mod recreate;
mod rollout;
pub(crate) mod spec;
pub mod swarm;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{ListContainersOptions, RestartContainerOptions};

use crate::reconcile::{ActionError, Target, TargetObservation};

pub(crate) use error::Error;

/// A connection to the engine, made once per pass and shared by every container.
#[derive(Clone)]
pub(crate) struct Engine {
    docker: Arc<Docker>,
    /// The address it was reached at (`DOCKER_HOST` as config checked it).
    host: Arc<str>,
    /// Which container replaced which in this pass (for containers sharing a network).
    replaced: netns::Replaced,
}

impl Engine {
    /// Connect to `host` (`DOCKER_HOST` as config checked it, or the default socket), and
    /// agree on an API version.
    pub(crate) async fn connect(host: &str) -> Result<Engine, ActionError> {
        let docker = Docker::connect_with_host(host).map_err(|e| unreachable_daemon(host, &e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable_daemon(host, &e))?;
        Ok(Engine {
            docker: Arc::new(docker),
            host: Arc::from(host),
            replaced: netns::Replaced::default(),
        })
    }

    /// The engine's `/info` ID (what two addresses of one engine share), falling back to the
    /// address when the engine does not say.
    pub(crate) async fn id(&self) -> String {
        match self.docker.info().await {
            Ok(i) => {
                i.id.filter(|s| !s.is_empty())
                    .unwrap_or_else(|| self.host.to_string())
            }
            Err(_) => self.host.to_string(),
        }
    }

    pub(crate) fn container(&self, name: &str) -> Container {
        Container {
            engine: self.clone(),
            name: name.to_string(),
            opts: RecreateOptions::default(),
            record: None,
            siblings: Arc::default(),
            finished_forward: false,
            group: None,
            compose_probe: Box::default(),
            refused: false,
            observed: None,
        }
    }

    /// The containers of compose service `project`/`service` (one-off `run` containers
    /// excluded), by name, in container-number order; none is an error naming the service.
    pub(crate) async fn compose_service(
        &self,
        project: &str,
        service: &str,
    ) -> Result<Vec<String>, ActionError> {
        let found = self.compose_members(project, service).await?;
        if found.is_empty() {
            return Err(ActionError {
                rolled_back: false,
                message: format!("compose service {project}/{service} has no containers"),
                hint: Some(format!(
                    "check --compose-service PROJECT/SERVICE against `docker ps -a --filter label=com.docker.compose.project={project}` (the project name is the directory name unless -p/COMPOSE_PROJECT_NAME set it)"
                )),
                logs: Vec::new(),
            });
        }
        Ok(found)
    }

    /// [`Engine::compose_service`]'s containers, where none is an empty list (an error only
    /// when the engine cannot list them).
    pub(crate) async fn compose_members(
        &self,
        project: &str,
        service: &str,
    ) -> Result<Vec<String>, ActionError> {
        let what = format!("{project}/{service}");
        // One-off containers are left out here, not by a `oneoff=False` filter: podman-compose
        // sets the project and service labels but no `oneoff` one.
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("com.docker.compose.project={project}"),
                format!("com.docker.compose.service={service}"),
            ],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| ActionError {
                rolled_back: false,
                message: format!("could not list the containers of compose service {what}: {e}"),
                hint: Some(
                    "check that the Docker daemon is running and reachable (DOCKER_HOST)".into(),
                ),
                logs: Vec::new(),
            })?;
        let mut found: Vec<(u64, String)> = list
            .into_iter()
            .filter(|c| !compose::is_oneoff(c.labels.as_ref()))
            .filter_map(|c| {
                let number = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("com.docker.compose.container-number"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX);
                let name = c.names?.into_iter().next()?;
                // A recreate's temporaries stand for the container they replace.
                Some((number, recover::base_name(&name)))
            })
            .collect();
        found.sort();
        found.dedup();
        Ok(found.into_iter().map(|(_, n)| n).collect())
    }

    /// The name of the container `id_or_name` (without the leading `/`); `None` when the
    /// engine knows no such container.
    pub(crate) async fn name_of(&self, id_or_name: &str) -> Result<Option<String>, ActionError> {
        match inspect::container(&self.docker, id_or_name).await {
            Ok(i) => Ok(i.name.map(|n| n.trim_start_matches('/').to_string())),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(container_error(id_or_name, "inspect", &e)),
        }
    }

    /// The compose project directory a container was started from (label
    /// `com.docker.compose.project.working_dir`), best effort.
    pub(crate) async fn project_dir(&self, id_or_name: &str) -> Option<String> {
        let info = inspect::container(&self.docker, id_or_name).await.ok()?;
        info.config?
            .labels?
            .get("com.docker.compose.project.working_dir")
            .filter(|d| !d.is_empty())
            .cloned()
    }

    /// Swarm service `name` (by name or id).
    pub(crate) fn swarm_service(
        &self,
        name: &str,
        health_timeout: Option<Duration>,
    ) -> swarm::SwarmService {
        swarm::SwarmService::new(self.docker.clone(), &self.host, name, health_timeout)
    }
}

fn unreachable_daemon(host: &str, e: &BollardError) -> ActionError {
    ActionError {
        rolled_back: false,
        message: format!("cannot reach the Docker daemon at {host}: {e}"),
        hint: Some("start Docker, check DOCKER_HOST, and that this user may use the socket (group `docker`)".into()),
        logs: Vec::new(),
    }
}

/// Phrase an engine error about container `name` for the user.
pub(crate) fn container_error(name: &str, what: &str, e: &BollardError) -> ActionError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => ActionError {
            rolled_back: false,
            message: format!("container {name} does not exist"),
            hint: Some(format!(
                "check --container (see `docker ps -a`); for a compose service use --compose-service PROJECT/SERVICE (could not {what})"
            )),
            logs: Vec::new(),
        },
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => ActionError {
            rolled_back: false,
            message: format!(
                "could not {what} container {name}: the engine answered {status_code}: {message}"
            ),
            hint: None,
            logs: Vec::new(),
        },
        other => ActionError {
            rolled_back: false,
            message: format!("could not {what} container {name}: {other}"),
            hint: Some(
                "check that the Docker daemon is running and reachable (DOCKER_HOST)".into(),
            ),
            logs: Vec::new(),
        },
    }
}

/// How a recreated container is judged good.
#[derive(Debug, Clone, PartialEq)]
pub struct RecreateOptions {
    /// Without a healthcheck: how long the new container must keep running.
    pub(crate) settle: Duration,
    /// With a healthcheck: how long to wait for `healthy`; `None` derives it from the check
    /// (start period + (interval + timeout) x retries).
    pub(crate) health_timeout: Option<Duration>,
    /// The state file where older versions recorded recreates in progress (`recreating`):
    /// read so that a recreate an older version left is finished, then cleared. The journal
    /// itself is kept beside each container's lock ([`Container::with_record`]).
    pub(crate) journal: Option<std::path::PathBuf>,
}

impl Default for RecreateOptions {
    fn default() -> Self {
        RecreateOptions {
            settle: Duration::from_secs(3),
            health_timeout: None,
            journal: None,
        }
    }
}

/// One container, by name or id.
pub struct Container {
    engine: Engine,
    name: String,
    opts: RecreateOptions,
    /// Its record beside its lock (`<lock>.json`): where the journal of a recreate or rollout
    /// is kept. `None`: no journal, so no recovery acts on it.
    record: Option<std::path::PathBuf>,
    /// The records of every container of the pass, by name: a dependent of a replaced base is
    /// recreated only when the pass holds its lock.
    siblings: Arc<BTreeMap<String, std::path::PathBuf>>,
    /// See [`Container::finished_forward`].
    finished_forward: bool,
    group: Option<String>,
    /// Where the compose CLI is found, its word before the sinks were written, and what
    /// became of the config-hash label.
    compose_probe: Box<compose::Probe>,
    /// See [`Container::refused`].
    refused: bool,
    /// The container as the last observe read it: (id, name). A recreate or rollout acts on
    /// that container only.
    observed: Option<(String, String)>,
}

impl Container {
    pub(crate) fn with_options(mut self, opts: RecreateOptions) -> Container {
        self.opts = opts;
        self
    }

    /// Keep the journal of its recreates and rollouts in `record` (beside its lock);
    /// `siblings`: the records of every container of the pass.
    pub(crate) fn with_record(
        mut self,
        record: Option<std::path::PathBuf>,
        siblings: Arc<BTreeMap<String, std::path::PathBuf>>,
    ) -> Container {
        self.record = record;
        self.siblings = siblings;
        self
    }

    fn journal(&self) -> journal::Journal {
        journal::Journal::new(self.record.as_deref(), self.opts.journal.as_deref())
    }

    /// The environment the compose CLI is looked for and run with (see [`compose`]).
    pub(crate) fn with_compose(mut self, env: compose::ComposeEnv) -> Container {
        self.compose_probe.env = env;
        self
    }

    /// Ask compose for the service's hash and configuration when the container is observed,
    /// before any sink is written (a pass that may replace it).
    pub(crate) fn asking_compose_before(mut self) -> Container {
        self.compose_probe.ask_before = true;
        self
    }

    /// What became of its compose config-hash label in this pass's recreate or rollout.
    pub(crate) fn hash_outcome(&self) -> &compose::HashOutcome {
        &self.compose_probe.outcome
    }

    /// Containers of one group (a compose service) are done in order, and a failure stops
    /// the rest of the group.
    pub(crate) fn in_group(mut self, group: &str) -> Container {
        self.group = Some(group.to_string());
        self
    }

    /// The last observe found no such container, or the one audsync runs in: its bindings
    /// fail before any sink is written.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }

    /// Its name (or id) as given.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Container {
    /// Inspect the container before a recreate or rollout (`doing`) and make sure it is the
    /// one the last observe read (or the one this pass put in its place): when another
    /// process removed, renamed or replaced it since, nothing is touched and the error says so.
    async fn before_apply(
        &self,
        doing: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, ActionError> {
        let docker = &self.engine.docker;
        let found = inspect::container(docker, &self.name).await;
        let Some((read, read_name)) = &self.observed else {
            return found.map_err(|e| container_error(&self.name, "inspect", &e));
        };
        // A container this pass replaced (its network's base) stands for the one read.
        let expected = self
            .engine
            .replaced
            .get(read)
            .unwrap_or_else(|| read.clone());
        if let Ok(info) = &found
            && info.id.as_deref() == Some(expected.as_str())
        {
            return found.map_err(|e| container_error(&self.name, "inspect", &e));
        }
        let names = [read_name.as_str()];
        match ops::intrusion(docker, read_name, &expected, &names, None).await {
            Some(i) => Err(ActionError {
                rolled_back: false,
                message: format!(
                    "{doing} {read_name} failed: since audsync read it, {}; nothing was changed",
                    i.says(read_name, &expected)
                ),
                hint: Some(ops::intrusion_hint(read_name)),
                logs: Vec::new(),
            }),
            None => found.map_err(|e| container_error(&self.name, "inspect", &e)),
        }
    }

    /// After this container (as it was: `before`) was replaced, the containers sharing its
    /// network follow it: each one the pass holds the lock of is recreated against the new
    /// id, in order, journalled in its own record; any other is named in the error.
    async fn follow(
        &self,
        before: &bollard::models::ContainerInspectResponse,
    ) -> Result<(), ActionError> {
        let docker = &self.engine.docker;
        let old_id = before.id.clone().unwrap_or_default();
        let now = inspect::container(docker, &self.name)
            .await
            .map_err(|e| container_error(&self.name, "inspect", &e))?;
        let new_id = now.id.clone().unwrap_or_default();
        if old_id.is_empty() || new_id.is_empty() || old_id == new_id {
            return Ok(());
        }
        self.engine.replaced.insert(&old_id, &new_id);
        let old_name = ops::name_of(before, &self.name);
        let deps = netns::dependents(docker, &old_id, &old_name)
            .await
            .map_err(|e| {
                container_error(&self.name, "list the containers sharing the network of", &e)
            })?;
        let mut problems = Vec::new();
        for dep in deps {
            let Some(record) = self.siblings.get(&dep) else {
                problems.push(format!(
                    "container {dep} shares its network and is not a target of this run: it is cut off until it is recreated (target it too, or `docker compose up -d`)"
                ));
                continue;
            };
            tracing::info!(container = %dep, base = %self.name, "recreating a container that shares the network of the replaced one");
            let journal = journal::Journal::new(Some(record), None);
            let mut probe = compose::Probe::default();
            let dep_id = |i: Result<bollard::models::ContainerInspectResponse, BollardError>| {
                i.ok().and_then(|i| i.id)
            };
            let dep_old = dep_id(inspect::container(docker, &dep).await);
            let done = recreate::recreate(
                docker,
                &dep,
                &[],
                &self.opts,
                &journal,
                Some(&new_id),
                &mut probe,
            )
            .await;
            // This pass replaced it: its own recreate (when it is a target) acts on the new one.
            if let (Some(old), Some(new)) =
                (dep_old, dep_id(inspect::container(docker, &dep).await))
                && old != new
            {
                self.engine.replaced.insert(&old, &new);
            }
            if let Err(e) = done {
                problems.push(format!(
                    "container {dep} (sharing its network): {}",
                    e.message
                ));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(ActionError {
            logs: Vec::new(),
            rolled_back: false,
            message: format!(
                "{} was replaced and runs with the new value, but: {}",
                self.name,
                problems.join("; ")
            ),
            hint: Some(format!(
                "recreate the containers sharing {}'s network against it, then run sync again",
                self.name
            )),
        })
    }
}

impl Target for Container {
    fn group(&self) -> Option<String> {
        self.group.clone()
    }

    async fn observe(
        &mut self,
        keys: &[String],
        watch: &[String],
    ) -> Result<TargetObservation, ActionError> {
        let info = match inspect::container(&self.engine.docker, &self.name).await {
            Ok(i) => i,
            Err(e) => {
                self.refused = matches!(
                    e,
                    BollardError::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }
                );
                return Err(container_error(&self.name, "inspect", &e));
            }
        };
        if let Some(id) = info.id.as_deref()
            && own::is_own(id, own::ids(), own::hostname().as_deref())
        {
            self.refused = true;
            return Err(ActionError {
                rolled_back: false,
                message: format!(
                    "container {} is the one audsync runs in: audsync never restarts or replaces its own container",
                    self.name
                ),
                hint: Some("take it out of the binding's targets; restart it from outside (or let its restart policy do it)".into()),
                logs: Vec::new(),
            });
        }
        if let Some(base) = netns::base_of(&info)
            && self.engine.replaced.get(&base).is_none()
            && let Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) = inspect::container(&self.engine.docker, &base).await
        {
            // Its base was replaced (or removed) without it: it has no network any more, and
            // a recreate copying the dead id would fail. Said on every run until it is fixed.
            return Err(ActionError {
                logs: Vec::new(),
                rolled_back: false,
                message: format!(
                    "container {} shares the network of container {}, which no longer exists: it is cut off",
                    self.name,
                    ops::short_id(&base)
                ),
                hint: Some(format!(
                    "recreate {} against the container that replaced its base (docker compose up -d), or target both in one run so audsync recreates it after the base",
                    self.name
                )),
            });
        }
        if compose::is_compose(&info) && self.compose_probe.ask_before {
            let probe = &mut self.compose_probe;
            probe.before = Some(compose::ask(&info, &probe.env, &mut probe.cli).await);
        }
        self.observed = info
            .id
            .clone()
            .map(|id| (id, ops::name_of(&info, &self.name)));
        let rollout_blocker = rollout::blocker(&info);
        let aliased = rollout::aliased(&info);
        let env = info.config.and_then(|c| c.env).unwrap_or_default();
        Ok(TargetObservation {
            rollout_blocker,
            aliased,
            shows_env_diff: false,
            unsettled: None,
            env: keys
                .iter()
                .filter_map(|k| Some((k.clone(), env_value(&env, k)?)))
                .collect(),
            // Names only: the values are secrets.
            carries: watch
                .iter()
                .filter(|w| env_value(&env, w).is_some_and(|v| !v.is_empty()))
                .cloned()
                .collect(),
        })
    }

    async fn restart(&mut self) -> Result<(), ActionError> {
        let info = inspect::container(&self.engine.docker, &self.name)
            .await
            .map_err(|e| container_error(&self.name, "inspect", &e))?;
        if info.state.as_ref().and_then(|s| s.paused) == Some(true) {
            return Err(recreate::paused(&self.name));
        }
        // Honour the container's own stop timeout; the engine uses its stop signal.
        let t = stop_grace(&self.engine.docker, &info).await;
        tracing::info!(container = %self.name, "restarting");
        let _progress = recover::stop_progress(&self.name, t);
        recover::for_stop(&self.engine.docker, t)
            .restart_container(
                &self.name,
                Some(RestartContainerOptions { signal: None, t }),
            )
            .await
            .map_err(|e| container_error(&self.name, "restart", &e))
    }

    async fn recreate(&mut self, changes: &crate::reconcile::Values) -> Result<(), ActionError> {
        crate::lock::test_hold_apply();
        let changes: Vec<(String, String)> = changes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let before = self.before_apply("recreating").await?;
        // Its base replaced earlier in this pass: it joins the new one.
        let netns = netns::base_of(&before).and_then(|b| self.engine.replaced.get(&b));
        let journal = self.journal();
        recreate::recreate(
            &self.engine.docker,
            &self.name,
            &changes,
            &self.opts,
            &journal,
            netns.as_deref(),
            &mut self.compose_probe,
        )
        .await?;
        self.follow(&before).await
    }

    async fn rollout(&mut self, changes: &crate::reconcile::Values) -> Result<(), ActionError> {
        crate::lock::test_hold_apply();
        let changes: Vec<(String, String)> = changes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let before = self.before_apply("rolling out").await?;
        let journal = self.journal();
        rollout::rollout(
            &self.engine.docker,
            &self.name,
            &changes,
            &self.opts,
            &journal,
            &mut self.compose_probe,
        )
        .await?;
        self.follow(&before).await
    }
}

/// The `t` to pass when stopping or restarting the container: its own `StopTimeout`
/// (`docker run --stop-timeout`, compose `stop_grace_period`), or `None` when it has none so the
/// engine applies its default (10 s). Never a number of our own.
pub(crate) fn stop_timeout(info: &bollard::models::ContainerInspectResponse) -> Option<i32> {
    let t = info.config.as_ref()?.stop_timeout?;
    // The engine stores an int; out of range here means "wait as long as possible".
    Some(i32::try_from(t).unwrap_or(i32::MAX))
}

/// What Podman gives a container it creates itself without a stop timeout (`stop_timeout` of
/// `containers.conf`), and Docker an unset one.
const PODMAN_STOP_TIMEOUT: i32 = 10;

/// The stop timeout to give container `info` of `docker`: its own ([`stop_timeout`]), except
/// on Podman, whose Docker-compatible API reports (and obeys) 0 for a container created through
/// it without one -- `docker run`, docker-compose -- where `podman run` would give 10 s: there
/// a 0 becomes [`PODMAN_STOP_TIMEOUT`], so a server gets its grace to answer the requests it
/// holds (a rollout's old container above all). On Podman an explicit 0 cannot be told from
/// an unset one; the engine is asked only when the timeout is 0.
pub(crate) async fn stop_grace(
    docker: &Docker,
    info: &bollard::models::ContainerInspectResponse,
) -> Option<i32> {
    match stop_timeout(info) {
        Some(0) if is_podman(docker).await => Some(PODMAN_STOP_TIMEOUT),
        t => t,
    }
}

/// Whether the engine says it is Podman (its `/version` components).
async fn is_podman(docker: &Docker) -> bool {
    docker.version().await.is_ok_and(|v| {
        v.components
            .unwrap_or_default()
            .iter()
            .any(|c| c.name.to_ascii_lowercase().starts_with("podman"))
    })
}

/// The value of `key` in a `KEY=value` list, if present.
pub(crate) fn env_value(env: &[String], key: &str) -> Option<String> {
    env.iter().rev().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_timeout_is_the_containers_own_or_the_engines_default() {
        use bollard::models::{ContainerConfig, ContainerInspectResponse};
        let with = |t: Option<i64>| ContainerInspectResponse {
            config: Some(ContainerConfig {
                stop_timeout: t,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(stop_timeout(&with(Some(1))), Some(1));
        assert_eq!(stop_timeout(&with(Some(30))), Some(30));
        assert_eq!(stop_timeout(&with(None)), None, "unset: the engine decides");
        assert_eq!(stop_timeout(&ContainerInspectResponse::default()), None);
    }

    #[test]
    fn env_value_finds_exact_key_only() {
        let env = vec![
            "CLOUDFLARE_AUD_TAG_OLD=x".to_string(),
            "CLOUDFLARE_AUD_TAG=abc".to_string(),
            "PATH=/bin".to_string(),
        ];
        assert_eq!(
            env_value(&env, "CLOUDFLARE_AUD_TAG").as_deref(),
            Some("abc")
        );
        assert_eq!(env_value(&env, "MISSING"), None);
    }
}
