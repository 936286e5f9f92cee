//! Recreating one container with some variables changed, without ever losing the service.
//!
//! Order (compose's, which always keeps a way back): create the new container under a temporary
//! name, stop the old one, move the old one aside, give the new one the name, start it, wait
//! until it is good, and only then remove the old one. If the new one is not good it is removed
//! and the old one is started again, then gets its name back. Each step is journalled before
//! the next begins ([`super::journal`], beside the container's lock), and [`super::recover`]
//! finishes (once the new one proved good) or undoes one that was cut short. The old container is never removed
//! with its volumes (`v=false`): the new one mounts its anonymous volumes by name. The shared
//! steps (names, stop timeouts, health gate, the way back) are [`super::ops`]'s; this module
//! never imports [`super::recover`].

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, NetworkConnectRequest};
use bollard::query_parameters::{CreateContainerOptions, LogsOptions, StopContainerOptions};
use futures_util::StreamExt;

use super::journal::{ApplyKind, ApplyStep, Applying, Journal};
use super::ops::{self, keep_volumes, rename, wait_good};
use super::{RecreateOptions, container_error, spec};
use crate::reconcile::ActionError;

/// Log lines of a failed new container quoted in the error.
const LOG_LINES: usize = 20;

/// Recreate `target` with every `KEY=value` of `changes` applied in one create body (see
/// [`spec::build`]: an entry is replaced where the container carries the key), keeping the
/// service: the old container comes back if the new one is not good.
pub(super) async fn recreate(
    docker: &Docker,
    target: &str,
    changes: &[(String, String)],
    opts: &RecreateOptions,
    journal: &Journal,
    netns: Option<&str>,
    compose: &mut super::compose::Probe,
) -> Result<(), ActionError> {
    let (info, name) = ops::inspect_named(docker, target).await?;
    if info.host_config.as_ref().and_then(|h| h.auto_remove) == Some(true) {
        // Stopping it would delete it, and with it the way back.
        return Err(ActionError {
            rolled_back: false,
            message: format!(
                "cannot recreate container {name} safely: it runs with --rm (AutoRemove), so stopping it deletes it and a failed replacement could not be rolled back"
            ),
            hint: Some("run it without --rm (e.g. with a restart policy), or use --restart restart if it reads the value at start-up".into()),
            logs: Vec::new(),
        });
    }
    if info.state.as_ref().and_then(|s| s.paused) == Some(true) {
        // Recreating it would bring it back running: someone paused it on purpose.
        return Err(paused(&name));
    }
    let old_id = info.id.clone().unwrap_or_else(|| target.to_string());
    let image = pinned_image(docker, &info).await;
    let mut spec = spec::build(&info, changes, &image);
    compose.settle(&info, &mut spec.body, changes).await;
    if let Some(base) = netns
        && let Some(hc) = spec.body.host_config.as_mut()
    {
        // The container whose network it shares was replaced: it joins the new one.
        hc.network_mode = Some(format!("container:{base}"));
    }
    let was_running = info.state.as_ref().and_then(|s| s.running) == Some(true);
    let stop_t = super::stop_grace(docker, &info).await;

    // The names record the recreate in progress, for a pass that finds it cut short.
    let (new_name, aside) = ops::temp_names(&name, was_running);
    let keys = changes
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(container = %name, temporary = %new_name, "recreating with {keys} changed");
    // The journal first: a container it does not name is never touched by a recovery.
    journal
        .begin(&Applying {
            kind: ApplyKind::Recreate,
            name: name.clone(),
            old_id: old_id.clone(),
            spec_hash: super::journal::spec_hash(&spec.body),
            was_running,
            new_name: new_name.clone(),
            aside: aside.clone(),
            new_id: None,
            step: ApplyStep::Begun,
            healthy: false,
            version: None,
            values: Default::default(),
        })
        .map_err(|e| ActionError {
            logs: Vec::new(),
            rolled_back: false,
            message: format!(
                "cannot recreate container {name}: cannot record the recreate beside the container's lock ({e}); the container was not touched"
            ),
            hint: Some("check the lock directory (--lock-dir / AUDSYNC_LOCK_DIR)".into()),
        })?;

    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(new_name.clone()),
                ..Default::default()
            }),
            spec.body,
        )
        .await
        .map_err(|e| {
            journal.clear(&old_id);
            step_error(
                &name,
                "create the new container",
                &e,
                "the old container was not touched",
            )
        })?;
    let new_id = created.id;
    if let Err(e) = journal.step(ApplyStep::Created, Some(&new_id)) {
        if docker
            .remove_container(&new_id, Some(keep_volumes()))
            .await
            .is_ok()
        {
            journal.clear(&old_id);
        }
        return Err(ActionError {
            logs: Vec::new(),
            rolled_back: false,
            message: format!(
                "cannot recreate container {name}: cannot record the recreate beside the container's lock ({e}); the new container was removed, the old one not touched"
            ),
            hint: Some("check the lock directory (--lock-dir / AUDSYNC_LOCK_DIR)".into()),
        });
    }
    for w in &created.warnings {
        tracing::warn!(container = %name, "engine: {w}");
    }
    for (net, endpoint) in spec.extra_networks {
        let req = NetworkConnectRequest {
            container: new_id.clone(),
            endpoint_config: Some(endpoint),
        };
        if let Err(e) = docker.connect_network(&net, req).await {
            if docker
                .remove_container(&new_id, Some(keep_volumes()))
                .await
                .is_ok()
            {
                journal.clear(&old_id);
            }
            return Err(step_error(
                &name,
                &format!("connect the new container to network {net}"),
                &e,
                "the new container was removed; the old one was not touched",
            ));
        }
    }

    // Every value of the container's own environment (old and new) is hidden in quoted logs.
    let mut secrets: Vec<String> = info
        .config
        .as_ref()
        .and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_string()))
        .chain(changes.iter().map(|(_, v)| v.clone()))
        .collect();
    secrets.sort();
    secrets.dedup();
    let secrets = super::logs::forms(&secrets);
    let mut rb = Rollback {
        docker,
        journal,
        secrets,
        name: &name,
        old_id: &old_id,
        new_id: &new_id,
        was_running,
        renamed: false,
        old_stopped: false,
        aside: &aside,
        stop_wait: ops::stop_wait(stop_t),
    };

    // The last look before the old container is touched: another process that removed,
    // renamed or replaced it since it was read owns the outcome (a rollback would start or
    // rename a container someone else is handling).
    if let Some(i) = ops::intrusion(docker, &name, &old_id, &[&name], Some(&new_id)).await {
        return Err(rb.intruded(&i, None).await);
    }
    if was_running {
        tracing::info!(container = %name, "stopping the old container");
        let progress = ops::stop_progress(&name, stop_t);
        let stopped = ops::for_stop(docker, stop_t)
            .stop_container(
                &old_id,
                Some(StopContainerOptions {
                    signal: None,
                    t: stop_t,
                }),
            )
            .await;
        drop(progress);
        if let Err(e) = stopped {
            return Err(rb
                .undo(format!("could not stop the old container: {e}"))
                .await);
        }
        rb.old_stopped = true;
        journal.note(ApplyStep::OldStopped, None);
    }
    if let Err(e) = rename(docker, &old_id, &aside).await {
        return Err(rb
            .undo(format!(
                "could not rename the old container to {aside}: {e}"
            ))
            .await);
    }
    rb.renamed = true;
    journal.note(ApplyStep::OldAside, None);
    if let Err(e) = rename(docker, &new_id, &name).await {
        return Err(rb
            .undo(format!("could not rename the new container to {name}: {e}"))
            .await);
    }
    journal.note(ApplyStep::Swapped, None);
    if !was_running {
        // It was stopped; it stays stopped, now with the new value.
        tracing::info!(container = %name, "the old container was not running; the new one is left created, not started");
        remove(docker, &old_id).await;
        journal.clear(&old_id);
        return Ok(());
    }
    let started = Instant::now();
    if let Err(e) = docker.start_container(&new_id, None).await {
        return Err(rb
            .undo(format!("the new container did not start: {e}"))
            .await);
    }
    journal.note(ApplyStep::Started, None);
    if let Err(why) = wait_good(docker, &new_id, opts).await {
        return Err(rb.undo(why.to_string()).await);
    }
    // From here on a run that finds this cut short finishes it: the new value stays.
    journal.note(ApplyStep::Healthy, None);
    tracing::info!(container = %name, elapsed_ms = started.elapsed().as_millis() as u64, "the new container is good; removing the old one");
    match docker.remove_container(&old_id, Some(keep_volumes())).await {
        Ok(_) => journal.clear(&old_id),
        // The journal stays: the next run retires it.
        Err(e) => {
            tracing::warn!(container = %name, old = %aside, error = %e, "the new container runs, but the old one could not be removed; the next run tries again")
        }
    }
    Ok(())
}

