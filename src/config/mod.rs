//! Configuration: flags > process environment > the `.env` file > the config file > defaults,
//! turned into typed, validated configurations once, before anything is contacted.
//!
//! This is the only module that reads the process environment, clap's matches or the config
//! file. [`parse`] runs clap with every option's environment lookup done here, from the
//! [`layers::Env`] layers (process snapshot, `.env`, `audsync.toml`), installed as defaults:
//! so the precedence is the same for every option, tested in-process with injected variables,
//! and each value's [`Origin`] is known (`audsync config`). Secrets never come from flags;
//! [`Env::secret`] reads `NAME` or the file named by `NAME_FILE`, and returns a [`Secret`].

mod clap_errors;
pub mod commands;
pub mod credentials;
pub mod discover;
pub mod engine;
pub mod file;
mod flags;
pub mod infisical;
pub mod layers;
pub mod notify;
pub mod setup;
pub mod show;
pub mod sync;
pub mod trust;
pub mod verify;
pub mod watch;
pub mod words;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{AccessArgs, Cli, Command, Origin as SourceOrigin, SourceArgs};
use crate::cloudflare::Auth;
use crate::error::Error;
#[cfg(test)]
use crate::secret::Secret;

pub use file::FileConfig;
pub use layers::{Env, Origin, Vars};
pub use sync::{Binding, BindingSink, BindingTarget, Output, SyncConfig};

/// A parsed command line with every layer applied.
#[derive(Debug)]
pub struct Parsed {
    pub cli: Cli,
    pub env: Env,
    /// Where each option's value came from, by clap id (of the subcommand's options).
    pub origins: BTreeMap<String, Origin>,
    /// The config file, when one is used.
    pub file: Option<FileConfig>,
    /// The subcommand's matches (raw flag values for `audsync config`).
    pub matches: Option<clap::ArgMatches>,
    /// The command line as given (`watch` parses it again on SIGHUP).
    pub argv: Vec<OsString>,
}

#[derive(Debug)]
pub enum ParseError {
    Clap(clap::Error),
    Config(Error),
}

/// Parse `args` against the variables `vars` (the process environment, or a test's), reading
/// the `.env` file and the config file they name. Clap errors (including `--help`) are returned
/// as they are, for clap to print.
pub fn parse<I, T>(args: I, vars: Vars) -> Result<Parsed, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let bare = Env::new(vars.clone());
    let first = match layered_all(Cli::command(), &bare).try_get_matches_from(&args) {
        Ok(m) => m,
        // Help, version and usage errors from the command as users see it (env annotations).
        Err(_) => {
            let e = Cli::command()
                .try_get_matches_from(&args)
                .err()
                .unwrap_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidValue));
            return Err(ParseError::Clap(clap_errors::without_values(e)));
        }
    };
    let sub_name = first.subcommand_name().unwrap_or_default().to_string();
    let sub = first.subcommand().map(|(_, m)| m);
    let given = |id: &str| {
        sub.is_some_and(|m| {
            m.try_contains_id(id).unwrap_or(false)
                && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        })
    };
    // The config file: --config, AUDSYNC_CONFIG, else ./audsync.toml when present.
    let config_path: Option<PathBuf> = first.get_one::<PathBuf>("config").cloned().or_else(|| {
        let p = Path::new(file::DEFAULT_NAME);
        p.is_file().then(|| p.to_path_buf())
    });
    let ctx = trust::Context::from_vars(&vars);
    let file =
        match &config_path {
            Some(p) => Some(file::load(p, &ctx).and_then(check_file_values).map_err(
                |problems| {
                    ParseError::Config(Error::usage(format!(
                        "{} does not validate:
  {}",
                        p.display(),
                        problems.join(
                            "
  "
                        )
                    )))
                },
            )?),
            None => None,
        };
    // A config file, found or named, steers the run only when it may ([`trust`]).
    if let (Some(p), Some(Err(why))) = (
        &config_path,
        file.as_ref()
            .and_then(|f| f.facts.as_ref())
            .map(|f| &f.verdict),
    ) {
        return Err(ParseError::Config(Error::usage(untrusted_config_file(
            p, why,
        ))));
    }
    // The .env file is read for settings as it always was, unless a config file is used: then
    // only when named explicitly (the config file is where audsync's settings live).
    let env_file = sub
        .and_then(|m| m.try_get_one::<PathBuf>("env_file").ok().flatten().cloned())
        .filter(|_| file.is_none() || given("env_file") || vars.get("AUDSYNC_ENV_FILE").is_some());
    let mut env = bare;
    if let Some(f) = &file {
        env = env.with_file_layer(f.layer());
    }
    if let Some(p) = &env_file {
        env = env.with_env_file(p).map_err(ParseError::Config)?;
    }
    let cmd = layered_all(Cli::command(), &env);
    let matches = cmd
        .clone()
        .try_get_matches_from(&args)
        .map_err(|e| ParseError::Clap(clap_errors::without_values(e)))?;
    let mut origins = BTreeMap::new();
    // The variable names come from the command as defined (the layered one has none).
    let defined = Cli::command();
    if let Some(sc) = defined.find_subcommand(&sub_name)
        && let Some((_, m)) = matches.subcommand()
    {
        for a in sc.get_arguments() {
            let id = a.get_id().as_str();
            let origin = match m.try_contains_id(id).ok().and_then(|_| m.value_source(id)) {
                Some(clap::parser::ValueSource::CommandLine) => Origin::Flag,
                Some(_) => env_name(a)
                    .and_then(|n| env.lookup(&n))
                    .map(|(_, o)| o)
                    .unwrap_or(Origin::Default),
                None => continue,
            };
            origins.insert(id.to_string(), origin);
        }
    }
    let cli = Cli::from_arg_matches(&matches)
        .map_err(|e| ParseError::Clap(clap_errors::without_values(e)))?;
    env.allow_insecure_http = cli.global.allow_insecure_http;
    env.engine = cli.global.engine.map(Into::into);
    let mut parsed = Parsed {
        cli,
        env,
        origins,
        file,
        matches: matches.subcommand().map(|(_, m)| m.clone()),
        argv: args.clone(),
    };
    sync::select_single_binding(&mut parsed).map_err(ParseError::Config)?;
    Ok(parsed)
}

