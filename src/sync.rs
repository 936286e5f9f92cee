//! One `sync` pass, wired: config -> source (Cloudflare) -> reconcile -> sinks -> targets.
//!
//! This is the glue that `sync`, `watch` and `setup` share; the decisions live in `reconcile`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{Output, SourceArgs, SyncArgs};
use crate::config::{self, Env, SourceConfig};
use crate::docker::{Engine, RecreateOptions};
use crate::error::Error;
use crate::exit;
use crate::reconcile::{self, ActionError, Outcome, RestartMode, Target, TargetObservation};
use crate::sink::infisical::{self, InfisicalSink};
use crate::sink::{AnySink, EnvFileSink, Sink, SinkKind, WriteMode};
use crate::source::{self, AppSummary};
use crate::state::{State, StateFile};

/// A validated `sync` configuration.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub source: SourceConfig,
    pub key: String,
    pub env_file: PathBuf,
    pub sinks: Vec<SinkKind>,
    pub containers: Vec<String>,
    /// `--compose-service`, as (project, service).
    pub compose_services: Vec<(String, String)>,
    pub recreate: RecreateOptions,
    pub restart: RestartMode,
    pub write_mode: WriteMode,
    pub dry_run: bool,
    pub output: Output,
    pub state_file: PathBuf,
    pub lock_file: PathBuf,
    pub lock_timeout: Duration,
    /// Set when `--sink infisical` is chosen.
    pub infisical: Option<infisical::Settings>,
    /// `CLOUDFLARE_TUNNEL_ID`: keep the audTag of this tunnel's rule for the host current.
    pub tunnel_id: Option<String>,
}

impl SyncConfig {
    pub fn from_args(a: &SyncArgs, env: &Env) -> Result<SyncConfig, Error> {
        config::validate_key(&a.key)?;
        let source = SourceConfig::from_args_with(&a.source, env, a.origin, &a.access)?;
        let tunnel_id = match &a.tunnel_id {
            Some(t) => Some(config::validate_id(
                "--tunnel-id / CLOUDFLARE_TUNNEL_ID",
                t,
            )?),
            None => None,
        };
        let mut sinks = a.sinks.clone();
        sinks.dedup();
        let infisical = if sinks.contains(&SinkKind::Infisical) {
            Some(
                crate::config_infisical::infisical_settings(&a.source.infisical, env, a.source.timeout)?
                    .ok_or_else(|| {
                        Error::usage(
                            "--sink infisical needs INFISICAL_PROJECT_ID and credentials: INFISICAL_CLIENT_ID + INFISICAL_CLIENT_SECRET (Universal Auth), or INFISICAL_TOKEN",
                        )
                    })?,
            )
        } else {
            None
        };
        let mut containers: Vec<String> = a
            .containers
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        let compose_services = a
            .compose_services
            .iter()
            .map(|s| parse_compose_service(s))
            .collect::<Result<Vec<_>, _>>()?;
        if a.containers.is_empty() && compose_services.is_empty() {
            containers.push(DEFAULT_CONTAINER.to_string());
        }
        if containers.is_empty() && compose_services.is_empty() && a.restart != RestartMode::None {
            return Err(Error::usage(
                "no container given: pass --container NAME, or --restart none",
            ));
        }
        let env_file = a.source.env_file.clone();
        let state_file = state_file_of(&a.source, a.state_file.as_deref());
        let infisical = infisical.map(|mut s| {
            s.state_file = Some(state_file.clone());
            s
        });
        Ok(SyncConfig {
            source,
            key: a.key.clone(),
            sinks,
            containers,
            compose_services,
            recreate: RecreateOptions {
                settle: a.settle,
                health_timeout: a.health_timeout,
            },
            restart: a.restart,
            write_mode: a.write_mode,
            dry_run: a.dry_run,
            output: a.output,
            state_file,
            lock_file: sidecar(&env_file, ".audsync.lock"),
            lock_timeout: a.lock_timeout,
            env_file,
            infisical,
            tunnel_id,
        })
    }
}

