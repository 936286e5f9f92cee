//! `audsync verify`: prove the chain works, one named check at a time, in the order a person
//! would debug it: `redirect` (the edge protects the host), `certs` (the team's keys),
//! `consistency` (the AUD is the same in Cloudflare, the sinks of `--sink` — the .env file and/or
//! Infisical —, the targets and the tunnel rule) and `token` (a real token passes the checks
//! the server makes).
//!
//! With a config file's bindings, every binding (or the one `--domain` picks) is verified
//! against its own key, sinks and targets — containers, each container of a compose service
//! (found by its compose labels), a Swarm service's spec — in a section of its own; a configured
//! target that cannot be found fails, naming it. The credential is checked once, first.
//!
//! Read-only: it changes nothing anywhere (Infisical is only read, never written). Each check prints `ok`, `FAIL` with the fix, or
//! `not checked` with the reason (never a silent pass). A token is a credential: it is held as a
//! [`Secret`] and never printed.

use crate::cloudflare::jwt::{self, Jwks};
use crate::cloudflare::{Client, edge, tunnel};
use crate::config::BindingTarget;
pub use crate::config::verify::{Check, VerifyBinding, VerifyConfig, VerifySink};
use crate::exit;
use crate::reconcile::{Target, short};
use crate::sink::env as envfile;
use crate::sink::infisical;
use crate::source;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    /// Could not run (missing input or an unreachable, optional system); does not fail `verify`.
    NotChecked,
    Skipped,
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub check: Check,
    pub status: Status,
    pub summary: String,
    pub details: Vec<String>,
    pub fix: Option<String>,
}

impl CheckResult {
    fn new(check: Check, status: Status, summary: impl Into<String>) -> CheckResult {
        CheckResult {
            check,
            status,
            summary: summary.into(),
            details: vec![],
            fix: None,
        }
    }
    fn fix(mut self, f: impl Into<String>) -> CheckResult {
        self.fix = Some(f.into());
        self
    }
}

fn name(c: Check) -> &'static str {
    match c {
        Check::Credential => "credential",
        Check::Redirect => "redirect",
        Check::Certs => "certs",
        Check::Consistency => "consistency",
        Check::Token => "token",
    }
}

/// What earlier checks learned, for the later ones.
#[derive(Default)]
struct Learned {
    edge_aud: Option<String>,
    team_domain: Option<String>,
    keys: Option<Jwks>,
    api_aud: Option<String>,
    env_aud: Option<String>,
    infisical_aud: Option<String>,
}

/// The results of one binding (`binding` is `None` for the flag-only run, and for the checks
/// made once for the whole file).
#[derive(Debug, Clone)]
pub struct Section {
    pub binding: Option<String>,
    pub results: Vec<CheckResult>,
}

/// Every check, per binding: the flag-only run is one section with every check, as always; a
/// config file's run checks the credential once, then each binding in a section of its own.
pub async fn run(cfg: &VerifyConfig) -> Vec<Section> {
    let http = match edge::http(cfg.timeout) {
        Ok(h) => h,
        Err(e) => {
            let r = CheckResult::new(Check::Redirect, Status::Fail, e.message);
            return vec![Section {
                binding: None,
                results: vec![match e.hint {
                    Some(h) => r.fix(h),
                    None => r,
                }],
            }];
        }
    };
    let per_binding = [
        Check::Redirect,
        Check::Certs,
        Check::Consistency,
        Check::Token,
    ];
    let Some(first) = cfg.bindings.first() else {
        return vec![];
    };
    if cfg.config_file.is_none() {
        let mut all = vec![Check::Credential];
        all.extend(per_binding);
        return vec![Section {
            binding: None,
            results: checks(cfg, first, &http, &all).await,
        }];
    }
    let mut out = vec![Section {
        binding: None,
        results: checks(cfg, first, &http, &[Check::Credential]).await,
    }];
    for b in &cfg.bindings {
        out.push(Section {
            binding: Some(b.id.clone()),
            results: checks(cfg, b, &http, &per_binding).await,
        });
    }
    out
}

