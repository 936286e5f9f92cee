//! Finishing or undoing a recreate or rollout that was cut short.
//!
//! Both go through states that must not outlive the process: the old container stopped, no
//! container under the name, a twin answering on the network alias, a new container that
//! never proved good. Each records, before its first change, what it is about to do (the
//! journal beside the container's lock: [`super::journal`]), and keeps that record up to date
//! at every step. When the process dies half-way (SIGKILL, OOM, reboot, a second SIGINT) the
//! next run that takes the container's lock finds the record and, before it looks at the
//! container:
//!
//! 1. **looks** at what exists: the old and new containers by the ids recorded (state,
//!    health), and which container holds the name;
//! 2. **decides** ([`decide`], pure): forward when the journal shows the new container became
//!    good (the new value stays: the old one is retired), back when it never did (the new
//!    one is removed, the old one gets its name back and runs again when it was running);
//! 3. **acts**, then **checks** that the name is held by the container it meant, running when
//!    it should: a container left `created` or `exited` is started again or reported, never
//!    counted as done. The record is cleared only then; otherwise the pass fails and the
//!    next run tries again.
//!
//! Only the ids the journal recorded authorise a removal: the new container audsync created
//! and the user's original it moved aside. A container that took the name meanwhile (or that
//! only carries a lookalike name) is never started, renamed or removed: the recovery stops and
//! says so. It never removes a volume (`v=false`). The names, the health gate and the way back
//! are [`super::ops`]'s; this module never imports [`super::recreate`].

use bollard::Docker;
use bollard::models::ContainerInspectResponse;

use super::journal::{ApplyKind, ApplyStep, Applying, Journal};
use super::ops::{self, rename, wait_good};
use super::{Container, Error};
use crate::reconcile::ActionError;

// `docker/mod.rs` names these through this module.
pub(super) use super::ops::{base_name, for_stop, stop_progress};

/// One container as found.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Seen {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) running: bool,
    pub(super) paused: bool,
}

/// What a recovery found: the journal's two containers (by id), and the name's holder.
#[derive(Debug, Clone, Default)]
pub(super) struct Observed {
    pub(super) old: Option<Seen>,
    pub(super) new: Option<Seen>,
    pub(super) owner: Option<Seen>,
}

/// Which way a recovery goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Way {
    /// The new container had proved good: the swap is completed, the new value stays.
    Forward,
    /// The new container never proved good: the old one is put back.
    Back,
    /// The old container is gone (removed by someone else): the new one is the only copy.
    OnlyNew,
}

/// One step of a recovery, done in order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Act {
    RemoveNew,
    OldAside,
    NewToName,
    OldToName,
    StartNew,
    CheckNewGood,
    StartOld,
    RetireOld,
}

impl Container {
    /// Finish or undo any recreate or rollout of this container that was cut short; returns
    /// what was done (with `dry_run`: what would be). Run before observing it.
    pub(crate) async fn recover(&mut self, dry_run: bool) -> Result<Vec<String>, ActionError> {
        let (done, way) = recover(
            &self.engine.docker,
            &self.name,
            &self.opts,
            &self.journal(),
            dry_run,
        )
        .await?;
        self.finished_forward = way == Some(Way::Forward);
        Ok(done)
    }

    /// The last [`Container::recover`] finished an apply forward: the container runs with
    /// the values that apply was making, so the action it was owed is done.
    pub(crate) fn finished_forward(&self) -> bool {
        self.finished_forward
    }
}

fn seen(i: &ContainerInspectResponse) -> Seen {
    let state = i.state.as_ref();
    Seen {
        id: i.id.clone().unwrap_or_default(),
        name: ops::name_of(i, ""),
        running: state.and_then(|s| s.running) == Some(true),
        paused: state.and_then(|s| s.paused) == Some(true),
    }
}