/// The state file: `--state-file`, else `<env-file>.audsync-state.json` beside the .env.
pub fn state_file_of(source: &SourceArgs, state_file: Option<&std::path::Path>) -> PathBuf {
    match state_file {
        Some(p) => p.to_path_buf(),
        None => sidecar(&source.env_file, ".audsync-state.json"),
    }
}

/// `<env-file><suffix>` next to the real file: a symlink and its target share lock and state.
fn sidecar(env_file: &std::path::Path, suffix: &str) -> PathBuf {
    let real = std::fs::canonicalize(env_file).unwrap_or_else(|_| env_file.to_path_buf());
    let mut name = real
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| ".env".into());
    name.push(suffix);
    real.with_file_name(name)
}

/// The container `sync` acts on when neither --container nor --compose-service is given.
pub const DEFAULT_CONTAINER: &str = "lambda-server";

/// `PROJECT/SERVICE` -> (project, service).
fn parse_compose_service(s: &str) -> Result<(String, String), Error> {
    match s.trim().split_once('/') {
        Some((p, svc)) if !p.is_empty() && !svc.is_empty() && !svc.contains('/') => {
            Ok((p.to_string(), svc.to_string()))
        }
        _ => Err(Error::usage(format!(
            "--compose-service {s:?}: expected PROJECT/SERVICE, e.g. lambda/lambda-server (the project is the compose project name, see `docker compose ls`)"
        ))),
    }
}

/// What a pass printed and returned.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub aud: Option<String>,
    /// The value the first sink held before this pass.
    pub previous: Option<String>,
    pub changed: bool,
    pub dry_run: bool,
    /// `in_sync`, `changed`, `pending`, `failed`.
    pub status: &'static str,
    pub exit_code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppSummary>,
    pub sinks: Vec<reconcile::SinkReport>,
    pub containers: Vec<reconcile::TargetReport>,
    /// Recreates cut short by an earlier run, finished or undone before this pass looked at
    /// the containers (with `--dry-run`: found).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
    /// The tunnel rule's audTag step (only with CLOUDFLARE_TUNNEL_ID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Where a failed pass failed (`lock`, `source`, `sink`, `target`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
}

/// The step of a pass that failed; `watch` counts failures by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Lock,
    Source,
    Sink,
    Target,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Lock, Stage::Source, Stage::Sink, Stage::Target];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Lock => "lock",
            Stage::Source => "source",
            Stage::Sink => "sink",
            Stage::Target => "target",
        }
    }
}

/// A pass that failed before it could report, with the step it failed at.
#[derive(Debug)]
pub struct PassError {
    pub stage: Stage,
    pub error: Error,
}

impl Report {
    pub fn from_error(e: &Error, dry_run: bool) -> Report {
        Report {
            aud: None,
            previous: None,
            changed: false,
            dry_run,
            status: "failed",
            exit_code: e.exit_code(),
            app: None,
            sinks: vec![],
            containers: vec![],
            recovered: vec![],
            tunnel: None,
            error: Some(e.to_string()),
            hint: e.hint(),
            stage: None,
        }
    }
}

/// Validate the `sync` configuration, reading the Cloudflare credentials from Infisical when
/// they are set nowhere else (see [`resolve_credentials`]).
pub async fn load_config(args: &SyncArgs, env: Env) -> Result<SyncConfig, Error> {
    let env = resolve_credentials_at(&args.source, args.state_file.as_deref(), env, |e| {
        SyncConfig::from_args(args, e).map(drop)
    })
    .await?;
    SyncConfig::from_args(args, &env)
}

/// Cloudflare credentials: process env > `.env` file > Infisical. When none of
/// CLOUDFLARE_API_TOKEN / CLOUDFLARE_EMAIL / CLOUDFLARE_API_KEY (or a `_FILE` of one) is set
/// and Infisical is configured, they are read from the same project/environment/path and added
/// as the lowest layer of `env`. `validate` checks everything else first, so a bad flag is
/// reported before any request.
pub async fn resolve_credentials(
    source: &SourceArgs,
    env: Env,
    validate: impl FnOnce(&Env) -> Result<(), Error>,
) -> Result<Env, Error> {
    resolve_credentials_at(source, None, env, validate).await
}

