//! An in-process fake of the Infisical API, on 127.0.0.1:0: Universal Auth login (with the
//! three-failures lockout), access-token expiry, the v4 and v3 secret routes, 404/400/403/429
//! answers in Infisical's error shape `{reqId, statusCode, message, error}`, and change-approval
//! answers (`{approval}` instead of `{secret}`). See ../shared/docs/api-notes.md. It records every
//! request so tests can assert what the program sent.
//!
//! Wording of some messages (lockout, unknown token) is not confirmed against a live server;
//! the status codes and the shape are.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Server;

pub const CLIENT_ID: &str = "6b1f4c1e-0d3a-4f8e-9c55-2a7d0e9b1c11";
pub const CLIENT_SECRET: &str = "inf-client-secret-SECRET-4d2e9a";
pub const STATIC_TOKEN: &str = "inf-static-token-SECRET-88aa01";
pub const PROJECT: &str = "7c1e2d3f-aaaa-4bbb-8ccc-000000000001";

/// A scripted misbehaviour for the next secrets request.
#[derive(Debug, Clone)]
pub enum Fault {
    Status429 {
        retry_after: Option<String>,
    },
    Status500,
    /// A 200 answer of 9 MiB (streamed, no Content-Length): over audsync's 8 MiB cap.
    HugeBody,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
    /// When the request arrived (to check the gaps between retries).
    pub at: std::time::Instant,
}

#[derive(Debug)]
pub struct InfState {
    pub client_id: String,
    pub client_secret: String,
    /// Tokens accepted without a login (INFISICAL_TOKEN).
    pub static_tokens: BTreeSet<String>,
    /// Tokens handed out by logins, in order.
    pub issued: Vec<String>,
    /// Tokens that are answered with 403 "expired".
    pub expired: BTreeSet<String>,
    /// Expire this many of the next issued tokens right away.
    pub expire_next_tokens: u32,
    pub failed_logins: u32,
    pub locked: bool,
    /// (environment, path, key) -> (value, version), all in [`PROJECT`].
    pub secrets: BTreeMap<(String, String, String), (String, u64)>,
    /// Permission verbs refused with 403: "read", "edit", "create".
    pub deny: BTreeSet<&'static str>,
    /// A change-approval policy holds every write.
    pub approval: bool,
    /// Open change requests: (request slug, (environment, path, key), value), oldest first.
    pub change_requests: Vec<(String, (String, String, String), String)>,
    /// Delete a secret right after answering its GET (a concurrent delete).
    pub delete_after_read: bool,
    pub serve_v4: bool,
    pub serve_v3: bool,
    pub faults: VecDeque<Fault>,
    pub requests: Vec<Recorded>,
    next_req: u64,
    /// `expiresIn` of issued tokens (seconds); 0 = no expiry. A token used after it gets 403
    /// TokenError "expired", as a JWT past its `exp` does.
    pub expires_in: u64,
    /// When each issued token expires.
    pub token_exp: BTreeMap<String, std::time::Instant>,
    /// Tokens revoked through `/api/v1/auth/token/revoke`.
    pub revoked: BTreeSet<String>,
    /// `clientSecretNumUsesLimit` (0 = unlimited): login N+1 is refused with "usage limit
    /// reached" and revokes the secret; later logins get "Invalid credentials".
    pub client_secret_uses_limit: u32,
    pub client_secret_uses: u32,
    pub client_secret_revoked: bool,
    /// Refuse every renewal (401), as for a token past its max TTL.
    pub refuse_renew: bool,
    /// The identity may describe secrets but not read their values: `"mask"` answers
    /// `secretValueHidden: true` with `<hidden-by-infisical>`, `"403"` answers
    /// ForbiddenReadSecretError (what a GET by name does by default).
    pub hide_values: Option<&'static str>,
    /// Answer the next login with [`huge_answer`] (over audsync's cap).
    pub huge_login: bool,
}

pub struct FakeInfisical {
    pub server: Server,
    pub state: Arc<Mutex<InfState>>,
}

