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

#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub host: String,
    pub dry_run: bool,
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

async fn steps(cfg: &SetupConfig, rep: &mut SetupReport) -> Result<(), Error> {
    let dry = cfg.sync.dry_run;
    let client = source::client(&cfg.sync.single().source);
    let account = match &cfg.sync.single().source.account_id {
        Some(a) => a.clone(),
        None => client.detect_account().await?,
    };

    // 1. The application (and, only when one is created or has none, its policy).
    let aud = match client.find_app_opt(&account, &cfg.host).await? {
        Some(app) => {
            apps::validate_aud(&app.aud, &app)?;
            rep.application = Some(Step::new(
                "exists",
                format!(
                    "{} (id {}, AUD {})",
                    describe(&app, &cfg.host),
                    app.id,
                    app.aud
                ),
            ));
            link_policy_if_none(cfg, &client, &account, &app, rep).await?;
            Some(app.aud)
        }
        None => {
            let policy_id = policy(cfg, &client, &account, rep).await?;
            let body = NewApp {
                name: cfg.app_name.clone(),
                host: cfg.host.clone(),
                session_duration: cfg.session_duration.clone(),
                allowed_idps: cfg.idp.iter().cloned().collect(),
                policy_ids: vec![policy_id],
            }
            .body();
            if dry {
                rep.application = Some(
                    Step::new(
                        "would_create",
                        format!(
                            "self_hosted application {:?} for {}: POST /accounts/{account}/access/apps",
                            cfg.app_name, cfg.host
                        ),
                    )
                    .with_body(body),
                );
                None
            } else {
                let app = client.create_app(&account, &body).await?;
                apps::validate_aud(&app.aud, &app)?;
                tracing::info!(app = %app.id, "application created");
                rep.application = Some(
                    Step::new(
                        "created",
                        format!("{:?} (id {}, AUD {})", app.name, app.id, app.aud),
                    )
                    .with_body(body),
                );
                Some(app.aud)
            }
        }
    };

    // 2. The tunnel route.
    if let Some(tunnel_id) = &cfg.sync.single().tunnel_id {
        let step = tunnel_route(
            cfg,
            &client,
            &account,
            tunnel_id,
            aud.as_deref().unwrap_or(NEW_AUD),
        )
        .await;
        let failed = step.result == "failed";
        let detail = step.detail.clone();
        rep.tunnel = Some(step);
        if failed {
            // Finish what can be finished (the sync pass), then fail the run.
            let mut cfg_sync = cfg.sync.clone();
            cfg_sync.bindings[0].tunnel_id = None;
            if aud.is_some() {
                rep.sync = Some(pass(&cfg_sync).await);
            }
            return Err(Error::failed(format!("tunnel {tunnel_id}: {detail}"), None));
        }
    }

    // 3. The same pass as `sync` (setup handled the tunnel itself).
    if aud.is_some() {
        let mut cfg_sync = cfg.sync.clone();
        cfg_sync.bindings[0].tunnel_id = None;
        rep.sync = Some(pass(&cfg_sync).await);
    }
    Ok(())
}

async fn pass(cfg: &SyncConfig) -> sync::Report {
    match sync::run_pass(cfg).await {
        Ok(r) => r,
        Err(e) => sync::Report::from_error(&e, cfg.dry_run),
    }
}

fn describe(app: &AccessApp, host: &str) -> String {
    match apps::match_kind(app, host) {
        Some(apps::MatchKind::Wildcard) => format!(
            "{:?} covers {host} by a wildcard ({}); no separate application is created",
            app.name, app.domain
        ),
        _ => format!("{:?} ({})", app.name, app.domain),
    }
}

/// The policy id to put on a new application: the reusable policy named --policy-name when it
/// exists, else a new one built from the email rules. No rule at all is refused.
async fn policy(
    cfg: &SetupConfig,
    client: &Client,
    account: &str,
    rep: &mut SetupReport,
) -> Result<String, Error> {
    if let Some(p) = client.policy_by_name(account, &cfg.policy_name).await? {
        rep.policy = Some(Step::new(
            "reused",
            format!(
                "{:?} (id {}, decision {}); its rules are left as they are",
                p.name, p.id, p.decision
            ),
        ));
        return Ok(p.id);
    }
    if cfg.rules.is_empty() {
        return Err(Error::usage(format!(
            "no reusable policy is called {:?} and there is no rule to build one: set CLOUDFLARE_ACCESS_EMAILS (comma list) and/or CLOUDFLARE_ACCESS_EMAIL_DOMAIN, pass --policy-name with an existing policy, or --allow-everyone to admit anyone who can log in (nothing was changed)",
            cfg.policy_name
        )));
    }
    let body = policies::new_policy_body(&cfg.policy_name, &cfg.rules);
    if cfg.sync.dry_run {
        rep.policy = Some(
            Step::new(
                "would_create",
                format!(
                    "allow policy {:?}: POST /accounts/{account}/access/policies",
                    cfg.policy_name
                ),
            )
            .with_body(body),
        );
        return Ok(NEW_POLICY.into());
    }
    let p = client.create_policy(account, &body).await?;
    tracing::info!(policy = %p.id, "policy created");
    rep.policy = Some(Step::new("created", format!("{:?} (id {})", p.name, p.id)).with_body(body));
    Ok(p.id)
}