/// [`layered`] for the command and every subcommand.
fn layered_all(cmd: clap::Command, env: &Env) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = layered(cmd, env);
    for n in names {
        cmd = cmd.mut_subcommand(n, |sc| layered(sc, env));
    }
    cmd
}

/// Every value of the file checked at once, with the problems of its shape
/// ([`file::FileConfig::problems`]), each at the line and column of the bad value, before clap
/// would stop at the first: settings against their option's parser (and the ids and URLs
/// checked later by the build), bindings against what a binding allows. An enumerated setting
/// names the allowed values and quotes a short bad word (`restart = "recreat"`); free text is
/// never quoted (it may be a secret typed into the wrong setting).
fn check_file_values(mut f: file::FileConfig) -> Result<file::FileConfig, Vec<String>> {
    let cmd = Cli::command();
    let args: Vec<&clap::Arg> = cmd
        .get_subcommands()
        .flat_map(|s| s.get_arguments())
        .chain(cmd.get_arguments())
        .collect();
    let mut problems = std::mem::take(&mut f.problems);
    for (var, at) in &f.settings {
        let key = file::SETTINGS
            .iter()
            .find(|(_, v, _)| v == var)
            .map_or(var.as_str(), |(k, _, _)| k);
        if let Some(msg) = checked_setting(key, var, &at.value) {
            problems.push(file::Problem::new(at.pos(), msg));
            continue;
        }
        let Some(arg) = args
            .iter()
            .find(|a| env_name(a).as_deref() == Some(var.as_str()))
        else {
            continue;
        };
        let values: Vec<&str> = match arg.get_value_delimiter() {
            Some(d) => at.value.split(d).map(str::trim).collect(),
            None => vec![at.value.as_str()],
        };
        // The option's own parser, alone on a scratch command (its relations to other options
        // do not matter here).
        let probe = clap::Command::new("probe").no_binary_name(true).arg(
            clap::Arg::new("v")
                .long("v")
                .value_parser(arg.get_value_parser().clone()),
        );
        let bad = values.iter().find(|v| {
            probe
                .clone()
                .try_get_matches_from([format!("--v={v}")])
                .is_err()
        });
        let Some(bad) = bad else { continue };
        let allowed: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|p| !p.is_hide_set())
            .map(|p| p.get_name().to_string())
            .collect();
        let msg = if allowed.is_empty() {
            let what = arg
                .get_value_names()
                .and_then(|n| n.first())
                .map_or("value".to_string(), |n| n.to_string());
            format!(
                "`{key}` is not a valid {what} (see `audsync help sync` for {})",
                arg.get_long().map_or(String::new(), |l| format!("--{l}"))
            )
        } else {
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            sync::not_one_of(key, bad, &allowed)
        };
        problems.push(file::Problem::new(at.pos(), msg));
    }
    for fb in &f.bindings {
        let (_, found) = sync::binding_fields(fb, None);
        problems.extend(found);
    }
    if problems.is_empty() {
        return Ok(f);
    }
    Err(file::render(&f.path, problems))
}

