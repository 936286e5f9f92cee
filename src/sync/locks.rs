//! The resource locks of a pass: which `.env` files and containers (compose services, Swarm
//! services) it may touch, taken after the configuration's lock and before anything is read,
//! so everything the pass inspects it inspects under them; and the records kept with them
//! (a restart owed, the values a container last ran with, a `.env`'s in-place write journal),
//! which outlive one configuration.
//!
//! Never decides what to do: it only feeds the records into the state the plan reads, and
//! writes them back.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{BindingSink, BindingTarget, SyncConfig};
use crate::lock::{self, Held, Resource};
use crate::reconcile::{Journal, JournalError, RestartMode};
use crate::state::{State, StateFile};

/// Every resource of `cfg`'s bindings, and the pass's target names -> their resources. The
/// engine is asked only when some binding may restart something; its `/info` ID keys the
/// containers, so two addresses of one engine share the locks. An unreachable engine yields no
/// container locks: the pass then acts on no container either.
pub(crate) async fn resources(cfg: &SyncConfig) -> (Vec<Resource>, BTreeMap<String, Resource>) {
    let mut all = Vec::new();
    let mut targets = BTreeMap::new();
    for b in &cfg.bindings {
        for s in &b.sinks {
            if let BindingSink::Env(p) = s {
                all.push(Resource::EnvFile(Resource::real_path(p)));
            }
        }
    }
    // An in-place write an older version journalled in this configuration's state file: its
    // `.env` is locked too, so the pass can finish it under that lock (then it is the record's).
    for w in StateFile::load(&cfg.state_file, true)
        .map(|f| f.state.in_place_writes)
        .unwrap_or_default()
    {
        all.push(Resource::EnvFile(Resource::real_path(&w.target)));
    }
    let acting: Vec<_> = cfg
        .bindings
        .iter()
        .filter(|b| b.restart != RestartMode::None)
        .flat_map(|b| b.targets.iter())
        .filter(|t| t.is_docker())
        .collect();
    if acting.is_empty() {
        return (all, targets);
    }
    let Ok(engine) = crate::docker::Engine::connect(&cfg.docker_host).await else {
        return (all, targets);
    };
    let id = engine.id().await;
    let known = remembered_names(cfg);
    let container = |name: &str| Resource::Container {
        engine: id.clone(),
        name: name.to_string(),
    };
    for t in acting {
        match t {
            BindingTarget::Container(c) => {
                // Given by id: go by its name, as the pass does (it survives a recreate).
                let name = match engine.name_of(c).await {
                    Ok(Some(n)) => n,
                    _ => known.get(c).cloned().unwrap_or_else(|| c.clone()),
                };
                targets.insert(name.clone(), container(&name));
            }
            BindingTarget::ComposeService { project, service } => {
                all.push(Resource::ComposeService {
                    engine: id.clone(),
                    project: project.clone(),
                    service: service.clone(),
                });
                for name in engine
                    .compose_service(project, service)
                    .await
                    .unwrap_or_default()
                {
                    targets.insert(name.clone(), container(&name));
                }
            }
            BindingTarget::Exec(_) => {}
            BindingTarget::SwarmService(s) => {
                targets.insert(
                    crate::docker::swarm::label(s),
                    Resource::SwarmService {
                        engine: id.clone(),
                        name: s.clone(),
                    },
                );
            }
        }
    }
    (all, targets)
}

/// The record beside each `.env`'s lock the pass holds (a dry run: where it would be read), by
/// the `.env`'s real path: where its in-place writes are journalled (`sink::env::journal`).
pub(crate) fn env_records(
    held: &Held,
    resources: &[Resource],
) -> BTreeMap<std::path::PathBuf, std::path::PathBuf> {
    resources
        .iter()
        .filter_map(|r| match r {
            Resource::EnvFile(p) => Some((p.clone(), held.resource_record(r)?)),
            _ => None,
        })
        .collect()
}

/// The names remembered for containers given by id (the state file is read again under the
/// locks by the pass; here only to name the resource).
fn remembered_names(cfg: &SyncConfig) -> BTreeMap<String, String> {
    StateFile::load(&cfg.state_file, true)
        .map(|f| f.state.container_names)
        .unwrap_or_default()
}

/// Take the records of the held targets into `state`: what a resource's record says wins over
/// what this configuration's state file remembered (another configuration may have acted on it
/// since). A target without a record yet keeps the state file's (an upgrade from a version
/// without resource records).
pub(crate) fn adopt(held: &Held, state: &mut State) -> Result<(), lock::Error> {
    for name in held.targets() {
        let Some(r) = held.record(name)? else {
            continue;
        };
        if r.owed {
            state.owed.insert(name.clone());
        } else {
            state.owed.remove(name);
        }
        if r.ran_with.is_empty() {
            state.applied.remove(name);
        } else {
            state.applied.insert(name.clone(), r.ran_with);
        }
    }
    Ok(())
}