/// An existing application without any policy admits nobody; give it ours. One with policies
/// is left exactly as it is.
async fn link_policy_if_none(
    cfg: &SetupConfig,
    client: &Client,
    account: &str,
    app: &AccessApp,
    rep: &mut SetupReport,
) -> Result<(), Error> {
    let mut whole = client.app_json(account, &app.id).await?;
    let n = whole
        .get("policies")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if n > 0 {
        rep.policy = Some(Step::new(
            "skipped",
            format!(
                "the application already has {n} polic{}; left as {}",
                if n == 1 { "y" } else { "ies" },
                if n == 1 { "it is" } else { "they are" }
            ),
        ));
        return Ok(());
    }
    let policy_id = policy(cfg, client, account, rep).await?;
    whole["policies"] = json!([{"id": policy_id, "precedence": 1}]);
    let path = format!("PUT /accounts/{account}/access/apps/{}", app.id);
    let note = format!("the application had no policy (nobody could log in); attaching it: {path}");
    let step = if cfg.sync.dry_run {
        Step::new("would_update", note)
    } else {
        client.update_app(account, &app.id, &whole).await?;
        Step::new("updated", note)
    };
    // The application step carries the PUT; the policy step says which policy.
    if let Some(p) = rep.policy.as_mut() {
        p.detail.push_str(&format!("; attached to {}", app.id));
    }
    rep.application = Some(step.with_body(whole));
    Ok(())
}

async fn tunnel_route(
    cfg: &SetupConfig,
    client: &Client,
    account: &str,
    tunnel_id: &str,
    aud: &str,
) -> Step {
    let team = cfg.team.clone().unwrap_or(edge::Team {
        name: String::new(),
        fed: false,
    });
    let answer = match client.tunnel_configuration(account, tunnel_id).await {
        Ok(a) => a,
        Err(e) => {
            let hint = e.hint().map(|h| format!("\nhint: {h}")).unwrap_or_default();
            return Step::new("failed", format!("{e}{hint}"));
        }
    };
    let source_kind = tunnel::source_of(&answer);
    if source_kind != "cloudflare" {
        let e = tunnel::IngressError::Local {
            tunnel_id: tunnel_id.into(),
            source_kind: source_kind.into(),
            host: cfg.host.clone(),
            team: team.name.clone(),
            aud: aud.into(),
        };
        return Step::new("failed", e.to_string());
    }
    let config = tunnel::config_of(&answer);
    match tunnel::require_access(config, tunnel_id, &cfg.host, &team, aud) {
        Err(e) => Step::new("failed", e.to_string()),
        Ok(None) => Step::new(
            "in_sync",
            format!(
                "the rule for {} requires Access (team {})",
                cfg.host, team.name
            ),
        ),
        Ok(Some(new)) => {
            let diff = tunnel::diff(config, &new);
            let put = format!("PUT /accounts/{account}/cfd_tunnel/{tunnel_id}/configurations");
            if cfg.sync.dry_run {
                return Step::new("would_update", format!("{put}\n{diff}"))
                    .with_body(json!({"config": new}));
            }
            match client
                .put_tunnel_configuration(account, tunnel_id, &new)
                .await
            {
                Ok(_) => Step::new("updated", format!("{put}\n{diff}")),
                Err(e) => Step::new("failed", e.to_string()),
            }
        }
    }
}

/// Render for people: one block per step, then the sync pass.
pub fn render_text(r: &SetupReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut step = |name: &str, st: &Option<Step>| {
        if let Some(st) = st {
            let mut lines = st.detail.lines();
            let _ = writeln!(
                s,
                "{name}: {} {}",
                st.result.replace('_', " "),
                lines.next().unwrap_or("")
            );
            for l in lines {
                let _ = writeln!(s, "  {l}");
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