/// The file-wide settings the build checks beyond their option's parser (ids, URLs), checked
/// here so that they are reported with everything else; the message names the setting, never
/// the value.
fn checked_setting(key: &str, var: &str, value: &str) -> Option<String> {
    let url_ok = |v: &str| {
        url::Url::parse(v)
            .ok()
            .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
    };
    match var {
        "CLOUDFLARE_ACCOUNT_ID" if validate_id(key, value).is_err() => Some(format!(
            "`{key}` is not a Cloudflare id (32 hex digits, dashes allowed)"
        )),
        "CLOUDFLARE_API_URL" | "INFISICAL_HOST" if !url_ok(value) => Some(format!(
            "`{key}` must be an http(s) URL with a host, e.g. {}",
            if var == "INFISICAL_HOST" {
                "https://app.infisical.com"
            } else {
                "https://api.cloudflare.com/client/v4"
            }
        )),
        "CLOUDFLARE_AUTH_DOMAIN" | "CLOUDFLARE_TEAM_NAME" => {
            let (d, t) = if var == "CLOUDFLARE_AUTH_DOMAIN" {
                (Some(value), None)
            } else {
                (None, Some(value))
            };
            crate::cloudflare::edge::configured_team_domain(d, t)
                .err()
                .map(|_| match var {
                    "CLOUDFLARE_AUTH_DOMAIN" => format!(
                        "`{key}` must be the team domain, https (plain http only to a loopback address), e.g. https://team.cloudflareaccess.com"
                    ),
                    _ => format!(
                        "`{key}` is not a team name (one DNS label: letters, digits, '-')"
                    ),
                })
        }
        _ => None,
    }
}

/// The variable an option reads, from its clap definition (`env = "…"`).
fn env_name(a: &clap::Arg) -> Option<String> {
    a.get_env()?.to_str().map(str::to_string)
}

/// The command with clap's own environment lookups replaced by the layers of `env`: each
/// option's variable, when any layer sets it, becomes its default.
fn layered(mut cmd: clap::Command, env: &Env) -> clap::Command {
    let ids: Vec<(clap::Id, String, Option<char>)> = cmd
        .get_arguments()
        .filter_map(|a| Some((a.get_id().clone(), env_name(a)?, a.get_value_delimiter())))
        .collect();
    for (id, name, delim) in ids {
        let value = env.layer_default(&name);
        cmd = cmd.mut_arg(id, |a| {
            let a = a.env(None::<&'static str>);
            match (value, delim) {
                (Some(v), Some(d)) => {
                    a.default_values(v.split(d).map(|s| s.trim().to_string()).collect::<Vec<_>>())
                }
                (Some(v), None) => a.default_value(v),
                (None, _) => a,
            }
        });
    }
    cmd
}

/// The names of audsync's own settings and credentials: every variable an option of audsync
/// reads (AUDSYNC_*, and the credentials). Finding one in an app container's environment means
/// the `.env` it shares with the app leaks it.
pub fn own_variables() -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> = [
        "CLOUDFLARE_API_TOKEN",
        "CLOUDFLARE_API_KEY",
        "INFISICAL_CLIENT_ID",
        "INFISICAL_CLIENT_SECRET",
        "INFISICAL_TOKEN",
        "AUDSYNC_TRIGGER_TOKEN",
    ]
    .iter()
    .flat_map(|n| [n.to_string(), format!("{n}_FILE")])
    .collect();
    let cmd = Cli::command();
    for sc in cmd.get_subcommands() {
        for a in sc.get_arguments() {
            if let Some(n) = env_name(a).filter(|n| n.starts_with("AUDSYNC_")) {
                names.insert(n);
            }
        }
    }
    names
}

