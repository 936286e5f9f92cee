//! `audsync setup`: find or create the Access application for a host, link a reusable policy,
//! require Access on the tunnel route, then run the same pass as `sync`.
//!
//! Idempotent: each step reads first and writes only what differs, so a second run changes
//! nothing. With `--dry-run` every write is printed (bodies and the ingress diff) and none is
//! made. It never deletes anything and never edits an existing policy or an application's
//! existing policies.

use serde::Serialize;
use serde_json::{Value, json};

use crate::cloudflare::apps::{self, AccessApp, NewApp};
use crate::cloudflare::policies;
use crate::cloudflare::{Client, edge, tunnel};
use crate::config::SyncConfig;
pub use crate::config::setup::SetupConfig;
use crate::error::Error;
use crate::exit;
use crate::source;
use crate::sync::{self, Output, Status};

const NEW_AUD: &str = "<AUD of the new application>";
const NEW_POLICY: &str = "<id of the new policy>";

/// One step of setup, as printed and as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `exists`, `created`, `would_create`, `reused`, `updated`, `would_update`, `in_sync`,
    /// `skipped`, `failed`.
    pub result: &'static str,
    pub detail: String,
    /// The body sent (or that would be sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl Step {
    fn new(result: &'static str, detail: impl Into<String>) -> Step {
        Step {
            result,
            detail: detail.into(),
            body: None,
        }
    }

    fn with_body(mut self, body: Value) -> Step {
        self.body = Some(body);
        self
    }

    fn is_change(&self) -> bool {
        matches!(
            self.result,
            "created" | "would_create" | "updated" | "would_update"
        )
    }
}

/// One change setup made, in the order made.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The request that made it (`POST /accounts/…/access/apps`), or `sync` for the sync pass.
    pub request: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub host: String,
    pub dry_run: bool,
    /// Every change made, in order (empty for a dry run, and for a setup that failed its
    /// checks: those run before the first change).
    pub changes: Vec<Change>,
    /// What the reader should know about the choice made (e.g. a wildcard left alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub application: Option<Step>,
    pub policy: Option<Step>,
    pub tunnel: Option<Step>,
    pub sync: Option<sync::Report>,
    /// `in_sync`, `changed`, `pending` (dry run found work), `failed`.
    pub status: Status,
    pub exit_code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl SetupReport {
    fn new(cfg: &SetupConfig) -> SetupReport {
        SetupReport {
            host: cfg.host.clone(),
            dry_run: cfg.sync.dry_run,
            changes: Vec::new(),
            notes: Vec::new(),
            application: None,
            policy: None,
            tunnel: None,
            sync: None,
            status: Status::InSync,
            exit_code: exit::OK,
            error: None,
            hint: None,
        }
    }

    fn fail(&mut self, e: &Error) {
        self.status = Status::Failed;
        self.exit_code = e.exit_code();
        self.error = Some(e.to_string());
        self.hint = e.hint();
    }

    fn finish(&mut self) {
        if self.error.is_some() {
            return;
        }
        let steps = [&self.application, &self.policy, &self.tunnel];
        let changed = steps
            .iter()
            .any(|s| s.as_ref().is_some_and(Step::is_change));
        if let Some(s) = &self.sync
            && s.exit_code != exit::OK
            && !(s.exit_code == exit::PENDING && self.dry_run)
        {
            self.status = s.status;
            self.exit_code = s.exit_code;
            self.error = s.error.clone();
            self.hint = s.hint.clone();
            return;
        }
        let sync_work = self.sync.as_ref().is_some_and(|s| {
            matches!(
                s.status,
                Status::Changed | Status::Written | Status::Pending
            )
        });
        let written = self
            .sync
            .as_ref()
            .is_some_and(|s| s.status == Status::Written);
        if self.dry_run && (changed || sync_work) {
            self.status = Status::Pending;
            self.exit_code = exit::PENDING;
        } else if written {
            self.status = Status::Written;
        } else if changed || sync_work {
            self.status = Status::Changed;
        }
    }
}

