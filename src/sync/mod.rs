//! One `sync` pass over every binding, wired: config -> source (Cloudflare) -> reconcile ->
//! sinks -> targets, under one lock and one state file.
//!
//! This is the glue that `sync`, `watch` and `setup` share; the decisions live in `reconcile`,
//! the containers in [`targets`], the tunnel rule in [`tunnel`], what is printed in [`report`].

pub(crate) mod discover;
mod locks;
pub mod report;
pub mod targets;
pub mod tunnel;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::{self, BindingSink, SyncConfig};
use crate::error::Error;
use crate::reconcile::{self, BindingIn, Journal, RestartMode, SinkInfo, TargetResult, Values};
use crate::sink::infisical::InfisicalSink;
use crate::sink::{AnySink, EnvFileSink};
use crate::source;
use crate::state::StateFile;

pub use report::{Output, PassError, Report, Stage, Status, print, render_text, report_error};

/// The physical sinks of a pass: each `.env` file and each Infisical folder once, whatever
/// number of bindings write to it.
struct Sinks {
    specs: Vec<BindingSink>,
    /// For each binding, the indexes of its sinks.
    of_binding: Vec<Vec<usize>>,
}

fn sinks_of(cfg: &SyncConfig) -> Sinks {
    let mut specs: Vec<BindingSink> = Vec::new();
    let mut of_binding = Vec::new();
    for b in &cfg.bindings {
        let mut mine = Vec::new();
        for s in &b.sinks {
            let s = match s {
                // A symlink and its target are one file.
                BindingSink::Env(p) => {
                    BindingSink::Env(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
                }
                other => other.clone(),
            };
            let i = match specs.iter().position(|x| *x == s) {
                Some(i) => i,
                None => {
                    specs.push(s);
                    specs.len() - 1
                }
            };
            if !mine.contains(&i) {
                mine.push(i);
            }
        }
        of_binding.push(mine);
    }
    Sinks { specs, of_binding }
}

/// For each binding, the compose project directory of its first container (label
/// `com.docker.compose.project.working_dir`), when Docker is used anyway and answers.
async fn project_dirs(cfg: &SyncConfig) -> BTreeMap<usize, PathBuf> {
    let mut out = BTreeMap::new();
    if cfg
        .bindings
        .iter()
        .all(|b| b.restart == RestartMode::None || !b.targets.iter().any(|t| t.is_docker()))
    {
        return out;
    }
    let Ok(engine) = crate::docker::Engine::connect(&cfg.docker_host).await else {
        return out;
    };
    for (i, b) in cfg.bindings.iter().enumerate() {
        let first = match b.targets.iter().find(|t| t.is_docker()) {
            Some(config::BindingTarget::Container(c)) => Some(c.clone()),
            Some(config::BindingTarget::ComposeService { project, service }) => engine
                .compose_service(project, service)
                .await
                .ok()
                .and_then(|l| l.into_iter().next()),
            Some(config::BindingTarget::SwarmService(_) | config::BindingTarget::Exec(_))
            | None => None,
        };
        if let Some(c) = first
            && let Some(d) = engine.project_dir(&c).await
        {
            out.insert(i, PathBuf::from(d));
        }
    }
    out
}

/// The sink objects, with the Infisical writes held for approval that the state remembers.
fn build_sinks(
    cfg: &SyncConfig,
    sinks: &Sinks,
    state: &crate::state::State,
    dirs: &BTreeMap<usize, PathBuf>,
    env_records: &BTreeMap<PathBuf, PathBuf>,
) -> Result<Vec<AnySink>, Error> {
    sinks
        .specs
        .iter()
        .enumerate()
        .map(|(i, spec)| match spec {
            BindingSink::Env(p) => Ok(AnySink::Env(EnvFileSink {
                journal: env_records
                    .get(&crate::lock::Resource::real_path(p))
                    .cloned(),
                path: cfg
                    .bindings
                    .iter()
                    .zip(&sinks.of_binding)
                    .find(|(_, s)| s.contains(&i))
                    .and_then(|(b, _)| {
                        b.sinks.iter().find_map(|s| match s {
                            BindingSink::Env(orig)
                                if std::fs::canonicalize(orig).unwrap_or_else(|_| orig.clone())
                                    == *p =>
                            {
                                Some(orig.clone())
                            }
                            _ => None,
                        })
                    })
                    .unwrap_or_else(|| p.clone()),
                mode: cfg.write_mode,
                create: cfg
                    .bindings
                    .iter()
                    .zip(&sinks.of_binding)
                    .any(|(b, s)| s.contains(&i) && b.create),
                project_dir: sinks
                    .of_binding
                    .iter()
                    .enumerate()
                    .find_map(|(b, s)| s.contains(&i).then(|| dirs.get(&b)).flatten())
                    .cloned(),
                dry_run: cfg.dry_run,
            })),
            BindingSink::Infisical(path) => {
                let keys: BTreeSet<&str> = cfg
                    .bindings
                    .iter()
                    .zip(&sinks.of_binding)
                    .filter(|(_, s)| s.contains(&i))
                    .map(|(b, _)| b.key.as_str())
                    .collect();
                let Some(mut settings) = cfg.infisical.clone() else {
                    return Err(Error::usage(
                        "an Infisical sink is configured without the [infisical] settings",
                    ));
                };
                settings.secret_path = crate::infisical::normalize_path(path);
                Ok(AnySink::Infisical(
                    keys.into_iter()
                        .map(|k| {
                            let sink = InfisicalSink::new(settings.clone(), k);
                            let location = settings.location();
                            let pending = state
                                .infisical_pending
                                .iter()
                                .find(|p| p.key == k && p.location == location);
                            sink.with_pending(pending)
                        })
                        .collect(),
                ))
            }
        })
        .collect()
}

/// One full pass under the lock. Errors before any binding could be looked at come back as
/// `Err`.
pub async fn run_pass(cfg: &SyncConfig) -> Result<Report, Error> {
    run_pass_staged(cfg).await.map_err(|e| e.error)
}

/// [`run_pass`], telling which step an early error came from.
pub async fn run_pass_staged(cfg: &SyncConfig) -> Result<Report, PassError> {
    let at = |stage: Stage| move |error: Error| PassError { stage, error };
    // With --discover, the labels' bindings join the configuration's, judged anew each pass.
    let discovered;
    let (cfg, discover_warnings, discover_failed) = if cfg.discover.is_some() {
        let (c, w, failed) = discover::with_discovered(cfg).await;
        for w in &w {
            tracing::warn!("{w}");
        }
        discovered = c;
        (&discovered, w, failed)
    } else {
        (cfg, vec![], None)
    };
    // Labelled services that could not be looked at are not in sync: the pass fails (after
    // the configured bindings, which do not need the listing).
    let discover_error = |message: String| {
        Error::failed(
            message,
            Some("discovery lists the labelled containers through the engine: check DOCKER_HOST and that the engine answers (docker info)".into()),
        )
    };
    if let (true, Some(m)) = (cfg.bindings.is_empty(), &discover_failed) {
        return Err(PassError {
            stage: Stage::Target,
            error: discover_error(m.clone()),
        });
    }
    if cfg.bindings.is_empty() {
        tracing::info!("--discover: no labelled container or service to keep in sync");
        return Ok(Report::nothing(cfg.dry_run, discover_warnings));
    }
    let lock_error = |e: crate::lock::Error| Error::failed(e.to_string(), None);
    // The configuration's own lock first, then one per resource, sorted; everything the pass
    // reads after this, it reads under them.
    let _lock = if cfg.dry_run {
        None
    } else {
        if cfg.lock_file.starts_with(&cfg.lock_dir) {
            crate::lock::ensure_dir(&cfg.lock_dir)
                .map_err(lock_error)
                .map_err(at(Stage::Lock))?;
        }
        Some(
            crate::lock::acquire(&cfg.lock_file, cfg.lock_timeout)
                .await
                .map_err(lock_error)
                .map_err(at(Stage::Lock))?,
        )
    };
    let (resources, target_resources) = locks::resources(cfg).await;
    let held = crate::lock::acquire_all(
        &cfg.lock_dir,
        &resources,
        target_resources,
        cfg.lock_timeout,
        cfg.dry_run,
    )
    .await
    .map_err(lock_error)
    .map_err(at(Stage::Lock))?;
    // Each `.env`'s record, beside its lock: where its in-place writes are journalled.
    let env_records = locks::env_records(&held, &resources);
    // Before anything else: finish or undo an in-place write an earlier run -- of this
    // configuration or any other that writes the same `.env` -- was killed in.
    let journal_done = if cfg.dry_run {
        if crate::sink::env::pending_in_place(&env_records, Some(&cfg.state_file)) {
            tracing::warn!(
                "an in-place .env write of an earlier run was cut short; the next real run finishes or undoes it first"
            );
        }
        vec![]
    } else {
        crate::sink::env::recover_in_place(&env_records, Some(&cfg.state_file))
            .map_err(|e| {
                Error::failed(
                    e.to_string(),
                    Some("put the file right by hand, then run sync again".into()),
                )
            })
            .map_err(at(Stage::Sink))?
    };
    if !cfg.dry_run {
        // The temporary files of a state write an earlier, killed run left behind.
        StateFile::remove_leftovers(&cfg.state_file);
    }
    let mut state = StateFile::load(&cfg.state_file, cfg.dry_run)
        .map_err(|e| Error::failed(e.to_string(), Some("fix the file's permissions, or point --state-file / AUDSYNC_STATE_FILE elsewhere".into())))
        .map_err(at(Stage::Lock))?;
    // What belongs to a container (a restart owed, the values it ran with) is its record's.
    locks::adopt(&held, &mut state.state)
        .map_err(lock_error)
        .map_err(at(Stage::Lock))?;
    let before = state.state.clone();

    // 1. The desired value of every binding (one client: one request count for the pass).
    let client = source::client(&cfg.bindings[0].source);
    let sources: Vec<&config::SourceConfig> = cfg.bindings.iter().map(|b| &b.source).collect();
    let found = source::fetch_all(&client, &sources, &mut state.state).await;
    if (state.state.apps != before.apps
        || state.state.served != before.served
        || state.state.app != before.app
        || state.state.app_count != before.app_count
        || state.state.edge_issued != before.edge_issued
        || state.state.page_size != before.page_size)
        && let Err(e) = state.save()
    {
        tracing::warn!(error = %e, "cannot save the application cache");
    }
    if cfg.bindings.len() == 1
        && let Err(e) = &found[0]
    {
        // A single binding whose source failed: nothing else to do, as always.
        let e = Error::failed(e.to_string(), e.hint());
        return Err(PassError {
            stage: Stage::Source,
            error: e,
        });
    }

    // 2. What the sinks hold.
    let phys = sinks_of(cfg);
    let dirs = project_dirs(cfg).await;
    let mut sinks =
        build_sinks(cfg, &phys, &state.state, &dirs, &env_records).map_err(at(Stage::Sink))?;
    if !cfg.dry_run {
        for s in &sinks {
            if let AnySink::Env(e) = s {
                e.remove_leftovers();
            }
        }
    }
    let mut sink_obs = Vec::with_capacity(sinks.len());
    for (i, s) in sinks.iter_mut().enumerate() {
        let desired: Values = cfg
            .bindings
            .iter()
            .zip(&phys.of_binding)
            .zip(&found)
            .filter(|((_, mine), _)| mine.contains(&i))
            .filter_map(|((b, _), f)| Some((b.key.clone(), f.as_ref().ok()?.aud.clone())))
            .collect();
        let info: SinkInfo = reconcile::Sink::info(s);
        let obs = if desired.is_empty() {
            Ok(Default::default())
        } else {
            reconcile::Sink::observe(s, &desired).await
        };
        if let Err(e) = &obs
            && cfg.bindings.len() == 1
        {
            return Err(PassError {
                stage: Stage::Sink,
                error: Error::failed(e.message.clone(), e.hint.clone()),
            });
        }
        sink_obs.push((info, desired, obs));
    }

    // 3. The containers, each once.
    let mut owed = state.owed();
    let changing = sink_obs
        .iter()
        .any(|(_, _, o)| o.as_ref().is_ok_and(|o| o.values().any(|k| k.needs_write)));
    let elsewhere = cfg.bindings.iter().zip(&found).any(|(b, f)| {
        f.as_ref().is_ok_and(|f| {
            state
                .state
                .applied
                .values()
                .any(|m| m.get(&b.key).is_some_and(|v| *v != f.aud))
        })
    });
    let leaks = leak_watch(cfg);
    let watch: Vec<String> = leaks
        .values()
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Each container's journal of a recreate or rollout is kept beside its lock.
    let records: BTreeMap<String, PathBuf> = held
        .targets()
        .filter_map(|n| Some((n.clone(), held.record_file(n)?)))
        .collect();
    let mut resolved = targets::resolve(
        cfg,
        changing || !owed.is_empty() || elsewhere,
        &state.state.applied,
        &watch,
        &state.state.container_names,
        &records,
    )
    .await;
    if !cfg.dry_run && !resolved.names.is_empty() {
        let mut names = state.state.container_names.clone();
        names.extend(std::mem::take(&mut resolved.names));
        if names != state.state.container_names {
            state.state.container_names = names;
            if let Err(e) = state.save() {
                tracing::warn!(error = %e, "cannot remember the names of containers given by id");
            }
        }
    }

    // 4. Plan and apply.
    let inputs: Vec<BindingIn> = cfg
        .bindings
        .iter()
        .enumerate()
        .map(|(i, b)| BindingIn {
            id: b.id.clone(),
            key: b.key.clone(),
            desired: found[i].as_ref().ok().map(|f| f.aud.clone()),
            sinks: phys.of_binding[i].clone(),
            targets: resolved.of_binding[i].clone(),
            restart: b.restart,
        })
        .collect();
    // A recovery that finished an apply forward did the action that was owed.
    owed.retain(|n| !resolved.finished.contains(n));
    let mut inputs = inputs;
    targets::hold_back(&resolved.refused, &mut inputs, &mut sink_obs);
    let mut plan = reconcile::plan(
        inputs,
        sink_obs,
        std::mem::take(&mut resolved.observed),
        &owed,
    );
    targets::refuse(&resolved.refused, &mut plan);
    targets::brief_commands(&mut plan, &mut resolved.slots, &state.state.applied, &owed);
    locks::swarm_failures_in(&held, &mut resolved.slots);
    let outcome = reconcile::apply(
        &plan,
        &mut sinks,
        &mut resolved.slots,
        &mut locks::PassJournal {
            state: &mut state,
            held: &held,
        },
        cfg.dry_run,
    )
    .await;
    let compose_warnings = compose_warnings(&resolved.slots);
    record_applied(cfg, &mut state, &plan, &outcome);
    if !cfg.dry_run
        && let Err(e) = locks::store_ran_with(&held, &state.state)
    {
        tracing::warn!(error = %e, "cannot record which value the containers run with");
    }
    if !cfg.dry_run
        && let Err(e) = locks::store_swarm_failures(&held, &resolved.slots)
    {
        tracing::warn!(error = %e, "cannot record which values failed on the Swarm services");
    }
    remember_pending(&sinks, &mut state);

    // 5. Tunnel rules, then the report.
    let mut tunnels = Vec::new();
    for (i, b) in cfg.bindings.iter().enumerate() {
        let t = match &found[i] {
            Ok(f) => {
                let previous = plan.bindings[i].input.sinks.first().and_then(|&s| {
                    plan.sinks[s]
                        .observation
                        .as_ref()
                        .ok()
                        .and_then(|o| o.get(&b.key))
                        .and_then(|k| k.current.clone())
                });
                tunnel::step(
                    b,
                    &client,
                    f,
                    previous.as_deref(),
                    cfg.team.as_ref(),
                    cfg.dry_run,
                )
                .await
            }
            Err(_) => None,
        };
        tunnels.push(t);
    }
    let leaked = leaked_into(cfg, &plan, &leaks);
    for w in &leaked {
        tracing::warn!("{w}");
    }
    let source_warnings: Vec<String> = found
        .iter()
        .filter_map(|f| f.as_ref().ok())
        .flat_map(|f| f.warnings.clone())
        .collect();
    let mut r = report::build(cfg, found, &plan, outcome, tunnels, client.requests());
    r.warnings.extend(discover_warnings);
    r.warnings.extend(source_warnings);
    r.warnings.extend(leaked);
    r.warnings.extend(journal_done);
    r.warnings.extend(compose_warnings);
    r.add_recovered(std::mem::take(&mut resolved.recovered));
    if let Some(m) = discover_failed {
        r.fail_with(discover_error(m));
    }
    Ok(r)
}

/// Compose containers replaced while compose could not be asked for the new config hash:
/// they keep the old one, so the next `docker compose up -d` recreates them once more.
fn compose_warnings(slots: &[targets::Slot]) -> Vec<String> {
    slots
        .iter()
        .filter_map(|s| match s {
            targets::Slot::Live(c) => match c.hash_outcome() {
                crate::docker::compose::HashOutcome::Unasked(why) => {
                    Some(crate::docker::compose::unasked_warning(c.name(), why))
                }
                _ => None,
            },
            _ => None,
        })
        .inspect(|w| tracing::warn!("{w}"))
        .collect()
}

/// audsync's own settings and credentials found in each binding's `.env` sinks (names only).
fn leak_watch(cfg: &SyncConfig) -> BTreeMap<usize, Vec<String>> {
    let own = config::own_variables();
    cfg.bindings
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let names: BTreeSet<String> = b
                .sinks
                .iter()
                .filter_map(|s| match s {
                    BindingSink::Env(p) => crate::fsx::read_text(p).ok().flatten(),
                    BindingSink::Infisical(_) => None,
                })
                .flat_map(|text| crate::sink::env::key_lines(&text).into_keys())
                .filter(|n| own.contains(n))
                .collect();
            (i, names.into_iter().collect())
        })
        .collect()
}

