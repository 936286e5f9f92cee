//! Finishing or undoing a recreate that was cut short.
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
//! A name is not proof: recreate.rs records each recreate in the state file (`recreating`: the
//! old container's id, the new one's) before it creates anything, and only containers whose
//! ids are recorded for this name are touched. A foreign container named like a temporary, or
//! with compose labels copied, is never started, renamed or removed: it is left alone with a
//! warning.
//! It runs under the pass lock, so it never mistakes another pass's recreate for a leftover.
//! The names, the health gate and the way back are [`super::ops`]'s; this module never imports
//! [`super::recreate`].

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;

use super::ops::{self, parse_temp, remove, rename, restore_old, wait_good};
use super::{Container, Error, container_error};
use crate::reconcile::ActionError;

// `docker/mod.rs` names these through this module.
pub(super) use super::ops::{base_name, for_stop, stop_progress};

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
    pub(crate) async fn recover(&self, dry_run: bool) -> Result<Vec<String>, ActionError> {
        recover(&self.engine.docker, &self.name, &self.opts, dry_run).await
    }
}

async fn recover(
    docker: &Docker,
    target: &str,
    opts: &super::RecreateOptions,
    dry_run: bool,
) -> Result<Vec<String>, ActionError> {
    let base = match super::inspect::container(docker, target).await {
        Ok(i) => i
            .name
            .as_deref()
            .map(base_name)
            .unwrap_or_else(|| target.to_string()),
        Err(_) => base_name(target),
    };
    let groups = leftovers(docker, &base).await?;
    let records = ops::records(opts.journal.as_deref(), &base);
    let groups = vouched(groups, &records);
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
                logs: Vec::new(),
            })?;
        tracing::warn!(container = %base, "recovered a recreate that was cut short: {step}");
        if let Some((old, _)) = records.iter().find(|(old, new)| {
            g.old.as_ref().is_some_and(|o| &o.id == old)
                || g.new
                    .as_ref()
                    .is_some_and(|n| new.as_deref() == Some(n.id.as_str()))
        }) {
            ops::forget(opts.journal.as_deref(), old);
        }
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

/// Keep only the containers the state file's records name for this container (old id, new
/// id); the rest merely carry a lookalike name (or copied labels) and are left alone.
fn vouched(
    groups: BTreeMap<String, Group>,
    records: &[(String, Option<String>)],
) -> BTreeMap<String, Group> {
    let mut out = BTreeMap::new();
    for (tag, mut g) in groups {
        if let Some(old) = &g.old
            && !records.iter().any(|(o, _)| *o == old.id)
        {
            tracing::warn!(container = %old.name, "named like a container audsync moved aside, but no recreate in the state file records it: left alone");
            g.old = None;
        }
        if let Some(new) = &g.new
            && !records
                .iter()
                .any(|(_, n)| n.as_deref() == Some(new.id.as_str()))
        {
            tracing::warn!(container = %new.name, "named like a container audsync created for a recreate, but no recreate in the state file records it: left alone");
            g.new = None;
        }
        if g.old.is_some() || g.new.is_some() {
            out.insert(tag, g);
        }
    }
    out
}

/// Bring one recreate to an end; returns what was done, or why not.
async fn recover_group(
    docker: &Docker,
    base: &str,
    g: &Group,
    opts: &super::RecreateOptions,
) -> Result<String, Error> {
    let current = match super::inspect::container(docker, base).await {
        Ok(i) => Some(i),
        Err(e) => match Error::engine(format!("cannot inspect {base}"), e) {
            Error::NotFound { .. } => None,
            e => return Err(e),
        },
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
                    .map_err(|e| Error::engine("cannot start the old container", e))?;
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
                return Err(Error::Incomplete(problems));
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
                .map_err(|e| Error::engine(format!("cannot rename {} to {base}", new.name), e))?;
            let start = g.was_running && !new.running;
            if start {
                docker
                    .start_container(&new.id, None)
                    .await
                    .map_err(|e| Error::engine(format!("cannot start {base}"), e))?;
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
                return Err(Error::BothNames);
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
                wait_good(docker, &cur_id, opts).await
            } else {
                Err(Error::NotRunning)
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
                        return Err(Error::RollbackIncomplete {
                            why: Box::new(why),
                            problems,
                        });
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