/// Inspect `what`: `None` when the engine knows no such container.
async fn look(docker: &Docker, what: &str) -> Result<Option<Seen>, Error> {
    match super::inspect::container(docker, what).await {
        Ok(i) => Ok(Some(seen(&i))),
        Err(e) => match Error::engine(format!("cannot inspect {what}"), e) {
            Error::NotFound { .. } => Ok(None),
            e => Err(e),
        },
    }
}

async fn observe(docker: &Docker, j: &Applying) -> Result<Observed, Error> {
    let old = look(docker, &j.old_id).await?;
    let new = match &j.new_id {
        Some(id) => look(docker, id).await?,
        None => None,
    };
    let owner = look(docker, &j.name).await?;
    Ok(Observed { old, new, owner })
}

/// What to do about journal `j` given what was found: the way and the steps, or why nothing
/// may be done. Pure: the tests below go through every case.
pub(super) fn decide(j: &Applying, o: &Observed) -> Result<(Way, Vec<Act>), Error> {
    let is_new = |s: &Seen| j.new_id.as_deref() == Some(s.id.as_str());
    let is_old = |s: &Seen| s.id == j.old_id;
    if let Some(owner) = &o.owner
        && !is_new(owner)
        && !is_old(owner)
    {
        return Err(Error::NameTaken {
            name: j.name.clone(),
            id: ops::short_id(&owner.id).to_string(),
        });
    }
    let owner_is_old = o.owner.as_ref().is_some_and(is_old);
    let owner_is_new = o.owner.as_ref().is_some_and(is_new);
    // A stopped container's recreate is complete once the new one has the name (it is left
    // created, as the old one was not running).
    let good = j.healthy || (!j.was_running && j.step == ApplyStep::Swapped);
    let mut acts = Vec::new();
    match (&o.old, &o.new) {
        (_, Some(new)) if good => {
            if owner_is_old {
                acts.push(Act::OldAside);
            }
            if !owner_is_new {
                acts.push(Act::NewToName);
            }
            if j.was_running && !new.running && !new.paused {
                acts.extend([Act::StartNew, Act::CheckNewGood]);
            }
            if o.old.is_some() {
                acts.push(Act::RetireOld);
            }
            Ok((Way::Forward, acts))
        }
        (Some(old), new) => {
            if new.is_some() {
                acts.push(Act::RemoveNew);
            }
            if !owner_is_old {
                acts.push(Act::OldToName);
            }
            if j.was_running && !old.running && !old.paused {
                acts.push(Act::StartOld);
            }
            Ok((Way::Back, acts))
        }
        (None, Some(new)) => {
            if !owner_is_new {
                acts.push(Act::NewToName);
            }
            if j.was_running && !new.running && !new.paused {
                acts.push(Act::StartNew);
            }
            Ok((Way::OnlyNew, acts))
        }
        (None, None) => Err(Error::BothGone {
            old: ops::short_id(&j.old_id).to_string(),
        }),
    }
}

