//! Small helpers shared by the HTTP clients (Cloudflare, Infisical, the Access edge): the
//! retry policy and its waits, client construction, and how transport failures are described.
//!
//! Never includes a URL's query or a header in what it returns: callers put the result in
//! errors and logs.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

/// Retry policy for 429, 5xx and transport errors. Other 4xx are never retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    /// Upper bound for any single wait, including a server's `Retry-After`.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Exponential backoff for try number `attempt` (1-based), with up to +25% jitter so that many
/// hosts on one cron minute do not retry in lockstep; never longer than `max_delay`.
pub fn backoff(p: &RetryPolicy, attempt: u32) -> Duration {
    let exp = p
        .base_delay
        .saturating_mul(1 << attempt.saturating_sub(1).min(16));
    (exp + exp.mul_f64(fastrand::f64() * 0.25)).min(p.max_delay)
}

/// `Retry-After` as seconds or as an HTTP date (a date in the past means now).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// How long to wait before retrying after a 429/5xx answer to try number `attempt`: the
/// server's `Retry-After` when it sends one, else backoff; never longer than `max_delay`, so a
/// server asking for an hour cannot stall a cron run.
pub fn retry_wait(p: &RetryPolicy, headers: &HeaderMap, attempt: u32) -> Duration {
    retry_after(headers)
        .unwrap_or_else(|| backoff(p, attempt))
        .min(p.max_delay)
}

/// Describe a transport-level reqwest failure: timeout, connect, or other, plus its causes.
pub fn describe_transport(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out (see --timeout / AUDSYNC_TIMEOUT)"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        causes.push(c.to_string());
        src = c.source();
    }
    if causes.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}

/// Build a reqwest client; TLS set-up can fail (no system CA certificates), and that must be an
/// error the user can act on, never a panic in the middle of `watch`.
pub fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, String> {
    builder.build().map_err(|e| {
        let mut msg = format!("cannot set up the HTTP client: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            msg.push_str(&format!(": {c}"));
            src = c.source();
        }
        msg + " (check the system CA certificates: package ca-certificates, SSL_CERT_FILE)"
    })
}
