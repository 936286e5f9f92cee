//! The secrets of one Infisical folder: read, update (PATCH), create (POST), v4 routes with
//! `projectId` or v3 routes with `workspaceId`; each request logs in when needed, logs in again
//! once when the token expired, and goes through the shared retry loop of [`crate::http`].
//!
//! It only returns what Infisical answered ([`Remote`], [`Written`], a [`Secret`] for a value
//! used as a credential); it never decides whether to write (the sink compares first, since an
//! equal value would still make a new version), and never logs a secret's value or a token.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::auth::is_expired;
use super::{ApiVersion, Client, Error, err, unreachable};
use crate::http::{Call, Resend};
use crate::secret::Secret;

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

/// The mask Infisical puts in `secretValue` when the reader may not see the value
/// (`INFISICAL_SECRET_VALUE_HIDDEN_MASK`, backend/src/services/secret/secret-fns.ts).
pub const HIDDEN_MASK: &str = "<hidden-by-infisical>";

/// `message` of an error body: a string, or (422 ValidationFailure) an array of Zod issues
/// `{code, path, message}`, every one shown.
fn message_of(body: &Value) -> String {
    match &body["message"] {
        Value::String(s) => s.trim().to_string(),
        Value::Array(issues) => issues
            .iter()
            .map(|i| {
                let path = i["path"]
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .map(|x| match x {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(".")
                    })
                    .unwrap_or_default();
                let msg = i["message"]
                    .as_str()
                    .map_or_else(|| i.to_string(), str::to_string);
                let code = i["code"]
                    .as_str()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default();
                if path.is_empty() {
                    format!("{msg}{code}")
                } else {
                    format!("{path}: {msg}{code}")
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    }
}

/// Infisical's error body `{reqId, statusCode, message, error}`, as text.
pub(super) fn describe(status: StatusCode, body: &Value) -> String {
    let message = message_of(body);
    let message = crate::shown::outside(&message);
    let kind = crate::shown::outside(body["error"].as_str().unwrap_or("").trim());
    match (kind.is_empty(), message.is_empty()) {
        (true, true) => format!("HTTP {}", status.as_u16()),
        (true, false) => format!("HTTP {}: {message}", status.as_u16()),
        (false, true) => format!("HTTP {} {kind}", status.as_u16()),
        (false, false) => format!("HTTP {} {kind}: {message}", status.as_u16()),
    }
}

impl Client {
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
        let location = s.long_location();
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
            let token = self.token().await?;
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
            if let Some(refusal) = crate::http::redirect_refusal(&resp) {
                return Err(unreachable(
                    format!("{method} {path} at {} {refusal}", self.settings.host),
                    Some("set INFISICAL_HOST to the instance's final address".into()),
                ));
            }
            let answer: Value = match super::read_answer(resp).await {
                Ok(a) => a,
                Err(crate::http::BodyError::Transport(e)) => {
                    return Err(unreachable(
                        format!(
                            "{method} {path} at {}: the answer was cut off: {}",
                            self.settings.host,
                            crate::http::describe_transport(&e)
                        ),
                        Some(
                            "check INFISICAL_HOST and network access to it; the next run retries"
                                .into(),
                        ),
                    ));
                }
                Err(e) => {
                    return Err(err(
                        format!("{method} {path} at {}: {e}", self.settings.host),
                        Some(super::TOO_LARGE_HINT.into()),
                    ));
                }
            };
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
                let can_login = self.can_login();
                if can_login && !relogged {
                    tracing::info!("Infisical access token expired; logging in again");
                    relogged = true;
                    self.drop_token();
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
            if status == StatusCode::FORBIDDEN
                && (answer["error"].as_str() == Some("ForbiddenReadSecretError")
                    || message_of(&answer).contains("permission to view secret value"))
            {
                return Err(self.hidden(name, &describe(status, &answer)));
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

    /// The identity may see the secret but not read its value: a permission error naming what
    /// to grant. The masked value is never compared, written or used as a credential.
    fn hidden(&self, name: &str, why: &str) -> Error {
        err(
            format!(
                "not allowed to read the value of secret {name} in {} ({why}); nothing was compared or written",
                self.settings.long_location()
            ),
            Some(format!(
                "give the machine identity a role on project {} whose Secrets permission includes \"Read Value\" (readValue) in environment {} at path {} — e.g. Developer or Viewer, or a custom role — not only \"Describe Secret\"",
                self.settings.project_id, self.settings.environment, self.settings.secret_path
            )),
        )
    }

    fn unexpected(&self, verb: &str, name: &str, status: StatusCode, answer: &Value) -> Error {
        err(
            format!(
                "cannot {verb} secret {name} in {} ({})",
                self.settings.long_location(),
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
        if secret["secretValueHidden"].as_bool() == Some(true)
            || secret["secretValue"].as_str() == Some(HIDDEN_MASK)
        {
            return Err(self.hidden(name, "the answer says secretValueHidden"));
        }
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

    /// [`Client::read`] for a value that is a credential (a Cloudflare API token, say): held
    /// as a [`Secret`] from the start, so it cannot end up in a log.
    pub async fn read_secret(&mut self, name: &str) -> Result<Option<Secret>, Error> {
        Ok(self.read(name).await?.map(|r| Secret::new(r.value)))
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
                    self.settings.long_location()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_described() {
        let denied = json!({"reqId": "r", "statusCode": 403, "message": "You are not allowed to read on secrets", "error": "PermissionDenied"});
        assert_eq!(
            describe(StatusCode::FORBIDDEN, &denied),
            "HTTP 403 PermissionDenied: You are not allowed to read on secrets"
        );
        assert_eq!(
            describe(
                StatusCode::NOT_FOUND,
                &json!({"message": "Secret not found"})
            ),
            "HTTP 404: Secret not found"
        );
        assert_eq!(describe(StatusCode::BAD_GATEWAY, &Value::Null), "HTTP 502");
    }

    #[test]
    fn a_422_with_an_array_message_is_shown_in_full() {
        let body = json!({"reqId": "r", "statusCode": 422, "error": "ValidationFailure", "message": [
            {"code": "invalid_type", "expected": "string", "received": "undefined", "path": ["secretValue"], "message": "Required"},
            {"code": "too_small", "path": ["secretPath", 0], "message": "String must contain at least 1 character(s)"}
        ]});
        assert_eq!(
            describe(StatusCode::UNPROCESSABLE_ENTITY, &body),
            "HTTP 422 ValidationFailure: secretValue: Required (invalid_type); secretPath.0: String must contain at least 1 character(s) (too_small)"
        );
    }
}
