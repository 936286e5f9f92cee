//! The Cloudflare API v4 client: authentication, the `{success, errors, result}` envelope,
//! pagination, timeouts and bounded retries (the shared loop of [`crate::http::send`]).
//!
//! Owns every request to Cloudflare. It never logs a header or a credential; errors carry
//! Cloudflare's code and message, the HTTP status and the path, never the token. It never sends
//! a POST twice once it may have reached the server (it would create a second application or
//! policy), and never reads flags or the environment: it is given its base URL and credential.

pub mod apps;
pub mod edge;
pub mod jwt;
pub mod policies;
pub mod tunnel;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use crate::secret::Secret;

/// One path segment, percent-encoded: everything but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, so a value from an answer, the state file or a flag
/// (`../`, `?`, `#`, `/`) can never step out of its segment. `.` and `..` alone are encoded too
/// (URL parsers resolve them as dot segments even when they stand by themselves).
pub fn seg(s: &str) -> String {
    if s == "." || s == ".." {
        return s.replace('.', "%2E");
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Cloudflare object id as Access gives it: a UUID (`8-4-4-4-12` hex digits; also the 32
/// digits without dashes, as `--app-id` accepts them).
pub fn is_uuid(s: &str) -> bool {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A Cloudflare account id: 32 hex digits.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `Authorization: Bearer <token>` (scoped API token; recommended).
    Token(Secret),
    /// Legacy global API key: `X-Auth-Email` + `X-Auth-Key`.
    GlobalKey { email: String, key: Secret },
    /// No credential (`--source edge` without any configured): API calls fail with Cloudflare's
    /// authentication error, so every API-only step is skipped before it is tried.
    None,
}

use crate::http::Resend;
pub use crate::http::RetryPolicy;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cloudflare API {method} {path} failed (HTTP {status}): {}", describe(.errors))]
    Api {
        method: Method,
        path: String,
        status: u16,
        errors: Vec<ApiMessage>,
    },
    #[error("Cloudflare API {method} {path}: malformed answer (HTTP {status}): {detail}")]
    Malformed {
        method: Method,
        path: String,
        status: u16,
        detail: String,
    },
    #[error("Cloudflare API {method} {path}: {}", crate::http::describe_transport(.source))]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "Cloudflare API {method} {path}: still rate limited (HTTP 429) after {attempts} attempts"
    )]
    RateLimited {
        method: Method,
        path: String,
        attempts: u32,
    },
    #[error("{0}")]
    Lookup(String),
    #[error("{0}")]
    Setup(#[from] crate::http::SetupError),
    /// The API answered with a redirect, which is never followed (it would carry the token).
    #[error("Cloudflare API {method} {path} {refusal} (CLOUDFLARE_API_URL)")]
    Redirected {
        method: reqwest::Method,
        path: String,
        refusal: String,
    },
}

impl Error {
    /// A sentence telling the user what to do, for failures we recognise.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Api { status, errors, .. } => {
                let codes: Vec<i64> = errors.iter().map(|e| e.code).collect();
                if codes.contains(&10000) || *status == 401 {
                    Some("check CLOUDFLARE_API_TOKEN (or CLOUDFLARE_EMAIL + CLOUDFLARE_API_KEY) and that the token has \"Access: Apps and Policies Read\" on the account".into())
                } else if *status == 403 {
                    Some("the credential is valid but not allowed here: give the token \"Access: Apps and Policies Read\" (and Edit for `setup`) on this account, and check CLOUDFLARE_ACCOUNT_ID".into())
                } else if *status == 404 {
                    Some("check CLOUDFLARE_ACCOUNT_ID and --app-id: the account or application does not exist (an application that was deleted and recreated has a new id)".into())
                } else {
                    None
                }
            }
            Error::Transport { .. } => Some(
                "check network access to the Cloudflare API (or CLOUDFLARE_API_URL); the next run retries".into(),
            ),
            Error::RateLimited { .. } => Some(
                "Cloudflare allows 1,200 requests per 5 minutes per user, shared with the dashboard; run less often or use --app-id".into(),
            ),
            _ => None,
        }
    }

    /// True when the object asked for does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { status: 404, .. })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiMessage {
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

