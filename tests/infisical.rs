//! `--sink infisical` and Cloudflare credentials read from Infisical, through the real binary,
//! against the fake Cloudflare and the fake Infisical.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::cloudflare::{self, EMAIL, FakeCloudflare, GLOBAL_KEY, TOKEN, app, aud};
use crate::support::docker::{Docker, image, started_at};
use crate::support::infisical::{
    CLIENT_ID, CLIENT_SECRET, FakeInfisical, Fault, PROJECT, STATIC_TOKEN,
};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
const ENV: &str = "OTHER=1\nCLOUDFLARE_AUD_TAG=old\n";

struct World {
    cf: FakeCloudflare,
    inf: FakeInfisical,
    sb: Sandbox,
}

/// Cloudflare serving aud(2) for HOST; Infisical with the AUD secret at dev:/ holding "old" v1;
/// Universal Auth credentials in the process env.
fn world() -> World {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let inf = FakeInfisical::start();
    inf.put("dev", "/", KEY, "old", 1);
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("INFISICAL_HOST", &inf.url())
        .var("INFISICAL_PROJECT_ID", PROJECT)
        .var("INFISICAL_CLIENT_ID", CLIENT_ID)
        .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
    sb.write_env(ENV);
    World { cf, inf, sb }
}

fn sync(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--sink",
        "infisical",
        "--restart",
        "none",
    ])
    .args(extra);
    run(&mut c)
}

fn state(sb: &Sandbox) -> Value {
    serde_json::from_str(&std::fs::read_to_string(sb.path(".env.audsync-state.json")).unwrap())
        .unwrap()
}

fn both(r: &Run) -> String {
    format!("{}\n{}", r.stdout, r.stderr)
}

#[test]
fn infisical_writes_with_universal_auth_and_sends_the_documented_shape() {
    let w = world();
    let r = sync(&w.sb, &["--output", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 2)));
    assert_eq!(w.sb.read_env(), ENV, "the .env sink was not chosen");

    let reqs = w.inf.requests();
    let methods: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    let secret_route = format!("/api/v4/secrets/{KEY}");
    assert_eq!(
        methods,
        vec![
            ("POST", "/api/v1/auth/universal-auth/login"),
            ("GET", secret_route.as_str()),
            ("PATCH", secret_route.as_str()),
            // A one-shot run revokes the token it minted (the token in the body, no header).
            ("POST", "/api/v1/auth/token/revoke"),
        ]
    );
    assert_eq!(
        reqs[0].body,
        Some(json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}))
    );
    let token = w.inf.with(|s| s.issued[0].clone());
    for r in &reqs[1..3] {
        assert_eq!(r.headers["authorization"], format!("Bearer {token}"));
    }
    assert_eq!(reqs[3].body, Some(json!({"accessToken": token})));
    let q = &reqs[1].query;
    assert_eq!(q["projectId"], PROJECT);
    assert_eq!(q["environment"], "dev", "default environment");
    assert_eq!(q["secretPath"], "/", "default path");
    assert_eq!(q["type"], "shared");
    assert_eq!(
        reqs[2].body,
        Some(
            json!({"projectId": PROJECT, "environment": "dev", "secretPath": "/", "secretValue": aud(2), "type": "shared"})
        )
    );

    let j = r.json();
    assert_eq!(
        j["status"], "written",
        "--restart none: written, not applied"
    );
    let s = &j["sinks"][0];
    assert_eq!(s["kind"], "infisical");
    assert_eq!(s["target"], format!("{PROJECT}/dev/"));
    assert_eq!(s["key"], KEY);
    assert_eq!(s["old"], Value::Null, "not an AUD: not carried");
    assert_eq!(s["version"], 1);
    assert_eq!(s["new_version"], 2);
    assert_eq!(s["result"], "written");
}

#[test]
fn infisical_equal_value_is_never_written() {
    let w = world();
    w.inf.put("dev", "/", KEY, &aud(2), 7);
    let r = sync(&w.sb, &["--output", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(w.inf.writes().is_empty(), "{:?}", w.inf.writes());
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 7)));
    let j = r.json();
    assert_eq!(j["status"], "in_sync");
    assert_eq!(j["sinks"][0]["version"], 7);
    assert_eq!(j["sinks"][0]["result"], "unchanged");
}

