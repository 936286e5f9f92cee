//! What a pass says: one [`Report`] (text for people, one JSON object for tools) with a
//! `bindings` array and a `targets` array, each container once.
//!
//! JSON schema 2: `schema`, `status`, `exit_code`, `changed`, `dry_run`, `requests` (Cloudflare
//! requests of the pass), `bindings[]`, `targets[]`, `recovered[]`, `warnings[]`, `error`,
//! `hint`, `stage`. A run whose one binding came from the flags also keeps every field of
//! schema 1 at the top (`aud`, `previous`, `app`, `sinks`, `containers`, `tunnel`).

use serde::Serialize;

use crate::config::SyncConfig;
use crate::error::Error;
use crate::exit;
use crate::reconcile::{
    self, KeepsOld, Outcome, Plan, SinkResult, TargetReport, TargetResult, WriteAction,
};
use crate::source::{AppSummary, Found};

use super::tunnel::{TunnelReport, TunnelResult};

pub use crate::config::Output;

/// How a pass (or one binding of it) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InSync,
    /// Every target runs the new value (or a drift was repaired).
    Changed,
    /// The new value was written to the sinks, but some target still runs the old one
    /// (`--restart none`, or a restart of a container whose environment carries the key).
    Written,
    Pending,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::InSync,
        Status::Changed,
        Status::Written,
        Status::Pending,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::InSync => "in_sync",
            Status::Changed => "changed",
            Status::Written => "written",
            Status::Pending => "pending",
            Status::Failed => "failed",
        }
    }
}

impl From<Status> for crate::notify::Status {
    fn from(s: Status) -> Self {
        match s {
            Status::InSync => Self::InSync,
            Status::Changed => Self::Changed,
            Status::Written => Self::Written,
            Status::Pending => Self::Pending,
            Status::Failed => Self::Failed,
        }
    }
}

/// The step of a pass that failed; `watch` counts failures by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Lock,
    Source,
    Sink,
    Target,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Lock, Stage::Source, Stage::Sink, Stage::Target];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Lock => "lock",
            Stage::Source => "source",
            Stage::Sink => "sink",
            Stage::Target => "target",
        }
    }
}

/// A pass that failed before it could report, with the step it failed at.
#[derive(Debug)]
pub struct PassError {
    pub stage: Stage,
    pub error: Error,
}

/// One key of one sink, as schema 1 showed a sink.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkLine {
    pub kind: &'static str,
    pub target: String,
    pub key: String,
    /// The value before this pass; in JSON only when it is an AUD.
    #[serde(serialize_with = "aud_only")]
    pub old: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub action: WriteAction,
    pub result: SinkResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BindingReport {
    pub id: String,
    /// A discovered binding's origin (`label on container X`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub key: String,
    pub aud: Option<String>,
    /// The value its first sink held before this pass (in JSON only when it is an AUD).
    #[serde(serialize_with = "aud_only")]
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppSummary>,
    pub sinks: Vec<SinkLine>,
    /// The containers that read it (names; each is in the top-level `targets` once).
    pub targets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelReport>,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
}

/// The schema-1 fields of a single-binding run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Single {
    pub aud: Option<String>,
    #[serde(serialize_with = "aud_only")]
    pub previous: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppSummary>,
    pub sinks: Vec<SinkLine>,
    pub containers: Vec<TargetReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelReport>,
}

/// An old value in JSON: only an AUD (any other value, a password a key was pointed at, is
/// `null`).
fn aud_only<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v.as_deref().filter(|v| reconcile::is_aud(v)) {
        Some(v) => s.serialize_some(v),
        None => s.serialize_none(),
    }
}

