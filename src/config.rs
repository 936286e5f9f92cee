//! Configuration: flags > process environment > the `.env` file > defaults, validated once.
//!
//! [`parse_args`] runs clap twice: once to learn which `.env` file to read, then again with that
//! file's values installed as defaults, so every option's precedence is the same and `--help`
//! states it. Secrets never come from flags; [`Env::secret`] reads `NAME` or the file named by
//! `NAME_FILE`, and returns a [`Secret`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{AccessArgs, Cli, Origin, SourceArgs};
use crate::cloudflare::Auth;
use crate::error::Error;
use crate::secret::Secret;
use crate::sink::envfile;

/// Process environment first, then the `.env` file. Its `Debug` shows the keys only: the
/// `.env` file holds the API token.
#[derive(Clone, Default)]
pub struct Env {
    pub env_file: Option<PathBuf>,
    dotenv: BTreeMap<String, String>,
    /// Values read from a secret store (Infisical): the last layer, below the `.env` file.
    fetched: BTreeMap<String, Secret>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("env_file", &self.env_file)
            .field("dotenv_keys", &self.dotenv.keys().collect::<Vec<_>>())
            .field("fetched_keys", &self.fetched.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Env {
    pub fn from_file(path: &Path) -> Result<Env, Error> {
        let dotenv = match std::fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| Error::usage(format!("{}: not UTF-8 text", path.display())))?;
                envfile::parse(&text).map_err(|e| {
                    Error::usage(format!(
                        "{}: does not parse as a .env file: {e}",
                        path.display()
                    ))
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::usage(format!("cannot read {}: {e}", path.display()))),
        };
        Ok(Env {
            env_file: Some(path.to_path_buf()),
            dotenv,
            fetched: BTreeMap::new(),
        })
    }

    /// A non-empty value from the process environment, else from the `.env` file, else one
    /// fetched from a secret store ([`Env::with_fetched`]).
    pub fn get(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.dotenv.get(name).filter(|v| !v.is_empty()).cloned())
            .or_else(|| {
                self.fetched
                    .get(name)
                    .map(|v| v.expose().to_string())
                    .filter(|v| !v.is_empty())
            })
    }

    /// Add a value read from a secret store, below every other layer.
    pub fn with_fetched(mut self, name: &str, value: Secret) -> Env {
        self.fetched.insert(name.to_string(), value);
        self
    }

    /// `NAME`, or the contents of the file named by `NAME_FILE` (trailing newline dropped).
    pub fn secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        if let Some(v) = self.get(name) {
            return Ok(Some(Secret::new(v)));
        }
        let file_var = format!("{name}_FILE");
        let Some(path) = self.get(&file_var) else {
            return Ok(None);
        };
        let raw = std::fs::read_to_string(&path)
            .map_err(|e| Error::usage(format!("{file_var}={path}: cannot read the file: {e}")))?;
        let v = raw.trim_end_matches(['\n', '\r']).to_string();
        if v.is_empty() {
            return Err(Error::usage(format!(
                "{file_var}={path}: the file is empty"
            )));
        }
        Ok(Some(Secret::new(v)))
    }

    fn dotenv_value(&self, name: &str) -> Option<&String> {
        if std::env::var_os(name).is_some() {
            return None;
        }
        self.dotenv.get(name)
    }
}

/// Parse the command line with the `.env` layer applied. Clap errors (including `--help`) are
/// returned as they are, for clap to print.
pub fn parse_args<I, T>(args: I) -> Result<(Cli, Env), ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = Cli::command()
        .try_get_matches_from(&args)
        .map_err(ParseError::Clap)?;
    let env_file = first
        .subcommand()
        .and_then(|(_, m)| m.try_get_one::<PathBuf>("env_file").ok().flatten().cloned());
    let Some(path) = env_file else {
        let cli = Cli::from_arg_matches(&first).map_err(ParseError::Clap)?;
        return Ok((cli, Env::default()));
    };
    let env = Env::from_file(&path).map_err(ParseError::Config)?;
    let sub = first.subcommand_name().unwrap_or_default().to_string();
    let cmd = with_dotenv_defaults(Cli::command(), &env);
    let cmd = cmd.mut_subcommand(&sub, |sc| with_dotenv_defaults(sc, &env));
    let matches = cmd.try_get_matches_from(&args).map_err(ParseError::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    Ok((cli, env))
}

#[derive(Debug)]
pub enum ParseError {
    Clap(clap::Error),
    Config(Error),
}