/// Pin the image by the id the old container runs. The name is kept (readable `docker ps`,
/// and compose compares it) when it still points at that same id; otherwise the id is used,
/// so a re-tagged or pulled image never sneaks in with the recreate.
async fn pinned_image(docker: &Docker, info: &ContainerInspectResponse) -> String {
    let id = info.image.clone().unwrap_or_default();
    let name = info.config.as_ref().and_then(|c| c.image.clone());
    match name {
        Some(n) if !id.is_empty() => match docker.inspect_image(&n).await {
            Ok(img) if img.id.as_deref() == Some(id.as_str()) => n,
            _ => id,
        },
        Some(n) => n,
        None => id,
    }
}

/// The refusal for a paused container (left paused, not recreated or restarted).
pub(super) fn paused(name: &str) -> ActionError {
    ActionError {
        rolled_back: false,
        message: format!(
            "container {name} is paused: audsync leaves it paused rather than bring it back running with the new value"
        ),
        hint: Some(format!(
            "unpause it (docker unpause {name}) and run sync again: the change is still owed"
        )),
        logs: Vec::new(),
    }
}

/// Remove a container, best effort (volumes kept).
async fn remove(docker: &Docker, id: &str) {
    if let Err(e) = docker.remove_container(id, Some(keep_volumes())).await {
        tracing::warn!(container = %id, error = %e, "could not remove the new container");
    }
}

