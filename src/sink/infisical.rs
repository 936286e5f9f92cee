//! The Infisical sink and its thin client: Universal Auth login, read / compare / update /
//! create of one secret (v4 routes, or v3 for older self-hosted instances), bounded retries.
//!
//! Owns every request to Infisical. It never prints or logs the client secret or an access
//! token: both are [`Secret`]s, errors carry the HTTP status, Infisical's own message and the
//! project/environment/path, never a credential. A failed login is never retried (three failures
//! lock the machine identity for 5 minutes), and after a refused login (401/403) no run logs in
//! again before the hold-off has passed (5 minutes; remembered in the state file so cron runs
//! and the watch loop respect it). An equal value is never written (Infisical would make a new
//! secret version of it), and a value held for approval is not submitted again while it waits
//! (remembered in the state file too).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Error, Observation, SinkInfo, WriteOutcome};
use crate::cli::InfisicalArgs;
use crate::config::Env;
use crate::http::{Call, Resend, RetryPolicy};
use crate::secret::Secret;
use crate::state::{LoginRefusal, PendingWrite, StateFile};

pub const DEFAULT_HOST: &str = "https://app.infisical.com";

/// How long no login is tried after Infisical refused one (three failures lock the identity
/// for 5 minutes). Overridable only through the hidden AUDSYNC_INFISICAL_LOGIN_HOLDOFF
/// (a test/ops knob, e.g. `0` once the lockout is known to be over).
pub const LOGIN_HOLDOFF: Duration = Duration::from_secs(300);
pub const LOGIN_HOLDOFF_VAR: &str = "AUDSYNC_INFISICAL_LOGIN_HOLDOFF";

/// Which generation of the secrets API to call (`--infisical-api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
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
    pub host: String,
    pub credentials: Credentials,
    pub project_id: String,
    pub environment: String,
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
    /// `None` when Infisical is not configured at all (no project id and no credentials).
    /// Half a configuration is a usage error naming what is missing.
    pub fn from_args(
        a: &InfisicalArgs,
        env: &Env,
        timeout: Duration,
    ) -> Result<Option<Settings>, crate::error::Error> {
        use crate::error::Error as E;
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
                return Err(E::usage(
                    "INFISICAL_CLIENT_ID is set but INFISICAL_CLIENT_SECRET is not: set both (Universal Auth), or INFISICAL_TOKEN",
                ));
            }
            (None, Some(_), _) => {
                return Err(E::usage(
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
                return Err(E::usage(
                    "Infisical credentials are set but no project: set INFISICAL_PROJECT_ID (or --infisical-project-id)",
                ));
            }
            (Some(_), None) => {
                return Err(E::usage(
                    "INFISICAL_PROJECT_ID is set but no Infisical credentials: set INFISICAL_CLIENT_ID + INFISICAL_CLIENT_SECRET (Universal Auth), or INFISICAL_TOKEN (each also as <NAME>_FILE)",
                ));
            }
        };
        let url = url::Url::parse(&a.infisical_host).map_err(|e| {
            E::usage(format!(
                "--infisical-host / INFISICAL_HOST {:?}: {e}",
                a.infisical_host
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(E::usage(
                "--infisical-host / INFISICAL_HOST must be an http(s) URL",
            ));
        }
        let environment = a.infisical_environment.trim().to_string();
        if environment.is_empty()
            || !environment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(E::usage(format!(
                "--infisical-environment / INFISICAL_ENVIRONMENT {environment:?} is not an environment slug (e.g. dev, staging, prod)"
            )));
        }
        let login_holdoff = match env.get(LOGIN_HOLDOFF_VAR) {
            None => LOGIN_HOLDOFF,
            Some(v) => crate::cli::parse_duration(&v).map_err(|e| {
                E::usage(format!(
                    "{LOGIN_HOLDOFF_VAR} {v:?}: {e} (a duration such as 5m, or 0)"
                ))
            })?,
        };
        Ok(Some(Settings {
            host: a.infisical_host.trim_end_matches('/').to_string(),
            credentials,
            project_id: project,
            environment,
            secret_path: normalize_path(&a.infisical_secret_path),
            api: a.infisical_api,
            timeout: timeout.max(Duration::from_millis(1)),
            state_file: None,
            login_holdoff,
        }))
    }

    /// `project/environment/path`, for plans, logs and errors.
    pub fn location(&self) -> String {
        format!(
            "{}/{}{}",
            self.project_id, self.environment, self.secret_path
        )
    }

    fn where_(&self) -> String {
        format!(
            "project {}, environment {}, path {}",
            self.project_id, self.environment, self.secret_path
        )
    }
}

/// Infisical wants a leading slash and no trailing one (except the root).
fn normalize_path(p: &str) -> String {
    let trimmed = p.trim().trim_matches('/');
    format!("/{trimmed}")
}

/// One secret as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    pub value: String,
    pub version: Option<u64>,
}

