//! What every HTTP client of audsync shares (Cloudflare, Infisical, the Access edge): the one
//! client builder ([`client`]: timeouts, user agent, redirect policy), the one retry loop
//! ([`send`]: 429/5xx/transport retried with backoff and a capped `Retry-After`), and how
//! transport failures are described.
//!
//! It never logs or returns a URL's query, a header or a body: callers put what it returns in
//! errors and logs, and requests carry credentials. It never re-sends a request that is not
//! safe to repeat once it may have reached the server ([`Resend`]).

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

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

/// The largest HTTP answer body audsync reads (Cloudflare, Infisical, the team's key set).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the cap (announced by `Content-Length`, or found while reading).
    TooLarge {
        cap: usize,
    },
    Transport(reqwest::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge { cap } => write!(
                f,
                "the answer is larger than the {} MiB audsync reads",
                cap / (1024 * 1024)
            ),
            BodyError::Transport(e) => f.write_str(&describe_transport(e)),
        }
    }
}

/// Read an answer's body, at most `cap` bytes: a longer one (or one announcing more) stops
/// with [`BodyError::TooLarge`] after at most `cap` bytes held, so a hostile or broken server
/// cannot make audsync buffer 100 MB.
pub async fn read_body(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge { cap });
    }
    let mut buf = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(e.without_url()))?
    {
        if buf.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge { cap });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Whether a client follows redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// reqwest's default policy (up to 10 hops). No client of audsync uses it (a request that
    /// carries a credential must never be sent on to another host); tests compare with it.
    #[cfg(test)]
    Follow,
    /// Never: the redirect is the answer (the Access edge's 302 to the login page).
    None,
}

/// A 30x answer as an error message naming the `Location` host (never its path or query, which
/// may carry tokens); `None` for any other answer. The clients follow no redirect: a request
/// carrying a credential is never sent on to a host the server names.
pub fn redirect_refusal(resp: &reqwest::Response) -> Option<String> {
    let status = resp.status();
    if !status.is_redirection() {
        return None;
    }
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let host = url::Url::parse(resp.url().as_str())
        .and_then(|base| base.join(location))
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "(no usable Location)".into());
    Some(format!(
        "answered HTTP {} with a redirect to host {host}; audsync follows no redirect (the credential would go along): point the URL setting at the final address",
        status.as_u16()
    ))
}

/// Why no request could be made at all (before anything was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A credential cannot be a header value (never quoted: it is a secret).
    #[error("a credential holds characters not allowed in an HTTP header")]
    HeaderValue,
    /// TLS set-up failed (no system CA certificates, …): the cause chain and the fix.
    #[error("{0}")]
    Client(String),
}

/// A header value holding a credential: marked sensitive, so no debug output of the request
/// (reqwest's, hyper's, ours) shows it.
pub fn sensitive(value: &str) -> Result<reqwest::header::HeaderValue, SetupError> {
    let mut v =
        reqwest::header::HeaderValue::from_str(value).map_err(|_| SetupError::HeaderValue)?;
    v.set_sensitive(true);
    Ok(v)
}

/// Whether `url` may carry credentials: https, or plain http to a loopback address
/// (`127.0.0.0/8`, `::1`, `localhost`).
pub fn credential_safe(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}

/// The one way to make an HTTP client: `timeout` for the whole request (at least 1 ms),
/// connecting bounded by 10 s, user agent `audsync/<version>`, redirects as asked.
pub fn client(timeout: Duration, redirects: Redirects) -> Result<reqwest::Client, SetupError> {
    let policy = match redirects {
        #[cfg(test)]
        Redirects::Follow => reqwest::redirect::Policy::default(),
        Redirects::None => reqwest::redirect::Policy::none(),
    };
    build(
        reqwest::Client::builder()
            .redirect(policy)
            .timeout(timeout.max(Duration::from_millis(1)))
            .connect_timeout(timeout.clamp(Duration::from_millis(1), Duration::from_secs(10)))
            .user_agent(concat!("audsync/", env!("CARGO_PKG_VERSION"))),
    )
}

/// Build a reqwest client; TLS set-up can fail (no system CA certificates), and that must be an
/// error the user can act on, never a panic in the middle of `watch`.
fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, SetupError> {
    builder.build().map_err(|e| {
        let mut msg = format!("cannot set up the HTTP client: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            msg.push_str(&format!(": {c}"));
            src = c.source();
        }
        SetupError::Client(
            msg + " (check the system CA certificates: package ca-certificates, SSL_CERT_FILE)",
        )
    })
}

/// Whether a request may be sent again once it may have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Sending it twice has the effect of sending it once (GET, PUT, PATCH; Infisical's create,
    /// whose repeat answers "already exists", which the caller handles): every 429, 5xx and
    /// transport failure is retried.
    Always,
    /// Sending it twice could act twice (a Cloudflare POST creates a second application or
    /// policy): retried only when it was certainly not processed, i.e. a connect failure or a
    /// 429. A 5xx or a failure after connecting ends the loop.
    IfNotProcessed,
}

/// What one request is, for the retry loop's logs (never a query, a header or a body).
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// `cloudflare`, `infisical`: the service, as it appears in log messages.
    pub service: &'static str,
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    pub resend: Resend,
}

/// The answer the loop stopped at: a success, a status that is not retried, or a retryable
/// one after the last attempt (`attempts` says how many were made).
#[derive(Debug)]
pub struct Answer {
    pub response: reqwest::Response,
    pub attempts: u32,
}

/// A transport failure (no answer at all) that is not retried, or the one of the last attempt.
#[derive(Debug)]
pub struct Failed {
    pub error: reqwest::Error,
    pub attempts: u32,
}