/// [`resolve_credentials`] with `--state-file` (where a refused Infisical login is remembered).
pub async fn resolve_credentials_at(
    source: &SourceArgs,
    state_file: Option<&std::path::Path>,
    env: Env,
    validate: impl FnOnce(&Env) -> Result<(), Error>,
) -> Result<Env, Error> {
    if config::has_cloudflare_credentials(&env) {
        return Ok(env);
    }
    let Some(mut settings) =
        crate::config_infisical::infisical_settings(&source.infisical, &env, source.timeout)?
    else {
        return Ok(env);
    };
    settings.state_file = Some(state_file_of(source, state_file));
    // A stand-in credential, only to run the validation that needs one.
    validate(&env.clone().with_fetched(
        "CLOUDFLARE_API_TOKEN",
        crate::secret::Secret::new("validation-placeholder"),
    ))?;
    crate::config_infisical::read_cloudflare_credentials(&settings, env).await
}

/// The sinks named by `--sink`, in order; `state` gives the Infisical write held for approval.
async fn build_sinks(cfg: &SyncConfig, state: &State) -> Result<Vec<AnySink>, Error> {
    cfg.sinks
        .iter()
        .map(|k| match k {
            SinkKind::Env => Ok(AnySink::Env(EnvFileSink {
                path: cfg.env_file.clone(),
                key: cfg.key.clone(),
                mode: cfg.write_mode,
            })),
            SinkKind::Infisical => match &cfg.infisical {
                Some(s) => Ok(AnySink::Infisical(Box::new(
                    InfisicalSink::new(s.clone(), &cfg.key)
                        .with_pending(state.infisical_pending.as_ref()),
                ))),
                None => Err(Error::usage("--sink infisical is not configured")),
            },
        })
        .collect()
}

/// The containers to act on, each observed. Containers are only asked about when their answer
/// can matter: always for auto/recreate (drift), for restart only when something is owed or
/// changing (`may_act`). A recreate an earlier run left half-way is first finished or undone
/// (the third part says what was done); a container that cannot be recovered is not acted on.
async fn build_targets(
    cfg: &SyncConfig,
    may_act: bool,
) -> (
    Vec<Slot>,
    Vec<(String, Result<TargetObservation, ActionError>)>,
    Vec<String>,
) {
    let need_docker = match cfg.restart {
        RestartMode::None => false,
        RestartMode::Restart => may_act,
        RestartMode::Auto | RestartMode::Recreate => true,
    };
    let mut targets: Vec<Slot> = Vec::new();
    let mut target_obs = Vec::new();
    let mut recovered = Vec::new();
    if need_docker {
        let engine = Engine::connect().await;
        let mut slots: Vec<Slot> = cfg
            .containers
            .iter()
            .map(|name| match &engine {
                Ok(e) => Slot::Live(e.container(name).with_options(cfg.recreate.clone())),
                Err(err) => Slot::Down(name.clone(), err.clone()),
            })
            .collect();
        for (project, service) in &cfg.compose_services {
            let group = format!("{project}/{service}");
            let names = match &engine {
                Ok(e) => e.compose_service(project, service).await,
                Err(err) => Err(err.clone()),
            };
            match (names, &engine) {
                (Ok(names), Ok(e)) => slots.extend(names.iter().map(|n| {
                    let c = e.container(n).with_options(cfg.recreate.clone());
                    Slot::Live(c.in_group(&format!("compose service {group}")))
                })),
                (Err(err), _) => slots.push(Slot::Down(group, err)),
                (_, Err(err)) => slots.push(Slot::Down(group, err.clone())),
            }
        }
        for mut slot in slots {
            let mut recovery_pending = false;
            if let Slot::Live(c) = &slot {
                match c.recover(cfg.dry_run).await {
                    Ok(done) => {
                        recovery_pending = cfg.dry_run && !done.is_empty();
                        recovered.extend(done);
                    }
                    Err(e) => slot = Slot::Down(slot.name(), e),
                }
            }
            let mut obs = slot.observe(&cfg.key).await;
            if recovery_pending && obs.is_err() {
                // A dry run leaves the cut-short recreate as it is, so the name may be missing;
                // a real run would restore it first. Plan as for a container without the key.
                obs = Ok(TargetObservation { env_value: None });
            }
            target_obs.push((slot.name(), obs));
            targets.push(slot);
        }
    } else {
        let groups = cfg.compose_services.iter().map(|(p, s)| format!("{p}/{s}"));
        for name in cfg.containers.iter().cloned().chain(groups) {
            let name = &name;
            let not_needed = ActionError {
                rolled_back: false,
                message: "not inspected".into(),
                hint: None,
            };
            targets.push(Slot::Down(name.clone(), not_needed));
            target_obs.push((name.clone(), Ok(TargetObservation { env_value: None })));
        }
    }
    (targets, target_obs, recovered)
}

