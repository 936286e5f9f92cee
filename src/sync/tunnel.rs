//! The tunnel step of a binding: keep the audTag of its remotely managed tunnel rule current.
//!
//! A separate step rather than a sink: a stale audTag must not trigger container restarts, and
//! the rule is left alone when it does not require Access.

use serde::Serialize;

use crate::cloudflare::{Auth, Client, tunnel};
use crate::config::Binding;
use crate::source::Found;

/// What the tunnel step found and did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TunnelReport {
    pub tunnel_id: String,
    pub result: TunnelResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TunnelResult {
    InSync,
    Updated,
    WouldUpdate,
    /// The rule does not require Access.
    NotRequired,
    /// Cannot be managed here; see the detail.
    Skipped,
    Failed,
}

/// Keep the audTag of the tunnel rule for the binding's host current, when it names a tunnel
/// and that rule requires Access (cloudflared would otherwise refuse every token of a recreated
/// application).
pub async fn step(
    b: &Binding,
    client: &Client,
    found: &Found,
    previous: Option<&str>,
    team: Option<&crate::cloudflare::edge::Team>,
    dry_run: bool,
) -> Option<TunnelReport> {
    let id = b.tunnel_id.clone()?;
    let rep = |result, detail: Option<String>| TunnelReport {
        tunnel_id: id.clone(),
        result,
        detail,
    };
    if matches!(b.source.auth, Auth::None) || found.app.account_id.is_empty() {
        let why = "the tunnel rule needs the Cloudflare API: with --source edge set a token and CLOUDFLARE_ACCOUNT_ID, or keep its audTag current yourself";
        tracing::warn!(tunnel = %id, "{why}");
        return Some(rep(TunnelResult::Skipped, Some(why.into())));
    }
    let host = b
        .source
        .host
        .clone()
        .unwrap_or_else(|| crate::cloudflare::apps::host_of(&found.app.domain));
    let account = &found.app.account_id;
    let answer = match client.tunnel_configuration(account, &id).await {
        Ok(a) => a,
        Err(e) => return Some(rep(TunnelResult::Failed, Some(e.to_string()))),
    };
    if tunnel::source_of(&answer) != "cloudflare" {
        let why = format!(
            "locally managed tunnel (source {:?}): keep audTag of the rule for {host} in cloudflared's config.yml at {} yourself",
            tunnel::source_of(&answer),
            found.aud
        );
        tracing::warn!(tunnel = %id, "{why}");
        return Some(rep(TunnelResult::Skipped, Some(why)));
    }
    let config = tunnel::config_of(&answer);
    // The GET above is right before the PUT below (a dashboard edit in between would be
    // overwritten: the PUT has no version precondition), and only our rule changes.
    match tunnel::update_aud(config, &id, &host, &found.aud, previous, team) {
        Err(e) => {
            tracing::warn!(tunnel = %id, error = %e, "tunnel rule not managed");
            Some(rep(TunnelResult::Skipped, Some(e.to_string())))
        }
        Ok(None) => {
            let required = tunnel::access_of(config, &id, &host)
                .map(|rules| rules.iter().any(|r| r.required))
                .unwrap_or(false);
            Some(if required {
                rep(TunnelResult::InSync, None)
            } else {
                rep(
                    TunnelResult::NotRequired,
                    Some(format!(
                        "the rule for {host} does not require Access (run `audsync setup` to require it)"
                    )),
                )
            })
        }
        Ok(Some(new)) => {
            let diff = tunnel::diff(config, &new);
            if dry_run {
                return Some(rep(TunnelResult::WouldUpdate, Some(diff)));
            }
            match client.put_tunnel_configuration(account, &id, &new).await {
                Ok(_) => {
                    tracing::info!(tunnel = %id, "tunnel rule audTag updated");
                    Some(rep(TunnelResult::Updated, Some(diff)))
                }
                Err(e) => Some(rep(TunnelResult::Failed, Some(e.to_string()))),
            }
        }
    }
}
