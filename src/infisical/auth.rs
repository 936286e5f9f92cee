//! Universal Auth: the login, the access token of a pass (kept, dropped when Infisical calls it
//! expired), and the login hold-off after a refused login.
//!
//! A login is never retried, whatever the failure: three failed logins lock the machine
//! identity for 5 minutes, and each login uses up one use of the client secret. After a refused
//! login (401/403) no run logs in again before the hold-off has passed; the refusal is
//! remembered in the state file (so cron runs and the watch loop respect it) and in this
//! process. It never logs or returns the client secret or an access token: the client id, the
//! host and Infisical's own message are all that errors and logs carry.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::secrets::describe;
use super::{Client, Credentials, Error, err, unreachable};
use crate::secret::Secret;
use crate::state::{LoginRefusal, StateFile};

/// How long no login is tried after Infisical refused one (three failures lock the identity
/// for 5 minutes). Overridable through the hidden AUDSYNC_INFISICAL_LOGIN_HOLDOFF
/// (`config_infisical`; a test/ops knob, e.g. `0` once the lockout is known to be over).
pub const LOGIN_HOLDOFF: Duration = Duration::from_secs(300);

pub(crate) fn now_secs() -> u64 {
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

/// A 403 that means "log in again", not "not allowed".
pub(super) fn is_expired(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::FORBIDDEN
        && body["message"]
            .as_str()
            .is_some_and(|m| m.to_ascii_lowercase().contains("expired"))
}

/// Refusals seen by this process, for when the state file cannot be written (and for runs
/// without one).
static REFUSED: Mutex<Vec<LoginRefusal>> = Mutex::new(Vec::new());

impl Client {
    /// The access token of this pass: the one held, else a fresh login (or INFISICAL_TOKEN).
    pub(super) async fn token(&mut self) -> Result<Secret, Error> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let t = self.login().await?;
        self.token = Some(t.clone());
        Ok(t)
    }

    /// Forget the token Infisical called expired; the next [`Client::token`] logs in again.
    pub(super) fn drop_token(&mut self) {
        self.token = None;
    }

    /// Whether a new token can be had by logging in (not with a ready INFISICAL_TOKEN).
    pub(super) fn can_login(&self) -> bool {
        matches!(self.settings.credentials, Credentials::UniversalAuth { .. })
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
                    "Universal Auth login for the machine identity (INFISICAL_CLIENT_ID) was refused at {} ({}); not retrying the login until {} to avoid the lockout (three failed logins lock the machine identity for 5 minutes)",
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
        // The client id is a credential: never logged.
        tracing::debug!(path, "infisical login");
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
        if let Some(refusal) = crate::http::redirect_refusal(&resp) {
            return Err(unreachable(
                format!(
                    "Universal Auth login at {} {refusal} ({lockout})",
                    self.settings.host
                ),
                Some("set INFISICAL_HOST to the instance's final address".into()),
            ));
        }
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let at = now_secs();
            self.record_refusal(&client_id, at, describe(status, &body));
            return Err(err(
                format!(
                    "Universal Auth login for the machine identity (INFISICAL_CLIENT_ID) failed ({}); not retrying the login until {} to avoid the lockout (three failed logins lock the machine identity for 5 minutes)",
                    describe(status, &body),
                    clock(at + self.settings.login_holdoff.as_secs())
                ),
                Some("check INFISICAL_CLIENT_ID and INFISICAL_CLIENT_SECRET (or their _FILE), and that the client secret is not expired or revoked; after three failures wait 5 minutes before the next try".into()),
            ));
        }
        if !status.is_success() {
            return Err(err(
                format!(
                    "Universal Auth login for the machine identity (INFISICAL_CLIENT_ID) failed ({}); {lockout}",
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_shows_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00 UTC");
        assert_eq!(clock(86_400 + 3_600 * 13 + 60 * 5 + 9), "13:05:09 UTC");
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
}
