//! Access applications: find the one that protects a host, read its AUD, detect the account.
//!
//! Matching follows the rules in api-notes: public `destinations[].uri` first, else
//! `self_hosted_domains`, else `domain`; lowercase, path stripped; an exact host beats a `*.`
//! wildcard; several exact matches are ambiguous. The server-side `domain` filter is a hint
//! only: every page is read and matched here.
//!
//! It must never hand on an AUD that [`crate::aud::Aud::parse`] refuses ([`validate_aud`]
//! runs before anything is written), and never guess between ambiguous applications.

use serde::{Deserialize, Serialize};

use super::{Client, Error};

/// Page size for Access application lists: the endpoint's default and maximum (1000; a
/// cold lookup over 5,000 applications is 5 pages).
pub const PER_PAGE: u32 = 1000;

/// Page size for `GET /accounts`: its maximum (the schema allows 5 to 50).
pub const ACCOUNTS_PER_PAGE: u32 = 50;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct AccessApp {
    /// Always a UUID: an answer with anything else is refused where it is parsed (a list item
    /// is skipped with a warning), so an id is data and never a path.
    #[serde(deserialize_with = "uuid_id")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub aud: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub destinations: Vec<Destination>,
    #[serde(default)]
    pub self_hosted_domains: Vec<String>,
}