impl FakeInfisical {
    pub fn start() -> FakeInfisical {
        let state = Arc::new(Mutex::new(InfState {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            static_tokens: [STATIC_TOKEN.to_string()].into(),
            issued: Vec::new(),
            expired: BTreeSet::new(),
            expire_next_tokens: 0,
            failed_logins: 0,
            locked: false,
            secrets: BTreeMap::new(),
            deny: BTreeSet::new(),
            approval: false,
            change_requests: Vec::new(),
            delete_after_read: false,
            serve_v4: true,
            serve_v3: true,
            faults: VecDeque::new(),
            requests: Vec::new(),
            next_req: 0,
            expires_in: 7200,
            token_exp: BTreeMap::new(),
            revoked: BTreeSet::new(),
            client_secret_uses_limit: 0,
            client_secret_uses: 0,
            client_secret_revoked: false,
            refuse_renew: false,
            hide_values: None,
            huge_login: false,
        }));
        let st = state.clone();
        let server = Server::start(move |req| {
            let st = st.clone();
            async move { handle(st, req).await }
        });
        FakeInfisical { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url.clone()
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut InfState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// Requests to the secrets routes (not logins).
    pub fn secret_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains("/secrets/"))
            .collect()
    }

    pub fn logins(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/auth/universal-auth/login")
            .count()
    }

    pub fn renewals(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/auth/token/renew")
            .count()
    }

    /// The tokens sent to `/api/v1/auth/token/revoke`, in order.
    pub fn revokes(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.path == "/api/v1/auth/token/revoke")
            .filter_map(|r| r.body.as_ref()?["accessToken"].as_str().map(str::to_string))
            .collect()
    }

    /// PATCH and POST requests to the secrets routes.
    pub fn writes(&self) -> Vec<Recorded> {
        self.secret_requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    pub fn fault(&self, f: Fault) {
        self.with(|s| s.faults.push_back(f));
    }

    pub fn put(&self, env: &str, path: &str, key: &str, value: &str, version: u64) {
        self.with(|s| {
            s.secrets.insert(
                (env.into(), path.into(), key.into()),
                (value.into(), version),
            )
        });
    }

    /// A reviewer approves and merges every open change request: each value becomes live as a
    /// new version. Returns how many were merged.
    pub fn merge_change_requests(&self) -> usize {
        self.with(|s| {
            let open = std::mem::take(&mut s.change_requests);
            for (_, key, value) in &open {
                let version = s.secrets.get(key).map(|(_, v)| v + 1).unwrap_or(1);
                s.secrets.insert(key.clone(), (value.clone(), version));
            }
            open.len()
        })
    }

    pub fn secret(&self, env: &str, path: &str, key: &str) -> Option<(String, u64)> {
        self.with(|s| {
            s.secrets
                .get(&(env.to_string(), path.to_string(), key.to_string()))
                .cloned()
        })
    }
}

fn error(s: &mut InfState, status: StatusCode, kind: &str, message: &str) -> Response {
    s.next_req += 1;
    (
        status,
        axum::Json(json!({
            "reqId": format!("req-{:04}", s.next_req),
            "statusCode": status.as_u16(),
            "message": message,
            "error": kind,
        })),
    )
        .into_response()
}

fn secret_json(env: &str, path: &str, key: &str, value: &str, version: u64) -> Value {
    json!({
        "id": format!("sec-{key}"),
        "_id": format!("sec-{key}"),
        "workspace": PROJECT,
        "environment": env,
        "version": version,
        "type": "shared",
        "secretKey": key,
        "secretValue": value,
        "secretValueHidden": false,
        "secretComment": "",
        "secretPath": path,
        "secretReminderNote": null,
        "skipMultilineEncoding": false,
        "tags": [],
        "createdAt": "2026-01-01T00:00:00.000Z",
        "updatedAt": "2026-01-01T00:00:00.000Z"
    })
}

