//! `verify`'s typed configuration and the names of its checks: what to compare (the sinks,
//! the containers, the tunnel rule) and what to check a token against.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::VerifyArgs;
use crate::error::Error;
use crate::secret::Secret;
use crate::sink::SinkKind;
use crate::sink::infisical;

use crate::cloudflare::edge;

use super::{self as config, Env, SourceConfig};

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub host: String,
    pub url: String,
    /// Configured team domain (CLOUDFLARE_AUTH_DOMAIN / CLOUDFLARE_TEAM_NAME), if any.
    pub team_domain: Option<String>,
    pub key: String,
    pub env_file: PathBuf,
    /// The sinks of `--sink` (as `sync`): which of the .env file and Infisical to read.
    pub sinks: Vec<SinkKind>,
    /// With `--sink infisical`: the Infisical folder, or `None` when Infisical is not configured.
    pub infisical: Option<infisical::Settings>,
    pub containers: Vec<String>,
    pub tunnel_id: Option<String>,
    pub token: Option<Secret>,
    pub skip: Vec<Check>,
    /// The Cloudflare API, when credentials are configured.
    pub api: Option<SourceConfig>,
    pub timeout: Duration,
    /// The Docker daemon's address (`DOCKER_HOST`, checked).
    pub docker_host: String,
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
            let k = SinkKind::from(*k);
            if !sinks.contains(&k) {
                sinks.push(k);
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
            skip: a.skip.iter().map(|&c| c.into()).collect(),
            api,
            timeout: a.source.timeout,
        })
    }
}