async fn recover(
    docker: &Docker,
    target: &str,
    opts: &super::RecreateOptions,
    journal: &Journal,
    dry_run: bool,
) -> Result<(Vec<String>, Option<Way>), ActionError> {
    if !journal.enabled() {
        return Ok((vec![], None));
    }
    let name = match super::inspect::container(docker, target).await {
        Ok(i) => base_name(&ops::name_of(&i, target)),
        Err(_) => base_name(target),
    };
    let Some(mut j) = journal.pending(&name) else {
        return Ok((vec![], None));
    };
    let what = match j.kind {
        ApplyKind::Recreate => "recreate",
        ApplyKind::Rollout => "rollout",
        // A service's record, never a container's (`Journal::pending` leaves it out).
        ApplyKind::SwarmUpdate => return Ok((vec![], None)),
    };
    let fail = |why: Error| ActionError {
        logs: Vec::new(),
        rolled_back: false,
        message: format!("{name}: cannot recover from a {what} that was cut short: {why}"),
        hint: Some(format!(
            "restore it by hand (see `docker ps -a --filter name={name}`), then run sync again; the journal of the {what} is kept beside the container's lock until a run finishes it"
        )),
    };
    let mut o = observe(docker, &j).await.map_err(fail)?;
    let mut notes = Vec::new();
    if j.new_id.is_none()
        && !j.new_name.is_empty()
        && look(docker, &j.new_name).await.ok().flatten().is_some()
    {
        // Created as the process died, before its id was recorded: nothing proves it ours.
        notes.push(format!(
            "a container named {} exists that the journal has no id for: left alone (remove it by hand if it is not yours)",
            j.new_name
        ));
    }
    if j.step == ApplyStep::Legacy {
        notes.extend(settle_legacy(docker, &mut j, &o, opts).await);
    }
    let (way, acts) = decide(&j, &o).map_err(fail)?;
    let step = serde_json::to_value(j.step)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let headline = match way {
        Way::Forward => format!(
            "a {what} cut short after the new container became healthy (step {step}): finished forward, the new value stays"
        ),
        Way::Back => format!(
            "a {what} cut short before the new container proved good (step {step}): rolled back to the old container"
        ),
        Way::OnlyNew => format!(
            "a {what} cut short (step {step}) whose old container was removed by someone else: the new container keeps the name"
        ),
    };
    if dry_run {
        return Ok((
            vec![format!(
                "{name}: {}; the next run does it",
                headline
                    .replace("finished forward", "to finish forward")
                    .replace("rolled back", "to roll back")
                    .replace("keeps the name", "is to keep the name")
            )],
            None,
        ));
    }
    for act in acts {
        run(docker, &j, &mut o, act, opts).await.map_err(fail)?;
    }
    verify(docker, &j, way).await.map_err(fail)?;
    journal.clear(&j.old_id);
    tracing::warn!(container = %name, "{headline}");
    let mut out = vec![format!("{name}: {headline}")];
    out.extend(notes.into_iter().map(|n| format!("{name}: {n}")));
    Ok((out, Some(way)))
}

/// An older version's state-file entry knows neither whether the old container was running
/// nor whether the new one proved good: the temporary names say the first; the second is
/// judged now (the new container holds the name, runs, and passes the health gate).
async fn settle_legacy(
    docker: &Docker,
    j: &mut Applying,
    o: &Observed,
    opts: &super::RecreateOptions,
) -> Option<String> {
    if let Some(t) = [&o.old, &o.new]
        .into_iter()
        .flatten()
        .find_map(|s| ops::parse_temp(&s.name))
    {
        j.was_running = t.was_running;
    }
    let new_holds = o
        .owner
        .as_ref()
        .zip(j.new_id.as_deref())
        .is_some_and(|(w, n)| w.id == n);
    let (healthy, why) = match (&o.new, new_holds) {
        (Some(_), true) if !j.was_running => (true, None),
        (Some(n), true) if n.running => match wait_good(docker, &n.id, opts).await {
            Ok(()) => (
                true,
                Some("the new container under the name is good".to_string()),
            ),
            Err(e) => (
                false,
                Some(format!("the new container under the name: {e}")),
            ),
        },
        (Some(_), true) => (
            false,
            Some("the new container under the name was not running".to_string()),
        ),
        _ => (false, None),
    };
    j.healthy = healthy;
    why.map(|w| format!("(recorded by an older version in the state file) {w}"))
}

