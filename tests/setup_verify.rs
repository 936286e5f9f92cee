//! `audsync setup`, `audsync verify`, `--source edge` and the sync tunnel step, through the real
//! binary, against the fake Cloudflare API and the fake Access edge (real RSA keys, real tokens).

use serde_json::{Value, json};

use crate::require_docker;
use crate::support::access::{FakeAccess, TestKey, now, unsigned};
use crate::support::cloudflare::{self, ACCOUNT, FakeCloudflare, Fault, TOKEN, app, aud, uuid};
use crate::support::docker::{Docker, env_of, free_port, id_of, image, started_at};
use crate::support::infisical::{CLIENT_ID, CLIENT_SECRET, FakeInfisical, PROJECT, STATIC_TOKEN};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const TUNNEL: &str = "c0ffee00-0000-4000-8000-0000000000aa";
const POLICY: &str = "Standard Access Policy";

/// A remotely-managed configuration with fields and rules that must survive the round trip.
fn ingress() -> Value {
    json!({
        "ingress": [
            {"hostname": "web.example.com", "service": "http://web:80", "originRequest": {"noTLSVerify": true}},
            {"hostname": HOST, "service": "http://lambda-server:8080", "originRequest": {"connectTimeout": 30, "httpHostHeader": "api.internal"}, "x-future-field": {"keep": [1, 2]}},
            {"hostname": "*.example.com", "service": "http://other:80"},
            {"service": "http_status:404"}
        ],
        "warp-routing": {"enabled": true},
        "originRequest": {"keepAliveTimeout": 90},
        "some-new-top-level": "kept"
    })
}

fn fake(apps: Vec<Value>, source: &str, config: Value) -> FakeCloudflare {
    let cf = FakeCloudflare::start(apps);
    cf.with(|s| {
        s.tunnels
            .insert(TUNNEL.into(), cloudflare::tunnel(TUNNEL, source, config));
    });
    cf
}

fn sandbox(cf: &FakeCloudflare) -> Sandbox {
    let mut sb = Sandbox::with_cloudflare(cf);
    sb.write_env("OTHER=1\n");
    sb.var("CLOUDFLARE_TUNNEL_ID", TUNNEL)
        .var("CLOUDFLARE_TEAM_NAME", "myteam")
        .var(
            "CLOUDFLARE_ACCESS_EMAILS",
            "alice@example.com, bob@example.com",
        )
        .var("CLOUDFLARE_ACCESS_EMAIL_DOMAIN", "example.org")
        .var("GOOGLE_IDP_ID", "a1b2c3d4-0000-4000-8000-00000000beef");
    sb
}

fn setup(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["setup", "--domain", HOST, "--restart", "none"])
        .args(extra);
    run(&mut c)
}

fn writes(cf: &FakeCloudflare) -> Vec<cloudflare::Recorded> {
    cf.requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect()
}

fn access(team: &str, aud_tag: &str) -> Value {
    json!({"required": true, "teamName": team, "audTag": [aud_tag]})
}

#[test]
fn setup_creates_policy_app_and_route_and_a_second_run_changes_nothing() {
    let cf = fake(
        vec![app(1, "web.example.com", &aud(1))],
        "cloudflare",
        ingress(),
    );
    let sb = sandbox(&cf);
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");

    let w = writes(&cf);
    let paths: Vec<(String, String)> = w
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        paths,
        vec![
            (
                "POST".into(),
                format!("/accounts/{ACCOUNT}/access/policies")
            ),
            ("POST".into(), format!("/accounts/{ACCOUNT}/access/apps")),
            (
                "PUT".into(),
                format!("/accounts/{ACCOUNT}/cfd_tunnel/{TUNNEL}/configurations")
            ),
        ],
        "{r:?}"
    );
    // The policy: the emails and the domain, as include rules.
    let policy = w[0].body.clone().unwrap();
    assert_eq!(policy["name"], POLICY);
    assert_eq!(policy["decision"], "allow");
    assert_eq!(
        policy["include"],
        json!([
            {"email": {"email": "alice@example.com"}},
            {"email": {"email": "bob@example.com"}},
            {"email_domain": {"domain": "example.org"}}
        ])
    );
    let policy_id = cf.with(|s| s.policies[0]["id"].clone());
    // The application.
    let body = w[1].body.clone().unwrap();
    assert_eq!(body["type"], "self_hosted");
    assert_eq!(body["name"], HOST);
    assert_eq!(body["domain"], HOST);
    assert_eq!(
        body["destinations"],
        json!([{"type": "public", "uri": HOST}])
    );
    assert_eq!(body["session_duration"], "24h");
    assert_eq!(
        body["allowed_idps"],
        json!(["a1b2c3d4-0000-4000-8000-00000000beef"])
    );
    assert_eq!(
        body["policies"],
        json!([{"id": policy_id, "precedence": 1}])
    );
    assert!(body.get("identity_provider_selectors").is_none());
    let new_aud = cf.with(|s| s.apps[1]["aud"].as_str().unwrap().to_string());
    // The ingress: equal to the original except the one rule's originRequest.access.
    let put = w[2].body.clone().unwrap();
    let mut expected = ingress();
    expected["ingress"][1]["originRequest"]["access"] = access("myteam", &new_aud);
    assert_eq!(put, json!({"config": expected}));
    assert_eq!(
        put["config"]["ingress"][3],
        json!({"service": "http_status:404"}),
        "catch-all last"
    );
    // Then the sync pass wrote the AUD.
    assert!(
        sb.read_env()
            .contains(&format!("CLOUDFLARE_AUD_TAG={new_aud}")),
        "{}",
        sb.read_env()
    );

    // Second run: reads only.
    let n = cf.requests().len();
    let r2 = setup(&sb, &[]);
    assert_eq!(r2.code, 0, "{r2:?}");
    assert_eq!(writes(&cf).len(), 3, "the second run wrote nothing: {r2:?}");
    assert!(cf.requests().len() > n);
    assert!(r2.stdout.contains("nothing to do"), "{r2:?}");
    assert_eq!(cf.with(|s| s.apps.len()), 2, "one creation");
}