/// The answer to a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Live {
        version: Option<u64>,
    },
    Approval {
        detail: String,
        /// The change request's slug or id, when the answer carries one.
        request: Option<String>,
    },
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `HH:MM:SS UTC` of a Unix time, for messages.
fn clock(secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", s.get(11..19).unwrap_or(&s))
}

/// Refusals seen by this process, for when the state file cannot be written (and for runs
/// without one).
static REFUSED: Mutex<Vec<LoginRefusal>> = Mutex::new(Vec::new());

/// The thin Infisical client for one project/environment/path. Holds the access token of this
/// pass; logs in lazily, at most twice per pass (once, and once more after an expiry).
#[derive(Debug)]
pub struct Client {
    http: Result<reqwest::Client, String>,
    settings: Settings,
    token: Option<Secret>,
    logins: u32,
    retry: RetryPolicy,
}

fn err(message: impl Into<String>, hint: Option<String>) -> Error {
    Error::Infisical {
        message: message.into(),
        hint,
        unreachable: false,
    }
}

/// A transport failure: Infisical did not answer at all (`verify` reports it as not checked).
fn unreachable(message: impl Into<String>, hint: Option<String>) -> Error {
    Error::Infisical {
        message: message.into(),
        hint,
        unreachable: true,
    }
}

/// Infisical's error body `{reqId, statusCode, message, error}`, as text.
fn describe(status: StatusCode, body: &Value) -> String {
    let message = body["message"].as_str().unwrap_or("").trim();
    let kind = body["error"].as_str().unwrap_or("").trim();
    match (kind.is_empty(), message.is_empty()) {
        (true, true) => format!("HTTP {}", status.as_u16()),
        (true, false) => format!("HTTP {}: {message}", status.as_u16()),
        (false, true) => format!("HTTP {} {kind}", status.as_u16()),
        (false, false) => format!("HTTP {} {kind}: {message}", status.as_u16()),
    }
}

/// A 403 that means "log in again", not "not allowed".
fn is_expired(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::FORBIDDEN
        && body["message"]
            .as_str()
            .is_some_and(|m| m.to_ascii_lowercase().contains("expired"))
}

impl Client {
    fn http(&self) -> Result<&reqwest::Client, Error> {
        self.http.as_ref().map_err(|m| err(m.clone(), None))
    }

