//! Issue 14: notifications (received by an in-process webhook server), the `POST /sync`
//! trigger, honest report wording, progress on a terminal, and the secrets they involve.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use serde_json::Value;

use crate::support::cloudflare::{FakeCloudflare, TOKEN, aud};
use crate::support::{Run, Sandbox, Server, run};
use crate::watch::{HOST, LIMIT, metric, setup, start_listening};

/// One request the webhook server received.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    pub(crate) body: String,
}

impl Got {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A webhook receiver: records every request, answers like Slack (200 `ok`).
pub(crate) struct Hooks {
    server: Server,
    got: Arc<Mutex<Vec<Got>>>,
}

pub(crate) fn hooks() -> Hooks {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let server = Server::start(move |req: Request<Body>| {
        let g = g.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            g.lock().unwrap().push(Got {
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            v.to_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
            Response::new(Body::from("ok"))
        }
    });
    Hooks { server, got }
}

impl Hooks {
    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    pub(crate) fn at(&self, prefix: &str) -> Vec<Got> {
        self.got()
            .into_iter()
            .filter(|g| g.path.starts_with(prefix))
            .collect()
    }

    pub(crate) fn port(&self) -> u16 {
        self.server.addr.port()
    }

    /// The events posted to the plain JSON endpoint, in order.
    pub(crate) fn events(&self) -> Vec<String> {
        self.at("/hook")
            .iter()
            .map(|g| g.json()["event"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

// Tokens in the URLs: they must never be printed.
const JSON_SECRET: &str = "jsonPathSecret77";
const NTFY_TOKEN: &str = "tk_ntfyToken1234567";
const NTFY_TOPIC: &str = "topicSecret55";
const SLACK_SECRET: &str = "slackTokenXyz999";
const DISCORD_SECRET: &str = "discordTokenAbc888";
const TRIGGER: &str = "trigger-token-0123456789abcdef";

fn all_schemes(h: &Hooks) -> String {
    let p = h.port();
    [
        format!("http://127.0.0.1:{p}/hook/{JSON_SECRET}"),
        format!("ntfy+http://{NTFY_TOKEN}@127.0.0.1:{p}/{NTFY_TOPIC}"),
        format!("slack+http://127.0.0.1:{p}/services/T000/B000/{SLACK_SECRET}"),
        format!("discord+http://localhost:{p}/api/webhooks/123/{DISCORD_SECRET}"),
    ]
    .join(",")
}

fn assert_no_secrets(what: &str, text: &str) {
    for s in [
        JSON_SECRET,
        NTFY_TOKEN,
        NTFY_TOPIC,
        SLACK_SECRET,
        DISCORD_SECRET,
        TRIGGER,
    ] {
        assert!(!text.contains(s), "{what} shows the secret {s}:\n{text}");
    }
}

fn cf_sandbox() -> (FakeCloudflare, Sandbox) {
    setup("CLOUDFLARE_AUD_TAG=old\nOTHER=1\n")
}

fn sync(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--restart", "none"])
        .args(extra);
    run(&mut c)
}

#[test]
fn a_change_is_notified_to_every_scheme_in_its_shape() {
    let h = hooks();
    let (_cf, mut sb) = cf_sandbox();
    sb.var("AUDSYNC_NOTIFY", &all_schemes(&h));
    let r = sync(&sb, &["-vvv"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_no_secrets("sync -vvv", &format!("{}{}", r.stdout, r.stderr));
    assert_eq!(h.got().len(), 4, "{:#?}", h.got());
    let new = &aud(2)[..8];

    // Plain JSON: CloudEvents-style fields, the text, and the data.
    let j = h.at("/hook")[0].json();
    assert_eq!(j["specversion"], "1.0");
    assert_eq!(j["type"], "io.audsync.changed");
    assert_eq!(j["event"], "changed");
    let host = j["data"]["host"].as_str().unwrap().to_string();
    assert!(!host.is_empty());
    assert_eq!(j["source"], format!("audsync://{host}"));
    assert_eq!(j["data"]["bindings"][0]["id"], HOST);
    assert_eq!(j["data"]["bindings"][0]["old"], Value::Null, "not an AUD");
    assert_eq!(j["data"]["bindings"][0]["new"], aud(2));
    assert_eq!(j["data"]["status"], "written");
    let text = j["message"].as_str().unwrap();
    assert!(text.contains(&format!("host: {host}")), "{text}");
    assert!(
        text.contains(&format!("binding {HOST}: AUD (not an AUD) → {new}…")),
        "{text}"
    );
    assert!(
        text.contains(
            "container lambda-server: no action nothing to do — still runs the old value"
        ),
        "{text}"
    );
    assert!(
        text.contains("written, not applied (--restart none)"),
        "{text}"
    );
    assert!(j["title"].as_str().unwrap().contains(&format!("[{host}]")));

    // ntfy: text body, title/priority/tags headers, the tk_ token as a bearer token.
    let n = &h.at(&format!("/{NTFY_TOPIC}"))[0];
    assert_eq!(
        n.headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {NTFY_TOKEN}").as_str())
    );
    assert!(
        n.headers["title"].contains("AUD written, not applied"),
        "{n:?}"
    );
    assert_eq!(n.headers["priority"], "3");
    assert!(n.headers.contains_key("tags"));
    assert!(n.headers["content-type"].starts_with("text/plain"));
    assert!(
        n.body.contains(&format!("(not an AUD) → {new}")),
        "{}",
        n.body
    );

    // Slack: {"text"} with a bold title.
    let s = h.at("/services/")[0].json();
    let t = s["text"].as_str().unwrap();
    assert!(
        t.starts_with('*') && t.contains(&format!("(not an AUD) → {new}")),
        "{t}"
    );

    // Discord: wait=true, content + one embed, no mentions.
    let d = &h.at("/api/webhooks/123/")[0];
    assert_eq!(d.query, "wait=true");
    let d = d.json();
    assert_eq!(d["username"], "audsync");
    assert!(d["content"].as_str().unwrap().contains("AUD written"));
    assert!(
        d["embeds"][0]["description"]
            .as_str()
            .unwrap()
            .contains(&format!("(not an AUD) → {new}"))
    );
    assert_eq!(d["allowed_mentions"]["parse"], serde_json::json!([]));

    // Nothing changed: nothing is sent.
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(h.got().len(), 4, "no message for an in-sync pass");
}

#[test]
fn a_failure_is_notified_with_the_stage_and_the_fix() {
    let h = hooks();
    let (cf, mut sb) = cf_sandbox();
    cf.with(|s| s.token = Some("some-other-token".into()));
    sb.var(
        "AUDSYNC_NOTIFY",
        &format!("http://127.0.0.1:{}/hook/{JSON_SECRET}", h.port()),
    );
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let j = &h.at("/hook")[0].json();
    assert_eq!(j["event"], "failed");
    assert_eq!(j["data"]["stage"], "source");
    let text = j["message"].as_str().unwrap();
    assert!(text.contains("stage: source"), "{text}");
    assert!(text.contains("error: "), "{text}");
    assert!(text.contains("fix: "), "{text}");
    assert!(
        j["title"].as_str().unwrap().contains("FAILED at source"),
        "{j}"
    );
    assert!(!r.stdout.contains(TOKEN) && !j.to_string().contains(TOKEN));
}

#[test]
fn failing_sync_runs_notify_once_per_streak_across_runs() {
    let h = hooks();
    let (cf, mut sb) = cf_sandbox();
    sb.var(
        "AUDSYNC_NOTIFY",
        &format!("http://127.0.0.1:{}/hook/{JSON_SECRET}", h.port()),
    );
    // cron: the token was revoked, three runs fail, then it is fixed.
    cf.with(|s| s.token = Some("some-other-token".into()));
    for _ in 0..3 {
        assert_eq!(sync(&sb, &[]).code, 1);
    }
    cf.with(|s| s.token = Some(TOKEN.into()));
    assert_eq!(sync(&sb, &[]).code, 0);
    assert_eq!(sync(&sb, &[]).code, 0);
    assert_eq!(h.events(), vec!["failed", "recovered"], "{:#?}", h.got());
    let rec = h.at("/hook")[1].json();
    assert_eq!(rec["data"]["failures"], 3, "{rec}");
    let text = rec["message"].as_str().unwrap();
    assert!(text.contains("recovered after 3 failed pass(es)"), "{text}");
    assert!(
        text.contains("(not an AUD) → "),
        "the change it made is in it: {text}"
    );
}

#[test]
fn notify_on_filters_the_events() {
    let h = hooks();
    let (_cf, mut sb) = cf_sandbox();
    sb.var(
        "AUDSYNC_NOTIFY",
        &format!("http://127.0.0.1:{}/hook/x", h.port()),
    );
    sb.var("AUDSYNC_NOTIFY_ON", "failed,recovered");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        h.got().is_empty(),
        "changed is not asked for: {:?}",
        h.got()
    );
}

#[test]
fn a_dead_notification_endpoint_changes_no_exit_code() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (cf, mut sb) = cf_sandbox();
    sb.var(
        "AUDSYNC_NOTIFY",
        &format!("slack+http://127.0.0.1:{port}/services/T/B/{SLACK_SECRET}"),
    );
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("written, not applied"), "{r:?}");
    assert!(
        r.stderr.contains("notification not delivered")
            && r.stderr.contains(&format!("slack http://127.0.0.1:{port}")),
        "{r:?}"
    );
    assert_no_secrets("a failed delivery", &r.stderr);
    // A failed pass keeps its own exit code.
    cf.with(|s| s.token = Some("some-other-token".into()));
    sb.write_env("CLOUDFLARE_AUD_TAG=older\n");
    assert_eq!(sync(&sb, &[]).code, 1);
}

#[test]
fn bad_notify_urls_are_refused_without_being_shown() {
    let (_cf, mut sb) = cf_sandbox();
    for bad in [
        format!("http://example.com/hook/{JSON_SECRET}"),
        format!("teams+https://example.com/{SLACK_SECRET}"),
    ] {
        sb.var("AUDSYNC_NOTIFY", &bad);
        let r = sync(&sb, &[]);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stderr.contains("AUDSYNC_NOTIFY entry 1"), "{r:?}");
        assert_no_secrets("a refused URL", &format!("{}{}", r.stdout, r.stderr));
    }
}

#[test]
fn the_config_file_takes_a_notify_list_only_when_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = hooks();
    let (_cf, sb) = cf_sandbox();
    let path = sb.path("audsync.toml");
    std::fs::write(
        &path,
        format!(
            "notify = [\"http://127.0.0.1:{}/hook/{JSON_SECRET}\"]\nnotify_on = \"changed\"\n",
            h.port()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = sb.cmd();
    c.args([
        "--config",
        "audsync.toml",
        "sync",
        "--domain",
        HOST,
        "--restart",
        "none",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("`notify` URLs carry tokens"), "{r:?}");
    assert_no_secrets("a refused file", &r.stderr);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(h.events(), vec!["changed"]);
    // `audsync config` does not show them either.
    let mut c = sb.cmd();
    c.args(["--config", "audsync.toml", "config", "--domain", HOST]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "notify = [\"webhook http://127.0.0.1:{} [redacted]\"]",
            h.port()
        )),
        "{r:?}"
    );
    assert_no_secrets("audsync config", &format!("{}{}", r.stdout, r.stderr));
}

#[test]
fn a_failure_streak_of_five_passes_sends_one_failed_and_one_recovered() {
    let h = hooks();
    let (_cf, mut sb) = cf_sandbox();
    sb.var(
        "AUDSYNC_NOTIFY",
        &format!("http://127.0.0.1:{}/hook/{JSON_SECRET}", h.port()),
    );
    // Another run holds the lock: every pass fails at the lock stage.
    let lock = std::fs::File::create(sb.flag_lock(".env")).unwrap();
    lock.lock().unwrap();
    let (mut w, addr) = start_listening(
        &sb,
        &[
            "--domain",
            HOST,
            "--restart",
            "none",
            "--interval",
            "100ms",
            "--jitter",
            "0",
            "--lock-timeout",
            "100ms",
        ],
    );
    w.expect("five failed passes", LIMIT, |_| {
        metric(&addr, "audsync_passes_total", &[("status", "failed")]) >= 5.0
    });
    lock.unlock().unwrap();
    drop(lock);
    w.expect("the recovery", Duration::from_secs(60), |_| {
        metric(&addr, "audsync_passes_total", &[("status", "written")]) >= 1.0
    });
    w.expect("two more passes", LIMIT, |_| {
        metric(&addr, "audsync_passes_total", &[("status", "in_sync")]) >= 2.0
    });
    w.expect("both notifications counted", LIMIT, |_| {
        metric(&addr, "audsync_notifications_total", &[("result", "sent")]) >= 2.0
    });
    assert_eq!(h.events(), vec!["failed", "recovered"], "{:#?}", h.got());
    let got = h.at("/hook");
    let failed = got[0].json();
    assert_eq!(failed["data"]["stage"], "lock");
    assert!(
        failed["message"].as_str().unwrap().contains("fix: ")
            || failed["message"].as_str().unwrap().contains("error: "),
        "{failed}"
    );
    let rec = got[1].json();
    let n = rec["data"]["failures"].as_u64().unwrap();
    assert!(n >= 5, "{rec}");
    assert!(
        rec["message"]
            .as_str()
            .unwrap()
            .contains(&format!("recovered after {n} failed pass(es)")),
        "{rec}"
    );
    assert_eq!(
        metric(
            &addr,
            "audsync_notifications_total",
            &[("result", "failed")]
        ),
        0.0
    );
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

/// POST /sync with an optional bearer token: (status, retry-after, body).
fn post_sync(addr: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST /sync HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn passes(addr: &str) -> f64 {
    ["in_sync", "changed", "written", "pending", "failed"]
        .iter()
        .map(|s| metric(addr, "audsync_passes_total", &[("status", s)]))
        .sum()
}

fn watch_args() -> Vec<&'static str> {
    vec![
        "--domain",
        HOST,
        "--restart",
        "none",
        "--interval",
        "1h",
        "--jitter",
        "0",
    ]
}

#[test]
fn post_sync_needs_the_right_token_and_runs_a_pass() {
    let (cf, mut sb) = cf_sandbox();
    sb.var("AUDSYNC_TRIGGER_TOKEN", TRIGGER);
    sb.var("RUST_LOG", "trace");
    let (mut w, addr) = start_listening(&sb, &watch_args());
    w.expect("the first pass", LIMIT, |_| passes(&addr) >= 1.0);
    assert_eq!(post_sync(&addr, None).0, 401);
    assert_eq!(post_sync(&addr, Some("wrong-token-0123456789")).0, 401);
    assert_eq!(passes(&addr), 1.0, "refused triggers run nothing");
    // Cloudflare rotates the AUD; the trigger picks it up without waiting for the hour.
    cf.with(|s| {
        s.apps.retain(|a| a["domain"] != HOST);
        s.apps
            .push(crate::support::cloudflare::app(3, HOST, &aud(3)));
    });
    let (code, body) = post_sync(&addr, Some(TRIGGER));
    assert_eq!(code, 202, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["pass"], 2, "{v}");
    w.expect("the triggered pass", LIMIT, |_| passes(&addr) >= 2.0);
    w.expect("the new AUD", LIMIT, |_| crate::watch::holds(&sb, &aud(3)));
    assert_eq!(
        metric(
            &addr,
            "audsync_sync_triggers_total",
            &[("result", "unauthorized")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &addr,
            "audsync_sync_triggers_total",
            &[("result", "accepted")]
        ),
        1.0
    );
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
    assert_no_secrets("watch at RUST_LOG=trace", &w.stderr());
    assert!(!w.stderr().contains("wrong-token-0123456789"));
}

#[test]
fn a_flood_of_unauthenticated_triggers_never_refuses_the_real_one() {
    let (_cf, mut sb) = cf_sandbox();
    sb.var("AUDSYNC_TRIGGER_TOKEN", TRIGGER);
    let (mut w, addr) = start_listening(&sb, &watch_args());
    w.expect("the first pass", LIMIT, |_| passes(&addr) >= 1.0);
    // Far past the burst: the flood's own address is limited...
    let codes: Vec<u16> = (0..25).map(|_| post_sync(&addr, None).0).collect();
    assert_eq!(codes.last(), Some(&429), "{codes:?}");
    // ...and the real trigger, from the same address, still runs a pass.
    let (code, body) = post_sync(&addr, Some(TRIGGER));
    assert_eq!(code, 202, "{body}");
    w.expect("the triggered pass", LIMIT, |_| passes(&addr) >= 2.0);
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_failed_recreate_sends_no_log_lines_and_the_report_redacts_every_form_of_a_secret() {
    crate::require_docker!(not_podman: "not checked on Podman");
    use crate::support::docker::{Docker, image};
    use base64::Engine as _;
    let h = hooks();
    let (_cf, mut sb) = cf_sandbox();
    sb.var(
        "AUDSYNC_NOTIFY",
        &format!("http://127.0.0.1:{}/hook/{JSON_SECRET}", h.port()),
    );
    let d = Docker::new();
    let secret = "pa55-Word\"91c4zz";
    let url = "postgres://app:pa55%40w0rd-q7@db:5432/app";
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let spaced: String = secret
        .chars()
        .map(String::from)
        .collect::<Vec<_>>()
        .join(" ");
    // On the new value, it prints its secret in four forms and the decoded URL password, then
    // exits.
    let script = format!(
        r#"if [ "$CLOUDFLARE_AUD_TAG" != old ]; then echo 'json {{"pw":"pa55-Word\"91c4zz"}}'; echo 'pw pa55@w0rd-q7'; echo 'b64 {b64}'; echo 'banner {spaced}'; echo LOGLINE-MARKER; exit 3; fi; trap 'exit 0' TERM; while true; do sleep 1; done"#
    );
    let c = d.run(
        "logleak",
        &[
            "-e",
            "CLOUDFLARE_AUD_TAG=old",
            "-e",
            &format!("DB_PASSWORD={secret}"),
            "-e",
            &format!("DATABASE_URL={url}"),
            &image(),
            "sh",
            "-c",
            &script,
        ],
    );
    let mut cmd = sb.cmd();
    cmd.args([
        "sync",
        "--domain",
        HOST,
        "--container",
        &c,
        "--settle",
        "2s",
    ]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 1, "{r:?}");
    let out = format!("{}{}", r.stdout, r.stderr);
    assert!(
        out.contains("LOGLINE-MARKER"),
        "the terminal quotes the lines: {r:?}"
    );
    for leaked in [
        secret,
        "pa55@w0rd-q7",
        b64.as_str(),
        spaced.as_str(),
        "Word\\\"91c4zz",
    ] {
        assert!(!out.contains(leaked), "{leaked} in the terminal: {out}");
    }
    let got = h.got();
    assert!(!got.is_empty(), "the failure is notified");
    for g in &got {
        assert!(
            !g.body.contains("LOGLINE-MARKER"),
            "a log line was sent: {}",
            g.body
        );
        assert!(g.body.contains("docker logs"), "where to look: {}", g.body);
    }
}

#[test]
fn post_sync_is_not_found_without_a_token() {
    let (_cf, sb) = cf_sandbox();
    let (mut w, addr) = start_listening(&sb, &watch_args());
    w.expect("the first pass", LIMIT, |_| passes(&addr) >= 1.0);
    assert_eq!(post_sync(&addr, Some(TRIGGER)).0, 404);
    let (code, body) = post_sync(&addr, None);
    assert_eq!(code, 404);
    // One line that says how to turn the route on.
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert!(body.contains("AUDSYNC_TRIGGER_TOKEN"), "{body:?}");
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

#[test]
fn two_concurrent_triggers_run_one_pass() {
    let (_cf, mut sb) = cf_sandbox();
    sb.var("AUDSYNC_TRIGGER_TOKEN", TRIGGER);
    // The first pass waits for a lock another run holds, so both triggers arrive while it runs.
    let lock = std::fs::File::create(sb.flag_lock(".env")).unwrap();
    lock.lock().unwrap();
    let mut args = watch_args();
    args.extend_from_slice(&["--lock-timeout", "60s"]);
    let (mut w, addr) = start_listening(&sb, &args);
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let a = addr.clone();
            std::thread::spawn(move || post_sync(&a, Some(TRIGGER)))
        })
        .collect();
    let answers: Vec<(u16, String)> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    for (code, body) in &answers {
        assert_eq!(*code, 202, "{body}");
    }
    let ids: Vec<Value> = answers
        .iter()
        .map(|(_, b)| serde_json::from_str::<Value>(b).unwrap()["pass"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![Value::from(2), Value::from(2)],
        "one pass serves both"
    );
    assert_eq!(
        passes(&addr),
        0.0,
        "the first pass still waits for the lock"
    );
    lock.unlock().unwrap();
    drop(lock);
    w.expect("two passes", LIMIT, |_| passes(&addr) >= 2.0);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        passes(&addr),
        2.0,
        "the start-up pass and one triggered pass"
    );
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

#[test]
fn notification_urls_and_the_trigger_token_never_reach_the_logs() {
    let h = hooks();
    let (cf, mut sb) = cf_sandbox();
    sb.var("AUDSYNC_NOTIFY", &all_schemes(&h));
    sb.var("AUDSYNC_TRIGGER_TOKEN", TRIGGER);
    sb.var("RUST_LOG", "trace");
    let mut args = watch_args();
    args.push("-vvv");
    let (mut w, addr) = start_listening(&sb, &args);
    w.expect("the change notified", LIMIT, |_| h.got().len() >= 4);
    cf.with(|s| s.token = Some("some-other-token".into()));
    assert_eq!(post_sync(&addr, Some(TRIGGER)).0, 202);
    w.expect("the failure notified", LIMIT, |_| h.got().len() >= 8);
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
    let out = format!("{}\n{}", w.stdout_lines().join("\n"), w.stderr());
    assert!(out.contains("notification"), "the sends are logged: {out}");
    assert_no_secrets("watch -vvv, RUST_LOG=trace", &out);
}

// ---- progress on a terminal ----

/// Run the binary under a pseudo-terminal (util-linux `script`); returns (exit code, output).
fn on_a_pty(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let bin = assert_cmd::cargo::cargo_bin("audsync");
    let cmd = std::iter::once(bin.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .env("AUDSYNC_LOCK_DIR", sb.locks.path())
        .env("TERM", "xterm-256color")
        .current_dir(sb.dir())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn held_lock(sb: &Sandbox) -> std::fs::File {
    let lock = std::fs::File::create(sb.flag_lock(".env")).unwrap();
    lock.lock().unwrap();
    lock
}

#[test]
fn a_long_wait_shows_a_spinner_only_on_a_terminal() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    }
    let (_cf, sb) = cf_sandbox();
    let _lock = held_lock(&sb);
    let args = [
        "sync",
        "--domain",
        HOST,
        "--restart",
        "none",
        "--lock-timeout",
        "3500ms",
    ];
    let (code, out) = on_a_pty(&sb, &args);
    assert_eq!(code, 1, "the lock is never released: {out}");
    assert!(
        out.contains("waiting for the lock held by another audsync run (up to 3s)"),
        "{out:?}"
    );
    assert!(
        out.contains('\r') || out.contains("\x1b["),
        "drawn in place: {out:?}"
    );

    // JSON output and -q: no spinner, even on a terminal.
    for extra in [&["--output", "json"][..], &["-q"][..]] {
        let mut a = args.to_vec();
        a.extend_from_slice(extra);
        let (code, out) = on_a_pty(&sb, &a);
        assert_eq!(code, 1, "{out}");
        assert!(!out.contains("waiting for the lock"), "{extra:?}: {out:?}");
    }

    // Not a terminal: one log line at the start and one at the end, nothing drawn.
    let mut c = sb.cmd();
    c.args(args).arg("-v");
    let r = run(&mut c);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("waiting for the lock held by another audsync run")
            && r.stderr.contains("done waiting for the lock"),
        "{r:?}"
    );
    assert!(
        !r.stderr.contains('\r') && !r.stderr.contains("\x1b["),
        "{r:?}"
    );
}

// ---- honest reports ----

#[test]
fn restart_none_reports_written_not_applied() {
    let (_cf, sb) = cf_sandbox();
    let r = sync(&sb, &["--container", "lambda-server"]);
    assert_eq!(r.code, 0, "{r:?}");
    let last = r.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("written, not applied (--restart none)"),
        "{r:?}"
    );
    assert!(!r.stdout.contains("new AUD applied"), "{r:?}");
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let r = sync(&sb, &["--output", "json"]);
    let j = r.json();
    assert_eq!(j["status"], "written");
    assert_eq!(j["exit_code"], 0);
    assert_eq!(
        j["containers"][0]["keeps_old"]["CLOUDFLARE_AUD_TAG"],
        "restart_none"
    );
    // The next pass has nothing to write: in sync.
    assert_eq!(sync(&sb, &["--output", "json"]).json()["status"], "in_sync");
}

#[cfg(test)]
mod docker {
    use super::*;
    use crate::require_docker;
    use crate::support::docker::{Docker, env_of, image};

    const KEY: &str = "CLOUDFLARE_AUD_TAG";
    const IDLE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

    fn sync_c(sb: &Sandbox, mode: &str, c: &str) -> Run {
        let mut cmd = sb.cmd();
        cmd.args([
            "sync",
            "--domain",
            HOST,
            "--restart",
            mode,
            "--container",
            c,
            "--settle",
            "1s",
        ]);
        run(&mut cmd)
    }

    #[test]
    #[ignore = "needs the Docker engine: run scripts/test.sh"]
    fn restart_on_a_container_that_carries_the_key_warns_it_keeps_the_old_value() {
        require_docker!(not_podman: "not checked on Podman");
        let d = Docker::new();
        let c = d.run(
            "carrier",
            &["-e", &format!("{KEY}=old"), &image(), "sh", "-c", IDLE],
        );
        let (_cf, sb) = cf_sandbox();
        let r = sync_c(&sb, "restart", &c);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains(&format!(
                "warning: container {c}: its environment carries {KEY}, so a restart keeps the old value"
            )),
            "{r:?}"
        );
        let last = r.stdout.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!(
                "written, not applied: {c} still run(s) the old value"
            )),
            "{r:?}"
        );
        assert_eq!(
            env_of(&c, KEY).as_deref(),
            Some("old"),
            "really still the old value"
        );
        sb.write_env("CLOUDFLARE_AUD_TAG=old\nOTHER=1\n");
        let mut cmd = sb.cmd();
        cmd.args([
            "sync",
            "--domain",
            HOST,
            "--restart",
            "restart",
            "--container",
            &c,
            "--output",
            "json",
        ]);
        let j = run(&mut cmd).json();
        assert_eq!(j["status"], "written", "{j}");
        assert_eq!(
            j["containers"][0]["keeps_old"][KEY], "restart_keeps_env",
            "{j}"
        );
    }

    #[test]
    #[ignore = "needs the Docker engine: run scripts/test.sh"]
    fn a_drift_repair_says_converged_not_new_aud() {
        require_docker!(not_podman: "not checked on Podman");
        let d = Docker::new();
        // The .env already holds the current AUD; the container was created with an old one.
        let c = d.run(
            "drifted",
            &["-e", &format!("{KEY}=old"), &image(), "sh", "-c", IDLE],
        );
        let (_cf, sb) = setup(&format!("{KEY}={}\n", aud(2)));
        let r = sync_c(&sb, "auto", &c);
        assert_eq!(r.code, 0, "{r:?}");
        let last = r.stdout.lines().last().unwrap_or_default();
        assert!(last.starts_with("converged:"), "{r:?}");
        assert!(!r.stdout.contains("new AUD"), "{r:?}");
        assert_eq!(env_of(&c, KEY), Some(aud(2)));
    }

    #[test]
    #[ignore = "needs the Docker engine: run scripts/test.sh"]
    fn a_rolled_back_recreate_is_notified_as_rolled_back() {
        require_docker!(not_podman: "not checked on Podman");
        let h = hooks();
        let d = Docker::new();
        let bad = format!("BAD_AUD={}", aud(2));
        let c = d.run(
            "rollback",
            &[
                "-e",
                &format!("{KEY}=old"),
                "-e",
                &bad,
                "--health-cmd",
                "[ \"$CLOUDFLARE_AUD_TAG\" != \"$BAD_AUD\" ]",
                "--health-interval",
                "1s",
                "--health-retries",
                "2",
                &image(),
                "sh",
                "-c",
                IDLE,
            ],
        );
        crate::support::docker::wait_healthy(&c, Duration::from_secs(60));
        let (_cf, mut sb) = cf_sandbox();
        sb.var(
            "AUDSYNC_NOTIFY",
            &format!("http://127.0.0.1:{}/hook/{JSON_SECRET}", h.port()),
        );
        let r = sync_c(&sb, "recreate", &c);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(h.events(), vec!["rolled_back"]);
        let j = h.at("/hook")[0].json();
        assert_eq!(j["data"]["containers"][0]["rolled_back"], true, "{j}");
        let text = j["message"].as_str().unwrap();
        assert!(
            text.contains(&format!("container {c}: recreate FAILED")),
            "{text}"
        );
        assert!(
            text.contains("(rolled back)") && text.contains("stage: target"),
            "{text}"
        );
    }
}