/// Install `.env` values as defaults of the options whose variable the process env lacks.
fn with_dotenv_defaults(mut cmd: clap::Command, env: &Env) -> clap::Command {
    let ids: Vec<(clap::Id, String, Option<char>)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let name = a.get_env()?.to_str()?.to_string();
            Some((a.get_id().clone(), name, a.get_value_delimiter()))
        })
        .collect();
    for (id, name, delim) in ids {
        if let Some(v) = env.dotenv_value(&name).cloned() {
            cmd = cmd.mut_arg(id, |a| match delim {
                Some(d) => {
                    a.default_values(v.split(d).map(|s| s.trim().to_string()).collect::<Vec<_>>())
                }
                None => a.default_value(v),
            });
        }
    }
    cmd
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
    /// The configured team domain, when any (pins where the metadata's keys are fetched).
    pub team_domain: Option<String>,
}

impl SourceConfig {
    pub fn from_args(a: &SourceArgs, env: &Env) -> Result<SourceConfig, Error> {
        let host = match &a.domain {
            Some(d) => Some(validate_host(d)?),
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
                "--api-url / CLOUDFLARE_API_URL {:?}: {e}",
                a.api_url
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::usage(
                "--api-url / CLOUDFLARE_API_URL must be an http(s) URL",
            ));
        }
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
        origin: Origin,
        access: &AccessArgs,
    ) -> Result<SourceConfig, Error> {
        if origin == Origin::Api {
            return Self::from_args(a, env);
        }
        if a.app_id.is_some() {
            return Err(Error::usage(
                "--app-id needs --source api: the edge knows hosts, not application ids",
            ));
        }
        let url = access.url.as_deref().map(validate_url).transpose()?;
        let host = match (&a.domain, &url) {
            (Some(d), _) => validate_host(d)?,
            (None, Some(u)) => validate_host(u.host_str().unwrap_or(""))?,
            (None, None) => {
                return Err(Error::usage(
                    "--source edge needs the protected host: pass --domain HOST (or --url URL)",
                ));
            }
        };
        let url = url.map_or_else(|| format!("https://{host}/"), |u| u.to_string());
        let any_credential = crate::config::has_cloudflare_credentials(env);
        let auth = if any_credential {
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
            selector: Selector::Host(host.clone()),
            host: Some(host),
            timeout: a.timeout,
            edge: Some(EdgeSource {
                url,
                team_domain: crate::cloudflare::edge::team_domain(
                    access.auth_domain.as_deref(),
                    access.team_name.as_deref(),
                ),
            }),
        })
    }
}

/// An http(s) URL given by --url.
pub fn validate_url(u: &str) -> Result<url::Url, Error> {
    let url = url::Url::parse(u).map_err(|e| Error::usage(format!("--url {u:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::usage(format!(
            "--url {u:?} must be an http(s) URL with a host"
        )));
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

/// Token, else email + global key, each possibly from `<NAME>_FILE`.
pub fn cloudflare_auth(env: &Env) -> Result<Auth, Error> {
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

pub fn validate_host(d: &str) -> Result<String, Error> {
    let h = crate::cloudflare::apps::host_of(d);
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '*');
    if ok {
        Ok(h)
    } else {
        Err(Error::usage(format!(
            "--domain {d:?} is not a host name (expected e.g. api.example.com)"
        )))
    }
}

pub fn validate_id(flag: &str, id: &str) -> Result<String, Error> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(Error::usage(format!(
            "{flag} {id:?} is not a Cloudflare id (32 hex digits, dashes allowed)"
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
        Err(Error::usage(format!(
            "--key {key:?} is not a variable name (letters, digits, _)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_debug_shows_keys_not_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, "CLOUDFLARE_API_TOKEN=very-secret-token\n").unwrap();
        let env = Env::from_file(&p).unwrap();
        let shown = format!("{env:?}");
        assert!(
            shown.contains("CLOUDFLARE_API_TOKEN") && !shown.contains("very-secret-token"),
            "{shown}"
        );
    }

    #[test]
    fn ids_and_hosts_are_validated() {
        assert!(validate_id("--app-id", "0f3ad5f4-0000-4000-8000-00000000abcd").is_ok());
        assert!(validate_id("--app-id", "nope").is_err());
        assert_eq!(validate_host("API.example.com").unwrap(), "api.example.com");
        assert!(validate_host("api example").is_err());
        assert!(validate_key("CLOUDFLARE_AUD_TAG").is_ok());
        assert!(validate_key("1X").is_err());
        assert!(validate_key("A-B").is_err());
    }
}
