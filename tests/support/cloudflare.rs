//! An in-process fake of the Cloudflare API v4, on 127.0.0.1:0, answering with the real
//! envelope, pagination and errors (see ../shared/docs/api-notes.md). It records every request
//! so tests can assert what the program sent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Server;

pub const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";
pub const TOKEN: &str = "cf-token-SECRET-7f3a9b";
pub const EMAIL: &str = "ops@example.com";
pub const GLOBAL_KEY: &str = "cf-global-key-SECRET-91c2";

/// A scripted misbehaviour for the next matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    Status429 {
        retry_after: Option<String>,
    },
    Status500,
    Malformed,
    /// `success: false` with HTTP 200.
    SuccessFalse,
    /// Never answer (to test timeouts): sleep this many ms first.
    Delay(u64),
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
    /// When the request arrived.
    pub at: std::time::Instant,
}

#[derive(Debug)]
pub struct CfState {
    pub accounts: Vec<Value>,
    pub apps: Vec<Value>,
    pub token: Option<String>,
    pub global: Option<(String, String)>,
    /// Behave as if the server ignored the `domain` filter (return every app).
    pub ignore_domain_filter: bool,
    pub faults: VecDeque<Fault>,
    /// Faults for POST requests only (the next POST takes the first).
    pub post_faults: VecDeque<Fault>,
    pub requests: Vec<Recorded>,
    /// Extra routes added by other test areas: (method, path) -> handler.
    pub extra: Vec<ExtraRoute>,
    /// Reusable Access policies (`/access/policies`).
    pub policies: Vec<Value>,
    /// Tunnel id -> the configuration answer `{account_id, tunnel_id, version, config, source, created_at}`.
    pub tunnels: BTreeMap<String, Value>,
    /// Counter for ids and AUDs of created objects.
    pub created: u32,
    /// The `result` of `GET …/tokens/verify` (`{id, status, expires_on?, not_before?}`).
    pub token_verify: Value,
    /// The token is account-owned: only `/accounts/{id}/tokens/verify` knows it (the user
    /// endpoint answers "Invalid API Token").
    pub account_owned_token: bool,
    /// `…/tokens/verify` calls: recorded here, not in `requests`, so tests that count a pass's
    /// requests are not thrown off by the daily credential check of `watch`.
    pub verifies: Vec<Recorded>,
    /// Serve at most this many items a page whatever `per_page` asks (its `result_info` then
    /// says the size served), as a server may.
    pub page_cap: Option<usize>,
}

pub type ExtraHandler = Box<dyn Fn(&mut CfState, &Recorded) -> Option<(StatusCode, Value)> + Send>;

pub struct ExtraRoute(pub ExtraHandler);

impl std::fmt::Debug for ExtraRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtraRoute")
    }
}

pub struct FakeCloudflare {
    pub server: Server,
    pub state: Arc<Mutex<CfState>>,
}

pub fn aud(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

pub fn uuid(n: u32) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

/// A self-hosted application as Cloudflare returns it.
pub fn app(n: u32, host: &str, aud_tag: &str) -> Value {
    json!({
        "id": uuid(n),
        "uid": uuid(n),
        "name": format!("App {n}"),
        "aud": aud_tag,
        "type": "self_hosted",
        "domain": host,
        "destinations": [{"type": "public", "uri": host}],
        "self_hosted_domains": [host],
        "session_duration": "24h",
        "allowed_idps": [],
        "auto_redirect_to_identity": false,
        "policies": [],
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z"
    })
}

impl FakeCloudflare {
    pub fn start(apps: Vec<Value>) -> FakeCloudflare {
        let state = Arc::new(Mutex::new(CfState {
            accounts: vec![json!({"id": ACCOUNT, "name": "Home Lab", "type": "standard"})],
            apps,
            token: Some(TOKEN.into()),
            global: Some((EMAIL.into(), GLOBAL_KEY.into())),
            ignore_domain_filter: false,
            faults: VecDeque::new(),
            post_faults: VecDeque::new(),
            requests: Vec::new(),
            extra: Vec::new(),
            policies: Vec::new(),
            tunnels: BTreeMap::new(),
            created: 0,
            token_verify: json!({"id": "ed17574386854bf78a67040be0a770b0", "status": "active"}),
            account_owned_token: false,
            verifies: Vec::new(),
            page_cap: None,
        }));
        let st = state.clone();
        let server = Server::start(move |req| {
            let st = st.clone();
            async move { handle(st, req).await }
        });
        FakeCloudflare { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url.clone()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut CfState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    pub fn fault(&self, f: Fault) {
        self.with(|s| s.faults.push_back(f));
    }

    pub fn set_aud(&self, idx: usize, aud_tag: &str) {
        self.with(|s| s.apps[idx]["aud"] = json!(aud_tag));
    }
}

fn envelope_error(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null})),
    )
        .into_response()
}