/// A container target, or the reason none can be had (daemon unreachable).
enum Slot {
    Live(crate::docker::Container),
    Down(String, ActionError),
}

impl Target for Slot {
    fn name(&self) -> String {
        match self {
            Slot::Live(c) => c.name(),
            Slot::Down(n, _) => n.clone(),
        }
    }
    fn group(&self) -> Option<String> {
        match self {
            Slot::Live(c) => c.group(),
            Slot::Down(..) => None,
        }
    }
    async fn observe(&mut self, key: &str) -> Result<TargetObservation, ActionError> {
        match self {
            Slot::Live(c) => c.observe(key).await,
            Slot::Down(_, e) => Err(e.clone()),
        }
    }
    async fn restart(&mut self) -> Result<(), ActionError> {
        match self {
            Slot::Live(c) => c.restart().await,
            Slot::Down(_, e) => Err(e.clone()),
        }
    }
    async fn recreate(&mut self, key: &str, value: &str) -> Result<(), ActionError> {
        match self {
            Slot::Live(c) => c.recreate(key, value).await,
            Slot::Down(_, e) => Err(e.clone()),
        }
    }
}

/// One full pass under the lock. Errors before any write come back as `Err`.
pub async fn run_pass(cfg: &SyncConfig) -> Result<Report, Error> {
    run_pass_staged(cfg).await.map_err(|e| e.error)
}

/// [`run_pass`], telling which step an early error came from.
pub async fn run_pass_staged(cfg: &SyncConfig) -> Result<Report, PassError> {
    let at = |stage: Stage| move |error: Error| PassError { stage, error };
    let _lock = if cfg.dry_run {
        None
    } else {
        Some(
            crate::lock::acquire(&cfg.lock_file, cfg.lock_timeout)
                .await
                .map_err(|e| Error::failed(e, None))
                .map_err(at(Stage::Lock))?,
        )
    };
    let mut state = StateFile::load(&cfg.state_file, cfg.dry_run)
        .map_err(|e| Error::failed(e, Some("fix the file's permissions, or point --state-file / AUDSYNC_STATE_FILE elsewhere".into())))
        .map_err(at(Stage::Lock))?;
    let before = state.state.clone();
    let client = source::client(&cfg.source);
    let found = source::fetch(&client, &cfg.source, Some(&mut state.state))
        .await
        .map_err(at(Stage::Source))?;
    if state.state.app != before.app
        && let Err(e) = state.save()
    {
        tracing::warn!(error = %e, "cannot save the application cache");
    }
    tracing::debug!(aud = %found.aud, app = %found.app.id, "desired AUD");

    let mut sinks = build_sinks(cfg, &state.state)
        .await
        .map_err(at(Stage::Sink))?;
    let mut observed = Vec::with_capacity(sinks.len());
    for s in sinks.iter_mut() {
        let o = s
            .observe(&found.aud)
            .await
            .map_err(|e| Error::failed(e.to_string(), e.hint()))
            .map_err(at(Stage::Sink))?;
        observed.push((s.info(), o));
    }
    let changed = observed.iter().any(|(_, o)| o.needs_write);
    let mut owed = reconcile::Journal::owed(&state);
    // A container that last ran with another value is owed an action too, even if this run
    // writes nothing: someone else changed the sink.
    owed.extend(
        state
            .state
            .applied
            .iter()
            .filter(|(_, v)| **v != found.aud)
            .map(|(k, _)| k.clone()),
    );
    let (mut targets, target_obs, recovered) =
        build_targets(cfg, changed || !owed.is_empty()).await;

    let plan = reconcile::plan(
        &found.aud,
        &cfg.key,
        observed,
        target_obs,
        cfg.restart,
        &owed,
    );
    let outcome = reconcile::apply(&plan, &mut sinks, &mut targets, &mut state, cfg.dry_run).await;
    record_applied(cfg, &mut state, &outcome, &found.aud);
    remember_pending(&sinks, &mut state);
    let mut r = report(cfg, found.clone(), &plan, outcome);
    r.add_recovered(recovered);
    if let Some(t) = tunnel_step(cfg, &client, &found, r.previous.as_deref()).await {
        r.add_tunnel(t);
    }
    Ok(r)
}

