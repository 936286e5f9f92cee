//! The `sync` / `watch` configuration: settings for the pass plus every binding, from the flags
//! (one binding, as always) or from the config file's `[[binding]]` tables.
//!
//! Validation lists every problem of the file at once, each at its value's line and column: a
//! binding's own values are checked with the file's settings before anything else
//! ([`binding_fields`]), what needs the other layers (credentials, a sink written twice) when
//! the configuration is built. Binding options given as flags or
//! environment variables are refused when the file defines bindings (they would be ambiguous),
//! except `--domain` / `--app-id`, which select bindings, and `--restart`, which overrides every
//! binding's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{AccessArgs, Command, Origin as SourceOrigin, SourceArgs, SyncArgs};
use crate::docker::RecreateOptions;
use crate::docker::compose::ComposeEnv;
use crate::error::Error;
use crate::exec::ExecSettings;
use crate::reconcile::RestartMode;
use crate::sink::infisical;
use crate::sink::{SinkKind, WriteMode};

use super::file::{FileBinding, Problem, SinkSpec, TargetSpec};
use super::{Env, FileConfig, Origin, Parsed, SourceConfig};

/// The container a flag-only `sync` acts on when neither --container nor --compose-service is
/// given.
pub const DEFAULT_CONTAINER: &str = "lambda-server";
pub const DEFAULT_KEY: &str = "CLOUDFLARE_AUD_TAG";

/// Where a binding writes its value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum BindingSink {
    Env(PathBuf),
    /// A folder (secret path) of the configured Infisical project.
    Infisical(String),
}

/// What reads a binding's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum BindingTarget {
    Container(String),
    ComposeService {
        project: String,
        service: String,
    },
    SwarmService(String),
    /// A command run after the value changed, as its words (never through a shell).
    Exec(Vec<String>),
}

impl BindingTarget {
    /// A Docker object (a container, compose or Swarm service), not a command.
    pub fn is_docker(&self) -> bool {
        !matches!(self, BindingTarget::Exec(_))
    }
}

/// One host (or application) -> one key in some sinks -> some containers.
#[derive(Debug, Clone)]
pub struct Binding {
    /// How reports name it: `name`, else the host, else the application id.
    pub id: String,
    pub source: SourceConfig,
    pub key: String,
    pub sinks: Vec<BindingSink>,
    pub targets: Vec<BindingTarget>,
    pub restart: RestartMode,
    /// Keep the audTag of this tunnel's rule for the host current.
    pub tunnel_id: Option<String>,
    /// Create a missing `.env` sink (`create = true` / `--create-env-file`).
    pub create: bool,
    /// Where the protected host is reached (`url` / `--url`), unchecked; `None`: `https://HOST/`.
    pub url: Option<String>,
    /// Set on a discovered binding: where it came from (`label on container X`).
    pub origin: Option<String>,
}

/// Result format on stdout (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// A validated `sync` configuration.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub bindings: Vec<Binding>,
    pub recreate: RecreateOptions,
    pub write_mode: WriteMode,
    pub dry_run: bool,
    pub output: Output,
    pub state_file: PathBuf,
    pub lock_file: PathBuf,
    /// The directory of the resource locks (and a flag run's own lock).
    pub lock_dir: PathBuf,
    pub lock_timeout: Duration,
    /// Set when a binding writes to Infisical: the project settings (each sink sets its folder).
    pub infisical: Option<infisical::Settings>,
    /// The config file the bindings came from, if any.
    pub config_file: Option<PathBuf>,
    /// True when the bindings came from the flags (the JSON report keeps the single-binding
    /// fields of schema 1).
    pub flag_binding: bool,
    /// The Access team (CLOUDFLARE_TEAM_NAME / CLOUDFLARE_AUTH_DOMAIN), for a tunnel rule that
    /// requires Access without naming its `teamName`.
    pub team: Option<crate::cloudflare::edge::Team>,
    /// Where notifications go (`--notify`, `notify = [...]`), and which.
    pub notify: super::notify::Settings,
    /// The Docker daemon's address (`DOCKER_HOST`, checked).
    pub docker_host: String,
    /// `PATH` and the variables the compose CLI runs with (`docker-compose config --hash`).
    pub compose: ComposeEnv,
    /// How command targets run (`exec_timeout`; the `PATH`, `HOME`, `LANG` they inherit).
    pub exec: ExecSettings,
    /// `--discover`: bindings are also taken from labels, each pass.
    pub discover: Option<super::discover::DiscoverConfig>,
}