#[test]
fn infisical_missing_secret_is_created_in_the_configured_folder() {
    let w = world();
    let mut sb = w.sb;
    sb.var("INFISICAL_ENVIRONMENT", "prod")
        .var("INFISICAL_SECRET_PATH", "/lambda/");
    let r = sync(&sb, &["--output", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.secret("prod", "/lambda", KEY), Some((aud(2), 1)));
    let writes = w.inf.writes();
    assert_eq!(writes.len(), 1, "GET 404 -> one POST: {writes:?}");
    assert_eq!(writes[0].method, "POST");
    assert_eq!(
        writes[0].body,
        Some(
            json!({"projectId": PROJECT, "environment": "prod", "secretPath": "/lambda", "secretValue": aud(2), "type": "shared"})
        )
    );
    let j = r.json();
    assert_eq!(j["sinks"][0]["target"], format!("{PROJECT}/prod/lambda"));
    assert_eq!(j["sinks"][0]["old"], Value::Null);
    assert_eq!(j["sinks"][0]["new_version"], 1);
}

#[test]
fn infisical_secret_deleted_between_read_and_write_is_created() {
    // The GET sees the secret, then someone deletes it: the PATCH gets 404, so create it.
    let w = world();
    w.inf.with(|s| s.delete_after_read = true);
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let writes: Vec<String> = w.inf.writes().iter().map(|r| r.method.clone()).collect();
    assert_eq!(writes, vec!["PATCH", "POST"]);
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 1)));
}

#[test]
fn infisical_v3_routes_use_workspace_id() {
    let w = world();
    w.inf.with(|s| s.serve_v4 = false);
    // Without --infisical-api v3, an old instance is named and the fix given.
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--infisical-api v3"), "{r:?}");
    assert_eq!(w.inf.secret("dev", "/", KEY), Some(("old".into(), 1)));

    let before = w.inf.requests().len();
    let r = sync(&w.sb, &["--infisical-api", "v3"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 2)));
    let reqs = &w.inf.requests()[before..];
    let route = format!("/api/v3/secrets/raw/{KEY}");
    assert_eq!(reqs[1].path, route);
    assert_eq!(reqs[1].query["workspaceId"], PROJECT);
    assert!(!reqs[1].query.contains_key("projectId"));
    assert_eq!(
        (reqs[2].method.as_str(), reqs[2].path.as_str()),
        ("PATCH", route.as_str())
    );
    assert_eq!(
        reqs[2].body,
        Some(
            json!({"workspaceId": PROJECT, "environment": "dev", "secretPath": "/", "secretValue": aud(2), "type": "shared"})
        )
    );

    // AUDSYNC_INFISICAL_API selects it too; a missing secret is created on the v3 route.
    w.inf.with(|s| s.secrets.clear());
    let mut sb = w.sb;
    sb.var("AUDSYNC_INFISICAL_API", "v3");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let last = w.inf.secret_requests().pop().unwrap();
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("POST", route.as_str())
    );
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 1)));
}

#[test]
fn infisical_static_token_and_secret_files() {
    let w = world();
    let mut sb = w.sb;
    sb.unset("INFISICAL_CLIENT_ID")
        .unset("INFISICAL_CLIENT_SECRET")
        .var("INFISICAL_TOKEN", STATIC_TOKEN);
    assert_eq!(sync(&sb, &[]).code, 0);
    assert_eq!(w.inf.logins(), 0, "a ready token needs no login");
    assert!(
        w.inf
            .secret_requests()
            .iter()
            .all(|r| r.headers["authorization"] == format!("Bearer {STATIC_TOKEN}"))
    );

    // Universal Auth with the secret in a file (Docker secrets).
    let f = sb.path("client.secret");
    std::fs::write(&f, format!("{CLIENT_SECRET}\n")).unwrap();
    sb.unset("INFISICAL_TOKEN")
        .var("INFISICAL_CLIENT_ID", CLIENT_ID)
        .var("INFISICAL_CLIENT_SECRET_FILE", f.to_str().unwrap());
    w.inf.put("dev", "/", KEY, "old", 5);
    assert_eq!(sync(&sb, &[]).code, 0);
    let login = w
        .inf
        .requests()
        .into_iter()
        .find(|r| r.path.contains("login"))
        .unwrap();
    assert_eq!(login.body.unwrap()["clientSecret"], CLIENT_SECRET);
}

#[test]
fn infisical_failed_login_is_never_retried_and_names_the_lockout() {
    let w = world();
    let mut sb = w.sb;
    sb.var("INFISICAL_CLIENT_SECRET", "wrong-client-secret-SECRET");
    // No hold-off between runs here, to show the fake's lockout (infisical_passes.rs covers
    // the hold-off that prevents it).
    sb.var("AUDSYNC_INFISICAL_LOGIN_HOLDOFF", "0");
    for n in 1..=3 {
        let r = sync(&sb, &[]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(
            r.stderr
                .contains("three failed logins lock the machine identity for 5 minutes"),
            "{r:?}"
        );
        assert!(r.stderr.contains("Invalid credentials"), "{r:?}");
        assert!(r.stderr.contains("INFISICAL_CLIENT_SECRET"), "hint: {r:?}");
        assert!(!r.stderr.contains("wrong-client-secret-SECRET"), "{r:?}");
        assert_eq!(w.inf.logins(), n, "exactly one login per run");
        assert!(w.inf.secret_requests().is_empty());
    }
    // Locked now: even the right secret is refused, and the server's message is shown.
    sb.var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("locked"), "{r:?}");
    assert_eq!(w.inf.logins(), 4);
    assert_eq!(w.inf.secret("dev", "/", KEY), Some(("old".into(), 1)));
}