/// Remember which value each container of this pass now runs with. Containers whose action
/// failed or was skipped keep their old record; containers not in this pass are forgotten.
fn record_applied(cfg: &SyncConfig, state: &mut StateFile, outcome: &Outcome, desired: &str) {
    if cfg.dry_run || cfg.restart == RestartMode::None {
        return;
    }
    let mut applied = std::collections::BTreeMap::new();
    for c in &outcome.containers {
        if c.result == "done" || c.result == "none" {
            applied.insert(c.name.clone(), desired.to_string());
        } else if let Some(old) = state.state.applied.get(&c.name) {
            applied.insert(c.name.clone(), old.clone());
        }
    }
    if applied != state.state.applied {
        state.state.applied = applied;
        if let Err(e) = state.save() {
            tracing::warn!(error = %e, "cannot record which value the containers run with");
        }
    }
}

/// Keep the Infisical write held for approval (or its absence) in the state file, so the next
/// pass does not submit the same value again.
fn remember_pending(sinks: &[AnySink], state: &mut StateFile) {
    for s in sinks {
        if let AnySink::Infisical(s) = s
            && s.pending() != state.state.infisical_pending.as_ref()
        {
            state.state.infisical_pending = s.pending().cloned();
            if let Err(e) = state.save() {
                tracing::warn!(error = %e, "cannot remember the Infisical write held for approval; the next run submits it again");
            }
        }
    }
}

/// What the tunnel step found and did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TunnelReport {
    pub tunnel_id: String,
    /// `in_sync`, `updated`, `would_update`, `not_required` (the rule does not require Access),
    /// `skipped` (cannot be managed here; see detail), `failed`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Report {
    /// Note the recreates finished or undone before the plan: a repair is a change (with
    /// `--dry-run`, pending work).
    fn add_recovered(&mut self, recovered: Vec<String>) {
        if recovered.is_empty() {
            return;
        }
        if self.status == "in_sync" {
            (self.status, self.exit_code) = if self.dry_run {
                ("pending", exit::PENDING)
            } else {
                ("changed", exit::OK)
            };
        }
        self.recovered = recovered;
    }

    /// Fold the tunnel step into the pass's status: a failure fails the pass, a pending change
    /// makes a dry run pending, an update is a change.
    fn add_tunnel(&mut self, t: TunnelReport) {
        match t.result {
            "failed" => {
                let msg = format!(
                    "tunnel {}: {}",
                    t.tunnel_id,
                    t.detail.as_deref().unwrap_or("failed")
                );
                self.error = Some(match self.error.take() {
                    Some(e) => format!("{e}; {msg}"),
                    None => msg,
                });
                self.status = "failed";
                self.exit_code = exit::FAILURE;
                // The tunnel configuration is read and written through the Cloudflare API.
                self.stage.get_or_insert(Stage::Source);
            }
            "would_update" if self.status == "in_sync" => {
                self.status = "pending";
                self.exit_code = exit::PENDING;
            }
            "updated" if self.status == "in_sync" => self.status = "changed",
            _ => {}
        }
        self.tunnel = Some(t);
    }
}

