//! Where the desired AUD of every binding comes from: the Cloudflare API, by application id or
//! by host, or the signed answer of the protected host (`--source edge`).
//!
//! With a host, the application id found last time is tried first (one request); when that
//! application is gone (404) or no longer covers the host, the cache is dropped and the full
//! lookup runs. Only exact host matches are cached. Over many bindings, [`fetch_all`] asks for
//! each cached application when that costs fewer requests than listing them all, and otherwise
//! lists every application once and matches each binding there: never one listing per binding.

use std::time::Duration;

use serde::Serialize;

use crate::cloudflare::apps::{self, AccessApp, MatchKind};
use crate::cloudflare::{Client, RetryPolicy};
use crate::config::{Selector, SourceConfig};
use crate::error::Error;
use crate::state::{CachedApp, State};

/// The application the AUD was read from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AppSummary {
    pub id: String,
    pub name: String,
    pub domain: String,
    pub account_id: String,
}

#[derive(Debug, Clone)]
pub struct Found {
    pub aud: String,
    pub app: AppSummary,
    /// For the report: a wildcard-only match, a change of the serving application, an
    /// unsigned AUD. Already logged.
    pub warnings: Vec<String>,
}

/// What to say about the application serving `host`, remembering it in `state.served`: a
/// wildcard-only match names the wildcard; a different application (id, name) or kind than
/// last time is said loudly.
fn note_served(state: Option<&mut State>, host: &str, app: &AccessApp) -> Vec<String> {
    let wildcard = apps::wildcard_of(app, host);
    let matched = wildcard.clone().unwrap_or_else(|| "exact".into());
    let mut out = Vec::new();
    if let Some(w) = &wildcard {
        out.push(format!(
            "{host} is covered only by the wildcard application {:?} ({w}): its AUD is applied, but it is shared by every host under {w}; create an application for {host} itself to pin it",
            app.name
        ));
    }
    if let Some(state) = state {
        let now = crate::state::ServedApp {
            app_id: app.id.clone(),
            name: app.name.clone(),
            matched: matched.clone(),
        };
        if let Some(prev) = state.served.get(host)
            && prev != &now
        {
            let kind = |m: &str| {
                if m == "exact" {
                    "exact match".to_string()
                } else {
                    format!("wildcard {m}")
                }
            };
            out.push(format!(
                "THE APPLICATION SERVING {host} CHANGED: was {:?} (id {}, {}), now {:?} (id {}, {}); check in the Zero Trust dashboard that this is intended",
                prev.name,
                prev.app_id,
                kind(&prev.matched),
                now.name,
                now.app_id,
                kind(&now.matched)
            ));
        }
        state.served.insert(host.to_string(), now);
    }
    for w in &out {
        tracing::warn!("{w}");
    }
    out
}

pub fn client(cfg: &SourceConfig) -> Client {
    Client::new(
        &cfg.api_url,
        cfg.auth.clone(),
        cfg.timeout.max(Duration::from_millis(1)),
        RetryPolicy::default(),
    )
}

/// Fetch the AUD of every binding; one result each, in order. `state` caches where each host's
/// application was found and how many applications the account has.
pub async fn fetch_all(
    client: &Client,
    cfgs: &[&SourceConfig],
    state: &mut State,
) -> Vec<Result<Found, Error>> {
    let api: Vec<usize> = (0..cfgs.len())
        .filter(|&i| cfgs[i].edge.is_none())
        .collect();
    let mut out: Vec<Option<Result<Found, Error>>> = (0..cfgs.len()).map(|_| None).collect();
    for (i, cfg) in cfgs.iter().enumerate() {
        if let Some(edge) = &cfg.edge {
            out[i] = Some(fetch_edge(cfg, edge, Some(&mut *state)).await);
        }
    }
    let warm = |cfg: &SourceConfig| match &cfg.selector {
        Selector::AppId(_) => true,
        Selector::Host(h) => state.cached_app(h).is_some(),
    };
    // What a listing costs: the page size the server served last time, not the one asked for
    // (a server that caps pages at 20 makes 120 applications six pages).
    let served = state
        .page_size
        .filter(|&n| n > 0)
        .unwrap_or(u64::from(apps::PER_PAGE));
    let pages = state
        .app_count
        .map(|n| n.div_ceil(served).max(1))
        .unwrap_or(1);
    let singles =
        api.len() <= 1 || (api.iter().all(|&i| warm(cfgs[i])) && api.len() as u64 <= pages);
    if singles {
        for &i in &api {
            out[i] = Some(fetch(client, cfgs[i], Some(state)).await);
        }
    } else {
        list_and_match(client, cfgs, &api, state, &mut out).await;
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::failed("no answer for this binding", None))))
        .collect()
}