/// `which` checks for binding `b`, in order.
async fn checks(
    cfg: &VerifyConfig,
    b: &VerifyBinding,
    http: &reqwest::Client,
    which: &[Check],
) -> Vec<CheckResult> {
    let mut l = Learned {
        team_domain: cfg.team_domain.clone(),
        ..Learned::default()
    };
    let mut out = Vec::new();
    for &c in which {
        if cfg.skip.contains(&c) {
            out.push(CheckResult::new(c, Status::Skipped, "skipped (--skip)"));
            continue;
        }
        let r = match c {
            Check::Credential => credential(b).await,
            Check::Redirect => redirect(b, http, &mut l).await,
            Check::Certs => certs(http, &mut l).await,
            Check::Consistency => consistency(cfg, b, &mut l).await,
            Check::Token => token(cfg, http, &mut l).await,
        };
        out.push(r);
    }
    out
}

/// 0 when every check that ran passed, else 1.
pub fn exit_code(sections: &[Section]) -> u8 {
    if sections
        .iter()
        .flat_map(|s| &s.results)
        .any(|r| r.status == Status::Fail)
    {
        exit::FAILURE
    } else {
        exit::OK
    }
}

pub fn render_text(sections: &[Section]) -> String {
    use std::fmt::Write;

    use crate::shown::outside_lines;
    let mut s = String::new();
    let mut failed: Vec<String> = Vec::new();
    for sec in sections {
        if let Some(id) = &sec.binding {
            let _ = writeln!(s, "\nbinding {id}");
        }
        for r in &sec.results {
            let st = match r.status {
                Status::Ok => "ok",
                Status::Fail => "FAIL",
                Status::NotChecked => "not checked",
                Status::Skipped => "skipped",
            };
            let summary = outside_lines(&r.summary).replace('\n', "\n                         ");
            let _ = writeln!(s, "{:<12} {:<11} {summary}", name(r.check), st);
            for d in r.details.iter().flat_map(|d| d.lines()) {
                let _ = writeln!(s, "{:<24} {}", "", crate::shown::outside(d));
            }
            if let Some(f) = &r.fix {
                let _ = writeln!(s, "{:<24} fix: {}", "", outside_lines(f));
            }
            if r.status == Status::Fail {
                failed.push(match &sec.binding {
                    Some(id) => format!("{id}: {}", name(r.check)),
                    None => name(r.check).to_string(),
                });
            }
        }
    }
    if sections.iter().any(|sec| sec.binding.is_some()) {
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "{}",
        if failed.is_empty() {
            "verify: every check that ran passed".to_string()
        } else {
            format!("verify: FAILED ({})", failed.join(", "))
        }
    );
    s
}

fn is_aud(s: &str) -> bool {
    crate::aud::Aud::parse(s).is_ok()
}

async fn redirect(cfg: &VerifyBinding, http: &reqwest::Client, l: &mut Learned) -> CheckResult {
    let c = Check::Redirect;
    let p = match edge::probe(http, &cfg.url, false).await {
        Ok(p) => p,
        Err(e) => {
            return CheckResult::new(c, Status::Fail, e.message).fix(e.hint.unwrap_or_default());
        }
    };
    match (&p.login, p.status) {
        (Some(login), 301 | 302 | 303 | 307 | 308) => {
            if let Some(t) = &l.team_domain
                && t != &login.team_domain
            {
                return CheckResult::new(
                    c,
                    Status::Fail,
                    format!(
                        "{} redirects to the login page of {}, not of the team domain {t}",
                        cfg.url, login.team_domain
                    ),
                )
                .fix("set CLOUDFLARE_AUTH_DOMAIN to the team that protects this host, or check that --url reaches the right host");
            }
            l.team_domain = Some(login.team_domain.clone());
            match login.kid.as_deref() {
                Some(kid) if is_aud(kid) => {
                    l.edge_aud = Some(kid.to_string());
                    CheckResult::new(
                        c,
                        Status::Ok,
                        format!(
                            "HTTP {} to {}/cdn-cgi/access/login/… (kid = AUD {kid})",
                            p.status, login.team_domain
                        ),
                    )
                }
                _ => CheckResult::new(
                    c,
                    Status::Fail,
                    format!(
                        "HTTP {} to the Access login page, but without a kid of 64 hex characters",
                        p.status
                    ),
                )
                .fix("check the Access application for the host in the Zero Trust dashboard"),
            }
        }
        (_, 200..=299) => CheckResult::new(
            c,
            Status::Fail,
            format!(
                "{} answered HTTP {} without a login redirect: not protected",
                cfg.url, p.status
            ),
        )
        .fix(format!(
            "not protected: check the application and the tunnel route (`audsync setup --domain {}`)",
            cfg.host
        )),
        (_, s) => CheckResult::new(
            c,
            Status::Fail,
            format!(
                "{} answered HTTP {s}{}, not a redirect to https://<team>.cloudflareaccess.com/cdn-cgi/access/login/…",
                cfg.url,
                p.location
                    .as_deref()
                    .map(|l| format!(" (Location {l})"))
                    .unwrap_or_default()
            ),
        )
        .fix("check --url and that the host is behind Cloudflare Access"),
    }
}

