//! Swarm services as targets: the value lives in the service's spec
//! (`Spec.TaskTemplate.ContainerSpec.Env`), and Swarm itself rolls the tasks out.
//!
//! An update changes only the entries of the keys the spec carries (order kept, the rest of
//! the spec — its `UpdateConfig` above all — sent back exactly as read), with the version index
//! it was read at; "update out of sequence" (someone else updated it meanwhile) is read again
//! and retried. Then it waits until `UpdateStatus` says `completed` and every running task has
//! the new value; an update that Swarm paused (a new task failed, e.g. its healthcheck) or rolled
//! back is rolled back to the previous spec (`rollback=previous`) and reported as failed. It
//! never creates or removes a service and never prints an environment value.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{Service, ServiceSpec, ServiceUpdateStatusStateEnum, TaskState};
use bollard::query_parameters::ListTasksOptions;
use serde_json::Value;

use super::env_value;
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
    pub fn label(&self) -> String {
        label(&self.name)
    }

    pub async fn observe(&self, keys: &[String]) -> Result<TargetObservation, ActionError> {
        let svc = self.inspect().await?;
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
    pub async fn update(&self, changes: &[(String, String)]) -> Result<(), ActionError> {
        let mut attempt = 0;
        let (id, replicas, monitor) = loop {
            attempt += 1;
            // The spec goes back exactly as the engine gave it: bollard's typed model loses
            // fields it names differently (the engine writes `Healthcheck`, the model reads
            // `HealthCheck`), and an update would silently drop the service's healthcheck.
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
            match self.raw_update(&id, version, &spec, false).await {
                Ok(()) => break (id, replicas, monitor),
                Err(e) if e.contains("update out of sequence") && attempt < ATTEMPTS => {
                    tracing::info!(service = %self.name, attempt, "update out of sequence; reading the service again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(e) => return Err(self.fail(&format!("the update was refused: {e}"), None)),
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
                })
            }
        }
    }

    /// Until the update completed and every running task carries the new values.
    async fn wait(
        &self,
        id: &str,
        changes: &[(String, String)],
        replicas: u32,
        bound: Duration,
    ) -> Result<(), String> {
        let begin = Instant::now();
        loop {
            let svc = self.inspect().await.map_err(|e| e.message)?;
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
                let task = self.failed_task(id).await.unwrap_or_default();
                return Err(format!(
                    "Swarm stopped the update ({stopped}: {message}){task}"
                ));
            }
            let done_state = matches!(state, Some(S::COMPLETED));
            if done_state && self.all_new(id, changes, replicas).await {
                return Ok(());
            }
            if begin.elapsed() >= bound {
                return Err(format!(
                    "the update did not complete within {} (state {})",
                    humantime::format_duration(bound),
                    state
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "none".into())
                ));
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
        let err = tasks
            .iter()
            .filter_map(|t| t.status.as_ref()?.err.clone())
            .next_back()?;
        Some(format!("; a new task failed: {err}"))
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
    async fn rollback(&self, _id: &str) -> Result<(), String> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (id, version, spec) = self.raw_inspect().await.map_err(|e| e.message)?;
            match self.raw_update(&id, version, &spec, true).await {
                Ok(()) => break,
                Err(e) if e.contains("update out of sequence") && attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::warn!(service = %self.name, "rolling the service back to its previous spec");
        let begin = Instant::now();
        while begin.elapsed() < Duration::from_secs(60) {
            let svc = self.inspect().await.map_err(|e| e.message)?;
            let state = svc.update_status.and_then(|s| s.state);
            if state == Some(ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED) {
                return Ok(());
            }
            if state == Some(ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED) {
                return Err("Swarm paused the rollback".into());
            }
            tokio::time::sleep(POLL).await;
        }
        // Requested and under way: the previous spec is in place, its tasks still starting.
        Ok(())
    }

    /// (id, version index, spec as raw JSON).
    async fn raw_inspect(&self) -> Result<(String, u64, Value), ActionError> {
        let path = format!("/services/{}", url_escape(&self.name));
        let (status, body) = raw::request(&self.docker, &self.host, "GET", &path, None)
            .await
            .map_err(|e| self.fail(&format!("cannot inspect it: {e}"), None))?;
        if status != 200 {
            // Same phrasing as the typed calls (404: no such service, 503: not a manager).
            return Err(self.inspect().await.err().unwrap_or_else(|| {
                self.fail(
                    &format!("the engine answered {status}: {}", raw::message(&body)),
                    None,
                )
            }));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| self.fail(&format!("unreadable answer: {e}"), None))?;
        let id = v["ID"].as_str().unwrap_or(&self.name).to_string();
        let version = v
            .pointer("/Version/Index")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.fail("the engine gave no version index", None))?;
        Ok((id, version, v["Spec"].clone()))
    }

    async fn raw_update(
        &self,
        id: &str,
        version: u64,
        spec: &Value,
        rollback: bool,
    ) -> Result<(), String> {
        let mut path = format!("/services/{}/update?version={version}", url_escape(id));
        if rollback {
            path.push_str("&rollback=previous");
        }
        let body = serde_json::to_vec(spec).map_err(|e| e.to_string())?;
        let (status, answer) =
            raw::request(&self.docker, &self.host, "POST", &path, Some(&body)).await?;
        if status == 200 {
            if let Ok(v) = serde_json::from_slice::<Value>(&answer) {
                for w in v["Warnings"].as_array().into_iter().flatten() {
                    // Typically "image could not be accessed on a registry" for local images.
                    tracing::debug!(service = %self.name, "engine: {w}");
                }
            }
            Ok(())
        } else {
            Err(format!(
                "the engine answered {status}: {}",
                raw::message(&answer)
            ))
        }
    }

    async fn inspect(&self) -> Result<Service, ActionError> {
        self.docker
            .inspect_service(&self.name, None)
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404, ..
                } => self.fail(
                    "no such service",
                    Some("check --swarm-service against `docker service ls`".into()),
                ),
                BollardError::DockerResponseServerError {
                    status_code: 503,
                    message,
                } => self.fail(
                    &format!("this engine is not a Swarm manager ({message})"),
                    Some("run audsync on a manager node (docker node ls), or point DOCKER_HOST at one".into()),
                ),
                other => self.fail(&format!("cannot inspect it: {other}"), None),
            })
    }

    fn fail(&self, why: &str, hint: Option<String>) -> ActionError {
        ActionError {
            rolled_back: false,
            message: format!("swarm service {}: {why}", self.name),
            hint,
        }
    }
}