/// Write back what the targets now run with into their records.
pub(crate) fn store_ran_with(held: &Held, state: &State) -> Result<(), lock::Error> {
    for name in held.targets() {
        let now = state.applied.get(name).cloned().unwrap_or_default();
        held.update(name, |r| r.ran_with = now)?;
    }
    Ok(())
}

/// Give each Swarm service of the pass the values its record remembers as failed (an update
/// rolled back: not pushed again before its backoff, see docs/swarm.md).
pub(crate) fn swarm_failures_in(held: &Held, slots: &mut [super::targets::Slot]) {
    for slot in slots {
        if let super::targets::Slot::Swarm(s) = slot {
            match held.record(&s.label()) {
                Ok(r) => s.remember_failed(r.and_then(|r| r.failed)),
                Err(e) => tracing::warn!(error = %e, "cannot read the record of {}", s.label()),
            }
        }
    }
}

/// Write back into each Swarm service's record the values that failed (or none, after an
/// update that worked).
pub(crate) fn store_swarm_failures(
    held: &Held,
    slots: &[super::targets::Slot],
) -> Result<(), lock::Error> {
    for slot in slots {
        if let super::targets::Slot::Swarm(s) = slot {
            let failed = s.failed().cloned();
            held.update(&s.label(), |r| r.failed = failed)?;
        }
    }
    Ok(())
}

/// The journal of a pass: the owed actions go to each held target's record (before any sink is
/// written, as always) and to the configuration's state file.
pub(crate) struct PassJournal<'a> {
    pub(crate) state: &'a mut StateFile,
    pub(crate) held: &'a Held,
}

impl Journal for PassJournal<'_> {
    fn owed(&self) -> BTreeSet<String> {
        self.state.owed()
    }

    fn set_owed(&mut self, names: &BTreeSet<String>) -> Result<(), JournalError> {
        for n in self.held.targets() {
            self.held
                .update(n, |r| r.owed = names.contains(n))
                .map_err(|e| JournalError(e.to_string()))?;
        }
        self.state.set_owed(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn target(name: &str) -> BTreeMap<String, Resource> {
        BTreeMap::from([(
            name.to_string(),
            Resource::Container {
                engine: "E".into(),
                name: name.into(),
            },
        )])
    }

    /// A restart owed by one configuration is found by another that takes the container next
    /// (a cron flag run after `watch` with a config file), and its doing it clears the record.
    #[tokio::test]
    async fn an_owed_restart_and_the_ran_with_values_follow_the_container_not_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let a_state = dir.path().join("a.json");
        let b_state = dir.path().join("b.json");
        {
            let held = lock::acquire_all(&locks, &[], target("app"), Duration::ZERO, false)
                .await
                .unwrap();
            let mut a = StateFile::load(&a_state, false).unwrap();
            let mut j = PassJournal {
                state: &mut a,
                held: &held,
            };
            j.set_owed(&["app".to_string()].into()).unwrap();
            a.state.applied.insert(
                "app".into(),
                BTreeMap::from([("KEY".to_string(), "v1".to_string())]),
            );
            store_ran_with(&held, &a.state).unwrap();
        }
        let held = lock::acquire_all(&locks, &[], target("app"), Duration::ZERO, false)
            .await
            .unwrap();
        let mut b = StateFile::load(&b_state, false).unwrap();
        assert!(b.state.owed.is_empty());
        adopt(&held, &mut b.state).unwrap();
        assert_eq!(b.state.owed, BTreeSet::from(["app".to_string()]));
        assert_eq!(b.state.applied["app"]["KEY"], "v1");
        // B does it: A's next pass finds nothing owed, though A's own state file still says so.
        let mut j = PassJournal {
            state: &mut b,
            held: &held,
        };
        j.set_owed(&BTreeSet::new()).unwrap();
        drop(held);
        let held = lock::acquire_all(&locks, &[], target("app"), Duration::ZERO, false)
            .await
            .unwrap();
        let mut a = StateFile::load(&a_state, false).unwrap();
        assert!(a.state.owed.contains("app"));
        adopt(&held, &mut a.state).unwrap();
        assert!(a.state.owed.is_empty());
    }

    #[tokio::test]
    async fn a_second_run_on_the_same_resource_waits_and_a_dry_run_takes_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let env = Resource::EnvFile(dir.path().join(".env"));
        let held = lock::acquire_all(
            &locks,
            std::slice::from_ref(&env),
            BTreeMap::new(),
            Duration::ZERO,
            false,
        )
        .await
        .unwrap();
        let e = lock::acquire_all(
            &locks,
            std::slice::from_ref(&env),
            BTreeMap::new(),
            Duration::from_millis(150),
            false,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, lock::Error::Held { .. }), "{e}");
        lock::acquire_all(&locks, &[env], BTreeMap::new(), Duration::ZERO, true)
            .await
            .unwrap();
        drop(held);
    }
}