#[test]
fn setup_reuses_a_policy_by_name_and_creates_none() {
    let cf = fake(vec![], "cloudflare", ingress());
    let existing = "77777777-1111-4000-8000-000000000000";
    cf.with(|s| {
        s.policies.push(json!({"id": "66666666-1111-4000-8000-000000000000", "name": "Other", "decision": "allow", "include": [{"everyone": {}}], "reusable": true}));
        s.policies.push(json!({"id": existing, "name": POLICY, "decision": "allow", "include": [{"email_domain": {"domain": "x.org"}}], "reusable": true, "app_count": 3}));
    });
    let mut sb = sandbox(&cf);
    sb.unset("CLOUDFLARE_ACCESS_EMAILS")
        .unset("CLOUDFLARE_ACCESS_EMAIL_DOMAIN");
    let r = setup(
        &sb,
        &["--app-name", "Lambda API", "--session-duration", "8h"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let w = writes(&cf);
    assert!(
        !w.iter().any(|r| r.path.ends_with("/access/policies")),
        "no policy created: {w:?}"
    );
    let body = w
        .iter()
        .find(|r| r.path.ends_with("/access/apps"))
        .unwrap()
        .body
        .clone()
        .unwrap();
    assert_eq!(body["policies"], json!([{"id": existing, "precedence": 1}]));
    assert_eq!(body["name"], "Lambda API");
    assert_eq!(body["session_duration"], "8h");
    assert!(r.stdout.contains("reused"), "{r:?}");
}

#[test]
fn setup_without_any_rule_refuses_unless_allow_everyone() {
    let cf = fake(vec![], "cloudflare", ingress());
    let mut sb = sandbox(&cf);
    sb.unset("CLOUDFLARE_ACCESS_EMAILS")
        .unset("CLOUDFLARE_ACCESS_EMAIL_DOMAIN");
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("--allow-everyone") && r.stderr.contains("CLOUDFLARE_ACCESS_EMAILS"),
        "{r:?}"
    );
    assert!(writes(&cf).is_empty(), "nothing changed");

    let r = setup(&sb, &["--allow-everyone"]);
    assert_eq!(r.code, 0, "{r:?}");
    let p = writes(&cf)[0].body.clone().unwrap();
    assert_eq!(p["include"], json!([{"everyone": {}}]));
}

#[test]
fn setup_dry_run_prints_every_change_and_makes_none() {
    let cf = fake(vec![], "cloudflare", ingress());
    let sb = sandbox(&cf);
    let r = setup(&sb, &["--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(writes(&cf).is_empty(), "{:?}", writes(&cf));
    assert_eq!(sb.read_env(), "OTHER=1\n");
    for needle in [
        "policy: would create",
        "\"email_domain\"",
        "application: would create",
        "\"self_hosted\"",
        "\"session_duration\": \"24h\"",
        "tunnel: would update",
        "- ingress[1]",
        "+ ingress[1]",
        "\"teamName\":\"myteam\"",
        "nothing was changed",
    ] {
        assert!(r.stdout.contains(needle), "missing {needle:?}: {r:?}");
    }

    // With the application already there: the dry run shows only the route.
    cf.with(|s| s.apps.push(app(2, HOST, &aud(2))));
    cf.with(|s| s.apps[0]["policies"] = json!([{"id": "p", "precedence": 1}]));
    let r = setup(&sb, &["--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("application: exists"), "{r:?}");
    assert!(
        r.stdout.contains(&format!("\"audTag\":[\"{}\"]", aud(2))),
        "{r:?}"
    );
    assert!(writes(&cf).is_empty());
}

#[test]
fn setup_on_a_locally_managed_tunnel_says_what_to_do_and_writes_nothing_there() {
    let mut app2 = app(2, HOST, &aud(2));
    app2["policies"] = json!([{"id": "p", "precedence": 1}]);
    let cf = fake(vec![app2], "local", json!({}));
    let sb = sandbox(&cf);
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("locally managed") && all.contains("config.yml"),
        "{r:?}"
    );
    assert!(
        all.contains(&format!("- {}", aud(2))) && all.contains("teamName: myteam"),
        "{r:?}"
    );
    assert!(
        !writes(&cf).iter().any(|w| w.path.contains("cfd_tunnel")),
        "never PUT to a local tunnel"
    );
    // A setup that cannot finish changes nothing: the sync pass did not run either.
    assert!(writes(&cf).is_empty(), "{:?}", writes(&cf));
    assert_eq!(sb.read_env(), "OTHER=1\n");
    assert!(r.stdout.contains("nothing was changed"), "{r:?}");
}

#[test]
fn setup_without_a_rule_for_the_host_says_what_to_do() {
    let mut app2 = app(2, HOST, &aud(2));
    app2["policies"] = json!([{"id": "p", "precedence": 1}]);
    let cf = fake(
        vec![app2],
        "cloudflare",
        json!({"ingress": [{"hostname": "web.example.com", "service": "http://web"}, {"service": "http_status:404"}]}),
    );
    let sb = sandbox(&cf);
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("no ingress rule for api.example.com")
            && all.contains("Public Hostname")
            && all.contains("--tunnel-service"),
        "{r:?}"
    );
    assert!(writes(&cf).is_empty());
    assert_eq!(sb.read_env(), "OTHER=1\n", "the .env is untouched");
}

const NEW_HOST: &str = "new.example.test";

/// Only `*.example.test` covers NEW_HOST; it has a policy of its own (shared by every host).
fn wildcard_app() -> Value {
    let mut w = app(7, "*.example.test", &aud(7));
    w["name"] = json!("Everything under example.test");
    w["policies"] = json!([{"id": "55555555-1111-4000-8000-000000000000", "precedence": 1}]);
    w
}

fn new_host_setup(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["setup", "--domain", NEW_HOST, "--restart", "none"])
        .args(extra);
    run(&mut c)
}

/// Ingress with the new host served by a rule of its own.
fn ingress_with_new_host() -> Value {
    json!({"ingress": [
        {"hostname": NEW_HOST, "service": "http://caddy:80"},
        {"service": "http_status:404"}
    ]})
}

#[test]
fn setup_with_only_a_wildcard_creates_the_hosts_own_app_and_leaves_the_wildcard() {
    let cf = fake(vec![wildcard_app()], "cloudflare", ingress_with_new_host());
    cf.with(|s| s.policies.push(json!({"id": "55555555-1111-4000-8000-000000000000", "name": "Shared", "decision": "allow", "include": [{"everyone": {}}], "reusable": true})));
    let sb = sandbox(&cf);
    let r = new_host_setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let w = writes(&cf);
    assert!(
        !w.iter().any(|x| x.path.ends_with(&uuid(7))),
        "nothing sent to the wildcard: {w:?}"
    );
    assert_eq!(
        cf.with(|s| s.apps[0].clone()),
        wildcard_app(),
        "wildcard unchanged"
    );
    let paths: Vec<(&str, String)> = w
        .iter()
        .map(|x| (x.method.as_str(), x.path.clone()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("POST", format!("/accounts/{ACCOUNT}/access/policies")),
            ("POST", format!("/accounts/{ACCOUNT}/access/apps")),
            (
                "PUT",
                format!("/accounts/{ACCOUNT}/cfd_tunnel/{TUNNEL}/configurations")
            ),
        ]
    );
    let body = w[1].body.clone().unwrap();
    assert_eq!(body["domain"], NEW_HOST);
    assert_eq!(
        body["destinations"],
        json!([{"type": "public", "uri": NEW_HOST}])
    );
    let own = cf.with(|s| s.apps[1]["aud"].as_str().unwrap().to_string());
    assert_ne!(own, aud(7));
    let env = sb.read_env();
    assert!(env.contains(&format!("CLOUDFLARE_AUD_TAG={own}")), "{env}");
    assert!(!env.contains(&aud(7)), "never the wildcard's AUD: {env}");
    let put = w[2].body.clone().unwrap();
    assert_eq!(
        put["config"]["ingress"][0]["originRequest"]["access"],
        access("myteam", &own)
    );
    // The report lists every change, in order.
    let out = &r.stdout;
    let (a, b, c) = (
        out.find("1. POST /accounts/").unwrap_or(usize::MAX),
        out.find("2. POST /accounts/").unwrap_or(usize::MAX),
        out.find("3. PUT /accounts/").unwrap_or(usize::MAX),
    );
    assert!(a < b && b < c && c < usize::MAX, "{r:?}");
    assert!(
        out.contains("--use-existing"),
        "says how to use the wildcard instead: {r:?}"
    );

    // From then on the exact match wins: a second run changes nothing.
    let r2 = new_host_setup(&sb, &[]);
    assert_eq!(r2.code, 0, "{r2:?}");
    assert_eq!(writes(&cf).len(), 3, "{r2:?}");
}

#[test]
fn setup_use_existing_takes_the_wildcard_as_it_is() {
    let mut wild = wildcard_app();
    wild["policies"] = json!([]);
    let cf = fake(vec![wild.clone()], "cloudflare", ingress_with_new_host());
    let sb = sandbox(&cf);
    let r = new_host_setup(&sb, &["--use-existing"]);
    assert_eq!(r.code, 0, "{r:?}");
    let w = writes(&cf);
    // Even a wildcard without any policy gets none: it is not ours to change.
    assert!(
        !w.iter().any(|x| x.path.contains("/access/")),
        "no policy, no application written: {w:?}"
    );
    assert_eq!(cf.with(|s| s.apps.clone()), vec![wild]);
    assert!(sb.read_env().contains(&aud(7)), "{}", sb.read_env());
    // The env variable works too.
    let cf = fake(vec![wildcard_app()], "cloudflare", ingress_with_new_host());
    let mut sb = sandbox(&cf);
    sb.var("AUDSYNC_USE_EXISTING", "true");
    let r = new_host_setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!writes(&cf).iter().any(|x| x.path.contains("/access/")));
}

#[test]
fn setup_never_changes_an_app_with_several_destinations() {
    let mut shared = app(8, NEW_HOST, &aud(8));
    shared["destinations"] = json!([{"type": "public", "uri": NEW_HOST}, {"type": "public", "uri": "other.example.test"}]);
    let cf = fake(vec![shared.clone()], "cloudflare", ingress_with_new_host());
    let sb = sandbox(&cf);
    let r = new_host_setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let w = writes(&cf);
    assert!(!w.iter().any(|x| x.path.contains("/access/")), "{w:?}");
    assert_eq!(cf.with(|s| s.apps.clone()), vec![shared]);
    assert!(r.stdout.contains("other.example.test"), "{r:?}");
}

#[test]
fn setup_whose_tunnel_step_cannot_succeed_changes_nothing() {
    // The issue's case: only the wildcard covers the host, and the tunnel has no rule for it.
    let no_rule = json!({"ingress": [
        {"hostname": "web.example.test", "service": "http://web:80"},
        {"service": "http_status:404"}
    ]});
    let cf = fake(vec![wildcard_app()], "cloudflare", no_rule.clone());
    let sb = sandbox(&cf);
    for extra in [&[][..], &["--use-existing"][..], &["--dry-run"][..]] {
        let r = new_host_setup(&sb, extra);
        assert_eq!(r.code, 1, "{extra:?}: {r:?}");
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(
            all.contains("no ingress rule for new.example.test")
                && all.contains("--tunnel-service"),
            "{extra:?}: {r:?}"
        );
        assert!(writes(&cf).is_empty(), "{extra:?}: {:?}", writes(&cf));
        assert_eq!(sb.read_env(), "OTHER=1\n", "{extra:?}");
        assert_eq!(cf.with(|s| s.apps.clone()), vec![wildcard_app()]);
    }
    // A policy that cannot be built is found before the first change as well.
    let mut sb2 = sandbox(&cf);
    sb2.unset("CLOUDFLARE_ACCESS_EMAILS")
        .unset("CLOUDFLARE_ACCESS_EMAIL_DOMAIN");
    let r = new_host_setup(&sb2, &["--tunnel-service", "http://caddy:80"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(writes(&cf).is_empty(), "{:?}", writes(&cf));
    // A tunnel that cannot be read at all: nothing created either.
    cf.with(|s| s.tunnels.clear());
    let r = new_host_setup(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(writes(&cf).is_empty(), "{:?}", writes(&cf));
}

#[test]
fn setup_tunnel_service_adds_the_rule_before_the_catch_all() {
    let cfg = json!({"ingress": [
        {"hostname": "web.example.test", "service": "http://web:80"},
        {"service": "http_status:404"}
    ], "warp-routing": {"enabled": true}});
    let cf = fake(vec![], "cloudflare", cfg.clone());
    let sb = sandbox(&cf);
    // The dry run shows it and makes none.
    let r = new_host_setup(&sb, &["--tunnel-service", "http://caddy:80", "--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(writes(&cf).is_empty());
    assert!(r.stdout.contains("http://caddy:80"), "{r:?}");
    let mut sb = sandbox(&cf);
    sb.var("AUDSYNC_TUNNEL_SERVICE", "http://caddy:80");
    let r = new_host_setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let w = writes(&cf);
    let put = w
        .iter()
        .find(|x| x.path.contains("cfd_tunnel"))
        .unwrap()
        .body
        .clone()
        .unwrap();
    let own = cf.with(|s| s.apps[0]["aud"].as_str().unwrap().to_string());
    let mut expected = cfg;
    expected["ingress"].as_array_mut().unwrap().insert(
        1,
        json!({"hostname": NEW_HOST, "service": "http://caddy:80", "originRequest": {"access": access("myteam", &own)}}),
    );
    assert_eq!(put, json!({"config": expected}));
    assert!(r.stdout.contains("added"), "{r:?}");
    // Second run: the rule exists; nothing more.
    let r = new_host_setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(writes(&cf).len(), w.len(), "{r:?}");
}

#[test]
fn setup_attaches_the_policy_to_an_existing_app_that_has_none() {
    let cf = fake(vec![app(2, HOST, &aud(2))], "cloudflare", ingress());
    let sb = sandbox(&cf);
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let w = writes(&cf);
    let put = w
        .iter()
        .find(|r| r.method == "PUT" && r.path.ends_with(&uuid(2)))
        .expect("app PUT");
    let body = put.body.clone().unwrap();
    let pid = cf.with(|s| s.policies[0]["id"].clone());
    assert_eq!(body["policies"], json!([{"id": pid, "precedence": 1}]));
    // Everything else of the application was sent back unchanged, without the read-only
    // fields (`access_app_request` has no id, aud, created_at, updated_at).
    let mut expected = app(2, HOST, &aud(2));
    expected["policies"] = body["policies"].clone();
    for f in ["id", "aud", "created_at", "updated_at"] {
        expected.as_object_mut().unwrap().remove(f);
    }
    assert_eq!(body, expected);
    assert!(
        !w.iter()
            .any(|r| r.method == "POST" && r.path.ends_with("/apps")),
        "no second app"
    );
}

#[test]
fn setup_with_a_tunnel_needs_the_team_and_edge_source_is_refused() {
    let cf = fake(vec![], "cloudflare", ingress());
    let mut sb = sandbox(&cf);
    sb.unset("CLOUDFLARE_TEAM_NAME");
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("CLOUDFLARE_TEAM_NAME"), "{r:?}");
    sb.var(
        "CLOUDFLARE_AUTH_DOMAIN",
        "https://myteam.cloudflareaccess.com",
    );
    let r = setup(&sb, &["--source", "edge"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(cf.requests().is_empty());
    // The team name from CLOUDFLARE_AUTH_DOMAIN.
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let put = writes(&cf)
        .into_iter()
        .find(|w| w.path.contains("cfd_tunnel"))
        .unwrap();
    assert_eq!(
        put.body.unwrap()["config"]["ingress"][1]["originRequest"]["access"]["teamName"],
        "myteam"
    );
}

// ---------------------------------------------------------------- sync: tunnel audTag step

#[test]
fn sync_keeps_the_tunnel_rule_aud_tag_current() {
    let mut config = ingress();
    config["ingress"][1]["originRequest"]["access"] = access("myteam", &aud(1));
    let cf = fake(vec![app(2, HOST, &aud(2))], "cloudflare", config.clone());
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("CLOUDFLARE_TUNNEL_ID", TUNNEL);
    sb.write_env(&format!("CLOUDFLARE_AUD_TAG={}\n", aud(1)));
    let sync = |extra: &[&str]| {
        let mut c = sb.cmd();
        c.args(["sync", "--domain", HOST, "--restart", "none"])
            .args(extra);
        run(&mut c)
    };
    let r = sync(&["--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("would_update"), "{r:?}");
    assert!(writes(&cf).is_empty());

    let r = sync(&["--output", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(j["tunnel"]["result"], "updated", "{r:?}");
    let w = writes(&cf);
    assert_eq!(w.len(), 1, "{w:?}");
    let mut expected = config.clone();
    expected["ingress"][1]["originRequest"]["access"]["audTag"] = json!([aud(2)]);
    assert_eq!(w[0].body, Some(json!({"config": expected})));

    // In sync now: no write.
    let r = sync(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(writes(&cf).len(), 1);

    // A rule that does not require Access is left alone.
    let cf2 = fake(vec![app(2, HOST, &aud(2))], "cloudflare", ingress());
    let mut sb2 = Sandbox::with_cloudflare(&cf2);
    sb2.var("CLOUDFLARE_TUNNEL_ID", TUNNEL);
    sb2.write_env("");
    let mut c = sb2.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--restart",
        "none",
        "--output",
        "json",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    let j: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(j["tunnel"]["result"], "not_required");
    assert!(writes(&cf2).is_empty());
}

#[test]
fn sync_tunnel_api_failure_fails_the_pass() {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("CLOUDFLARE_TUNNEL_ID", TUNNEL); // the fake knows no such tunnel: 404
    sb.write_env("");
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--restart", "none"]);
    let r = run(&mut c);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("Tunnel not found"), "{r:?}");
}

// ---------------------------------------------------------------- --source edge

#[test]
fn a_create_that_may_have_reached_cloudflare_is_not_sent_twice() {
    let cf = fake(vec![], "cloudflare", ingress());
    // The policy POST times out / fails with 500 after Cloudflare may have applied it: a second
    // POST would create a duplicate. A GET would have been retried.
    cf.with(|s| s.post_faults.push_back(Fault::Status500));
    let sb = sandbox(&cf);
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let posts = cf
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "a POST answered with 5xx is not repeated: {r:?}");
    // A 429 means "not processed": that one is retried.
    let cf = fake(vec![], "cloudflare", ingress());
    cf.with(|s| {
        s.post_faults.push_back(Fault::Status429 {
            retry_after: Some("0".into()),
        })
    });
    let sb = sandbox(&cf);
    let r = setup(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let policy_posts = cf
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/policies"))
        .count();
    assert_eq!(policy_posts, 2, "429 then the retry");
}

fn team_key() -> TestKey {
    TestKey::generate("team-key-1")
}

fn edge_sandbox(access: &FakeAccess) -> Sandbox {
    let mut sb = Sandbox::new();
    sb.var("AUDSYNC_URL", &access.host_url());
    sb
}

#[test]
fn edge_source_reads_the_login_redirect_kid_without_any_credential() {
    let key = team_key();
    let fa = FakeAccess::start(HOST, &aud(5), &[&key]);
    let mut sb = edge_sandbox(&fa);
    // The kid is unsigned: taken only with the opt-in, and from the configured team's redirect
    // (the fake team on 127.0.0.1 is not a *.cloudflareaccess.com one).
    sb.var("AUDSYNC_ALLOW_UNSIGNED_KID", "1")
        .var("CLOUDFLARE_AUTH_DOMAIN", &fa.team_url());
    let mut c = sb.cmd();
    c.args(["get", "--source", "edge", "--domain", HOST]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), aud(5));
    let reqs = fa.with(|s| s.requests.clone());
    assert_eq!(
        reqs[0],
        ("HEAD".into(), "/".into(), true),
        "metadata probe first"
    );

    // sync writes it, still without credentials.
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--source",
        "edge",
        "--domain",
        HOST,
        "--restart",
        "none",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(5)));

    // Without --source edge the same command needs credentials.
    let mut c = sb.cmd();
    c.args(["get", "--domain", HOST]);
    let r = run(&mut c);
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn edge_source_prefers_the_verified_metadata_answer() {
    let key = team_key();
    let other = TestKey::generate("attacker");
    let fa = FakeAccess::start(HOST, &aud(5), &[&key]);
    let mut sb = edge_sandbox(&fa);
    sb.var("CLOUDFLARE_AUTH_DOMAIN", &fa.team_url());
    let meta = |k: &TestKey, a: &str| {
        k.sign(&json!({"type": "match", "hostname": HOST, "auth_domain": "myteam.cloudflareaccess.com", "aud": a, "app_hostname": HOST, "iat": now()}))
    };
    fa.with(|s| s.metadata = Some(meta(&key, &aud(6))));
    let get = || {
        let mut c = sb.cmd();
        c.args(["get", "--source", "edge", "--domain", HOST]);
        run(&mut c)
    };
    let r = get();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), aud(6), "the metadata's aud, not the kid");

    // A metadata answer that does not verify is an error, not a silent fallback.
    fa.with(|s| s.metadata = Some(meta(&other, &aud(7))));
    let r = get();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("does not verify"), "{r:?}");
}

/// Issue 21 #7: a binding that names a path (`HOST/docs`) learns, from the edge, the AUD that
/// requests under that path carry -- asked under the path; the host's own binding keeps the
/// host's AUD. Each keeps its own replay mark.
#[test]
fn edge_source_asks_under_the_binding_path() {
    let key = team_key();
    let fa = FakeAccess::start(HOST, &aud(5), &[&key]);
    let mut sb = edge_sandbox(&fa);
    sb.var("CLOUDFLARE_AUTH_DOMAIN", &fa.team_url());
    let meta = |a: &str, app: &str| {
        key.sign(&json!({"type": "match", "hostname": HOST, "auth_domain": "myteam.cloudflareaccess.com", "aud": a, "app_hostname": app, "iat": now()}))
    };
    let docs_app = format!("{HOST}/docs");
    fa.with(|s| {
        s.metadata = Some(meta(&aud(6), HOST));
        s.paths = vec![("/docs".into(), aud(7), Some(meta(&aud(7), &docs_app)))];
    });
    let get = |domain: &str| {
        let mut c = sb.cmd();
        c.args(["get", "--source", "edge", "--domain", domain]);
        run(&mut c)
    };
    let r = get(&docs_app);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), aud(7), "the path's application: {r:?}");
    let reqs = fa.with(|s| std::mem::take(&mut s.requests));
    assert_eq!(reqs[0], ("HEAD".into(), "/docs".into(), true), "{reqs:?}");

    let r = get(HOST);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), aud(6), "the host's application: {r:?}");

    // sync: both bindings of one .env, each with its own value.
    sb.write_env("HOST_AUD=old\nDOCS_AUD=old\n");
    for (domain, key) in [(HOST, "HOST_AUD"), (docs_app.as_str(), "DOCS_AUD")] {
        let mut c = sb.cmd();
        c.args([
            "sync",
            "--source",
            "edge",
            "--domain",
            domain,
            "--key",
            key,
            "--restart",
            "none",
        ]);
        let r = run(&mut c);
        assert_eq!(r.code, 0, "{r:?}");
    }
    assert_eq!(
        sb.read_env(),
        format!("HOST_AUD={}\nDOCS_AUD={}\n", aud(6), aud(7))
    );
}

#[test]
fn edge_source_on_an_unprotected_host_fails() {
    let key = team_key();
    let fa = FakeAccess::start(HOST, &aud(5), &[&key]);
    fa.with(|s| s.protected = false);
    let sb = edge_sandbox(&fa);
    let mut c = sb.cmd();
    c.args(["get", "--source", "edge", "--domain", HOST]);
    let r = run(&mut c);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not protected"), "{r:?}");
}

// ---------------------------------------------------------------- verify

struct Chain {
    cf: FakeCloudflare,
    fa: FakeAccess,
    key: TestKey,
    sb: Sandbox,
}

/// Everything consistent: Cloudflare, the edge, the .env file and the tunnel rule hold aud(2).
fn chain() -> Chain {
    let key = team_key();
    let fa = FakeAccess::start(HOST, &aud(2), &[&key]);
    let mut config = ingress();
    config["ingress"][1]["originRequest"]["access"] = access("myteam", &aud(2));
    let cf = fake(vec![app(2, HOST, &aud(2))], "cloudflare", config);
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("CLOUDFLARE_AUTH_DOMAIN", &fa.team_url())
        .var("AUDSYNC_URL", &fa.host_url())
        .var("CLOUDFLARE_TUNNEL_ID", TUNNEL)
        .var("AUDSYNC_CONTAINER", "audsync-test-no-such-container");
    sb.write_env(&format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)));
    Chain { cf, fa, key, sb }
}

