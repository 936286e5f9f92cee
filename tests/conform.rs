//! Issue 12: behave as the real Cloudflare, cloudflared and Infisical do. Each test names the
//! rule it holds the program (and the fakes) to; the sources are in the notes of the issue.

use serde_json::{Value, json};

use crate::support::access::{FakeAccess, TestKey, now};
use crate::support::cloudflare::{self, ACCOUNT, FakeCloudflare, app, aud, uuid};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const TUNNEL: &str = "c0ffee00-0000-4000-8000-0000000000aa";

fn sync(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--restart", "none"])
        .args(extra);
    run(&mut c)
}

// ------------------------------------------------------------------ Cloudflare: listings

/// Access apps list at 1000 a page (the endpoint's maximum; the fake refuses more): a cold
/// lookup of a host the `domain` filter misses, over 5,000 applications, is 1 filtered request
/// plus 5 pages.
#[test]
fn cold_lookup_over_5000_apps_takes_at_most_6_requests() {
    let mut apps: Vec<Value> = (1000..6000)
        .map(|i| app(i, &format!("svc{i}.example.com"), &aud(3)))
        .collect();
    // Found only through its destinations: the exact `domain` filter does not see it.
    apps[4321]["destinations"] = json!([{"type": "public", "uri": HOST}]);
    apps[4321]["aud"] = json!(aud(7));
    let cf = FakeCloudflare::start(apps);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(sb.read_env().contains(&aud(7)));
    let reqs = cf.requests();
    assert!(reqs.len() <= 6, "{} requests", reqs.len());
    assert!(
        reqs.iter()
            .all(|q| q.query.get("per_page").map(String::as_str) == Some("1000")),
        "{:?}",
        reqs.iter().map(|q| q.query.clone()).collect::<Vec<_>>()
    );
}

/// `GET /accounts` allows per_page 5..=50: account detection asks for 50 and is not refused.
#[test]
fn account_detection_asks_for_an_allowed_page_size() {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.unset("CLOUDFLARE_ACCOUNT_ID");
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let acc = cf
        .requests()
        .into_iter()
        .find(|q| q.path == "/accounts")
        .expect("account detection");
    assert_eq!(acc.query.get("per_page").map(String::as_str), Some("50"));
}

/// The list schema requires only `domain` and `type`: an item without `id` is skipped with a
/// warning naming it, and the page still serves the binding.
#[test]
fn a_list_item_without_id_is_skipped_with_a_warning_naming_it() {
    let mut broken = app(9, "broken.example.com", &aud(9));
    broken.as_object_mut().unwrap().remove("id");
    broken["name"] = json!("Broken Without Id");
    let cf = FakeCloudflare::start(vec![broken, app(2, HOST, &aud(2))]);
    cf.with(|s| s.ignore_domain_filter = true);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(sb.read_env().contains(&aud(2)));
    assert!(r.stderr.contains("Broken Without Id"), "{r:?}");
}

/// `self_hosted_domains` is past its end of support: read only when neither `destinations` nor
/// `domain` name a host.
#[test]
fn self_hosted_domains_only_as_a_last_resort() {
    let mut a = app(2, HOST, &aud(2));
    a.as_object_mut().unwrap().remove("destinations");
    a["self_hosted_domains"] = json!(["stale.example.com"]);
    let cf = FakeCloudflare::start(vec![a]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let r = sync(&sb, &[]);
    assert_eq!(
        r.code, 0,
        "the domain wins over stale self_hosted_domains: {r:?}"
    );
    assert!(sb.read_env().contains(&aud(2)));
}

// ------------------------------------------------------------------ Cloudflare: setup

fn setup_sandbox(cf: &FakeCloudflare) -> Sandbox {
    let mut sb = Sandbox::with_cloudflare(cf);
    sb.write_env("OTHER=1\n");
    sb.var("CLOUDFLARE_ACCESS_EMAILS", "alice@example.com");
    sb
}

fn setup(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["setup", "--domain", HOST, "--restart", "none"])
        .args(extra);
    run(&mut c)
}

