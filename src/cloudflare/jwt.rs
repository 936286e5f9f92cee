//! Access JWTs: the team's key set and the checks an origin makes on `Cf-Access-Jwt-Assertion`.
//!
//! Pure (no I/O): the keys come in as a parsed JWKS. Only RS256 is accepted; the algorithm is
//! read from the header and refused before any key is chosen, so `alg: none` and HMAC tokens
//! signed with the public key as the secret are rejected. The cryptography is `jsonwebtoken`'s.
//! Errors use the words servers print ("Invalid signature", audience mismatch, expired). A token
//! is a credential: nothing here logs it or puts it in an error.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

/// `<team domain>/cdn-cgi/access/certs` (`keys` is a JWKS; other fields are ignored).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Jwks {
    #[serde(default)]
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    #[serde(default)]
    pub kid: String,
    #[serde(default)]
    pub kty: String,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
}

impl Jwks {
    /// The keys usable for RS256: `kty: RSA`, `alg` RS256 or absent, with `n` and `e`.
    pub fn rs256(&self) -> Vec<&Jwk> {
        self.keys
            .iter()
            .filter(|k| {
                k.kty == "RSA"
                    && k.alg.as_deref().is_none_or(|a| a == "RS256")
                    && k.n.is_some()
                    && k.e.is_some()
            })
            .collect()
    }

    fn key(&self, kid: Option<&str>) -> Vec<&Jwk> {
        self.rs256()
            .into_iter()
            .filter(|k| kid.is_none_or(|id| k.kid == id))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error(
        "Invalid signature: the token is signed with {0:?}; Cloudflare Access tokens are RS256 only (unsigned and HMAC tokens are refused)"
    )]
    Algorithm(String),
    #[error(
        "Invalid signature: no RS256 key with kid {0:?} in the team's certs (a token from another team, or a key that rotated out)"
    )]
    UnknownKey(String),
    #[error("Invalid signature: the signature does not verify against the team's keys")]
    Signature,
    #[error(
        "audience mismatch (invalid audience): the token's aud {got:?} does not contain {want}"
    )]
    Audience { got: Vec<String>, want: String },
    #[error("invalid issuer: the token's iss is {got:?}, expected the team domain {want}")]
    Issuer { got: String, want: String },
    #[error("token expired (exp {exp})")]
    Expired { exp: i64 },
    #[error("token not yet valid (nbf {nbf})")]
    NotYetValid { nbf: i64 },
}

impl TokenError {
    /// What to do about it.
    pub fn fix(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => {
                "pass the raw Cf-Access-Jwt-Assertion header value (three base64url parts)"
            }
            TokenError::Algorithm(_) | TokenError::Signature => {
                "the token was not issued by this team's Access; log in again through the protected host"
            }
            TokenError::UnknownKey(_) => {
                "check CLOUDFLARE_AUTH_DOMAIN (the team domain) and that the token comes from that team; log in again"
            }
            TokenError::Audience { .. } => {
                "the token belongs to another Access application: run `audsync sync` so the server expects the current AUD, or log in through this host"
            }
            TokenError::Issuer { .. } => {
                "set CLOUDFLARE_AUTH_DOMAIN to the team domain that issued the token (https://<team>.cloudflareaccess.com)"
            }
            TokenError::Expired { .. } | TokenError::NotYetValid { .. } => {
                "log in again for a fresh token; check the clock (NTP) if this keeps happening"
            }
        }
    }
}

/// Who a valid token stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// A user's token: `email`.
    User(String),
    /// A service token's: `common_name` (the service token's client id), no `email`.
    Service(String),
    /// Neither claim (cloudflared does not require one).
    Unnamed,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Claims are the token's: shown escaped (a newline there could forge a line).
            Identity::User(e) => write!(f, "user {}", crate::shown::outside(e)),
            Identity::Service(c) => write!(f, "service token {}", crate::shown::outside(c)),
            Identity::Unnamed => f.write_str("no email or common_name"),
        }
    }
}

/// The claims this program reads.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessClaims {
    pub identity: Identity,
    pub aud: Vec<String>,
    pub iss: String,
    pub exp: Option<i64>,
}