#[test]
fn infisical_expired_token_logs_in_again_once() {
    let w = world();
    // The first token is already expired: log in again, then succeed.
    w.inf.with(|s| s.expire_next_tokens = 1);
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.logins(), 2);
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 2)));
    let second = w.inf.with(|s| s.issued[1].clone());
    assert_eq!(
        w.inf.writes()[0].headers["authorization"],
        format!("Bearer {second}")
    );

    // Every token expired: one extra login, then a clear failure (no loop).
    let w = world();
    w.inf.with(|s| s.expire_next_tokens = 100);
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(w.inf.logins(), 2, "log in again once, then fail");
    assert!(
        r.stderr
            .contains("expired even right after logging in again"),
        "{r:?}"
    );
    assert!(r.stderr.contains("Access Token TTL"), "{r:?}");

    // A ready token cannot be renewed: say which variable to fix.
    let w = world();
    let mut sb = w.sb;
    sb.unset("INFISICAL_CLIENT_ID")
        .unset("INFISICAL_CLIENT_SECRET")
        .var("INFISICAL_TOKEN", STATIC_TOKEN);
    w.inf.with(|s| {
        s.expired.insert(STATIC_TOKEN.into());
    });
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("INFISICAL_TOKEN has expired"), "{r:?}");
    assert_eq!(w.inf.logins(), 0);
    assert_eq!(w.inf.secret_requests().len(), 1);
}

#[test]
fn infisical_permission_errors_name_project_environment_and_path() {
    let w = world();
    w.inf.put("prod", "/lambda", KEY, "old", 1);
    let mut sb = w.sb;
    sb.var("INFISICAL_ENVIRONMENT", "prod")
        .var("INFISICAL_SECRET_PATH", "/lambda");
    w.inf.with(|s| {
        s.deny.insert("read");
    });
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    for s in [
        "not allowed to read secret CLOUDFLARE_AUD_TAG",
        &format!("project {PROJECT}, environment prod, path /lambda"),
        "HTTP 403 PermissionDenied",
        "INFISICAL_SECRET_PATH",
    ] {
        assert!(r.stderr.contains(s), "missing {s:?}: {r:?}");
    }

    // Read allowed, edit refused: names the update, nothing changes.
    w.inf.with(|s| {
        s.deny.clear();
        s.deny.insert("edit");
    });
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not allowed to update secret"), "{r:?}");
    assert!(r.stderr.contains("environment prod, path /lambda"), "{r:?}");
    assert_eq!(
        w.inf.secret("prod", "/lambda", KEY),
        Some(("old".into(), 1))
    );

    // 401 (an unknown/revoked token) is reported the same way.
    sb.unset("INFISICAL_CLIENT_ID")
        .unset("INFISICAL_CLIENT_SECRET")
        .var("INFISICAL_TOKEN", "revoked-token-SECRET");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("HTTP 401"), "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "project {PROJECT}, environment prod, path /lambda"
        )),
        "{r:?}"
    );
    assert!(!both(&r).contains("revoked-token-SECRET"));
}

#[test]
fn infisical_rate_limit_backs_off_honouring_retry_after_and_is_bounded() {
    let w = world();
    w.inf.fault(Fault::Status429 {
        retry_after: Some("1".into()),
    });
    let t = Instant::now();
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured"
    );
    let gets = w
        .inf
        .secret_requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert_eq!(gets, 2);
    assert_eq!(w.inf.logins(), 1, "a 429 is no reason to log in again");

    let w = world();
    for _ in 0..10 {
        w.inf.fault(Fault::Status429 {
            retry_after: Some("0".into()),
        });
    }
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(w.inf.secret_requests().len(), 4, "4 attempts, then give up");
    assert!(r.stderr.contains("HTTP 429"), "{r:?}");
    assert!(r.stderr.contains("60 secret requests a minute"), "{r:?}");
}

