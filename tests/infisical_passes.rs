//! The Infisical sink across passes, through the real binary against the fakes: a write held
//! for approval is submitted once and remembered in the state file; a refused login holds off
//! every further login (sync, cron-like repeated runs, the credentials read, and `watch`).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::infisical::{CLIENT_ID, CLIENT_SECRET, FakeInfisical, PROJECT};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
const BAD_SECRET: &str = "wrong-client-secret-SECRET-77";

/// Cloudflare serving aud(2) for HOST; Infisical holding "old" v1 at dev:/; Universal Auth.
fn world() -> (FakeCloudflare, FakeInfisical, Sandbox) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let inf = FakeInfisical::start();
    inf.put("dev", "/", KEY, "old", 1);
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("INFISICAL_HOST", &inf.url())
        .var("INFISICAL_PROJECT_ID", PROJECT)
        .var("INFISICAL_CLIENT_ID", CLIENT_ID)
        .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
    sb.write_env("OTHER=1\n");
    (cf, inf, sb)
}

/// `sync --sink infisical --output json -v`, restarting `lambda-server` through an engine that
/// cannot be reached: a restart that is attempted says "failed", one held back says "skipped".
fn sync(sb: &Sandbox) -> Run {
    let mut c = sb.cmd();
    c.env("DOCKER_HOST", "unix:///nonexistent/audsync-test.sock")
        .args(["-v", "sync", "--domain", HOST, "--sink", "infisical"])
        .args(["--restart", "restart", "--container", "lambda-server"])
        .args(["--output", "json"]);
    run(&mut c)
}

fn state(sb: &Sandbox) -> Value {
    serde_json::from_str(&std::fs::read_to_string(sb.path(".env.audsync-state.json")).unwrap())
        .unwrap()
}

fn state_text(sb: &Sandbox) -> String {
    std::fs::read_to_string(sb.path(".env.audsync-state.json")).unwrap_or_default()
}

#[test]
fn infisical_pending_approval_is_submitted_once_then_restarts_when_merged() {
    let (_cf, inf, sb) = world();
    inf.with(|s| s.approval = true);

    let r = sync(&sb);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(inf.writes().len(), 1, "{:?}", inf.writes());
    let pending = &state(&sb)["infisical_pending"];
    assert_eq!(pending["value"], aud(2), "{pending}");
    assert_eq!(pending["key"], KEY);
    assert_eq!(pending["location"], format!("{PROJECT}/dev/"));
    let request = inf.with(|s| s.change_requests[0].0.clone());
    assert_eq!(
        pending["request"],
        request.as_str(),
        "the change request's slug"
    );

    // Two more passes while the request is open: no new change request, still pending.
    for _ in 0..2 {
        let r = sync(&sb);
        assert_eq!(r.code, 3, "{r:?}");
        let j = r.json();
        assert_eq!(j["status"], "pending");
        assert_eq!(j["sinks"][0]["result"], "pending_approval");
        let detail = j["sinks"][0]["error"].as_str().unwrap();
        assert!(detail.contains("still waits for approval"), "{detail}");
        assert!(detail.contains(&request), "{detail}");
        assert!(detail.contains("not submitted again"), "{detail}");
        assert!(
            detail.contains("infisical_pending"),
            "how to resubmit: {detail}"
        );
        assert_eq!(j["containers"][0]["result"], "skipped", "nothing restarted");
    }
    assert_eq!(inf.writes().len(), 1, "submitted once: {:?}", inf.writes());
    assert_eq!(inf.with(|s| s.change_requests.len()), 1);

    // A reviewer approves and merges: the next pass sees the value, restarts (the engine is
    // unreachable here, so the attempted restart fails) and forgets the pending write.
    assert_eq!(inf.merge_change_requests(), 1);
    let r = sync(&sb);
    let j = r.json();
    assert_eq!(j["sinks"][0]["result"], "unchanged", "{r:?}");
    assert_eq!(j["sinks"][0]["old"], aud(2));
    // With --restart restart the engine is asked only when a restart is owed or due, so
    // "failed" (not "none", not "skipped") is the restart being attempted.
    assert_eq!(
        j["containers"][0]["result"], "failed",
        "restart attempted: {r:?}"
    );
    assert_eq!(state(&sb)["owed"], serde_json::json!(["lambda-server"]));
    assert!(r.stderr.contains("live now"), "logged: {r:?}");
    assert_eq!(inf.writes().len(), 1);
    assert!(
        state(&sb).get("infisical_pending").is_none(),
        "{}",
        state(&sb)
    );
}