fn header(token: &str) -> Result<Value, TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(
            "not three dot-separated parts".into(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed("the header is not base64url".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed("the header is not JSON".into()))
}

fn payload(token: &str) -> Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec![],
    }
}

/// Check the header (RS256 only), pick the key by `kid`, verify the signature with `validation`.
fn verified(token: &str, keys: &Jwks, validation: &Validation) -> Result<Value, TokenError> {
    let h = header(token)?;
    let alg = h.get("alg").and_then(Value::as_str).unwrap_or("(missing)");
    if alg != "RS256" {
        return Err(TokenError::Algorithm(alg.to_string()));
    }
    let kid = h.get("kid").and_then(Value::as_str);
    let candidates = keys.key(kid);
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey(kid.unwrap_or("(none)").to_string()));
    }
    let mut last = TokenError::Signature;
    for k in candidates {
        let (Some(n), Some(e)) = (&k.n, &k.e) else {
            continue;
        };
        let key = DecodingKey::from_rsa_components(n, e).map_err(|e| {
            TokenError::Malformed(format!("the team key {:?} is unusable: {e}", k.kid))
        })?;
        match jsonwebtoken::decode::<Value>(token, &key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(err) => {
                last = match err.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidRsaKey(_) => {
                        TokenError::Signature
                    }
                    ErrorKind::ExpiredSignature => TokenError::Expired {
                        exp: payload(token)["exp"].as_i64().unwrap_or_default(),
                    },
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid {
                        nbf: payload(token)["nbf"].as_i64().unwrap_or_default(),
                    },
                    ErrorKind::InvalidAudience => TokenError::Audience {
                        got: strings(&payload(token)["aud"]),
                        want: validation
                            .aud
                            .as_ref()
                            .and_then(|a| a.iter().next().cloned())
                            .unwrap_or_default(),
                    },
                    ErrorKind::InvalidIssuer => TokenError::Issuer {
                        got: payload(token)["iss"].as_str().unwrap_or("").to_string(),
                        want: validation
                            .iss
                            .as_ref()
                            .and_then(|a| a.iter().next().cloned())
                            .unwrap_or_default(),
                    },
                    ErrorKind::MissingRequiredClaim(c) => {
                        TokenError::Malformed(format!("the {c} claim is missing"))
                    }
                    ErrorKind::InvalidAlgorithm => TokenError::Algorithm(alg.to_string()),
                    other => TokenError::Malformed(format!("{other:?}")),
                };
                // Only a bad signature may be another key's: any other failure is final.
                if last != TokenError::Signature {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// Verify an Access application token the way an origin must (cloudflared's validator,
/// ingress/middleware/jwtvalidator.go): RS256 signature by a team key, `aud` contains `aud`,
/// `iss` is `team_domain`, `exp`/`nbf` hold. No `email` is required: a service token's JWT
/// carries `common_name` instead and is just as valid.
pub fn verify_access_token(
    token: &str,
    keys: &Jwks,
    aud: &str,
    team_domain: &str,
) -> Result<AccessClaims, TokenError> {
    let iss = team_domain.trim_end_matches('/');
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[aud]);
    v.set_issuer(&[iss]);
    v.set_required_spec_claims(&["exp", "aud", "iss"]);
    v.validate_nbf = true;
    v.leeway = 30;
    let claims = verified(token, keys, &v)?;
    let claim = |k: &str| {
        claims
            .get(k)
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
    };
    let identity = match (claim("email"), claim("common_name")) {
        (Some(e), _) => Identity::User(e),
        (None, Some(c)) => Identity::Service(c),
        (None, None) => Identity::Unnamed,
    };
    Ok(AccessClaims {
        identity,
        aud: strings(&claims["aud"]),
        iss: claims["iss"].as_str().unwrap_or_default().to_string(),
        exp: claims["exp"].as_i64(),
    })
}

/// The `cf-access-metadata` answer: `{type: "match", hostname, auth_domain, aud, app_hostname, iat}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    pub aud: String,
    pub hostname: Option<String>,
    pub auth_domain: Option<String>,
    /// When the edge issued it (Unix seconds): a later answer older than the one that set the
    /// value is a replay.
    pub iat: i64,
}

/// The `auth_domain` claim of a metadata token, unverified: only to know where the keys are.
pub fn unverified_auth_domain(token: &str) -> Option<String> {
    payload(token)
        .get("auth_domain")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Verify a `cf-access-metadata` token the way cloudflared does (`token/token.go`,
/// `GetAppInfo`): RS256 by a team key, `type == "match"`, `hostname` equal to `host`
/// (case-insensitive), one non-empty `aud`, `iat` no older than 24 h and at most 5 min ahead
/// of `now` (Unix seconds). It usually carries no `exp` or `nbf`; when it does, they hold (30 s
/// of leeway, as for application tokens).
pub fn verify_metadata(
    token: &str,
    keys: &Jwks,
    host: &str,
    now: i64,
) -> Result<Metadata, TokenError> {
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_exp = false;
    v.validate_aud = false;
    v.set_required_spec_claims::<&str>(&[]);
    let claims = verified(token, keys, &v)?;
    match claims.get("type").and_then(Value::as_str) {
        Some("match") => {}
        t => {
            return Err(TokenError::Malformed(format!(
                "metadata type is {t:?}, not \"match\" (the host is not behind this Access application)"
            )));
        }
    }
    let hostname = claims["hostname"].as_str().unwrap_or_default();
    if !hostname.eq_ignore_ascii_case(host) {
        return Err(TokenError::Malformed(format!(
            "metadata is for hostname {hostname:?}, not {host:?}"
        )));
    }
    let aud = strings(&claims["aud"]);
    let [aud] = aud.as_slice() else {
        return Err(TokenError::Malformed(format!(
            "metadata carries {} aud values; expected one",
            aud.len()
        )));
    };
    if aud.is_empty() {
        return Err(TokenError::Malformed("metadata aud is empty".into()));
    }
    let Some(iat) = claims["iat"].as_i64() else {
        return Err(TokenError::Malformed("metadata has no iat".into()));
    };
    if now - iat > 24 * 3600 {
        return Err(TokenError::Malformed(format!(
            "metadata was issued more than 24 h ago (iat {iat}); check the clock (NTP)"
        )));
    }
    if iat - now > 5 * 60 {
        return Err(TokenError::Malformed(format!(
            "metadata is issued more than 5 min in the future (iat {iat}); check the clock (NTP)"
        )));
    }
    let leeway = 30;
    if let Some(exp) = claims.get("exp").filter(|v| !v.is_null()) {
        let Some(exp) = exp.as_i64() else {
            return Err(TokenError::Malformed("metadata exp is not a number".into()));
        };
        if exp + leeway < now {
            return Err(TokenError::Expired { exp });
        }
    }
    if let Some(nbf) = claims.get("nbf").filter(|v| !v.is_null()) {
        let Some(nbf) = nbf.as_i64() else {
            return Err(TokenError::Malformed("metadata nbf is not a number".into()));
        };
        if nbf - leeway > now {
            return Err(TokenError::NotYetValid { nbf });
        }
    }
    Ok(Metadata {
        aud: aud.clone(),
        hostname: Some(hostname.to_string()),
        auth_domain: claims["auth_domain"].as_str().map(str::to_string),
        iat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key_is_used() {
        let keys = Jwks::default();
        let claims = b64(
            &serde_json::json!({"aud": ["a"], "iss": "https://t", "exp": 9999999999u64, "email": "x@y"}),
        );
        let none = format!("{}.{claims}.", b64(&serde_json::json!({"alg": "none"})));
        assert_eq!(
            verify_access_token(&none, &keys, "a", "https://t"),
            Err(TokenError::Algorithm("none".into()))
        );
        let hs = format!(
            "{}.{claims}.c2ln",
            b64(&serde_json::json!({"alg": "HS256", "kid": "k"}))
        );
        assert_eq!(
            verify_access_token(&hs, &keys, "a", "https://t"),
            Err(TokenError::Algorithm("HS256".into()))
        );
        assert!(matches!(
            verify_access_token("abc", &keys, "a", "https://t"),
            Err(TokenError::Malformed(_))
        ));
        let rs = format!(
            "{}.{claims}.c2ln",
            b64(&serde_json::json!({"alg": "RS256", "kid": "k"}))
        );
        assert_eq!(
            verify_access_token(&rs, &keys, "a", "https://t"),
            Err(TokenError::UnknownKey("k".into()))
        );
    }
}
