//! Universal Auth: the login, the access token's lifetime (kept for the whole process, renewed,
//! revoked on exit), and the login hold-off after a refused login.
//!
//! Each login uses up one use of the client secret (`clientSecretNumUsesLimit`; the use after
//! the last is refused and revokes the secret), so a token is minted once and kept in a
//! process-wide cache keyed by host + client id: every pass of `watch` and every sink of a pass
//! share it. It is renewed (`/api/v1/auth/token/renew`, whose answer is a NEW token that
//! replaces the old one) once two thirds of its `expiresIn` have passed; a renewal that fails
//! falls back to one login. [`revoke_minted`] revokes what this process minted (`watch` on exit,
//! a one-shot run at its end).
//!
//! A login is never retried, whatever the failure: failed logins lock the machine identity
//! (three in a row lock it for 5 minutes by default). After a refused login (401/403) no run
//! logs in again before the hold-off has passed; a locked identity (401 "temporarily locked",
//! whose answer carries no duration) holds off for longer each time it is still locked, up to
//! the 24 h Infisical allows. The refusal is remembered in the state file (so cron runs and the
//! watch loop respect it) and in this process. It never logs or returns the client secret or an
//! access token: the client id, the host and Infisical's own message are all that errors and
//! logs carry.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::secrets::describe;
use super::{Client, Credentials, Error, err, unreachable};
use crate::secret::Secret;
use crate::state::{LoginRefusal, StateFile};

/// How long no login is tried after Infisical refused one (three failures lock the identity
/// for 5 minutes). Overridable through the hidden AUDSYNC_INFISICAL_LOGIN_HOLDOFF
/// (`config::infisical`; a test/ops knob, e.g. `0` once the lockout is known to be over).
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

/// The longest lockout Infisical allows (`lockoutDurationSeconds` max): the hold-off of a
/// locked identity grows to this and no further.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(86_400);

/// The hold-off after a refusal: the configured one; for a locked identity that was locked
/// the last time too, twice the last hold-off, at most [`MAX_LOCKOUT`].
pub fn next_holdoff(previous: Option<&LoginRefusal>, locked: bool, base: Duration) -> u64 {
    let base = base.as_secs();
    if !locked {
        return base;
    }
    let max = MAX_LOCKOUT.as_secs();
    previous
        .filter(|p| p.locked)
        .and_then(|p| p.holdoff)
        .map_or(base, |h| h.saturating_mul(2).max(base))
        .min(max.max(base))
}

/// An access token this process holds for one identity.
struct Held {
    host: String,
    client_id: String,
    token: Secret,
    /// When this token was issued (login or renewal).
    at: Instant,
    /// Its `expiresIn`; `None` (0) never expires by time.
    ttl: Option<Duration>,
}

impl Held {
    fn is(&self, host: &str, client_id: &str) -> bool {
        self.host == host && self.client_id == client_id
    }
}

/// The tokens minted by this process, keyed by host + client id (shared by every client).
static TOKENS: Mutex<Vec<Held>> = Mutex::new(Vec::new());

/// What the cache has for one identity.
enum Cached {
    Fresh(Secret),
    /// Two thirds of its lifetime are over: renew it now.
    Renew(Secret),
    None,
}

fn cached(host: &str, client_id: &str) -> Cached {
    let Ok(mut v) = TOKENS.lock() else {
        return Cached::None;
    };
    let now = Instant::now();
    // A token within 5 s of its end is not worth sending: it may expire on the way.
    v.retain(|h| {
        !h.is(host, client_id)
            || h.ttl
                .is_none_or(|ttl| now + Duration::from_secs(5).min(ttl / 10) < h.at + ttl)
    });
    match v.iter().find(|h| h.is(host, client_id)) {
        None => Cached::None,
        Some(h) => match h.ttl {
            Some(ttl) if now >= h.at + ttl * 2 / 3 => Cached::Renew(h.token.clone()),
            _ => Cached::Fresh(h.token.clone()),
        },
    }
}

fn remember(host: &str, client_id: &str, token: &Secret, expires_in: Option<u64>) {
    if let Ok(mut v) = TOKENS.lock() {
        v.retain(|h| !h.is(host, client_id));
        v.push(Held {
            host: host.to_string(),
            client_id: client_id.to_string(),
            token: token.clone(),
            at: Instant::now(),
            ttl: expires_in.filter(|&s| s > 0).map(Duration::from_secs),
        });
    }
}

fn forget(host: &str, client_id: &str) {
    if let Ok(mut v) = TOKENS.lock() {
        v.retain(|h| !h.is(host, client_id));
    }
}