fn describe(errors: &[ApiMessage]) -> String {
    if errors.is_empty() {
        return "no error details in the answer".into();
    }
    errors
        .iter()
        .map(|e| format!("[{}] {}", e.code, crate::shown::outside(&e.message)))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default)]
pub struct ResultInfo {
    /// Every field is optional in the schema, and none is trusted to end the loop by itself:
    /// see [`Client::list_all`].
    #[serde(default)]
    pub total_pages: Option<u64>,
    #[serde(default)]
    pub total_count: Option<u64>,
    #[serde(default)]
    pub per_page: Option<u64>,
}

/// No listing reads more pages than this, whatever `result_info` says (at the largest page
/// sizes, 200 pages are 200,000 Access applications or 10,000 accounts).
pub const MAX_PAGES: u32 = 200;

/// How many pages a listing may take: what `total_count` and the page size imply (plus one, for
/// an item created meanwhile), never more than [`MAX_PAGES`].
pub fn page_bound(info: &ResultInfo, per_page: u32) -> u32 {
    let size = info
        .per_page
        .filter(|&n| n > 0)
        .unwrap_or(u64::from(per_page))
        .max(1);
    match info.total_count {
        Some(total) => {
            let pages = total.div_ceil(size).saturating_add(1);
            u32::try_from(pages)
                .unwrap_or(MAX_PAGES)
                .clamp(1, MAX_PAGES)
        }
        None => MAX_PAGES,
    }
}

/// A short name for a list item, for the warning that skips it: its `name`, `domain` and `id`
/// when present (list items carry no credential).
fn item_label(v: &Value) -> String {
    let field = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let parts: Vec<String> = [
        ("name", field("name")),
        ("domain", field("domain")),
        ("id", field("id")),
    ]
    .into_iter()
    .filter_map(|(k, x)| x.map(|x| format!("{k} {x:?}")))
    .collect();
    if parts.is_empty() {
        "an item without name, domain or id".into()
    } else {
        parts.join(", ")
    }
}

/// One page of a list endpoint.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items on the page that could not be used (warned about, not returned).
    pub skipped: usize,
    pub info: ResultInfo,
}

/// `GET /user/tokens/verify` (or `/accounts/{id}/tokens/verify`): `id` and `status` are
/// required, `expires_on` / `not_before` optional date-times.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TokenStatus {
    #[serde(default)]
    pub id: String,
    /// `active`, `disabled` or `expired`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub expires_on: Option<String>,
}

/// How close an expiry must be to be warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

impl TokenStatus {
    /// The time left before `expires_on`, when it is set and parses (negative: already past).
    pub fn expires_in(&self, now: std::time::SystemTime) -> Option<Result<Duration, Duration>> {
        let at = humantime::parse_rfc3339_weak(self.expires_on.as_deref()?.trim()).ok()?;
        Some(match at.duration_since(now) {
            Ok(left) => Ok(left),
            Err(e) => Err(e.duration()),
        })
    }

