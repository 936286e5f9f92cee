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
            m,
            "install the system CA certificates (ca-certificates) or set SSL_CERT_FILE",
        )
    })
}

/// The team domain as `https://<team>.cloudflareaccess.com` (no trailing slash), from
/// `CLOUDFLARE_AUTH_DOMAIN` (a URL or a bare host) or else `CLOUDFLARE_TEAM_NAME`.
pub fn team_domain(auth_domain: Option<&str>, team_name: Option<&str>) -> Option<String> {
    if let Some(d) = auth_domain.map(str::trim).filter(|d| !d.is_empty()) {
        let d = d.trim_end_matches('/');
        return Some(if d.contains("://") {
            d.to_string()
        } else {
            format!("https://{d}")
        });
    }
    team_name
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| format!("https://{t}.cloudflareaccess.com"))
}

/// The team name (`teamName` in a tunnel rule) from a team domain, when it is a
/// `*.cloudflareaccess.com` one (FedRAMP: `<team>.fed.cloudflareaccess.com`).
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
}

fn is_aud(s: &str) -> bool {
    crate::aud::Aud::parse(s).is_ok()
}

/// Learn the AUD of the application protecting `url` without an API token: the verified
/// `cf-access-metadata` answer when the edge gives one, else the `kid` of the login redirect.
/// `team` (from configuration) pins the team domain; without it, the metadata's `auth_domain`
/// must be a `*.cloudflareaccess.com` host.
pub async fn learn_aud(
    http: &reqwest::Client,
    url: &str,
    team: Option<&str>,
) -> Result<EdgeAud, EdgeError> {
    let mut p = probe(http, url, true).await?;
    if let Some(token) = p.metadata.as_deref() {
        let domain = match team {
            Some(t) => t.to_string(),
            None => {
                let claimed = jwt::unverified_auth_domain(token).unwrap_or_default();
                if team_name_of(&claimed).is_none() {
                    return Err(err(
                        format!(
                            "{url}: the cf-access-metadata answer names auth domain {claimed:?}, which is not a *.cloudflareaccess.com team domain"
                        ),
                        "set CLOUDFLARE_AUTH_DOMAIN to your team domain",
                    ));
                }
                team_domain(Some(&claimed), None).unwrap_or_default()
            }
        };
        let keys = certs(http, &domain).await?;
        let m = jwt::verify_metadata(token, &keys).map_err(|e| {
            err(
                format!(
                    "{url}: the cf-access-metadata answer does not verify against {domain}: {e}"
                ),
                "check CLOUDFLARE_AUTH_DOMAIN; use --source api if this persists",
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
        });
    }
    if matches!(p.status, 405 | 501) {
        // An origin that refuses HEAD is reachable without Access; ask again the ordinary way.
        p = probe(http, url, false).await?;
    }
    match (&p.login, p.status) {
        (Some(login), 301 | 302 | 303 | 307 | 308) => {
            if let Some(t) = team
                && t.trim_end_matches('/') != login.team_domain
            {
                return Err(err(
                    format!(
                        "{url} redirects to the login page of {}, not of the team domain {t}",
                        login.team_domain
                    ),
                    "check CLOUDFLARE_AUTH_DOMAIN / CLOUDFLARE_TEAM_NAME, and that --url is the host you mean",
                ));
            }
            match login.kid.as_deref() {
                Some(kid) if is_aud(kid) => Ok(EdgeAud {
                    aud: kid.to_string(),
                    how: "login redirect kid",
                    team_domain: login.team_domain.clone(),
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
                    .map(|l| format!(" (Location {l})"))
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
}
