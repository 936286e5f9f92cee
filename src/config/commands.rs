//! The typed configurations of the commands built on `sync`'s: `setup`, `verify` and `watch`
//! (and `sync`'s own, with the Cloudflare credentials read from Infisical when they are set
//! nowhere else). Like the rest of `config`, the only place that reads their clap types.

use std::ffi::OsString;

use crate::cli::{Command, Origin, SetupArgs, SyncArgs, VerifyArgs, WatchArgs};
use crate::cloudflare::policies::Rules;
use crate::cloudflare::{apps, edge};
use crate::error::Error;
use crate::secret::Secret;
use crate::setup::{SetupConfig, go_duration};
use crate::sink::SinkKind;
use crate::verify::VerifyConfig;
use crate::watch::WatchConfig;

use super::{self as config, Env, ParseError, Parsed, SourceConfig, SyncConfig, Vars};

/// The `sync` configuration, reading the Cloudflare credentials from Infisical when they are
/// set nowhere else.
pub async fn sync_config(args: &SyncArgs, p: &Parsed) -> Result<SyncConfig, Error> {
    let state_file = match (&args.state_file, &p.file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(f)) => Some(super::sync::sidecar(&f.path, ".audsync-state.json")),
        (None, None) => None,
    };
    let env =
        super::resolve_credentials_at(&args.source, state_file.as_deref(), p.env.clone(), |e| {
            SyncConfig::build(args, e, p.file.as_ref(), &p.origins).map(drop)
        })
        .await?;
    SyncConfig::build(args, &env, p.file.as_ref(), &p.origins)
}

/// The `setup` configuration (credentials from Infisical as for `sync`). With a config file,
/// its one lock and state file are `setup`'s too, so `setup` and `sync` of one stack take turns.
pub async fn setup_config(args: &SetupArgs, p: &Parsed) -> Result<SetupConfig, Error> {
    let state_file = match (&args.sync.state_file, &p.file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(f)) => Some(super::sync::sidecar(&f.path, ".audsync-state.json")),
        (None, None) => None,
    };
    let env = super::resolve_credentials_at(
        &args.sync.source,
        state_file.as_deref(),
        p.env.clone(),
        |e| SetupConfig::from_args(args, e).map(drop),
    )
    .await?;
    let mut cfg = SetupConfig::from_args(args, &env)?;
    if let Some(f) = &p.file {
        if args.sync.state_file.is_none() {
            cfg.sync.state_file = super::sync::sidecar(&f.path, ".audsync-state.json");
        }
        cfg.sync.lock_file = super::sync::sidecar(&f.path, ".audsync.lock");
        cfg.sync.config_file = Some(f.path.clone());
        if let Some(i) = cfg.sync.infisical.as_mut() {
            i.state_file = Some(cfg.sync.state_file.clone());
        }
    }
    Ok(cfg)
}

/// The `watch` configuration of a parsed `watch` command line.
pub async fn watch_config(p: &Parsed) -> Result<WatchConfig, Error> {
    match &p.cli.command {
        Command::Watch(a) => WatchConfig::load(a, p).await,
        _ => Err(Error::usage("not a watch command line")),
    }
}

/// Parse the original command line again (SIGHUP): the `.env` and config files are read anew.
pub async fn reload_watch(argv: &[OsString], vars: &Vars) -> Result<WatchConfig, String> {
    let p = super::parse(argv.iter().cloned(), vars.clone()).map_err(|e| match e {
        ParseError::Clap(e) => e.to_string().trim().to_string(),
        ParseError::Config(e) => e.to_string(),
    })?;
    watch_config(&p).await.map_err(|e| e.to_string())
}

impl WatchConfig {
    /// Validate, then read the Cloudflare credentials from Infisical when they are set nowhere
    /// else (as `sync` does).
    pub async fn load(a: &WatchArgs, p: &Parsed) -> Result<WatchConfig, Error> {
        if a.interval.is_zero() {
            return Err(Error::usage(
                "--interval / AUDSYNC_INTERVAL must be longer than 0 (e.g. 30s, 5m)",
            ));
        }
        let trigger_token = super::trigger_token(&p.env)?;
        let sync = sync_config(&a.sync, p).await?;
        Ok(WatchConfig {
            trigger_token,
            sync,
            interval: a.interval,
            jitter: a.jitter,
            listen: a.listen,
            unhealthy_after: a.unhealthy_after.unwrap_or(a.interval.saturating_mul(3)),
        })
    }
}