/// Warnings for containers whose environment carries a credential or setting of audsync's that
/// sits in a `.env` sink of a binding that targets them: the file is handed to the app.
fn leaked_into(
    cfg: &SyncConfig,
    plan: &reconcile::Plan,
    leaks: &BTreeMap<usize, Vec<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for t in &plan.targets {
        let names: BTreeSet<&String> = t
            .bindings
            .iter()
            .flat_map(|b| leaks.get(b).into_iter().flatten())
            .filter(|n| t.leaked.contains(n))
            .collect();
        for n in names {
            let file = cfg
                .bindings
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    t.bindings.contains(i) && leaks.get(i).is_some_and(|l| l.contains(n))
                })
                .flat_map(|(_, b)| b.sinks.iter())
                .find_map(|s| match s {
                    BindingSink::Env(p) => Some(p.display().to_string()),
                    _ => None,
                })
                .unwrap_or_default();
            out.push(format!(
                "container {} carries {n} from {file}: audsync's own setting has leaked into the app; move it out of that .env (into audsync.toml, a *_FILE or the unit's environment) and recreate the container",
                t.name
            ));
        }
    }
    out
}

/// Remember which values each container of this pass now runs with. Containers whose action
/// failed or was skipped keep their old record; containers not in this pass are forgotten.
fn record_applied(
    cfg: &SyncConfig,
    state: &mut StateFile,
    plan: &reconcile::Plan,
    outcome: &reconcile::Outcome,
) {
    if cfg.dry_run || cfg.bindings.iter().all(|b| b.restart == RestartMode::None) {
        return;
    }
    let mut applied: BTreeMap<String, Values> = BTreeMap::new();
    for (t, r) in plan.targets.iter().zip(&outcome.targets) {
        let ok = matches!(r.result, TargetResult::Done | TargetResult::None);
        let old = state
            .state
            .applied
            .get(&t.name)
            .cloned()
            .unwrap_or_default();
        let mut now = old.clone();
        if ok {
            now.extend(t.changes.clone());
        }
        if ok || !old.is_empty() {
            applied.insert(t.name.clone(), now);
        }
    }
    if applied != state.state.applied {
        state.state.applied = applied;
        if let Err(e) = state.save() {
            tracing::warn!(error = %e, "cannot record which value the containers run with");
        }
    }
}

