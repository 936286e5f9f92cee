//! `setup`'s typed configuration, built once from its flags and the layers: the host, the
//! application's name, the policy's rules, the IdP, and the `sync` pass that follows.

use crate::cli::{Origin, SetupArgs};
use crate::cloudflare::policies::Rules;
use crate::cloudflare::{apps, edge};
use crate::error::Error;

use super::{self as config, Env, Parsed, SyncConfig};

/// A validated `setup` configuration.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    pub sync: SyncConfig,
    pub host: String,
    pub app_name: String,
    pub session_duration: String,
    pub policy_name: String,
    pub rules: Rules,
    pub idp: Option<String>,
    /// The team for `originRequest.access.teamName` (needed with a tunnel).
    pub team: Option<edge::Team>,
    /// Take an application that also covers other hosts (a wildcard, several destinations) as
    /// it is, instead of creating the host's own (`--use-existing`).
    pub use_existing: bool,
    /// The service of the ingress rule to add when the tunnel has none for the host
    /// (`--tunnel-service`); `None`: a missing rule is an error.
    pub tunnel_service: Option<String>,
}

/// The `setup` configuration (credentials from Infisical as for `sync`). With a config file,
/// its one lock and state file are `setup`'s too, so `setup` and `sync` of one stack take turns.
pub async fn setup_config(args: &SetupArgs, p: &Parsed) -> Result<SetupConfig, Error> {
    let state_file = match (&args.sync.state_file, &p.file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(f)) => Some(super::sync::sidecar(&f.path, ".audsync-state.json")),
        (None, None) => None,
    };
    let mut cfg = super::credentials::build_with(
        &args.sync.source,
        state_file.as_deref(),
        p.env.clone(),
        |e| SetupConfig::from_args(args, e),
    )
    .await?;
    if let Some(f) = &p.file {
        if args.sync.state_file.is_none() {
            cfg.sync.state_file = super::sync::sidecar(&f.path, ".audsync-state.json");
        }
        cfg.sync.lock_file = super::sync::sidecar(&f.path, ".audsync.lock");
        cfg.sync.config_file = Some(f.path.clone());
        if let Some(i) = cfg.sync.infisical.as_mut() {
            i.state_file = Some(cfg.sync.state_file.clone());
        }
    }
    Ok(cfg)
}

impl SetupConfig {
    pub fn from_args(a: &SetupArgs, env: &Env) -> Result<SetupConfig, Error> {
        if a.sync.origin == Origin::Edge {
            return Err(Error::usage(
                "setup creates and changes things through the Cloudflare API: --source edge is for sync and get",
            ));
        }
        if a.sync.source.app_id.is_some() {
            return Err(Error::usage(
                "setup finds or creates the application by host: pass --domain HOST instead of --app-id",
            ));
        }
        let sync = SyncConfig::build(&a.sync, env, None, &Default::default())?;
        let Some(host) = sync.single().source.host.clone() else {
            return Err(Error::usage(
                "setup needs --domain HOST (or AUDSYNC_DOMAIN)",
            ));
        };
        if host.contains('*') {
            return Err(Error::usage(
                "--domain: setup creates an application for one host, not a wildcard",
            ));
        }
        if let Err(why) = go_duration(&a.session_duration) {
            return Err(Error::usage(format!(
                "--session-duration: {why}; Cloudflare takes a Go duration: numbers with the units ns, us (or µs), ms, s, m, h, e.g. 24h, 30m, 2h45m (not 1d or 30min)"
            )));
        }
        let emails: Vec<String> = a
            .access_emails
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if let Some(bad) = emails
            .iter()
            .find(|e| !e.contains('@') || e.contains(char::is_whitespace))
        {
            return Err(Error::usage(format!(
                "CLOUDFLARE_ACCESS_EMAILS: entry {} is not an email address",
                emails.iter().position(|e| e == bad).unwrap_or(0) + 1
            )));
        }
        let email_domain = a
            .access_email_domain
            .as_deref()
            .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
            .filter(|d| !d.is_empty());
        if let Some(d) = &email_domain
            && (!d.contains('.') || d.contains(['@', '/', ' ']))
        {
            return Err(Error::usage(
                "CLOUDFLARE_ACCESS_EMAIL_DOMAIN is not a domain (expected e.g. example.com)",
            ));
        }
        let everyone = a.allow_everyone && emails.is_empty() && email_domain.is_none();
        let idp = match &a.idp_id {
            Some(id) => Some(config::validate_id("--idp-id / GOOGLE_IDP_ID", id)?),
            None => None,
        };
        let team = sync.team.clone();
        if sync.single().tunnel_id.is_some() && team.is_none() {
            return Err(Error::usage(
                "CLOUDFLARE_TUNNEL_ID is set, and requiring Access on its route needs the team name: set CLOUDFLARE_TEAM_NAME, or CLOUDFLARE_AUTH_DOMAIN=https://<team>.cloudflareaccess.com",
            ));
        }
        let tunnel_service = match a.tunnel_service.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(svc) => Some(tunnel_service(svc, sync.single().tunnel_id.is_some())?),
        };
        Ok(SetupConfig {
            use_existing: a.use_existing,
            tunnel_service,
            app_name: a
                .app_name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| apps::default_app_name(&host)),
            host,
            session_duration: a.session_duration.clone(),
            policy_name: a.policy_name.clone(),
            rules: Rules {
                emails,
                email_domain,
                everyone,
            },
            idp,
            team,
            sync,
        })
    }
}