/// Run setup; never panics on user or network data. Every error ends up in the report.
pub async fn run(cfg: &SetupConfig) -> SetupReport {
    let mut rep = SetupReport::new(cfg);
    if let Err(e) = steps(cfg, &mut rep).await {
        rep.fail(&e);
    }
    rep.finish();
    rep
}

/// What setup found and will do, decided from reads alone before the first change.
struct Plan {
    account: String,
    app: AppPlan,
    policy: PolicyPlan,
    tunnel: Option<TunnelPlan>,
}

enum AppPlan {
    /// Use this application exactly as it is.
    Use(AccessApp),
    /// The host's own application has no policy (nobody can log in): PUT it back with one.
    Attach(AccessApp, Value),
    /// Create the host's own application.
    Create,
}

impl AppPlan {
    /// The AUD, when the application exists already.
    fn aud(&self) -> Option<&str> {
        match self {
            AppPlan::Use(a) | AppPlan::Attach(a, _) => Some(&a.aud),
            AppPlan::Create => None,
        }
    }
}

enum PolicyPlan {
    /// The application keeps its own policies.
    None,
    Reuse(String),
    Create(Value),
}

struct TunnelPlan {
    id: String,
    /// The route as planned (with [`NEW_AUD`] standing in for an application still to create).
    route: tunnel::Route,
    /// The configuration as read, for the diff.
    before: Value,
}

async fn steps(cfg: &SetupConfig, rep: &mut SetupReport) -> Result<(), Error> {
    let client = source::client(&cfg.sync.single().source);
    let account = match &cfg.sync.single().source.account_id {
        Some(a) => a.clone(),
        None => client.detect_account().await?,
    };
    // Every read and every check first: a setup that fails here has changed nothing.
    let plan = plan(cfg, &client, account, rep).await?;
    let aud = if cfg.sync.dry_run {
        show(cfg, &plan, rep)
    } else {
        apply(cfg, &client, &plan, rep).await?
    };
    // The same pass as `sync` (setup handled the tunnel itself).
    if let Some(aud) = aud {
        let mut cfg_sync = cfg.sync.clone();
        cfg_sync.bindings[0].tunnel_id = None;
        let report = pass(&cfg_sync).await;
        if !cfg.sync.dry_run && matches!(report.status, Status::Changed | Status::Written) {
            rep.changes.push(Change {
                request: "sync".into(),
                detail: format!("AUD {aud} written to the sinks (see the sync pass)"),
            });
        }
        rep.sync = Some(report);
    }
    Ok(())
}