#[test]
fn infisical_rate_limit_without_retry_after_backs_off_exponentially_and_is_bounded() {
    // The gaps between tries are at least the backoff (base 250 ms, doubling): lower bounds
    // only, which hold however loaded the machine is.
    let gaps = |w: &World| -> Vec<Duration> {
        let reqs = w.inf.secret_requests();
        reqs.windows(2).map(|p| p[1].at - p[0].at).collect()
    };

    // One 429 without Retry-After: waited, retried, done.
    let w = world();
    w.inf.fault(Fault::Status429 { retry_after: None });
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 2)));
    let reqs = w.inf.secret_requests();
    assert_eq!(
        (reqs[0].method.as_str(), reqs[1].method.as_str()),
        ("GET", "GET"),
        "the refused read is tried again"
    );
    assert!(
        gaps(&w)[0] >= Duration::from_millis(240),
        "backed off before retrying: {:?}",
        gaps(&w)
    );
    assert_eq!(w.inf.logins(), 1, "a 429 is no reason to log in again");

    // Rate limited on every try: 4 tries with growing waits, then a clear failure.
    let w = world();
    for _ in 0..10 {
        w.inf.fault(Fault::Status429 { retry_after: None });
    }
    let t = Instant::now();
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(w.inf.secret_requests().len(), 4, "4 attempts, then give up");
    let g = gaps(&w);
    for (gap, min) in g.iter().zip([240, 490, 990]) {
        assert!(*gap >= Duration::from_millis(min), "gaps {g:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(60), "bounded");
    assert!(r.stderr.contains("HTTP 429"), "{r:?}");
    assert!(r.stderr.contains("after 4 attempts"), "{r:?}");
    assert_eq!(w.inf.secret("dev", "/", KEY), Some(("old".into(), 1)));
}

#[test]
fn infisical_approval_is_pending_restarts_nothing_and_exits_3() {
    let w = world();
    w.inf.with(|s| s.approval = true);
    let mut sb = w.sb;
    // A container that would be restarted, with an engine that cannot be reached: had a
    // restart been attempted, it would say "failed", not "skipped".
    sb.var("DOCKER_HOST", "unix:///nonexistent/audsync-test.sock");
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--sink",
        "infisical",
        "--restart",
        "restart",
        "--container",
        "lambda-server",
        "--output",
        "json",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 3, "{r:?}");
    let j = r.json();
    assert_eq!(j["status"], "pending");
    assert_eq!(j["sinks"][0]["result"], "pending_approval");
    assert!(
        j["sinks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("approval"),
        "{j}"
    );
    assert_eq!(j["containers"][0]["result"], "skipped");
    assert_eq!(
        w.inf.secret("dev", "/", KEY),
        Some(("old".into(), 1)),
        "not live"
    );
    assert_eq!(
        state(&sb)["owed"],
        json!(["lambda-server"]),
        "the restart is owed"
    );

    // Text output says so too.
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("waits for approval"), "{r:?}");
    assert!(r.stdout.contains("pending_approval"), "{r:?}");
}

#[test]
fn infisical_dry_run_and_json_show_target_key_version_old_and_new() {
    let w = world();
    let r = sync(&w.sb, &["--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "sink infisical {PROJECT}/dev/ {KEY} v1: (not an AUD) -> 02020202… [planned]"
        )),
        "{r:?}"
    );
    let r = sync(&w.sb, &["--dry-run", "--output", "json"]);
    assert_eq!(r.code, 3, "{r:?}");
    let j = r.json();
    assert_eq!(j["dry_run"], true);
    assert_eq!(j["aud"], aud(2));
    let s = &j["sinks"][0];
    assert_eq!(
        (
            &s["kind"],
            &s["target"],
            &s["key"],
            &s["old"],
            &s["version"],
            &s["action"],
            &s["result"]
        ),
        (
            &json!("infisical"),
            &json!(format!("{PROJECT}/dev/")),
            &json!(KEY),
            &Value::Null,
            &json!(1),
            &json!("write"),
            &json!("planned")
        )
    );
    assert!(w.inf.writes().is_empty(), "dry run writes nothing");
    assert_eq!(w.inf.secret("dev", "/", KEY), Some(("old".into(), 1)));
}

#[test]
fn infisical_both_sinks_one_failing_nothing_restarts_and_the_next_run_finishes() {
    let w = world();
    w.inf.with(|s| {
        s.deny.insert("edit");
    });
    let mut sb = w.sb;
    sb.var("DOCKER_HOST", "unix:///nonexistent/audsync-test.sock");
    let args = |sinks: &str| -> Vec<String> {
        [
            "sync",
            "--domain",
            HOST,
            "--sink",
            sinks,
            "--restart",
            "restart",
            "--container",
            "lambda-server",
            "--output",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let r = run(sb.cmd().args(args("env,infisical")));
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j["status"], "failed");
    assert_eq!(j["sinks"][0]["result"], "written");
    assert_eq!(j["sinks"][1]["result"], "failed");
    assert_eq!(j["containers"][0]["result"], "skipped", "no restart: {j}");
    assert!(j["error"].as_str().unwrap().contains("WAS written"), "{j}");
    assert!(sb.read_env().contains(&aud(2)));
    assert_eq!(w.inf.secret("dev", "/", KEY), Some(("old".into(), 1)));
    assert_eq!(state(&sb)["owed"], json!(["lambda-server"]));

    // Next run, permission fixed, without a container to act on: the .env is already right,
    // Infisical is written now.
    w.inf.with(|s| s.deny.clear());
    let r = run(sb.cmd().args([
        "sync",
        "--domain",
        HOST,
        "--sink",
        "env,infisical",
        "--restart",
        "none",
        "--output",
        "json",
    ]));
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["sinks"][0]["result"], "unchanged");
    assert_eq!(j["sinks"][1]["result"], "written");
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 2)));

    // The other order: Infisical first and failing -> the .env is not even written.
    let w = world();
    w.inf.with(|s| {
        s.deny.insert("edit");
    });
    let mut sb = w.sb;
    sb.var("DOCKER_HOST", "unix:///nonexistent/audsync-test.sock");
    let r = run(sb.cmd().args(args("infisical,env")));
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j["sinks"][0]["result"], "failed");
    assert_eq!(j["sinks"][1]["result"], "skipped");
    assert_eq!(j["containers"][0]["result"], "skipped");
    assert_eq!(sb.read_env(), ENV);
    w.inf.with(|s| s.deny.clear());
    let r = run(sb.cmd().args([
        "sync",
        "--domain",
        HOST,
        "--sink",
        "infisical,env",
        "--restart",
        "none",
    ]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(sb.read_env().contains(&aud(2)));
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 2)));
}