/// Every variable name audsync reads a setting or credential from (each with its `_FILE`
/// variant): a `.env` that may not steer the run and holds one of these stops the run.
pub fn setting_names() -> std::collections::BTreeSet<String> {
    let mut names = own_variables();
    names.extend(["CLOUDFLARE_EMAIL".to_string()]);
    let cmd = Cli::command();
    for a in cmd.get_arguments() {
        names.extend(env_name(a));
    }
    for sc in cmd.get_subcommands() {
        for a in sc.get_arguments() {
            names.extend(env_name(a));
        }
    }
    let with_files: Vec<String> = names.iter().map(|n| format!("{n}_FILE")).collect();
    names.extend(with_files);
    names
}

/// The message for a config file that may not steer the run.
fn untrusted_config_file(path: &Path, why: &trust::Untrusted) -> String {
    let owner = if why.uid == 0 || why.uid == why.me {
        String::new()
    } else {
        format!("; or run audsync as its owner (uid {})", why.uid)
    };
    format!(
        "the config file {} may not steer this run: {why}. Use a config file owned by root or by the user running audsync (e.g. /etc/audsync/audsync.toml, mode 0600, passed with --config), or run {}{owner}",
        path.display(),
        why.fix()
    )
}

/// This machine's host name, for notifications (`uname -n`).
pub fn host_name() -> String {
    let n = rustix::system::uname();
    let name = n.nodename().to_string_lossy().trim().to_string();
    if name.is_empty() {
        "unknown-host".into()
    } else {
        name
    }
}

/// The bearer token `POST /sync` requires (AUDSYNC_TRIGGER_TOKEN or
/// AUDSYNC_TRIGGER_TOKEN_FILE); `None`: the route is off.
pub fn trigger_token(env: &Env) -> Result<Option<crate::secret::Secret>, Error> {
    let Some(t) = env.secret("AUDSYNC_TRIGGER_TOKEN")? else {
        return Ok(None);
    };
    if t.expose().trim().chars().count() < 16 {
        return Err(Error::usage(
            "AUDSYNC_TRIGGER_TOKEN is shorter than 16 characters; make a long random one, e.g. `openssl rand -hex 32`",
        ));
    }
    Ok(Some(crate::secret::Secret::new(t.expose().trim())))
}

/// The subcommand of a parsed command line.
pub fn command(p: &Parsed) -> &Command {
    &p.cli.command
}

/// Which application to read.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Host(String),
    AppId(String),
}

/// Everything needed to ask Cloudflare for the AUD, validated.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub api_url: String,
    pub auth: Auth,
    pub account_id: Option<String>,
    pub selector: Selector,
    /// The host, when known (also with --app-id if --domain was given too).
    pub host: Option<String>,
    pub timeout: std::time::Duration,
    /// Set by `--source edge`: learn the AUD from the protected host instead of the API.
    pub edge: Option<EdgeSource>,
}

/// Where `--source edge` asks.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeSource {
    /// The protected host's URL (`--url`, default `https://HOST/`).
    pub url: String,
    /// The binding's host: the signed metadata must name it, wherever `url` points.
    pub host: String,
    /// The configured team domain, when any (pins where the metadata's keys are fetched).
    pub team_domain: Option<String>,
    /// `--allow-unsigned-kid`: the login redirect's unsigned `kid` may be the AUD.
    pub allow_unsigned_kid: bool,
}

