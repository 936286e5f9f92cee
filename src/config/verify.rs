//! `verify`'s typed configuration and the names of its checks: what to compare (the sinks,
//! the targets, the tunnel rule) and what to check a token against.
//!
//! Flag-only (no config file, or one without bindings): one binding from the flags, exactly as
//! always. With a config file's `[[binding]]` tables: every binding (or the one `--domain` /
//! `--app-id` picks), each with its own key, sinks and targets, built by the same code as
//! `sync`'s bindings ([`super::sync::file_bindings`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{Origin as SourceOrigin, VerifyArgs};
use crate::error::Error;
use crate::secret::Secret;
use crate::sink::SinkKind;
use crate::sink::infisical;

use crate::cloudflare::edge;

use super::sync::{BindingSink, BindingTarget, Defaults, file_bindings};
use super::{self as config, Env, FileConfig, Origin, SourceConfig};

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// What to verify: the flags' one binding, or the config file's (those `--domain` picks).
    pub bindings: Vec<VerifyBinding>,
    /// The config file the bindings came from: then each binding gets a section of its own.
    pub config_file: Option<PathBuf>,
    /// Configured team domain (CLOUDFLARE_AUTH_DOMAIN / CLOUDFLARE_TEAM_NAME), if any.
    pub team_domain: Option<String>,
    pub token: Option<Secret>,
    pub skip: Vec<Check>,
    pub timeout: Duration,
    /// The Docker daemon's address (`DOCKER_HOST`, checked).
    pub docker_host: String,
}

/// One binding to verify: its host, its key, where `sync` writes it and what reads it.
#[derive(Debug, Clone)]
pub struct VerifyBinding {
    /// How the report names it (the binding's `name`, else its host).
    pub id: String,
    /// The binding's domain: a host, or a host and a path (`api.example.com/docs`).
    pub host: String,
    pub url: String,
    pub key: String,
    /// Read (never written) to compare.
    pub sinks: Vec<VerifySink>,
    pub targets: Vec<BindingTarget>,
    /// True when the targets were configured (a config file's binding): one that cannot be
    /// found is a failure. The flags' (whose default container may well not exist here) are
    /// reported `not checked` instead.
    pub targets_required: bool,
    pub tunnel_id: Option<String>,
    /// The Cloudflare API for this binding's application, when credentials are configured.
    pub api: Option<SourceConfig>,
}

/// A place `sync` writes the binding's value.
#[derive(Debug, Clone)]
pub enum VerifySink {
    Env(PathBuf),
    /// The Infisical folder (the project settings with the sink's secret path), or `None`
    /// when Infisical is not configured (reported `not checked`).
    Infisical(Option<infisical::Settings>),
}

impl VerifyBinding {
    /// The `.env` files among the sinks.
    pub fn env_files(&self) -> impl Iterator<Item = &PathBuf> {
        self.sinks.iter().filter_map(|s| match s {
            VerifySink::Env(p) => Some(p),
            VerifySink::Infisical(_) => None,
        })
    }
}

/// The checks of `verify`, in debugging order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// The Cloudflare API token itself (tokens/verify: status, expiry).
    Credential,
    Redirect,
    Certs,
    Consistency,
    Token,
}

impl VerifyConfig {
    /// Build from the `verify` flags, the layers and (when it has bindings) the config file.
    pub fn build(
        a: &VerifyArgs,
        env: &Env,
        file: Option<&FileConfig>,
        origins: &BTreeMap<String, Origin>,
    ) -> Result<VerifyConfig, Error> {
        match file.filter(|f| !f.bindings.is_empty()) {
            None => Self::from_args(a, env),
            Some(f) => Self::from_file(a, env, f, origins),
        }
    }