async fn run(
    docker: &Docker,
    j: &Applying,
    o: &mut Observed,
    act: Act,
    opts: &super::RecreateOptions,
) -> Result<(), Error> {
    let new_id = j.new_id.clone().unwrap_or_default();
    let name = j.name.as_str();
    match act {
        Act::RemoveNew => ops::remove(docker, &new_id).await,
        Act::OldAside => {
            let aside = if j.aside.is_empty() {
                ops::temp_names(name, j.was_running).1
            } else {
                j.aside.clone()
            };
            rename(docker, &j.old_id, &aside).await.map_err(|e| {
                Error::engine(format!("cannot move the old container aside as {aside}"), e)
            })
        }
        Act::NewToName => rename(docker, &new_id, name).await.map_err(|e| {
            Error::engine(format!("cannot give the new container the name {name}"), e)
        }),
        Act::OldToName => rename(docker, &j.old_id, name).await.map_err(|e| {
            Error::engine(
                format!("cannot give the old container its name {name} back"),
                e,
            )
        }),
        Act::StartNew => docker
            .start_container(&new_id, None)
            .await
            .map_err(|e| Error::engine(format!("cannot start the new container {name}"), e)),
        Act::CheckNewGood => wait_good(docker, &new_id, opts).await,
        Act::StartOld => docker
            .start_container(&j.old_id, None)
            .await
            .map_err(|e| Error::engine(format!("cannot start the old container {name} again"), e)),
        Act::RetireOld => {
            let info = super::inspect::container(docker, &j.old_id)
                .await
                .map_err(|e| Error::engine("cannot inspect the old container", e))?;
            let stop_t = super::stop_grace(docker, &info).await;
            let _ = super::rollout::retire(docker, name, &j.old_id, stop_t).await;
            o.old = look(docker, &j.old_id).await?;
            match &o.old {
                None => Ok(()),
                Some(_) => Err(Error::Unverified(format!(
                    "the old container ({}) could not be removed",
                    ops::short_id(&j.old_id)
                ))),
            }
        }
    }
}

