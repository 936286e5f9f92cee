//! The Infisical client: where one folder is ([`Settings`]), how the client proves who it is
//! ([`Credentials`]), Universal Auth login and the access token's lifetime ([`auth`]), and the
//! read / update / create of one secret, v4 routes or v3 for older self-hosted instances
//! ([`secrets`]), with the shared retry loop of [`crate::http`].
//!
//! Owns every request to Infisical, and only returns values: it never reads flags, the
//! environment or `.env` (that is `config::infisical`'s job), never touches `Env`, and never
//! decides what to write (that is the sink's). It never prints or logs the client secret, an
//! access token or a secret's value fetched as a credential: those are [`Secret`]s, and errors
//! carry the HTTP status, Infisical's own message and the project/environment/path only. A
//! failed login is never retried (three failures lock the machine identity for 5 minutes).

pub mod auth;
pub mod secrets;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::http::RetryPolicy;
use crate::secret::Secret;

pub use auth::LOGIN_HOLDOFF;
pub use secrets::Written;

/// Which generation of the secrets API to call (`--infisical-api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// `/api/v3/secrets/raw/{name}` with `workspaceId` (deprecated; older self-hosted instances).
    V3,
    /// `/api/v4/secrets/{name}` with `projectId`.
    V4,
}

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Machine identity, Universal Auth: logs in itself, and again once when the token expires.
    UniversalAuth {
        client_id: String,
        client_secret: Secret,
    },
    /// A ready access token (INFISICAL_TOKEN); cannot be renewed by us.
    Token(Secret),
}

/// Everything needed to reach one Infisical folder, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL, without a trailing slash.
    pub host: String,
    pub credentials: Credentials,
    pub project_id: String,
    pub environment: String,
    /// Normalised by [`normalize_path`].
    pub secret_path: String,
    pub api: ApiVersion,
    pub timeout: Duration,
    /// The state file that remembers a refused login and a write held for approval; `None`
    /// remembers the refusal in this process only.
    pub state_file: Option<PathBuf>,
    /// No login after a refused one for this long ([`LOGIN_HOLDOFF`]).
    pub login_holdoff: Duration,
}

impl Settings {
    /// `project/environment/path`, for plans, logs and errors.
    pub fn location(&self) -> String {
        format!(
            "{}/{}{}",
            self.project_id, self.environment, self.secret_path
        )
    }

    /// `project P, environment E, path /X`, for sentences.
    pub fn long_location(&self) -> String {
        format!(
            "project {}, environment {}, path {}",
            self.project_id, self.environment, self.secret_path
        )
    }
}

/// Infisical wants a leading slash and no trailing one (except the root).
pub fn normalize_path(p: &str) -> String {
    let trimmed = p.trim().trim_matches('/');
    format!("/{trimmed}")
}

/// A failure talking to Infisical, phrased for the user; never holds a credential.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Infisical did not answer (connect failure, timeout), as opposed to answering "no".
    #[error("Infisical: {message}")]
    Unreachable {
        message: String,
        hint: Option<String>,
    },
    /// Infisical answered, and the answer is a failure (refused login, permission, a status or
    /// body we cannot use), or the client could not be set up.
    #[error("Infisical: {message}")]
    Failed {
        message: String,
        hint: Option<String>,
    },
}

impl Error {
    /// The sentence after `Infisical: `.
    pub fn message(&self) -> &str {
        match self {
            Error::Unreachable { message, .. } | Error::Failed { message, .. } => message,
        }
    }

    /// What to do about it, for failures we recognise.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Unreachable { hint, .. } | Error::Failed { hint, .. } => hint.clone(),
        }
    }

    /// True when Infisical did not answer at all (not when it refused or failed).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }
}

/// An answer's body as JSON (`Null` when it is not JSON). One over [`crate::http::MAX_BODY`]
/// is an error naming the cap, and one cut off an error too: never read as an empty answer.
async fn read_answer(resp: reqwest::Response) -> Result<serde_json::Value, crate::http::BodyError> {
    let bytes = crate::http::read_body(resp, crate::http::MAX_BODY).await?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// The hint for an answer over the cap.
const TOO_LARGE_HINT: &str = "check that INFISICAL_HOST points at the Infisical instance itself, not at a proxy or page that answers something else";

fn err(message: impl Into<String>, hint: Option<String>) -> Error {
    Error::Failed {
        message: message.into(),
        hint,
    }
}

fn unreachable(message: impl Into<String>, hint: Option<String>) -> Error {
    Error::Unreachable {
        message: message.into(),
        hint,
    }
}

/// The thin Infisical client for one project/environment/path. Holds the access token of this
/// pass; logs in lazily, at most twice per pass (once, and once more after an expiry).
#[derive(Debug)]
pub struct Client {
    http: Result<reqwest::Client, crate::http::SetupError>,
    settings: Settings,
    token: Option<Secret>,
    logins: u32,
    retry: RetryPolicy,
}

impl Client {
    pub fn new(settings: Settings) -> Client {
        // No redirect is followed: the client secret or token would go to another host.
        let http = crate::http::client(settings.timeout, crate::http::Redirects::None);
        Client {
            http,
            settings,
            token: None,
            logins: 0,
            retry: RetryPolicy::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn http(&self) -> Result<&reqwest::Client, Error> {
        self.http.as_ref().map_err(|m| err(m.to_string(), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("apps/api/"), "/apps/api");
        assert_eq!(normalize_path("/apps"), "/apps");
    }

    #[test]
    fn errors_read_like_the_sink_s() {
        let e = unreachable("down", Some("check it".into()));
        assert_eq!(e.to_string(), "Infisical: down");
        assert!(e.is_unreachable());
        assert_eq!(e.hint().as_deref(), Some("check it"));
        let e = err("no", None);
        assert_eq!(
            (e.message(), e.is_unreachable(), e.hint()),
            ("no", false, None)
        );
    }
}