#[test]
fn infisical_desired_value_changing_while_pending_is_written_once() {
    let (cf, inf, mut sb) = world();
    inf.with(|s| s.approval = true);
    sb.var("AUDSYNC_RESTART", "none");
    let pass = |sb: &Sandbox| {
        let r = run(sb
            .cmd()
            .args(["-v", "sync", "--domain", HOST, "--sink", "infisical"]));
        assert_eq!(r.code, 3, "{r:?}");
        r
    };
    pass(&sb);
    assert_eq!(inf.writes().len(), 1);

    // The application is recreated: a new AUD while the first change request is still open.
    cf.set_aud(0, &aud(3));
    let r = pass(&sb);
    assert!(r.stderr.contains("desired value changed"), "logged: {r:?}");
    let writes = inf.writes();
    assert_eq!(writes.len(), 2, "one new write: {writes:?}");
    assert_eq!(writes[1].body.as_ref().unwrap()["secretValue"], aud(3));
    let pending = &state(&sb)["infisical_pending"];
    assert_eq!(pending["value"], aud(3), "{pending}");
    let second = inf.with(|s| s.change_requests[1].0.clone());
    assert_eq!(pending["request"], second.as_str());

    // And that one is not submitted again either.
    pass(&sb);
    assert_eq!(inf.writes().len(), 2);

    // Merged (both, in order): the latest value is live, nothing pending any more.
    inf.merge_change_requests();
    let r = run(sb
        .cmd()
        .args(["sync", "--domain", HOST, "--sink", "infisical"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(inf.secret("dev", "/", KEY).unwrap().0, aud(3));
    assert_eq!(inf.writes().len(), 2);
    assert!(state(&sb).get("infisical_pending").is_none());
}

#[test]
fn infisical_refused_login_holds_off_later_runs_until_the_holdoff_passed() {
    let (_cf, inf, mut sb) = world();
    sb.var("INFISICAL_CLIENT_SECRET", BAD_SECRET);

    let r = sync(&sb);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(inf.logins(), 1);
    assert!(r.stderr.contains("Invalid credentials"), "{r:?}");
    assert!(
        r.stderr.contains("not retrying the login until")
            && r.stderr.contains("UTC to avoid the lockout"),
        "{r:?}"
    );
    let refused = &state(&sb)["infisical_login_refused"];
    assert_eq!(refused["client_id"], CLIENT_ID, "{refused}");
    assert_eq!(refused["host"], inf.url().trim_end_matches('/'));

    // The next (cron) run does not log in at all, and says why and until when.
    let r = sync(&sb);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(inf.logins(), 1, "no second login: {r:?}");
    assert!(r.stderr.contains("was refused at"), "{r:?}");
    assert!(r.stderr.contains("not retrying the login until"), "{r:?}");
    assert!(r.stderr.contains("to avoid the lockout"), "{r:?}");
    assert!(
        r.stderr.contains("Invalid credentials"),
        "the original answer: {r:?}"
    );
    assert!(
        r.json()["hint"]
            .as_str()
            .unwrap()
            .contains(".audsync-state.json"),
        "where it is remembered: {r:?}"
    );

    // Fixed secret, hold-off not over: still no login.
    sb.var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
    let r = sync(&sb);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(inf.logins(), 1);

    // Hold-off over (the knob stands in for five minutes passing): the login succeeds, the
    // value is written, and the refusal is forgotten.
    sb.var("AUDSYNC_INFISICAL_LOGIN_HOLDOFF", "0");
    let r = sync(&sb);
    assert_eq!(inf.logins(), 2, "{r:?}");
    assert_eq!(r.json()["sinks"][0]["result"], "written", "{r:?}");
    assert_eq!(inf.secret("dev", "/", KEY).unwrap().0, aud(2));
    assert!(
        state(&sb).get("infisical_login_refused").is_none(),
        "{}",
        state(&sb)
    );

    for text in [state_text(&sb), r.stdout, r.stderr] {
        assert!(
            !text.contains(BAD_SECRET) && !text.contains(CLIENT_SECRET),
            "{text}"
        );
        assert!(!text.contains("inf-access-token"), "{text}");
    }
}

#[test]
fn infisical_refused_login_for_the_cloudflare_credentials_is_held_off_too() {
    let (_cf, inf, mut sb) = world();
    inf.put(
        "dev",
        "/",
        "CLOUDFLARE_API_TOKEN",
        crate::support::cloudflare::TOKEN,
        1,
    );
    sb.unset("CLOUDFLARE_API_TOKEN")
        .var("INFISICAL_CLIENT_SECRET", BAD_SECRET);
    let get = |sb: &Sandbox| {
        let r = run(sb
            .cmd()
            .args(["sync", "--domain", HOST, "--restart", "none"]));
        assert_eq!(r.code, 1, "{r:?}");
        r
    };
    get(&sb);
    assert_eq!(inf.logins(), 1);
    let r = get(&sb);
    assert_eq!(inf.logins(), 1, "held off: {r:?}");
    assert!(r.stderr.contains("not retrying the login until"), "{r:?}");

    // With --state-file the refusal lives there, and is respected there.
    let other = sb.path("elsewhere.json");
    let other = other.to_str().unwrap();
    let with_state = |sb: &Sandbox| {
        run(sb.cmd().args([
            "sync",
            "--domain",
            HOST,
            "--restart",
            "none",
            "--state-file",
            other,
        ]))
    };
    with_state(&sb);
    assert_eq!(
        inf.logins(),
        2,
        "a different state file knows nothing of the first refusal"
    );
    let r = with_state(&sb);
    assert_eq!(inf.logins(), 2, "{r:?}");
    assert!(
        std::fs::read_to_string(other)
            .unwrap()
            .contains("infisical_login_refused")
    );
}

#[test]
fn infisical_login_holdoff_knob_is_validated() {
    let (_cf, inf, mut sb) = world();
    sb.var("AUDSYNC_INFISICAL_LOGIN_HOLDOFF", "soon");
    let r = sync(&sb);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("AUDSYNC_INFISICAL_LOGIN_HOLDOFF"),
        "{r:?}"
    );
    assert_eq!(inf.logins(), 0);
}

/// `watch` with a short interval after a refused login: the loop keeps failing (and backing
/// off), but only the first pass reaches the login endpoint, so the identity is never locked.
#[test]
fn infisical_watch_does_not_log_in_again_after_a_refusal() {
    let (_cf, inf, mut sb) = world();
    sb.var("INFISICAL_CLIENT_SECRET", BAD_SECRET);
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("audsync"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .current_dir(sb.dir())
        .args([
            "watch",
            "--domain",
            HOST,
            "--sink",
            "infisical",
            "--restart",
            "none",
        ])
        .args(["--interval", "200ms", "--jitter", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Backoff 200ms, 400ms, 800ms, ...: four passes take about 1.4 s.
    let start = Instant::now();
    let held_off = || {
        std::fs::read_to_string(sb.path(".env.audsync-state.json"))
            .is_ok_and(|s| s.contains("infisical_login_refused"))
    };
    while start.elapsed() < Duration::from_secs(4) || !held_off() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no refusal recorded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = reader.join().unwrap();
    let held = log.matches("was refused at").count();
    assert!(held >= 2, "at least two passes were held off:\n{log}");
    assert_eq!(inf.logins(), 1, "{log}");
    assert!(!inf.with(|s| s.locked));
    assert!(!log.contains(BAD_SECRET), "{log}");
}
