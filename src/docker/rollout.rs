//! Replacing a container without a gap: the new container starts beside the old one, with the
//! same networks and aliases, and the old one is retired only once the new one is good.
//!
//! Order: create the new container under a temporary name (`NAME-audsync-new-TAG`; every step
//! journalled, so a pass cut short is finished or undone by [`super::recover`] like a recreate), connect it to every
//! network of the old one with the same aliases, start it, wait until it is good (healthcheck,
//! else `--settle`). Not good: remove it; the old container was never touched. Good: move the
//! old one aside (`NAME-audsync-old-TAG`), give the new one the name, take the old one off its
//! networks (so the network's DNS stops answering with it before it stops serving), stop it
//! with its own stop timeout and remove it (volumes kept).
//!
//! Docker's DNS knows nothing of health: the new container is in the alias's answer from the
//! moment it joins, before its server listens. A client that tries every resolved address
//! (Go's dialer, curl, Python) moves past it to the old one; no Engine API call adds an alias
//! to a running endpoint, so joining later would mean cutting the new container's own
//! connections on that network.
//!
//! [`blocker`] says when a twin cannot run: a published host port (the second bind fails), the
//! `host` network or another container's (`container:X`, the same port collides), a static
//! address. Both containers mount the same volumes while they overlap. A container that is not
//! running has nothing to keep up and is recreated ([`super::recreate`]); this module never
//! imports [`super::recover`].

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, NetworkConnectRequest};
use bollard::query_parameters::{CreateContainerOptions, StopContainerOptions};

use super::journal::{ApplyKind, ApplyStep, Applying, Journal};
use super::ops::{self, rename, short_id, wait_good};
use super::{RecreateOptions, compose, container_error, spec};
use crate::reconcile::ActionError;

/// Why no second container can run beside this one; `None` when a rollout is possible.
pub(crate) fn blocker(info: &ContainerInspectResponse) -> Option<String> {
    let hc = info.host_config.as_ref();
    let mode = hc
        .and_then(|h| h.network_mode.as_deref())
        .unwrap_or("default");
    if mode == "host" {
        return Some("it uses the host's network".into());
    }
    if mode.starts_with("container:") {
        return Some("it shares another container's network (network_mode container:)".into());
    }
    if mode == "none" {
        return Some("it has no network".into());
    }
    let published: Vec<String> = hc
        .and_then(|h| h.port_bindings.as_ref())
        .into_iter()
        .flatten()
        .filter(|(_, b)| {
            b.iter()
                .flatten()
                .any(|b| b.host_port.as_deref().is_some_and(|p| !p.is_empty()))
        })
        .map(|(p, _)| p.clone())
        .collect();
    if !published.is_empty() {
        let mut published = published;
        published.sort();
        return Some(format!("it publishes host port {}", published.join(", ")));
    }
    let static_ip = networks(info).iter().any(|(_, ep)| {
        ep.ipam_config.as_ref().is_some_and(|c| {
            c.ipv4_address.as_deref().is_some_and(|a| !a.is_empty())
                || c.ipv6_address.as_deref().is_some_and(|a| !a.is_empty())
        })
    });
    if static_ip {
        return Some("it has a static IP address".into());
    }
    if info.host_config.as_ref().and_then(|h| h.auto_remove) == Some(true) {
        return Some("it runs with --rm".into());
    }
    None
}

/// Whether it carries network aliases of its own (not just its short id or its name).
pub(crate) fn aliased(info: &ContainerInspectResponse) -> bool {
    let id = info.id.clone().unwrap_or_default();
    let short = short_id(&id).to_string();
    let name = ops::name_of(info, "");
    networks(info).iter().any(|(_, ep)| {
        ep.aliases
            .iter()
            .flatten()
            .any(|a| *a != short && *a != id && *a != name)
    })
}