/// Keep the Infisical writes held for approval (or their absence) in the state file, so the
/// next pass does not submit the same value again.
fn remember_pending(sinks: &[AnySink], state: &mut StateFile) {
    let pending: Vec<_> = sinks.iter().flat_map(AnySink::pending).collect();
    if pending != state.state.infisical_pending {
        state.state.infisical_pending = pending;
        if let Err(e) = state.save() {
            tracing::warn!(error = %e, "cannot remember the Infisical write held for approval; the next run submits it again");
        }
    }
}

/// `audsync sync`: one pass of a built configuration (or the error building it), its report on
/// stdout, and the notification the pass is worth; returns the exit code. The failure streak
/// lives in the state file, so a cron job that fails every five minutes says so once, and once
/// more when it recovers.
pub async fn command(
    cfg: Result<SyncConfig, Error>,
    dry_run: bool,
    output: Output,
    quiet: bool,
) -> u8 {
    let (report, notify) = match cfg {
        Ok(cfg) => match finishing_on_stop(run_pass_staged(&cfg)).await {
            Ok(r) => (r, Some((cfg.notify, cfg.state_file))),
            Err(e) => {
                let mut r = Report::from_error(&e.error, dry_run);
                r.stage = Some(e.stage);
                (r, Some((cfg.notify, cfg.state_file)))
            }
        },
        Err(e) => (Report::from_error(&e, dry_run), None),
    };
    // `-q` keeps cron mail quiet: nothing on success (a notification tells of a change), the
    // report when the pass failed or waits. JSON was asked for by a tool: always printed.
    if !(quiet && output == Output::Text && report.exit_code == crate::exit::OK) {
        print(&report, output);
    }
    if let Some(e) = &report.error {
        report::report_error(e, report.hint.as_deref(), output);
    }
    if let Some((n, state_file)) = notify.filter(|(n, _)| n.enabled() && !dry_run) {
        notify_once(&n, &state_file, &report).await;
    }
    report.exit_code
}