fn step_error(name: &str, what: &str, e: &bollard::errors::Error, after: &str) -> ActionError {
    let mut err = container_error(name, what, e);
    err.message = format!("recreating {name}: {}; {after}", err.message);
    err
}

/// The state needed to put the old container back.
struct Rollback<'a> {
    docker: &'a Docker,
    journal: &'a Journal,
    /// The container's environment values: replaced by `[redacted]` in quoted log lines.
    secrets: Vec<String>,
    name: &'a str,
    old_id: &'a str,
    new_id: &'a str,
    was_running: bool,
    renamed: bool,
    /// audsync stopped the old container.
    old_stopped: bool,
    /// The name audsync moves the old container aside to.
    aside: &'a str,
    /// How long the old container may still take to stop after a failed stop call.
    stop_wait: Duration,
}

impl Rollback<'_> {
    /// Another process acted on the container: say so, leave theirs alone.
    async fn intruded(&self, i: &ops::Intrusion, why: Option<&str>) -> ActionError {
        ops::intruded(
            self.docker,
            self.journal,
            "recreating",
            self.name,
            self.old_id,
            self.new_id,
            self.old_stopped,
            i,
            why,
        )
        .await
    }

    /// Remove the new container, give the old one its name back, start it; say what happened.
    async fn undo(&self, why: String) -> ActionError {
        let name = self.name;
        // Someone else removed, renamed or replaced the old container meanwhile: there is
        // nothing of ours to go back to, and theirs is not ours to start or rename.
        if let Some(i) = ops::intrusion(
            self.docker,
            name,
            self.old_id,
            &[name, self.aside],
            Some(self.new_id),
        )
        .await
        {
            return self.intruded(&i, Some(&why)).await;
        }
        tracing::warn!(container = %name, reason = %why, "rolling back to the old container");
        let logs: Vec<String> = last_logs(self.docker, self.new_id)
            .await
            .iter()
            .map(|l| redact_line(l, &self.secrets))
            .collect();
        let problems = ops::restore_old(
            self.docker,
            name,
            self.old_id,
            Some(self.new_id),
            self.was_running,
            self.renamed,
            self.stop_wait,
        )
        .await;
        if problems.is_empty() {
            // Whole again: nothing for a later pass to recover.
            self.journal.clear(self.old_id);
        }
        let restored = if problems.is_empty() {
            format!("rolled back: the old container runs again as {name} with the old value")
        } else {
            format!("ROLLBACK INCOMPLETE: {}", problems.join("; "))
        };
        // The log lines travel apart from the message: the terminal report quotes them, a
        // notification only says where to look.
        let logs = if logs.is_empty() {
            vec!["(no log output)".to_string()]
        } else {
            logs
        };
        ActionError {
            rolled_back: true,
            logs,
            message: format!(
                "recreating {name} failed: {why}; {restored} (the new container's last log lines are in the report of this run; `docker logs {name}` shows the running one's)"
            ),
            hint: Some(if problems.is_empty() {
                "fix what the new container complains about (or its healthcheck), then run sync again: the change is retried".into()
            } else {
                format!("check `docker ps -a` and restore {name} by hand")
            }),
        }
    }
}

/// Environment values shorter than this are left in quoted logs (`1`, `true`, `prod`).
const REDACT_MIN: usize = 8;

/// A log line fit to quote: control characters (terminal escapes, carriage returns, bells)
/// removed, and every value in `secrets` of at least [`REDACT_MIN`] characters replaced by
/// `[redacted]` (longest first, so a value containing another is hidden whole).
pub(crate) fn redact_line(line: &str, secrets: &[String]) -> String {
    let strip = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
    let mut out = strip(line);
    let mut values: Vec<String> = secrets
        .iter()
        .map(|v| strip(v))
        .filter(|v| v.chars().count() >= REDACT_MIN)
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in &values {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "[redacted]");
        }
    }
    out
}

/// The last lines the container wrote (stdout and stderr), best effort.
async fn last_logs(docker: &Docker, id: &str) -> Vec<String> {
    let opts = LogsOptions {
        stdout: true,
        stderr: true,
        tail: LOG_LINES.to_string(),
        ..Default::default()
    };
    let mut stream = docker.logs(id, Some(opts));
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(out) => text.push_str(&String::from_utf8_lossy(&out.into_bytes())),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the new container's logs");
                break;
            }
        }
    }
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let skip = lines.len().saturating_sub(LOG_LINES);
    lines.into_iter().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_log_lines_lose_control_characters_and_environment_values() {
        let env = vec![
            "hunter2-long-pass".to_string(),
            "hunter2-long".to_string(),
            "short".to_string(),
        ];
        assert_eq!(
            redact_line("pw=hunter2-long-pass x=short \u{1b}[2Jok\r", &env),
            "pw=[redacted] x=short [2Jok"
        );
        assert_eq!(redact_line("a=hunter2-long!", &env), "a=[redacted]!");
        // A control character inside the value does not hide it.
        assert_eq!(redact_line("hunter2-\u{7}long", &env), "[redacted]");
    }
}