/// The Cloudflare API token itself: `tokens/verify` says whether it is active and when it
/// expires; within 14 days is a warning (the check still passes).
async fn credential(cfg: &VerifyBinding) -> CheckResult {
    let c = Check::Credential;
    let Some(api) = &cfg.api else {
        return CheckResult::new(c, Status::NotChecked, "no Cloudflare credentials");
    };
    let client = source::client(api);
    let Some(answer) = client.verify_token(api.account_id.as_deref()).await else {
        return CheckResult::new(
            c,
            Status::NotChecked,
            "a global API key (CLOUDFLARE_EMAIL + CLOUDFLARE_API_KEY) cannot be checked with tokens/verify",
        );
    };
    match answer {
        Err(e) => {
            let hint = e
                .hint()
                .unwrap_or_else(|| "check CLOUDFLARE_API_TOKEN".into());
            CheckResult::new(
                c,
                Status::Fail,
                format!("the API token does not verify: {e}"),
            )
            .fix(hint)
        }
        Ok(t) if t.status != "active" => CheckResult::new(
            c,
            Status::Fail,
            format!("the API token {} is {}", t.id, t.status),
        )
        .fix("create or roll a token (My Profile > API Tokens) and update CLOUDFLARE_API_TOKEN"),
        Ok(t) => {
            let expires = t
                .expires_on
                .as_deref()
                .map(|e| format!(", expires {e}"))
                .unwrap_or_default();
            match t.expiry_warning(std::time::SystemTime::now()) {
                Some(w) => {
                    tracing::warn!("{w}");
                    let mut r = CheckResult::new(
                        c,
                        Status::Ok,
                        format!(
                            "the API token {} is active{expires}; warning: it expires soon",
                            t.id
                        ),
                    );
                    r.details.push(format!("warning: {w}"));
                    r
                }
                None => CheckResult::new(
                    c,
                    Status::Ok,
                    format!("the API token {} is active{expires}", t.id),
                ),
            }
        }
    }
}

async fn certs(http: &reqwest::Client, l: &mut Learned) -> CheckResult {
    let c = Check::Certs;
    let Some(team) = l.team_domain.clone() else {
        return CheckResult::new(c, Status::Fail, "the team domain is unknown")
            .fix("set CLOUDFLARE_AUTH_DOMAIN=https://<team>.cloudflareaccess.com (or let the redirect check run)");
    };
    match edge::certs(http, &team).await {
        Err(e) => CheckResult::new(c, Status::Fail, e.message).fix(e.hint.unwrap_or_default()),
        Ok(keys) => {
            let rs: Vec<String> = keys.rs256().iter().map(|k| k.kid.clone()).collect();
            let r = if rs.is_empty() {
                CheckResult::new(
                    c,
                    Status::Fail,
                    format!("{team}/cdn-cgi/access/certs holds no RS256 key"),
                )
                .fix("check CLOUDFLARE_AUTH_DOMAIN: it must be the team domain")
            } else {
                CheckResult::new(
                    c,
                    Status::Ok,
                    format!(
                        "{team}/cdn-cgi/access/certs: {} RS256 key(s) (kid {})",
                        rs.len(),
                        rs.join(", ")
                    ),
                )
            };
            l.keys = Some(keys);
            r
        }
    }
}

/// How a place that holds no value is shown (never taken for a value).
const UNSET: &str = "(unset)";

/// Why a place was not read (`not checked (…)`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NotChecked(String);

impl std::fmt::Display for NotChecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<T: Into<String>> From<T> for NotChecked {
    fn from(s: T) -> Self {
        NotChecked(s.into())
    }
}

/// One place the AUD lives, as read.
struct Seen {
    what: String,
    /// Ok(values) read; Err(reason) not checked.
    values: Result<Vec<String>, NotChecked>,
    fix: String,
}