impl SyncConfig {
    /// The one binding of a flag-only run (`setup`).
    pub fn single(&self) -> &Binding {
        &self.bindings[0]
    }

    /// Build from the `sync` flags, the layers and (when given) the config file.
    pub fn build(
        a: &SyncArgs,
        env: &Env,
        file: Option<&FileConfig>,
        origins: &std::collections::BTreeMap<String, Origin>,
    ) -> Result<SyncConfig, Error> {
        super::credentials::built("sync");
        let docker_host = super::docker_host(env)?;
        let from_file = file.filter(|f| !f.bindings.is_empty());
        let state_file = match (&a.state_file, file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => sidecar(&f.path, ".audsync-state.json"),
            (None, None) => sidecar(&a.source.env_file, ".audsync-state.json"),
        };
        let lock_dir = match &a.lock_dir {
            Some(d) => d.clone(),
            None => crate::lock::default_dir(env.process().raw("XDG_RUNTIME_DIR")),
        };
        // A flag run's own lock is not beside its `.env`: that file's lock is a resource lock
        // of the same pass, and one process must never open one lock file twice (flock).
        let lock_file = match file {
            Some(f) => sidecar(&f.path, ".audsync.lock"),
            None => lock_dir.join(format!(
                "{}.lock",
                crate::lock::Resource::FlagRun(crate::lock::Resource::real_path(
                    &a.source.env_file
                ))
                .stem()
            )),
        };
        let mut problems: Vec<String> = Vec::new();
        // With --discover and no application on the command line, the labels are the bindings.
        let discover_only = a.discover && a.source.domain.is_none() && a.source.app_id.is_none();
        let bindings = match from_file {
            None if discover_only => vec![],
            None => vec![flag_binding(a, env)?],
            Some(f) => file_bindings(&Defaults::of(a), env, f, origins, &mut problems),
        };
        let wants_infisical = bindings.iter().any(|b| {
            b.sinks
                .iter()
                .any(|s| matches!(s, BindingSink::Infisical(_)))
        });
        let infisical = if wants_infisical {
            match crate::config::infisical::infisical_settings(
                &a.source.infisical,
                env,
                a.source.timeout,
            ) {
                Ok(Some(s)) => Some(s),
                Ok(None) => {
                    problems.push("--sink infisical needs INFISICAL_PROJECT_ID and credentials: INFISICAL_CLIENT_ID + INFISICAL_CLIENT_SECRET (Universal Auth), or INFISICAL_TOKEN (in a config file: [infisical] project_id, client_id_file, client_secret_file)".into());
                    None
                }
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            }
        } else {
            None
        };
        let infisical = infisical.map(|mut s| {
            s.state_file = Some(state_file.clone());
            s
        });
        let notify = super::notify::settings(a, file, &mut problems);
        if !problems.is_empty() {
            return Err(Error::usage(match file {
                Some(f) if problems.len() > 1 || from_file.is_some() => format!(
                    "{} does not validate:\n  {}",
                    f.path.display(),
                    problems.join("\n  ")
                ),
                _ => problems.join("\n  "),
            }));
        }
        Ok(SyncConfig {
            flag_binding: from_file.is_none() && !discover_only,
            bindings,
            recreate: RecreateOptions {
                settle: a.settle,
                health_timeout: a.health_timeout,
                journal: Some(state_file.clone()),
            },
            write_mode: a.write_mode.into(),
            dry_run: a.dry_run,
            output: a.output.into(),
            state_file,
            lock_file,
            lock_dir,
            lock_timeout: a.lock_timeout,
            infisical,
            config_file: file.map(|f| f.path.clone()),
            team: crate::cloudflare::edge::team(
                a.access.team_name.as_deref(),
                a.access.auth_domain.as_deref(),
            ),
            notify,
            docker_host,
            compose: ComposeEnv::from_lookup(|n| env.process().raw(n)),
            exec: exec_settings(a.exec_timeout, env),
            discover: a.discover.then(|| {
                super::discover::DiscoverConfig::new(
                    &a.discover_roots,
                    a.discover_scope.as_deref(),
                    &a.source,
                    &a.access,
                    a.origin,
                    env,
                )
            }),
        })
    }
}