/// What a pass printed and returned.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub status: Status,
    pub exit_code: u8,
    pub changed: bool,
    pub dry_run: bool,
    /// Cloudflare API requests this pass made.
    pub requests: u64,
    pub bindings: Vec<BindingReport>,
    pub targets: Vec<TargetReport>,
    /// Recreates cut short by an earlier run, finished or undone before this pass looked at
    /// the containers (with `--dry-run`: found).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Where a failed pass failed (`lock`, `source`, `sink`, `target`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub single: Option<Single>,
}

impl Report {
    /// The pass failed beside its bindings (the labelled containers could not be listed): the
    /// status and exit code say so whatever the bindings did.
    pub fn fail_with(&mut self, e: Error) {
        self.status = Status::Failed;
        if matches!(self.exit_code, exit::OK | exit::PENDING) {
            self.exit_code = exit::FAILURE;
        }
        if self.error.is_none() {
            self.error = Some(e.to_string());
            self.hint = e.hint();
            self.stage = Some(Stage::Target);
        }
    }

    /// A pass with no binding (only `--discover`, and no label found): in sync, nothing done.
    pub fn nothing(dry_run: bool, warnings: Vec<String>) -> Report {
        Report {
            schema: 2,
            status: Status::InSync,
            exit_code: crate::exit::OK,
            changed: false,
            dry_run,
            requests: 0,
            bindings: vec![],
            targets: vec![],
            recovered: vec![],
            warnings,
            error: None,
            hint: None,
            stage: None,
            single: None,
        }
    }

    pub fn from_error(e: &Error, dry_run: bool) -> Report {
        Report {
            schema: 2,
            status: Status::Failed,
            exit_code: e.exit_code(),
            changed: false,
            dry_run,
            requests: 0,
            bindings: vec![],
            targets: vec![],
            recovered: vec![],
            warnings: vec![],
            error: Some(e.to_string()),
            hint: e.hint(),
            stage: None,
            single: Some(Single::default()),
        }
    }

    /// What notifications say of this pass: built here, so `notify` never reads a report.
    pub fn notice(&self) -> crate::notify::Pass {
        use crate::notify::{BindingPass, Pass, TargetPass};
        Pass {
            status: self.status.into(),
            exit_code: self.exit_code,
            stage: self.stage.map(Stage::as_str),
            error: self.error.clone(),
            hint: self.hint.clone(),
            wrote: self.wrote(),
            bindings: self
                .bindings
                .iter()
                .map(|b| BindingPass {
                    id: b.id.clone(),
                    key: b.key.clone(),
                    previous: b.previous.clone(),
                    aud: b.aud.clone(),
                    status: b.status.into(),
                    error: b.error.clone(),
                    wrote: b.sinks.iter().any(|s| s.action == WriteAction::Write),
                })
                .collect(),
            targets: self
                .targets
                .iter()
                .map(|t| TargetPass {
                    name: t.name.clone(),
                    action: t.action,
                    result: t.result,
                    error: t.error.as_ref().map(|e| e.message.clone()),
                    rolled_back: t.error.as_ref().is_some_and(|e| e.rolled_back),
                    keeps_old: t.keeps_old.clone(),
                    pending: t.pending.clone(),
                })
                .collect(),
            recovered: self.recovered.clone(),
            warnings: self.warnings.clone(),
            summary: summary(self),
        }
    }

    /// Some sink was written this pass.
    pub fn wrote(&self) -> bool {
        self.bindings
            .iter()
            .any(|b| b.sinks.iter().any(|s| s.result == SinkResult::Written))
    }

    /// Note the recreates finished or undone before the plan: a repair is a change (with
    /// `--dry-run`, pending work).
    pub fn add_recovered(&mut self, recovered: Vec<String>) {
        if recovered.is_empty() {
            return;
        }
        if self.status == Status::InSync {
            (self.status, self.exit_code) = if self.dry_run {
                (Status::Pending, exit::PENDING)
            } else {
                (Status::Changed, exit::OK)
            };
        }
        self.recovered = recovered;
    }
}