fn ok(result: Value) -> Response {
    axum::Json(json!({"success": true, "errors": [], "messages": [], "result": result}))
        .into_response()
}

/// `per_page` limits of each list endpoint (Cloudflare's OpenAPI schema, cloudflare/api-schemas
/// openapi.json): (default, minimum, maximum).
pub const APPS_PER_PAGE: (usize, usize, usize) = (1000, 1, 1000);
pub const POLICIES_PER_PAGE: (usize, usize, usize) = (100, 1, 1000);
pub const ACCOUNTS_PER_PAGE: (usize, usize, usize) = (20, 5, 50);

/// One page, as the real API pages; a `per_page` outside the endpoint's limits is refused
/// (400), not quietly clamped.
fn paged(
    items: Vec<Value>,
    q: &BTreeMap<String, String>,
    (default, min, max): (usize, usize, usize),
    cap: Option<usize>,
) -> Response {
    let page: usize = q
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per: usize = match q.get("per_page") {
        None => default,
        Some(p) => match p.parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                return envelope_error(
                    StatusCode::BAD_REQUEST,
                    10001,
                    &format!("per_page must be an integer from {min} to {max}"),
                );
            }
        },
    };
    let per = cap.map_or(per, |c| per.min(c));
    let total = items.len();
    let total_pages = total.div_ceil(per).max(1);
    let slice: Vec<Value> = items.into_iter().skip((page - 1) * per).take(per).collect();
    axum::Json(json!({
        "success": true, "errors": [], "messages": [],
        "result": slice,
        "result_info": {"page": page, "per_page": per, "count": slice.len(), "total_count": total, "total_pages": total_pages}
    }))
    .into_response()
}