/// How command targets run: the timeout, and the few variables of audsync's own environment
/// they inherit (never the rest: it holds credentials).
pub(crate) fn exec_settings(timeout: Duration, env: &Env) -> ExecSettings {
    ExecSettings {
        timeout,
        base_env: crate::exec::INHERITED
            .iter()
            .filter_map(|n| Some((n.to_string(), env.process().raw(n)?.to_string())))
            .collect(),
    }
}

/// `--exec 'CMD ARGS'` -> a command target (split as a shell splits words).
pub fn parse_exec(s: &str) -> Result<BindingTarget, Error> {
    super::words::split(s)
        .map(BindingTarget::Exec)
        .map_err(|e| Error::usage(format!("--exec: cannot split the command into words: {e}")))
}

/// The one binding of a run without bindings in a config file: exactly the flags of old.
fn flag_binding(a: &SyncArgs, env: &Env) -> Result<Binding, Error> {
    super::validate_key(&a.key)?;
    let source = SourceConfig::from_args_with(&a.source, env, a.origin, &a.access)?;
    let tunnel_id = match &a.tunnel_id {
        Some(t) => Some(super::validate_id("--tunnel-id / CLOUDFLARE_TUNNEL_ID", t)?),
        None => None,
    };
    let mut kinds = a.sinks.clone();
    kinds.dedup();
    let sinks = kinds
        .iter()
        .map(|k| match SinkKind::from(*k) {
            SinkKind::Env => BindingSink::Env(a.source.env_file.clone()),
            SinkKind::Infisical => {
                BindingSink::Infisical(a.source.infisical.infisical_secret_path.clone())
            }
        })
        .collect();
    let mut targets: Vec<BindingTarget> = a
        .containers
        .iter()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .map(BindingTarget::Container)
        .collect();
    for s in &a.compose_services {
        targets.push(parse_compose_service(s)?);
    }
    targets.extend(
        a.swarm_services
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .map(BindingTarget::SwarmService),
    );
    for e in &a.execs {
        targets.push(parse_exec(e)?);
    }
    if a.containers.is_empty()
        && a.compose_services.is_empty()
        && a.swarm_services.is_empty()
        && a.execs.is_empty()
    {
        targets.push(BindingTarget::Container(DEFAULT_CONTAINER.to_string()));
    }
    if targets.is_empty() && a.restart != crate::cli::RestartMode::None {
        return Err(Error::usage(
            "no container given: pass --container NAME, or --restart none",
        ));
    }
    let id = source
        .host
        .clone()
        .unwrap_or_else(|| match &source.selector {
            super::Selector::AppId(id) | super::Selector::Host(id) => id.clone(),
        });
    Ok(Binding {
        id,
        source,
        key: a.key.clone(),
        sinks,
        targets,
        restart: a.restart.into(),
        tunnel_id,
        create: a.create_env_file,
        url: a.access.url.clone(),
        origin: None,
    })
}