fn networks(info: &ContainerInspectResponse) -> Vec<(String, bollard::models::EndpointSettings)> {
    info.network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Roll `target` out with `changes` applied. Falls back to nothing: the caller (the plan)
/// chose a rollout because [`blocker`] found none; if one appeared since, this fails without
/// touching anything. Every step is journalled (`journal`) before the next begins.
pub(super) async fn rollout(
    docker: &Docker,
    target: &str,
    changes: &[(String, String)],
    opts: &RecreateOptions,
    journal: &Journal,
    compose: &mut compose::Probe,
) -> Result<(), ActionError> {
    let (info, name) = ops::inspect_named(docker, target).await?;
    let fail = |message: String, rolled_back: bool| ActionError {
        rolled_back,
        message,
        hint: None,
        logs: Vec::new(),
    };
    if let Some(b) = blocker(&info) {
        return Err(fail(
            format!("cannot roll out {name}: {b}; the old container was not touched"),
            false,
        ));
    }
    if info.state.as_ref().and_then(|s| s.paused) == Some(true) {
        // A twin would run while the old one stays paused, then the paused one be removed:
        // someone paused the service on purpose.
        return Err(super::recreate::paused(&name));
    }
    if info.state.as_ref().and_then(|s| s.running) != Some(true) {
        // Nothing serves: nothing to keep up. A recreate leaves it stopped with the new value.
        return super::recreate::recreate(docker, target, changes, opts, journal, None, compose)
            .await;
    }
    let old_id = info.id.clone().unwrap_or_else(|| target.to_string());
    let image = info.image.clone().unwrap_or_default();
    let image = pinned(docker, &info, image).await;
    let mut spec = spec::build(&info, changes, &image);
    compose.settle(&info, &mut spec.body, changes).await;
    let stop_t = super::stop_grace(docker, &info).await;
    let (new_name, aside) = ops::temp_names(&name, true);
    let keys = changes
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(container = %name, temporary = %new_name, "rolling out with {keys} changed");
    // The journal first: nothing is changed that a later run could not finish or undo.
    journal
        .begin(&Applying {
            kind: ApplyKind::Rollout,
            name: name.clone(),
            old_id: old_id.clone(),
            spec_hash: super::journal::spec_hash(&spec.body),
            was_running: true,
            new_name: new_name.clone(),
            aside: aside.clone(),
            new_id: None,
            step: ApplyStep::Begun,
            healthy: false,
            version: None,
            values: Default::default(),
        })
        .map_err(|e| {
            fail(
                format!(
                    "cannot roll out {name}: cannot record the rollout beside the container's lock ({e}); the container was not touched"
                ),
                false,
            )
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
            let mut err = container_error(&name, "create the new container", &e);
            err.message = format!(
                "rolling out {name}: {}; the old container was not touched",
                err.message
            );
            err
        })?;
    let new_id = created.id;
    if let Err(e) = journal.step(ApplyStep::Created, Some(&new_id)) {
        let removed = ops::remove(docker, &new_id).await.is_ok();
        if removed {
            journal.clear(&old_id);
        }
        return Err(fail(
            format!(
                "cannot roll out {name}: cannot record the new container beside the container's lock ({e}); the new container was {}removed, the old one not touched",
                if removed { "" } else { "NOT " }
            ),
            false,
        ));
    }
    for w in &created.warnings {
        tracing::warn!(container = %name, "engine: {w}");
    }
    let give_up = |why: String| {
        let docker = docker.clone();
        let new_id = new_id.clone();
        let old_id = old_id.clone();
        let name = name.clone();
        let aside = aside.clone();
        async move {
            // Someone else removed, renamed or replaced the old container meanwhile: theirs
            // is left alone, and no "never stopped serving" is claimed.
            if let Some(i) =
                ops::intrusion(&docker, &name, &old_id, &[&name, &aside], Some(&new_id)).await
            {
                return ops::intruded(
                    &docker,
                    journal,
                    "rolling out",
                    &name,
                    &old_id,
                    &new_id,
                    false,
                    &i,
                    Some(&why),
                )
                .await;
            }
            tracing::warn!(container = %name, reason = %why, "rollout failed; removing the new container");
            let removed = ops::remove(&docker, &new_id).await;
            // Over only once the new container is gone and the old one has the name again.
            let whole = removed.is_ok()
                && super::inspect::container(&docker, &name)
                    .await
                    .is_ok_and(|i| i.id.as_deref() == Some(old_id.as_str()));
            if whole {
                journal.clear(&old_id);
            }
            let removed = match removed {
                Ok(()) => "the new container was removed".to_string(),
                Err(e) => format!("the new container could not be removed ({e})"),
            };
            let end = if whole {
                "rolled back: the old container never stopped serving with the old value"
                    .to_string()
            } else {
                format!(
                    "ROLLBACK INCOMPLETE: the old container does not hold the name {name}; the next run puts it back"
                )
            };
            ActionError {
                rolled_back: true,
                message: format!("rolling out {name} failed: {why}; {removed}; {end}"),
                hint: Some("fix what the new container complains about (or its healthcheck), then run sync again: the change is retried".into()),
                logs: Vec::new(),
            }
        }
    };
    for (net, endpoint) in spec.extra_networks {
        let req = NetworkConnectRequest {
            container: new_id.clone(),
            endpoint_config: Some(endpoint),
        };
        if let Err(e) = docker.connect_network(&net, req).await {
            return Err(give_up(format!("could not connect it to network {net}: {e}")).await);
        }
    }
    let started = std::time::Instant::now();
    if let Err(e) = docker.start_container(&new_id, None).await {
        return Err(give_up(format!("the new container did not start: {e}")).await);
    }
    journal.note(ApplyStep::Started, None);
    if let Err(why) = wait_good(docker, &new_id, opts).await {
        return Err(give_up(why.to_string()).await);
    }
    // From here on a run that finds this cut short finishes it: the new value stays.
    journal.note(ApplyStep::Healthy, None);
    tracing::info!(container = %name, elapsed_ms = started.elapsed().as_millis() as u64, "the new container is good; retiring the old one");
    // The last look before the old container is touched (see `recreate`).
    if let Some(i) = ops::intrusion(docker, &name, &old_id, &[&name], Some(&new_id)).await {
        return Err(ops::intruded(
            docker,
            journal,
            "rolling out",
            &name,
            &old_id,
            &new_id,
            false,
            &i,
            None,
        )
        .await);
    }

    if let Err(e) = rename(docker, &old_id, &aside).await {
        return Err(give_up(format!(
            "could not rename the old container to {aside}: {e}"
        ))
        .await);
    }
    journal.note(ApplyStep::OldAside, None);
    if let Err(e) = rename(docker, &new_id, &name).await {
        // Put the old name back; the new one is thrown away.
        let _ = rename(docker, &old_id, &name).await;
        return Err(give_up(format!("could not rename the new container to {name}: {e}")).await);
    }
    journal.note(ApplyStep::Swapped, None);
    // An old container that could not be removed keeps the journal: the next run retires it.
    if retire(docker, &name, &old_id, stop_t).await {
        journal.clear(&old_id);
    }
    Ok(())
}

/// Stop the old container of a rollout (its own stop signal and timeout) and remove it (volumes
/// kept); best effort, each failure logged. Returns whether it is gone.
///
/// It is stopped while still on its networks: a server that shuts down gracefully closes its
/// listener (a client that resolved its address is refused and moves on to the new one), answers
/// the requests it has in flight and closes its idle keep-alive connections, so a client's pool
/// redials. Taking it off the networks first cut those requests and left pooled connections
/// hanging on an address that no longer answers (1 of 145 requests lost with 20 ms answers, 6 of
/// 115 with 300 ms ones); clients that try only the first resolved address fared no worse for
/// the change (BENCHMARKS.md, section 8).
pub(super) async fn retire(docker: &Docker, name: &str, old_id: &str, stop_t: Option<i32>) -> bool {
    tracing::info!(container = %name, "stopping the old container");
    if let Err(e) = ops::for_stop(docker, stop_t)
        .stop_container(
            old_id,
            Some(StopContainerOptions {
                signal: None,
                t: stop_t,
            }),
        )
        .await
    {
        tracing::warn!(container = %name, error = %e, "could not stop the old container; removing it anyway");
    }
    match ops::remove(docker, old_id).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(container = %name, error = %e, "the new container runs, but the old one could not be removed; the next run tries again");
            false
        }
    }
}