#[test]
fn infisical_cloudflare_credentials_are_read_from_infisical() {
    let w = world();
    let mut sb = w.sb;
    sb.unset("CLOUDFLARE_API_TOKEN");
    w.inf.put("dev", "/", "CLOUDFLARE_API_TOKEN", TOKEN, 3);
    // `sync` with only the .env sink: the token still comes from Infisical.
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--restart", "none"]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(sb.read_env().contains(&aud(2)));
    assert_eq!(
        w.cf.requests()[0].headers["authorization"],
        format!("Bearer {TOKEN}")
    );
    let read = &w.inf.secret_requests()[0];
    assert_eq!(read.path, "/api/v4/secrets/CLOUDFLARE_API_TOKEN");
    assert_eq!(read.query["projectId"], PROJECT);
    // `get` too.
    let r = run(sb.cmd().args(["get", "--domain", HOST]));
    assert_eq!((r.code, r.stdout.trim()), (0, aud(2).as_str()), "{r:?}");

    // The process env wins: Infisical is not asked.
    let n = w.inf.requests().len();
    sb.var("CLOUDFLARE_API_TOKEN", TOKEN);
    let r = run(sb.cmd().args(["get", "--domain", HOST]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.requests().len(), n);
    // So does the .env file.
    sb.unset("CLOUDFLARE_API_TOKEN");
    sb.write_env(&format!("{ENV}CLOUDFLARE_API_TOKEN={TOKEN}\n"));
    let r = run(sb.cmd().args(["get", "--domain", HOST]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.requests().len(), n);

    // Email + global key from Infisical.
    sb.write_env(ENV);
    w.inf.with(|s| s.secrets.clear());
    w.inf.put("dev", "/", "CLOUDFLARE_EMAIL", EMAIL, 1);
    w.inf.put("dev", "/", "CLOUDFLARE_API_KEY", GLOBAL_KEY, 1);
    let before = w.cf.requests().len();
    let r = run(sb.cmd().args(["get", "--domain", HOST]));
    assert_eq!(r.code, 0, "{r:?}");
    let h = &w.cf.requests()[before].headers;
    assert_eq!(h["x-auth-email"], EMAIL);
    assert_eq!(h["x-auth-key"], GLOBAL_KEY);

    // Nowhere at all: a usage error naming every place looked at.
    w.inf.with(|s| s.secrets.clear());
    let r = run(sb.cmd().args(["get", "--domain", HOST]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("nor in Infisical")
            && r.stderr
                .contains(&format!("project {PROJECT}, environment dev, path /")),
        "{r:?}"
    );

    // Bad input is reported before any request to Infisical.
    let n = w.inf.requests().len();
    let r = run(sb.cmd().args(["get", "--domain", "not a host"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(w.inf.requests().len(), n);
}

/// Variables to unset, variables to set, the expected message.
type HalfConfig = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn infisical_settings_follow_the_precedence_and_half_configs_are_usage_errors() {
    let w = world();
    let mut sb = w.sb;
    // Everything Infisical from the .env file.
    for k in [
        "INFISICAL_HOST",
        "INFISICAL_PROJECT_ID",
        "INFISICAL_CLIENT_ID",
        "INFISICAL_CLIENT_SECRET",
    ] {
        sb.unset(k);
    }
    w.inf.put("staging", "/x", KEY, "old", 1);
    sb.write_env(&format!(
        "{ENV}INFISICAL_HOST={}\nINFISICAL_PROJECT_ID={PROJECT}\nINFISICAL_CLIENT_ID={CLIENT_ID}\nINFISICAL_CLIENT_SECRET={CLIENT_SECRET}\nINFISICAL_ENVIRONMENT=dev\nINFISICAL_SECRET_PATH=/x\nAUDSYNC_SINK=infisical\n",
        w.inf.url()
    ));
    // Process env beats the .env file; the flag beats both.
    sb.var("INFISICAL_ENVIRONMENT", "prod");
    let r = run(sb.cmd().args([
        "sync",
        "--domain",
        HOST,
        "--restart",
        "none",
        "--infisical-environment",
        "staging",
    ]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.secret("staging", "/x", KEY), Some((aud(2), 2)));
    let r = run(sb
        .cmd()
        .args(["sync", "--domain", HOST, "--restart", "none"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.secret("prod", "/x", KEY), Some((aud(2), 1)));
    assert!(
        sb.read_env().contains("CLOUDFLARE_AUD_TAG=old"),
        "--sink from .env: infisical only"
    );

    // Half configurations.
    let cases: [HalfConfig; 5] = [
        (
            &["INFISICAL_PROJECT_ID"],
            &[],
            "Infisical credentials are set but no project: set INFISICAL_PROJECT_ID",
        ),
        (
            &["INFISICAL_CLIENT_ID", "INFISICAL_CLIENT_SECRET"],
            &[],
            "--sink infisical needs INFISICAL_PROJECT_ID",
        ),
        (
            &[],
            &[
                ("INFISICAL_PROJECT_ID", PROJECT),
                ("INFISICAL_HOST", "ftp://x"),
            ],
            "INFISICAL_HOST must be an http(s) URL",
        ),
        (
            &["INFISICAL_CLIENT_SECRET"],
            &[("INFISICAL_PROJECT_ID", PROJECT)],
            "INFISICAL_CLIENT_ID is set but INFISICAL_CLIENT_SECRET is not",
        ),
        (
            &["INFISICAL_CLIENT_ID", "INFISICAL_CLIENT_SECRET"],
            &[("INFISICAL_PROJECT_ID", PROJECT)],
            "no Infisical credentials",
        ),
    ];
    for (unset, set, msg) in cases {
        let mut sb = Sandbox::with_cloudflare(&w.cf);
        sb.write_env(ENV);
        sb.var("INFISICAL_HOST", &w.inf.url())
            .var("INFISICAL_CLIENT_ID", CLIENT_ID)
            .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
        for k in unset {
            sb.unset(k);
        }
        for (k, v) in set {
            sb.var(k, v);
        }
        let r = sync(&sb, &[]);
        assert_eq!(r.code, 2, "{msg}: {r:?}");
        assert!(r.stderr.contains(msg), "{msg}: {r:?}");
    }
}

#[test]
fn infisical_help_lists_the_settings() {
    let sb = Sandbox::new();
    let r = run(sb.cmd().args(["sync", "--help"]));
    for s in [
        "INFISICAL_HOST",
        "INFISICAL_PROJECT_ID",
        "INFISICAL_ENVIRONMENT",
        "INFISICAL_SECRET_PATH",
        "AUDSYNC_INFISICAL_API",
        "INFISICAL_CLIENT_SECRET",
        "read from Infisical",
    ] {
        assert!(r.stdout.contains(s), "missing {s:?}:\n{}", r.stdout);
    }
}

#[test]
fn infisical_no_secret_leaks_at_any_verbosity() {
    let w = world();
    let mut sb = w.sb;
    sb.unset("CLOUDFLARE_API_TOKEN");
    w.inf.put("dev", "/", "CLOUDFLARE_API_TOKEN", TOKEN, 1);
    w.inf.with(|s| s.expire_next_tokens = 1); // exercise the re-login path too
    let mut outputs = Vec::new();
    for args in [
        vec!["-vvv"],
        vec!["-vvv", "--output", "json"],
        vec!["-vvv", "--dry-run"],
        vec!["-vvv", "--log-format", "json"],
    ] {
        let mut c = sb.cmd();
        c.args([
            "sync",
            "--domain",
            HOST,
            "--sink",
            "env,infisical",
            "--restart",
            "none",
        ])
        .args(&args);
        let r = run(&mut c);
        assert!(r.code == 0 || r.code == 3, "{args:?}: {r:?}");
        assert!(r.stderr.contains("infisical request"), "trace is on: {r:?}");
        outputs.push(r);
    }
    // Failures print no secret either: a wrong client secret, and a denied write.
    sb.var("INFISICAL_CLIENT_SECRET", "wrong-client-secret-SECRET");
    outputs.push(sync(&sb, &["-vvv"]));
    sb.var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
    w.inf.put("dev", "/", KEY, "old", 9);
    w.inf.with(|s| {
        s.deny.insert("edit");
    });
    outputs.push(sync(&sb, &["-vvv", "--output", "json"]));
    assert_eq!(outputs.last().unwrap().code, 1);

    let issued = w.inf.with(|s| s.issued.clone());
    assert!(issued.len() >= 5, "{issued:?}");
    for r in &outputs {
        let text = both(r);
        for secret in [CLIENT_SECRET, TOKEN, "wrong-client-secret-SECRET"]
            .into_iter()
            .chain(issued.iter().map(String::as_str))
        {
            assert!(!text.contains(secret), "{secret} leaked: {r:?}");
        }
    }
    let _ = cloudflare::ACCOUNT;
}

/// INFISICAL_TOKEN (a ready access token) never shows, at -vvv, in text or JSON output or
/// JSON logs, when it works and when Infisical refuses it (401 unknown, 403 denied, 403 expired).
#[test]
fn infisical_static_token_never_leaks_at_any_verbosity() {
    let w = world();
    let mut sb = w.sb;
    sb.unset("INFISICAL_CLIENT_ID")
        .unset("INFISICAL_CLIENT_SECRET")
        .var("INFISICAL_TOKEN", STATIC_TOKEN);
    let run_with = |sb: &Sandbox, args: &[&str]| {
        let mut c = sb.cmd();
        c.args([
            "sync",
            "--domain",
            HOST,
            "--sink",
            "env,infisical",
            "--restart",
            "none",
        ])
        .args(args);
        run(&mut c)
    };
    let mut outputs = Vec::new();
    for args in [
        vec!["-vvv", "--dry-run"],
        vec!["-vvv", "--dry-run", "--output", "json"],
        vec!["-vvv", "--dry-run", "--log-format", "json"],
        vec!["-vvv", "--output", "json", "--log-format", "json"],
    ] {
        let r = run_with(&sb, &args);
        // A dry run with changes to make exits 3 (pending).
        let expected = if args.contains(&"--dry-run") { 3 } else { 0 };
        assert_eq!(r.code, expected, "{args:?}: {r:?}");
        assert!(r.stderr.contains("infisical request"), "trace is on: {r:?}");
        outputs.push(r);
    }
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 2)));
    assert_eq!(w.inf.logins(), 0);

    // Refused: 403 permission, 403 expired, 401 unknown; text and JSON each.
    w.inf.put("dev", "/", KEY, "old", 7);
    type Setup = fn(&mut crate::support::infisical::InfState);
    let refusals: [(Setup, &str); 3] = [
        (
            |s| {
                s.deny.insert("read");
            },
            "HTTP 403 PermissionDenied",
        ),
        (
            |s| {
                s.deny.clear();
                s.expired.insert(STATIC_TOKEN.into());
            },
            "INFISICAL_TOKEN has expired",
        ),
        (
            |s| {
                s.expired.clear();
                s.static_tokens.clear();
            },
            "HTTP 401",
        ),
    ];
    for (setup, says) in refusals {
        w.inf.with(setup);
        for args in [
            vec!["-vvv"],
            vec!["-vvv", "--output", "json", "--log-format", "json"],
        ] {
            let r = run_with(&sb, &args);
            assert_eq!(r.code, 1, "{args:?}: {r:?}");
            assert!(r.stderr.contains(says), "{says:?}: {r:?}");
            outputs.push(r);
        }
    }

    // The token really went over the wire in every run, so its absence above means something.
    let sent = w
        .inf
        .secret_requests()
        .iter()
        .filter(|r| r.headers.get("authorization") == Some(&format!("Bearer {STATIC_TOKEN}")))
        .count();
    assert!(sent >= outputs.len(), "{sent} requests with the token");
    for r in &outputs {
        assert!(
            !both(r).contains(STATIC_TOKEN),
            "INFISICAL_TOKEN leaked: {r:?}"
        );
        assert!(
            !both(r).contains(TOKEN),
            "CLOUDFLARE_API_TOKEN leaked: {r:?}"
        );
    }
}

/// Removes the container on drop (also when the test panics).
/// Both sinks, one failing, with a real container on the Docker engine: it is not restarted
/// until every sink holds the value; the next run writes the rest and restarts it once.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn infisical_both_sinks_one_failing_real_container() {
    crate::require_docker!(not_podman: "not checked on Podman");
    let d = Docker::new();
    let name = d.run("inf", &["--stop-timeout", "1", &image(), "sleep", "3600"]);
    let first_start = started_at(&name);

    let w = world();
    w.inf.with(|s| {
        s.deny.insert("edit");
    });
    let args = [
        "sync",
        "--domain",
        HOST,
        "--sink",
        "env,infisical",
        "--container",
        &name,
        "--output",
        "json",
    ];
    let r = run(w.sb.cmd().args(args));
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j["sinks"][0]["result"], "written");
    assert_eq!(j["sinks"][1]["result"], "failed");
    assert_eq!(j["containers"][0]["result"], "skipped");
    assert_eq!(started_at(&name), first_start, "not restarted");
    assert_eq!(state(&w.sb)["owed"], json!([name.clone()]));

    w.inf.with(|s| s.deny.clear());
    let r = run(w.sb.cmd().args(args));
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["sinks"][0]["result"], "unchanged");
    assert_eq!(j["sinks"][1]["result"], "written");
    assert_eq!(j["containers"][0]["action"], "restart");
    assert_eq!(j["containers"][0]["result"], "done");
    let second_start = started_at(&name);
    assert_ne!(
        second_start, first_start,
        "restarted by the run that finished"
    );
    assert_eq!(state(&w.sb)["owed"], json!([]));

    // In sync now: no further restart.
    let r = run(w.sb.cmd().args(args));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "in_sync");
    assert_eq!(started_at(&name), second_start);
}

/// An approval-held write restarts nothing (exit 3); once the change is approved and merged in
/// Infisical, the next run restarts the container (real Docker engine; #[ignore]d).
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn infisical_approval_then_merge_restarts_real_container_once() {
    crate::require_docker!(not_podman: "not checked on Podman");
    let d = Docker::new();
    let name = d.run(
        "infapr",
        &["--stop-timeout", "1", &image(), "sleep", "3600"],
    );
    let first_start = started_at(&name);
    let w = world();
    w.inf.with(|s| s.approval = true);
    let args = [
        "sync",
        "--domain",
        HOST,
        "--sink",
        "infisical",
        "--container",
        &name,
    ];
    let r = run(w.sb.cmd().args(args));
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("waits for approval"), "{r:?}");
    assert_eq!(started_at(&name), first_start, "nothing restarted");

    // A reviewer approves and merges the change request.
    w.inf.with(|s| s.approval = false);
    w.inf.put("dev", "/", KEY, &aud(2), 2);
    let r = run(w.sb.cmd().args(args).args(["--output", "json"]));
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["sinks"][0]["result"], "unchanged");
    assert_eq!(j["containers"][0]["result"], "done");
    assert_ne!(started_at(&name), first_start, "the owed restart happened");
    assert_eq!(state(&w.sb)["owed"], json!([]));
}