/// An application id that is a UUID, else a decoding error naming what it is not.
fn uuid_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    if super::is_uuid(&id) {
        Ok(id)
    } else {
        Err(serde::de::Error::custom(format!(
            "the application id {:?} is not a UUID",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// An account id that is one (32 hex digits), else a decoding error naming what it is not.
fn account_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    if super::is_account_id(&id) {
        Ok(id)
    } else {
        Err(serde::de::Error::custom(format!(
            "the account id {:?} is not 32 hex digits",
            id.chars().take(80).collect::<String>()
        )))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Destination {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub uri: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    /// Always 32 hex digits: an account with anything else is skipped where it is parsed.
    #[serde(deserialize_with = "account_id")]
    pub id: String,
    #[serde(default)]
    pub name: String,
}

impl AccessApp {
    /// What the application says it covers, as written: the public `destinations`, else
    /// `domain`, else (past its end of support, so only as a last resort) `self_hosted_domains`.
    fn raw_destinations(&self) -> Vec<&str> {
        let public: Vec<&str> = self
            .destinations
            .iter()
            .filter(|d| d.kind.is_empty() || d.kind == "public")
            .map(|d| d.uri.as_str())
            .filter(|u| !u.is_empty())
            .collect();
        if !public.is_empty() {
            public
        } else if !self.domain.trim().is_empty() {
            vec![self.domain.as_str()]
        } else {
            self.self_hosted_domains
                .iter()
                .map(String::as_str)
                .collect()
        }
    }

    /// The host names this application protects, lowercased, without paths: the public
    /// `destinations`, else `domain`, else (past its end of support, so only as a last resort)
    /// `self_hosted_domains`.
    pub fn hosts(&self) -> Vec<String> {
        self.raw_destinations()
            .into_iter()
            .map(host_of)
            .filter(|h| !h.is_empty())
            .collect()
    }

    /// What this application covers: each public destination (else `domain`, else
    /// `self_hosted_domains`) as its lowercased host and its path (`None`: the whole host).
    pub fn scopes(&self) -> Vec<(String, Option<String>)> {
        self.raw_destinations()
            .into_iter()
            .map(split)
            .filter(|(h, _)| !h.is_empty())
            .collect()
    }

    /// A short description for error messages: `name (domain)`.
    pub fn label(&self) -> String {
        use crate::shown::outside;
        format!(
            "{} ({}, id {})",
            outside(&self.name),
            outside(&self.domain),
            outside(&self.id)
        )
    }
}

/// Lowercase and strip scheme, path and port: `https://API.example.com:443/x` -> `api.example.com`.
pub fn host_of(uri: &str) -> String {
    // Parsed with a URL parser, never sliced: userinfo (`evil@host`), backslashes and other
    // tricks give no host at all (an empty host matches nothing and fails validation).
    let s = uri.trim();
    if s.is_empty() || s.contains('\\') {
        return String::new();
    }
    let full = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    match url::Url::parse(&full) {
        Ok(u) if u.username().is_empty() && u.password().is_none() => u
            .host_str()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The path of a destination or a binding's `domain` (`api.example.com/docs` -> `/docs`), without
/// a trailing `/`; `None` when it covers the whole host.
pub fn path_of(uri: &str) -> Option<String> {
    let s = uri.trim();
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let (_, path) = rest.split_once('/')?;
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches(['/', '*']);
    (!path.is_empty()).then(|| format!("/{path}"))
}

/// Host and path of a destination or a binding's `domain`.
pub fn split(uri: &str) -> (String, Option<String>) {
    (host_of(uri), path_of(uri))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchKind {
    Wildcard,
    Exact,
    /// The binding names a path, and the application covers exactly that path of the host.
    Path,
}

/// How well `app` matches `host` (a binding's `domain`: a host, or a host and a path), if at
/// all. An application that covers only a path of a host is no match for the host: it applies
/// when the binding names that path. A binding that names a path is served by a whole-host
/// application when no application covers that path.
pub fn match_kind(app: &AccessApp, host: &str) -> Option<MatchKind> {
    let (host, want_path) = split(host);
    let mut best = None;
    for (h, path) in app.scopes() {
        match (&path, &want_path) {
            (None, _) => {}
            (Some(p), Some(w)) if p == w && h == host => return Some(MatchKind::Path),
            (Some(_), _) => continue,
        }
        if h == host {
            best = Some(MatchKind::Exact);
            continue;
        }
        if let Some(suffix) = h.strip_prefix("*.") {
            // `*.example.com` covers `a.example.com`, not `example.com` and not `a.b.example.com`'s
            // lookalikes such as `a.example.com.evil.net` (the suffix must end the host).
            if let Some(label) = host.strip_suffix(suffix).and_then(|p| p.strip_suffix('.'))
                && !label.is_empty()
                && !label.contains('.')
            {
                best = best.max(Some(MatchKind::Wildcard));
            }
        }
    }
    best
}

/// Which requests to the binding's host carry another application's AUD than `chosen`'s: the
/// paths other applications cover (for a whole-host binding), or the rest of the host (for a
/// binding of a path). One line each, for the report.
pub fn path_notes(apps: &[AccessApp], host: &str, chosen: &AccessApp) -> Vec<String> {
    use crate::shown::outside;
    let (h, want) = split(host);
    let mut out = Vec::new();
    for a in apps.iter().filter(|a| a.id != chosen.id) {
        match &want {
            None => {
                let paths = a
                    .scopes()
                    .into_iter()
                    .filter(|(ah, _)| *ah == h)
                    .filter_map(|(_, p)| p);
                for p in paths {
                    out.push(format!(
                        "requests to {h}{p} carry the AUD of application \"{}\" (id {}), which covers only that path, not this one: bind domain = \"{h}{p}\" to keep it in sync too",
                        outside(&a.name),
                        outside(&a.id),
                        p = outside(&p)
                    ));
                }
            }
            Some(w) => {
                if match_kind(chosen, host) == Some(MatchKind::Path) && match_kind(a, &h).is_some()
                {
                    out.push(format!(
                        "only requests to {h}{w} carry this AUD; the rest of {h} carries the AUD of application \"{}\" (id {})",
                        outside(&a.name),
                        outside(&a.id)
                    ));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The hosts `app` covers besides `host` itself: a `*.` wildcard, other destinations. An
/// application with any is shared, and `setup` for one host must not change it (its policies
/// decide who reaches every one of them).
pub fn other_hosts(app: &AccessApp, host: &str) -> Vec<String> {
    let host = host_of(host);
    let mut v: Vec<String> = app.hosts().into_iter().filter(|h| *h != host).collect();
    v.dedup();
    v
}

/// The `*.` pattern of `app` that covers `host`, when only a wildcard does.
pub fn wildcard_of(app: &AccessApp, host: &str) -> Option<String> {
    if match_kind(app, host) != Some(MatchKind::Wildcard) {
        return None;
    }
    let one = |h: &String| {
        let probe = AccessApp {
            destinations: vec![],
            self_hosted_domains: vec![h.clone()],
            ..app.clone()
        };
        match_kind(&probe, host) == Some(MatchKind::Wildcard)
    };
    app.hosts()
        .into_iter()
        .find(|h| h.starts_with("*.") && one(h))
}

/// Choose the application for `host` among `apps`. Pure: errors list what was seen.
pub fn choose<'a>(apps: &'a [AccessApp], host: &str) -> Result<&'a AccessApp, Error> {
    let exact: Vec<&AccessApp> = apps
        .iter()
        .filter(|a| match_kind(a, host) == Some(MatchKind::Exact))
        .collect();
    let wild: Vec<&AccessApp> = apps
        .iter()
        .filter(|a| match_kind(a, host) == Some(MatchKind::Wildcard))
        .collect();
    let path: Vec<&AccessApp> = apps
        .iter()
        .filter(|a| match_kind(a, host) == Some(MatchKind::Path))
        .collect();
    let pool = if !path.is_empty() {
        path
    } else if exact.is_empty() {
        wild
    } else {
        exact
    };
    match pool.len() {
        1 => Ok(pool[0]),
        0 => {
            let seen = if apps.is_empty() {
                "none".to_string()
            } else {
                let mut v: Vec<String> = apps
                    .iter()
                    .take(20)
                    .map(|a| format!("  - {}", a.label()))
                    .collect();
                if apps.len() > 20 {
                    v.push(format!("  … and {} more", apps.len() - 20));
                }
                format!("\n{}", v.join("\n"))
            };
            let (h, _) = split(host);
            let paths: Vec<String> = apps
                .iter()
                .flat_map(|a| a.scopes())
                .filter(|(ah, p)| *ah == h && p.is_some())
                .map(|(ah, p)| format!("{ah}{}", crate::shown::outside(&p.unwrap_or_default())))
                .collect();
            if !paths.is_empty() {
                return Err(Error::Lookup(format!(
                    "no Access application protects the whole of {host}, only paths of it: {}\nhint: bind the path whose AUD you need (domain = \"{}\")",
                    paths.join(", "),
                    paths[0]
                )));
            }
            Err(Error::Lookup(format!(
                "no Access application protects {host}; applications seen: {seen}\nhint: check the host name, or create the application with `audsync setup --domain {host}`"
            )))
        }
        _ => Err(Error::Lookup(format!(
            "{} Access applications match {host} equally well; pass --app-id to choose one:\n{}",
            pool.len(),
            pool.iter()
                .map(|a| format!("  - {}", a.label()))
                .collect::<Vec<_>>()
                .join("\n")
        ))),
    }
}

/// Check that an AUD tag is 64 lowercase hex characters before anything is written.
pub fn validate_aud(aud: &str, app: &AccessApp) -> Result<(), Error> {
    if crate::aud::Aud::parse(aud).is_ok() {
        Ok(())
    } else {
        Err(Error::Lookup(format!(
            "application {} has an AUD tag that is not 64 lowercase hex characters ({} characters); nothing was written",
            app.label(),
            aud.len()
        )))
    }
}

impl Client {
    /// The account to use when none was configured: the only one the credential can see.
    pub async fn detect_account(&self) -> Result<String, Error> {
        let accounts: Vec<Account> = self.list_all("/accounts", &[], ACCOUNTS_PER_PAGE).await?;
        match accounts.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(Error::Lookup(
                "the credential sees no Cloudflare account; set CLOUDFLARE_ACCOUNT_ID or give the token access to the account".into(),
            )),
            many => Err(Error::Lookup(format!(
                "the credential sees {} accounts; set CLOUDFLARE_ACCOUNT_ID (or --account-id) to one of:\n{}",
                many.len(),
                many.iter().map(|a| format!("  - {} ({})", a.id, a.name)).collect::<Vec<_>>().join("\n")
            ))),
        }
    }

    /// `GET /accounts/{account}/access/apps/{id}`.
    pub async fn app_by_id(&self, account: &str, id: &str) -> Result<AccessApp, Error> {
        self.get(
            &format!(
                "/accounts/{}/access/apps/{}",
                super::seg(account),
                super::seg(id)
            ),
            &[],
        )
        .await
    }

    /// Every application the server returns for the `domain` filter, all pages.
    pub async fn apps_for_domain(
        &self,
        account: &str,
        host: &str,
    ) -> Result<Vec<AccessApp>, Error> {
        let q = [("domain", host_of(host)), ("exact", "true".to_string())];
        self.list_all(
            &format!("/accounts/{}/access/apps", super::seg(account)),
            &q,
            PER_PAGE,
        )
        .await
    }

    /// Every application of the account, all pages (one listing serves every binding).
    /// Also the page size the server served (see [`Client::list_all_sized`]).
    pub async fn all_apps(&self, account: &str) -> Result<(Vec<AccessApp>, Option<u64>), Error> {
        self.list_all_sized(
            &format!("/accounts/{}/access/apps", super::seg(account)),
            &[],
            PER_PAGE,
        )
        .await
    }

    /// The application for `host`: server filter, every page, then our own matching. Whether
    /// the `domain` filter also looks at `destinations` is unconfirmed, so when the filtered
    /// answer holds no match, every application is listed and matched here.
    /// With it, [`path_notes`] on the applications seen.
    pub async fn find_app_noted(
        &self,
        account: &str,
        host: &str,
    ) -> Result<(AccessApp, Vec<String>), Error> {
        // A binding of a path is compared with every application: the ones covering the rest
        // of the host (a wildcard the domain filter misses) are named in the notes.
        let apps = if path_of(host).is_some() {
            vec![]
        } else {
            self.apps_for_domain(account, host).await?
        };
        if apps.iter().any(|a| match_kind(a, host).is_some()) {
            let app = choose(&apps, host)?.clone();
            let notes = path_notes(&apps, host, &app);
            return Ok((app, notes));
        }
        tracing::debug!(
            host,
            "the domain filter found no match; listing every application"
        );
        let all: Vec<AccessApp> = self
            .list_all(
                &format!("/accounts/{}/access/apps", super::seg(account)),
                &[],
                PER_PAGE,
            )
            .await?;
        let app = choose(&all, host)?.clone();
        let notes = path_notes(&all, host, &app);
        Ok((app, notes))
    }
}

/// What `setup` creates when no application protects the host.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApp {
    pub name: String,
    pub host: String,
    pub session_duration: String,
    /// Identity providers users may log in with (`allowed_idps`); empty = every one.
    pub allowed_idps: Vec<String>,
    /// Reusable policy ids, in precedence order (1, 2, …).
    pub policy_ids: Vec<String>,
}

impl NewApp {
    /// The body of `POST /access/apps`: a `self_hosted` application for the host alone.
    pub fn body(&self) -> serde_json::Value {
        let policies: Vec<serde_json::Value> = self
            .policy_ids
            .iter()
            .enumerate()
            .map(|(i, id)| serde_json::json!({"id": id, "precedence": i + 1}))
            .collect();
        let mut body = serde_json::json!({
            "name": self.name,
            "type": "self_hosted",
            "domain": self.host,
            "destinations": [{"type": "public", "uri": self.host}],
            "session_duration": self.session_duration,
            "policies": policies,
        });
        if !self.allowed_idps.is_empty() {
            body["allowed_idps"] = serde_json::json!(self.allowed_idps);
        }
        body
    }
}

/// The default application name for a host: the host itself, which is what the dashboard
/// lists and what `sync` matches on.
pub fn default_app_name(host: &str) -> String {
    host_of(host)
}

impl Client {
    /// Like [`Client::find_app`], but `None` when no application covers the host at all
    /// (ambiguity is still an error).
    pub async fn find_app_opt(
        &self,
        account: &str,
        host: &str,
    ) -> Result<Option<AccessApp>, Error> {
        let apps = self.apps_for_domain(account, host).await?;
        if apps.iter().any(|a| match_kind(a, host).is_some()) {
            return choose(&apps, host).cloned().map(Some);
        }
        let all: Vec<AccessApp> = self
            .list_all(
                &format!("/accounts/{}/access/apps", super::seg(account)),
                &[],
                PER_PAGE,
            )
            .await?;
        if all.iter().any(|a| match_kind(a, host).is_some()) {
            choose(&all, host).cloned().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The whole application object, as JSON (for a GET-change-PUT round trip).
    pub async fn app_json(&self, account: &str, id: &str) -> Result<serde_json::Value, Error> {
        self.get(
            &format!(
                "/accounts/{}/access/apps/{}",
                super::seg(account),
                super::seg(id)
            ),
            &[],
        )
        .await
    }

    /// `POST /accounts/{account}/access/apps`.
    pub async fn create_app(
        &self,
        account: &str,
        body: &serde_json::Value,
    ) -> Result<AccessApp, Error> {
        self.send(
            reqwest::Method::POST,
            &format!("/accounts/{}/access/apps", super::seg(account)),
            body,
        )
        .await
    }

    /// `PUT /accounts/{account}/access/apps/{id}`: a full replacement (send the whole object),
    /// without the read-only fields of the answer ([`put_body`]).
    pub async fn update_app(
        &self,
        account: &str,
        id: &str,
        body: &serde_json::Value,
    ) -> Result<AccessApp, Error> {
        self.send(
            reqwest::Method::PUT,
            &format!(
                "/accounts/{}/access/apps/{}",
                super::seg(account),
                super::seg(id)
            ),
            &put_body(body),
        )
        .await
    }
}

/// Fields of an application answer that the request schema (`access_app_request`) does not
/// have: the server's own.
pub const READ_ONLY_FIELDS: [&str; 4] = ["id", "aud", "created_at", "updated_at"];

/// An application as read, made into a PUT body: every field kept except [`READ_ONLY_FIELDS`].
pub fn put_body(app: &serde_json::Value) -> serde_json::Value {
    let mut body = app.clone();
    if let Some(o) = body.as_object_mut() {
        for f in READ_ONLY_FIELDS {
            o.remove(f);
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, domain: &str, dests: &[&str]) -> AccessApp {
        AccessApp {
            id: id.into(),
            name: format!("app-{id}"),
            aud: "a".repeat(64),
            kind: "self_hosted".into(),
            domain: domain.into(),
            destinations: dests
                .iter()
                .map(|u| Destination {
                    kind: "public".into(),
                    uri: (*u).into(),
                })
                .collect(),
            self_hosted_domains: vec![],
        }
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(host_of("API.Example.com/path/x"), "api.example.com");
        assert_eq!(host_of("https://api.example.com:8443/"), "api.example.com");
        assert_eq!(host_of("*.example.com"), "*.example.com");
        assert_eq!(host_of("*.Example.com/x"), "*.example.com");
        assert_eq!(host_of("api.example.com."), "api.example.com");
        // Parsed, not sliced: userinfo and backslashes give no host.
        assert_eq!(host_of("evil.com@api.example.com"), "");
        assert_eq!(host_of("https://api.example.com\\@evil.com"), "");
        assert_eq!(host_of("https://u:p@api.example.com/"), "");
    }

    #[test]
    fn exact_beats_wildcard_and_lookalikes_do_not_match() {
        let apps = vec![
            app("1", "*.example.com", &[]),
            app("2", "api.example.com.evil.net", &[]),
            app("3", "other", &["API.example.com/v1"]),
        ];
        // App 3 covers only a path: the host is the wildcard's, the path app 3's.
        assert_eq!(choose(&apps, "api.example.com").unwrap().id, "1");
        assert_eq!(choose(&apps, "api.example.com/v1").unwrap().id, "3");
        assert_eq!(choose(&apps, "api.example.com/v2").unwrap().id, "1");
        assert_eq!(choose(&apps, "web.example.com").unwrap().id, "1");
        let apps = vec![app("4", "api.example.com", &[]), apps[2].clone()];
        assert_eq!(choose(&apps, "api.example.com").unwrap().id, "4");
        assert_eq!(choose(&apps, "api.example.com/v1/").unwrap().id, "3");
        let notes = path_notes(&apps, "api.example.com", &apps[0]);
        assert!(
            notes.len() == 1 && notes[0].contains("api.example.com/v1"),
            "{notes:?}"
        );
        let notes = path_notes(&apps, "api.example.com/v1", &apps[1]);
        assert!(
            notes.len() == 1 && notes[0].contains("the rest of api.example.com"),
            "{notes:?}"
        );
        assert!(choose(&apps, "a.b.example.com").is_err());
        assert!(choose(&apps, "example.com").is_err());
    }

    #[test]
    fn destinations_win_over_domain_and_self_hosted_domains() {
        let mut a = app("1", "api.example.com", &["other.example.com"]);
        assert!(match_kind(&a, "api.example.com").is_none());
        a.destinations.clear();
        a.self_hosted_domains = vec!["sh.example.com".into()];
        // `self_hosted_domains` is a last resort: `domain` comes first.
        assert_eq!(match_kind(&a, "api.example.com"), Some(MatchKind::Exact));
        assert!(match_kind(&a, "sh.example.com").is_none());
        a.domain.clear();
        assert_eq!(match_kind(&a, "sh.example.com"), Some(MatchKind::Exact));
    }

    #[test]
    fn an_app_that_covers_other_hosts_is_shared() {
        assert!(other_hosts(&app("1", "api.example.com", &[]), "API.example.com").is_empty());
        assert_eq!(
            other_hosts(&app("1", "*.example.com", &[]), "api.example.com"),
            vec!["*.example.com"]
        );
        let several = app(
            "1",
            "api.example.com",
            &["api.example.com/x", "web.example.com"],
        );
        assert_eq!(
            other_hosts(&several, "api.example.com"),
            vec!["web.example.com"]
        );
    }

    #[test]
    fn several_exact_matches_are_ambiguous() {
        let apps = vec![
            app("1", "api.example.com", &[]),
            app("2", "other", &["api.example.com", "web.example.com"]),
        ];
        let e = choose(&apps, "api.example.com").unwrap_err().to_string();
        assert!(
            e.contains("app-1") && e.contains("app-2") && e.contains("--app-id"),
            "{e}"
        );
    }

    #[test]
    fn no_match_lists_what_was_seen() {
        let apps = vec![app("1", "web.example.com", &[])];
        let e = choose(&apps, "api.example.com").unwrap_err().to_string();
        assert!(
            e.contains("api.example.com") && e.contains("app-1 (web.example.com"),
            "{e}"
        );
    }

    #[test]
    fn new_app_body_has_the_documented_fields() {
        let b = NewApp {
            name: "api.example.com".into(),
            host: "api.example.com".into(),
            session_duration: "24h".into(),
            allowed_idps: vec!["idp-1".into()],
            policy_ids: vec!["p1".into(), "p2".into()],
        }
        .body();
        assert_eq!(b["type"], "self_hosted");
        assert_eq!(b["domain"], "api.example.com");
        assert_eq!(
            b["destinations"],
            serde_json::json!([{"type": "public", "uri": "api.example.com"}])
        );
        assert_eq!(b["allowed_idps"], serde_json::json!(["idp-1"]));
        assert_eq!(
            b["policies"],
            serde_json::json!([{"id": "p1", "precedence": 1}, {"id": "p2", "precedence": 2}])
        );
        assert!(b.get("identity_provider_selectors").is_none());
    }

    #[test]
    fn put_body_drops_the_read_only_fields_only() {
        let app = serde_json::json!({"id": "1", "aud": "a", "created_at": "t", "updated_at": "t", "uid": "1", "name": "n", "type": "self_hosted", "domain": "d"});
        assert_eq!(
            put_body(&app),
            serde_json::json!({"uid": "1", "name": "n", "type": "self_hosted", "domain": "d"})
        );
    }

    #[test]
    fn aud_validation() {
        let a = app("1", "x", &[]);
        assert!(validate_aud(&"0123456789abcdef".repeat(4), &a).is_ok());
        assert!(validate_aud(&"0123456789ABCDEF".repeat(4), &a).is_err());
        assert!(validate_aud("abc", &a).is_err());
        assert!(validate_aud(&"g".repeat(64), &a).is_err());
    }
}