async fn handle(st: Arc<Mutex<CfState>>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let headers = record_headers(req.headers());
    let bytes = to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).ok();
    let rec = Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers,
        body,
        at: std::time::Instant::now(),
    };
    let fault = {
        let mut s = st.lock().unwrap();
        if rec.path.ends_with("/tokens/verify") {
            // Nor do the scripted faults (meant for a pass's requests) apply to it.
            s.verifies.push(rec.clone());
            None
        } else {
            s.requests.push(rec.clone());
            if rec.method == "POST" && !s.post_faults.is_empty() {
                s.post_faults.pop_front()
            } else {
                s.faults.pop_front()
            }
        }
    };
    match fault {
        Some(Fault::Status429 { retry_after }) => {
            let mut r = envelope_error(
                StatusCode::TOO_MANY_REQUESTS,
                971,
                "Please wait and consider throttling your request speed",
            );
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            return r;
        }
        Some(Fault::Status500) => {
            return envelope_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                10001,
                "Internal Server Error",
            );
        }
        Some(Fault::Malformed) => {
            return (StatusCode::OK, "<html>gateway hiccup</html>").into_response();
        }
        Some(Fault::SuccessFalse) => {
            return envelope_error(
                StatusCode::OK,
                7003,
                "Could not route to /accounts, perhaps your object identifier is invalid?",
            );
        }
        Some(Fault::Delay(ms)) => tokio::time::sleep(std::time::Duration::from_millis(ms)).await,
        None => {}
    }

    let mut s = st.lock().unwrap();
    if !authorized(&s, &rec.headers) {
        return envelope_error(StatusCode::FORBIDDEN, 10000, "Authentication error");
    }
    for route in std::mem::take(&mut s.extra) {
        let out = (route.0)(&mut s, &rec);
        s.extra.push(route);
        if let Some((status, v)) = out {
            return (status, axum::Json(v)).into_response();
        }
    }
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, seg.as_slice()) {
        (Method::GET, ["accounts"]) => {
            paged(s.accounts.clone(), &query, ACCOUNTS_PER_PAGE, s.page_cap)
        }
        (Method::GET, ["user", "tokens", "verify"]) => {
            if s.account_owned_token || rec.headers.contains_key("x-auth-key") {
                return envelope_error(StatusCode::UNAUTHORIZED, 1000, "Invalid API Token");
            }
            ok(s.token_verify.clone())
        }
        (Method::GET, ["accounts", acc, "tokens", "verify"]) => {
            if !s.account_owned_token || *acc != ACCOUNT || rec.headers.contains_key("x-auth-key") {
                return envelope_error(StatusCode::UNAUTHORIZED, 1000, "Invalid API Token");
            }
            ok(s.token_verify.clone())
        }
        (Method::GET, ["accounts", acc, "access", "apps"]) => {
            if *acc != ACCOUNT && !s.accounts.iter().any(|a| a["id"] == *acc) {
                return envelope_error(
                    StatusCode::NOT_FOUND,
                    7003,
                    "Could not route to /accounts/…/access/apps, perhaps your object identifier is invalid?",
                );
            }
            let mut apps = s.apps.clone();
            if let Some(d) = query.get("domain")
                && !s.ignore_domain_filter
            {
                let exact = query.get("exact").is_some_and(|e| e == "true");
                apps.retain(|a| {
                    let dom = a["domain"].as_str().unwrap_or("");
                    if exact {
                        dom == d
                    } else {
                        dom.contains(d.as_str())
                    }
                });
            }
            paged(apps, &query, APPS_PER_PAGE, s.page_cap)
        }
        (Method::GET, ["accounts", _acc, "access", "apps", id]) => {
            match s.apps.iter().find(|a| a["id"] == *id) {
                Some(a) => ok(a.clone()),
                None => envelope_error(
                    StatusCode::NOT_FOUND,
                    12130,
                    "access.api.error.application_not_found",
                ),
            }
        }
        (Method::POST, ["accounts", _acc, "access", "apps"]) => {
            let body = rec.body.clone().unwrap_or(Value::Null);
            if let Some(e) = app_body_error(&s, &body) {
                return e;
            }
            s.created += 1;
            let n = 0x100 + s.created;
            let mut a = body;
            a["id"] = json!(uuid(n));
            a["uid"] = json!(uuid(n));
            a["aud"] = json!(aud(n as u8));
            a["created_at"] = json!("2026-02-01T00:00:00Z");
            a["updated_at"] = json!("2026-02-01T00:00:00Z");
            s.apps.push(a.clone());
            (
                StatusCode::CREATED,
                axum::Json(json!({"success": true, "errors": [], "messages": [], "result": a})),
            )
                .into_response()
        }
        (Method::PUT, ["accounts", _acc, "access", "apps", id]) => {
            let body = rec.body.clone().unwrap_or(Value::Null);
            let Some(idx) = s.apps.iter().position(|a| a["id"] == *id) else {
                return envelope_error(
                    StatusCode::NOT_FOUND,
                    12130,
                    "access.api.error.application_not_found",
                );
            };
            if let Some(e) = app_body_error(&s, &body) {
                return e;
            }
            // `access_app_request` has no read-only fields (they live only in the response).
            if let Some(f) = ["id", "aud", "created_at", "updated_at"]
                .iter()
                .find(|f| body.get(**f).is_some())
            {
                return envelope_error(
                    StatusCode::BAD_REQUEST,
                    12130,
                    &format!("access.api.error.invalid_request: {f} is read-only"),
                );
            }
            // A full replacement; id and aud are the server's.
            let mut a = body;
            a["id"] = s.apps[idx]["id"].clone();
            a["aud"] = s.apps[idx]["aud"].clone();
            s.apps[idx] = a.clone();
            ok(a)
        }
        (Method::GET, ["accounts", _acc, "access", "policies"]) => {
            paged(s.policies.clone(), &query, POLICIES_PER_PAGE, s.page_cap)
        }
        (Method::POST, ["accounts", _acc, "access", "policies"]) => {
            let body = rec.body.clone().unwrap_or(Value::Null);
            let decision_ok = matches!(
                body["decision"].as_str(),
                Some("allow" | "deny" | "non_identity" | "bypass")
            );
            let include_ok = body["include"].as_array().is_some_and(|a| !a.is_empty());
            if body["name"].as_str().is_none_or(str::is_empty) || !decision_ok || !include_ok {
                return envelope_error(
                    StatusCode::BAD_REQUEST,
                    12130,
                    "access.api.error.invalid_request: name, decision and include are required",
                );
            }
            s.created += 1;
            let mut p = body;
            p["id"] = json!(format!("{:08x}-1111-4000-8000-000000000000", s.created));
            p["reusable"] = json!(true);
            p["app_count"] = json!(0);
            p["created_at"] = json!("2026-02-01T00:00:00Z");
            s.policies.push(p.clone());
            (
                StatusCode::CREATED,
                axum::Json(json!({"success": true, "errors": [], "messages": [], "result": p})),
            )
                .into_response()
        }
        (Method::GET, ["accounts", _acc, "cfd_tunnel", tid, "configurations"]) => {
            match s.tunnels.get(*tid) {
                Some(t) => ok(t.clone()),
                None => envelope_error(StatusCode::NOT_FOUND, 1003, "Tunnel not found"),
            }
        }
        (Method::PUT, ["accounts", _acc, "cfd_tunnel", tid, "configurations"]) => {
            let body = rec.body.clone().unwrap_or(Value::Null);
            let Some(t) = s.tunnels.get_mut(*tid) else {
                return envelope_error(StatusCode::NOT_FOUND, 1003, "Tunnel not found");
            };
            let Some(config) = body.get("config").filter(|c| c.is_object()) else {
                return envelope_error(
                    StatusCode::BAD_REQUEST,
                    1001,
                    "Invalid tunnel configuration: missing `config`",
                );
            };
            let rules = config["ingress"].as_array().cloned().unwrap_or_default();
            let catch_all = |r: &Value| {
                r["hostname"]
                    .as_str()
                    .is_none_or(|h| h.is_empty() || h == "*")
                    && r.get("path").is_none()
            };
            if let Some((last, rest)) = rules.split_last()
                && (!catch_all(last) || rest.iter().any(catch_all))
            {
                return envelope_error(
                    StatusCode::BAD_REQUEST,
                    1056,
                    "Validation failed: the last ingress rule must match all URLs (i.e. it should not have a hostname or path filter), and only the last rule may",
                );
            }
            // cloudflared (`validateAccessConfiguration` in ingress/ingress.go) refuses a rule that
            // requires Access with audTag but no teamName; a refused remote configuration is
            // never applied, so the fake refuses it up front.
            if let Some(i) = rules.iter().position(|r| {
                let a = &r["originRequest"]["access"];
                a["required"].as_bool() == Some(true)
                    && a["teamName"].as_str().is_none_or(str::is_empty)
                    && a["audTag"].as_array().is_some_and(|t| !t.is_empty())
            }) {
                return envelope_error(
                    StatusCode::BAD_REQUEST,
                    1056,
                    &format!(
                        "Validation failed: ingress[{i}]: access.TeamName cannot be blank when access.audTags are present"
                    ),
                );
            }
            // A PUT makes the tunnel remotely managed, whatever it was.
            t["config"] = config.clone();
            t["source"] = json!("cloudflare");
            t["version"] = json!(t["version"].as_i64().unwrap_or(0) + 1);
            ok(t.clone())
        }
        _ => envelope_error(StatusCode::NOT_FOUND, 7000, "No route for that URI"),
    }
}

