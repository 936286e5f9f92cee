//! The Access edge, seen from outside without any API token: the protected host's answer to an
//! unauthenticated request (302 to the team's login page, `kid` = AUD), the `cf-access-metadata`
//! probe, and the team's public keys at `<team domain>/cdn-cgi/access/certs`.
//!
//! Owns every request to the protected host and to the team domain. It never follows a redirect
//! (the 302 is the answer), never sends a credential, and never logs a token.

use std::time::Duration;

use reqwest::StatusCode;

use super::jwt::{self, Jwks};

/// A failure at the edge, phrased for the user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EdgeError {
    pub message: String,
    pub hint: Option<String>,
}

fn err(message: impl Into<String>, hint: impl Into<String>) -> EdgeError {
    EdgeError {
        message: message.into(),
        hint: Some(hint.into()),
    }
}

/// An HTTP client for the edge: no redirects followed, bounded time.
pub fn http(timeout: Duration) -> Result<reqwest::Client, EdgeError> {
    crate::http::client(timeout, crate::http::Redirects::None).map_err(|m| {
        err(
            m.to_string(),
            "install the system CA certificates (ca-certificates) or set SSL_CERT_FILE",
        )
    })
}

/// The team domain as `https://<team>.cloudflareaccess.com` (no trailing slash), from
/// `CLOUDFLARE_AUTH_DOMAIN` (a URL or a bare host) or else `CLOUDFLARE_TEAM_NAME`. Not validated
/// (`verify` shows what it finds); [`configured_team_domain`] is the checked form.
pub fn team_domain(auth_domain: Option<&str>, team_name: Option<&str>) -> Option<String> {
    if let Some(d) = auth_domain.map(str::trim).filter(|d| !d.is_empty()) {
        let d = d.trim_end_matches('/');
        let full = if d.contains("://") {
            d.to_string()
        } else {
            format!("https://{d}")
        };
        // The origin after parsing (lowercase host, no path); the text as given otherwise.
        return Some(
            url::Url::parse(&full)
                .ok()
                .filter(|u| u.host_str().is_some())
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or(full),
        );
    }
    team_name
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| format!("https://{t}.cloudflareaccess.com"))
}

/// A team domain that is not one (the message names the setting and the expected form).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TeamDomainError(String);

/// The team domain the user configured, checked: it is the user's word (any host), but it must
/// parse as an origin and be https, or plain http to a loopback address; a team name must be
/// one DNS label. Returns the origin (`scheme://host[:port]`, lowercase host, no path).
pub fn configured_team_domain(
    auth_domain: Option<&str>,
    team_name: Option<&str>,
) -> Result<Option<String>, TeamDomainError> {
    if let Some(d) = auth_domain.map(str::trim).filter(|d| !d.is_empty()) {
        let full = if d.contains("://") {
            d.to_string()
        } else {
            format!("https://{d}")
        };
        // The value is never repeated: it may carry a password (`https://user:pw@…`).
        let u = url::Url::parse(&full)
            .map_err(|e| TeamDomainError(format!("CLOUDFLARE_AUTH_DOMAIN is not a URL: {e}")))?;
        let host_ok = u.host_str().is_some_and(|h| !h.is_empty());
        if !host_ok || !u.username().is_empty() || u.password().is_some() {
            return Err(TeamDomainError(
                "CLOUDFLARE_AUTH_DOMAIN must be the team domain (no user or password), e.g. https://team.cloudflareaccess.com".to_string(),
            ));
        }
        let loopback_http = u.scheme() == "http" && crate::http::credential_safe(&u);
        if u.scheme() != "https" && !loopback_http {
            return Err(TeamDomainError(
                "CLOUDFLARE_AUTH_DOMAIN must be https (plain http only to a loopback address)"
                    .to_string(),
            ));
        }
        return Ok(Some(u.origin().ascii_serialization()));
    }
    match team_name.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) if is_label(t) => Ok(Some(format!(
            "https://{}.cloudflareaccess.com",
            t.to_ascii_lowercase()
        ))),
        Some(_) => Err(TeamDomainError(
            "CLOUDFLARE_TEAM_NAME is not a team name (one DNS label: letters, digits, '-')"
                .to_string(),
        )),
    }
}

/// One DNS label: 1-63 ASCII letters, digits or '-', not starting or ending with '-'.
fn is_label(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !t.starts_with('-')
        && !t.ends_with('-')
}