    pub fn new(settings: Settings) -> Client {
        let http = crate::http::client(settings.timeout, crate::http::Redirects::Follow);
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

    /// Universal Auth login. Never retried, whatever the failure.
    async fn login(&mut self) -> Result<Secret, Error> {
        let (client_id, client_secret) = match &self.settings.credentials {
            Credentials::UniversalAuth {
                client_id,
                client_secret,
            } => (client_id.clone(), client_secret.clone()),
            Credentials::Token(t) => return Ok(t.clone()),
        };
        if let Some(r) = self.refusal_in_force(&client_id) {
            let until = r.at + self.settings.login_holdoff.as_secs();
            return Err(err(
                format!(
                    "Universal Auth login for machine identity {client_id} was refused at {} ({}); not retrying the login until {} to avoid the lockout (three failed logins lock the machine identity for 5 minutes)",
                    clock(r.at),
                    r.reason,
                    clock(until)
                ),
                Some(format!(
                    "fix INFISICAL_CLIENT_ID / INFISICAL_CLIENT_SECRET (or their _FILE) meanwhile; the first run after {} logs in again{}",
                    clock(until),
                    match &self.settings.state_file {
                        Some(p) => format!(" (the refusal is remembered in {})", p.display()),
                        None => String::new(),
                    }
                )),
            ));
        }
        self.logins += 1;
        let path = "/api/v1/auth/universal-auth/login";
        tracing::debug!(path, client_id = %client_id, "infisical login");
        let lockout = "not retried: three failed logins lock the machine identity for 5 minutes";
        let resp = self
            .http()?
            .post(format!("{}{path}", self.settings.host))
            .json(&json!({"clientId": client_id, "clientSecret": client_secret.expose()}))
            .send()
            .await
            .map_err(|e| {
                unreachable(
                    format!(
                        "Universal Auth login at {} failed: {} ({lockout})",
                        self.settings.host,
                        crate::http::describe_transport(&e.without_url())
                    ),
                    Some("check INFISICAL_HOST and network access to it".into()),
                )
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let at = now_secs();
            self.record_refusal(&client_id, at, describe(status, &body));
            return Err(err(
                format!(
                    "Universal Auth login for machine identity {client_id} failed ({}); not retrying the login until {} to avoid the lockout (three failed logins lock the machine identity for 5 minutes)",
                    describe(status, &body),
                    clock(at + self.settings.login_holdoff.as_secs())
                ),
                Some("check INFISICAL_CLIENT_ID and INFISICAL_CLIENT_SECRET (or their _FILE), and that the client secret is not expired or revoked; after three failures wait 5 minutes before the next try".into()),
            ));
        }
        if !status.is_success() {
            return Err(err(
                format!(
                    "Universal Auth login for machine identity {client_id} failed ({}); {lockout}",
                    describe(status, &body)
                ),
                Some("check INFISICAL_CLIENT_ID and INFISICAL_CLIENT_SECRET (or their _FILE), and that the client secret is not expired or revoked; after three failures wait 5 minutes before the next try".into()),
            ));
        }
        let token = body["accessToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| err("Universal Auth login answered without an accessToken", None))?;
        self.clear_refusal(&client_id);
        tracing::info!(
            expires_in = body["expiresIn"].as_u64(),
            "logged in to Infisical"
        );
        Ok(Secret::new(token))
    }

    /// The refusal of this identity's last login, while its hold-off lasts. A refusal dated
    /// more than a minute in the future (the clock went back) is ignored.
    fn refusal_in_force(&self, client_id: &str) -> Option<LoginRefusal> {
        let now = now_secs();
        let holdoff = self.settings.login_holdoff.as_secs();
        let host = &self.settings.host;
        let matches =
            |r: &LoginRefusal| r.host == *host && r.client_id == client_id && r.at <= now + 60;
        let from_file = self
            .settings
            .state_file
            .as_deref()
            .and_then(|p| StateFile::load(p, true).ok()?.state.infisical_login_refused)
            .filter(matches);
        let in_memory = REFUSED.lock().ok().and_then(|v| {
            v.iter()
                .filter(|r| matches(r))
                .max_by_key(|r| r.at)
                .cloned()
        });
        [from_file, in_memory]
            .into_iter()
            .flatten()
            .max_by_key(|r| r.at)
            .filter(|r| now < r.at.saturating_add(holdoff))
    }

    fn record_refusal(&self, client_id: &str, at: u64, reason: String) {
        let r = LoginRefusal {
            host: self.settings.host.clone(),
            client_id: client_id.to_string(),
            at,
            reason,
        };
        if let Ok(mut v) = REFUSED.lock() {
            v.retain(|o| o.host != r.host || o.client_id != r.client_id);
            v.push(r.clone());
        }
        if let Some(p) = &self.settings.state_file
            && let Err(e) = StateFile::update(p, |s| s.infisical_login_refused = Some(r))
        {
            tracing::warn!(error = %e, "cannot remember the refused Infisical login in the state file; only this process holds off");
        }
    }

    fn clear_refusal(&self, client_id: &str) {
        let host = &self.settings.host;
        let ours = |r: &LoginRefusal| r.host == *host && r.client_id == client_id;
        if let Ok(mut v) = REFUSED.lock() {
            v.retain(|r| !ours(r));
        }
        if let Some(p) = &self.settings.state_file
            && StateFile::load(p, true)
                .ok()
                .and_then(|f| f.state.infisical_login_refused)
                .as_ref()
                .is_some_and(ours)
            && let Err(e) = StateFile::update(p, |s| s.infisical_login_refused = None)
        {
            tracing::warn!(error = %e, "cannot clear the refused Infisical login from the state file");
        }
    }

    fn secret_path(&self, name: &str) -> String {
        match self.settings.api {
            ApiVersion::V4 => format!("/api/v4/secrets/{name}"),
            ApiVersion::V3 => format!("/api/v3/secrets/raw/{name}"),
        }
    }

    fn project_field(&self) -> &'static str {
        match self.settings.api {
            ApiVersion::V4 => "projectId",
            ApiVersion::V3 => "workspaceId",
        }
    }

    /// One secrets request with login, token expiry, 429/5xx/transport retries. Answers 2xx,
    /// 400 and 404 come back for the caller to judge; everything else is an error.
    async fn call(
        &mut self,
        method: Method,
        name: &str,
        value: Option<&str>,
    ) -> Result<(StatusCode, Value), Error> {
        let path = self.secret_path(name);
        let url = format!("{}{path}", self.settings.host);
        let s = &self.settings;
        let location = s.where_();
        let query = [
            (self.project_field(), s.project_id.clone()),
            ("environment", s.environment.clone()),
            ("secretPath", s.secret_path.clone()),
            ("type", "shared".to_string()),
        ];
        let body = value.map(|v| {
            json!({
                self.project_field(): s.project_id,
                "environment": s.environment,
                "secretPath": s.secret_path,
                "secretValue": v,
                "type": "shared",
            })
        });
        let verb = match method {
            Method::GET => "read",
            Method::PATCH => "update",
            _ => "create",
        };
        let mut relogged = false;
        loop {
            let token = match &self.token {
                Some(t) => t.clone(),
                None => {
                    let t = self.login().await?;
                    self.token = Some(t.clone());
                    t
                }
            };
            let http = self.http()?;
            let call = Call {
                service: "infisical",
                method: &method,
                path: &path,
                // A repeated create answers "already exists", which `create` turns into None
                // and the sink into an update: every request here may be sent again.
                resend: Resend::Always,
            };
            let sent = crate::http::send(&self.retry, call, || {
                let req = http
                    .request(method.clone(), &url)
                    .bearer_auth(token.expose());
                match &body {
                    Some(b) => req.json(b),
                    None => req.query(&query),
                }
            })
            .await;
            let (resp, attempt) = match sent {
                Ok(a) => (a.response, a.attempts),
                Err(f) => {
                    return Err(unreachable(
                        format!(
                            "{method} {path} at {}: {}",
                            self.settings.host,
                            crate::http::describe_transport(&f.error.without_url())
                        ),
                        Some(
                            "check INFISICAL_HOST and network access to it; the next run retries"
                                .into(),
                        ),
                    ));
                }
            };
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                // The retries are spent.
                let hint = (status == StatusCode::TOO_MANY_REQUESTS).then(|| {
                    "Infisical allows about 60 secret requests a minute by default; run less often, or raise the instance's rate limits".to_string()
                });
                return Err(err(
                    format!(
                        "{method} {path}: still {} after {attempt} attempts",
                        describe(status, &answer)
                    ),
                    hint,
                ));
            }
            if is_expired(status, &answer) {
                let can_login =
                    matches!(self.settings.credentials, Credentials::UniversalAuth { .. });
                if can_login && !relogged {
                    tracing::info!("Infisical access token expired; logging in again");
                    relogged = true;
                    self.token = None;
                    continue;
                }
                let (message, hint) = if can_login {
                    (
                        format!(
                            "the access token was refused as expired even right after logging in again ({}); giving up",
                            describe(status, &answer)
                        ),
                        "check the machine identity's Access Token TTL in Infisical (Universal Auth settings) and this host's clock",
                    )
                } else {
                    (
                        format!(
                            "the access token in INFISICAL_TOKEN has expired ({})",
                            describe(status, &answer)
                        ),
                        "provide a fresh INFISICAL_TOKEN, or set INFISICAL_CLIENT_ID + INFISICAL_CLIENT_SECRET so audsync logs in by itself",
                    )
                };
                return Err(err(message, Some(hint.into())));
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(err(
                    format!(
                        "not allowed to {verb} secret {name} in {location} ({})",
                        describe(status, &answer)
                    ),
                    Some(format!(
                        "give the machine identity a role on project {} that may read{} secrets in environment {} at path {} (e.g. Developer, or a custom role with Secrets read/edit/create), and check INFISICAL_PROJECT_ID, INFISICAL_ENVIRONMENT and INFISICAL_SECRET_PATH",
                        self.settings.project_id,
                        if verb == "read" {
                            ""
                        } else {
                            ", edit and create"
                        },
                        self.settings.environment,
                        self.settings.secret_path
                    )),
                ));
            }
            if status == StatusCode::NOT_FOUND
                && answer["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Route "))
            {
                let hint = match self.settings.api {
                    ApiVersion::V4 => {
                        "this Infisical has no v4 secrets API (an older self-hosted instance?): pass --infisical-api v3 (AUDSYNC_INFISICAL_API=v3)"
                    }
                    ApiVersion::V3 => {
                        "this Infisical has no v3 secrets API: use --infisical-api v4"
                    }
                };
                return Err(err(
                    format!(
                        "{method} {path} is not served by {} ({})",
                        self.settings.host,
                        describe(status, &answer)
                    ),
                    Some(hint.into()),
                ));
            }
            if status.is_success()
                || status == StatusCode::NOT_FOUND
                || status == StatusCode::BAD_REQUEST
            {
                return Ok((status, answer));
            }
            return Err(err(
                format!(
                    "cannot {verb} secret {name} in {location} ({})",
                    describe(status, &answer)
                ),
                None,
            ));
        }
    }