/// The one retry loop. `request` builds the request afresh for every attempt (headers and
/// body included). 429 and 5xx answers and transport failures are retried up to
/// `policy.attempts` tries in all, as [`Resend`] allows, waiting [`backoff`] after a transport
/// failure and [`retry_wait`] (the server's `Retry-After`, capped) after an answer. Every other
/// answer is returned at once for the caller to judge.
pub async fn send(
    policy: &RetryPolicy,
    call: Call<'_>,
    mut request: impl FnMut() -> reqwest::RequestBuilder,
) -> Result<Answer, Failed> {
    let Call {
        service,
        method,
        path,
        resend,
    } = call;
    let mut attempt = 0;
    loop {
        attempt += 1;
        tracing::debug!(%method, path, attempt, "{service} request");
        let response = match request().send().await {
            Ok(r) => r,
            Err(error) => {
                let may_retry = resend == Resend::Always || error.is_connect();
                if may_retry && attempt < policy.attempts {
                    let wait = backoff(policy, attempt);
                    tracing::warn!(%method, path, attempt, error = %describe_transport(&error), ?wait, "{service} request failed; retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(Failed {
                    error,
                    attempts: attempt,
                });
            }
        };
        let status = response.status();
        // 429 means "not processed"; a 5xx may have been, so only 429 retries what must not be
        // repeated.
        let retryable = status == StatusCode::TOO_MANY_REQUESTS
            || (status.is_server_error() && resend == Resend::Always);
        if retryable && attempt < policy.attempts {
            let wait = retry_wait(policy, response.headers(), attempt);
            tracing::warn!(%method, path, status = status.as_u16(), attempt, ?wait, "{service} answered with a retryable status; waiting");
            let _progress =
                crate::progress::wait(format!("{service} (it asked to retry later)"), wait);
            tokio::time::sleep(wait).await;
            continue;
        }
        return Ok(Answer {
            response,
            attempts: attempt,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server on 127.0.0.1 answering the n-th request (0-based) with `statuses[n]` (the last
    /// one again after the list); returns its URL and the number of requests seen.
    fn server(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let status = statuses[n.min(statuses.len() - 1)];
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nRetry-After: 0\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                );
            }
        });
        (url, seen)
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        }
    }

    async fn run(statuses: Vec<u16>, method: Method, resend: Resend) -> (u16, u32, usize) {
        let (url, seen) = server(statuses);
        let http = client(Duration::from_secs(10), Redirects::Follow).unwrap();
        let call = Call {
            service: "test",
            method: &method,
            path: "/x",
            resend,
        };
        let a = send(&fast(), call, || {
            http.request(method.clone(), format!("{url}/x"))
        })
        .await
        .unwrap();
        (
            a.response.status().as_u16(),
            a.attempts,
            seen.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn retryable_answers_are_retried_until_success_or_the_last_attempt() {
        assert_eq!(
            run(vec![503, 429, 200], Method::GET, Resend::Always).await,
            (200, 3, 3)
        );
        assert_eq!(
            run(vec![500], Method::GET, Resend::Always).await,
            (500, 3, 3)
        );
        assert_eq!(
            run(vec![404, 200], Method::GET, Resend::Always).await,
            (404, 1, 1),
            "other 4xx are never retried"
        );
    }

    #[tokio::test]
    async fn what_must_not_be_repeated_is_retried_only_after_a_429() {
        assert_eq!(
            run(vec![502, 200], Method::POST, Resend::IfNotProcessed).await,
            (502, 1, 1),
            "a 5xx after a POST may have been processed"
        );
        assert_eq!(
            run(vec![429, 201], Method::POST, Resend::IfNotProcessed).await,
            (201, 2, 2)
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_and_then_returned() {
        // A port nobody listens on: every attempt fails to connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = client(Duration::from_secs(5), Redirects::None).unwrap();
        for resend in [Resend::Always, Resend::IfNotProcessed] {
            let call = Call {
                service: "test",
                method: &Method::POST,
                path: "/x",
                resend,
            };
            let f = send(&fast(), call, || {
                http.post(format!("http://127.0.0.1:{port}/x"))
            })
            .await
            .unwrap_err();
            assert!(f.error.is_connect(), "{f:?}");
            assert_eq!(f.attempts, 3, "a connect failure never reached the server");
        }
    }

    #[tokio::test]
    async fn redirects_follow_the_policy_asked_for() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = url.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let answer = if req.starts_with("GET /from") {
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {target}/to\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                };
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        let follow = client(Duration::from_secs(5), Redirects::Follow).unwrap();
        let none = client(Duration::from_secs(5), Redirects::None).unwrap();
        let from = format!("{url}/from");
        assert_eq!(follow.get(&from).send().await.unwrap().status(), 200);
        assert_eq!(none.get(&from).send().await.unwrap().status(), 302);
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

#[cfg(test)]
mod trust_tests {
    use super::*;

    #[test]
    fn credentials_go_over_https_or_loopback_http_only() {
        let ok = |u: &str| credential_safe(&url::Url::parse(u).unwrap());
        assert!(ok("https://api.cloudflare.com/client/v4"));
        assert!(ok("http://127.0.0.1:8080/"));
        assert!(ok("http://127.9.9.9/"));
        assert!(ok("http://[::1]:80/"));
        assert!(ok("http://LOCALHOST:1/"));
        assert!(!ok("http://192.0.2.1/"));
        assert!(!ok("http://localhost.example.com/"));
        assert!(!ok("http://2130706433.example/"));
        assert!(!ok("ftp://127.0.0.1/"));
    }

    #[test]
    fn a_credential_header_is_sensitive() {
        assert!(sensitive("k").unwrap().is_sensitive());
        assert!(sensitive("a\nb").is_err());
    }
}