/// A team domain learned from the edge (no team configured): only
/// `https://<label>.cloudflareaccess.com` or `https://<label>.fed.cloudflareaccess.com` exactly
/// (a bare host of that form is taken as https). Userinfo, ports, paths, backslashes, IPs,
/// dotless hosts, trailing dots and upper case are refused: the text must be what the URL
/// parser gives back. Returns the origin.
pub fn learned_team_domain(claimed: &str) -> Option<String> {
    let full = if claimed.starts_with("https://") {
        claimed.to_string()
    } else if claimed.contains(':') || claimed.contains('/') || claimed.contains('\\') {
        return None;
    } else {
        format!("https://{claimed}")
    };
    let u = url::Url::parse(&full).ok()?;
    let url::Host::Domain(host) = u.host()? else {
        return None;
    };
    let label = host
        .strip_suffix(".fed.cloudflareaccess.com")
        .or_else(|| host.strip_suffix(".cloudflareaccess.com"))?;
    let lower = label.bytes().all(|b| !b.is_ascii_uppercase());
    let origin = format!("https://{host}");
    // Round trip: what was given is exactly the origin (with at most one trailing '/').
    let given = full.strip_suffix('/').unwrap_or(&full);
    (is_label(label) && lower && u.port().is_none() && given == origin).then_some(origin)
}

/// Two team domains name the same origin once parsed (scheme, lowercase host, port).
pub fn same_origin(a: &str, b: &str) -> bool {
    let o = |s: &str| {
        url::Url::parse(s.trim())
            .ok()
            .filter(|u| u.host_str().is_some())
            .map(|u| u.origin().ascii_serialization())
    };
    matches!((o(a), o(b)), (Some(x), Some(y)) if x == y)
}

/// The team name (`teamName` in a tunnel rule) from a team domain, when it is a
/// `*.cloudflareaccess.com` one (FedRAMP: `<team>.fed.cloudflareaccess.com`).
#[cfg(test)]
pub fn team_name_of(domain: &str) -> Option<String> {
    team_of_domain(domain).map(|t| t.name)
}

/// The team a tunnel rule names: `teamName`, and whether it is a FedRAMP team (cloudflared then
/// wants `environment: "fed"`, the only value it compares against, `credentials.FedEndpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub name: String,
    pub fed: bool,
}

fn team_of_domain(domain: &str) -> Option<Team> {
    let host = super::apps::host_of(domain);
    let label = host.strip_suffix(".cloudflareaccess.com")?;
    let (name, fed) = match label.strip_suffix(".fed") {
        Some(n) => (n, true),
        None => (label, false),
    };
    (!name.is_empty() && !name.contains('.')).then(|| Team {
        name: name.to_string(),
        fed,
    })
}

/// The configured team: `CLOUDFLARE_TEAM_NAME`, else the team of `CLOUDFLARE_AUTH_DOMAIN`. A
/// FedRAMP team is known only from its domain.
pub fn team(team_name: Option<&str>, auth_domain: Option<&str>) -> Option<Team> {
    let from_domain = auth_domain.and_then(team_of_domain);
    match team_name.map(str::trim).filter(|t| !t.is_empty()) {
        Some(n) => Some(Team {
            name: n.to_string(),
            fed: from_domain.is_some_and(|d| d.fed && d.name == n),
        }),
        None => from_domain,
    }
}

/// What an unauthenticated request to the host got.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub status: u16,
    pub location: Option<String>,
    /// Set when `location` is an Access login page.
    pub login: Option<Login>,
    /// The `cf-access-metadata` header, when the edge sent one.
    pub metadata: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    /// Scheme + host (+ port) of the login page: the team domain the edge sends users to.
    pub team_domain: String,
    /// The `kid` query parameter: the application's AUD.
    pub kid: Option<String>,
}

fn transport(url: &str, e: &reqwest::Error) -> EdgeError {
    err(
        format!("{url}: {}", crate::http::describe_transport(e)),
        "check the URL (--url), DNS and network access to the host",
    )
}

/// One unauthenticated request (`HEAD` with the metadata request header when `metadata`,
/// else `GET`), redirects not followed.
pub async fn probe(http: &reqwest::Client, url: &str, metadata: bool) -> Result<Probe, EdgeError> {
    let req = if metadata {
        http.head(url).header("cf-access-metadata-request", "true")
    } else {
        http.get(url)
    };
    let resp = req.send().await.map_err(|e| transport(url, &e))?;
    let status = resp.status();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let location = header("location");
    let login = location.as_deref().and_then(|l| login_of(url, l));
    Ok(Probe {
        status: status.as_u16(),
        location,
        login,
        metadata: header("cf-access-metadata"),
    })
}