/// Check that the recovery left what it meant to: the name held by the right container,
/// running when the service was running.
async fn verify(docker: &Docker, j: &Applying, way: Way) -> Result<(), Error> {
    let want = match way {
        Way::Forward | Way::OnlyNew => j.new_id.clone().unwrap_or_default(),
        Way::Back => j.old_id.clone(),
    };
    let which = if way == Way::Back { "old" } else { "new" };
    let Some(owner) = look(docker, &j.name).await? else {
        return Err(Error::Unverified(format!(
            "no container holds the name {}",
            j.name
        )));
    };
    if owner.id != want {
        return Err(Error::Unverified(format!(
            "the name {} is held by {}, not by the {which} container",
            j.name,
            ops::short_id(&owner.id)
        )));
    }
    if j.was_running && !owner.running && !owner.paused {
        return Err(Error::Unverified(format!(
            "the {which} container holds the name {} but is not running (it was before)",
            j.name
        )));
    }
    if way == Way::Back
        && let Some(id) = &j.new_id
        && look(docker, id).await?.is_some()
    {
        return Err(Error::Unverified(format!(
            "the new container ({}) is still there",
            ops::short_id(id)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(kind: ApplyKind, step: ApplyStep, healthy: bool) -> Applying {
        Applying {
            kind,
            name: "app".into(),
            old_id: "old".into(),
            spec_hash: String::new(),
            was_running: true,
            new_name: "app-audsync-new-x".into(),
            aside: "app-audsync-old-x".into(),
            new_id: (step != ApplyStep::Begun).then(|| "new".to_string()),
            step,
            healthy,
            version: None,
            values: Default::default(),
        }
    }

    fn c(id: &str, running: bool) -> Option<Seen> {
        Some(Seen {
            id: id.into(),
            name: id.into(),
            running,
            paused: false,
        })
    }

    #[test]
    fn a_rollout_cut_short_after_healthy_is_finished_forward() {
        let j = journal(ApplyKind::Rollout, ApplyStep::Healthy, true);
        let o = Observed {
            old: c("old", true),
            new: c("new", true),
            owner: c("old", true),
        };
        assert_eq!(
            decide(&j, &o).unwrap(),
            (
                Way::Forward,
                vec![Act::OldAside, Act::NewToName, Act::RetireOld]
            )
        );
        // Already swapped: only the old one is retired.
        let o = Observed {
            owner: c("new", true),
            ..o
        };
        assert_eq!(
            decide(&j, &o).unwrap(),
            (Way::Forward, vec![Act::RetireOld])
        );
    }

    #[test]
    fn a_rollout_cut_short_before_healthy_is_rolled_back() {
        let j = journal(ApplyKind::Rollout, ApplyStep::Started, false);
        let o = Observed {
            old: c("old", true),
            new: c("new", true),
            owner: c("old", true),
        };
        assert_eq!(decide(&j, &o).unwrap(), (Way::Back, vec![Act::RemoveNew]));
        // Begun, no new id: nothing of the twin is touched, the old one keeps serving.
        let j = journal(ApplyKind::Rollout, ApplyStep::Begun, false);
        let o = Observed { new: None, ..o };
        assert_eq!(decide(&j, &o).unwrap(), (Way::Back, vec![]));
    }

    #[test]
    fn a_recreate_killed_with_no_container_under_the_name_gets_the_old_one_back_running() {
        let j = journal(ApplyKind::Recreate, ApplyStep::OldAside, false);
        let o = Observed {
            old: c("old", false),
            new: c("new", false),
            owner: None,
        };
        assert_eq!(
            decide(&j, &o).unwrap(),
            (
                Way::Back,
                vec![Act::RemoveNew, Act::OldToName, Act::StartOld]
            )
        );
    }

    #[test]
    fn an_old_container_left_stopped_by_its_own_failed_rollback_is_started_not_counted_done() {
        // ROLLBACK INCOMPLETE: the old container has its name, but did not start (port taken).
        let j = journal(ApplyKind::Recreate, ApplyStep::Started, false);
        let o = Observed {
            old: c("old", false),
            new: None,
            owner: c("old", false),
        };
        assert_eq!(decide(&j, &o).unwrap(), (Way::Back, vec![Act::StartOld]));
    }

    #[test]
    fn a_container_that_took_the_name_is_never_touched() {
        for (healthy, step) in [(false, ApplyStep::OldAside), (true, ApplyStep::Swapped)] {
            let j = journal(ApplyKind::Recreate, step, healthy);
            let o = Observed {
                old: c("old", false),
                new: c("new", true),
                owner: c("intruder", false),
            };
            let e = decide(&j, &o).unwrap_err();
            assert!(matches!(e, Error::NameTaken { .. }), "{e}");
        }
    }

    #[test]
    fn a_healthy_new_container_left_exited_is_started_and_checked() {
        let j = journal(ApplyKind::Recreate, ApplyStep::Healthy, true);
        let o = Observed {
            old: c("old", false),
            new: c("new", false),
            owner: c("new", false),
        };
        assert_eq!(
            decide(&j, &o).unwrap(),
            (
                Way::Forward,
                vec![Act::StartNew, Act::CheckNewGood, Act::RetireOld]
            )
        );
    }

    #[test]
    fn the_only_copy_left_is_kept_and_nothing_left_is_an_error() {
        let j = journal(ApplyKind::Recreate, ApplyStep::OldAside, false);
        let o = Observed {
            old: None,
            new: c("new", false),
            owner: None,
        };
        assert_eq!(
            decide(&j, &o).unwrap(),
            (Way::OnlyNew, vec![Act::NewToName, Act::StartNew])
        );
        let o = Observed::default();
        assert!(matches!(decide(&j, &o), Err(Error::BothGone { .. })));
    }

    #[test]
    fn a_stopped_containers_recreate_is_done_once_swapped() {
        let mut j = journal(ApplyKind::Recreate, ApplyStep::Swapped, false);
        j.was_running = false;
        let o = Observed {
            old: c("old", false),
            new: c("new", false),
            owner: c("new", false),
        };
        assert_eq!(
            decide(&j, &o).unwrap(),
            (Way::Forward, vec![Act::RetireOld])
        );
    }
}
