//! A fake Cloudflare Access edge: a team domain serving `/cdn-cgi/access/certs` with a real RSA
//! key generated here, and a protected host that answers unauthenticated requests with 302 to
//! the team's login page (`kid` = AUD), and the `cf-access-metadata` probe when enabled.
//! Tokens are signed here with jsonwebtoken (`alg: none` and HS256 ones are built by hand).

use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::Server;

/// An RSA key pair for signing test tokens.
pub struct TestKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The public key as PEM (what an attacker would use as an HMAC secret).
    pub public_pem: String,
}

fn pem(tag: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {tag}-----\n{}\n-----END {tag}-----\n",
        lines.join("\n")
    )
}

impl TestKey {
    pub fn generate(kid: &str) -> TestKey {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let encoding =
            EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).unwrap();
        let public = pair.public_key();
        let comps = PublicKeyComponents::<Vec<u8>>::from(public);
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(public).unwrap();
        TestKey {
            kid: kid.into(),
            encoding,
            jwk: json!({
                "kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
                "e": URL_SAFE_NO_PAD.encode(&comps.e),
                "n": URL_SAFE_NO_PAD.encode(&comps.n),
            }),
            public_pem: pem("PUBLIC KEY", spki.as_ref()),
        }
    }

    /// An RS256 token with this key's kid.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }

    /// HS256 with the public key (PEM) as the shared secret: the classic algorithm confusion.
    pub fn sign_hs256_with_public_key(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &h,
            claims,
            &EncodingKey::from_secret(self.public_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned(claims: &Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!(
        "{}.{}.",
        enc(&json!({"alg": "none", "typ": "JWT"})),
        enc(claims)
    )
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[derive(Debug)]
pub struct AccessState {
    pub host: String,
    pub aud: String,
    pub team_url: String,
    /// false: the host answers 200 like an unprotected origin.
    pub protected: bool,
    /// A `cf-access-metadata` JWT to answer the metadata probe with (newer edges).
    pub metadata: Option<String>,
    /// An origin (not the edge) forging the probe: 200 with a `cf-access-metadata` header.
    pub forged_200: bool,
    pub jwks: Vec<Value>,
    /// Key rotation: after the next certs answer, serve these keys instead.
    pub rotate_to: Option<Vec<Value>>,
    /// How many times `/cdn-cgi/access/certs` was fetched.
    pub certs_fetches: usize,
    /// (method, path, had the metadata request header)
    pub requests: Vec<(String, String, bool)>,
    /// Applications scoped to a path of the host: (path prefix, AUD, metadata JWT). A request
    /// under the path is answered for that application, the rest of the host as above.
    pub paths: Vec<(String, String, Option<String>)>,
}

pub struct FakeAccess {
    pub team: Server,
    pub host: Server,
    pub state: Arc<Mutex<AccessState>>,
}

impl FakeAccess {
    pub fn start(host: &str, aud: &str, keys: &[&TestKey]) -> FakeAccess {
        let state = Arc::new(Mutex::new(AccessState {
            host: host.into(),
            aud: aud.into(),
            team_url: String::new(),
            protected: true,
            metadata: None,
            forged_200: false,
            jwks: keys.iter().map(|k| k.jwk.clone()).collect(),
            rotate_to: None,
            certs_fetches: 0,
            requests: vec![],
            paths: vec![],
        }));
        let st = state.clone();
        let team = Server::start(move |req: Request<Body>| {
            let st = st.clone();
            async move {
                if req.method() == Method::GET && req.uri().path() == "/cdn-cgi/access/certs" {
                    let keys = {
                        let mut s = st.lock().unwrap();
                        s.certs_fetches += 1;
                        let keys = s.jwks.clone();
                        if let Some(next) = s.rotate_to.take() {
                            s.jwks = next;
                        }
                        keys
                    };
                    let first = keys
                        .first()
                        .map(|k| k["kid"].clone())
                        .unwrap_or(Value::Null);
                    axum::Json(json!({
                        "keys": keys,
                        "public_cert": {"kid": first, "cert": "-----BEGIN CERTIFICATE-----\n…"},
                        "public_certs": []
                    }))
                    .into_response()
                } else {
                    (StatusCode::NOT_FOUND, "not found").into_response()
                }
            }
        });
        state.lock().unwrap().team_url = team.url.clone();
        let st = state.clone();
        let host_server = Server::start(move |req: Request<Body>| {
            let st = st.clone();
            async move {
                let mut s = st.lock().unwrap();
                let meta = req
                    .headers()
                    .get("cf-access-metadata-request")
                    .is_some_and(|v| v == "true");
                s.requests
                    .push((req.method().to_string(), req.uri().path().to_string(), meta));
                if s.forged_200 {
                    let mut r = Response::builder().status(StatusCode::OK);
                    if let Some(m) = &s.metadata {
                        r = r.header("cf-access-metadata", m.as_str());
                    }
                    return r.body(Body::from("hello from the origin")).unwrap();
                }
                if !s.protected {
                    return (StatusCode::OK, "hello from the origin").into_response();
                }
                let path = req.uri().path();
                let (aud, metadata) = s
                    .paths
                    .iter()
                    .find(|(p, _, _)| path == p || path.starts_with(&format!("{p}/")))
                    .map_or((&s.aud, &s.metadata), |(_, a, m)| (a, m));
                let location = format!(
                    "{}/cdn-cgi/access/login/{}?kid={}&redirect_url=%2F&meta=eyJraWQiOiJ4In0",
                    s.team_url, s.host, aud
                );
                let mut r = Response::builder()
                    .status(StatusCode::FOUND)
                    .header("location", location);
                if meta && let Some(m) = metadata {
                    r = r.header("cf-access-metadata", m.as_str());
                }
                r.body(Body::empty()).unwrap()
            }
        });
        FakeAccess {
            team,
            host: host_server,
            state,
        }
    }

    pub fn team_url(&self) -> String {
        self.team.url.clone()
    }

    pub fn host_url(&self) -> String {
        format!("{}/", self.host.url)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut AccessState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}