/// One listing of every application, matched to every API binding.
async fn list_and_match(
    client: &Client,
    cfgs: &[&SourceConfig],
    api: &[usize],
    state: &mut State,
    out: &mut [Option<Result<Found, Error>>],
) {
    // One account for the whole pass: the configured one, else a cached one, else detected.
    let configured = api.iter().find_map(|&i| cfgs[i].account_id.clone());
    let cached = state.apps.values().next().map(|c| c.account_id.clone());
    let account = match (configured, cached) {
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => match client.detect_account().await {
            Ok(a) => a,
            Err(e) => {
                let msg = e.to_string();
                let hint = e.hint();
                for &i in api {
                    out[i] = Some(Err(Error::failed(msg.clone(), hint.clone())));
                }
                return;
            }
        },
    };
    let (all, served) = match client.all_apps(&account).await {
        Ok(a) => a,
        Err(e) => {
            let msg = e.to_string();
            let hint = e.hint();
            for &i in api {
                out[i] = Some(Err(Error::failed(msg.clone(), hint.clone())));
            }
            return;
        }
    };
    state.app_count = Some(all.len() as u64);
    if served.is_some() {
        state.page_size = served;
    }
    for &i in api {
        let found = match &cfgs[i].selector {
            Selector::AppId(id) => all
                .iter()
                .find(|a| a.id.eq_ignore_ascii_case(id))
                .cloned()
                .ok_or_else(|| {
                    Error::failed(
                        format!("no Access application with id {id} in account {account}"),
                        Some("check --app-id / app_id, or use domain instead".into()),
                    )
                }),
            Selector::Host(host) => apps::choose(&all, host)
                .cloned()
                .map_err(Error::from)
                .inspect(|app| remember(state, host, &account, app)),
        };
        out[i] = Some(found.and_then(|app| {
            covers_given_host(cfgs[i], &app)?;
            apps::validate_aud(&app.aud, &app)?;
            let warnings = match &cfgs[i].selector {
                Selector::Host(host) => {
                    let mut w = note_served(Some(&mut *state), host, &app);
                    w.extend(apps::path_notes(&all, host, &app));
                    w
                }
                Selector::AppId(_) => vec![],
            };
            Ok(Found {
                aud: app.aud.clone(),
                app: summary(&app, &account),
                warnings,
            })
        }));
    }
}

/// With `--app-id` and `--domain` both given, the application must cover the host: otherwise
/// the AUD of one application would be written for another's host.
fn covers_given_host(cfg: &SourceConfig, app: &AccessApp) -> Result<(), Error> {
    match (&cfg.selector, &cfg.host) {
        (Selector::AppId(id), Some(host)) if apps::match_kind(app, host).is_none() => {
            Err(Error::failed(
                format!(
                    "--app-id {id} and --domain {host} disagree: application {:?} ({id}) does not cover {host} (it covers {})",
                    app.name,
                    app.hosts().join(", ")
                ),
                Some("give the application that protects the host, or only one of --app-id and --domain".into()),
            ))
        }
        _ => Ok(()),
    }
}

/// Cache where `host`'s application was found; only an exact match is cached (a wildcard one
/// is looked up again, so a new exact application is noticed).
fn remember(state: &mut State, host: &str, account: &str, app: &AccessApp) {
    if apps::match_kind(app, host) == Some(MatchKind::Exact) {
        state.apps.insert(
            host.to_string(),
            CachedApp {
                host: host.to_string(),
                account_id: account.to_string(),
                app_id: app.id.clone(),
            },
        );
    } else {
        state.apps.remove(host);
    }
}