    fn unexpected(&self, verb: &str, name: &str, status: StatusCode, answer: &Value) -> Error {
        err(
            format!(
                "cannot {verb} secret {name} in {} ({})",
                self.settings.where_(),
                describe(status, answer)
            ),
            None,
        )
    }

    /// The secret, or `None` when it does not exist.
    pub async fn read(&mut self, name: &str) -> Result<Option<Remote>, Error> {
        let (status, answer) = self.call(Method::GET, name, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.unexpected("read", name, status, &answer));
        }
        let secret = &answer["secret"];
        let value = secret["secretValue"].as_str().ok_or_else(|| {
            err(
                format!("reading secret {name}: the answer holds no secret.secretValue"),
                None,
            )
        })?;
        Ok(Some(Remote {
            value: value.to_string(),
            version: secret["version"].as_u64(),
        }))
    }

    /// PATCH; `None` when the secret does not exist (404).
    pub async fn update(&mut self, name: &str, value: &str) -> Result<Option<Written>, Error> {
        let (status, answer) = self.call(Method::PATCH, name, Some(value)).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.unexpected("update", name, status, &answer));
        }
        self.written(name, &answer).map(Some)
    }

    /// POST; `None` when it already exists (400).
    pub async fn create(&mut self, name: &str, value: &str) -> Result<Option<Written>, Error> {
        let (status, answer) = self.call(Method::POST, name, Some(value)).await?;
        if status == StatusCode::BAD_REQUEST
            && answer["message"]
                .as_str()
                .is_some_and(|m| m.to_ascii_lowercase().contains("exist"))
        {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.unexpected("create", name, status, &answer));
        }
        self.written(name, &answer).map(Some)
    }

    fn written(&self, name: &str, answer: &Value) -> Result<Written, Error> {
        if let Some(a) = answer.get("approval").filter(|a| !a.is_null()) {
            let request = a["slug"]
                .as_str()
                .or_else(|| a["id"].as_str())
                .map(str::to_string);
            let id = request
                .as_deref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            return Ok(Written::Approval {
                detail: format!(
                    "Infisical holds the change of {name} in {} for approval (change request{id}); the value is not live, so nothing was restarted. Once the request is approved and merged, the next run restarts the containers",
                    self.settings.where_()
                ),
                request,
            });
        }
        match answer.get("secret").filter(|s| s.is_object()) {
            Some(s) => Ok(Written::Live {
                version: s["version"].as_u64(),
            }),
            None => Err(err(
                format!("writing secret {name}: the answer holds neither `secret` nor `approval`"),
                None,
            )),
        }
    }
}