/// Check `--tunnel-service`: an origin URL with a scheme and a host (`http://caddy:80`,
/// `https://10.0.0.2`, `tcp://db:5432`), or one of cloudflared's own services
/// (`http_status:404`, `hello_world`, `unix:/path`); and it needs a tunnel to go to.
fn tunnel_service(svc: &str, has_tunnel: bool) -> Result<String, Error> {
    if !has_tunnel {
        return Err(Error::usage(
            "--tunnel-service / AUDSYNC_TUNNEL_SERVICE adds an ingress rule to the tunnel: set CLOUDFLARE_TUNNEL_ID too",
        ));
    }
    let builtin = svc == "hello_world"
        || svc
            .strip_prefix("http_status:")
            .is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        || svc.strip_prefix("unix:").is_some_and(|p| !p.is_empty())
        || svc.strip_prefix("unix+tls:").is_some_and(|p| !p.is_empty());
    let origin = svc.contains("://")
        && url::Url::parse(svc).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
    if builtin || origin {
        Ok(svc.to_string())
    } else {
        Err(Error::usage(
            "--tunnel-service: expected the origin as a URL with scheme and host, e.g. http://caddy:80 (or http_status:NNN, hello_world, unix:/path)",
        ))
    }
}

/// Why a Go duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GoDurationError(String);

/// Check a Go duration the way Go's `time.ParseDuration` reads it (golang/go
/// src/time/format.go): one or more `<number><unit>` pairs without separators, the number
/// decimal with an optional fraction, the unit one of `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`,
/// `h` (case-sensitive). Stricter than Go where Cloudflare says nothing: no sign, and the
/// duration must be longer than zero. Returns the length in nanoseconds.
pub fn go_duration(s: &str) -> Result<u128, GoDurationError> {
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    if s.is_empty() {
        return Err(GoDurationError("empty".into()));
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(GoDurationError(
                "a part does not start with a number".to_string(),
            ));
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        if unit.is_empty() {
            return Err(GoDurationError("a number has no unit".to_string()));
        }
        let Some((_, ns)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(GoDurationError("unknown unit".to_string()));
        };
        let n: f64 = num
            .parse()
            .map_err(|_| GoDurationError("a number does not parse".to_string()))?;
        total += n * (*ns as f64);
        rest = next;
    }
    // Go's limit: an int64 of nanoseconds.
    if !total.is_finite() || total >= i64::MAX as f64 {
        return Err(GoDurationError("too long".into()));
    }
    if total < 1.0 {
        return Err(GoDurationError("must be longer than zero".into()));
    }
    Ok(total as u128)
}

#[cfg(test)]
mod tests {
    use super::{go_duration, tunnel_service};

    #[test]
    fn tunnel_services_are_urls_or_cloudflared_builtins() {
        for ok in [
            "http://caddy:80",
            "https://10.0.0.2",
            "tcp://db:5432",
            "ssh://host:22",
            "http_status:404",
            "hello_world",
            "unix:/run/app.sock",
        ] {
            assert!(tunnel_service(ok, true).is_ok(), "{ok}");
        }
        for bad in ["caddy:80", "caddy", "http://", "http_status:4", "unix:"] {
            assert!(tunnel_service(bad, true).is_err(), "{bad}");
        }
        let e = tunnel_service("http://caddy:80", false).unwrap_err();
        assert!(e.to_string().contains("CLOUDFLARE_TUNNEL_ID"), "{e}");
    }

    #[test]
    fn go_durations_as_go_reads_them() {
        for ok in [
            "24h",
            "30m",
            "2h45m",
            "1h30m10.5s",
            "300ms",
            "1.5h",
            ".5h",
            "1.h",
            "10us",
            "10µs",
            "45m2h",
        ] {
            assert!(go_duration(ok).is_ok(), "{ok}");
        }
        assert_eq!(go_duration("2h45m"), Ok(9_900_000_000_000));
        for bad in [
            "1d", "30min", "1H", "", "5", "1 h", "h", ".h", "1w", "-1h", "+1h", "0", "0s", "1h 30m",
        ] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
    }
}