/// Issue 21 #7: `verify --domain HOST/docs` checks the application that covers only that path:
/// the API's path application, the redirect under the path and the `.env` agree on its AUD
/// (the host's own application, with another AUD, is not what it compares with).
#[test]
fn verify_checks_a_path_binding_under_its_path() {
    let key = team_key();
    let fa = FakeAccess::start(HOST, &aud(2), &[&key]);
    fa.with(|s| s.paths = vec![("/docs".into(), aud(3), None)]);
    let docs = format!("{HOST}/docs");
    let cf = fake(
        vec![app(2, HOST, &aud(2)), app(3, &docs, &aud(3))],
        "cloudflare",
        ingress(),
    );
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("CLOUDFLARE_AUTH_DOMAIN", &fa.team_url())
        .var("AUDSYNC_URL", &fa.host_url())
        .var("AUDSYNC_CONTAINER", "audsync-test-no-such-container");
    sb.write_env(&format!("CLOUDFLARE_AUD_TAG={}\n", aud(3)));
    let mut cmd = sb.cmd();
    cmd.args(["verify", "--domain", &docs]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r, "redirect").contains(&aud(3)), "{r:?}");
    assert!(line(&r, "consistency").contains(" ok "), "{r:?}");
    let reqs = fa.with(|s| s.requests.clone());
    assert!(reqs.iter().all(|(_, p, _)| p == "/docs"), "{reqs:?}");
}