/// `session_duration` is a Go duration (units ns, us/µs, ms, s, m, h): `1d` and `30min` are a
/// usage error naming the valid form, before any request.
#[test]
fn setup_session_duration_takes_exactly_go_duration_units() {
    let cf = FakeCloudflare::start(vec![]);
    let sb = setup_sandbox(&cf);
    for bad in ["1d", "30min", "1H", "", "5", "1 h"] {
        let r = setup(&sb, &["--session-duration", bad]);
        assert_eq!(r.code, 2, "{bad:?}: {r:?}");
        assert!(
            r.stderr.contains("--session-duration") && r.stderr.contains("2h45m"),
            "{bad:?}: {r:?}"
        );
    }
    assert!(cf.requests().is_empty());
    for good in ["2h45m", "30m", "1.5h", "300ms", "24h"] {
        let r = setup(&sb, &["--session-duration", good, "--dry-run"]);
        assert_eq!(r.code, 3, "{good:?}: {r:?}");
    }
}

/// The reusable-policies endpoint lists reusable policies only; `reusable` is optional in the
/// schema, so a policy without it is still found by name.
#[test]
fn setup_finds_a_reusable_policy_by_name_without_the_reusable_field() {
    let cf = FakeCloudflare::start(vec![]);
    let existing = "77777777-1111-4000-8000-000000000000";
    cf.with(|s| {
        s.policies.push(json!({"id": existing, "name": "Standard Access Policy", "decision": "allow", "include": [{"everyone": {}}]}));
    });
    let mut sb = setup_sandbox(&cf);
    sb.unset("CLOUDFLARE_ACCESS_EMAILS");
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let created = cf
        .requests()
        .into_iter()
        .filter(|q| q.method == "POST")
        .collect::<Vec<_>>();
    assert_eq!(created.len(), 1, "only the application: {created:?}");
    assert_eq!(
        created[0].body.as_ref().unwrap()["policies"],
        json!([{"id": existing, "precedence": 1}])
    );
}

// ------------------------------------------------------------------ Cloudflare: tunnel

fn tunnel_fake(rule_access: Value) -> FakeCloudflare {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let config = json!({
        "ingress": [
            {"hostname": HOST, "service": "http://lambda:8080", "originRequest": {"access": rule_access}},
            {"hostname": "web.example.com", "service": "http://web:80"},
            {"service": "http_status:404"}
        ]
    });
    cf.with(|s| {
        s.tunnels.insert(
            TUNNEL.into(),
            cloudflare::tunnel(TUNNEL, "cloudflare", config),
        );
    });
    cf
}

fn puts(cf: &FakeCloudflare) -> Vec<cloudflare::Recorded> {
    cf.requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect()
}

/// cloudflared refuses `required: true` + `audTag` without `teamName` (and then applies no
/// remote configuration at all). The pass fills the team from CLOUDFLARE_TEAM_NAME, keeps
/// `environment`, and the PUT follows its GET directly.
#[test]
fn tunnel_rule_required_without_team_gets_the_configured_team() {
    let cf = tunnel_fake(json!({"required": true, "environment": "fed"}));
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("CLOUDFLARE_TUNNEL_ID", TUNNEL)
        .var("CLOUDFLARE_TEAM_NAME", "myteam");
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let r = sync(&sb, &["--output", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["tunnel"]["result"], "updated", "{r:?}");
    let p = puts(&cf);
    assert_eq!(p.len(), 1, "{p:?}");
    let access = &p[0].body.as_ref().unwrap()["config"]["ingress"][0]["originRequest"]["access"];
    assert_eq!(
        access,
        &json!({"required": true, "environment": "fed", "teamName": "myteam", "audTag": [aud(2)]})
    );
    // GET right before PUT: nothing in between.
    let reqs = cf.requests();
    let i = reqs.iter().position(|q| q.method == "PUT").unwrap();
    assert_eq!(reqs[i - 1].method, "GET");
    assert!(reqs[i - 1].path.ends_with("/configurations"));
}

/// Without a team name configured, the rule is refused with the fix: nothing is written that
/// cloudflared would refuse.
#[test]
fn tunnel_rule_required_without_team_and_none_configured_is_refused_with_the_fix() {
    let cf = tunnel_fake(json!({"required": true}));
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("CLOUDFLARE_TUNNEL_ID", TUNNEL);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let r = sync(&sb, &["--output", "json"]);
    assert!(puts(&cf).is_empty(), "{r:?}");
    let j = r.json();
    assert_eq!(j["tunnel"]["result"], "skipped", "{r:?}");
    let detail = j["tunnel"]["detail"].as_str().unwrap_or("");
    assert!(detail.contains("CLOUDFLARE_TEAM_NAME"), "{r:?}");
    // The AUD itself was still written.
    assert!(sb.read_env().contains(&aud(2)));
}

// ------------------------------------------------------------------ Cloudflare: verify

struct Chain {
    cf: FakeCloudflare,
    fa: FakeAccess,
    sb: Sandbox,
}

fn chain(keys: &[&TestKey]) -> Chain {
    let fa = FakeAccess::start(HOST, &aud(2), keys);
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("CLOUDFLARE_AUTH_DOMAIN", &fa.team_url())
        .var("AUDSYNC_URL", &fa.host_url());
    sb.write_env(&format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)));
    Chain { cf, fa, sb }
}