    /// A warning when the token expires within [`EXPIRY_WARNING`] (or has expired).
    pub fn expiry_warning(&self, now: std::time::SystemTime) -> Option<String> {
        let on = self.expires_on.as_deref().unwrap_or("");
        match self.expires_in(now)? {
            Ok(left) if left <= EXPIRY_WARNING => Some(format!(
                "the Cloudflare API token expires on {on} (in {} day(s)): roll it (My Profile > API Tokens > Roll) and update CLOUDFLARE_API_TOKEN",
                left.as_secs() / 86_400
            )),
            Ok(_) => None,
            Err(_) => Some(format!(
                "the Cloudflare API token expired on {on}: create a new one and update CLOUDFLARE_API_TOKEN"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    /// Requests sent (every attempt), shared by clones: the pass reports it.
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    http: Result<reqwest::Client, crate::http::SetupError>,
    base: String,
    auth: Auth,
    retry: RetryPolicy,
}

impl Client {
    pub fn new(base: &str, auth: Auth, timeout: Duration, retry: RetryPolicy) -> Self {
        // No redirect is followed: the token or key would go to whatever host a 30x names.
        let http = crate::http::client(timeout, crate::http::Redirects::None);
        Client {
            requests: Default::default(),
            http,
            base: base.trim_end_matches('/').to_string(),
            auth,
            retry,
        }
    }

    /// Check the API token itself: `GET /user/tokens/verify` for a user-owned token, and, when
    /// that endpoint does not know it and an account is given, `GET /accounts/{id}/tokens/verify`
    /// for an account-owned one. `None` for a global API key (tokens/verify is for tokens only).
    pub async fn verify_token(&self, account: Option<&str>) -> Option<Result<TokenStatus, Error>> {
        if !matches!(self.auth, Auth::Token(_)) {
            return None;
        }
        let user = self.get::<TokenStatus>("/user/tokens/verify", &[]).await;
        Some(match (user, account) {
            (
                Err(Error::Api {
                    status: 400 | 401 | 403 | 404,
                    ..
                }),
                Some(acc),
            ) => {
                self.get(&format!("/accounts/{}/tokens/verify", seg(acc)), &[])
                    .await
            }
            (other, _) => other,
        })
    }

    /// How many HTTP requests this client (and its clones) sent.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// GET a single object and decode `result`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, Error> {
        let (result, _) = self.call(Method::GET, path, query, None).await?;
        decode(&Method::GET, path, result)
    }

    /// Send a body (POST/PUT) and decode `result`.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<T, Error> {
        let (result, _) = self.call(method.clone(), path, &[], Some(body)).await?;
        decode(&method, path, result)
    }

    /// GET one page of a list endpoint.
    pub async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        page: u32,
        per_page: u32,
    ) -> Result<Page<T>, Error> {
        let mut q = query.to_vec();
        q.push(("page", page.to_string()));
        q.push(("per_page", per_page.to_string()));
        let (result, info) = self.call(Method::GET, path, &q, None).await?;
        let raw: Vec<Value> = decode(&Method::GET, path, result)?;
        // An item this program cannot use (no `id`, say: the schema requires only `domain` and
        // `type`) is skipped with a warning naming it; it never fails the page.
        let mut items = Vec::with_capacity(raw.len());
        let mut skipped = 0usize;
        for v in raw {
            let label = item_label(&v);
            match serde_json::from_value::<T>(v) {
                Ok(t) => items.push(t),
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(path, item = %label, reason = %e, "skipping a list item this program cannot use");
                }
            }
        }
        Ok(Page {
            items,
            skipped,
            info: info.unwrap_or_default(),
        })
    }