async fn consistency(cfg: &VerifyConfig, b: &VerifyBinding, l: &mut Learned) -> CheckResult {
    let c = Check::Consistency;
    let mut seen: Vec<Seen> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    // Fixes for `errors` (places that could be read but answered with an error).
    let mut error_fixes: Vec<String> = Vec::new();
    let sync_fix = format!("run `audsync sync --domain {}`", b.host);

    // Cloudflare API.
    let mut account = None;
    match &b.api {
        None => seen.push(Seen {
            what: "Cloudflare API".into(),
            values: Err("no Cloudflare credentials".into()),
            fix: String::new(),
        }),
        Some(api) => {
            let client = source::client(api);
            match source::fetch(&client, api, None).await {
                Ok(f) => {
                    account = Some(f.app.account_id.clone());
                    l.api_aud = Some(f.aud.clone());
                    seen.push(Seen {
                        what: format!("Cloudflare API (application {})", f.app.id),
                        values: Ok(vec![f.aud]),
                        fix: String::new(),
                    });
                }
                Err(e) => errors.push(format!("Cloudflare API: {e}")),
            }
        }
    }
    // The edge.
    if let Some(k) = &l.edge_aud {
        seen.push(Seen {
            what: "login redirect kid".into(),
            values: Ok(vec![k.clone()]),
            fix: format!(
                "the edge enforces another application than the API reports for {}: look for a second application covering the host (or a path-specific one)",
                b.host
            ),
        });
    }
    for sink in &b.sinks {
        match sink {
            // A .env file (`--sink env`).
            VerifySink::Env(env_file) => {
                let env_what = format!("{} {}", env_file.display(), b.key);
                match crate::fsx::read_bounded(env_file, crate::fsx::MAX_TEXT).and_then(|t| {
                    String::from_utf8(t).map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")
                    })
                }) {
                    Ok(text) => match envfile::parse(&text) {
                        Ok(map) => {
                            let v = map.get(&b.key).cloned();
                            if l.env_aud.is_none() {
                                l.env_aud = v.clone();
                            }
                            seen.push(Seen {
                                what: env_what,
                                values: Ok(vec![v.unwrap_or_else(|| UNSET.into())]),
                                fix: sync_fix.clone(),
                            });
                        }
                        Err(e) => errors.push(format!("{env_what}: does not parse: {e}")),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => seen.push(Seen {
                        what: env_what,
                        values: Err("no such file".into()),
                        fix: String::new(),
                    }),
                    Err(e) => errors.push(format!("{env_what}: {e}")),
                }
            }
            // Infisical (`--sink infisical`): read only.
            VerifySink::Infisical(settings) => {
                infisical_seen(
                    b,
                    settings.as_ref(),
                    l,
                    &mut seen,
                    &mut errors,
                    &mut error_fixes,
                )
                .await
            }
        }
    }
    // The targets (the configured environment of what reads the value).
    if !b.targets.is_empty() {
        targets_seen(cfg, b, &sync_fix, &mut seen, &mut errors, &mut error_fixes).await;
    }
    // The tunnel rule.
    if let Some(tid) = &b.tunnel_id {
        let what = format!("tunnel {tid} rule audTag");
        match (&b.api, &account) {
            (Some(api), Some(acc)) => {
                let client: Client = source::client(api);
                match client.tunnel_configuration(acc, tid).await {
                    Err(e) => errors.push(format!("{what}: {e}")),
                    Ok(answer) if tunnel::source_of(&answer) != "cloudflare" => seen.push(Seen {
                        what,
                        values: Err(
                            "locally managed tunnel (check cloudflared's config.yml)".into()
                        ),
                        fix: String::new(),
                    }),
                    Ok(answer) => {
                        match tunnel::access_of(
                            tunnel::config_of(&answer),
                            tid,
                            &crate::cloudflare::apps::host_of(&b.host),
                        ) {
                            Err(e) => errors.push(e.to_string()),
                            Ok(rules) if !rules.iter().any(|r| r.required) => errors.push(format!(
                                "{what}: the rule for {} does not require Access (run `audsync setup --domain {}`)",
                                b.host, b.host
                            )),
                            Ok(rules) => seen.push(Seen {
                                what,
                                values: Ok(rules
                                    .iter()
                                    .filter(|r| r.required)
                                    .flat_map(|r| r.aud_tags.clone())
                                    .collect()),
                                fix: format!(
                                    "{sync_fix} with CLOUDFLARE_TUNNEL_ID set (it keeps the rule's audTag current)"
                                ),
                            }),
                        }
                    }
                }
            }
            _ => seen.push(Seen {
                what,
                values: Err("needs Cloudflare credentials".into()),
                fix: String::new(),
            }),
        }
    }

    let reference = l
        .api_aud
        .clone()
        .or_else(|| l.edge_aud.clone())
        .or_else(|| l.env_aud.clone().filter(|v| is_aud(v)))
        .or_else(|| l.infisical_aud.clone().filter(|v| is_aud(v)));
    let read: Vec<&Seen> = seen.iter().filter(|s| s.values.is_ok()).collect();
    let details: Vec<String> = seen
        .iter()
        .map(|s| match &s.values {
            Ok(v) => format!(
                "{}: {}",
                s.what,
                v.iter()
                    .map(|x| if x == UNSET {
                        UNSET.to_string()
                    } else {
                        short(x)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(why) => format!("{}: not checked ({why})", s.what),
        })
        .collect();
    let Some(reference) = reference else {
        let mut r = if errors.is_empty() {
            CheckResult::new(
                c,
                Status::NotChecked,
                "no AUD to compare against (no API credentials, no redirect, no AUD in the sinks)",
            )
        } else {
            CheckResult::new(c, Status::Fail, errors.join("; "))
        };
        r.details = details;
        return r;
    };
    let differ: Vec<&&Seen> = read
        .iter()
        .filter(|s| {
            s.values
                .as_ref()
                .is_ok_and(|v| !v.iter().any(|x| x == &reference))
        })
        .collect();
    let mut r = if !errors.is_empty() || !differ.is_empty() {
        let mut msg: Vec<String> = differ
            .iter()
            .map(|s| format!("{} differs", s.what))
            .collect();
        msg.extend(errors.iter().cloned());
        let mut r = CheckResult::new(
            c,
            Status::Fail,
            format!("{} (expected AUD {})", msg.join("; "), short(&reference)),
        );
        let fixes: Vec<String> = differ
            .iter()
            .map(|s| s.fix.clone())
            .chain(error_fixes.iter().cloned())
            .filter(|f| !f.is_empty())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !fixes.is_empty() {
            r = r.fix(fixes.join("; "));
        }
        r
    } else if read.len() < 2 {
        CheckResult::new(
            c,
            Status::NotChecked,
            format!(
                "only {} place(s) could be read; nothing to compare",
                read.len()
            ),
        )
    } else {
        CheckResult::new(
            c,
            Status::Ok,
            format!(
                "the same AUD {} in {} place(s)",
                short(&reference),
                read.len()
            ),
        )
    };
    r.details = details;
    r
}

/// The AUD secret in Infisical. Not configured or not reachable: not checked, with the reason
/// (like a container). Reachable but refusing (credentials, permissions): an error with its fix.
async fn infisical_seen(
    b: &VerifyBinding,
    settings: Option<&infisical::Settings>,
    l: &mut Learned,
    seen: &mut Vec<Seen>,
    errors: &mut Vec<String>,
    error_fixes: &mut Vec<String>,
) {
    let Some(settings) = settings else {
        seen.push(Seen {
            what: format!("Infisical {}", b.key),
            values: Err("Infisical is not configured: set INFISICAL_PROJECT_ID and INFISICAL_CLIENT_ID + INFISICAL_CLIENT_SECRET (or INFISICAL_TOKEN)".into()),
            fix: String::new(),
        });
        return;
    };
    let what = format!("Infisical {} {}", settings.location(), b.key);
    let mut client = infisical::Client::new(settings.clone());
    match client.read(&b.key).await {
        Ok(remote) => {
            let v = remote.map(|r| r.value);
            if l.infisical_aud.is_none() {
                l.infisical_aud = v.clone();
            }
            seen.push(Seen {
                what,
                values: Ok(vec![v.unwrap_or_else(|| UNSET.into())]),
                fix: format!(
                    "run `audsync sync --domain {} --sink infisical` (with the same INFISICAL_* settings)",
                    b.host
                ),
            });
        }
        Err(e) if e.is_unreachable() => seen.push(Seen {
            what,
            values: Err(format!("Infisical is not reachable: {e}").into()),
            fix: String::new(),
        }),
        Err(e) => {
            if let Some(h) = e.hint() {
                error_fixes.push(h);
            }
            errors.push(format!("{what}: {e}"));
        }
    }
}

/// How a target is named in the report.
fn target_label(t: &BindingTarget) -> String {
    match t {
        BindingTarget::Container(n) => format!("container {n}"),
        BindingTarget::ComposeService { project, service } => {
            format!("compose service {project}/{service}")
        }
        BindingTarget::SwarmService(n) => format!("swarm service {n}"),
        BindingTarget::Exec(w) => crate::exec::label(w),
    }
}

/// The binding's targets, read. A configured target (a config file's binding) that cannot be
/// found or read fails; the flags' containers are `not checked` then, as always. An
/// unreachable daemon is `not checked` either way.
async fn targets_seen(
    cfg: &VerifyConfig,
    b: &VerifyBinding,
    sync_fix: &str,
    seen: &mut Vec<Seen>,
    errors: &mut Vec<String>,
    error_fixes: &mut Vec<String>,
) {
    // A command holds no value to read: shown, never run by verify.
    for t in &b.targets {
        if !t.is_docker() {
            seen.push(Seen {
                what: target_label(t),
                values: Err("a command".to_string().into()),
                fix: String::new(),
            });
        }
    }
    if !b.targets.iter().any(BindingTarget::is_docker) {
        return;
    }
    let engine = match crate::docker::Engine::connect(&cfg.docker_host).await {
        Ok(e) => e,
        Err(e) => {
            for t in b.targets.iter().filter(|t| t.is_docker()) {
                seen.push(Seen {
                    what: target_label(t),
                    values: Err(format!("Docker is not reachable ({})", e.message).into()),
                    fix: String::new(),
                });
            }
            return;
        }
    };
    // audsync's own settings in the .env files it shares with the app (names only).
    let own = crate::config::own_variables();
    let watch: Vec<String> = b
        .env_files()
        .filter_map(|f| crate::fsx::read_text(f).ok().flatten())
        .flat_map(|t| envfile::key_lines(&t).into_keys().collect::<Vec<_>>())
        .filter(|k| own.contains(k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let container_fix = format!("{sync_fix} (it recreates the container with the new value)");
    let missing_fix = match &cfg.config_file {
        Some(f) => format!(
            "check the binding's targets in {} against `docker ps -a`, `docker service ls` and the compose project name",
            f.display()
        ),
        None => "check --container against `docker ps -a`".to_string(),
    };
    for t in &b.targets {
        match t {
            BindingTarget::Container(n) => {
                if b.targets_required {
                    match engine.name_of(n).await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            errors.push(format!("container {n} does not exist"));
                            error_fixes.push(missing_fix.clone());
                            continue;
                        }
                        Err(e) => {
                            errors.push(e.message);
                            continue;
                        }
                    }
                }
                let what = format!("container {n} {}", b.key);
                let fix = container_fix.clone();
                seen.extend(container_seen(&engine, n, what, fix, b, &watch, errors).await);
            }
            BindingTarget::ComposeService { project, service } => {
                match engine.compose_members(project, service).await {
                    Err(e) => errors.push(e.message),
                    Ok(names) if names.is_empty() => {
                        errors.push(format!(
                            "compose service {project}/{service} has no containers"
                        ));
                        error_fixes.push(missing_fix.clone());
                    }
                    Ok(names) => {
                        for n in &names {
                            let what = format!(
                                "container {n} (compose service {project}/{service}) {}",
                                b.key
                            );
                            let fix = container_fix.clone();
                            seen.extend(
                                container_seen(&engine, n, what, fix, b, &watch, errors).await,
                            );
                        }
                    }
                }
            }
            BindingTarget::Exec(_) => {}
            BindingTarget::SwarmService(n) => {
                let svc = engine.swarm_service(n, None);
                match svc.exists().await {
                    Ok(true) => {}
                    Ok(false) => {
                        errors.push(format!("swarm service {n} does not exist"));
                        error_fixes.push(missing_fix.clone());
                        continue;
                    }
                    Err(e) => {
                        errors.push(e.message);
                        continue;
                    }
                }
                match svc.observe(std::slice::from_ref(&b.key)).await {
                    Ok(o) => seen.push(Seen {
                        what: format!("swarm service {n} {}", b.key),
                        values: match o.env.get(&b.key) {
                            Some(v) => Ok(vec![v.clone()]),
                            None => {
                                Err(format!("{} is not in the service's environment", b.key).into())
                            }
                        },
                        fix: format!("{sync_fix} (it updates the service's spec)"),
                    }),
                    Err(e) => errors.push(e.message),
                }
            }
        }
    }
}

/// One container's environment: its value of the key, and any of audsync's own settings
/// (`watch`) that leaked into it. `None` when it could not be read and that is an error (a
/// configured target), pushed onto `errors`.
async fn container_seen(
    engine: &crate::docker::Engine,
    n: &str,
    what: String,
    fix: String,
    b: &VerifyBinding,
    watch: &[String],
    errors: &mut Vec<String>,
) -> Option<Seen> {
    let mut ct = engine.container(n);
    let values = match ct.observe(std::slice::from_ref(&b.key), watch).await {
        Ok(o) => {
            for name in &o.carries {
                errors.push(format!(
                    "container {n} carries {name} from {}: audsync's own setting has leaked into the app; move it out of that .env (into audsync.toml, a *_FILE or the unit's environment) and recreate the container",
                    b.env_files()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            match o.env.get(&b.key).cloned() {
                Some(v) => Ok(vec![v]),
                None => Err(format!(
                    "{} is not in its environment (it may read the .env file itself)",
                    b.key
                )
                .into()),
            }
        }
        Err(e) if b.targets_required => {
            errors.push(e.message);
            return None;
        }
        Err(e) => Err(e.message.into()),
    };
    Some(Seen { what, values, fix })
}

async fn token(cfg: &VerifyConfig, http: &reqwest::Client, l: &mut Learned) -> CheckResult {
    let c = Check::Token;
    let Some(tok) = &cfg.token else {
        return CheckResult::new(
            c,
            Status::NotChecked,
            "no token given (--token-file F, or --token JWT)",
        );
    };
    let Some(team) = l.team_domain.clone() else {
        return CheckResult::new(
            c,
            Status::Fail,
            "the team domain is unknown: cannot check the issuer or fetch the keys",
        )
        .fix("set CLOUDFLARE_AUTH_DOMAIN=https://<team>.cloudflareaccess.com");
    };
    let cached = l.keys.is_some();
    let keys = match l.keys.clone() {
        Some(k) => k,
        None => match edge::certs(http, &team).await {
            Ok(k) => k,
            Err(e) => {
                return CheckResult::new(
                    c,
                    Status::Fail,
                    format!("cannot check without the team's keys: {}", e.message),
                )
                .fix(e.hint.unwrap_or_default());
            }
        },
    };
    let Some(aud) = l
        .api_aud
        .clone()
        .or_else(|| l.edge_aud.clone())
        .or_else(|| l.env_aud.clone())
        .or_else(|| l.infisical_aud.clone())
    else {
        return CheckResult::new(c, Status::Fail, "the expected AUD is unknown")
            .fix("give Cloudflare credentials, let the redirect check run, or set the AUD in the .env file (or Infisical, with --sink infisical)");
    };
    let mut result = jwt::verify_access_token(tok.expose(), &keys, &aud, &team);
    // Keys rotate: a kid the cached keys do not hold makes one more fetch, never more.
    if cached && matches!(result, Err(jwt::TokenError::UnknownKey(_))) {
        tracing::info!("the token's kid is not in the cached team keys; fetching them again once");
        if let Ok(fresh) = edge::certs(http, &team).await {
            result = jwt::verify_access_token(tok.expose(), &fresh, &aud, &team);
            l.keys = Some(fresh);
        }
    }
    match result {
        Ok(claims) => CheckResult::new(
            c,
            Status::Ok,
            format!(
                "signature (RS256, team keys), aud contains {}, iss {}, exp/nbf hold; {}",
                short(&aud),
                claims.iss,
                claims.identity
            ),
        ),
        Err(e) => CheckResult::new(c, Status::Fail, e.to_string()).fix(e.fix()),
    }
}

/// `audsync verify`: every check of a built configuration (or the error building it), printed;
/// the exit code returned.
pub async fn command(cfg: Result<VerifyConfig, crate::error::Error>) -> u8 {
    match cfg {
        Ok(cfg) => {
            let sections = run(&cfg).await;
            print!("{}", render_text(&sections));
            exit_code(&sections)
        }
        Err(e) => {
            crate::sync::report_error(
                &e.to_string(),
                e.hint().as_deref(),
                crate::sync::Output::Text,
            );
            e.exit_code()
        }
    }
}