/// Revoke every token this process minted (`POST /api/v1/auth/token/revoke`; the token in the
/// body is the authority). Best effort and bounded: a token that is already dead, or an
/// Infisical that does not answer, never holds up the exit.
pub async fn revoke_minted() {
    let held: Vec<Held> = match TOKENS.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(_) => return,
    };
    if held.is_empty() {
        return;
    }
    let Ok(http) = crate::http::client(Duration::from_secs(5), crate::http::Redirects::None) else {
        return;
    };
    for h in held {
        let sent = http
            .post(format!("{}/api/v1/auth/token/revoke", h.host))
            .json(&json!({"accessToken": h.token.expose()}))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(host = %h.host, client_id = %h.client_id, "Infisical access token revoked");
            }
            Ok(r) => {
                tracing::debug!(host = %h.host, status = r.status().as_u16(), "Infisical did not revoke the access token (already expired or revoked?)");
            }
            Err(e) => {
                tracing::debug!(host = %h.host, error = %crate::http::describe_transport(&e.without_url()), "cannot revoke the Infisical access token");
            }
        }
    }
}

impl Client {
    /// The access token: the one this client holds, else the process's (renewed when two
    /// thirds of its lifetime are over), else a fresh login (or INFISICAL_TOKEN).
    pub(super) async fn token(&mut self) -> Result<Secret, Error> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        if let Credentials::UniversalAuth { client_id, .. } = &self.settings.credentials {
            let client_id = client_id.clone();
            match cached(&self.settings.host, &client_id) {
                Cached::Fresh(t) => {
                    self.token = Some(t.clone());
                    return Ok(t);
                }
                Cached::Renew(old) => match self.renew(&client_id, &old).await {
                    Ok(t) => {
                        self.token = Some(t.clone());
                        return Ok(t);
                    }
                    Err(why) => {
                        tracing::info!(reason = %why, "Infisical access token not renewed; logging in once instead");
                        forget(&self.settings.host, &client_id);
                    }
                },
                Cached::None => {}
            }
        }
        let t = self.login().await?;
        self.token = Some(t.clone());
        Ok(t)
    }

    /// `POST /api/v1/auth/token/renew`: the answer is a new token (with a fresh `expiresIn`,
    /// capped by the max TTL), which replaces the old one. Not retried: a failure means one
    /// login instead.
    async fn renew(&self, client_id: &str, old: &Secret) -> Result<Secret, RenewError> {
        let path = "/api/v1/auth/token/renew";
        let http = self.http().map_err(|e| RenewError(e.to_string()))?;
        let resp = http
            .post(format!("{}{path}", self.settings.host))
            .json(&json!({"accessToken": old.expose()}))
            .send()
            .await
            .map_err(|e| RenewError(crate::http::describe_transport(&e.without_url())))?;
        let status = resp.status();
        // Bounded like every answer: one over the cap is a failed renewal (a login instead).
        let body: Value = super::read_answer(resp)
            .await
            .map_err(|e| RenewError(format!("HTTP {}: {e}", status.as_u16())))?;
        if !status.is_success() {
            return Err(RenewError(describe(status, &body)));
        }
        let token = body["accessToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RenewError("the renewal answered without an accessToken".into()))?;
        let token = Secret::new(token);
        let expires_in = body["expiresIn"].as_u64();
        remember(&self.settings.host, client_id, &token, expires_in);
        tracing::debug!(expires_in, "Infisical access token renewed");
        Ok(token)
    }

    /// Forget the token Infisical called expired; the next [`Client::token`] logs in again.
    pub(super) fn drop_token(&mut self) {
        self.token = None;
        if let Credentials::UniversalAuth { client_id, .. } = &self.settings.credentials {
            forget(&self.settings.host, client_id);
        }
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
            let until = r.at + r.holdoff.unwrap_or(self.settings.login_holdoff.as_secs());
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
        let body: Value = match super::read_answer(resp).await {
            Ok(b) => b,
            // A refusal stays a refusal (recorded: the hold-off protects the identity); its
            // reason says why the answer could not be read.
            Err(e) if !status.is_success() => json!({ "message": e.to_string() }),
            Err(crate::http::BodyError::Transport(e)) => {
                return Err(unreachable(
                    format!(
                        "Universal Auth login at {}: the answer was cut off: {} ({lockout})",
                        self.settings.host,
                        crate::http::describe_transport(&e)
                    ),
                    Some("check INFISICAL_HOST and network access to it".into()),
                ));
            }
            Err(e) => {
                return Err(err(
                    format!(
                        "Universal Auth login at {}: {e} ({lockout})",
                        self.settings.host
                    ),
                    Some(super::TOO_LARGE_HINT.into()),
                ));
            }
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let at = now_secs();
            let reason = describe(status, &body);
            let lower = reason.to_ascii_lowercase();
            let locked = lower.contains("temporarily locked");
            let holdoff = next_holdoff(
                self.last_refusal(&client_id).as_ref(),
                locked,
                self.settings.login_holdoff,
            );
            // Only a lock's hold-off is remembered (it grows); any other uses the configured one.
            self.record_refusal(
                &client_id,
                at,
                reason.clone(),
                locked,
                locked.then_some(holdoff),
            );
            let hint = if locked {
                "Infisical locked this machine identity after failed logins (for 5 minutes by default, up to 24 h as the identity's lockout settings say; the answer does not say how long): wait, or clear the lockout in Infisical (Access Control > Identities > the identity > Universal Auth), and check INFISICAL_CLIENT_SECRET"
            } else if lower.contains("usage limit") || lower.contains("expired client secret") {
                "the client secret is used up or expired (Infisical revokes it): create a new client secret for the machine identity (Universal Auth > Client Secrets) and update INFISICAL_CLIENT_SECRET"
            } else {
                "check INFISICAL_CLIENT_ID and INFISICAL_CLIENT_SECRET (or their _FILE), and that the client secret is not expired or revoked; after three failures wait 5 minutes before the next try"
            };
            return Err(err(
                format!(
                    "Universal Auth login for the machine identity (INFISICAL_CLIENT_ID) failed ({}); not retrying the login until {} to avoid the lockout (three failed logins lock the machine identity for 5 minutes)",
                    reason,
                    clock(at + holdoff)
                ),
                Some(hint.into()),
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
        let token = Secret::new(token);
        let expires_in = body["expiresIn"].as_u64();
        remember(&self.settings.host, &client_id, &token, expires_in);
        tracing::info!(
            expires_in,
            max_ttl = body["accessTokenMaxTTL"].as_u64(),
            "logged in to Infisical"
        );
        Ok(token)
    }

    /// The refusal of this identity's last login, while its hold-off lasts. A refusal dated
    /// more than a minute in the future (the clock went back) is ignored.
    fn refusal_in_force(&self, client_id: &str) -> Option<LoginRefusal> {
        let now = now_secs();
        let base = self.settings.login_holdoff.as_secs();
        // A hold-off set to 0 (the ops knob: "the lockout is known to be over") lifts a grown
        // one too.
        self.last_refusal(client_id).filter(|r| {
            now < r.at.saturating_add(if base == 0 {
                0
            } else {
                r.holdoff.unwrap_or(base)
            })
        })
    }

    /// The last refusal of this identity's login, whether or not its hold-off is over.
    fn last_refusal(&self, client_id: &str) -> Option<LoginRefusal> {
        let now = now_secs();
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
    }

    fn record_refusal(
        &self,
        client_id: &str,
        at: u64,
        reason: String,
        locked: bool,
        holdoff: Option<u64>,
    ) {
        let r = LoginRefusal {
            host: self.settings.host.clone(),
            client_id: client_id.to_string(),
            at,
            reason,
            locked,
            holdoff,
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

/// Why a token was not renewed (a login follows instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
struct RenewError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_shows_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00 UTC");
        assert_eq!(clock(86_400 + 3_600 * 13 + 60 * 5 + 9), "13:05:09 UTC");
    }

    #[test]
    fn a_locked_identity_holds_off_longer_each_time_up_to_24h() {
        let base = Duration::from_secs(300);
        let refusal = |locked, holdoff| LoginRefusal {
            host: "h".into(),
            client_id: "c".into(),
            at: 1,
            reason: "HTTP 401".into(),
            locked,
            holdoff,
        };
        assert_eq!(next_holdoff(None, false, base), 300);
        assert_eq!(next_holdoff(None, true, base), 300);
        assert_eq!(
            next_holdoff(Some(&refusal(true, Some(300))), true, base),
            600
        );
        assert_eq!(
            next_holdoff(Some(&refusal(true, Some(600))), true, base),
            1200
        );
        assert_eq!(
            next_holdoff(Some(&refusal(true, Some(80_000))), true, base),
            86_400
        );
        assert_eq!(
            next_holdoff(Some(&refusal(true, Some(86_400))), true, base),
            86_400
        );
        // A refusal that was not a lock does not grow the next one.
        assert_eq!(
            next_holdoff(Some(&refusal(false, Some(300))), true, base),
            300
        );
        // The test/ops knob of 0 stays 0.
        assert_eq!(
            next_holdoff(Some(&refusal(true, Some(0))), true, Duration::ZERO),
            0
        );
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
