//! The engine primitives a recreate and its recovery share: the temporary names of a recreate
//! or rollout in progress (a name is never proof: the journal's ids are, see `journal.rs`), the timeouts of stop calls, waiting until a container stopped or is
//! good (health gate), putting the old container back, and remove / rename.
//!
//! Imports neither [`super::recreate`] nor [`super::recover`] (both import it). It never
//! removes a volume (`v=false` on every remove) and never removes a container on its own
//! account: which one to remove, and when, is the caller's decision.

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use bollard::query_parameters::{RemoveContainerOptions, RenameContainerOptions};

use super::{Error, RecreateOptions};

const NEW: &str = "-audsync-new-";
const OLD: &str = "-audsync-old-";
const RUNNING: &str = "-running";
const STOPPED: &str = "-stopped";

/// bollard's own request timeout (120 s): enough for every call but a stop of a container
/// whose stop timeout is near or above it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The engine's stop timeout when neither the call nor the container sets one.
const ENGINE_STOP_TIMEOUT: u64 = 10;
/// Time for the engine to kill the process and answer after the stop timeout ran out.
const STOP_MARGIN: Duration = Duration::from_secs(30);
/// A negative stop timeout means "wait for ever"; a client still gives up eventually.
const FOREVER: Duration = Duration::from_secs(24 * 3600);
/// How often a container's state is read while waiting for it to stop or to be good.
const POLL: Duration = Duration::from_millis(250);
/// Docker's healthcheck defaults, used when the container leaves a field at 0.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;

/// An older version's state-file entry for the recreate of `old_id` is over: drop it.
pub(super) fn forget(journal: Option<&std::path::Path>, old_id: &str) {
    if let Some(path) = journal
        && let Err(e) = crate::state::StateFile::update(path, |s| {
            s.recreating.remove(old_id);
        })
    {
        tracing::warn!(error = %e, "cannot update the recreate record in the state file");
    }
}

/// The recreates of `name` an older version recorded in the state file: (old id, new id).
pub(super) fn records(
    journal: Option<&std::path::Path>,
    name: &str,
) -> Vec<(String, Option<String>)> {
    let Some(path) = journal else {
        return vec![];
    };
    match crate::state::StateFile::load(path, true) {
        Ok(f) => f
            .state
            .recreating
            .into_iter()
            .filter(|(_, r)| r.name == name)
            .map(|(old, r)| (old, r.new_id))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the recreate records");
            vec![]
        }
    }
}

/// The temporary names of one recreate of `name`: (new container, old container moved aside).
/// The shared tag records whether the old container was running, for whoever finds them.
pub(super) fn temp_names(name: &str, was_running: bool) -> (String, String) {
    let state = if was_running { RUNNING } else { STOPPED };
    let tag = format!("{:06x}{state}", fastrand::u32(..0x100_0000));
    (format!("{name}{NEW}{tag}"), format!("{name}{OLD}{tag}"))
}

/// A container name made by [`temp_names`], taken apart.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TempName {
    /// The name of the container being recreated.
    pub(crate) base: String,
    /// The old container moved aside (else the new one, not yet renamed).
    pub(crate) old: bool,
    /// Shared by the two containers of one recreate.
    pub(crate) tag: String,
    /// Whether the old container was running when the recreate began.
    pub(crate) was_running: bool,
}

pub(super) fn parse_temp(name: &str) -> Option<TempName> {
    let name = name.trim_start_matches('/');
    let (at, old, marker) = match (name.rfind(NEW), name.rfind(OLD)) {
        (Some(n), Some(o)) if o > n => (o, true, OLD),
        (Some(n), _) => (n, false, NEW),
        (None, Some(o)) => (o, true, OLD),
        (None, None) => return None,
    };
    let (base, tag) = (&name[..at], &name[at + marker.len()..]);
    if base.is_empty() || tag.is_empty() {
        return None;
    }
    Some(TempName {
        base: base.to_string(),
        old,
        tag: tag.to_string(),
        // Stopped only when it says so: starting a container that was meant to be stopped is
        // the lesser harm than leaving a service down.
        was_running: !tag.ends_with(STOPPED),
    })
}

/// The container's name as the engine reports it, without the leading `/` (`fallback` when the
/// answer carries none).
pub(super) fn name_of(info: &ContainerInspectResponse, fallback: &str) -> String {
    info.name
        .as_deref()
        .unwrap_or(fallback)
        .trim_start_matches('/')
        .to_string()
}