/// Read the application, the policy and the tunnel, decide what to change, and check that every
/// change can be made. Makes no change; fills the report's steps with what would be done.
async fn plan(
    cfg: &SetupConfig,
    client: &Client,
    account: String,
    rep: &mut SetupReport,
) -> Result<Plan, Error> {
    let host = &cfg.host;
    let app = match client.find_app_opt(&account, host).await? {
        Some(app) => {
            apps::validate_aud(&app.aud, &app)?;
            let others = apps::other_hosts(&app, host);
            let exact = apps::match_kind(&app, host) == Some(apps::MatchKind::Exact);
            if others.is_empty() {
                Some((app, None))
            } else if exact || cfg.use_existing {
                Some((app, Some(others)))
            } else {
                // Only an application that serves other hosts too covers this one: the host
                // gets its own (an exact match wins from then on); the shared one is untouched.
                rep.notes.push(format!(
                    "{:?} ({}) covers {host} only as one of several hosts ({}); it is left as it is and {host} gets its own application (pass --use-existing to use {:?} as it is instead)",
                    app.name,
                    app.id,
                    others.join(", "),
                    app.name
                ));
                None
            }
        }
        None => None,
    };
    let (app, policy) = match app {
        Some((app, None)) => {
            let mut whole = client.app_json(&account, &app.id).await?;
            let n = whole
                .get("policies")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            rep.application = Some(Step::new(
                "exists",
                format!(
                    "{:?} ({}) (id {}, AUD {})",
                    app.name, app.domain, app.id, app.aud
                ),
            ));
            if n > 0 {
                rep.policy = Some(Step::new(
                    "skipped",
                    format!(
                        "the application already has {n} polic{}; left as {}",
                        if n == 1 { "y" } else { "ies" },
                        if n == 1 { "it is" } else { "they are" }
                    ),
                ));
                (AppPlan::Use(app), PolicyPlan::None)
            } else {
                let policy = policy(cfg, client, &account, rep).await?;
                if let Some(p) = rep.policy.as_mut() {
                    p.detail.push_str(&format!("; attached to {}", app.id));
                }
                whole["policies"] = json!([{"id": policy_id(&policy), "precedence": 1}]);
                (AppPlan::Attach(app, whole), policy)
            }
        }
        Some((app, Some(others))) => {
            rep.application = Some(Step::new(
                "exists",
                format!(
                    "{:?} ({}) (id {}, AUD {}) covers {host}{} and serves other hosts too ({}), so setup uses it as it is and never changes it",
                    app.name,
                    app.domain,
                    app.id,
                    app.aud,
                    if cfg.use_existing {
                        " (--use-existing)"
                    } else {
                        ""
                    },
                    others.join(", ")
                ),
            ));
            rep.policy = Some(Step::new(
                "skipped",
                "the application serves other hosts too: its policies decide who reaches all of them and are left as they are",
            ));
            (AppPlan::Use(app), PolicyPlan::None)
        }
        None => {
            rep.application = Some(Step::new(
                "would_create",
                format!(
                    "self_hosted application {:?} for {}: POST /accounts/{account}/access/apps",
                    cfg.app_name, cfg.host
                ),
            ));
            let policy = policy(cfg, client, &account, rep).await?;
            (AppPlan::Create, policy)
        }
    };
    let tunnel = match &cfg.sync.single().tunnel_id {
        None => None,
        Some(id) => {
            let aud = app.aud().unwrap_or(NEW_AUD);
            match tunnel_plan(cfg, client, &account, id, aud).await {
                Ok(t) => Some(t),
                Err(e) => {
                    rep.tunnel = Some(Step::new("failed", e.to_string()));
                    return Err(e);
                }
            }
        }
    };
    Ok(Plan {
        account,
        app,
        policy,
        tunnel,
    })
}

fn policy_id(p: &PolicyPlan) -> &str {
    match p {
        PolicyPlan::Reuse(id) => id,
        PolicyPlan::Create(_) | PolicyPlan::None => NEW_POLICY,
    }
}

/// Read the tunnel's configuration and decide the route for the host; every reason it cannot be
/// done is an error here, before anything is changed.
async fn tunnel_plan(
    cfg: &SetupConfig,
    client: &Client,
    account: &str,
    tunnel_id: &str,
    aud: &str,
) -> Result<TunnelPlan, Error> {
    let team = cfg.team.clone().unwrap_or(edge::Team {
        name: String::new(),
        fed: false,
    });
    let answer = client.tunnel_configuration(account, tunnel_id).await?;
    let source_kind = tunnel::source_of(&answer);
    if source_kind != "cloudflare" {
        let e = tunnel::IngressError::Local {
            tunnel_id: tunnel_id.into(),
            source_kind: source_kind.into(),
            host: cfg.host.clone(),
            team: team.name.clone(),
            aud: aud.into(),
        };
        return Err(Error::failed(e.to_string(), None));
    }
    let before = tunnel::config_of(&answer).clone();
    let route = tunnel::route(
        &before,
        tunnel_id,
        &cfg.host,
        &team,
        aud,
        cfg.tunnel_service.as_deref(),
    )
    .map_err(|e| {
        let add = matches!(
            e,
            tunnel::IngressError::NoRule { .. }
                | tunnel::IngressError::OnlyWildcard { .. }
                | tunnel::IngressError::NoIngress { .. }
        );
        let hint = add.then(|| {
            format!(
                "or pass --tunnel-service URL (e.g. http://caddy:80) and setup adds the rule for {} itself",
                cfg.host
            )
        });
        Error::failed(e.to_string(), hint)
    })?;
    Ok(TunnelPlan {
        id: tunnel_id.into(),
        route,
        before,
    })
}

