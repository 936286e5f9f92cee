//! Infisical's part of the configuration: the `--infisical-*` flags and the `INFISICAL_*`
//! variables turned into checked [`infisical::Settings`], and the Cloudflare credentials read
//! from Infisical into the lowest layer of [`Env`]. (To be folded into `config/`.)
//!
//! The only place that reads Infisical flags and variables: the client in [`crate::infisical`]
//! gets settings and returns values, and never sees `cli` or `Env`. Half a configuration is a
//! usage error naming what is missing, before anything is contacted. It never logs or puts in
//! an error a credential it reads (client secret, token, fetched Cloudflare credentials).

use std::time::Duration;

use crate::cli::InfisicalArgs;
use crate::config::Env;
use crate::error::Error;
use crate::infisical::{self, Credentials, LOGIN_HOLDOFF, Settings};

/// The hidden variable that overrides [`LOGIN_HOLDOFF`] (a test/ops knob, e.g. `0` once the
/// lockout is known to be over).
pub const LOGIN_HOLDOFF_VAR: &str = "AUDSYNC_INFISICAL_LOGIN_HOLDOFF";

/// `None` when Infisical is not configured at all (no project id and no credentials).
/// Half a configuration is a usage error naming what is missing.
pub fn infisical_settings(
    a: &InfisicalArgs,
    env: &Env,
    timeout: Duration,
) -> Result<Option<Settings>, Error> {
    let client_id = env.secret("INFISICAL_CLIENT_ID")?;
    let client_secret = env.secret("INFISICAL_CLIENT_SECRET")?;
    let token = env.secret("INFISICAL_TOKEN")?;
    let project = a
        .infisical_project_id
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let credentials = match (client_id, client_secret, token) {
        (Some(id), Some(secret), _) => Some(Credentials::UniversalAuth {
            client_id: id.expose().trim().to_string(),
            client_secret: secret,
        }),
        (Some(_), None, _) => {
            return Err(Error::usage(
                "INFISICAL_CLIENT_ID is set but INFISICAL_CLIENT_SECRET is not: set both (Universal Auth), or INFISICAL_TOKEN",
            ));
        }
        (None, Some(_), _) => {
            return Err(Error::usage(
                "INFISICAL_CLIENT_SECRET is set but INFISICAL_CLIENT_ID is not: set both (Universal Auth), or INFISICAL_TOKEN",
            ));
        }
        (None, None, Some(t)) => Some(Credentials::Token(t)),
        (None, None, None) => None,
    };
    let (project, credentials) = match (project, credentials) {
        (None, None) => return Ok(None),
        (Some(p), Some(c)) => (p.to_string(), c),
        (None, Some(_)) => {
            return Err(Error::usage(
                "Infisical credentials are set but no project: set INFISICAL_PROJECT_ID (or --infisical-project-id)",
            ));
        }
        (Some(_), None) => {
            return Err(Error::usage(
                "INFISICAL_PROJECT_ID is set but no Infisical credentials: set INFISICAL_CLIENT_ID + INFISICAL_CLIENT_SECRET (Universal Auth), or INFISICAL_TOKEN (each also as <NAME>_FILE)",
            ));
        }
    };
    let url = url::Url::parse(&a.infisical_host).map_err(|e| {
        Error::usage(format!(
            "--infisical-host / INFISICAL_HOST does not parse as a URL: {e}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::usage(
            "--infisical-host / INFISICAL_HOST must be an http(s) URL",
        ));
    }
    crate::config::check_credential_url("--infisical-host / INFISICAL_HOST", &url, env)?;
    let environment = a.infisical_environment.trim().to_string();
    if environment.is_empty()
        || !environment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::usage(
            "--infisical-environment / INFISICAL_ENVIRONMENT is not an environment slug (e.g. dev, staging, prod)",
        ));
    }
    let login_holdoff = match env.get(LOGIN_HOLDOFF_VAR) {
        None => LOGIN_HOLDOFF,
        Some(v) => crate::cli::parse_duration(&v).map_err(|e| {
            Error::usage(format!(
                "{LOGIN_HOLDOFF_VAR}: {e} (a duration such as 5m, or 0)"
            ))
        })?,
    };
    Ok(Some(Settings {
        host: a.infisical_host.trim_end_matches('/').to_string(),
        credentials,
        project_id: project,
        environment,
        secret_path: infisical::normalize_path(&a.infisical_secret_path),
        api: a.infisical_api.into(),
        timeout: timeout.max(Duration::from_millis(1)),
        state_file: None,
        login_holdoff,
    }))
}

/// Read the Cloudflare credentials from Infisical into the lowest layer of `env`:
/// CLOUDFLARE_API_TOKEN, else CLOUDFLARE_EMAIL + CLOUDFLARE_API_KEY.
pub async fn read_cloudflare_credentials(settings: &Settings, env: Env) -> Result<Env, Error> {
    let mut client = infisical::Client::new(settings.clone());
    let failed = |e: infisical::Error| Error::failed(e.to_string(), e.hint());
    if let Some(t) = client
        .read_secret("CLOUDFLARE_API_TOKEN")
        .await
        .map_err(failed)?
    {
        tracing::info!(location = %settings.location(), "Cloudflare API token read from Infisical");
        return Ok(env.with_fetched("CLOUDFLARE_API_TOKEN", t));
    }
    let email = client
        .read_secret("CLOUDFLARE_EMAIL")
        .await
        .map_err(failed)?;
    let key = client
        .read_secret("CLOUDFLARE_API_KEY")
        .await
        .map_err(failed)?;
    match (email, key) {
        (Some(email), Some(key)) => {
            tracing::info!(location = %settings.location(), "Cloudflare email and global API key read from Infisical");
            Ok(env
                .with_fetched("CLOUDFLARE_EMAIL", email)
                .with_fetched("CLOUDFLARE_API_KEY", key))
        }
        (Some(_), None) | (None, Some(_)) => Err(Error::usage(format!(
            "Infisical ({}) holds only one of CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY: add the other, or CLOUDFLARE_API_TOKEN",
            settings.location()
        ))),
        (None, None) => Err(Error::usage(format!(
            "no Cloudflare credentials: CLOUDFLARE_API_TOKEN (or CLOUDFLARE_EMAIL + CLOUDFLARE_API_KEY) is set neither in the environment, nor in {}, nor in Infisical ({})",
            env.env_file
                .as_deref()
                .unwrap_or(std::path::Path::new(".env"))
                .display(),
            settings.long_location()
        ))),
    }
}