/// The Infisical sink for one key.
#[derive(Debug)]
pub struct InfisicalSink {
    client: Client,
    key: String,
    /// Learned by `observe`: whether to PATCH or POST first.
    exists: Option<bool>,
    /// A write of this key at this location held for approval (from the state file, then as
    /// this pass leaves it).
    pending: Option<PendingWrite>,
}

impl InfisicalSink {
    pub fn new(settings: Settings, key: &str) -> InfisicalSink {
        InfisicalSink {
            client: Client::new(settings),
            key: key.to_string(),
            exists: None,
            pending: None,
        }
    }

    /// Start from the write the state file remembers as held for approval (ignored when it is
    /// for another location or key).
    pub fn with_pending(mut self, pending: Option<&PendingWrite>) -> InfisicalSink {
        let location = self.client.settings().location();
        self.pending = pending
            .filter(|p| p.location == location && p.key == self.key)
            .cloned();
        self
    }

    /// The write held for approval as this pass leaves it, for the state file.
    pub fn pending(&self) -> Option<&PendingWrite> {
        self.pending.as_ref()
    }

    pub fn info(&self) -> SinkInfo {
        SinkInfo {
            kind: "infisical",
            target: self.client.settings().location(),
            key: self.key.clone(),
        }
    }

    pub async fn observe(&mut self, desired: &str) -> Result<Observation, Error> {
        let remote = self.client.read(&self.key).await?;
        self.exists = Some(remote.is_some());
        if let Some(p) = &self.pending {
            let request = p.request.as_deref().unwrap_or("(no id)");
            let location = &p.location;
            if remote.as_ref().is_some_and(|r| r.value == p.value) {
                tracing::info!(key = %self.key, %location, request, value = %p.value, "the value held for approval is live now (change request approved and merged)");
                self.pending = None;
            } else if p.value != desired {
                tracing::warn!(key = %self.key, %location, request, pending = %p.value, desired, "the desired value changed while a write waited for approval; writing the new value");
                self.pending = None;
            } else {
                tracing::info!(key = %self.key, %location, request, "a write of the desired value still waits for approval; not submitted again");
            }
        }
        Ok(match remote {
            Some(r) => Observation {
                needs_write: r.value != desired,
                current: Some(r.value),
                version: r.version,
            },
            None => Observation {
                current: None,
                needs_write: true,
                version: None,
            },
        })
    }

