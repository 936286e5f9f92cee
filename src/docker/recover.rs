//! Finishing or undoing a recreate that was cut short, and the engine timeouts of stop calls.
//!
//! A recreate ([`super::recreate`]) goes through states that must not outlive the process: the
//! old container stopped, no container under the name, a new one that never proved good. When
//! the process dies half-way (SIGKILL, OOM, reboot, a second SIGINT) the next pass finds what
//! it left by name — `NAME-audsync-new-TAG` and `NAME-audsync-old-TAG`, where TAG says whether
//! the old container was running — and puts the service back before looking at the container:
//! the name missing gets the old container back (started when it was running); a new container
//! under the name that is not good is replaced by the old one; a good one keeps the name and
//! the old one is removed. The record lives in the names themselves, so it survives every step
//! and needs no file. It must never remove the only copy of a service, nor a volume (`v=false`).
//! It runs under the pass lock, so it never mistakes another pass's recreate for a leftover.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptions, RemoveContainerOptions, RenameContainerOptions,
};

use super::{Container, container_error, recreate};
use crate::reconcile::ActionError;

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
/// How often a container's state is read while waiting for it to stop.
const POLL: Duration = Duration::from_millis(250);

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
    pub base: String,
    /// The old container moved aside (else the new one, not yet renamed).
    pub old: bool,
    /// Shared by the two containers of one recreate.
    pub tag: String,
    /// Whether the old container was running when the recreate began.
    pub was_running: bool,
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

