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
            out[i] = Some(fetch_edge(cfg, edge).await);
        }
    }
    let warm = |cfg: &SourceConfig| match &cfg.selector {
        Selector::AppId(_) => true,
        Selector::Host(h) => state.cached_app(h).is_some(),
    };
    let pages = state
        .app_count
        .map(|n| n.div_ceil(u64::from(apps::PER_PAGE)).max(1))
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
    let all = match client.all_apps(&account).await {
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
                .inspect(|app| {
                    if apps::match_kind(app, host) == Some(MatchKind::Exact) {
                        state.apps.insert(
                            host.clone(),
                            CachedApp {
                                host: host.clone(),
                                account_id: account.clone(),
                                app_id: app.id.clone(),
                            },
                        );
                    } else {
                        state.apps.remove(host);
                    }
                }),
        };
        out[i] = Some(found.and_then(|app| {
            apps::validate_aud(&app.aud, &app)?;
            Ok(Found {
                aud: app.aud.clone(),
                app: summary(&app, &account),
            })
        }));
    }
}

/// Fetch the AUD. `cache` is read and updated when given (`sync`, `watch`); `get` passes none.
pub async fn fetch(
    client: &Client,
    cfg: &SourceConfig,
    cache: Option<&mut State>,
) -> Result<Found, Error> {
    if let Some(edge) = &cfg.edge {
        return fetch_edge(cfg, edge).await;
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
                    let app = client.find_app(&account, host).await?;
                    if let Some(state) = cache {
                        state.app = None;
                        if apps::match_kind(&app, host) == Some(MatchKind::Exact) {
                            state.apps.insert(
                                host.clone(),
                                CachedApp {
                                    host: host.clone(),
                                    account_id: account.clone(),
                                    app_id: app.id.clone(),
                                },
                            );
                        } else {
                            state.apps.remove(host);
                        }
                    }
                    app
                }
            }
        }
    };
    apps::validate_aud(&app.aud, &app)?;
    Ok(Found {
        aud: app.aud.clone(),
        app: summary(&app, &account),
    })
}

/// `--source edge`: the AUD from the protected host, no API call.
async fn fetch_edge(cfg: &SourceConfig, edge: &crate::config::EdgeSource) -> Result<Found, Error> {
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
    if got.unsigned {
        tracing::warn!(host = %edge.host, team = %got.team_domain, "taking the AUD from the login redirect's unsigned kid (--allow-unsigned-kid): anyone able to answer for the host can choose it");
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
    })
}

fn summary(app: &AccessApp, account: &str) -> AppSummary {
    AppSummary {
        id: app.id.clone(),
        name: app.name.clone(),
        domain: app.domain.clone(),
        account_id: account.to_string(),
    }
}