/// The target name of service `name` in reports and the state file.
pub fn label(name: &str) -> String {
    format!("swarm:{name}")
}

fn env_of(spec: &ServiceSpec) -> Vec<String> {
    spec.task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
}

/// [`set_env`] on the raw JSON spec.
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

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Replace the entries of the keys the spec carries; whether anything changed.
#[cfg(test)]
fn set_env(spec: &mut ServiceSpec, changes: &[(String, String)]) -> bool {
    let Some(env) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
        .and_then(|c| c.env.as_mut())
    else {
        return false;
    };
    let mut changed = false;
    for kv in env.iter_mut() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        if let Some((_, new)) = changes.iter().rev().find(|(ck, _)| ck == k)
            && v != new
        {
            *kv = format!("{k}={new}");
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
fn out_of_sequence(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { message, .. } if message.contains("update out of sequence"))
}

/// The two calls whose bodies must round-trip untyped, over the engine's unix socket.
mod raw {
    use bollard::Docker;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers larger than this are refused (a service spec is a few KiB).
    const LIMIT: u64 = 16 * 1024 * 1024;

    /// The unix socket of `host` (`DOCKER_HOST` as config checked it, or its default).
    fn socket(host: &str) -> Result<&str, String> {
        match host.strip_prefix("unix://") {
            Some(path) => Ok(path),
            None => Err(format!(
                "Swarm service updates go through the engine's unix socket; DOCKER_HOST={host} is not one"
            )),
        }
    }

    /// One HTTP/1.1 request; (status, body).
    pub async fn request(
        docker: &Docker,
        host: &str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), String> {
        let v = docker.client_version();
        let path = format!("/v{}.{}{path}", v.major_version, v.minor_version);
        let mut s = tokio::net::UnixStream::connect(socket(host)?)
            .await
            .map_err(|e| format!("cannot connect to the engine: {e}"))?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: audsync\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let io = |e: std::io::Error| format!("talking to the engine: {e}");
        s.write_all(head.as_bytes()).await.map_err(io)?;
        s.write_all(body).await.map_err(io)?;
        let mut out = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            s.take(LIMIT).read_to_end(&mut out),
        )
        .await;
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(io(e)),
            Err(_) => return Err("the engine did not answer within 120s".into()),
        }
        parse(&out)
    }

    fn parse(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("the engine's answer has no header end")?;
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("the engine's answer has no status")?;
        let body = &raw[split + 4..];
        if head.contains("transfer-encoding: chunked") {
            return Ok((status, dechunk(body)?));
        }
        Ok((status, body.to_vec()))
    }

    fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        loop {
            let eol = b
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("bad chunked answer")?;
            let size = String::from_utf8_lossy(&b[..eol]);
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "bad chunk size")?;
            b = &b[eol + 2..];
            if size == 0 {
                return Ok(out);
            }
            let chunk = b.get(..size).ok_or("truncated chunk")?;
            out.extend_from_slice(chunk);
            b = b.get(size + 2..).ok_or("truncated chunk")?;
        }
    }

    /// The engine's `{"message": …}`, else the body as text.
    pub fn message(body: &[u8]) -> String {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
    }

    #[cfg(test)]
    #[test]
    fn chunked_and_plain_answers_are_read() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap(), (500, b"abcde".to_vec()));
    }

    #[cfg(test)]
    #[test]
    fn the_socket_is_the_checked_docker_host() {
        assert_eq!(
            socket("unix:///var/run/docker.sock"),
            Ok("/var/run/docker.sock")
        );
        assert!(socket("tcp://10.0.0.1:2375").is_err_and(|e| e.contains("DOCKER_HOST")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{TaskSpec, TaskSpecContainerSpec};

    #[test]
    fn only_carried_keys_change_in_place() {
        let mut spec = ServiceSpec {
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    env: Some(vec!["A=1".into(), "KEY=old".into(), "KEY_OLD=x".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ch = vec![
            ("KEY".to_string(), "new".to_string()),
            ("MISSING".into(), "y".into()),
        ];
        assert!(set_env(&mut spec, &ch));
        assert_eq!(env_of(&spec), ["A=1", "KEY=new", "KEY_OLD=x"]);
        assert!(!set_env(&mut spec, &ch), "already there: no update");
        assert_eq!(
            spec.update_config, None,
            "an absent UpdateConfig stays absent"
        );
    }

    #[test]
    fn a_stale_version_is_recognised() {
        let e = BollardError::DockerResponseServerError {
            status_code: 500,
            message: "rpc error: code = Unknown desc = update out of sequence".into(),
        };
        assert!(out_of_sequence(&e));
    }
}