fn login_of(base: &str, location: &str) -> Option<Login> {
    let u = url::Url::parse(base).ok()?.join(location).ok()?;
    if !u.path().contains("/cdn-cgi/access/login") {
        return None;
    }
    let kid = u
        .query_pairs()
        .find(|(k, _)| k == "kid")
        .map(|(_, v)| v.into_owned());
    Some(Login {
        team_domain: u.origin().ascii_serialization(),
        kid,
    })
}

/// `<team domain>/cdn-cgi/access/certs`, parsed.
pub async fn certs(http: &reqwest::Client, team_domain: &str) -> Result<Jwks, EdgeError> {
    let url = format!("{}/cdn-cgi/access/certs", team_domain.trim_end_matches('/'));
    // The fix names the team domain's setting, not --url: this is not the protected host.
    let unreachable = |e: &reqwest::Error| {
        err(
            format!("{url}: {}", crate::http::describe_transport(e)),
            "check CLOUDFLARE_AUTH_DOMAIN (the team domain, https://<team>.cloudflareaccess.com) and network access to it",
        )
    };
    let resp = http.get(&url).send().await.map_err(|e| unreachable(&e))?;
    let status = resp.status();
    if status != StatusCode::OK {
        return Err(err(
            format!("{url} answered HTTP {}", status.as_u16()),
            "check CLOUDFLARE_AUTH_DOMAIN (https://<team>.cloudflareaccess.com)",
        ));
    }
    let bytes = match crate::http::read_body(resp, crate::http::MAX_BODY).await {
        Ok(b) => b,
        Err(crate::http::BodyError::Transport(e)) => return Err(unreachable(&e)),
        Err(e) => return Err(err(format!("{url}: {e}"), "check CLOUDFLARE_AUTH_DOMAIN")),
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        err(
            format!("{url}: not a JSON key set ({e})"),
            "check CLOUDFLARE_AUTH_DOMAIN: it must be the team domain, not the protected host",
        )
    })
}

/// How the AUD was learned from the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeAud {
    pub aud: String,
    /// `cf-access-metadata` (signature verified) or `login redirect kid` (not signed).
    pub how: &'static str,
    pub team_domain: String,
    /// Set when the AUD is the unsigned `kid` (taken only with `--allow-unsigned-kid`).
    pub unsigned: bool,
    /// The signed metadata's `iat` (Unix seconds); `None` for the unsigned `kid`.
    pub iat: Option<i64>,
}

fn is_aud(s: &str) -> bool {
    crate::aud::Aud::parse(s).is_ok()
}

/// What `--source edge` asks about.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Where the protected host is reached (`--url`).
    pub url: &'a str,
    /// The binding's host: the metadata's `hostname` must be this one, wherever `url` points.
    pub host: &'a str,
    /// The configured team domain (checked by [`configured_team_domain`]).
    pub team: Option<&'a str>,
    /// `--allow-unsigned-kid`: take the login redirect's unsigned `kid` when no metadata comes.
    pub allow_unsigned_kid: bool,
}