fn tunnel_detail(cfg: &SetupConfig, account: &str, t: &TunnelPlan, new: &Value) -> String {
    let put = format!("PUT /accounts/{account}/cfd_tunnel/{}/configurations", t.id);
    let added = match &t.route.added {
        Some(svc) => format!(" (adds the rule {} -> {svc})", cfg.host),
        None => String::new(),
    };
    format!("{put}{added}\n{}", tunnel::diff(&t.before, new))
}

/// `--dry-run`: the planned changes as steps, none made. The AUD when the application exists.
fn show(cfg: &SetupConfig, plan: &Plan, rep: &mut SetupReport) -> Option<String> {
    let account = &plan.account;
    if let PolicyPlan::Create(body) = &plan.policy {
        rep.policy = Some(
            Step::new(
                "would_create",
                format!(
                    "allow policy {:?}: POST /accounts/{account}/access/policies{}",
                    cfg.policy_name,
                    attached_note(rep)
                ),
            )
            .with_body(body.clone()),
        );
    }
    match &plan.app {
        AppPlan::Use(_) => {}
        AppPlan::Attach(app, whole) => {
            rep.application = Some(
                Step::new(
                    "would_update",
                    format!(
                        "the application had no policy (nobody could log in); attaching it: PUT /accounts/{account}/access/apps/{}",
                        app.id
                    ),
                )
                .with_body(whole.clone()),
            );
        }
        AppPlan::Create => {
            rep.application = Some(
                Step::new(
                    "would_create",
                    format!(
                        "self_hosted application {:?} for {}: POST /accounts/{account}/access/apps",
                        cfg.app_name, cfg.host
                    ),
                )
                .with_body(new_app(cfg, policy_id(&plan.policy).to_string())),
            );
        }
    }
    if let Some(t) = &plan.tunnel {
        rep.tunnel = Some(match &t.route.config {
            None => in_sync_route(cfg),
            Some(new) => Step::new("would_update", tunnel_detail(cfg, account, t, new))
                .with_body(json!({"config": new})),
        });
    }
    plan.app.aud().map(str::to_string)
}

fn attached_note(rep: &SetupReport) -> String {
    rep.policy
        .as_ref()
        .and_then(|p| {
            p.detail
                .find("; attached to ")
                .map(|i| p.detail[i..].to_string())
        })
        .unwrap_or_default()
}

fn in_sync_route(cfg: &SetupConfig) -> Step {
    Step::new(
        "in_sync",
        format!(
            "the rule for {} requires Access (team {})",
            cfg.host,
            cfg.team.as_ref().map_or("", |t| t.name.as_str())
        ),
    )
}

fn new_app(cfg: &SetupConfig, policy_id: String) -> Value {
    NewApp {
        name: cfg.app_name.clone(),
        host: cfg.host.clone(),
        session_duration: cfg.session_duration.clone(),
        allowed_idps: cfg.idp.iter().cloned().collect(),
        policy_ids: vec![policy_id],
    }
    .body()
}