fn verify(c: &Chain, extra: &[&str]) -> Run {
    let mut cmd = c.sb.cmd();
    cmd.args(["verify", "--domain", HOST]).args(extra);
    run(&mut cmd)
}

fn line<'a>(r: &'a Run, check: &str) -> &'a str {
    r.stdout
        .lines()
        .find(|l| l.starts_with(check))
        .unwrap_or_else(|| panic!("no {check} line: {r:?}"))
}

fn iso(t: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64),
    )
    .to_string()
}

/// `verify` checks the credential itself: `GET /user/tokens/verify` (or the account endpoint
/// for an account-owned token); not active fails, expiry within 14 days warns.
#[test]
fn verify_checks_the_cloudflare_credential() {
    let key = TestKey::generate("k1");
    let c = chain(&[&key]);
    let r = verify(&c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r, "credential").contains(" ok "), "{r:?}");
    assert!(
        c.cf.with(|s| s.verifies.iter().any(|q| q.path == "/user/tokens/verify")),
        "{r:?}"
    );

    c.cf.with(|s| {
        s.token_verify =
            json!({"id": "t1", "status": "active", "expires_on": iso(now() + 3 * 86400)})
    });
    let r = verify(&c, &[]);
    assert_eq!(r.code, 0, "a warning does not fail verify: {r:?}");
    assert!(line(&r, "credential").contains("expires"), "{r:?}");
    assert!(r.stdout.contains("warning"), "{r:?}");

    c.cf.with(|s| s.token_verify = json!({"id": "t1", "status": "expired"}));
    let r = verify(&c, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(line(&r, "credential").contains("FAIL"), "{r:?}");
    assert!(line(&r, "credential").contains("expired"), "{r:?}");

    // An account-owned token is checked at /accounts/{id}/tokens/verify.
    c.cf.with(|s| {
        s.token_verify = json!({"id": "t2", "status": "active"});
        s.account_owned_token = true;
    });
    let r = verify(&c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r, "credential").contains(" ok "), "{r:?}");
    assert!(
        c.cf.with(|s| s
            .verifies
            .iter()
            .any(|q| q.path == format!("/accounts/{ACCOUNT}/tokens/verify"))),
        "{r:?}"
    );
}