/// Create and update both require `type` and `domain`; policies must exist.
fn app_body_error(s: &CfState, body: &Value) -> Option<Response> {
    if body["type"].as_str().is_none_or(str::is_empty)
        || body["domain"].as_str().is_none_or(str::is_empty)
    {
        return Some(envelope_error(
            StatusCode::BAD_REQUEST,
            12130,
            "access.api.error.invalid_request: type and domain are required",
        ));
    }
    for p in body["policies"].as_array().cloned().unwrap_or_default() {
        let id = p["id"].as_str().or(p.as_str()).unwrap_or("");
        if !s.policies.iter().any(|q| q["id"] == id) {
            return Some(envelope_error(
                StatusCode::BAD_REQUEST,
                12130,
                "access.api.error.invalid_policy: policy not found",
            ));
        }
    }
    None
}

/// A tunnel configuration answer as Cloudflare returns it.
pub fn tunnel(id: &str, source: &str, config: Value) -> Value {
    json!({
        "account_id": ACCOUNT,
        "tunnel_id": id,
        "version": 3,
        "config": config,
        "source": source,
        "created_at": "2026-01-01T00:00:00Z"
    })
}

fn record_headers(h: &HeaderMap) -> BTreeMap<String, String> {
    [
        "authorization",
        "x-auth-email",
        "x-auth-key",
        "content-type",
        "user-agent",
    ]
    .iter()
    .filter_map(|k| {
        h.get(*k)
            .map(|v| (k.to_string(), v.to_str().unwrap_or("").to_string()))
    })
    .collect()
}

fn authorized(s: &CfState, h: &BTreeMap<String, String>) -> bool {
    if let Some(a) = h.get("authorization") {
        return s
            .token
            .as_ref()
            .is_some_and(|t| a == &format!("Bearer {t}"));
    }
    match (h.get("x-auth-email"), h.get("x-auth-key"), &s.global) {
        (Some(e), Some(k), Some((ge, gk))) => e == ge && k == gk,
        _ => false,
    }
}