/// Inspect `target` and say its name: what a recreate and a rollout start from.
pub(super) async fn inspect_named(
    docker: &Docker,
    target: &str,
) -> Result<(ContainerInspectResponse, String), crate::reconcile::ActionError> {
    let info = super::inspect::container(docker, target)
        .await
        .map_err(|e| super::container_error(target, "inspect", &e))?;
    let name = name_of(&info, target);
    Ok((info, name))
}

/// The name a container stands for: the base name of a recreate's temporary, else itself.
pub(super) fn base_name(name: &str) -> String {
    match parse_temp(name) {
        Some(t) => t.base,
        None => name.trim_start_matches('/').to_string(),
    }
}

/// The request timeout for a stop or restart call with stop timeout `t` (seconds; `None`: the
/// container's own, else the engine's 10 s). The engine answers only after the container is
/// down, so the client must wait at least that long, or it reports an error while the engine
/// carries on stopping it.
pub(super) fn stop_call_timeout(t: Option<i64>) -> Duration {
    match t {
        Some(t) if t < 0 => FOREVER,
        t => {
            let t = t.map_or(ENGINE_STOP_TIMEOUT, |t| t as u64);
            CLIENT_TIMEOUT.max(Duration::from_secs(t) + STOP_MARGIN)
        }
    }
}

/// A client for one stop/restart call of a container with stop timeout `t`.
pub(super) fn for_stop(docker: &Docker, t: Option<i32>) -> Docker {
    docker
        .clone()
        .with_timeout(stop_call_timeout(t.map(i64::from)))
}

/// What a stop or restart call of `name` with stop timeout `t` shows while it waits.
pub(super) fn stop_progress(name: &str, t: Option<i32>) -> crate::progress::Wait {
    let secs = match t {
        Some(t) if t >= 0 => t as u64,
        _ => ENGINE_STOP_TIMEOUT,
    };
    crate::progress::wait(format!("{name} to stop"), Duration::from_secs(secs))
}