/// Keep the audTag of the tunnel rule for the host current, when CLOUDFLARE_TUNNEL_ID is set and
/// that rule requires Access (cloudflared would otherwise refuse every token of a recreated
/// application). A separate step rather than a sink: a stale audTag must not trigger container
/// restarts, and the rule is left alone when it does not require Access.
async fn tunnel_step(
    cfg: &SyncConfig,
    client: &crate::cloudflare::Client,
    found: &source::Found,
    previous: Option<&str>,
) -> Option<TunnelReport> {
    use crate::cloudflare::tunnel;
    let id = cfg.tunnel_id.clone()?;
    let rep = |result, detail: Option<String>| TunnelReport {
        tunnel_id: id.clone(),
        result,
        detail,
    };
    if matches!(cfg.source.auth, crate::cloudflare::Auth::None) || found.app.account_id.is_empty() {
        let why = "the tunnel rule needs the Cloudflare API: with --source edge set a token and CLOUDFLARE_ACCOUNT_ID, or keep its audTag current yourself";
        tracing::warn!(tunnel = %id, "{why}");
        return Some(rep("skipped", Some(why.into())));
    }
    let host = cfg
        .source
        .host
        .clone()
        .unwrap_or_else(|| crate::cloudflare::apps::host_of(&found.app.domain));
    let account = &found.app.account_id;
    let answer = match client.tunnel_configuration(account, &id).await {
        Ok(a) => a,
        Err(e) => return Some(rep("failed", Some(e.to_string()))),
    };
    if tunnel::source_of(&answer) != "cloudflare" {
        let why = format!(
            "locally managed tunnel (source {:?}): keep audTag of the rule for {host} in cloudflared's config.yml at {} yourself",
            tunnel::source_of(&answer),
            found.aud
        );
        tracing::warn!(tunnel = %id, "{why}");
        return Some(rep("skipped", Some(why)));
    }
    let config = tunnel::config_of(&answer);
    match tunnel::update_aud(config, &id, &host, &found.aud, previous) {
        Err(e) => {
            tracing::warn!(tunnel = %id, error = %e, "tunnel rule not managed");
            Some(rep("skipped", Some(e.to_string())))
        }
        Ok(None) => {
            let required = tunnel::access_of(config, &id, &host)
                .map(|rules| rules.iter().any(|r| r.required))
                .unwrap_or(false);
            Some(if required {
                rep("in_sync", None)
            } else {
                rep(
                    "not_required",
                    Some(format!(
                        "the rule for {host} does not require Access (run `audsync setup` to require it)"
                    )),
                )
            })
        }
        Ok(Some(new)) => {
            let diff = tunnel::diff(config, &new);
            if cfg.dry_run {
                return Some(rep("would_update", Some(diff)));
            }
            match client.put_tunnel_configuration(account, &id, &new).await {
                Ok(_) => {
                    tracing::info!(tunnel = %id, "tunnel rule audTag updated");
                    Some(rep("updated", Some(diff)))
                }
                Err(e) => Some(rep("failed", Some(e.to_string()))),
            }
        }
    }
}