/// Options that belong to a binding: refused as flags or variables when the file has bindings.
const BINDING_OPTIONS: &[(&str, &str)] = &[
    ("key", "--key / AUDSYNC_KEY"),
    ("sinks", "--sink / AUDSYNC_SINK"),
    ("containers", "--container / AUDSYNC_CONTAINER"),
    (
        "compose_services",
        "--compose-service / AUDSYNC_COMPOSE_SERVICE",
    ),
    ("swarm_services", "--swarm-service / AUDSYNC_SWARM_SERVICE"),
    ("execs", "--exec"),
    ("tunnel_id", "--tunnel-id / CLOUDFLARE_TUNNEL_ID"),
    ("url", "--url / AUDSYNC_URL"),
];

pub(super) fn overridden(origins: &std::collections::BTreeMap<String, Origin>, id: &str) -> bool {
    matches!(
        origins.get(id),
        Some(Origin::Flag | Origin::Env(_) | Origin::EnvFile(..))
    )
}

/// What a `[[binding]]` takes from the command line where it says nothing itself: `sync`'s
/// flags, or `verify`'s (which has no restart or create options).
pub(super) struct Defaults<'a> {
    pub origin: SourceOrigin,
    pub source: &'a SourceArgs,
    pub access: &'a AccessArgs,
    pub restart: crate::cli::RestartMode,
    pub create_env_file: bool,
}

impl Defaults<'_> {
    fn of(a: &SyncArgs) -> Defaults<'_> {
        Defaults {
            origin: a.origin,
            source: &a.source,
            access: &a.access,
            restart: a.restart,
            create_env_file: a.create_env_file,
        }
    }
}

/// The bindings of the config file `f` (only those `--domain` / `--app-id` pick, when given),
/// every problem pushed onto `problems`.
pub(super) fn file_bindings(
    a: &Defaults<'_>,
    env: &Env,
    f: &FileConfig,
    origins: &std::collections::BTreeMap<String, Origin>,
    problems: &mut Vec<String>,
) -> Vec<Binding> {
    let shown = f.path.display().to_string();
    for (id, name) in BINDING_OPTIONS {
        if overridden(origins, id) {
            problems.push(format!(
                "{name} is set, but {shown} defines bindings: set it in each [[binding]] instead"
            ));
        }
    }
    // Credentials are checked once for the whole file, not once per binding.
    let needs_api = f.bindings.iter().any(|b| {
        b.get("source").map(|s| s.value.as_str()) != Some("edge") && a.origin == SourceOrigin::Api
            || b.get("source").map(|s| s.value.as_str()) == Some("api")
    });
    let reported;
    let env = match super::cloudflare_auth(env) {
        Err(e) if needs_api => {
            // Reported here, once; the bindings are still checked, without a credential.
            problems.push(e.to_string());
            let mut e = env.clone();
            e.defer_cloudflare_auth = true;
            reported = e;
            &reported
        }
        _ => env,
    };
    let restart_override = overridden(origins, "restart").then_some(RestartMode::from(a.restart));
    let pick_domain = overridden(origins, "domain")
        .then(|| a.source.domain.clone())
        .flatten();
    let pick_app = overridden(origins, "app_id")
        .then(|| a.source.app_id.clone())
        .flatten();
    let mut out = Vec::new();
    let mut seen: BTreeSet<(BindingSink, String)> = BTreeSet::new();
    let mut found: Vec<Problem> = Vec::new();
    for (n, fb) in f.bindings.iter().enumerate() {
        let label = format!("binding {}", n + 1);
        match file_binding(a, env, fb, restart_override) {
            Ok(b) => {
                for (s, at) in b.sinks.iter().zip(&fb.sinks) {
                    if !seen.insert((s.clone(), b.key.clone())) {
                        found.push(Problem::new(
                            at.pos(),
                            format!(
                                "{label}: another binding already writes {} to {}; one key in one sink has one source",
                                b.key,
                                match s {
                                    BindingSink::Env(p) => crate::shown::outside(&p.display().to_string()).into_owned(),
                                    BindingSink::Infisical(p) => format!("Infisical {}", crate::shown::outside(p)),
                                }
                            ),
                        ));
                    }
                }
                out.push(b);
            }
            Err(errs) => {
                for p in errs {
                    // A problem of a file-wide setting (the account id) is shown once, at the
                    // setting's value, not once per binding.
                    let setting = f.settings.iter().find(|(var, _)| {
                        p.msg.contains(&format!(" {var} ")) || p.msg.contains(&format!(" {var}:"))
                    });
                    match setting {
                        Some((_, at)) => found.push(Problem::new(at.pos(), p.msg)),
                        None => found.push(Problem {
                            msg: format!("{label}: {}", p.msg),
                            ..p
                        }),
                    }
                }
            }
        }
    }
    problems.extend(super::file::render(&f.path, found));
    if pick_domain.is_some() || pick_app.is_some() {
        let host = pick_domain.as_deref().map(crate::cloudflare::apps::host_of);
        out.retain(|b| {
            host.as_deref().is_some_and(|h| b.source.host.as_deref() == Some(h))
                || pick_app.as_deref().is_some_and(|id| {
                    matches!(&b.source.selector, super::Selector::AppId(a) if a.eq_ignore_ascii_case(id))
                })
        });
        if out.is_empty() && problems.is_empty() {
            problems.push(format!(
                "no binding in {shown} matches --domain / --app-id {}",
                pick_domain.or(pick_app).unwrap_or_default()
            ));
        }
    }
    out
}