/// Wait (up to `bound`) until container `id` is not running; returns whether it still runs.
/// A stop call that failed may have left the engine stopping it still.
pub(super) async fn wait_not_running(docker: &Docker, id: &str, bound: Duration) -> bool {
    let begin = Instant::now();
    loop {
        let running = match super::inspect::container(docker, id).await {
            Ok(i) => i.state.and_then(|s| s.running) == Some(true),
            Err(_) => return false,
        };
        if !running || begin.elapsed() >= bound {
            return running;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long the old container may take to stop after a stop call with timeout `t` failed.
pub(super) fn stop_wait(t: Option<i32>) -> Duration {
    match t {
        Some(t) if t < 0 => STOP_MARGIN,
        t => Duration::from_secs(t.map_or(ENGINE_STOP_TIMEOUT, |t| t as u64)) + STOP_MARGIN,
    }
}

/// Put the old container back as `name`: remove the new one (when given), start the old one
/// when it was running (once it has really stopped), then give it its name back (when moved
/// aside). Starting comes before the rename so that a process killed in between leaves a
/// temporary name behind, which the next pass finds. Returns what could not be done.
pub(super) async fn restore_old(
    docker: &Docker,
    name: &str,
    old_id: &str,
    new_id: Option<&str>,
    was_running: bool,
    renamed: bool,
    stop_bound: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(new_id) = new_id
        && let Err(e) = docker.remove_container(new_id, Some(keep_volumes())).await
    {
        problems.push(format!(
            "could not remove the new container ({}): {e}",
            short_id(new_id)
        ));
    }
    if was_running {
        let running = wait_not_running(docker, old_id, stop_bound).await;
        if !running && let Err(e) = docker.start_container(old_id, None).await {
            problems.push(format!("could not start the old container again: {e}"));
        }
    }
    if renamed && let Err(e) = rename(docker, old_id, name).await {
        problems.push(format!(
            "could not give the old container ({}) its name back: {e}",
            short_id(old_id)
        ));
    }
    problems
}

/// Wait until the new container is good: `healthy` when it has a healthcheck, else running for
/// the settle time. Returns why not.
pub(super) async fn wait_good(
    docker: &Docker,
    id: &str,
    opts: &RecreateOptions,
) -> Result<(), Error> {
    let first = inspect(docker, id).await?;
    let health = first
        .config
        .as_ref()
        .and_then(|c| c.healthcheck.clone())
        .filter(|h| {
            h.test
                .as_ref()
                .is_some_and(|t| !t.is_empty() && t[0] != "NONE")
        });
    let started_at = first.state.as_ref().and_then(|s| s.started_at.clone());
    let restarts = first.restart_count;
    let begin = Instant::now();
    match health {
        Some(h) => {
            let bound = opts.health_timeout.unwrap_or_else(|| health_bound(&h));
            let _progress = crate::progress::wait("the new container to become healthy", bound);
            // `unhealthy` is not final (the next passing probe makes it `healthy`): with an
            // explicit --health-timeout only the state at the bound counts, so a boot slower
            // than start_period + retries x interval is waited for. Without one, Docker's own
            // verdict ends the wait.
            let patient = opts.health_timeout.is_some();
            loop {
                let info = inspect(docker, id).await?;
                check_alive(&info, &started_at, restarts)?;
                let health = info.state.as_ref().and_then(|s| s.health.as_ref());
                let timed_out = begin.elapsed() >= bound;
                match health.and_then(|h| h.status) {
                    Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                    Some(HealthStatusEnum::UNHEALTHY) if !patient || timed_out => {
                        let out = health
                            .and_then(|h| h.log.as_ref())
                            .and_then(|l| l.last())
                            .and_then(|r| r.output.clone())
                            .unwrap_or_default();
                        return Err(Error::Unhealthy {
                            within: patient.then_some(bound),
                            last_check: out.trim().to_string(),
                        });
                    }
                    _ => {}
                }
                if timed_out {
                    return Err(Error::NotHealthy(bound));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        None => {
            let _progress = crate::progress::wait("the new container to settle", opts.settle);
            loop {
                let info = inspect(docker, id).await?;
                check_alive(&info, &started_at, restarts)?;
                if begin.elapsed() >= opts.settle {
                    return Ok(());
                }
                tokio::time::sleep(POLL.min(opts.settle)).await;
            }
        }
    }
}

async fn inspect(docker: &Docker, id: &str) -> Result<ContainerInspectResponse, Error> {
    super::inspect::container(docker, id)
        .await
        .map_err(|e| Error::engine("cannot inspect the new container", e))
}

/// Fail when the container stopped, or was restarted by its restart policy since we started it.
fn check_alive(
    info: &ContainerInspectResponse,
    started_at: &Option<String>,
    restarts: Option<i64>,
) -> Result<(), Error> {
    let state = info.state.as_ref();
    let running = state.and_then(|s| s.running) == Some(true);
    let code = state.and_then(|s| s.exit_code).unwrap_or_default();
    if !running {
        return Err(Error::Exited { code });
    }
    if info.restart_count != restarts || state.and_then(|s| s.started_at.clone()) != *started_at {
        return Err(Error::Restarted);
    }
    Ok(())
}

/// The longest a healthcheck can take to decide: start period, then `retries` failed probes,
/// each taking up to its timeout plus the interval; plus a little slack for the engine.
pub(super) fn health_bound(h: &bollard::models::HealthConfig) -> Duration {
    let d = |ns: Option<i64>, default: Duration| match ns {
        Some(n) if n > 0 => Duration::from_nanos(n as u64),
        _ => default,
    };
    let interval = d(h.interval, DEFAULT_INTERVAL);
    let timeout = d(h.timeout, DEFAULT_TIMEOUT);
    let start = d(h.start_period, Duration::ZERO);
    let retries = match h.retries {
        Some(r) if r > 0 => r as u32,
        _ => DEFAULT_RETRIES,
    };
    start + (interval + timeout) * retries + Duration::from_secs(2)
}

pub(super) fn keep_volumes() -> RemoveContainerOptions {
    RemoveContainerOptions {
        v: false,
        force: true,
        link: false,
    }
}

pub(super) async fn remove(docker: &Docker, id: &str) -> Result<(), Error> {
    docker
        .remove_container(id, Some(keep_volumes()))
        .await
        .map_err(|e| Error::engine(format!("cannot remove container {}", short_id(id)), e))
}

pub(super) async fn rename(
    docker: &Docker,
    id: &str,
    to: &str,
) -> Result<(), bollard::errors::Error> {
    docker
        .rename_container(
            id,
            RenameContainerOptions {
                name: to.to_string(),
            },
        )
        .await
}

/// What another process did to a container audsync is replacing (read as `old_id` under
/// `name`), as the engine shows it: never guessed from an error's text.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Intrusion {
    /// The container audsync read is gone.
    Removed,
    /// It carries a name audsync did not give it.
    Renamed { to: String },
    /// The name is held by a container audsync neither read nor created.
    Replaced { by: String },
}

impl Intrusion {
    /// "another process removed/renamed/replaced the container NAME …".
    pub(super) fn says(&self, name: &str, old_id: &str) -> String {
        let old = short_id(old_id);
        match self {
            Intrusion::Removed => {
                format!("another process removed the container {name} ({old})")
            }
            Intrusion::Renamed { to } => {
                format!("another process renamed the container {name} ({old}) to {to}")
            }
            Intrusion::Replaced { by } => format!(
                "another process replaced the container {name}: the name is held by container {}, which audsync neither read nor created",
                short_id(by)
            ),
        }
    }
}

/// Whether another process acted on container `name` since audsync read it as `old_id`:
/// removed it, gave it a name not in `names` (its own, and the one audsync moved it aside to),
/// or put a container that is neither it nor `new_id` (the one audsync created) under `name`.
/// `None` when everything is as audsync left it, or when the engine cannot tell.
pub(super) async fn intrusion(
    docker: &Docker,
    name: &str,
    old_id: &str,
    names: &[&str],
    new_id: Option<&str>,
) -> Option<Intrusion> {
    match super::inspect::container(docker, name).await {
        Ok(holder) => {
            let by = holder.id.unwrap_or_default();
            if !by.is_empty() && by != old_id && Some(by.as_str()) != new_id {
                return Some(Intrusion::Replaced { by });
            }
        }
        Err(e) if gone(&e) => {}
        Err(_) => return None,
    }
    match super::inspect::container(docker, old_id).await {
        Ok(old) => {
            let now = name_of(&old, "");
            (!now.is_empty() && !names.contains(&now.as_str()))
                .then_some(Intrusion::Renamed { to: now })
        }
        Err(e) if gone(&e) => Some(Intrusion::Removed),
        Err(_) => None,
    }
}

/// The engine answered that no such container exists.
fn gone(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The hint of a failure another process caused: no advice about the new container's health.
pub(super) fn intrusion_hint(name: &str) -> String {
    format!(
        "another process (docker compose, another audsync run, a person) acts on {name}: check `docker ps -a`, let it finish, then run sync again; audsync never touches a container it neither read nor created"
    )
}

/// A recreate or rollout (`doing`: "recreating", "rolling out") of `name` that met another
/// process's change (`why`: the step that failed, if any): the old container and any intruder
/// are left as they are (`old_stopped`: audsync had stopped the old one, said so); the new
/// container audsync created keeps the name when it already holds it, else it is removed.
/// The journal is cleared once nothing of this apply is left for a later run.
#[allow(clippy::too_many_arguments)]
pub(super) async fn intruded(
    docker: &Docker,
    journal: &super::journal::Journal,
    doing: &str,
    name: &str,
    old_id: &str,
    new_id: &str,
    old_stopped: bool,
    intrusion: &Intrusion,
    why: Option<&str>,
) -> crate::reconcile::ActionError {
    tracing::warn!(container = %name, reason = ?why, "{}", intrusion.says(name, old_id));
    let now = match super::inspect::container(docker, new_id).await {
        Ok(i) => Ok(Some(name_of(&i, ""))),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e),
    };
    let new_state = match now.as_ref().map(Option::as_deref) {
        Err(e) => format!(
            "the new container audsync created ({}) could not be inspected ({e}); the next run looks at it again",
            short_id(new_id)
        ),
        Ok(Some(n)) if n == name => {
            journal.clear(old_id);
            format!(
                "the new container audsync created ({}) holds the name with the new value and is left as it is",
                short_id(new_id)
            )
        }
        Ok(None) => {
            journal.clear(old_id);
            "the new container audsync created is gone".to_string()
        }
        Ok(Some(_)) => match remove(docker, new_id).await {
            Ok(()) => {
                journal.clear(old_id);
                format!(
                    "the new container audsync created ({}) was removed",
                    short_id(new_id)
                )
            }
            Err(e) => format!(
                "the new container audsync created ({}) could not be removed ({e}); the next run removes it",
                short_id(new_id)
            ),
        },
    };
    let old_state = match intrusion {
        Intrusion::Removed => String::new(),
        _ if old_stopped => {
            "; the old container, which audsync had stopped, is left as it is".to_string()
        }
        _ => "; the old container is left as it is".to_string(),
    };
    let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
    crate::reconcile::ActionError {
        rolled_back: false,
        message: format!(
            "{doing} {name} failed: meanwhile, {}; audsync gave up and rolled nothing back{why}; {new_state}{old_state}",
            intrusion.says(name, old_id)
        ),
        hint: Some(intrusion_hint(name)),
        logs: Vec::new(),
    }
}

pub(super) fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::HealthConfig;

    #[test]
    fn another_process_is_named_as_the_cause_with_short_ids() {
        let old = "0123456789abcdef0123";
        assert_eq!(
            Intrusion::Removed.says("api", old),
            "another process removed the container api (0123456789ab)"
        );
        assert_eq!(
            Intrusion::Renamed { to: "api_x".into() }.says("api", old),
            "another process renamed the container api (0123456789ab) to api_x"
        );
        assert_eq!(
            Intrusion::Replaced {
                by: "fedcba9876543210fedc".into()
            }
            .says("api", old),
            "another process replaced the container api: the name is held by container fedcba987654, which audsync neither read nor created"
        );
        assert!(!intrusion_hint("api").contains("health"));
    }

    #[test]
    fn temp_names_round_trip_with_the_running_flag() {
        for running in [true, false] {
            let (new, old) = temp_names("lambda-server.1", running);
            let (n, o) = (parse_temp(&new).unwrap(), parse_temp(&old).unwrap());
            assert_eq!(
                (n.base.as_str(), n.old, n.was_running),
                ("lambda-server.1", false, running)
            );
            assert_eq!(
                (o.base.as_str(), o.old, o.was_running),
                ("lambda-server.1", true, running)
            );
            assert_eq!(n.tag, o.tag, "one tag for both containers of a recreate");
            assert_eq!(base_name(&format!("/{old}")), "lambda-server.1");
        }
        assert_eq!(parse_temp("lambda_server_1"), None);
        assert_eq!(parse_temp("-audsync-old-abc"), None, "no base name");
        assert_eq!(parse_temp("x-audsync-new-"), None, "no tag");
        assert_eq!(base_name("/lambda"), "lambda");
        // A base name that itself looks like a temporary is taken apart at the last marker.
        let t = parse_temp("a-audsync-new-1-audsync-old-2").unwrap();
        assert_eq!((t.base.as_str(), t.old), ("a-audsync-new-1", true));
    }

    #[test]
    fn stop_calls_wait_longer_than_the_stop_timeout() {
        // The 120 s default stays for the usual timeouts.
        assert_eq!(stop_call_timeout(None), Duration::from_secs(120));
        assert_eq!(stop_call_timeout(Some(10)), Duration::from_secs(120));
        assert_eq!(stop_call_timeout(Some(90)), Duration::from_secs(120));
        // compose `stop_grace_period: 3m`: the engine answers after up to 180 s.
        assert_eq!(stop_call_timeout(Some(180)), Duration::from_secs(210));
        assert!(stop_call_timeout(Some(3600)) > Duration::from_secs(3600));
        // -1: the engine waits for ever.
        assert_eq!(stop_call_timeout(Some(-1)), FOREVER);
        let docker =
            Docker::connect_with_http("http://127.0.0.1:9", 120, bollard::API_DEFAULT_VERSION)
                .unwrap();
        assert_eq!(
            for_stop(&docker, Some(300)).timeout(),
            Duration::from_secs(330)
        );
        assert_eq!(stop_wait(None), Duration::from_secs(40));
        assert_eq!(stop_wait(Some(180)), Duration::from_secs(210));
    }

    #[test]
    fn health_bound_uses_the_containers_settings_and_docker_defaults() {
        let s = 1_000_000_000;
        let h = HealthConfig {
            interval: Some(2 * s),
            timeout: Some(s),
            retries: Some(2),
            start_period: Some(5 * s),
            ..Default::default()
        };
        assert_eq!(health_bound(&h), Duration::from_secs(5 + 3 * 2 + 2));
        assert_eq!(
            health_bound(&HealthConfig::default()),
            Duration::from_secs(60 * 3 + 2)
        );
    }
}