/// Make the planned changes, in order (policy, application, tunnel route), each one listed in
/// the report as it is made. Returns the application's AUD.
async fn apply(
    cfg: &SetupConfig,
    client: &Client,
    plan: &Plan,
    rep: &mut SetupReport,
) -> Result<Option<String>, Error> {
    let account = &plan.account;
    let policy_id = match &plan.policy {
        PolicyPlan::None => None,
        PolicyPlan::Reuse(id) => Some(id.clone()),
        PolicyPlan::Create(body) => {
            let request = format!("POST /accounts/{account}/access/policies");
            let p = client.create_policy(account, body).await?;
            tracing::info!(policy = %p.id, "policy created");
            let detail = format!("{:?} (id {})", p.name, p.id);
            rep.changes.push(Change {
                request,
                detail: format!("policy {detail} created"),
            });
            rep.policy = Some(
                Step::new("created", format!("{detail}{}", attached_note(rep)))
                    .with_body(body.clone()),
            );
            Some(p.id)
        }
    };
    let policy_id = policy_id.unwrap_or_default();
    let aud = match &plan.app {
        AppPlan::Use(app) => app.aud.clone(),
        AppPlan::Attach(app, whole) => {
            let mut whole = whole.clone();
            whole["policies"] = json!([{"id": policy_id, "precedence": 1}]);
            let request = format!("PUT /accounts/{account}/access/apps/{}", app.id);
            client.update_app(account, &app.id, &whole).await?;
            rep.changes.push(Change {
                request: request.clone(),
                detail: format!("policy {policy_id} attached to {:?} ({})", app.name, app.id),
            });
            rep.application = Some(
                Step::new(
                    "updated",
                    format!(
                        "the application had no policy (nobody could log in); attaching it: {request}"
                    ),
                )
                .with_body(whole),
            );
            app.aud.clone()
        }
        AppPlan::Create => {
            let body = new_app(cfg, policy_id);
            let request = format!("POST /accounts/{account}/access/apps");
            let app = client.create_app(account, &body).await?;
            tracing::info!(app = %app.id, "application created");
            rep.changes.push(Change {
                request,
                detail: format!(
                    "application {:?} for {} created (id {}, AUD {})",
                    app.name, cfg.host, app.id, app.aud
                ),
            });
            apps::validate_aud(&app.aud, &app)?;
            rep.application = Some(
                Step::new(
                    "created",
                    format!("{:?} (id {}, AUD {})", app.name, app.id, app.aud),
                )
                .with_body(body),
            );
            app.aud
        }
    };
    if let Some(t) = &plan.tunnel {
        // Planned with the AUD known and nothing to change: nothing to do. Otherwise read the
        // configuration again right before the PUT (it has no version precondition: keep the
        // window short) and decide with the real AUD.
        let known = matches!(plan.app, AppPlan::Use(_) | AppPlan::Attach(..));
        if known && t.route.config.is_none() {
            rep.tunnel = Some(in_sync_route(cfg));
        } else {
            let now = match tunnel_plan(cfg, client, account, &t.id, &aud).await {
                Ok(now) => now,
                Err(e) => {
                    rep.tunnel = Some(Step::new("failed", e.to_string()));
                    return Err(e);
                }
            };
            match &now.route.config {
                None => rep.tunnel = Some(in_sync_route(cfg)),
                Some(new) => {
                    let detail = tunnel_detail(cfg, account, &now, new);
                    if let Err(e) = client.put_tunnel_configuration(account, &t.id, new).await {
                        rep.tunnel = Some(Step::new("failed", e.to_string()));
                        return Err(e.into());
                    }
                    rep.changes.push(Change {
                        request: format!(
                            "PUT /accounts/{account}/cfd_tunnel/{}/configurations",
                            t.id
                        ),
                        detail: match &now.route.added {
                            Some(svc) => {
                                format!("rule {} -> {svc} added, Access required on it", cfg.host)
                            }
                            None => format!("Access required on the rule for {}", cfg.host),
                        },
                    });
                    rep.tunnel = Some(Step::new("updated", detail));
                }
            }
        }
    }
    Ok(Some(aud))
}

async fn pass(cfg: &SyncConfig) -> sync::Report {
    match sync::run_pass(cfg).await {
        Ok(r) => r,
        Err(e) => sync::Report::from_error(&e, cfg.dry_run),
    }
}