fn report(cfg: &SyncConfig, found: source::Found, plan: &reconcile::Plan, o: Outcome) -> Report {
    let has_work = plan.has_work();
    let (status, exit_code) = if o.failed {
        ("failed", exit::FAILURE)
    } else if o.pending_approval || (cfg.dry_run && has_work) {
        ("pending", exit::PENDING)
    } else if has_work {
        ("changed", exit::OK)
    } else {
        ("in_sync", exit::OK)
    };
    let error = o
        .sinks
        .iter()
        .filter_map(|s| {
            s.error
                .as_ref()
                .map(|e| format!("sink {} {}: {e}", s.info.kind, s.info.target))
        })
        .chain(o.containers.iter().filter_map(|c| {
            c.error
                .as_ref()
                .map(|e| format!("container {}: {e}", c.name))
        }))
        .collect::<Vec<_>>();
    let hint = o
        .containers
        .iter()
        .find_map(|c| c.error.as_ref().and_then(|e| e.hint.clone()));
    let wrote = o.sinks.iter().any(|s| s.result == "written");
    // A sink that failed (or could not be written for want of the journal) is the sink stage;
    // any other failure is a container's.
    let stage = if !o.failed {
        None
    } else if o
        .sinks
        .iter()
        .any(|s| s.error.is_some() && s.result != "pending_approval")
    {
        Some(Stage::Sink)
    } else {
        Some(Stage::Target)
    };
    Report {
        aud: Some(found.aud),
        previous: o.sinks.first().and_then(|s| s.old.clone()),
        changed: o.changed,
        dry_run: cfg.dry_run,
        status,
        exit_code,
        app: Some(found.app),
        sinks: o.sinks,
        containers: o.containers,
        recovered: vec![],
        tunnel: None,
        hint,
        stage,
        error: (!error.is_empty()).then(|| {
            let mut msg = error.join("; ");
            if wrote && o.failed {
                msg.push_str(" (the new value WAS written to the sinks; the next run retries the containers)");
            }
            msg
        }),
    }
}

/// Render a report for people.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if let (Some(aud), Some(app)) = (&r.aud, &r.app) {
        let _ = writeln!(
            s,
            "AUD {aud}  (application {:?}, {}, id {})",
            app.name, app.domain, app.id
        );
    }
    for k in &r.sinks {
        let old = k
            .old
            .as_deref()
            .map(reconcile::short)
            .unwrap_or_else(|| "(unset)".into());
        let new = r.aud.as_deref().map(reconcile::short).unwrap_or_default();
        let change = if k.action == "write" {
            format!("{old} -> {new}")
        } else {
            format!("{new} (unchanged)")
        };
        let version = k.version.map(|v| format!(" v{v}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "  sink {} {} {}{version}: {change} [{}]",
            k.info.kind, k.info.target, k.info.key, k.result
        );
        if let Some(e) = &k.error {
            let _ = writeln!(s, "    {e}");
        }
    }
    for m in &r.recovered {
        let verb = if r.dry_run { "to recover" } else { "recovered" };
        let _ = writeln!(s, "  {verb}: {m}");
    }
    for c in &r.containers {
        let action = match c.action {
            reconcile::Action::None => "no action",
            reconcile::Action::Restart => "restart",
            reconcile::Action::Recreate => "recreate",
        };
        let _ = writeln!(
            s,
            "  container {}: {action} ({}) [{}]",
            c.name, c.reason, c.result
        );
        if let Some(e) = &c.error {
            let _ = writeln!(s, "    {}", e.message);
        }
    }
    if let Some(t) = &r.tunnel {
        let _ = writeln!(s, "  tunnel {} audTag: [{}]", t.tunnel_id, t.result);
        for line in t.detail.iter().flat_map(|d| d.lines()) {
            let _ = writeln!(s, "    {line}");
        }
    }
    let summary = match (r.status, r.dry_run) {
        ("in_sync", _) => "in sync: nothing to do",
        ("changed", _) => "changed: new AUD applied",
        ("pending", true) => "dry run: the changes above would be made (nothing was changed)",
        ("pending", false) => "pending: a write waits for approval; nothing was restarted",
        _ => "FAILED",
    };
    let _ = writeln!(s, "{summary}");
    s
}

/// Print a report in the chosen format.
pub fn print(r: &Report, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(r).unwrap_or_else(|_| "{}".into())
        ),
        Output::Text => print!("{}", render_text(r)),
    }
}