    /// The flag-only configuration: one binding, from the flags.
    pub fn from_args(a: &VerifyArgs, env: &Env) -> Result<VerifyConfig, Error> {
        config::validate_key(&a.key)?;
        let url = a
            .access
            .url
            .as_deref()
            .map(config::validate_url)
            .transpose()?;
        // A host, or a host and a path (an application that covers only that path).
        let host = match (&a.source.domain, &url) {
            (Some(d), _) => config::validate_binding_domain(d)?,
            (None, Some(u)) => config::validate_host(u.host_str().unwrap_or(""))?,
            (None, None) => return Err(Error::usage("verify needs --domain HOST (or --url URL)")),
        };
        let token = token(a)?;
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
        let mut kinds: Vec<SinkKind> = Vec::new();
        for k in &a.sinks {
            let k = SinkKind::from(*k);
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        // Unconfigured Infisical is reported by the check (not checked); half a configuration
        // is a usage error, as for `sync`.
        let infisical = if kinds.contains(&SinkKind::Infisical) {
            crate::config::infisical::infisical_settings(
                &a.source.infisical,
                env,
                a.source.timeout,
            )?
        } else {
            None
        };
        let sinks = kinds
            .iter()
            .map(|k| match k {
                SinkKind::Env => VerifySink::Env(a.source.env_file.clone()),
                SinkKind::Infisical => VerifySink::Infisical(infisical.clone()),
            })
            .collect();
        let docker_host = config::docker_host(env)?;
        Ok(VerifyConfig {
            bindings: vec![VerifyBinding {
                id: host.clone(),
                url: config::reach_url(&host, url),
                host,
                key: a.key.clone(),
                sinks,
                targets: a
                    .containers
                    .iter()
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .map(BindingTarget::Container)
                    .collect(),
                targets_required: false,
                tunnel_id,
                api,
            }],
            config_file: None,
            docker_host,
            team_domain: team_domain(a),
            token,
            skip: a.skip.iter().map(|&c| c.into()).collect(),
            timeout: a.source.timeout,
        })
    }

    /// Every binding of the config file (or the one `--domain` / `--app-id` picks), each with
    /// its own key, sinks and targets; every problem listed at once.
    fn from_file(
        a: &VerifyArgs,
        env: &Env,
        f: &FileConfig,
        origins: &BTreeMap<String, Origin>,
    ) -> Result<VerifyConfig, Error> {
        let mut problems: Vec<String> = Vec::new();
        // verify checks what it can without Cloudflare credentials: never require them.
        let mut lenient = env.clone();
        lenient.defer_cloudflare_auth = true;
        let defaults = Defaults {
            origin: SourceOrigin::Api,
            source: &a.source,
            access: &a.access,
            restart: crate::cli::RestartMode::None,
            create_env_file: false,
        };
        // `--url` names where one host is reached: taken when one binding is verified (the
        // file has one), refused as a binding option otherwise.
        let url_flag = super::sync::overridden(origins, "url") && f.bindings.len() == 1;
        let mut origins = origins.clone();
        if url_flag {
            origins.remove("url");
        }
        let mut built = file_bindings(&defaults, &lenient, f, &origins, &mut problems);
        if url_flag && let Some(b) = built.first_mut() {
            b.url.clone_from(&a.access.url);
        }
        let wants_infisical = built.iter().any(|b| {
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
                Ok(s) => s,
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            }
        } else {
            None
        };
        let any_credential = crate::config::has_cloudflare_credentials(env);
        let mut bindings = Vec::new();
        for b in built {
            let Some(host) = b.source.host.clone() else {
                problems.push(format!(
                    "binding {}: verify needs the host it protects: give it `domain`",
                    b.id
                ));
                continue;
            };
            let url = match b.url.as_deref().map(config::validate_url).transpose() {
                Ok(u) => config::reach_url(&host, u),
                Err(e) => {
                    problems.push(format!(
                        "binding {}: {}",
                        b.id,
                        e.to_string().replace("--url", "url")
                    ));
                    continue;
                }
            };
            let sinks = b
                .sinks
                .iter()
                .map(|s| match s {
                    BindingSink::Env(p) => VerifySink::Env(p.clone()),
                    BindingSink::Infisical(folder) => {
                        VerifySink::Infisical(infisical.clone().map(|mut i| {
                            i.secret_path = crate::infisical::normalize_path(folder);
                            i
                        }))
                    }
                })
                .collect();
            let api = any_credential.then(|| {
                // verify asks the API whatever the binding learns its value from.
                let mut s = b.source.clone();
                s.edge = None;
                s
            });
            bindings.push(VerifyBinding {
                id: b.id,
                host,
                url,
                key: b.key,
                sinks,
                targets: b.targets,
                targets_required: true,
                tunnel_id: b.tunnel_id,
                api,
            });
        }
        let token = match token(a) {
            Ok(t) => t,
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        if token.is_some() && bindings.len() > 1 {
            problems.push(format!(
                "a token belongs to one application: pick its binding with --domain HOST ({})",
                bindings
                    .iter()
                    .map(|b| b.host.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let docker_host = match config::docker_host(env) {
            Ok(h) => h,
            Err(e) => {
                problems.push(e.to_string());
                String::new()
            }
        };
        if !problems.is_empty() {
            return Err(Error::usage(format!(
                "{} does not validate:\n  {}",
                f.path.display(),
                problems.join("\n  ")
            )));
        }
        Ok(VerifyConfig {
            bindings,
            config_file: Some(f.path.clone()),
            team_domain: team_domain(a),
            token,
            skip: a.skip.iter().map(|&c| c.into()).collect(),
            timeout: a.source.timeout,
            docker_host,
        })
    }
}

fn team_domain(a: &VerifyArgs) -> Option<String> {
    edge::team_domain(
        a.access.auth_domain.as_deref(),
        a.access.team_name.as_deref(),
    )
}

/// The token to check (`--token`, else the contents of `--token-file`).
fn token(a: &VerifyArgs) -> Result<Option<Secret>, Error> {
    Ok(match (&a.token, &a.token_file) {
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
    })
}