/// Drive `pass` to its end through SIGTERM and a first SIGINT, as `watch` does: a recreate or
/// rollout is never abandoned between two steps by a stop request (a service manager's stop,
/// a deploy tool's timeout). A second SIGINT ends the process at once; the journal beside the
/// container's lock lets the next run finish what it was doing.
async fn finishing_on_stop<T>(pass: impl std::future::Future<Output = T>) -> T {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install the signal handlers: a stop request ends the pass at once");
        return pass.await;
    };
    let mut pass = std::pin::pin!(pass);
    let mut interrupted = false;
    loop {
        tokio::select! {
            r = &mut pass => return r,
            _ = term.recv() => {
                tracing::warn!("SIGTERM: finishing the pass in flight, then exiting");
            }
            _ = int.recv() => {
                if interrupted {
                    tracing::warn!("second SIGINT: stopping now; the next run finishes what was left");
                    std::process::exit(130);
                }
                interrupted = true;
                tracing::warn!("SIGINT: finishing the pass in flight (a second SIGINT stops at once)");
            }
        }
    }
}

/// The notification a one-shot pass is worth, given the streak remembered in the state file.
async fn notify_once(n: &crate::notify::Settings, state_file: &std::path::Path, report: &Report) {
    use crate::notify;
    let pass = report.notice();
    let told = match crate::state::StateFile::load(state_file, true) {
        Ok(f) => {
            let mut streak = notify::Streak::restore(f.state.failure_streak);
            let told = streak.next(&pass, None);
            let now = streak.save();
            if now != f.state.failure_streak
                && let Err(e) =
                    crate::state::StateFile::update(state_file, |s| s.failure_streak = now)
            {
                tracing::warn!(error = %e, "cannot remember the failure streak");
            }
            told
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the failure streak; notifying this run anyway");
            (notify::once(&pass), notify::Context::default())
        }
    };
    if let Some(event) = n.pick(&told.0) {
        let m = notify::message(event, &pass, &n.host, &told.1);
        // Delivered or not, the exit code is the pass's.
        let _ = notify::send(n, &m).await;
    }
}