/// `watch` checks its Cloudflare token once a day: a token expiring within 14 days is warned
/// about once, not on every pass.
#[test]
fn watch_warns_once_a_day_when_the_cloudflare_token_expires_soon() {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    cf.with(|s| {
        s.token_verify =
            json!({"id": "t1", "status": "active", "expires_on": iso(now() + 3 * 86400)})
    });
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("audsync"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .current_dir(sb.dir())
        .args(["watch", "--domain", HOST, "--restart", "none"])
        .args(["--interval", "20ms", "--jitter", "0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    wait_for(60, || cf.requests().len() >= 10);
    let log = stop(child);
    assert_eq!(cf.with(|s| s.verifies.len()), 1, "{log}");
    assert_eq!(log.matches("expires on").count(), 1, "{log}");
    assert!(!log.contains(cloudflare::TOKEN), "{log}");
}

/// A service-token JWT (`common_name`, no `email`) is a valid token for cloudflared; the report
/// says which identity it is.
#[test]
fn verify_accepts_a_service_token_jwt_and_names_it() {
    let key = TestKey::generate("k1");
    let c = chain(&[&key]);
    let tok = key.sign(&json!({
        "aud": [aud(2)], "iss": c.fa.team_url(), "common_name": "88bf3b6d86161464f6509f7219099e57.access",
        "sub": "", "type": "app", "iat": now(), "nbf": now() - 10, "exp": now() + 3600
    }));
    let r = verify(&c, &["--token", &tok]);
    assert_eq!(r.code, 0, "{r:?}");
    let l = line(&r, "token");
    assert!(l.contains(" ok "), "{r:?}");
    assert!(
        l.contains("service token 88bf3b6d86161464f6509f7219099e57.access"),
        "{r:?}"
    );
    assert!(!r.stdout.contains(&tok) && !r.stderr.contains(&tok));
}

/// Keys rotate: a token signed with a key the cached certs do not hold makes `verify` fetch
/// the certs once more, and no more than once.
#[test]
fn verify_fetches_the_certs_again_once_on_an_unknown_kid() {
    let old = TestKey::generate("old");
    let new = TestKey::generate("new");
    let c = chain(&[&old]);
    c.fa.with(|s| s.rotate_to = Some(vec![old.jwk.clone(), new.jwk.clone()]));
    let tok = new.sign(&json!({
        "aud": [aud(2)], "iss": c.fa.team_url(), "email": "alice@example.com",
        "type": "app", "iat": now(), "exp": now() + 3600
    }));
    let r = verify(&c, &["--token", &tok]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r, "token").contains(" ok "), "{r:?}");
    assert_eq!(c.fa.with(|s| s.certs_fetches), 2);

    // A kid nobody has: one refetch, then the failure.
    let stranger = TestKey::generate("stranger");
    let tok = stranger.sign(&json!({
        "aud": [aud(2)], "iss": c.fa.team_url(), "email": "alice@example.com",
        "type": "app", "iat": now(), "exp": now() + 3600
    }));
    let before = c.fa.with(|s| s.certs_fetches);
    let r = verify(&c, &["--token", &tok]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        c.fa.with(|s| s.certs_fetches) - before,
        2,
        "certs check + one refetch"
    );
    let _ = uuid(0);
}

// ------------------------------------------------------------------ Infisical

use crate::support::infisical::{CLIENT_ID, CLIENT_SECRET, FakeInfisical, PROJECT};

const KEY: &str = "CLOUDFLARE_AUD_TAG";

fn inf_world() -> (FakeCloudflare, FakeInfisical, Sandbox) {
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

fn inf_sync(sb: &Sandbox) -> Run {
    let mut c = sb.cmd();
    c.env("DOCKER_HOST", "unix:///nonexistent/audsync-test.sock")
        .args(["sync", "--domain", HOST, "--sink", "infisical"])
        .args(["--restart", "restart", "--container", "lambda-server"])
        .args(["--output", "json"]);
    run(&mut c)
}

/// A value the identity may not read — `secretValueHidden: true` / `<hidden-by-infisical>`, or
/// the 403 ForbiddenReadSecretError a GET by name answers by default — is a permission error
/// naming what to grant: exit 1, nothing written, nothing restarted.
#[test]
fn a_hidden_infisical_value_is_a_permission_error_and_nothing_is_written() {
    for mode in ["mask", "403"] {
        let (_cf, inf, sb) = inf_world();
        inf.put("dev", "/", KEY, &aud(2), 1);
        inf.with(|s| s.hide_values = Some(mode));
        let r = inf_sync(&sb);
        assert_eq!(r.code, 1, "{mode}: {r:?}");
        assert!(inf.writes().is_empty(), "{mode}: {:?}", inf.writes());
        let text = format!("{}{}", r.stdout, r.stderr);
        assert!(text.contains("Read Value"), "{mode}: {r:?}");
        assert!(
            !text.contains("<hidden-by-infisical>\""),
            "{mode}: never used as a value: {r:?}"
        );
        let j = r.json();
        assert_ne!(
            j["containers"][0]["result"], "failed",
            "{mode}: no restart attempted: {r:?}"
        );
    }
}

/// A one-shot run revokes the token it minted (renew and revoke take the token in the body).
#[test]
fn a_one_shot_run_revokes_the_token_it_minted() {
    let (_cf, inf, sb) = inf_world();
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--sink",
        "infisical",
        "--restart",
        "none",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(inf.logins(), 1);
    let issued = inf.with(|s| s.issued.clone());
    assert_eq!(inf.revokes(), issued, "{r:?}");
}

fn spawn_watch(sb: &Sandbox, interval: &str) -> std::process::Child {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("audsync"));
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
        .args(["--interval", interval, "--jitter", "0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    c.spawn().unwrap()
}

fn stop(mut child: std::process::Child) -> String {
    use std::io::Read;
    let _ = std::process::Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "watch did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn wait_for(limit_secs: u64, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(limit_secs),
            "timed out"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Each login uses up one use of the client secret (`clientSecretNumUsesLimit`): 50 watch
/// passes are one login, and the token is revoked when watch ends.
#[test]
fn fifty_watch_passes_are_one_infisical_login_and_the_token_is_revoked_on_exit() {
    let (_cf, inf, sb) = inf_world();
    inf.with(|s| s.client_secret_uses_limit = 1);
    let child = spawn_watch(&sb, "10ms");
    wait_for(60, || {
        inf.secret_requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count()
            >= 50
    });
    let log = stop(child);
    assert_eq!(inf.logins(), 1, "{log}");
    assert!(!inf.with(|s| s.client_secret_revoked), "{log}");
    let issued = inf.with(|s| s.issued.clone());
    assert_eq!(
        inf.revokes(),
        vec![issued.last().cloned().unwrap()],
        "{log}"
    );
    assert!(
        !log.contains(CLIENT_SECRET) && !log.contains("inf-access-token-SECRET"),
        "{log}"
    );
}

/// A short-lived token is renewed (the answer is a NEW token, which replaces the old one)
/// instead of a login per lifetime; a renewal that fails falls back to one login.
#[test]
fn watch_renews_its_token_and_a_failed_renewal_is_one_login() {
    let (_cf, inf, sb) = inf_world();
    inf.with(|s| s.expires_in = 3);
    let child = spawn_watch(&sb, "100ms");
    wait_for(60, || inf.renewals() >= 2);
    assert_eq!(inf.logins(), 1);
    inf.with(|s| s.refuse_renew = true);
    let renewals = inf.renewals();
    wait_for(60, || inf.renewals() > renewals);
    // Let a few more passes run on the token of the fallback login.
    let gets = inf.secret_requests().len();
    wait_for(60, || inf.secret_requests().len() >= gets + 5);
    let log = stop(child);
    assert_eq!(inf.logins(), 2, "{log}");
    assert!(
        !log.contains("has expired"),
        "the renewed token was used, never an expired one: {log}"
    );
}

/// A locked identity (401 "temporarily locked", no duration given) is not asked again while
/// the hold-off lasts; 422 errors whose `message` is an array are shown in full.
#[test]
fn a_locked_identity_is_held_off() {
    let (_cf, inf, sb) = inf_world();
    inf.with(|s| s.locked = true);
    let r = inf_sync(&sb);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("temporarily locked"), "{r:?}");
    let r = inf_sync(&sb);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(inf.logins(), 1, "held off: {r:?}");
    let state = std::fs::read_to_string(sb.path(".env.audsync-state.json")).unwrap();
    assert!(state.contains("holdoff"), "{state}");
}

/// A Cloudflare token read from Infisical whose value is hidden is never sent to Cloudflare.
#[test]
fn a_hidden_cloudflare_credential_in_infisical_is_never_used() {
    let (cf, inf, mut sb) = inf_world();
    sb.unset("CLOUDFLARE_API_TOKEN");
    inf.put(
        "dev",
        "/",
        "CLOUDFLARE_API_TOKEN",
        "cf-token-from-infisical",
        1,
    );
    inf.with(|s| s.hide_values = Some("mask"));
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--restart", "none"]);
    let r = run(&mut c);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(cf.requests().is_empty(), "{:?}", cf.requests());
    assert!(r.stderr.contains("Read Value"), "{r:?}");
    assert!(sb.read_env().contains("OTHER=1"));
}