/// Put the pass together: per binding, then overall.
pub fn build(
    cfg: &SyncConfig,
    found: Vec<Result<Found, Error>>,
    plan: &Plan,
    o: Outcome,
    tunnels: Vec<Option<TunnelReport>>,
    requests: u64,
) -> Report {
    let multi = cfg.bindings.len() > 1;
    let mut bindings = Vec::new();
    for (i, (b, f)) in cfg.bindings.iter().zip(found).enumerate() {
        let step = &plan.bindings[i];
        let sinks: Vec<SinkLine> = step
            .input
            .sinks
            .iter()
            .map(|&s| {
                let r = &o.sinks[s];
                let k = r.keys.iter().find(|k| k.key == b.key);
                SinkLine {
                    kind: r.info.kind,
                    target: r.info.target.clone(),
                    key: b.key.clone(),
                    old: k.and_then(|k| k.old.clone()),
                    version: k.and_then(|k| k.version),
                    action: k.map(|k| k.action).unwrap_or(WriteAction::None),
                    result: match (r.result, k.map(|k| k.action)) {
                        // A file written for another binding's key: this key was unchanged.
                        (SinkResult::Written | SinkResult::Planned, Some(WriteAction::None)) => {
                            SinkResult::Unchanged
                        }
                        (res, _) => res,
                    },
                    new_version: k.and_then(|k| k.new_version),
                    error: r.error.clone(),
                }
            })
            .collect();
        let my_targets: Vec<&TargetReport> =
            step.input.targets.iter().map(|&t| &o.targets[t]).collect();
        let tunnel = tunnels.get(i).cloned().flatten();
        let mut errors: Vec<String> = Vec::new();
        let mut hint = None;
        let mut stage = None;
        match &f {
            Err(e) => {
                errors.push(e.to_string());
                hint = e.hint();
                stage = Some(Stage::Source);
            }
            Ok(_) => {
                for s in &sinks {
                    if let Some(e) = &s.error
                        && s.result != SinkResult::PendingApproval
                    {
                        // The message usually names the file already.
                        errors.push(if e.starts_with(&s.target) {
                            format!("sink {} {e}", s.kind)
                        } else {
                            format!("sink {} {}: {e}", s.kind, s.target)
                        });
                        stage.get_or_insert(Stage::Sink);
                    }
                }
                for t in &my_targets {
                    if t.result == TargetResult::Failed
                        && let Some(e) = &t.error
                    {
                        errors.push(format!("container {}: {e}", t.name));
                        hint = hint.or(e.hint.clone());
                        stage.get_or_insert(Stage::Target);
                    }
                }
                if let Some(t) = tunnel.as_ref().filter(|t| t.result == TunnelResult::Failed) {
                    errors.push(format!(
                        "tunnel {}: {}",
                        t.tunnel_id,
                        t.detail.as_deref().unwrap_or("failed")
                    ));
                    // The tunnel configuration is read and written through the Cloudflare API.
                    stage.get_or_insert(Stage::Source);
                }
            }
        }
        let wrote = sinks.iter().any(|s| s.result == SinkResult::Written);
        let pending = sinks
            .iter()
            .any(|s| s.result == SinkResult::PendingApproval);
        let acted = my_targets.iter().any(|t| t.result == TargetResult::Done);
        let work = step.changed
            || my_targets
                .iter()
                .any(|t| t.action != reconcile::Action::None)
            || tunnel.as_ref().is_some_and(|t| {
                matches!(t.result, TunnelResult::WouldUpdate | TunnelResult::Updated)
            });
        let stale = my_targets.iter().any(|t| t.keeps_old.contains_key(&b.key));
        let status = if !errors.is_empty() {
            Status::Failed
        } else if pending || (cfg.dry_run && work) {
            Status::Pending
        } else if wrote && stale {
            Status::Written
        } else if wrote
            || acted
            || tunnel
                .as_ref()
                .is_some_and(|t| t.result == TunnelResult::Updated)
        {
            Status::Changed
        } else {
            Status::InSync
        };
        if wrote
            && status == Status::Failed
            && let Some(last) = errors.last_mut()
        {
            last.push_str(
                " (the new value WAS written to the sinks; the next run retries the containers)",
            );
        }
        let (aud, app) = match f {
            Ok(f) => (Some(f.aud), Some(f.app)),
            Err(_) => (None, None),
        };
        bindings.push(BindingReport {
            id: b.id.clone(),
            origin: b.origin.clone(),
            key: b.key.clone(),
            previous: sinks.first().and_then(|s| s.old.clone()),
            aud,
            app,
            targets: my_targets.iter().map(|t| t.name.clone()).collect(),
            sinks,
            tunnel,
            status,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            hint,
            stage,
        });
    }
    // Containers no binding's failure explains (e.g. one that cannot be inspected).
    let failed_target = o.targets.iter().any(|t| t.result == TargetResult::Failed);
    let status = if bindings.iter().any(|b| b.status == Status::Failed) || failed_target || o.failed
    {
        Status::Failed
    } else if bindings.iter().any(|b| b.status == Status::Pending) {
        Status::Pending
    } else if bindings.iter().any(|b| b.status == Status::Written) {
        Status::Written
    } else if bindings.iter().any(|b| b.status == Status::Changed) {
        Status::Changed
    } else {
        Status::InSync
    };
    let exit_code = match status {
        Status::Failed => exit::FAILURE,
        Status::Pending => exit::PENDING,
        _ => exit::OK,
    };
    let failing: Vec<&BindingReport> = bindings.iter().filter(|b| b.error.is_some()).collect();
    // The same failure (one missing `.env` under several bindings) is said once, naming them.
    let mut groups: Vec<(Vec<&str>, &str)> = Vec::new();
    for b in &failing {
        let e = b.error.as_deref().unwrap_or_default();
        match groups.iter_mut().find(|(_, g)| *g == e) {
            Some((ids, _)) => ids.push(&b.id),
            None => groups.push((vec![&b.id], e)),
        }
    }
    let error = (!groups.is_empty()).then(|| {
        groups
            .iter()
            .map(|(ids, e)| match (multi, ids.len()) {
                (false, _) => e.to_string(),
                (true, 1) => format!("binding {}: {e}", ids[0]),
                (true, _) => format!("bindings {}: {e}", ids.join(", ")),
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    let hint = failing.iter().find_map(|b| b.hint.clone());
    let stage = failing
        .iter()
        .find_map(|b| b.stage)
        .or((status == Status::Failed).then_some(Stage::Target));
    let warnings = keeps_old_warnings(&o.targets);
    let single = cfg.flag_binding.then(|| {
        let b = &bindings[0];
        Single {
            aud: b.aud.clone(),
            previous: b.previous.clone(),
            app: b.app.clone(),
            sinks: b.sinks.clone(),
            containers: o.targets.clone(),
            tunnel: b.tunnel.clone(),
        }
    });
    Report {
        schema: 2,
        status,
        exit_code,
        changed: o.changed,
        dry_run: cfg.dry_run,
        requests,
        bindings,
        targets: o.targets,
        recovered: vec![],
        warnings,
        error,
        hint,
        stage,
        single,
    }
}

/// A warning for each container that a restart leaves on the old value.
fn keeps_old_warnings(targets: &[TargetReport]) -> Vec<String> {
    let mut out = Vec::new();
    for t in targets {
        for (key, why) in &t.keeps_old {
            if *why == KeepsOld::RestartKeepsEnv {
                out.push(format!(
                    "container {}: its environment carries {key}, so a restart keeps the old value; use --restart recreate (or auto) to apply it",
                    t.name
                ));
            }
        }
    }
    out
}

/// The last line of the text report: what is true after the pass.
pub fn summary(r: &Report) -> String {
    match (r.status, r.dry_run) {
        (Status::InSync, _) => "in sync: nothing to do".into(),
        (Status::Changed, _) if r.wrote() => "changed: new AUD applied".into(),
        (Status::Changed, _) => {
            "converged: the targets now run the current AUD (drift repaired; the AUD did not change)"
                .into()
        }
        (Status::Written, _) => {
            let stale: Vec<&TargetReport> = r
                .targets
                .iter()
                .filter(|t| !t.keeps_old.is_empty())
                .collect();
            let none = stale
                .iter()
                .all(|t| t.keeps_old.values().all(|w| *w == KeepsOld::RestartNone));
            if none {
                "written, not applied (--restart none): the containers still run the old value until they are recreated".into()
            } else {
                let names: Vec<&str> = stale.iter().map(|t| t.name.as_str()).collect();
                format!(
                    "written, not applied: {} still run(s) the old value (a restart does not reload environment variables; use --restart recreate or auto)",
                    names.join(", ")
                )
            }
        }
        (Status::Pending, true) => {
            "dry run: the changes above would be made (nothing was changed)".into()
        }
        (Status::Pending, false) => {
            "pending: a write waits for approval; nothing was restarted".into()
        }
        (Status::Failed, _) => "FAILED".into(),
    }
}

/// Render a report for people.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;

    use crate::shown::{outside, outside_lines};
    let mut s = String::new();
    let multi = r.bindings.len() > 1;
    // A failure shared by several bindings (one sink, one container) is printed once.
    let mut said = std::collections::BTreeSet::new();
    for b in &r.bindings {
        let aud = b.aud.as_deref().map(|a| {
            if multi {
                reconcile::short(a)
            } else {
                a.to_string()
            }
        });
        match (&aud, &b.app, multi) {
            (Some(aud), Some(app), false) => {
                let _ = writeln!(
                    s,
                    "AUD {aud}  (application \"{}\", {}, id {})",
                    outside(&app.name).replace('"', "\\\""),
                    outside(&app.domain),
                    outside(&app.id)
                );
            }
            (Some(aud), Some(app), true) => {
                let _ = writeln!(
                    s,
                    "binding {}: AUD {aud}  (application {:?}, id {}) [{}]",
                    b.id,
                    outside(&app.name).replace('"', "\\\""),
                    outside(&app.id),
                    b.status.as_str()
                );
            }
            (_, _, true) => {
                let _ = writeln!(s, "binding {}: [{}]", b.id, b.status.as_str());
            }
            _ => {}
        }
        if let Some(o) = &b.origin {
            let _ = writeln!(s, "  discovered: {o}");
        }
        for k in &b.sinks {
            let old = k
                .old
                .as_deref()
                .map(|o| outside(&reconcile::short(o)).into_owned())
                .unwrap_or_else(|| "(unset)".into());
            let new = b.aud.as_deref().map(reconcile::short);
            // No field is shown empty: a failed sink says nothing of values (its error does),
            // a value unknown is left out.
            let change = match (k.result, k.action, new) {
                (SinkResult::Failed, _, _) => None,
                (_, WriteAction::Write, Some(new)) => Some(format!("{old} -> {new}")),
                (_, _, Some(new)) => Some(format!("{new} (unchanged)")),
                (_, _, None) => k.old.is_some().then(|| format!("{old} (unchanged)")),
            };
            let change = change.map(|c| format!(": {c}")).unwrap_or_default();
            let version = k.version.map(|v| format!(" v{v}")).unwrap_or_default();
            let result = serde_json::to_value(k.result)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  sink {} {} {}{version}{change} [{result}]",
                k.kind, k.target, k.key
            );
            if let Some(e) = &k.error
                && said.insert(e.to_string())
            {
                let _ = writeln!(s, "    {}", outside_lines(&e.to_string()));
            }
        }
        if let Some(t) = &b.tunnel {
            let result = serde_json::to_value(t.result)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = writeln!(s, "  tunnel {} audTag: [{result}]", t.tunnel_id);
            for line in t.detail.iter().flat_map(|d| d.lines()) {
                let _ = writeln!(s, "    {}", outside(line));
            }
        }
        // Sink, container and tunnel failures are printed on their own lines above; a source
        // failure has no other line.
        let shown_above = b.stage != Some(Stage::Source)
            || b.tunnel
                .as_ref()
                .is_some_and(|t| t.result == TunnelResult::Failed);
        if multi
            && !shown_above
            && let Some(e) = &b.error
            && said.insert(e.clone())
        {
            let _ = writeln!(s, "  error: {}", outside_lines(&e.to_string()));
        }
    }
    for m in &r.recovered {
        let verb = if r.dry_run { "to recover" } else { "recovered" };
        let _ = writeln!(s, "  {verb}: {}", outside_lines(&m.to_string()));
    }
    for c in &r.targets {
        let action = match c.action {
            reconcile::Action::None => "no action",
            reconcile::Action::Restart => "restart",
            reconcile::Action::Recreate => "recreate",
            reconcile::Action::Rollout => "rollout",
        };
        let result = serde_json::to_value(c.result)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let reason = if c.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", outside(&c.reason))
        };
        // `no action [none]` says nothing twice.
        let result = if c.action == reconcile::Action::None && c.result == TargetResult::None {
            String::new()
        } else {
            format!(" [{result}]")
        };
        let _ = writeln!(
            s,
            "  container {}: {action}{reason}{result}",
            outside(&c.name)
        );
        if let Some(e) = &c.error
            && said.insert(e.message.clone())
        {
            let _ = writeln!(s, "    {}", outside_lines(&e.message));
            if !e.logs.is_empty() {
                let _ = writeln!(s, "    last log lines of the new container:");
            }
            for l in &e.logs {
                let _ = writeln!(s, "      | {}", outside(l));
            }
        }
        if let Some(p) = &c.pending {
            let _ = writeln!(s, "    {}", crate::notify::pending_text(p));
        }
    }
    for w in &r.warnings {
        let _ = writeln!(s, "  warning: {}", outside_lines(&w.to_string()));
    }
    let _ = writeln!(s, "{}", summary(r));
    s
}

/// Print a report in the chosen format.
pub fn print(r: &Report, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string(r).unwrap_or_else(|_| "{}".into())
        ),
        Output::Text => print!("{}", render_text(r)),
    }
}