    pub async fn write(&mut self, desired: &str) -> Result<WriteOutcome, Error> {
        let key = self.key.clone();
        if let Some(p) = self.pending.as_ref().filter(|p| p.value == desired) {
            let request = p
                .request
                .as_deref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default();
            let forget = match &self.client.settings().state_file {
                Some(f) => format!("remove `infisical_pending` from {}", f.display()),
                None => "remove `infisical_pending` from the state file".to_string(),
            };
            return Ok(WriteOutcome::PendingApproval {
                detail: format!(
                    "the change of {key} in {} still waits for approval (change request{request}, submitted {} ago); not submitted again, nothing was restarted. Once it is approved and merged, the next run restarts the containers; if it was rejected or closed, {forget} to submit it again",
                    self.client.settings().where_(),
                    humantime::format_duration(Duration::from_secs(
                        now_secs().saturating_sub(p.since)
                    ))
                ),
            });
        }
        let first_create = self.exists == Some(false);
        let written = if first_create {
            match self.client.create(&key, desired).await? {
                Some(w) => w,
                // Created by someone else since we looked.
                None => self.client.update(&key, desired).await?.ok_or_else(|| {
                    err(
                        format!("secret {key} neither exists nor can be created"),
                        None,
                    )
                })?,
            }
        } else {
            match self.client.update(&key, desired).await? {
                Some(w) => w,
                None => self.client.create(&key, desired).await?.ok_or_else(|| {
                    err(
                        format!("secret {key} neither exists nor can be created"),
                        None,
                    )
                })?,
            }
        };
        self.exists = Some(true);
        Ok(match written {
            Written::Live { version } => {
                self.pending = None;
                WriteOutcome::Written { version }
            }
            Written::Approval { detail, request } => {
                self.pending = Some(PendingWrite {
                    location: self.client.settings().location(),
                    key,
                    value: desired.to_string(),
                    request,
                    since: now_secs(),
                });
                WriteOutcome::PendingApproval { detail }
            }
        })
    }
}

