//! Where the desired AUD comes from: the Cloudflare API, by application id or by host.
//!
//! With a host, the application id found last time is tried first (one request); when that
//! application is gone (404) or no longer covers the host, the cache is dropped and the full
//! lookup runs. Only exact host matches are cached.

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

/// Fetch the AUD. `cache` is read and updated when given (`sync`, `watch`); `get` passes none.
pub async fn fetch(
    client: &Client,
    cfg: &SourceConfig,
    cache: Option<&mut State>,
) -> Result<Found, Error> {
    if let Some(edge) = &cfg.edge {
        return fetch_edge(cfg, edge).await;
    }
    let cached = cache.as_ref().and_then(|s| s.app.clone()).filter(|c| {
        cfg.host.as_deref() == Some(c.host.as_str())
            && cfg.account_id.as_ref().is_none_or(|a| a == &c.account_id)
    });
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
                        state.app =
                            (apps::match_kind(&app, host) == Some(MatchKind::Exact)).then(|| {
                                CachedApp {
                                    host: host.clone(),
                                    account_id: account.clone(),
                                    app_id: app.id.clone(),
                                }
                            });
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
    let got = crate::cloudflare::edge::learn_aud(&http, &edge.url, edge.team_domain.as_deref())
        .await
        .map_err(|e| Error::failed(e.message, e.hint))?;
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