impl SourceConfig {
    pub fn from_args(a: &SourceArgs, env: &Env) -> Result<SourceConfig, Error> {
        let host = match &a.domain {
            Some(d) => Some(validate_binding_domain(d)?),
            None => None,
        };
        let selector = match (&a.app_id, &host) {
            (Some(id), _) => Selector::AppId(validate_id("--app-id", id)?),
            (None, Some(h)) => Selector::Host(h.clone()),
            (None, None) => {
                return Err(Error::usage(
                    "no application given: pass --domain HOST (or AUDSYNC_DOMAIN) or --app-id UUID (or AUDSYNC_APP_ID)",
                ));
            }
        };
        let account_id = match &a.account_id {
            Some(id) => Some(validate_id("--account-id / CLOUDFLARE_ACCOUNT_ID", id)?),
            None => None,
        };
        let url = url::Url::parse(&a.api_url).map_err(|e| {
            Error::usage(format!(
                "--api-url / CLOUDFLARE_API_URL does not parse as a URL: {e}"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::usage(
                "--api-url / CLOUDFLARE_API_URL must be an http(s) URL",
            ));
        }
        check_credential_url("--api-url / CLOUDFLARE_API_URL", &url, env)?;
        Ok(SourceConfig {
            api_url: a.api_url.clone(),
            auth: cloudflare_auth(env)?,
            account_id,
            selector,
            host,
            timeout: a.timeout,
            edge: None,
        })
    }

    /// [`SourceConfig::from_args`] for commands with `--source`. With `edge`, Cloudflare
    /// credentials are optional (used only when given) and the host comes from --domain or --url.
    pub fn from_args_with(
        a: &SourceArgs,
        env: &Env,
        origin: SourceOrigin,
        access: &AccessArgs,
    ) -> Result<SourceConfig, Error> {
        if origin == SourceOrigin::Api {
            return Self::from_args(a, env);
        }
        if a.app_id.is_some() {
            return Err(Error::usage(
                "--app-id needs --source api: the edge knows hosts, not application ids",
            ));
        }
        let url = access.url.as_deref().map(validate_url).transpose()?;
        // The binding's domain: a host, or a host and a path for an application that covers
        // only that path; the edge is asked under that path, the metadata must name the host.
        let domain = match (&a.domain, &url) {
            (Some(d), _) => validate_binding_domain(d)?,
            (None, Some(u)) => validate_host(u.host_str().unwrap_or(""))?,
            (None, None) => {
                return Err(Error::usage(
                    "--source edge needs the protected host: pass --domain HOST (or --url URL)",
                ));
            }
        };
        let host = crate::cloudflare::apps::host_of(&domain);
        let url = reach_url(&domain, url);
        let any_credential = has_cloudflare_credentials(env);
        let auth = if any_credential {
            if let Ok(u) = url::Url::parse(&a.api_url) {
                check_credential_url("--api-url / CLOUDFLARE_API_URL", &u, env)?;
            }
            cloudflare_auth(env)?
        } else {
            Auth::None
        };
        let account_id = match &a.account_id {
            Some(id) => Some(validate_id("--account-id / CLOUDFLARE_ACCOUNT_ID", id)?),
            None => None,
        };
        Ok(SourceConfig {
            api_url: a.api_url.clone(),
            auth,
            account_id,
            selector: Selector::Host(domain.clone()),
            host: Some(domain),
            timeout: a.timeout,
            edge: Some(EdgeSource {
                url,
                host,
                team_domain: crate::cloudflare::edge::configured_team_domain(
                    access.auth_domain.as_deref(),
                    access.team_name.as_deref(),
                )
                .map_err(|e| Error::usage(e.to_string()))?,
                allow_unsigned_kid: access.allow_unsigned_kid,
            }),
        })
    }
}

/// Credentials go over https, or plain http to a loopback address; anything else is a usage
/// error before any connection, unless `--allow-insecure-http` / `AUDSYNC_ALLOW_INSECURE_HTTP`.
pub fn check_credential_url(setting: &str, url: &url::Url, env: &Env) -> Result<(), Error> {
    if crate::http::credential_safe(url) || env.allow_insecure_http {
        return Ok(());
    }
    Err(Error::usage(format!(
        "{setting} {}://{}: credentials are sent only over https (or plain http to a loopback address); use https, or pass --allow-insecure-http (AUDSYNC_ALLOW_INSECURE_HTTP=1) if this network is yours",
        url.scheme(),
        url.host_str().unwrap_or("")
    )))
}

/// Where a binding's host is reached to be probed: `--url` when given (with the binding's
/// path when the URL names none: `--url` says where the host is, `domain` which part of it),
/// else `https://DOMAIN` (`https://HOST/` for a whole host).
pub fn reach_url(domain: &str, url: Option<url::Url>) -> String {
    let path = crate::cloudflare::apps::path_of(domain);
    match (url, path) {
        (Some(mut u), Some(p)) if u.path() == "/" || u.path().is_empty() => {
            u.set_path(&p);
            u.to_string()
        }
        (Some(u), _) => u.to_string(),
        (None, Some(_)) => format!("https://{domain}"),
        (None, None) => format!("https://{domain}/"),
    }
}

/// An http(s) URL given by --url.
pub fn validate_url(u: &str) -> Result<url::Url, Error> {
    let url = url::Url::parse(u)
        .map_err(|e| Error::usage(format!("--url does not parse as a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::usage("--url must be an http(s) URL with a host"));
    }
    Ok(url)
}

/// True when any Cloudflare credential (token, email or key, or a `_FILE` of one) is set in the
/// process environment or the `.env` file. Only then are credentials *not* read from Infisical.
pub fn has_cloudflare_credentials(env: &Env) -> bool {
    [
        "CLOUDFLARE_API_TOKEN",
        "CLOUDFLARE_EMAIL",
        "CLOUDFLARE_API_KEY",
    ]
    .iter()
    .any(|n| env.get(n).is_some() || env.get(&format!("{n}_FILE")).is_some())
}

/// Token, else email + global key, each possibly from `<NAME>_FILE`. When none is set and the
/// credentials phase will read them from Infisical (or the build already reported them
/// missing), `Auth::None`.
pub fn cloudflare_auth(env: &Env) -> Result<Auth, Error> {
    if env.defer_cloudflare_auth && !has_cloudflare_credentials(env) {
        return Ok(Auth::None);
    }
    if let Some(t) = env.secret("CLOUDFLARE_API_TOKEN")? {
        return Ok(Auth::Token(t));
    }
    let email = env.get("CLOUDFLARE_EMAIL");
    let key = env.secret("CLOUDFLARE_API_KEY")?;
    match (email, key) {
        (Some(email), Some(key)) => Ok(Auth::GlobalKey { email, key }),
        (Some(_), None) => Err(Error::usage(
            "CLOUDFLARE_EMAIL is set but CLOUDFLARE_API_KEY is not: set both, or use CLOUDFLARE_API_TOKEN",
        )),
        (None, Some(_)) => Err(Error::usage(
            "CLOUDFLARE_API_KEY is set but CLOUDFLARE_EMAIL is not: set both, or use CLOUDFLARE_API_TOKEN",
        )),
        (None, None) => Err(Error::usage(format!(
            "no Cloudflare credentials: set CLOUDFLARE_API_TOKEN (or CLOUDFLARE_API_TOKEN_FILE), or CLOUDFLARE_EMAIL + CLOUDFLARE_API_KEY, in the environment or in {} (or in Infisical, with INFISICAL_PROJECT_ID and its credentials set)",
            env.env_file
                .as_deref()
                .unwrap_or(Path::new(".env"))
                .display()
        ))),
    }
}

/// A binding's `domain`: a host, or a host and a path (`api.example.com/docs`) for an
/// application that covers only that path. The path keeps its case (paths are case-sensitive);
/// a trailing `/` is dropped.
pub fn validate_binding_domain(d: &str) -> Result<String, Error> {
    let host = validate_host(d)?;
    let Some(path) = crate::cloudflare::apps::path_of(d) else {
        return Ok(host);
    };
    let ok = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~/%".contains(c))
        && !path.contains("//");
    if ok {
        Ok(format!("{host}{path}"))
    } else {
        // The value is not repeated: free text may be a secret pasted into the wrong place.
        Err(Error::usage(
            "--domain: the part after the host is not a plain URL path (letters, digits, -._~/%; expected e.g. api.example.com/docs)",
        ))
    }
}

pub fn validate_host(d: &str) -> Result<String, Error> {
    let h = crate::cloudflare::apps::host_of(d);
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '*');
    if ok {
        Ok(h)
    } else {
        Err(Error::usage(
            "--domain is not a host name (expected e.g. api.example.com; the value is not repeated here)",
        ))
    }
}

pub fn validate_id(flag: &str, id: &str) -> Result<String, Error> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(Error::usage(format!(
            // The value is not repeated: free text may be a secret pasted into the wrong place.
            "{flag} is not a Cloudflare id (32 hex digits, dashes allowed)"
        )))
    }
}

/// A variable name a .env file and a container environment can both carry.
pub fn validate_key(key: &str) -> Result<(), Error> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(Error::usage(
            "--key is not a variable name (letters, digits, _)",
        ))
    }
}