/// A 200 JSON answer of 9 MiB, streamed without Content-Length (a broken proxy, a hostile
/// server): one byte more than audsync's 8 MiB cap would already do.
fn huge_answer() -> Response {
    let chunk = vec![b' '; 1024 * 1024];
    let stream = futures_util::stream::iter(
        std::iter::once(Ok::<_, std::io::Error>(b"{\"message\":\"".to_vec()))
            .chain((0..9).map(move |_| Ok(chunk.clone()))),
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn handle(st: Arc<Mutex<InfState>>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let headers = record_headers(req.headers());
    let bytes = to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let rec = Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: headers.clone(),
        body: body.clone(),
        at: std::time::Instant::now(),
    };
    let mut s = st.lock().unwrap();
    s.requests.push(rec);

    if method == Method::POST && path == "/api/v1/auth/universal-auth/login" {
        if std::mem::take(&mut s.huge_login) {
            return huge_answer();
        }
        return login(&mut s, body.as_ref());
    }
    // Renew and revoke need no Authorization header: the token in the body is the authority.
    if method == Method::POST && path == "/api/v1/auth/token/renew" {
        let old = body
            .as_ref()
            .and_then(|b| b["accessToken"].as_str())
            .unwrap_or("")
            .trim()
            .to_string();
        if let Some(r) = token_refusal(&mut s, &old) {
            return r;
        }
        if s.refuse_renew {
            return error(
                &mut s,
                StatusCode::UNAUTHORIZED,
                "UnauthorizedError",
                "Failed to renew MI access token due to Max TTL expiration",
            );
        }
        // A NEW token (re-signed with a fresh exp); the old string stays valid to its own exp.
        return issue(&mut s);
    }
    if method == Method::POST && path == "/api/v1/auth/token/revoke" {
        let old = body
            .as_ref()
            .and_then(|b| b["accessToken"].as_str())
            .unwrap_or("")
            .trim()
            .to_string();
        if let Some(r) = token_refusal(&mut s, &old) {
            return r;
        }
        s.revoked.insert(old);
        return axum::Json(json!({"message": "Successfully revoked access token"})).into_response();
    }

    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (api, name) = match seg.as_slice() {
        ["api", "v4", "secrets", name] if s.serve_v4 => ("v4", name.to_string()),
        ["api", "v3", "secrets", "raw", name] if s.serve_v3 => ("v3", name.to_string()),
        _ => {
            // Fastify's own answer for a route the server does not have.
            return (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": format!("Route {method}:{path} not found"), "error": "Not Found", "statusCode": 404})),
            )
                .into_response();
        }
    };

    // Authentication.
    let Some(auth) = headers.get("authorization") else {
        return error(
            &mut s,
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Missing Authorization Header in the request header.",
        );
    };
    let token = auth.strip_prefix("Bearer ").unwrap_or("").to_string();
    if s.static_tokens.contains(&token) && s.expired.contains(&token) {
        return error(
            &mut s,
            StatusCode::FORBIDDEN,
            "TokenError",
            "Your token has expired. Please re-authenticate.",
        );
    }
    if !s.static_tokens.contains(&token)
        && let Some(r) = token_refusal(&mut s, &token)
    {
        return r;
    }

    if let Some(f) = s.faults.pop_front() {
        return match f {
            Fault::Status429 { retry_after } => {
                let mut r = error(
                    &mut s,
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too Many Requests",
                    "Rate limit exceeded. Please try again in 1 second",
                );
                if let Some(ra) = retry_after {
                    r.headers_mut().insert("retry-after", ra.parse().unwrap());
                }
                r
            }
            Fault::Status500 => error(
                &mut s,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "Something went wrong",
            ),
            Fault::HugeBody => huge_answer(),
        };
    }

    // Where: from the query (GET) or the body (PATCH/POST).
    let project_field = if api == "v4" {
        "projectId"
    } else {
        "workspaceId"
    };
    let field = |k: &str| -> Option<String> {
        if method == Method::GET {
            query.get(k).cloned()
        } else {
            body.as_ref()
                .and_then(|b| b.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        }
    };
    let (Some(project), Some(env)) = (field(project_field), field("environment")) else {
        return error(
            &mut s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationFailure",
            &format!(
                "[{{\"code\":\"invalid_type\",\"path\":[\"{project_field}\"],\"message\":\"Required\"}}]"
            ),
        );
    };
    let secret_path = field("secretPath").unwrap_or_else(|| "/".into());
    if project != PROJECT {
        return error(
            &mut s,
            StatusCode::FORBIDDEN,
            "PermissionDenied",
            "You are not allowed to access this project",
        );
    }
    let key = (env.clone(), secret_path.clone(), name.clone());
    let verb = match method {
        Method::GET => "read",
        Method::PATCH => "edit",
        _ => "create",
    };
    if s.deny.contains(verb) {
        return error(
            &mut s,
            StatusCode::FORBIDDEN,
            "PermissionDenied",
            &format!("You are not allowed to {verb} on secrets"),
        );
    }
    let not_found = format!("Secret with name '{name}' not found");
    match method {
        Method::GET => match s.secrets.get(&key).cloned() {
            Some(_) if s.hide_values == Some("403") => error(
                &mut s,
                StatusCode::FORBIDDEN,
                "ForbiddenReadSecretError",
                &format!(
                    "You do not have permission to view secret value on secret with name '{name}'"
                ),
            ),
            Some((v, ver)) => {
                if s.delete_after_read {
                    s.secrets.remove(&key);
                }
                let mut j = secret_json(&env, &secret_path, &name, &v, ver);
                if s.hide_values == Some("mask") {
                    j["secretValue"] = json!("<hidden-by-infisical>");
                    j["secretValueHidden"] = json!(true);
                }
                axum::Json(json!({"secret": j})).into_response()
            }
            None => error(&mut s, StatusCode::NOT_FOUND, "NotFound", &not_found),
        },
        Method::PATCH | Method::POST => {
            let Some(value) = field("secretValue") else {
                return error(
                    &mut s,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "ValidationFailure",
                    "[{\"path\":[\"secretValue\"],\"message\":\"Required\"}]",
                );
            };
            let value = value.trim().to_string();
            let exists = s.secrets.contains_key(&key);
            if method == Method::PATCH && !exists {
                return error(&mut s, StatusCode::NOT_FOUND, "NotFound", &not_found);
            }
            if method == Method::POST && exists {
                return error(
                    &mut s,
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Secret already exist",
                );
            }
            if s.approval {
                s.next_req += 1;
                let n = s.next_req;
                s.change_requests
                    .push((format!("change-{n}"), key.clone(), value.clone()));
                return axum::Json(json!({"approval": {
                    "id": format!("apr-{n}"),
                    "slug": format!("change-{n}"),
                    "policyId": "pol-1",
                    "status": "open",
                    "hasMerged": false,
                    "folderId": "fld-1",
                    "committerUserId": null,
                    "isReplicated": false
                }}))
                .into_response();
            }
            let version = s.secrets.get(&key).map(|(_, v)| v + 1).unwrap_or(1);
            s.secrets.insert(key, (value.clone(), version));
            axum::Json(json!({"secret": secret_json(&env, &secret_path, &name, &value, version)}))
                .into_response()
        }
        _ => error(&mut s, StatusCode::NOT_FOUND, "NotFound", "no such route"),
    }
}

/// Why a token is refused, as Infisical answers: revoked or unknown 401, past its exp 403.
fn token_refusal(s: &mut InfState, token: &str) -> Option<Response> {
    let past_exp = s
        .token_exp
        .get(token)
        .is_some_and(|at| std::time::Instant::now() >= *at);
    if s.expired.contains(token) || past_exp {
        return Some(error(
            s,
            StatusCode::FORBIDDEN,
            "TokenError",
            "Your token has expired. Please re-authenticate.",
        ));
    }
    if !s.issued.iter().any(|t| t == token) || s.revoked.contains(token) {
        return Some(error(
            s,
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Failed to authorize: token has been revoked",
        ));
    }
    None
}

/// A new access token, as login and renew answer.
fn issue(s: &mut InfState) -> Response {
    let token = format!("inf-access-token-SECRET-{:04}", s.issued.len() + 1);
    s.issued.push(token.clone());
    if s.expire_next_tokens > 0 {
        s.expire_next_tokens -= 1;
        s.expired.insert(token.clone());
    }
    if s.expires_in > 0 {
        let at = std::time::Instant::now() + std::time::Duration::from_secs(s.expires_in);
        s.token_exp.insert(token.clone(), at);
    }
    axum::Json(json!({
        "accessToken": token,
        "expiresIn": s.expires_in,
        "accessTokenMaxTTL": 2592000,
        "tokenType": "Bearer"
    }))
    .into_response()
}

fn login(s: &mut InfState, body: Option<&Value>) -> Response {
    let id = body
        .and_then(|b| b["clientId"].as_str())
        .unwrap_or("")
        .trim();
    let secret = body
        .and_then(|b| b["clientSecret"].as_str())
        .unwrap_or("")
        .trim();
    if s.locked {
        // identity-ua-service.ts `login`: no duration in the message, no header.
        return error(
            s,
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "This identity auth method is temporarily locked, please try again later",
        );
    }
    if id == s.client_id
        && secret == s.client_secret
        && !s.client_secret_revoked
        && s.client_secret_uses_limit > 0
        && s.client_secret_uses >= s.client_secret_uses_limit
    {
        s.client_secret_revoked = true;
        return error(
            s,
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Access denied due to client secret usage limit reached",
        );
    }
    if id != s.client_id || secret != s.client_secret || s.client_secret_revoked {
        s.failed_logins += 1;
        if s.failed_logins >= 3 {
            s.locked = true;
        }
        return error(
            s,
            StatusCode::UNAUTHORIZED,
            "UnauthorizedError",
            "Invalid credentials",
        );
    }
    s.failed_logins = 0;
    s.client_secret_uses += 1;
    issue(s)
}

fn record_headers(h: &HeaderMap) -> BTreeMap<String, String> {
    ["authorization", "content-type", "user-agent"]
        .iter()
        .filter_map(|k| {
            h.get(*k)
                .map(|v| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        })
        .collect()
}