/// The image to create from: the name when it still points at the id the old container runs,
/// else the id (as a recreate does).
async fn pinned(docker: &Docker, info: &ContainerInspectResponse, id: String) -> String {
    match info.config.as_ref().and_then(|c| c.image.clone()) {
        Some(n) if !id.is_empty() => match docker.inspect_image(&n).await {
            Ok(img) if img.id.as_deref() == Some(id.as_str()) => n,
            _ => id,
        },
        Some(n) => n,
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{EndpointSettings, HostConfig, NetworkSettings, PortBinding};
    use std::collections::HashMap;

    fn with(mode: &str, ports: Option<&str>, aliases: &[&str]) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("0123456789abcdef".into()),
            name: Some("/lambda".into()),
            host_config: Some(HostConfig {
                network_mode: Some(mode.into()),
                port_bindings: ports.map(|p| {
                    HashMap::from([(
                        "8080/tcp".to_string(),
                        Some(vec![PortBinding {
                            host_ip: None,
                            host_port: Some(p.into()),
                        }]),
                    )])
                }),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([(
                    "appnet".to_string(),
                    EndpointSettings {
                        aliases: Some(aliases.iter().map(|a| a.to_string()).collect()),
                        ..Default::default()
                    },
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn host_ports_and_shared_network_modes_block_a_rollout() {
        assert_eq!(blocker(&with("appnet", None, &["api"])), None);
        assert_eq!(
            blocker(&with("appnet", Some("8080"), &["api"])).as_deref(),
            Some("it publishes host port 8080/tcp")
        );
        // `-p 8080` without a host port: the engine picks one each time, no collision.
        assert_eq!(blocker(&with("appnet", Some(""), &["api"])), None);
        assert!(blocker(&with("host", None, &[])).is_some());
        assert!(blocker(&with("container:abc", None, &[])).is_some());
    }

    #[test]
    fn only_aliases_of_its_own_count() {
        assert!(aliased(&with("appnet", None, &["api", "0123456789ab"])));
        assert!(!aliased(&with("appnet", None, &["0123456789ab", "lambda"])));
        assert!(!aliased(&with("bridge", None, &[])));
    }
}