fn claims(c: &Chain) -> Value {
    json!({
        "aud": [aud(2)], "iss": c.fa.team_url(), "email": "alice@example.com", "sub": "u1",
        "type": "app", "iat": now(), "nbf": now() - 10, "exp": now() + 3600, "country": "NL"
    })
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

fn verify_token(c: &Chain, token: &str, extra: &[&str]) -> Run {
    let path = c.sb.path("token.jwt");
    std::fs::write(&path, token).unwrap();
    let mut args = vec!["--token-file", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    verify(c, &args)
}

#[test]
fn verify_passes_when_the_whole_chain_is_right() {
    let c = chain();
    let tok = c.key.sign(&claims(&c));
    let r = verify_token(&c, &tok, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    for check in ["redirect", "certs", "consistency", "token"] {
        assert!(line(&r, check).contains(" ok "), "{check}: {r:?}");
    }
    assert!(line(&r, "redirect").contains(&aud(2)), "{r:?}");
    assert!(
        r.stdout.contains("tunnel") && r.stdout.contains("login redirect kid"),
        "{r:?}"
    );
    // The container is honestly reported as not checked (absent, or Docker unreachable).
    assert!(
        r.stdout
            .contains("container audsync-test-no-such-container")
            && r.stdout.contains("not checked"),
        "{r:?}"
    );
    assert!(
        !r.stdout.contains(&tok) && !r.stderr.contains(&tok),
        "the token is never printed"
    );
    // verify changes nothing.
    assert!(c.cf.requests().iter().all(|q| q.method == "GET"));
}

#[test]
fn verify_names_each_bad_token_in_the_servers_words() {
    let c = chain();
    let wrong_key = TestKey::generate("team-key-1"); // same kid, different key
    let base = claims(&c);
    let with = |k: &str, v: Value| {
        let mut x = base.clone();
        x[k] = v;
        x
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            c.key.sign(&with("exp", json!(now() - 3600))),
            "token expired",
        ),
        (
            "not yet valid",
            c.key.sign(&with("nbf", json!(now() + 3600))),
            "not yet valid",
        ),
        (
            "wrong aud",
            c.key.sign(&with("aud", json!([aud(9)]))),
            "audience mismatch",
        ),
        (
            "wrong iss",
            c.key
                .sign(&with("iss", json!("https://evil.cloudflareaccess.com"))),
            "invalid issuer",
        ),
        ("wrong key", wrong_key.sign(&base), "Invalid signature"),
        (
            "alg none",
            unsigned(&base),
            "Invalid signature: the token is signed with \"none\"",
        ),
        (
            "HS256 with the public key",
            c.key.sign_hs256_with_public_key(&base),
            "Invalid signature: the token is signed with \"HS256\"",
        ),
        ("garbage", "not-a-jwt".into(), "malformed token"),
    ];
    for (name, tok, words) in cases {
        let r = verify_token(&c, &tok, &["--skip", "consistency"]);
        assert_eq!(r.code, 1, "{name}: {r:?}");
        let l = line(&r, "token");
        assert!(
            l.contains("FAIL") && l.contains(words),
            "{name}: expected {words:?} in {l:?}\n{r:?}"
        );
        assert!(r.stdout.contains("fix:"), "{name}: {r:?}");
        assert!(line(&r, "redirect").contains(" ok "), "{name}: {r:?}");
    }
}

#[test]
fn verify_reports_an_unprotected_host() {
    let c = chain();
    c.fa.with(|s| s.protected = false);
    let r = verify(&c, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let l = line(&r, "redirect");
    assert!(l.contains("FAIL") && l.contains("HTTP 200"), "{r:?}");
    assert!(
        r.stdout
            .contains("not protected: check the application and the tunnel route"),
        "{r:?}"
    );
    // --skip leaves it out: every check that ran passed.
    let r = verify(&c, &["--skip", "redirect"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r, "redirect").contains("skipped"), "{r:?}");
}

#[test]
fn verify_names_the_place_that_differs() {
    let c = chain();
    c.sb.write_env(&format!("CLOUDFLARE_AUD_TAG={}\n", aud(1)));
    let r = verify(&c, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let l = line(&r, "consistency");
    assert!(
        l.contains("FAIL") && l.contains(".env CLOUDFLARE_AUD_TAG differs"),
        "{r:?}"
    );
    assert!(!l.contains("tunnel"), "only the .env differs: {r:?}");
    assert!(
        r.stdout
            .contains("fix: run `audsync sync --domain api.example.com`"),
        "{r:?}"
    );

    // A stale tunnel rule is named too.
    c.sb.write_env(&format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)));
    c.cf.with(|s| {
        s.tunnels.get_mut(TUNNEL).unwrap()["config"]["ingress"][1]["originRequest"]["access"]["audTag"] = json!([aud(1)]);
    });
    let r = verify(&c, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        line(&r, "consistency")
            .contains("tunnel c0ffee00-0000-4000-8000-0000000000aa rule audTag differs"),
        "{r:?}"
    );

    // The redirect enforcing another AUD than the API reports.
    c.cf.with(|s| {
        s.tunnels.get_mut(TUNNEL).unwrap()["config"]["ingress"][1]["originRequest"]["access"]["audTag"] = json!([aud(2)]);
    });
    c.fa.with(|s| s.aud = aud(3));
    let r = verify(&c, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        line(&r, "consistency").contains("login redirect kid differs"),
        "{r:?}"
    );
}

#[test]
fn verify_certs_failure_and_wrong_team_are_reported() {
    let c = chain();
    c.fa.with(|s| s.jwks.clear());
    let r = verify(&c, &["--skip", "consistency"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(line(&r, "certs").contains("no RS256 key"), "{r:?}");

    let mut c = chain();
    c.sb.var("CLOUDFLARE_AUTH_DOMAIN", "http://127.0.0.1:9");
    let r = verify(&c, &["--skip", "consistency"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        line(&r, "redirect").contains("not of the team domain"),
        "{r:?}"
    );
}

#[test]
fn verify_without_credentials_still_checks_what_it_can() {
    let c = chain();
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_AUTH_DOMAIN", &c.fa.team_url())
        .var("AUDSYNC_URL", &c.fa.host_url())
        .var("AUDSYNC_CONTAINER", "audsync-test-no-such-container");
    sb.write_env(&format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)));
    let tok = c.key.sign(&claims(&c));
    let mut cmd = sb.cmd();
    cmd.args(["verify", "--domain", HOST, "--token", &tok]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("Cloudflare API: not checked (no Cloudflare credentials)"),
        "{r:?}"
    );
    assert!(line(&r, "token").contains(" ok "), "{r:?}");
    assert!(!r.stdout.contains(&tok) && !r.stderr.contains(&tok));
}

// ---------------------------------------------------------------- secrets

#[test]
fn no_secret_or_token_appears_at_any_verbosity() {
    let c = chain();
    let tok = c.key.sign(&claims(&c));
    let path = c.sb.path("token.jwt");
    std::fs::write(&path, &tok).unwrap();
    let runs = vec![
        verify(&c, &["-vvv", "--token-file", path.to_str().unwrap()]),
        verify(&c, &["-vvv", "--log-format", "json", "--token", &tok]),
        {
            let mut sb = sandbox(&c.cf);
            sb.var("CLOUDFLARE_TEAM_NAME", "myteam");
            setup(&sb, &["-vvv"])
        },
        {
            let mut cmd = c.sb.cmd();
            cmd.args([
                "sync",
                "-vvv",
                "--source",
                "edge",
                "--domain",
                HOST,
                "--restart",
                "none",
            ]);
            run(&mut cmd)
        },
    ];
    for r in runs {
        assert!(
            r.stderr.contains("DEBUG") || r.stderr.contains("\"level\""),
            "verbose: {r:?}"
        );
        for secret in [TOKEN, tok.as_str()] {
            assert!(
                !r.stdout.contains(secret) && !r.stderr.contains(secret),
                "secret leaked: {r:?}"
            );
        }
        // The token's signature alone must not leak either.
        let sig = tok.rsplit('.').next().unwrap();
        assert!(!r.stdout.contains(sig) && !r.stderr.contains(sig));
    }
    // A token in the environment or the .env file is not shown by --help either.
    let mut sb = Sandbox::new();
    sb.var("AUDSYNC_VERIFY_TOKEN", &tok);
    sb.write_env(&format!("AUDSYNC_VERIFY_TOKEN={tok}\n"));
    let mut cmd = sb.cmd();
    cmd.args(["verify", "--help"]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("--token"), "{r:?}");
    assert!(!r.stdout.contains(&tok), "token shown by --help: {r:?}");
}

// ---------------------------------------------------------------- verify: the Infisical sink

const INF_ENV: &str = "prod";
const INF_PATH: &str = "/apps/api";
const KEY: &str = "CLOUDFLARE_AUD_TAG";

/// `chain()` plus a fake Infisical holding `value` at prod:/apps/api, Universal Auth set.
fn chain_with_infisical(value: Option<&str>) -> (Chain, FakeInfisical) {
    let mut c = chain();
    let inf = FakeInfisical::start();
    if let Some(v) = value {
        inf.put(INF_ENV, INF_PATH, KEY, v, 4);
    }
    c.sb.var("INFISICAL_HOST", &inf.url())
        .var("INFISICAL_PROJECT_ID", PROJECT)
        .var("INFISICAL_CLIENT_ID", CLIENT_ID)
        .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET)
        .var("INFISICAL_ENVIRONMENT", INF_ENV)
        .var("INFISICAL_SECRET_PATH", INF_PATH);
    (c, inf)
}

fn infisical_place() -> String {
    format!("Infisical {PROJECT}/{INF_ENV}{INF_PATH} {KEY}")
}

/// How verify abbreviates an AUD in its details.
fn short(v: &str) -> String {
    format!("{}…", &v[..8])
}

/// An address where nothing listens (bound, then released).
fn closed_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[test]
fn verify_compares_the_aud_in_infisical_and_names_it_when_it_differs() {
    let (c, inf) = chain_with_infisical(Some(&aud(2)));
    let r = verify(&c, &["--sink", "infisical"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r, "consistency").contains(" ok "), "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("{}: {}", infisical_place(), short(&aud(2)))),
        "Infisical was read: {r:?}"
    );
    assert!(
        !r.stdout.contains(".env CLOUDFLARE_AUD_TAG"),
        "--sink infisical alone does not read the .env file: {r:?}"
    );
    assert_eq!(inf.secret_requests().len(), 1, "one read");

    // Infisical holds another AUD: FAIL naming project/environment/path, with the fix.
    inf.put(INF_ENV, INF_PATH, KEY, &aud(1), 5);
    let r = verify(&c, &["--sink", "infisical"]);
    assert_eq!(r.code, 1, "{r:?}");
    let l = line(&r, "consistency");
    assert!(
        l.contains("FAIL") && l.contains(&format!("{} differs", infisical_place())),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("fix: run `audsync sync --domain api.example.com --sink infisical`"),
        "{r:?}"
    );

    // Both sinks (from AUDSYNC_SINK): the .env file agrees, only Infisical is named.
    let mut c = c;
    c.sb.var("AUDSYNC_SINK", "env,infisical");
    let r = verify(&c, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let l = line(&r, "consistency");
    assert!(
        l.contains(&format!("{} differs", infisical_place())) && !l.contains(".env"),
        "{r:?}"
    );
    assert!(r.stdout.contains(".env CLOUDFLARE_AUD_TAG: "), "{r:?}");

    // A missing secret differs too.
    inf.with(|s| s.secrets.clear());
    let r = verify(&c, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("{}: (unset)", infisical_place())),
        "{r:?}"
    );

    // The default sink (env) does not read Infisical at all.
    c.sb.unset("AUDSYNC_SINK");
    let n = inf.requests().len();
    let r = verify(&c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        inf.requests().len(),
        n,
        "Infisical untouched without --sink infisical"
    );

    // verify only ever reads Infisical.
    assert!(inf.writes().is_empty(), "{:?}", inf.writes());
}

#[test]
fn verify_infisical_unreachable_or_unconfigured_is_not_checked_and_a_refusal_fails() {
    // Unreachable: not checked, with the reason; the other places still agree.
    let (mut c, _inf) = chain_with_infisical(Some(&aud(2)));
    c.sb.var("INFISICAL_HOST", &closed_url());
    let r = verify(&c, &["--sink", "infisical"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r, "consistency").contains(" ok "), "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "{}: not checked (Infisical is not reachable",
            infisical_place()
        )),
        "{r:?}"
    );

    // Not configured at all: not checked, naming the settings.
    let mut c = chain();
    c.sb.var("AUDSYNC_SINK", "infisical");
    let r = verify(&c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(
            "Infisical CLOUDFLARE_AUD_TAG: not checked (Infisical is not configured: set INFISICAL_PROJECT_ID"
        ),
        "{r:?}"
    );
    // Half configured: a usage error, as for sync.
    c.sb.var("INFISICAL_PROJECT_ID", PROJECT);
    let r = verify(&c, &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("INFISICAL_CLIENT_ID"), "{r:?}");

    // Reachable but refusing: FAIL with Infisical's fix.
    let (c, inf) = chain_with_infisical(Some(&aud(2)));
    inf.with(|s| {
        s.deny.insert("read");
    });
    let r = verify(&c, &["--sink", "infisical"]);
    assert_eq!(r.code, 1, "{r:?}");
    let l = line(&r, "consistency");
    assert!(
        l.contains("FAIL") && l.contains(&infisical_place()) && l.contains("not allowed to read"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("fix: give the machine identity a role"),
        "{r:?}"
    );
}

#[test]
fn verify_with_infisical_leaks_no_secret_at_vvv() {
    let (c, inf) = chain_with_infisical(Some(&aud(1)));
    let mut runs = vec![
        verify(&c, &["-vvv", "--sink", "env,infisical"]),
        verify(&c, &["-vvv", "--log-format", "json", "--sink", "infisical"]),
    ];
    // A static token, and a refused read.
    let mut c = c;
    c.sb.unset("INFISICAL_CLIENT_ID")
        .unset("INFISICAL_CLIENT_SECRET")
        .var("INFISICAL_TOKEN", STATIC_TOKEN);
    inf.with(|s| {
        s.deny.insert("read");
    });
    runs.push(verify(&c, &["-vvv", "--sink", "infisical"]));
    assert_eq!(runs[0].code, 1, "{:?}", runs[0]);
    assert!(
        runs[0]
            .stdout
            .contains(&format!("{} differs", infisical_place())),
        "{:?}",
        runs[0]
    );
    assert_eq!(runs[2].code, 1, "{:?}", runs[2]);
    let issued = inf.with(|s| s.issued.clone());
    assert_eq!(issued.len(), 2, "two logins, one per Universal Auth run");
    for r in &runs {
        assert!(r.stderr.contains("infisical request"), "trace is on: {r:?}");
        for secret in [CLIENT_SECRET, STATIC_TOKEN, TOKEN]
            .into_iter()
            .chain(issued.iter().map(String::as_str))
        {
            assert!(
                !r.stdout.contains(secret) && !r.stderr.contains(secret),
                "{secret} leaked: {r:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- verify: certs, --url

#[test]
fn verify_certs_unreachable_fails_with_the_fix() {
    let mut c = chain();
    c.sb.var("CLOUDFLARE_AUTH_DOMAIN", &closed_url());
    // Without the redirect check, the configured team domain is the one whose certs are read.
    let r = verify(&c, &["--skip", "redirect,consistency"]);
    assert_eq!(r.code, 1, "{r:?}");
    let l = line(&r, "certs");
    assert!(
        l.contains("FAIL") && l.contains("/cdn-cgi/access/certs") && l.contains("cannot connect"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("fix: check CLOUDFLARE_AUTH_DOMAIN (the team domain"),
        "{r:?}"
    );
    assert!(r.stdout.contains("verify: FAILED (certs)"), "{r:?}");
}

#[test]
fn verify_url_flag_sets_where_the_host_is_reached_and_beats_the_environment() {
    let mut c = chain();
    let url = c.fa.host_url();
    // The environment points at a closed port; the flag wins.
    c.sb.var("AUDSYNC_URL", &closed_url());
    let r = verify(&c, &["--skip", "consistency"]);
    assert_eq!(
        r.code, 1,
        "the environment's URL is used without the flag: {r:?}"
    );
    assert!(line(&r, "redirect").contains("FAIL"), "{r:?}");
    let r = verify(&c, &["--url", &url, "--skip", "consistency"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        line(&r, "redirect").contains(" ok ") && line(&r, "redirect").contains(&aud(2)),
        "{r:?}"
    );
    // And with no AUDSYNC_URL at all, the host is taken from --url when --domain is absent.
    c.sb.unset("AUDSYNC_URL");
    let mut cmd = c.sb.cmd();
    cmd.args(["verify", "--url", &url, "--skip", "consistency"]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r, "redirect").contains(" ok "), "{r:?}");
    assert!(c.fa.with(|s| !s.requests.is_empty()));
}

// ---------------------------------------------------------------- setup takes the sync options

#[test]
fn setup_with_sink_infisical_writes_the_new_aud_to_infisical() {
    let cf = fake(vec![], "cloudflare", ingress());
    let inf = FakeInfisical::start();
    let mut sb = sandbox(&cf);
    sb.var("INFISICAL_HOST", &inf.url())
        .var("INFISICAL_PROJECT_ID", PROJECT)
        .var("INFISICAL_CLIENT_ID", CLIENT_ID)
        .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET)
        .var("INFISICAL_ENVIRONMENT", INF_ENV)
        .var("INFISICAL_SECRET_PATH", INF_PATH);
    let r = setup(&sb, &["--sink", "infisical"]);
    assert_eq!(r.code, 0, "{r:?}");
    let new_aud = cf.with(|s| s.apps[0]["aud"].as_str().unwrap().to_string());
    assert_eq!(
        inf.secret(INF_ENV, INF_PATH, KEY),
        Some((new_aud.clone(), 1)),
        "the created application's AUD is in Infisical"
    );
    assert_eq!(
        sb.read_env(),
        "OTHER=1\n",
        "--sink infisical alone leaves .env alone"
    );
    // Idempotent: the second run writes nothing anywhere.
    let r = setup(&sb, &["--sink", "infisical"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(inf.writes().len(), 1, "{:?}", inf.writes());
    assert_eq!(cf.with(|s| s.apps.len()), 1);
    for s in [CLIENT_SECRET, TOKEN] {
        assert!(!r.stdout.contains(s) && !r.stderr.contains(s));
    }
}

// ---------------------------------------------------------------- the real Docker engine

/// A container that just waits (stops at once), with `KEY=value` in its environment.
fn waiting_container(d: &Docker, value: &str) -> String {
    d.run(
        "lambda",
        &[
            "--stop-timeout",
            "1",
            "-e",
            &format!("{KEY}={value}"),
            &image(),
            "sleep",
            "3600",
        ],
    )
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn verify_names_a_running_container_whose_environment_carries_another_aud() {
    require_docker!(not_podman: "verify and setup are not checked on Podman");
    let d = Docker::new();
    let mut c = chain();
    let name = waiting_container(&d, &aud(1));
    c.sb.var("AUDSYNC_CONTAINER", &name);
    let r = verify(&c, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let l = line(&r, "consistency");
    assert!(
        l.contains("FAIL") && l.contains(&format!("container {name} {KEY} differs")),
        "{r:?}"
    );
    assert!(!l.contains(".env"), "only the container differs: {r:?}");
    assert!(
        r.stdout
            .contains("it recreates the container with the new value"),
        "{r:?}"
    );

    // The fix verify names: sync recreates it with the right value; then everything agrees.
    let mut cmd = c.sb.cmd();
    cmd.args([
        "sync",
        "--domain",
        HOST,
        "--container",
        &name,
        "--settle",
        "1s",
    ]);
    let s = run(&mut cmd);
    assert_eq!(s.code, 0, "{s:?}");
    assert_eq!(env_of(&name, KEY), Some(aud(2)));
    let r = verify(&c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(line(&r, "consistency").contains(" ok "), "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("container {name} {KEY}: {}", short(&aud(2)))),
        "the container was read, not skipped: {r:?}"
    );
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn setup_with_a_container_recreates_it_with_the_created_apps_aud() {
    require_docker!(not_podman: "verify and setup are not checked on Podman");
    let d = Docker::new();
    let cf = fake(vec![], "cloudflare", ingress());
    let sb = sandbox(&cf);
    let name = waiting_container(&d, "old");
    let before = id_of(&name);
    let setup_c = |sb: &Sandbox| {
        let mut cmd = sb.cmd();
        cmd.args([
            "setup",
            "--domain",
            HOST,
            "--container",
            &name,
            "--settle",
            "1s",
            "--output",
            "json",
        ]);
        run(&mut cmd)
    };
    let r = setup_c(&sb);
    assert_eq!(r.code, 0, "{r:?}");
    let new_aud = cf.with(|s| s.apps[0]["aud"].as_str().unwrap().to_string());
    let j: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(j["sync"]["containers"][0]["action"], "recreate", "{r:?}");
    assert_eq!(j["sync"]["containers"][0]["result"], "done", "{r:?}");
    assert_eq!(env_of(&name, KEY), Some(new_aud.clone()));
    assert_ne!(id_of(&name), before, "a new container");
    assert!(sb.read_env().contains(&new_aud));

    // Second run: nothing to do, the container is left alone.
    let (id, started) = (id_of(&name), started_at(&name));
    let r = setup_c(&sb);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!((id_of(&name), started_at(&name)), (id, started));
    assert_eq!(cf.with(|s| s.apps.len()), 1);
}

// ---------------------------------------------------------------- a whole stack from the config file

const API: &str = "api.example.com";
const N8N: &str = "n8n.example.com";

fn write_private(sb: &Sandbox, name: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = sb.path(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Two bindings, each `(host, key, targets)`, both writing `.env`.
fn stack_toml(cf: &FakeCloudflare, bindings: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        "[cloudflare]\naccount_id = \"{ACCOUNT}\"\napi_url = \"{}\"\n",
        cf.url()
    );
    for (host, key, targets) in bindings {
        s.push_str(&format!(
            "\n[[binding]]\ndomain = \"{host}\"\nkey = \"{key}\"\nsinks = [{{ env = \".env\" }}]\ntargets = [{targets}]\n"
        ));
    }
    s
}

/// The stack's sandbox: Cloudflare holds aud(1) for api and aud(3) for n8n; the .env holds
/// aud(1) and `n8n_value`.
fn stack_sandbox(n8n_value: &str, targets: [&str; 2]) -> (FakeCloudflare, Sandbox) {
    let cf = FakeCloudflare::start(vec![app(1, API, &aud(1)), app(3, N8N, &aud(3))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", TOKEN);
    sb.write_env(&format!("API_AUD={}\nN8N_AUD={n8n_value}\n", aud(1)));
    write_private(
        &sb,
        "audsync.toml",
        &stack_toml(
            &cf,
            &[(API, "API_AUD", targets[0]), (N8N, "N8N_AUD", targets[1])],
        ),
    );
    (cf, sb)
}

fn verify_stack(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut cmd = sb.cmd();
    cmd.args(["verify", "--skip", "redirect,certs,token"])
        .args(extra);
    run(&mut cmd)
}

/// The lines of binding `id`'s section.
fn section<'a>(r: &'a Run, id: &str) -> Vec<&'a str> {
    let header = format!("binding {id}");
    r.stdout
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

#[test]
fn verify_with_a_config_file_verifies_every_binding_in_a_section_of_its_own() {
    let (_cf, mut sb) = stack_sandbox("stale", ["", ""]);
    sb.var("DOCKER_HOST", "tcp://127.0.0.1:1");
    let r = verify_stack(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let api = section(&r, API);
    let n8n = section(&r, N8N);
    assert!(
        api.iter()
            .any(|l| l.starts_with("consistency") && l.contains(" ok ")),
        "{r:?}"
    );
    assert!(
        api.iter().any(|l| l.contains(".env API_AUD")),
        "api reads its own key: {r:?}"
    );
    assert!(
        n8n.iter().any(|l| l.starts_with("consistency")
            && l.contains("FAIL")
            && l.contains(".env N8N_AUD differs")),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains(&format!("verify: FAILED ({N8N}: consistency)")),
        "the summary names the failing binding: {r:?}"
    );
    assert!(
        r.stdout.starts_with("credential"),
        "the credential is checked once, first: {r:?}"
    );
    assert_eq!(r.stdout.matches("credential ").count(), 1, "{r:?}");

    // In sync: exit 0.
    sb.write_env(&format!("API_AUD={}\nN8N_AUD={}\n", aud(1), aud(3)));
    let r = verify_stack(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("verify: every check that ran passed"));
}

#[test]
fn verify_domain_picks_one_binding_and_checks_its_own_targets() {
    // The issue: `verify --domain` with a config file checked the flag default `lambda-server`,
    // never the binding's compose service.
    let (_cf, mut sb) = stack_sandbox(
        &aud(3),
        [
            "{ container = \"api-server\" }",
            "{ compose_service = \"ai/n8n\" }",
        ],
    );
    sb.var("DOCKER_HOST", "tcp://127.0.0.1:1");
    let r = verify_stack(&sb, &["--domain", N8N]);
    assert_eq!(r.code, 0, "{r:?}");
    let n8n = section(&r, N8N);
    assert!(
        n8n.iter()
            .any(|l| l.contains("compose service ai/n8n: not checked (Docker is not reachable")),
        "{r:?}"
    );
    assert!(!r.stdout.contains("lambda-server"), "{r:?}");
    assert!(
        !r.stdout.contains(&format!("binding {API}")) && !r.stdout.contains("api-server"),
        "only the picked binding: {r:?}"
    );
}

#[test]
fn verify_a_token_with_many_bindings_is_a_usage_error() {
    let (_cf, sb) = stack_sandbox(&aud(3), ["", ""]);
    let r = verify_stack(&sb, &["--token", "a.b.c"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("a token belongs to one application: pick its binding with --domain"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("a.b.c") && !r.stdout.contains("a.b.c"));
}

// The engine: a compose project (docker-compose v1) with one service per binding.

fn stack_compose_file() -> String {
    format!(
        r#"version: "2.4"
services:
  api:
    image: {image}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    environment:
      API_AUD: ${{API_AUD}}
  n8n:
    image: {image}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    environment:
      N8N_AUD: ${{N8N_AUD}}
"#,
        image = image()
    )
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn verify_a_compose_stack_names_the_stale_container_and_a_missing_service() {
    require_docker!(not_podman: "runs docker-compose; podman-compose is not checked");
    let d = Docker::new();
    let project = d.prefix.clone();
    let targets = |api: &str| {
        [
            format!("{{ compose_service = \"{project}/{api}\" }}"),
            format!("{{ compose_service = \"{project}/n8n\" }}"),
        ]
    };
    let t = targets("api");
    // Compose starts both with .env's values: api aud(1) (in sync), n8n aud(2).
    let (cf, sb) = stack_sandbox(&aud(2), [&t[0], &t[1]]);
    std::fs::write(sb.path("docker-compose.yml"), stack_compose_file()).unwrap();
    d.compose_project(sb.dir(), &project);
    let out = std::process::Command::new("docker-compose")
        .args(["-p", &project, "up", "-d"])
        .current_dir(sb.dir())
        .output()
        .expect("docker-compose");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api_c = format!("{project}_api_1");
    let n8n_c = format!("{project}_n8n_1");
    assert_eq!(env_of(&n8n_c, "N8N_AUD"), Some(aud(2)));
    // Cloudflare says aud(3) for n8n and the .env follows; the container still carries aud(2).
    sb.write_env(&format!("API_AUD={}\nN8N_AUD={}\n", aud(1), aud(3)));

    let r = verify_stack(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let api = section(&r, API);
    assert!(
        api.iter()
            .any(|l| l.starts_with("consistency") && l.contains(" ok ") && l.contains("3 place")),
        "api: Cloudflare, .env and its compose container agree: {r:?}"
    );
    assert!(
        api.iter().any(|l| l.contains(&format!(
            "container {api_c} (compose service {project}/api) API_AUD: {}",
            short(&aud(1))
        ))),
        "{r:?}"
    );
    let n8n = section(&r, N8N);
    assert!(
        n8n.iter().any(|l| l.starts_with("consistency")
            && l.contains("FAIL")
            && l.contains(&format!(
                "container {n8n_c} (compose service {project}/n8n) N8N_AUD differs"
            ))),
        "{r:?}"
    );
    assert!(
        !n8n.iter().any(|l| l.contains(".env N8N_AUD differs")),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains(&format!("verify: FAILED ({N8N}: consistency)")),
        "{r:?}"
    );

    // One binding's compose service does not exist: a FAIL naming it, not `not checked`.
    let t = targets("missing");
    write_private(
        &sb,
        "audsync.toml",
        &stack_toml(&cf, &[(API, "API_AUD", &t[0]), (N8N, "N8N_AUD", &t[1])]),
    );
    let r = verify_stack(&sb, &["--domain", API]);
    assert_eq!(r.code, 1, "{r:?}");
    let api = section(&r, API);
    assert!(
        api.iter().any(|l| l.starts_with("consistency")
            && l.contains("FAIL")
            && l.contains(&format!(
                "compose service {project}/missing has no containers"
            ))),
        "{r:?}"
    );
    assert!(!r.stdout.contains("not checked (compose"), "{r:?}");

    // A configured container that does not exist fails too, naming it.
    let gone = d.name("gone");
    write_private(
        &sb,
        "audsync.toml",
        &stack_toml(
            &cf,
            &[
                (API, "API_AUD", &targets("api")[0]),
                (N8N, "N8N_AUD", &format!("{{ container = \"{gone}\" }}")),
            ],
        ),
    );
    sb.write_env(&format!("API_AUD={}\nN8N_AUD={}\n", aud(1), aud(3)));
    let r = verify_stack(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        section(&r, N8N).iter().any(|l| l.starts_with("consistency")
            && l.contains("FAIL")
            && l.contains(&format!("container {gone} does not exist"))),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains(&format!("verify: FAILED ({N8N}: consistency)")),
        "the api binding passes: {r:?}"
    );
}