#[test]
fn an_infisical_answer_over_the_cap_is_an_error_that_names_the_cap() {
    // A secret read answered with 9 MiB: not "no secret", not an empty answer.
    let w = world();
    w.inf.fault(Fault::HugeBody);
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("larger than the 8 MiB"), "{r:?}");
    assert!(
        w.inf.writes().is_empty(),
        "nothing written on a guess: {r:?}"
    );
    assert_eq!(w.inf.secret("dev", "/", KEY), Some(("old".into(), 1)));
    // The login answered with 9 MiB: the cap is named, not "no accessToken".
    let w = world();
    w.inf.with(|s| s.huge_login = true);
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("larger than the 8 MiB"), "{r:?}");
    assert!(!r.stderr.contains("without an accessToken"), "{r:?}");
    assert!(!both(&r).contains(CLIENT_SECRET), "{r:?}");
    assert_eq!(w.inf.secret("dev", "/", KEY), Some(("old".into(), 1)));
    // Both are one-off faults: the next run syncs.
    let r = sync(&w.sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(w.inf.secret("dev", "/", KEY), Some((aud(2), 2)));
}

/// The configuration is built once per run, in phases: the layers, the one build (which checks
/// everything before any request), then the Cloudflare credential read from Infisical with one
/// login and installed. `-vv` logs each build with the process's count.
#[test]
fn the_configuration_is_built_once_and_infisical_logged_into_once() {
    let w = world();
    let mut sb = w.sb;
    sb.unset("CLOUDFLARE_API_TOKEN");
    w.inf.put("dev", "/", "CLOUDFLARE_API_TOKEN", TOKEN, 3);
    let builds = |r: &Run| r.stderr.matches("configuration built").count();
    for (what, args) in [
        (
            "sync",
            vec![
                "sync",
                "-vv",
                "--domain",
                HOST,
                "--sink",
                "infisical",
                "--restart",
                "none",
            ],
        ),
        ("get", vec!["get", "-vv", "--domain", HOST]),
    ] {
        let logins = w.inf.logins();
        let r = run(sb.cmd().args(&args));
        assert_eq!(r.code, 0, "{what}: {r:?}");
        assert_eq!(builds(&r), 1, "{what}: built once: {}", r.stderr);
        assert!(r.stderr.contains("builds=1"), "{what}: {}", r.stderr);
        assert_eq!(w.inf.logins(), logins + 1, "{what}: one login");
        assert!(
            !r.stderr.contains(TOKEN),
            "{what}: the token is never logged"
        );
    }
    // A bad flag: reported by the one build, before any request to Infisical.
    let n = w.inf.requests().len();
    let r = run(sb
        .cmd()
        .args(["sync", "-vv", "--domain", HOST, "--settle", "soon"]));
    assert_eq!(r.code, 2, "{r:?}");
    let r = run(sb.cmd().args(["sync", "-vv", "--domain", "not a host"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(builds(&r) <= 1, "{}", r.stderr);
    assert_eq!(w.inf.requests().len(), n);
}
