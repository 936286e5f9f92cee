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
//! Everything goes through bollard (`inspect_service`, `list_tasks`, `update_service` for the
//! rollback) except reading the spec to change and sending it back: see [`raw`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{Service, ServiceSpec, ServiceUpdateStatusStateEnum, TaskState};
use bollard::query_parameters::{ListTasksOptions, UpdateServiceOptions};
use serde_json::Value;

use super::{Error, env_value};
use crate::reconcile::{ActionError, TargetObservation};

/// How often the service and its tasks are read while Swarm rolls out.
const POLL: Duration = Duration::from_millis(500);
/// Attempts at an update whose version index went stale meanwhile.
const ATTEMPTS: u32 = 5;
/// Swarm's defaults for a service without `UpdateConfig` (Monitor 5 s).
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);
/// Per task when neither --health-timeout nor the service says more: start and turn healthy.
const PER_TASK: Duration = Duration::from_secs(60);

/// One Swarm service, by name or id.
pub struct SwarmService {
    docker: std::sync::Arc<Docker>,
    /// The engine's address (`DOCKER_HOST` as config checked it): the raw calls' socket.
    host: String,
    name: String,
    health_timeout: Option<Duration>,
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
        let env = env_of(&svc.spec.unwrap_or_default());
        Ok(TargetObservation {
            env: keys
                .iter()
                .filter_map(|k| Some((k.clone(), env_value(&env, k)?)))
                .collect(),
            // Swarm replaces tasks itself, by the service's own UpdateConfig.
            rollout_blocker: Some("a Swarm service: Swarm rolls it out by its UpdateConfig".into()),
            // The plan shows what the update changes in the spec: the bound keys only.
            shows_env_diff: true,
            ..TargetObservation::default()
        })
    }

    /// Set every key of `changes` the spec carries, let Swarm roll it out, wait for the end.
    pub(crate) async fn update(&self, changes: &[(String, String)]) -> Result<(), ActionError> {
        let mut attempt = 0;
        let (id, replicas, monitor) = loop {
            attempt += 1;
            // The spec goes back exactly as the engine gave it (see `raw`).
            let (id, version, mut spec) = self.raw_inspect().await?;
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
            if !set_env_json(&mut spec, changes) {
                return Ok(());
            }
            match raw::update(&self.docker, &self.host, &id, version, &spec, false).await {
                Ok(warnings) => {
                    for w in warnings {
                        // Typically "image could not be accessed on a registry" for local images.
                        tracing::debug!(service = %self.name, "engine: {w}");
                    }
                    break (id, replicas, monitor);
                }
                Err(e) if attempt < ATTEMPTS && self.stale(&id, version, &e).await => {
                    tracing::info!(service = %self.name, attempt, "update out of sequence; reading the service again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => {
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
            Ok(()) => Ok(()),
            Err(why) => {
                let back = self.rollback(&id).await;
                Err(ActionError {
                    rolled_back: back.is_ok(),
                    message: format!(
                        "swarm service {}: {why}; {}",
                        self.name,
                        match back {
                            Ok(()) => "rolled back to the previous spec".to_string(),
                            Err(e) => format!("ROLLBACK FAILED: {e}"),
                        }
                    ),
                    hint: Some(format!(
                        "see `docker service ps --no-trunc {}`; fix what the new task complains about, then run sync again",
                        self.name
                    )),
                    logs: Vec::new(),
                })
            }
        }
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
            use ServiceUpdateStatusStateEnum as S;
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

    /// `rollback=previous`, then wait (bounded) until Swarm says the rollback completed.
    async fn rollback(&self, id: &str) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let svc = self
                .docker
                .inspect_service(id, None)
                .await
                .map_err(|e| Error::engine("cannot inspect it", e))?;
            let version = svc.version.and_then(|v| v.index).ok_or(Error::NoVersion)?;
            // The engine ignores the spec sent with `rollback=previous` (it still checks it is
            // one), so the typed spec does, whatever fields bollard's model lost.
            let spec = svc.spec.unwrap_or_default();
            let answer = match i32::try_from(version) {
                Ok(v) => self
                    .docker
                    .update_service(
                        id,
                        spec,
                        UpdateServiceOptions {
                            version: v,
                            rollback: Some("previous".into()),
                            ..Default::default()
                        },
                        None,
                    )
                    .await
                    .map(drop)
                    .map_err(|e| Error::engine("the rollback was refused", e)),
                // bollard takes the index as an i32; the engine's is a u64 that a busy swarm
                // outgrows: past i32::MAX only the raw call can name it.
                Err(_) => {
                    let spec = serde_json::to_value(&spec)
                        .map_err(|e| Error::engine("the rollback was refused", e.into()))?;
                    raw::update(&self.docker, &self.host, id, version, &spec, true)
                        .await
                        .map(drop)
                }
            };
            match answer {
                Ok(()) => break,
                Err(e) if attempt < ATTEMPTS && self.stale(id, version, &e).await => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::warn!(service = %self.name, "rolling the service back to its previous spec");
        let begin = Instant::now();
        while begin.elapsed() < Duration::from_secs(60) {
            let svc = self.inspect().await?;
            let state = svc.update_status.and_then(|s| s.state);
            if state == Some(ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED) {
                return Ok(());
            }
            if state == Some(ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED) {
                return Err(Error::RollbackPaused);
            }
            tokio::time::sleep(POLL).await;
        }
        // Requested and under way: the previous spec is in place, its tasks still starting.
        Ok(())
    }

    /// (id, version index, spec as raw JSON).
    async fn raw_inspect(&self) -> Result<(String, u64, Value), ActionError> {
        let v = raw::inspect(&self.docker, &self.host, &self.name)
            .await
            .map_err(|e| self.inspect_failed(e))?;
        let id = v["ID"].as_str().unwrap_or(&self.name).to_string();
        let version = v
            .pointer("/Version/Index")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.fail(&Error::NoVersion.to_string(), None))?;
        Ok((id, version, v["Spec"].clone()))
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
}