/// Wait (up to `bound`) until container `id` is not running; returns whether it still runs.
/// A stop call that failed may have left the engine stopping it still.
pub(super) async fn wait_not_running(docker: &Docker, id: &str, bound: Duration) -> bool {
    let begin = Instant::now();
    loop {
        let running = match docker.inspect_container(id, None).await {
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

/// One container left by a recreate.
#[derive(Debug, Clone)]
struct Leftover {
    id: String,
    name: String,
    running: bool,
}

/// The two containers of one recreate, by tag.
#[derive(Debug, Default)]
struct Group {
    old: Option<Leftover>,
    new: Option<Leftover>,
    was_running: bool,
}

impl Container {
    /// Finish or undo any recreate of this container that was cut short; returns what was
    /// done (with `dry_run`: what would be). Run before observing it.
    pub async fn recover(&self, dry_run: bool) -> Result<Vec<String>, ActionError> {
        recover(&self.engine.docker, &self.name, &self.opts, dry_run).await
    }
}

async fn recover(
    docker: &Docker,
    target: &str,
    opts: &super::RecreateOptions,
    dry_run: bool,
) -> Result<Vec<String>, ActionError> {
    let base = match docker.inspect_container(target, None).await {
        Ok(i) => i
            .name
            .as_deref()
            .map(base_name)
            .unwrap_or_else(|| target.to_string()),
        Err(_) => base_name(target),
    };
    let groups = leftovers(docker, &base).await?;
    if groups.is_empty() {
        return Ok(vec![]);
    }
    if dry_run {
        let names: Vec<String> = groups
            .values()
            .flat_map(|g| g.old.iter().chain(g.new.iter()).map(|l| l.name.clone()))
            .collect();
        return Ok(vec![format!(
            "{base}: a recreate was cut short ({} left); the next run finishes or undoes it",
            names.join(", ")
        )]);
    }
    let mut done = Vec::new();
    for (tag, g) in groups {
        let step = recover_group(docker, &base, &g, opts)
            .await
            .map_err(|why| ActionError {
                rolled_back: false,
                message: format!(
                    "{base}: cannot recover from a recreate that was cut short (tag {tag}): {why}"
                ),
                hint: Some(format!(
                    "restore it by hand: see `docker ps -a --filter name={base}-audsync-`; the old container is {base}-audsync-old-{tag}"
                )),
            })?;
        tracing::warn!(container = %base, "recovered a recreate that was cut short: {step}");
        done.push(format!("{base}: {step}"));
    }
    Ok(done)
}

/// The containers named `base-audsync-{old,new}-TAG`, by tag.
async fn leftovers(docker: &Docker, base: &str) -> Result<BTreeMap<String, Group>, ActionError> {
    // The engine matches the name filter as a regular expression; names hold only [\w.-].
    let pattern = format!("{}-audsync-", base.replace('.', "\\."));
    let filters = std::collections::HashMap::from([("name".to_string(), vec![pattern])]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| container_error(base, "list the leftovers of a recreate of", &e))?;
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for c in list {
        let (Some(id), Some(names)) = (c.id, c.names) else {
            continue;
        };
        for n in names {
            let Some(t) = parse_temp(&n).filter(|t| t.base == base) else {
                continue;
            };
            let l = Leftover {
                id: id.clone(),
                name: n.trim_start_matches('/').to_string(),
                running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            };
            let g = groups.entry(t.tag).or_default();
            g.was_running = t.was_running;
            if t.old {
                g.old = Some(l);
            } else {
                g.new = Some(l);
            }
        }
    }
    Ok(groups)
}

/// Bring one recreate to an end; returns what was done, or why not.
async fn recover_group(
    docker: &Docker,
    base: &str,
    g: &Group,
    opts: &super::RecreateOptions,
) -> Result<String, String> {
    let current = match docker.inspect_container(base, None).await {
        Ok(i) => Some(i),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => None,
        Err(e) => return Err(format!("cannot inspect {base}: {e}")),
    };
    let started = |yes: bool| if yes { " and started" } else { "" };
    match (&g.old, &g.new, current) {
        // Cut short before the old container was moved aside: it still has the name, the new
        // one never took over. Throw the new one away; start the old one if it was running.
        (None, Some(new), Some(cur)) => {
            remove(docker, &new.id).await?;
            let start = g.was_running && cur.state.and_then(|s| s.running) != Some(true);
            if start {
                let id = cur.id.unwrap_or_else(|| base.to_string());
                docker
                    .start_container(&id, None)
                    .await
                    .map_err(|e| format!("cannot start the old container: {e}"))?;
            }
            Ok(format!(
                "removed the unused new container {}; the old one kept its name{}",
                new.name,
                started(start)
            ))
        }
        // The name is free: the old container gets it back (the new one never proved good).
        (Some(old), new, None) => {
            let start = g.was_running && !old.running;
            let problems = restore_old(
                docker,
                base,
                &old.id,
                new.as_ref().map(|n| n.id.as_str()),
                start,
                true,
                Duration::ZERO,
            )
            .await;
            if !problems.is_empty() {
                return Err(problems.join("; "));
            }
            Ok(format!(
                "no container had the name: the old container {} got it back{}{}",
                old.name,
                started(start),
                new.as_ref()
                    .map(|n| format!("; removed the unused new container {}", n.name))
                    .unwrap_or_default()
            ))
        }
        // Only a new container is left: it is the only copy of the service, so it takes the name.
        (None, Some(new), None) => {
            rename(docker, &new.id, base)
                .await
                .map_err(|e| format!("cannot rename {} to {base}: {e}", new.name))?;
            let start = g.was_running && !new.running;
            if start {
                docker
                    .start_container(&new.id, None)
                    .await
                    .map_err(|e| format!("cannot start {base}: {e}"))?;
            }
            Ok(format!(
                "the old container is gone: the new container {} took the name{}",
                new.name,
                started(start)
            ))
        }
        // Cut short after the switch: the new container has the name, the old one waits aside.
        (Some(old), new, Some(cur)) => {
            let cur_id = cur.id.clone().unwrap_or_else(|| base.to_string());
            if let Some(new) = new {
                remove(docker, &new.id).await?;
            }
            if cur_id == old.id {
                return Err("the old container holds both names".into());
            }
            let cur_running = cur.state.as_ref().and_then(|s| s.running) == Some(true);
            if !g.was_running {
                // The old one was stopped: the new one stays created with the new value.
                remove(docker, &old.id).await?;
                return Ok(format!(
                    "finished: the new container keeps the name; removed the old container {}",
                    old.name
                ));
            }
            let verdict = if cur_running {
                recreate::wait_good(docker, &cur_id, opts).await
            } else {
                Err("the new container was not running".into())
            };
            match verdict {
                Ok(()) => {
                    remove(docker, &old.id).await?;
                    Ok(format!(
                        "finished: the new container under the name is good; removed the old container {}",
                        old.name
                    ))
                }
                Err(why) => {
                    let problems = restore_old(
                        docker,
                        base,
                        &old.id,
                        Some(&cur_id),
                        true,
                        true,
                        Duration::ZERO,
                    )
                    .await;
                    if !problems.is_empty() {
                        return Err(format!("rolling back ({why}): {}", problems.join("; ")));
                    }
                    Ok(format!(
                        "rolled back: {why}; the old container {} runs again under the name",
                        old.name
                    ))
                }
            }
        }
        (None, None, _) => Ok("nothing left".into()),
    }
}

fn keep_volumes() -> RemoveContainerOptions {
    RemoveContainerOptions {
        v: false,
        force: true,
        link: false,
    }
}

async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    docker
        .remove_container(id, Some(keep_volumes()))
        .await
        .map_err(|e| format!("cannot remove container {}: {e}", short_id(id)))
}

async fn rename(docker: &Docker, id: &str, to: &str) -> Result<(), bollard::errors::Error> {
    docker
        .rename_container(
            id,
            RenameContainerOptions {
                name: to.to_string(),
            },
        )
        .await
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