/// A `[[binding]]`'s own values, checked ([`binding_fields`]).
#[derive(Debug, Default)]
pub(super) struct Fields {
    key: String,
    origin: Option<SourceOrigin>,
    restart: Option<RestartMode>,
    tunnel_id: Option<String>,
    create: Option<bool>,
    sinks: Vec<BindingSink>,
    targets: Vec<BindingTarget>,
}

/// What a `[[binding]]` says itself, checked without the other layers: the values that do not
/// parse are problems at their own line and column (a missing key at the binding's header).
/// `origin` is the source the binding falls back to when it names none, when known (the
/// file's own check runs before the flags are parsed: then only the host part of `domain` is
/// checked, as both sources need it).
pub(super) fn binding_fields(
    fb: &FileBinding,
    origin: Option<SourceOrigin>,
) -> (Fields, Vec<Problem>) {
    let mut errs = Vec::new();
    let field = |k: &str| fb.get(k).map(|v| v.value.as_str());
    let header = (fb.line, fb.col);
    let key = field("key").unwrap_or(DEFAULT_KEY).to_string();
    if super::validate_key(&key).is_err() {
        errs.push(Problem::new(
            fb.pos("key"),
            "`key` is not a variable name (letters, digits, _; not starting with a digit)",
        ));
    }
    let own_origin = match field("source") {
        None => None,
        Some("api") => Some(SourceOrigin::Api),
        Some("edge") => Some(SourceOrigin::Edge),
        Some(s) => {
            errs.push(Problem::new(
                fb.pos("source"),
                not_one_of("source", s, &["api", "edge"]),
            ));
            None
        }
    };
    match (field("domain"), field("app_id")) {
        (None, None) => errs.push(Problem::new(
            header,
            "give `domain` (the host the Access application protects) or `app_id`",
        )),
        (domain, app_id) => {
            if let Some(d) = domain {
                let api = own_origin.or(origin) == Some(SourceOrigin::Api);
                if super::validate_host(d).is_err() {
                    errs.push(Problem::new(
                        fb.pos("domain"),
                        "`domain` is not a host name (letters, digits, '-', '.', a leading '*.'; e.g. api.example.com, or api.example.com/docs for a path)",
                    ));
                } else if api && super::validate_binding_domain(d).is_err() {
                    errs.push(Problem::new(
                        fb.pos("domain"),
                        "`domain`: the part after the host is not a plain URL path (letters, digits, -._~/%; e.g. api.example.com/docs)",
                    ));
                }
            }
            if app_id.is_some() && own_origin.or(origin) == Some(SourceOrigin::Edge) {
                errs.push(Problem::new(
                    fb.pos("app_id"),
                    "`app_id` needs source = \"api\": the edge knows hosts, not application ids (give `domain`)",
                ));
            } else if let Some(id) = app_id
                && super::validate_id("app_id", id).is_err()
            {
                errs.push(Problem::new(
                    fb.pos("app_id"),
                    "`app_id` is not a Cloudflare id (32 hex digits, dashes allowed)",
                ));
            }
        }
    }
    if let Some(u) = field("url")
        && super::validate_url(u).is_err()
    {
        errs.push(Problem::new(
            fb.pos("url"),
            "`url` must be an http(s) URL with a host, e.g. https://api.example.com/",
        ));
    }
    let restart = match field("restart") {
        None => None,
        Some(r) => match <crate::cli::RestartMode as clap::ValueEnum>::from_str(r, false) {
            Ok(m) => Some(m.into()),
            Err(_) => {
                errs.push(Problem::new(
                    fb.pos("restart"),
                    not_one_of(
                        "restart",
                        r,
                        &["auto", "restart", "recreate", "rollout", "none"],
                    ),
                ));
                None
            }
        },
    };
    let tunnel_id = match field("tunnel_id") {
        Some(t) => match super::validate_id("tunnel_id", t) {
            Ok(t) => Some(t),
            Err(_) => {
                errs.push(Problem::new(
                    fb.pos("tunnel_id"),
                    "`tunnel_id` is not a Cloudflare id (32 hex digits, dashes allowed)",
                ));
                None
            }
        },
        None => None,
    };
    let create = match field("create") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(c) => {
            errs.push(Problem::new(
                fb.pos("create"),
                not_one_of("create", c, &["true", "false"]),
            ));
            None
        }
    };
    if fb.sinks.is_empty() {
        errs.push(Problem::new(
            header,
            "give at least one sink, e.g. sinks = [{ env = \"/srv/app/.env\" }]",
        ));
    }
    let sinks = fb
        .sinks
        .iter()
        .map(|s| match &s.value {
            SinkSpec::Env(p) => BindingSink::Env(p.clone()),
            SinkSpec::Infisical(p) => BindingSink::Infisical(p.clone()),
        })
        .collect();
    let mut targets = Vec::new();
    for t in &fb.targets {
        match &t.value {
            TargetSpec::Container(c) if !c.trim().is_empty() => {
                targets.push(BindingTarget::Container(c.trim().to_string()))
            }
            TargetSpec::Container(_) => errs.push(Problem::new(t.pos(), "empty container name")),
            TargetSpec::SwarmService(s) if !s.trim().is_empty() => {
                targets.push(BindingTarget::SwarmService(s.trim().to_string()))
            }
            TargetSpec::SwarmService(_) => {
                errs.push(Problem::new(t.pos(), "empty swarm_service name"))
            }
            TargetSpec::Exec(w) => targets.push(BindingTarget::Exec(w.clone())),
            TargetSpec::ComposeService(s) => match parse_compose_service(s) {
                Ok(t) => targets.push(t),
                Err(_) => errs.push(Problem::new(
                    t.pos(),
                    "`compose_service`: expected PROJECT/SERVICE, e.g. lambda/lambda-server (the project is the compose project name, see `docker compose ls`)",
                )),
            },
        }
    }
    let fields = Fields {
        key,
        origin: own_origin,
        restart,
        tunnel_id,
        create,
        sinks,
        targets,
    };
    (fields, errs)
}