#[cfg(test)]
mod validator_tests {
    use super::*;

    #[test]
    fn ids_and_hosts_are_validated() {
        assert!(validate_id("--app-id", "0f3ad5f4-0000-4000-8000-00000000abcd").is_ok());
        assert!(validate_id("--app-id", "nope").is_err());
        assert_eq!(validate_host("API.example.com").unwrap(), "api.example.com");
        assert!(validate_host("api example").is_err());
        assert_eq!(
            validate_binding_domain("API.example.com/Docs/").unwrap(),
            "api.example.com/Docs"
        );
        assert_eq!(
            validate_binding_domain("api.example.com").unwrap(),
            "api.example.com"
        );
        assert!(validate_binding_domain("api.example.com/a b").is_err());
        assert!(validate_key("CLOUDFLARE_AUD_TAG").is_ok());
        assert!(validate_key("1X").is_err());
        assert!(validate_key("A-B").is_err());
    }
}

/// The Docker daemon's address when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// `DOCKER_HOST` from the process environment (as the docker CLI reads it), checked before
/// anything is contacted: `unix:///absolute/path`, or `tcp://HOST:PORT` / `http://HOST:PORT`.
/// Anything else is a usage error.
///
/// Without `DOCKER_HOST`, `--engine podman` looks for Podman's socket ([`engine::podman_host`]);
/// `DOCKER_HOST` wins when both are set (it names one socket, the engine flag only where to
/// look), as it does for the docker and podman-remote CLIs.
pub fn docker_host(env: &Env) -> Result<String, Error> {
    let Some(h) = env.process().get("DOCKER_HOST") else {
        return match env.engine {
            Some(engine::Engine::Podman) => engine::podman_host(env),
            _ => Ok(DEFAULT_DOCKER_HOST.to_string()),
        };
    };
    let bad = |why: &str| {
        Error::usage(format!(
            "DOCKER_HOST does not parse: {why}; use unix:///var/run/docker.sock, or tcp://HOST:2375"
        ))
    };
    if let Some(path) = h.strip_prefix("unix://") {
        if !path.starts_with('/') || path.len() < 2 {
            return Err(bad("a unix socket needs an absolute path (unix:///path)"));
        }
        return Ok(h.to_string());
    }
    if h.starts_with("tcp://") || h.starts_with("http://") {
        let u = url::Url::parse(&h.replacen("tcp://", "http://", 1))
            .map_err(|e| bad(&e.to_string()))?;
        if u.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if !u.username().is_empty() || u.password().is_some() || u.query().is_some() {
            return Err(bad("user, password or query are not supported"));
        }
        if !matches!(u.path(), "" | "/") {
            return Err(bad("a path is not supported"));
        }
        return Ok(h.to_string());
    }
    Err(bad(
        "the scheme must be unix:// or tcp:// (http://); ssh:// and TLS are not supported",
    ))
}

#[cfg(test)]
mod docker_host_tests {
    use super::*;

    fn with(v: &str) -> Result<String, Error> {
        docker_host(&Env::new(Vars::from_pairs([("DOCKER_HOST", v)])))
    }

    #[test]
    fn docker_host_that_does_not_parse_is_a_usage_error() {
        assert_eq!(
            docker_host(&Env::new(Vars::from_pairs::<&str, &str>([]))).unwrap(),
            DEFAULT_DOCKER_HOST
        );
        for ok in [
            "unix:///run/docker.sock",
            "tcp://127.0.0.1:2375",
            "http://docker:2375",
        ] {
            assert_eq!(with(ok).unwrap(), ok);
        }
        for bad in [
            "/var/run/docker.sock",
            "unix://relative",
            "tcp://",
            "tcp://h:99999",
            "ssh://u@h",
            "fd://",
            "tcp://h:1/x",
        ] {
            let e = with(bad).unwrap_err();
            assert!(matches!(e, Error::Usage { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("DOCKER_HOST"), "{e}");
        }
    }
}

#[cfg(test)]
mod tests;