/// The edge's own answer to an unauthenticated request: a redirect or a 401. A 200 (or any
/// other answer) comes from an origin, which can set any header it likes.
fn is_edge_answer(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308 | 401)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Learn the AUD of the application protecting the host without an API token: the
/// `cf-access-metadata` answer, after cloudflared's checks (RS256 by the team's keys,
/// `type == "match"`, `hostname` = the binding's host, non-empty `aud`, `iat` at most 24 h old
/// and 5 min ahead), taken only from the edge's redirect or 401. The login redirect's `kid` is
/// not signed: it is used only with `allow_unsigned_kid`. The team (where the keys are) is the
/// configured one, else a strictly checked `*.cloudflareaccess.com` one.
pub async fn learn_aud(http: &reqwest::Client, ask: Ask<'_>) -> Result<EdgeAud, EdgeError> {
    let Ask {
        url,
        host,
        team,
        allow_unsigned_kid,
    } = ask;
    let mut p = probe(http, url, true).await?;
    if let Some(token) = p.metadata.as_deref() {
        if !is_edge_answer(p.status) {
            return Err(err(
                format!(
                    "{url} answered HTTP {} with a cf-access-metadata header: the Access edge answers an unauthenticated request with a redirect or 401, so this answer comes from the origin, which can forge it; refused",
                    p.status
                ),
                "check that the host is behind Cloudflare Access (and --url); or use --source api",
            ));
        }
        let domain = match team {
            Some(t) => t.to_string(),
            None => {
                let claimed = jwt::unverified_auth_domain(token).unwrap_or_default();
                learned_team_domain(&claimed).ok_or_else(|| {
                    err(
                        format!(
                            "{url}: the cf-access-metadata answer names auth domain {claimed:?}, which is not exactly <team>.cloudflareaccess.com"
                        ),
                        "set CLOUDFLARE_AUTH_DOMAIN to your team domain",
                    )
                })?
            }
        };
        let keys = certs(http, &domain).await?;
        let m = jwt::verify_metadata(token, &keys, host, now_secs()).map_err(|e| {
            err(
                format!(
                    "{url}: the cf-access-metadata answer does not verify against {domain}: {e}"
                ),
                "check CLOUDFLARE_AUTH_DOMAIN, --domain and the clock; use --source api if this persists",
            )
        })?;
        if !is_aud(&m.aud) {
            return Err(err(
                format!("{url}: the cf-access-metadata aud is not 64 lowercase hex characters"),
                "use --source api",
            ));
        }
        return Ok(EdgeAud {
            aud: m.aud,
            how: "cf-access-metadata",
            team_domain: domain,
            unsigned: false,
            iat: Some(m.iat),
        });
    }
    if matches!(p.status, 405 | 501) {
        // An origin that refuses HEAD is reachable without Access; ask again the ordinary way.
        p = probe(http, url, false).await?;
    }
    match (&p.login, p.status) {
        (Some(login), 301 | 302 | 303 | 307 | 308) => {
            if !allow_unsigned_kid {
                return Err(err(
                    format!(
                        "{url} answers only with the login redirect, whose kid is not signed (anyone between here and the host can choose it; cloudflared stopped trusting it as a security fix); nothing written"
                    ),
                    "use --source api (an API token), or pass --allow-unsigned-kid (AUDSYNC_ALLOW_UNSIGNED_KID=1) if you accept an unsigned AUD",
                ));
            }
            let team_domain = match team {
                Some(t) if same_origin(t, &login.team_domain) => t.to_string(),
                Some(t) => {
                    return Err(err(
                        format!(
                            "{url} redirects to the login page of {}, not of the team domain {t}",
                            login.team_domain
                        ),
                        "check CLOUDFLARE_AUTH_DOMAIN / CLOUDFLARE_TEAM_NAME, and that --url is the host you mean",
                    ));
                }
                None => learned_team_domain(&login.team_domain).ok_or_else(|| {
                    err(
                        format!(
                            "{url} redirects to the login page at {}, which is not exactly https://<team>.cloudflareaccess.com",
                            login.team_domain
                        ),
                        "set CLOUDFLARE_AUTH_DOMAIN to your team domain if it really is",
                    )
                })?,
            };
            match login.kid.as_deref() {
                Some(kid) if is_aud(kid) => Ok(EdgeAud {
                    aud: kid.to_string(),
                    how: "login redirect kid",
                    team_domain,
                    unsigned: true,
                    iat: None,
                }),
                _ => Err(err(
                    format!(
                        "{url} redirects to the Access login page without a usable kid (64 hex characters)"
                    ),
                    "use --source api (this edge does not reveal the AUD)",
                )),
            }
        }
        (_, 200..=299) => Err(err(
            format!(
                "{url} answered HTTP {} without Access: the host is not protected",
                p.status
            ),
            "check the Access application for the host and the tunnel route; or use --source api",
        )),
        (_, s) => Err(err(
            format!(
                "{url} answered HTTP {s}{} instead of a redirect to the Access login page",
                p.location
                    .as_deref()
                    .and_then(|l| url::Url::parse(url).ok()?.join(l).ok())
                    .and_then(|l| l.host_str().map(|h| format!(" (Location host {h})")))
                    .unwrap_or_default()
            ),
            "check --url and that the host is behind Cloudflare Access; or use --source api",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_domain_forms() {
        assert_eq!(
            team_domain(Some("https://t.cloudflareaccess.com/"), Some("x")).as_deref(),
            Some("https://t.cloudflareaccess.com")
        );
        assert_eq!(
            team_domain(Some("t.cloudflareaccess.com"), None).as_deref(),
            Some("https://t.cloudflareaccess.com")
        );
        assert_eq!(
            team_domain(None, Some("t")).as_deref(),
            Some("https://t.cloudflareaccess.com")
        );
        assert_eq!(team_domain(None, None), None);
        assert_eq!(
            team_name_of("https://t.fed.cloudflareaccess.com").as_deref(),
            Some("t")
        );
        assert_eq!(
            team(None, Some("https://t.fed.cloudflareaccess.com")),
            Some(Team {
                name: "t".into(),
                fed: true
            })
        );
        assert_eq!(
            team(Some("t"), None),
            Some(Team {
                name: "t".into(),
                fed: false
            })
        );
        assert_eq!(team_name_of("https://a.b.fed.cloudflareaccess.com"), None);
        assert_eq!(
            team_name_of("https://t.cloudflareaccess.com").as_deref(),
            Some("t")
        );
        assert_eq!(
            team_name_of("https://evil.com/t.cloudflareaccess.com"),
            None
        );
    }

    #[test]
    fn login_location_is_parsed() {
        let l = login_of(
            "https://api.example.com/",
            "https://t.cloudflareaccess.com/cdn-cgi/access/login/api.example.com?kid=abc&redirect_url=%2F",
        )
        .unwrap();
        assert_eq!(l.team_domain, "https://t.cloudflareaccess.com");
        assert_eq!(l.kid.as_deref(), Some("abc"));
        assert!(login_of("https://a/", "https://a/elsewhere").is_none());
    }

    #[test]
    fn a_learned_team_domain_is_exactly_a_cloudflareaccess_one() {
        for ok in [
            "https://myteam.cloudflareaccess.com",
            "https://myteam.cloudflareaccess.com/",
            "myteam.cloudflareaccess.com",
            "https://my-team2.fed.cloudflareaccess.com",
        ] {
            assert!(learned_team_domain(ok).is_some(), "{ok}");
        }
        assert_eq!(
            learned_team_domain("myteam.cloudflareaccess.com").as_deref(),
            Some("https://myteam.cloudflareaccess.com")
        );
        for bad in [
            "https://evil.com@myteam.cloudflareaccess.com",
            "https://myteam.cloudflareaccess.com@evil.com",
            "https://user:pw@myteam.cloudflareaccess.com",
            "https://evil.com\\.cloudflareaccess.com",
            "https://evil.com\\@myteam.cloudflareaccess.com",
            "evil.com\\myteam.cloudflareaccess.com",
            "https://2130706433/",
            "https://127.0.0.1/.cloudflareaccess.com",
            "https://localhost",
            "https://cloudflareaccess.com",
            "https://.cloudflareaccess.com",
            "https://myteam.cloudflareaccess.com.",
            "myteam.cloudflareaccess.com.",
            "https://myteam.cloudflareaccess.com.evil.com",
            "https://MyTeam.cloudflareaccess.com",
            "https://myteam.CloudflareAccess.com",
            "https://myteam.cloudflareaccess.com:8443",
            "https://myteam.cloudflareaccess.com/x",
            "https://a.b.cloudflareaccess.com",
            "http://myteam.cloudflareaccess.com",
            "https://xn--80ak6aa92e.cloudflareaccess.com.",
            "https://-x.cloudflareaccess.com",
            "https://myteam.evilcloudflareaccess.com",
            "https://my%74eam.cloudflareaccess.com",
            " https://myteam.cloudflareaccess.com",
            "",
        ] {
            assert_eq!(learned_team_domain(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_configured_team_domain_is_the_users_word_but_https_or_loopback() {
        assert_eq!(
            configured_team_domain(Some("HTTPS://MyTeam.CloudflareAccess.com/"), None).unwrap(),
            Some("https://myteam.cloudflareaccess.com".into())
        );
        assert_eq!(
            configured_team_domain(Some("https://sso.example.com"), None).unwrap(),
            Some("https://sso.example.com".into())
        );
        assert!(configured_team_domain(Some("http://127.0.0.1:9"), None).is_ok());
        assert!(configured_team_domain(Some("http://team.example.com"), None).is_err());
        assert!(configured_team_domain(Some("https://u@team.example.com"), None).is_err());
        assert!(configured_team_domain(None, Some("evil.com/x")).is_err());
        assert_eq!(configured_team_domain(None, None).unwrap(), None);
        assert!(same_origin(
            "HTTPS://MyTeam.cloudflareaccess.com/",
            "https://myteam.cloudflareaccess.com"
        ));
        assert!(!same_origin(
            "https://myteam.cloudflareaccess.com",
            "https://myteam.cloudflareaccess.com:444"
        ));
    }
}