    /// Every item of a list endpoint: pages until one comes back empty or the last page is read.
    /// Bounded: a `result_info` claiming more pages than `total_count` allows, or pages that
    /// never end, stop with an error after [`page_bound`] pages (at most [`MAX_PAGES`]).
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        per_page: u32,
    ) -> Result<Vec<T>, Error> {
        Ok(self.list_all_sized(path, query, per_page).await?.0)
    }

    /// [`Client::list_all`], with the page size the server actually served (its
    /// `result_info.per_page`, else the size of a full first page that was followed by more),
    /// which may be smaller than the `per_page` asked for: a server may cap it.
    pub async fn list_all_sized<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        per_page: u32,
    ) -> Result<(Vec<T>, Option<u64>), Error> {
        let mut all = Vec::new();
        let mut page: u32 = 1;
        let mut bound = MAX_PAGES;
        let mut served = None;
        loop {
            let p: Page<T> = self.page(path, query, page, per_page).await?;
            let n = p.items.len() + p.skipped;
            all.extend(p.items);
            if page == 1 {
                bound = page_bound(&p.info, per_page);
                served = p.info.per_page.filter(|&s| s > 0);
            }
            // Without `total_pages`, a page shorter than the size served is the last one.
            let size = p
                .info
                .per_page
                .filter(|&s| s > 0)
                .unwrap_or(u64::from(per_page));
            let last = match p.info.total_pages {
                Some(total) => u64::from(page) >= total,
                None => (n as u64) < size,
            };
            if n == 0 || last {
                if served.is_none() && page > 1 {
                    // Pages went on after the first: its length was the size served.
                    served = Some(size);
                }
                return Ok((all, served));
            }
            if page >= bound {
                return Err(Error::Malformed {
                    method: Method::GET,
                    path: path.into(),
                    status: 200,
                    detail: format!(
                        "the listing did not end after {page} pages (result_info: total_count {}, total_pages {}, per_page {}); stopped there",
                        p.info.total_count.map_or("-".into(), |n| n.to_string()),
                        p.info.total_pages.map_or("-".into(), |n| n.to_string()),
                        p.info.per_page.unwrap_or(u64::from(per_page)),
                    ),
                });
            }
            page += 1;
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(Value, Option<ResultInfo>), Error> {
        let url = format!("{}{}", self.base, path);
        let http = self.http.as_ref().map_err(|e| Error::Setup(e.clone()))?;
        let call = crate::http::Call {
            service: "cloudflare",
            method: &method,
            path,
            // A POST that may have reached the server is not sent twice (it would create a
            // second application or policy); one that never connected, or got a 429, is.
            resend: if method == Method::POST {
                Resend::IfNotProcessed
            } else {
                Resend::Always
            },
        };
        let answer = crate::http::send(&self.retry, call, || {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let req = http.request(method.clone(), &url).query(query);
            let req = match &self.auth {
                // bearer_auth marks the header sensitive itself.
                Auth::Token(t) => req.bearer_auth(t.expose()),
                Auth::GlobalKey { email, key } => match crate::http::sensitive(key.expose()) {
                    Ok(v) => req.header("X-Auth-Email", email).header("X-Auth-Key", v),
                    // Not a valid header value: reqwest refuses to build the request.
                    Err(_) => req
                        .header("X-Auth-Email", email)
                        .header("X-Auth-Key", key.expose()),
                },
                Auth::None => req,
            };
            match body {
                Some(b) => req.json(b),
                None => req,
            }
        })
        .await;
        let (resp, attempt) = match answer {
            Ok(a) => (a.response, a.attempts),
            Err(f) => {
                tracing::debug!(attempts = f.attempts, %method, path, "Cloudflare API unreachable");
                return Err(Error::Transport {
                    method,
                    path: path.into(),
                    source: f.error.without_url(),
                });
            }
        };
        let status = resp.status();
        if let Some(refusal) = crate::http::redirect_refusal(&resp) {
            return Err(Error::Redirected {
                method,
                path: path.into(),
                refusal,
            });
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Error::RateLimited {
                method,
                path: path.into(),
                attempts: attempt,
            });
        }
        let bytes = match crate::http::read_body(resp, crate::http::MAX_BODY).await {
            Ok(b) => b,
            Err(crate::http::BodyError::Transport(source)) => {
                return Err(Error::Transport {
                    method: method.clone(),
                    path: path.into(),
                    source,
                });
            }
            Err(e) => {
                return Err(Error::Malformed {
                    method,
                    path: path.into(),
                    status: status.as_u16(),
                    detail: e.to_string(),
                });
            }
        };
        let env: Envelope = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                if !status.is_success() {
                    return Err(Error::Api {
                        method,
                        path: path.into(),
                        status: status.as_u16(),
                        errors: vec![],
                    });
                }
                return Err(Error::Malformed {
                    method,
                    path: path.into(),
                    status: status.as_u16(),
                    detail: format!("not a Cloudflare JSON envelope ({e})"),
                });
            }
        };
        if !env.success || !status.is_success() {
            return Err(Error::Api {
                method,
                path: path.into(),
                status: status.as_u16(),
                errors: env.errors,
            });
        }
        Ok((env.result, env.result_info))
    }
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, v: Value) -> Result<T, Error> {
    serde_json::from_value(v).map_err(|e| Error::Malformed {
        method: method.clone(),
        path: path.into(),
        status: 200,
        detail: format!("unexpected `result` shape ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::backoff;
    use crate::http::retry_after;
    use reqwest::header::HeaderMap;

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    /// An HTTP server on 127.0.0.1 answering every request with 429 and `retry_after`;
    /// returns its base URL and the number of requests it has seen.
    fn always_429(retry_after: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = r#"{"success":false,"errors":[{"code":971,"message":"Please wait and consider throttling your request speed"}],"messages":[],"result":null}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, seen)
    }

    /// A server asking for an hour (in seconds, or as an HTTP date) is waited for at most
    /// `max_delay` per retry: the run ends with "rate limited", it does not hang.
    #[tokio::test]
    async fn retry_after_is_capped_by_max_delay() {
        let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(3600);
        let date = httpdate::fmt_http_date(in_an_hour);
        let mut h = HeaderMap::new();
        h.insert("retry-after", date.parse().unwrap());
        assert!(
            retry_after(&h).is_some_and(|d| d > Duration::from_secs(3500)),
            "{date} is about an hour ahead"
        );

        for header in ["3600".to_string(), date] {
            let (url, seen) = always_429(header.clone());
            let policy = RetryPolicy {
                attempts: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(50),
            };
            let client = Client::new(
                &url,
                Auth::Token(Secret::new("t")),
                Duration::from_secs(10),
                policy,
            );
            let res = tokio::time::timeout(
                Duration::from_secs(30),
                client.get::<Value>("/accounts", &[]),
            )
            .await
            .unwrap_or_else(|_| panic!("Retry-After: {header} was not capped"));
            assert!(
                matches!(res, Err(Error::RateLimited { attempts: 3, .. })),
                "{res:?}"
            );
            assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
        }
    }

    /// An HTTP server on 127.0.0.1 answering every request with `body(page)` (200, JSON);
    /// returns its base URL and the number of requests it has seen.
    fn pages(
        body: impl Fn(u64) -> String + Send + 'static,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let page = head
                    .split(['?', '&', ' '])
                    .find_map(|p| p.strip_prefix("page="))
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(1);
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let b = body(page);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                );
            }
        });
        (url, seen)
    }

    fn client(url: &str) -> Client {
        Client::new(
            url,
            Auth::Token(Secret::new("t")),
            Duration::from_secs(10),
            RetryPolicy {
                attempts: 1,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(1),
            },
        )
    }

    /// `result_info` claiming 10^8 pages of a 5-item listing: bounded by total_count.
    #[tokio::test]
    async fn pagination_claiming_endless_pages_is_bounded_by_total_count() {
        let (url, seen) = pages(|page| {
            format!(
                r#"{{"success":true,"errors":[],"messages":[],"result":[{{"id":"a{page}"}},{{"id":"b{page}"}}],"result_info":{{"page":{page},"per_page":2,"count":2,"total_count":5,"total_pages":100000000}}}}"#
            )
        });
        let res = client(&url).list_all::<Value>("/accounts", &[], 2).await;
        let e = res.expect_err("must not read 10^8 pages").to_string();
        assert!(e.contains("did not end"), "{e}");
        let n = seen.load(std::sync::atomic::Ordering::SeqCst);
        assert!(n <= 4, "5 items at 2 a page are 3 pages (+1); {n} requests");
    }

    /// Full pages forever and no `result_info` at all: the absolute cap ends it.
    #[tokio::test]
    async fn pagination_that_never_ends_stops_at_the_cap() {
        let (url, seen) = pages(|_| {
            r#"{"success":true,"errors":[],"messages":[],"result":[{"id":"x"}]}"#.to_string()
        });
        let res = client(&url).list_all::<Value>("/accounts", &[], 1).await;
        assert!(res.is_err(), "{res:?}");
        let n = seen.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(n, MAX_PAGES as usize);
    }

    /// A server that caps pages at 2 (asked for 50) and says so in `result_info.per_page`, without
    /// `total_pages`: a page of 2 is not the last one; the size served is returned.
    #[tokio::test]
    async fn a_capped_page_size_without_total_pages_reads_every_page() {
        let (url, seen) = pages(|page| {
            let items = if page < 3 {
                format!(r#"{{"id":"a{page}"}},{{"id":"b{page}"}}"#)
            } else {
                r#"{"id":"last"}"#.to_string()
            };
            format!(
                r#"{{"success":true,"errors":[],"messages":[],"result":[{items}],"result_info":{{"page":{page},"per_page":2}}}}"#
            )
        });
        let (items, served) = client(&url)
            .list_all_sized::<Value>("/accounts", &[], 50)
            .await
            .unwrap();
        assert_eq!(items.len(), 5);
        assert_eq!(served, Some(2));
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// An item without `id` is skipped (with a warning), the rest of the page is kept.
    #[tokio::test]
    async fn unusable_items_are_skipped_not_fatal() {
        #[derive(Debug, Deserialize)]
        struct Item {
            id: String,
        }
        let (url, _) = pages(|_| {
            r#"{"success":true,"errors":[],"messages":[],"result":[{"id":"a"},{"name":"no id","domain":"x.example.com"},{"id":"c"}],"result_info":{"page":1,"per_page":50,"count":3,"total_count":3,"total_pages":1}}"#.to_string()
        });
        let items = client(&url)
            .list_all::<Item>("/accounts", &[], 50)
            .await
            .unwrap();
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
    }

    #[test]
    fn path_segments_are_percent_encoded_and_ids_are_uuids() {
        assert_eq!(
            seg("../../../../user/tokens/verify?x="),
            "..%2F..%2F..%2F..%2Fuser%2Ftokens%2Fverify%3Fx%3D"
        );
        assert_eq!(seg(".."), "%2E%2E");
        assert_eq!(seg("a#b c"), "a%23b%20c");
        let id = "0000000a-0000-4000-8000-000000000000";
        assert_eq!(seg(id), id);
        assert!(is_uuid(id));
        assert!(is_uuid(&id.to_uppercase()));
        for bad in [
            "",
            "a",
            "../x",
            "0000000a-0000-4000-8000-00000000000/",
            "0000000a00004000800000000000000000",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    /// A value that is not a plain segment stays one segment on the wire: `../` and `?` are
    /// percent-encoded, never resolved or taken as the query.
    #[tokio::test]
    async fn an_id_is_sent_as_one_percent_encoded_segment() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let lines = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                lines
                    .lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_string());
                let b = r#"{"success":false,"errors":[{"code":12130,"message":"access.api.error.application_not_found"}],"messages":[],"result":null}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                );
            }
        });
        let hostile = "../../../../user/tokens/verify?x=";
        let res = client(&url).app_by_id(hostile, hostile).await;
        assert!(res.is_err_and(|e| e.is_not_found()));
        let enc = "..%2F..%2F..%2F..%2Fuser%2Ftokens%2Fverify%3Fx%3D";
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [format!("GET /accounts/{enc}/access/apps/{enc} HTTP/1.1")]
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert!(backoff(&p, 1) >= Duration::from_millis(100));
        assert!(backoff(&p, 3) >= Duration::from_millis(400));
        assert_eq!(backoff(&p, 9), Duration::from_secs(1));
    }
}