/// An enumerated setting's bad value: the allowed words, and the value itself only when it is a
/// short word (a typo to spot); anything else may be a secret typed into the wrong place.
pub(super) fn not_one_of(key: &str, bad: &str, allowed: &[&str]) -> String {
    let short_word = !bad.is_empty()
        && bad.len() <= 20
        && bad
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if short_word {
        format!("`{key}` = {bad:?} is not one of: {}", allowed.join(", "))
    } else {
        format!("`{key}` must be one of: {}", allowed.join(", "))
    }
}

fn file_binding(
    a: &Defaults<'_>,
    env: &Env,
    fb: &FileBinding,
    restart_override: Option<RestartMode>,
) -> Result<Binding, Vec<Problem>> {
    let (f, errs) = binding_fields(fb, Some(a.origin));
    if !errs.is_empty() {
        return Err(errs);
    }
    let field = |k: &str| fb.get(k).map(|v| v.value.clone());
    let mut src = a.source.clone();
    src.domain = field("domain");
    src.app_id = field("app_id");
    let mut access = a.access.clone();
    access.url = field("url");
    // The binding's own values passed the check above: what is left is the file-wide settings
    // (the account id, the credentials), or the binding's combination of them.
    let source = SourceConfig::from_args_with(&src, env, f.origin.unwrap_or(a.origin), &access)
        .map_err(|e| vec![Problem::new((fb.line, fb.col), e.to_string())])?;
    let id = field("name")
        .or_else(|| source.host.clone())
        .or_else(|| field("app_id"))
        .unwrap_or_default();
    Ok(Binding {
        id,
        source,
        key: f.key,
        sinks: f.sinks,
        targets: f.targets,
        restart: restart_override
            .or(f.restart)
            .unwrap_or_else(|| a.restart.into()),
        tunnel_id: f.tunnel_id,
        create: f.create.unwrap_or(a.create_env_file),
        url: field("url"),
        origin: None,
    })
}

