//! Notification settings: the endpoints (each URL checked and its credential held as a
//! [`Secret`]), which events to send, and this machine's name. `notify` sends; this module
//! only builds what it sends with, once, from `--notify`/`AUDSYNC_NOTIFY` or the config file.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;

use crate::cli::SyncArgs;
use crate::secret::Secret;

use super::FileConfig;

/// Why a notification URL is refused (never quotes the URL: it carries a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EndpointError(String);

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// An AUD was written (applied or not), or a drift repaired.
    Changed,
    /// A pass failed (in `watch`: the first of a streak).
    Failed,
    /// A recreate failed and the old container was put back.
    RolledBack,
    /// The first good pass after a streak of failed ones (`watch`).
    Recovered,
}

impl Event {
    pub const ALL: [Event; 4] = [
        Event::Changed,
        Event::Failed,
        Event::RolledBack,
        Event::Recovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Changed => "changed",
            Event::Failed => "failed",
            Event::RolledBack => "rolled_back",
            Event::Recovered => "recovered",
        }
    }
}

/// The shape of the body an endpoint wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Json,
    Ntfy,
    Slack,
    Discord,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Json => "webhook",
            Kind::Ntfy => "ntfy",
            Kind::Slack => "slack",
            Kind::Discord => "discord",
        }
    }
}

/// One place notifications go. Its URL carries tokens (a Slack or Discord path, an ntfy topic,
/// credentials): `Debug` and `Display` show the kind, scheme and host only.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) kind: Kind,
    pub(crate) url: url::Url,
    pub(crate) auth: Option<Secret>,
    shown: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

const SCHEMES: &str = "https://… (JSON POST), ntfy+https://host/topic, slack+https://hooks.slack.com/…, discord+https://discord.com/api/webhooks/…";

impl Endpoint {
    /// Parse one `--notify` value. The error never repeats the URL.
    pub fn parse(raw: &str) -> Result<Endpoint, EndpointError> {
        let raw = raw.trim();
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(EndpointError(format!("not a URL; use one of {SCHEMES}")));
        };
        let scheme = scheme.to_ascii_lowercase();
        let (kind, transport) = match scheme.split_once('+') {
            None => (Kind::Json, scheme.as_str()),
            Some((k, t)) => {
                let kind = match k {
                    "ntfy" => Kind::Ntfy,
                    "slack" => Kind::Slack,
                    "discord" => Kind::Discord,
                    "json" | "webhook" => Kind::Json,
                    _ => {
                        return Err(EndpointError(format!(
                            "unknown notification scheme `{k}+`; use one of {SCHEMES}"
                        )));
                    }
                };
                (kind, t)
            }
        };
        if transport != "https" && transport != "http" {
            return Err(EndpointError(format!(
                "scheme `{scheme}` is not supported; use one of {SCHEMES}"
            )));
        }
        let mut url = url::Url::parse(&format!("{transport}://{rest}"))
            .map_err(|e| EndpointError(format!("not a valid URL ({e})")))?;
        let Some(host) = url.host_str().map(str::to_string) else {
            return Err(EndpointError("the URL has no host".into()));
        };
        if transport == "http" && !is_loopback(&url) {
            return Err(EndpointError(format!(
                "http:// is allowed only to a loopback address (127.0.0.1, ::1, localhost), not {host}; use https://"
            )));
        }
        let user = url.username().to_string();
        let pass = url.password().map(str::to_string);
        let auth = match (user.is_empty(), pass) {
            (true, None) => None,
            (_, Some(p)) => {
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{p}"));
                Some(Secret::new(format!("Basic {b}")))
            }
            // A bare token (ntfy access tokens are `tk_…`).
            (false, None) => Some(Secret::new(format!("Bearer {user}"))),
        };
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let shown = format!("{} {transport}://{host}{port}", kind.as_str());
        Ok(Endpoint {
            kind,
            url,
            auth,
            shown,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Where to send what.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoints: Vec<Endpoint>,
    pub on: BTreeSet<Event>,
    /// This machine's host name, named in every message.
    pub host: String,
    /// Per request.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            endpoints: vec![],
            on: Event::ALL.into_iter().collect(),
            host: String::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Settings {
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// The first of `candidates` (most specific first) that the user asked for.
    pub fn pick(&self, candidates: &[Event]) -> Option<Event> {
        candidates.iter().copied().find(|e| self.on.contains(e))
    }
}

/// `--notify` / AUDSYNC_NOTIFY (any layer but the config file), else the file's `notify`
/// list; each URL checked. Problems never repeat a URL (they carry tokens).
pub(crate) fn settings(
    a: &SyncArgs,
    file: Option<&FileConfig>,
    problems: &mut Vec<String>,
) -> Settings {
    let mut endpoints = Vec::new();
    let given: Vec<(String, String)> = if a.notify.iter().any(|u| !u.trim().is_empty()) {
        a.notify
            .iter()
            .filter(|u| !u.trim().is_empty())
            .enumerate()
            .map(|(i, u)| {
                (
                    format!("--notify / AUDSYNC_NOTIFY entry {}", i + 1),
                    u.clone(),
                )
            })
            .collect()
    } else {
        file.map(|f| {
            f.notify
                .iter()
                .map(|u| {
                    (
                        format!("{}:{}: notify", f.path.display(), u.line),
                        u.value.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
    };
    for (what, url) in given {
        match Endpoint::parse(&url) {
            Ok(e) => endpoints.push(e),
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    Settings {
        endpoints,
        on: a.notify_on.iter().map(|&e| e.into()).collect(),
        host: super::host_name(),
        ..Default::default()
    }
}