impl SetupConfig {
    pub fn from_args(a: &SetupArgs, env: &Env) -> Result<SetupConfig, Error> {
        if a.sync.origin == Origin::Edge {
            return Err(Error::usage(
                "setup creates and changes things through the Cloudflare API: --source edge is for sync and get",
            ));
        }
        if a.sync.source.app_id.is_some() {
            return Err(Error::usage(
                "setup finds or creates the application by host: pass --domain HOST instead of --app-id",
            ));
        }
        let sync = SyncConfig::build(&a.sync, env, None, &Default::default())?;
        let Some(host) = sync.single().source.host.clone() else {
            return Err(Error::usage(
                "setup needs --domain HOST (or AUDSYNC_DOMAIN)",
            ));
        };
        if host.contains('*') {
            return Err(Error::usage(
                "--domain: setup creates an application for one host, not a wildcard",
            ));
        }
        if let Err(why) = go_duration(&a.session_duration) {
            return Err(Error::usage(format!(
                "--session-duration {:?}: {why}; Cloudflare takes a Go duration: numbers with the units ns, us (or µs), ms, s, m, h, e.g. 24h, 30m, 2h45m (not 1d or 30min)",
                a.session_duration
            )));
        }
        let emails: Vec<String> = a
            .access_emails
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if let Some(bad) = emails
            .iter()
            .find(|e| !e.contains('@') || e.contains(char::is_whitespace))
        {
            return Err(Error::usage(format!(
                "CLOUDFLARE_ACCESS_EMAILS: {bad:?} is not an email address"
            )));
        }
        let email_domain = a
            .access_email_domain
            .as_deref()
            .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
            .filter(|d| !d.is_empty());
        if let Some(d) = &email_domain
            && (!d.contains('.') || d.contains(['@', '/', ' ']))
        {
            return Err(Error::usage(format!(
                "CLOUDFLARE_ACCESS_EMAIL_DOMAIN: {d:?} is not a domain (expected e.g. example.com)"
            )));
        }
        let everyone = a.allow_everyone && emails.is_empty() && email_domain.is_none();
        let idp = match &a.idp_id {
            Some(id) => Some(config::validate_id("--idp-id / GOOGLE_IDP_ID", id)?),
            None => None,
        };
        let team = sync.team.clone();
        if sync.single().tunnel_id.is_some() && team.is_none() {
            return Err(Error::usage(
                "CLOUDFLARE_TUNNEL_ID is set, and requiring Access on its route needs the team name: set CLOUDFLARE_TEAM_NAME, or CLOUDFLARE_AUTH_DOMAIN=https://<team>.cloudflareaccess.com",
            ));
        }
        Ok(SetupConfig {
            app_name: a
                .app_name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| apps::default_app_name(&host)),
            host,
            session_duration: a.session_duration.clone(),
            policy_name: a.policy_name.clone(),
            rules: Rules {
                emails,
                email_domain,
                everyone,
            },
            idp,
            team,
            sync,
        })
    }
}

impl VerifyConfig {
    pub fn from_args(a: &VerifyArgs, env: &Env) -> Result<VerifyConfig, Error> {
        config::validate_key(&a.key)?;
        let url = a
            .access
            .url
            .as_deref()
            .map(config::validate_url)
            .transpose()?;
        let host = match (&a.source.domain, &url) {
            (Some(d), _) => config::validate_host(d)?,
            (None, Some(u)) => config::validate_host(u.host_str().unwrap_or(""))?,
            (None, None) => return Err(Error::usage("verify needs --domain HOST (or --url URL)")),
        };
        let token = match (&a.token, &a.token_file) {
            (Some(t), _) => Some(Secret::new(t.trim())),
            (None, Some(p)) => {
                let raw = crate::fsx::read_secret_file(p)
                    .map_err(|e| Error::usage(format!("--token-file {}: {e}", p.display())))?;
                let t = raw.trim();
                if t.is_empty() {
                    return Err(Error::usage(format!(
                        "--token-file {}: the file is empty",
                        p.display()
                    )));
                }
                Some(Secret::new(t))
            }
            (None, None) => None,
        };
        let any_credential = crate::config::has_cloudflare_credentials(env);
        let api = if any_credential {
            let mut s = a.source.clone();
            s.domain = Some(host.clone());
            Some(SourceConfig::from_args(&s, env)?)
        } else {
            None
        };
        let tunnel_id = match &a.tunnel_id {
            Some(t) => Some(config::validate_id(
                "--tunnel-id / CLOUDFLARE_TUNNEL_ID",
                t,
            )?),
            None => None,
        };
        let mut sinks: Vec<SinkKind> = Vec::new();
        for k in &a.sinks {
            if !sinks.contains(k) {
                sinks.push(*k);
            }
        }
        // Unconfigured Infisical is reported by the check (not checked); half a configuration
        // is a usage error, as for `sync`.
        let infisical = if sinks.contains(&SinkKind::Infisical) {
            crate::config::infisical::infisical_settings(
                &a.source.infisical,
                env,
                a.source.timeout,
            )?
        } else {
            None
        };
        let docker_host = config::docker_host(env)?;
        Ok(VerifyConfig {
            docker_host,
            url: url.map_or_else(|| format!("https://{host}/"), |u| u.to_string()),
            host,
            team_domain: edge::team_domain(
                a.access.auth_domain.as_deref(),
                a.access.team_name.as_deref(),
            ),
            key: a.key.clone(),
            env_file: a.source.env_file.clone(),
            sinks,
            infisical,
            containers: a
                .containers
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            tunnel_id,
            token,
            skip: a.skip.clone(),
            api,
            timeout: a.source.timeout,
        })
    }
}