/// `PROJECT/SERVICE` -> a compose service target.
pub fn parse_compose_service(s: &str) -> Result<BindingTarget, Error> {
    match s.trim().split_once('/') {
        Some((p, svc)) if !p.is_empty() && !svc.is_empty() && !svc.contains('/') => {
            Ok(BindingTarget::ComposeService {
                project: p.to_string(),
                service: svc.to_string(),
            })
        }
        _ => Err(Error::usage(
            "--compose-service: expected PROJECT/SERVICE, e.g. lambda/lambda-server (the project is the compose project name, see `docker compose ls`)",
        )),
    }
}

/// `<file><suffix>` next to the real file: a symlink and its target share lock and state.
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut name = real
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| ".env".into());
    name.push(suffix);
    real.with_file_name(name)
}

/// `get` and `setup` work on one binding: with bindings in the config file, the one
/// `--domain` / `--app-id` names (or the only one) fills the options the command line and the
/// environment leave unset. (`verify` builds its own configuration from every binding, in
/// `config::verify`.)
pub fn select_single_binding(p: &mut Parsed) -> Result<(), Error> {
    let Some(file) = p.file.as_ref().filter(|f| !f.bindings.is_empty()) else {
        return Ok(());
    };
    let set = |id: &str| overridden(&p.origins, id);
    let (domain, app_id) = match &p.cli.command {
        Command::Get(a) => (a.source.domain.clone(), a.source.app_id.clone()),
        Command::Setup(a) => (a.sync.source.domain.clone(), a.sync.source.app_id.clone()),
        _ => return Ok(()),
    };
    let want_host = domain
        .clone()
        .filter(|_| set("domain"))
        .map(|d| crate::cloudflare::apps::host_of(&d));
    let want_app = app_id.filter(|_| set("app_id"));
    // `--domain NAME` may also name a binding by its `name` (when no binding's host is NAME).
    let by_name: Vec<&FileBinding> = match (&domain, set("domain"), &want_app) {
        (Some(d), true, None) => file
            .bindings
            .iter()
            .filter(|b| b.get("name").is_some_and(|n| n.value == *d))
            .collect(),
        _ => vec![],
    };
    let by_host: Vec<&FileBinding> = file
        .bindings
        .iter()
        .filter(|b| {
            let host = b
                .get("domain")
                .map(|d| crate::cloudflare::apps::host_of(&d.value));
            let app = b.get("app_id").map(|d| d.value.to_ascii_lowercase());
            match (&want_host, &want_app) {
                (None, None) => true,
                (h, a) => {
                    (h.is_some() && host.as_ref() == h.as_ref())
                        || (a.is_some()
                            && app.as_deref()
                                == a.as_deref().map(str::to_ascii_lowercase).as_deref())
                }
            }
        })
        .collect();
    let named = by_host.is_empty() && !by_name.is_empty();
    let candidates = if named { by_name } else { by_host };
    let b = match candidates.as_slice() {
        [one] => *one,
        [] if want_host.is_some() || want_app.is_some() => return Ok(()),
        _ => {
            let names: Vec<String> = file
                .bindings
                .iter()
                .filter_map(|b| b.get("domain").or(b.get("app_id")).map(|v| v.value.clone()))
                .collect();
            return Err(Error::usage(format!(
                "{} has {} bindings: pick one with --domain HOST ({})",
                file.path.display(),
                file.bindings.len(),
                names.join(", ")
            )));
        }
    };
    let field = |k: &str| b.get(k).map(|v| v.value.clone());
    let env_sink = b.sinks.iter().find_map(|s| match &s.value {
        SinkSpec::Env(p) => Some(p.clone()),
        _ => None,
    });
    let inf_sink = b.sinks.iter().find_map(|s| match &s.value {
        SinkSpec::Infisical(p) => Some(p.clone()),
        _ => None,
    });
    let kinds: Vec<crate::cli::SinkKind> = b
        .sinks
        .iter()
        .map(|s| match s.value {
            SinkSpec::Env(_) => crate::cli::SinkKind::Env,
            SinkSpec::Infisical(_) => crate::cli::SinkKind::Infisical,
        })
        .collect();
    let containers: Vec<String> = b
        .targets
        .iter()
        .filter_map(|t| match &t.value {
            TargetSpec::Container(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let services: Vec<String> = b
        .targets
        .iter()
        .filter_map(|t| match &t.value {
            TargetSpec::ComposeService(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let swarm: Vec<String> = b
        .targets
        .iter()
        .filter_map(|t| match &t.value {
            TargetSpec::SwarmService(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let origins = p.origins.clone();
    let unset = |id: &str| !overridden(&origins, id);
    let fill_source = |s: &mut crate::cli::SourceArgs| {
        if (unset("domain") && unset("app_id")) || named {
            s.domain = field("domain");
            s.app_id = field("app_id");
        }
        if unset("env_file")
            && let Some(e) = &env_sink
        {
            s.env_file = e.clone();
        }
        if unset("infisical_secret_path")
            && let Some(i) = &inf_sink
        {
            s.infisical.infisical_secret_path = i.clone();
        }
    };
    match &mut p.cli.command {
        Command::Get(a) => {
            fill_source(&mut a.source);
            if unset("url") && field("url").is_some() {
                a.access.url = field("url");
            }
        }
        Command::Setup(a) => {
            fill_source(&mut a.sync.source);
            let s = &mut a.sync;
            if unset("key")
                && let Some(k) = field("key")
            {
                s.key = k;
            }
            if unset("sinks") && !kinds.is_empty() {
                s.sinks = kinds;
            }
            if unset("containers") && unset("compose_services") && unset("swarm_services") {
                s.containers = containers;
                s.compose_services = services;
                s.swarm_services = swarm;
            }
            if unset("tunnel_id") && field("tunnel_id").is_some() {
                s.tunnel_id = field("tunnel_id");
            }
            if unset("restart")
                && let Some(r) = field("restart")
                && let Ok(m) = <crate::cli::RestartMode as clap::ValueEnum>::from_str(&r, false)
            {
                s.restart = m;
            }
        }
        _ => {}
    }
    Ok(())
}