/// The policy to put on the application: the reusable policy named --policy-name when it
/// exists, else one to create from the email rules. No rule at all is refused. Reads only.
async fn policy(
    cfg: &SetupConfig,
    client: &Client,
    account: &str,
    rep: &mut SetupReport,
) -> Result<PolicyPlan, Error> {
    if let Some(p) = client.policy_by_name(account, &cfg.policy_name).await? {
        rep.policy = Some(Step::new(
            "reused",
            format!(
                "{:?} (id {}, decision {}); its rules are left as they are",
                p.name, p.id, p.decision
            ),
        ));
        return Ok(PolicyPlan::Reuse(p.id));
    }
    if cfg.rules.is_empty() {
        return Err(Error::usage(format!(
            "no reusable policy is called {:?} and there is no rule to build one: set CLOUDFLARE_ACCESS_EMAILS (comma list) and/or CLOUDFLARE_ACCESS_EMAIL_DOMAIN, pass --policy-name with an existing policy, or --allow-everyone to admit anyone who can log in (nothing was changed)",
            cfg.policy_name
        )));
    }
    let body = policies::new_policy_body(&cfg.policy_name, &cfg.rules);
    rep.policy = Some(
        Step::new(
            "would_create",
            format!("allow policy {:?}", cfg.policy_name),
        )
        .with_body(body.clone()),
    );
    Ok(PolicyPlan::Create(body))
}

/// Render for people: one block per step, then the sync pass.
pub fn render_text(r: &SetupReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    use crate::shown::{outside, outside_lines};
    for n in &r.notes {
        let _ = writeln!(s, "note: {}", outside_lines(&n.to_string()));
    }
    let mut step = |name: &str, st: &Option<Step>| {
        if let Some(st) = st {
            let mut lines = st.detail.lines();
            let _ = writeln!(
                s,
                "{name}: {} {}",
                st.result.replace('_', " "),
                outside(lines.next().unwrap_or(""))
            );
            for l in lines {
                let _ = writeln!(s, "  {}", outside(l));
            }
            // The tunnel's change is the diff above; its whole body is in the JSON output.
            if let (Some(b), true, false) = (&st.body, r.dry_run, name == "tunnel") {
                let pretty = serde_json::to_string_pretty(b).unwrap_or_default();
                for l in pretty.lines() {
                    let _ = writeln!(s, "  | {l}");
                }
            }
        }
    };
    step("application", &r.application);
    step("policy", &r.policy);
    step("tunnel", &r.tunnel);
    if let Some(sy) = &r.sync {
        let _ = writeln!(s, "sync:");
        for l in sync::render_text(sy).lines() {
            let _ = writeln!(s, "  {l}");
        }
    } else if r.dry_run && r.error.is_none() {
        let _ = writeln!(
            s,
            "sync: would write the new application's AUD to the sinks and act on the containers, as `sync` does (the AUD of {} exists once the application does)",
            r.host
        );
    }
    if !r.dry_run {
        if r.changes.is_empty() {
            if r.error.is_some() {
                let _ = writeln!(s, "changes made: none (nothing was changed)");
            }
        } else {
            let _ = writeln!(s, "changes made, in order:");
            for (i, c) in r.changes.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  {}. {}: {}",
                    i + 1,
                    outside(&c.request),
                    outside_lines(&c.detail)
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "{}",
        match (r.status, r.dry_run) {
            (Status::InSync, _) => "setup: nothing to do (already set up)",
            (Status::Changed, _) => "setup: done",
            (Status::Written, _) =>
                "setup: done; the AUD is written but not applied to the containers (see above)",
            (Status::Pending, true) =>
                "setup dry run: the changes above would be made (nothing was changed)",
            (Status::Pending, false) => "setup: done; a sink write waits for approval",
            _ => "setup: FAILED",
        }
    );
    s
}

pub fn print(r: &SetupReport, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(r).unwrap_or_else(|_| "{}".into())
        ),
        Output::Text => print!("{}", render_text(r)),
    }
}

/// `audsync setup`: run a built configuration (or report the error building it); the report
/// on stdout, the exit code returned.
pub async fn command(cfg: Result<SetupConfig, Error>, output: Output) -> u8 {
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => {
            sync::report_error(&e.to_string(), e.hint().as_deref(), Output::Text);
            return e.exit_code();
        }
    };
    let report = run(&cfg).await;
    print(&report, output);
    if let Some(e) = &report.error {
        sync::report_error(e, report.hint.as_deref(), output);
    }
    report.exit_code
}