/// Fetch the AUD. `cache` is read and updated when given (`sync`, `watch`); `get` passes none.
pub async fn fetch(
    client: &Client,
    cfg: &SourceConfig,
    mut cache: Option<&mut State>,
) -> Result<Found, Error> {
    if let Some(edge) = &cfg.edge {
        return fetch_edge(cfg, edge, cache).await;
    }
    let cached = cache
        .as_ref()
        .and_then(|s| cfg.host.as_deref().and_then(|h| s.cached_app(h)).cloned())
        .filter(|c| cfg.account_id.as_ref().is_none_or(|a| a == &c.account_id));
    let account = match (&cfg.account_id, &cached) {
        (Some(a), _) => a.clone(),
        (None, Some(c)) => c.account_id.clone(),
        (None, None) => client.detect_account().await?,
    };

    // What other applications cover of the host (paths): said each time, so a host with such
    // applications is never answered from the cache.
    let mut notes = Vec::new();
    let app = match &cfg.selector {
        Selector::AppId(id) => client.app_by_id(&account, id).await?,
        Selector::Host(host) => {
            let from_cache = match &cached {
                Some(c) => match client.app_by_id(&account, &c.app_id).await {
                    Ok(app) if apps::match_kind(&app, host) == Some(MatchKind::Exact) => Some(app),
                    Ok(_) => {
                        tracing::info!(app_id = %c.app_id, "cached application no longer covers the host; looking it up again");
                        None
                    }
                    Err(e) if e.is_not_found() => {
                        tracing::warn!(app_id = %c.app_id, "cached application is gone (deleted or recreated); looking it up again");
                        None
                    }
                    Err(e) => return Err(e.into()),
                },
                None => None,
            };
            match from_cache {
                Some(app) => app,
                None => {
                    let (app, found_notes) = client.find_app_noted(&account, host).await?;
                    if let Some(state) = cache.as_deref_mut() {
                        state.app = None;
                        if found_notes.is_empty() {
                            remember(state, host, &account, &app);
                        } else {
                            state.apps.remove(host);
                        }
                    }
                    notes = found_notes;
                    app
                }
            }
        }
    };
    covers_given_host(cfg, &app)?;
    apps::validate_aud(&app.aud, &app)?;
    let mut warnings = match &cfg.selector {
        Selector::Host(host) => note_served(cache, host, &app),
        Selector::AppId(_) => vec![],
    };
    warnings.extend(notes);
    Ok(Found {
        aud: app.aud.clone(),
        app: summary(&app, &account),
        warnings,
    })
}

/// `--source edge`: the AUD from the protected host, no API call. With `state`, signed metadata
/// older than the one that set the host's value is refused when it would change it (a replayed
/// token rolling the AUD back after a rotation); newer metadata moves the mark forward.
async fn fetch_edge(
    cfg: &SourceConfig,
    edge: &crate::config::EdgeSource,
    state: Option<&mut State>,
) -> Result<Found, Error> {
    let http =
        crate::cloudflare::edge::http(cfg.timeout).map_err(|e| Error::failed(e.message, e.hint))?;
    let ask = crate::cloudflare::edge::Ask {
        url: &edge.url,
        host: &edge.host,
        team: edge.team_domain.as_deref(),
        allow_unsigned_kid: edge.allow_unsigned_kid,
    };
    let got = crate::cloudflare::edge::learn_aud(&http, ask)
        .await
        .map_err(|e| Error::failed(e.message, e.hint))?;
    // The binding's domain (host, or host and path): a path's application has its own AUD and
    // its own mark.
    let domain = cfg.host.clone().unwrap_or_else(|| edge.host.clone());
    if let (Some(state), Some(iat)) = (state, got.iat) {
        match state.edge_issued.get(&domain) {
            Some(last) if iat < last.iat && last.aud != got.aud => {
                return Err(Error::failed(
                    format!(
                        "{}: the signed cf-access-metadata answer was issued at {} (iat {iat}), before the one that set the current AUD (iat {}), and names another AUD: refused as a replay of old metadata (it would roll the AUD back); nothing written",
                        domain,
                        fmt_unix(iat),
                        last.iat
                    ),
                    Some("a token replayed from before a rotation; the edge's next fresh answer is taken. If the AUD really went back, check the application in the Zero Trust dashboard, or use --source api".into()),
                ));
            }
            Some(last) if iat <= last.iat => {}
            _ => {
                state.edge_issued.insert(
                    domain.clone(),
                    crate::state::EdgeIssued {
                        iat,
                        aud: got.aud.clone(),
                    },
                );
            }
        }
    }
    let mut warnings = Vec::new();
    if got.unsigned {
        let w = format!(
            "the AUD of {} is the login redirect's unsigned kid (--allow-unsigned-kid): anyone able to answer for the host can choose it",
            domain
        );
        tracing::warn!("{w}");
        warnings.push(w);
    }
    tracing::debug!(how = got.how, team = %got.team_domain, "AUD learned from the edge");
    Ok(Found {
        aud: got.aud,
        app: AppSummary {
            id: "-".into(),
            name: format!("learned from the edge: {}", got.how),
            domain: cfg.host.clone().unwrap_or_default(),
            account_id: cfg.account_id.clone().unwrap_or_default(),
        },
        warnings,
    })
}

/// Unix seconds as an RFC 3339 time, for messages.
fn fmt_unix(secs: i64) -> String {
    u64::try_from(secs)
        .map(|s| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
        })
        .unwrap_or_else(|_| secs.to_string())
}

fn summary(app: &AccessApp, account: &str) -> AppSummary {
    AppSummary {
        id: app.id.clone(),
        name: app.name.clone(),
        domain: app.domain.clone(),
        account_id: account.to_string(),
    }
}