/// Read the Cloudflare credentials from Infisical into the lowest layer of `env`:
/// CLOUDFLARE_API_TOKEN, else CLOUDFLARE_EMAIL + CLOUDFLARE_API_KEY.
pub async fn read_cloudflare_credentials(
    settings: &Settings,
    env: Env,
) -> Result<Env, crate::error::Error> {
    use crate::error::Error as E;
    let mut client = Client::new(settings.clone());
    let failed = |e: Error| E::failed(e.to_string(), e.hint());
    if let Some(t) = client.read("CLOUDFLARE_API_TOKEN").await.map_err(failed)? {
        tracing::info!(location = %settings.location(), "Cloudflare API token read from Infisical");
        return Ok(env.with_fetched("CLOUDFLARE_API_TOKEN", Secret::new(t.value)));
    }
    let email = client.read("CLOUDFLARE_EMAIL").await.map_err(failed)?;
    let key = client.read("CLOUDFLARE_API_KEY").await.map_err(failed)?;
    match (email, key) {
        (Some(email), Some(key)) => {
            tracing::info!(location = %settings.location(), "Cloudflare email and global API key read from Infisical");
            Ok(env
                .with_fetched("CLOUDFLARE_EMAIL", Secret::new(email.value))
                .with_fetched("CLOUDFLARE_API_KEY", Secret::new(key.value)))
        }
        (Some(_), None) | (None, Some(_)) => Err(E::usage(format!(
            "Infisical ({}) holds only one of CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY: add the other, or CLOUDFLARE_API_TOKEN",
            settings.location()
        ))),
        (None, None) => Err(E::usage(format!(
            "no Cloudflare credentials: CLOUDFLARE_API_TOKEN (or CLOUDFLARE_EMAIL + CLOUDFLARE_API_KEY) is set neither in the environment, nor in {}, nor in Infisical ({})",
            env.env_file
                .as_deref()
                .unwrap_or(std::path::Path::new(".env"))
                .display(),
            settings.where_()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{retry_after, retry_wait};

    #[test]
    fn clock_shows_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00 UTC");
        assert_eq!(clock(86_400 + 3_600 * 13 + 60 * 5 + 9), "13:05:09 UTC");
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("apps/api/"), "/apps/api");
        assert_eq!(normalize_path("/apps"), "/apps");
    }

    #[test]
    fn expiry_is_told_from_permission() {
        let expired = json!({"reqId": "r", "statusCode": 403, "message": "Your token has expired. Please re-authenticate.", "error": "TokenError"});
        let denied = json!({"reqId": "r", "statusCode": 403, "message": "You are not allowed to read on secrets", "error": "PermissionDenied"});
        assert!(is_expired(StatusCode::FORBIDDEN, &expired));
        assert!(!is_expired(StatusCode::FORBIDDEN, &denied));
        assert!(!is_expired(StatusCode::UNAUTHORIZED, &expired));
        assert_eq!(
            describe(StatusCode::FORBIDDEN, &denied),
            "HTTP 403 PermissionDenied: You are not allowed to read on secrets"
        );
        assert_eq!(describe(StatusCode::BAD_GATEWAY, &Value::Null), "HTTP 502");
    }

    /// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), as servers send in `Retry-After`.
    fn http_date(t: std::time::SystemTime) -> String {
        httpdate::fmt_http_date(t)
    }

    fn headers(retry_after: &str) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::RETRY_AFTER,
            retry_after.parse().expect("header value"),
        );
        h
    }

    #[test]
    fn http_date_helper_matches_the_rfc_example() {
        let t = humantime::parse_rfc3339("1994-11-06T08:49:37Z").unwrap();
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_delay, Duration::from_secs(30));
        assert_eq!(retry_wait(&p, &headers("2"), 1), Duration::from_secs(2));

        let hour = headers("3600");
        assert_eq!(retry_after(&hour), Some(Duration::from_secs(3600)));
        assert_eq!(retry_wait(&p, &hour, 1), p.max_delay);

        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        let date = headers(&http_date(later));
        assert!(
            retry_after(&date).is_some_and(|d| d > Duration::from_secs(3500)),
            "the date is understood as about an hour: {:?}",
            retry_after(&date)
        );
        assert_eq!(retry_wait(&p, &date, 1), p.max_delay);

        let small = RetryPolicy {
            max_delay: Duration::from_millis(100),
            ..RetryPolicy::default()
        };
        assert_eq!(retry_wait(&small, &hour, 1), small.max_delay);
    }

    #[test]
    fn without_retry_after_the_wait_backs_off_exponentially_and_is_capped() {
        let p = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let none = reqwest::header::HeaderMap::new();
        let garbage = headers("soon");
        for h in [&none, &garbage] {
            let w1 = retry_wait(&p, h, 1);
            let w3 = retry_wait(&p, h, 3);
            assert!(
                (Duration::from_millis(100)..=Duration::from_millis(125)).contains(&w1),
                "{w1:?}"
            );
            assert!(
                (Duration::from_millis(400)..=Duration::from_millis(500)).contains(&w3),
                "{w3:?}"
            );
            assert_eq!(retry_wait(&p, h, 9), p.max_delay);
        }
    }
}