/// `error: …` and `hint: …` on stderr (the JSON report already carries both on stdout).
pub fn report_error(message: &str, hint: Option<&str>, output: Output) {
    if output == Output::Json {
        tracing::error!("{message}");
        return;
    }
    eprintln!("error: {}", crate::shown::outside_lines(message));
    if let Some(h) = hint {
        eprintln!("hint: {}", crate::shown::outside_lines(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(
        name: &str,
        action: reconcile::Action,
        reason: &str,
        result: TargetResult,
    ) -> TargetReport {
        TargetReport {
            name: name.into(),
            action,
            reason: reason.into(),
            result,
            bindings: vec![],
            error: None,
            keeps_old: Default::default(),
            pending: Default::default(),
            duration: None,
        }
    }

    #[test]
    fn container_lines_show_no_empty_fields() {
        let mut r = Report::from_error(&Error::failed("x", None), false);
        (r.status, r.error, r.single) = (Status::InSync, None, None);
        r.targets = vec![
            target("web", reconcile::Action::None, "", TargetResult::None),
            target(
                "api",
                reconcile::Action::Restart,
                "AUD changed",
                TargetResult::Done,
            ),
        ];
        let text = render_text(&r);
        assert!(text.contains("  container web: no action\n"), "{text}");
        assert!(
            text.contains("  container api: restart (AUD changed) [done]\n"),
            "{text}"
        );
        assert!(!text.contains("()") && !text.contains("[none]"), "{text}");
    }
}
