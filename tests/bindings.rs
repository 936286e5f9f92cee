//! Many bindings in one `audsync.toml`: one pass over every binding against the fake Cloudflare
//! and Infisical and the real Docker engine.

use std::os::unix::fs::PermissionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::require_docker;
use crate::support::cloudflare::{ACCOUNT, FakeCloudflare, app, aud};
use crate::support::docker::{Docker, docker, env_of, id_of, image};
use crate::support::infisical::{CLIENT_ID, CLIENT_SECRET, FakeInfisical, PROJECT};
use crate::support::{Run, Sandbox, run};

const SERVER: &str = "trap 'exit 0' TERM; echo up; sleep 3600 & wait";

fn write_private(sb: &Sandbox, name: &str, text: &str) {
    let p = sb.path(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn sync(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["sync", "--output", "json"]).args(extra);
    run(&mut c)
}

/// Now, as `docker events --since` takes it (seconds with nanoseconds).
fn now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// How many containers carrying `label` the engine created since `since` (Unix seconds).
fn creates(label: &str, since: String) -> usize {
    let out = docker(&[
        "events",
        "--since",
        &since,
        "--until",
        &now(),
        "--filter",
        "event=create",
        "--filter",
        &format!("label={label}"),
        "--format",
        "{{.ID}}",
    ]);
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

fn binding<'a>(j: &'a Value, id: &str) -> &'a Value {
    j["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("no binding {id} in {j}"))
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn three_hosts_two_keys_in_one_env_one_in_infisical_one_recreate_per_container() {
    require_docker!(not_podman: "not checked on Podman");
    let cf = FakeCloudflare::start(vec![
        app(1, "api.example.com", &aud(1)),
        app(2, "n8n.example.com", &aud(2)),
        app(3, "chat.example.com", &aud(3)),
    ]);
    let inf = FakeInfisical::start();
    inf.put("dev", "/chat", "CHAT_AUD", "old", 1);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", crate::support::cloudflare::TOKEN);
    let d = Docker::new();
    // "both" reads API_AUD and N8N_AUD from its environment; "chat" reads CHAT_AUD.
    let both = d.run(
        "both",
        &[
            "--label",
            &format!("t={}-both", d.prefix),
            "-e",
            "API_AUD=old",
            "-e",
            "N8N_AUD=old",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    let chat = d.run(
        "chat",
        &[
            "--label",
            &format!("t={}-chat", d.prefix),
            "-e",
            "CHAT_AUD=old",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    std::fs::write(
        sb.path("stack.env"),
        "# the stack\nAPI_AUD=old\nN8N_AUD=old\nOTHER=1\n",
    )
    .unwrap();
    write_private(&sb, "inf-id", CLIENT_ID);
    write_private(&sb, "inf-secret", CLIENT_SECRET);
    let toml = format!(
        r#"[cloudflare]
account_id = "{ACCOUNT}"
api_url = "{cf}"

[infisical]
host = "{inf}"
project_id = "{PROJECT}"
client_id_file = "inf-id"
client_secret_file = "inf-secret"

[[binding]]
domain = "api.example.com"
key = "API_AUD"
sinks = [{{ env = "stack.env" }}]
targets = [{{ container = "{both}" }}]

[[binding]]
domain = "n8n.example.com"
key = "N8N_AUD"
sinks = [{{ env = "stack.env" }}]
targets = [{{ container = "{both}" }}]

[[binding]]
name = "chat"
domain = "chat.example.com"
key = "CHAT_AUD"
sinks = [{{ infisical = "/chat" }}]
targets = [{{ container = "{chat}" }}]
"#,
        cf = cf.url(),
        inf = inf.url(),
    );
    write_private(&sb, "audsync.toml", &toml);
    let t0 = now();
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["schema"], 2);
    assert_eq!(j["status"], "changed");
    assert!(
        j.get("aud").is_none(),
        "no schema-1 fields for a config file run: {j}"
    );
    assert_eq!(j["bindings"].as_array().unwrap().len(), 3);
    assert_eq!(binding(&j, "n8n.example.com")["aud"], aud(2));
    assert_eq!(binding(&j, "chat")["sinks"][0]["kind"], "infisical");
    // Both keys in one file, nothing else touched.
    assert_eq!(
        std::fs::read_to_string(sb.path("stack.env")).unwrap(),
        format!(
            "# the stack\nAPI_AUD={}\nN8N_AUD={}\nOTHER=1\n",
            aud(1),
            aud(2)
        )
    );
    assert_eq!(inf.secret("dev", "/chat", "CHAT_AUD"), Some((aud(3), 2)));
    // Each container acted on once; "both" carries both new values.
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{j}");
    assert!(
        targets
            .iter()
            .all(|t| t["result"] == "done" && t["action"] == "recreate"),
        "{j}"
    );
    assert_eq!(env_of(&both, "API_AUD"), Some(aud(1)));
    assert_eq!(env_of(&both, "N8N_AUD"), Some(aud(2)));
    assert_eq!(env_of(&chat, "CHAT_AUD"), Some(aud(3)));
    assert_eq!(
        creates(&format!("t={}-both", d.prefix), t0.clone()),
        1,
        "one recreate of the container that reads two keys"
    );
    assert_eq!(creates(&format!("t={}-chat", d.prefix), t0.clone()), 1);
    // Cold: one listing serves all three hosts.
    assert_eq!(j["requests"], 1, "{j}");
    assert_eq!(cf.requests().len(), 1);

    // A second pass does nothing, and costs one request.
    let ids = (id_of(&both), id_of(&chat));
    let writes = inf.writes().len();
    let t1 = now();
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["status"], "in_sync", "{j}");
    assert_eq!(j["requests"], 1, "{j}");
    assert_eq!((id_of(&both), id_of(&chat)), ids, "nothing recreated");
    assert_eq!(creates(&format!("t={}-both", d.prefix), t1.clone()), 0);
    assert_eq!(inf.writes().len(), writes, "nothing written to Infisical");
}

fn stack_toml(cf: &FakeCloudflare, hosts: &[&str]) -> String {
    let mut s = format!(
        "[cloudflare]\naccount_id = \"{ACCOUNT}\"\napi_url = \"{}\"\n",
        cf.url()
    );
    for (i, h) in hosts.iter().enumerate() {
        s.push_str(&format!(
            "\n[[binding]]\ndomain = \"{h}\"\nkey = \"AUD_{i}\"\nsinks = [{{ env = \"stack.env\" }}]\n"
        ));
    }
    s
}

#[test]
fn a_failing_binding_beside_a_healthy_one_the_next_pass_finishes_it() {
    let cf = FakeCloudflare::start(vec![app(1, "api.example.com", &aud(1))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", crate::support::cloudflare::TOKEN);
    std::fs::write(sb.path("stack.env"), "AUD_0=old\nAUD_1=old\n").unwrap();
    write_private(
        &sb,
        "audsync.toml",
        &stack_toml(&cf, &["api.example.com", "new.example.com"]),
    );
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j["status"], "failed");
    assert_eq!(binding(&j, "api.example.com")["status"], "changed");
    let bad = binding(&j, "new.example.com");
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["stage"], "source");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("binding new.example.com:"),
        "{j}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.path("stack.env")).unwrap(),
        format!("AUD_0={}\nAUD_1=old\n", aud(1)),
        "the healthy binding is applied, the failed one left as it was"
    );
    // The application appears (e.g. created by hand): the next pass finishes the job.
    cf.with(|s| s.apps.push(app(2, "new.example.com", &aud(2))));
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "changed");
    assert_eq!(
        std::fs::read_to_string(sb.path("stack.env")).unwrap(),
        format!("AUD_0={}\nAUD_1={}\n", aud(1), aud(2))
    );
}

/// Requests of a cold and of a warm no-change pass over `n` bindings, with `apps` applications
/// in the account (the fake's page size is Cloudflare's).
fn request_counts(n: usize, apps: usize) -> (u64, u64, u64) {
    let mut all: Vec<Value> = (0..apps)
        .map(|i| app(i as u32 + 10, &format!("other{i}.example.com"), &aud(9)))
        .collect();
    let hosts: Vec<String> = (0..n).map(|i| format!("h{i}.example.com")).collect();
    for (i, h) in hosts.iter().enumerate() {
        all.push(app(1000 + i as u32, h, &aud((i % 200) as u8 + 1)));
    }
    let cf = FakeCloudflare::start(all);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", crate::support::cloudflare::TOKEN);
    std::fs::write(sb.path("stack.env"), "").unwrap();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    write_private(&sb, "audsync.toml", &stack_toml(&cf, &refs));
    let cold = sync(&sb, &[]);
    assert_eq!(cold.code, 0, "{cold:?}");
    let warm = sync(&sb, &[]);
    assert_eq!(warm.code, 0, "{warm:?}");
    assert_eq!(warm.json()["status"], "in_sync");
    // The page size the client asked for.
    let per_page = cf
        .requests()
        .iter()
        .find_map(|r| r.query.get("per_page").and_then(|p| p.parse().ok()))
        .unwrap_or(1000);
    (
        cold.json()["requests"].as_u64().unwrap(),
        warm.json()["requests"].as_u64().unwrap(),
        per_page,
    )
}

/// A server that serves 20 applications a page whatever `per_page` asks: 120 applications are
/// six pages, so a warm no-change pass over 3 bindings asks for each (3 requests), not for a
/// six-page listing. The cold pass learns the size served.
#[test]
fn the_choice_of_a_listing_uses_the_page_size_the_server_served() {
    let mut all: Vec<Value> = (0..117)
        .map(|i| app(i + 10, &format!("other{i}.example.com"), &aud(9)))
        .collect();
    let hosts = ["h0.example.com", "h1.example.com", "h2.example.com"];
    for (i, h) in hosts.iter().enumerate() {
        all.push(app(1000 + i as u32, h, &aud(i as u8 + 1)));
    }
    let cf = FakeCloudflare::start(all);
    cf.with(|s| s.page_cap = Some(20));
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", crate::support::cloudflare::TOKEN);
    std::fs::write(sb.path("stack.env"), "").unwrap();
    write_private(&sb, "audsync.toml", &stack_toml(&cf, &hosts));
    let cold = sync(&sb, &[]);
    assert_eq!(cold.code, 0, "{cold:?}");
    assert_eq!(
        cold.json()["requests"],
        6,
        "one listing of six pages: {cold:?}"
    );
    let n = cf.requests().len();
    let warm = sync(&sb, &[]);
    assert_eq!(warm.code, 0, "{warm:?}");
    assert_eq!(warm.json()["status"], "in_sync");
    assert_eq!(warm.json()["requests"], 3, "{warm:?}");
    let reqs = cf.requests();
    assert_eq!(
        reqs.len() - n,
        3,
        "one request per binding: {:?}",
        &reqs[n..]
    );
    assert!(reqs[n..].iter().all(|r| !r.query.contains_key("page")));
}

#[test]
fn a_pass_over_many_bindings_never_lists_once_per_binding() {
    for (n, apps) in [(1usize, 0usize), (3, 0), (20, 0), (20, 130)] {
        let (cold, warm, per_page) = request_counts(n, apps);
        let total = (n + apps) as u64;
        let pages = total.div_ceil(per_page).max(1);
        eprintln!("{n} bindings, {total} applications: cold {cold}, warm {warm} requests");
        assert!(
            warm <= pages.min(n as u64).max(1),
            "{n} bindings over {total} apps: warm pass made {warm} requests (pages {pages})"
        );
        assert!(
            cold <= pages.max(1),
            "{n} bindings: cold pass made {cold} requests"
        );
    }
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_credential_in_the_apps_env_file_is_named_by_sync_and_fails_verify() {
    require_docker!(not_podman: "verify and setup are not checked on Podman");
    let cf = FakeCloudflare::start(vec![app(2, "api.example.com", &aud(2))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_URL", &cf.url())
        .var("CLOUDFLARE_ACCOUNT_ID", ACCOUNT);
    let token = crate::support::cloudflare::TOKEN;
    // Today's single-file set-up: audsync's token sits in the .env compose hands to the app.
    sb.write_env(&format!(
        "CLOUDFLARE_AUD_TAG={}\nCLOUDFLARE_API_TOKEN={token}\nAUDSYNC_DOMAIN=api.example.com\n",
        aud(2)
    ));
    let d = Docker::new();
    let env_file = sb.env_path().display().to_string();
    let c = d.run(
        "leaky",
        &["--env-file", &env_file, &image(), "sh", "-c", SERVER],
    );
    let r = run(sb
        .cmd()
        .args(["sync", "--container", &c, "--output", "json", "-vvv"]));
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    let warnings = j["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains(&format!("container {c} carries CLOUDFLARE_API_TOKEN"))),
        "{j}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("AUDSYNC_DOMAIN")),
        "{j}"
    );
    assert!(
        !r.stdout.contains(token) && !r.stderr.contains(token),
        "the value itself is never shown: {r:?}"
    );
    // A container that only reads the key is not flagged.
    let clean = d.run(
        "clean",
        &[
            "-e",
            &format!("CLOUDFLARE_AUD_TAG={}", aud(2)),
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    let r = run(sb
        .cmd()
        .args(["sync", "--container", &clean, "--output", "json"]));
    assert!(r.json().get("warnings").is_none(), "{r:?}");
    // verify fails naming the variable.
    let r = run(sb.cmd().args([
        "verify",
        "--container",
        &c,
        "--skip",
        "redirect,certs,token",
    ]));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.contains("carries CLOUDFLARE_API_TOKEN")
            || r.stderr.contains("carries CLOUDFLARE_API_TOKEN"),
        "{r:?}"
    );
    assert!(
        !r.stdout.contains(token) && !r.stderr.contains(token),
        "{r:?}"
    );
}

#[test]
fn config_command_exits_2_listing_every_problem_and_quotes_no_value() {
    let sb = Sandbox::new();
    write_private(
        &sb,
        "audsync.toml",
        "[cloudflare]\ntoken = [\"cf-SECRET-in-an-array\"]\naccount = \"x\"\n\n[[binding]]\ndomian = \"api.example.com\"\nsinks = []\n",
    );
    let r = run(sb.cmd().args(["config", "-vvv"]));
    assert_eq!(r.code, 2, "{r:?}");
    for want in [
        "audsync.toml:2:9: `cloudflare.token` must be a string",
        "audsync.toml:3:1: unknown setting `cloudflare.account`",
        "audsync.toml:6:1: unknown binding key `domian`",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?}: {r:?}");
    }
    assert!(
        !r.stderr.contains("cf-SECRET") && !r.stdout.contains("cf-SECRET"),
        "{r:?}"
    );
    // `sync` reads the same file and refuses the same way, before contacting anything.
    let r = run(sb.cmd().args(["sync"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("unknown binding key `domian`"), "{r:?}");
}

#[test]
fn get_reads_the_binding_from_the_config_file() {
    let cf = FakeCloudflare::start(vec![
        app(1, "api.example.com", &aud(1)),
        app(2, "n8n.example.com", &aud(2)),
    ]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", crate::support::cloudflare::TOKEN);
    write_private(
        &sb,
        "audsync.toml",
        &stack_toml(&cf, &["api.example.com", "n8n.example.com"]),
    );
    let r = run(sb.cmd().args(["get", "--domain", "n8n.example.com"]));
    assert_eq!((r.code, r.stdout.trim()), (0, aud(2).as_str()), "{r:?}");
    let r = run(sb.cmd().args(["get"]));
    assert_eq!(r.code, 2, "two bindings, none picked: {r:?}");
}

#[test]
fn get_domain_also_takes_a_bindings_name() {
    let cf = FakeCloudflare::start(vec![
        app(1, "api.example.com", &aud(1)),
        app(2, "n8n.example.com", &aud(2)),
    ]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", crate::support::cloudflare::TOKEN);
    let toml = stack_toml(&cf, &["api.example.com", "n8n.example.com"]).replace(
        "domain = \"n8n.example.com\"",
        "name = \"workflows\"\ndomain = \"n8n.example.com\"",
    );
    write_private(&sb, "audsync.toml", &toml);
    let r = run(sb.cmd().args(["get", "--domain", "workflows"]));
    assert_eq!((r.code, r.stdout.trim()), (0, aud(2).as_str()), "{r:?}");
    // A host still picks by host.
    let r = run(sb.cmd().args(["get", "--domain", "api.example.com"]));
    assert_eq!((r.code, r.stdout.trim()), (0, aud(1).as_str()), "{r:?}");
}

#[test]
fn config_command_reports_missing_credentials() {
    let sb = Sandbox::new();
    write_private(
        &sb,
        "audsync.toml",
        "[[binding]]\ndomain = \"api.example.com\"\nsinks = [{ env = \".env\" }]\n",
    );
    let r = run(sb.cmd().args(["config"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no Cloudflare credentials"), "{r:?}");
}

#[test]
fn setup_takes_its_binding_and_its_lock_and_state_from_the_config_file() {
    let cf = FakeCloudflare::start(vec![app(1, "api.example.com", &aud(1))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", crate::support::cloudflare::TOKEN);
    std::fs::write(sb.path("stack.env"), "AUD_0=old\nAUD_1=old\n").unwrap();
    write_private(
        &sb,
        "audsync.toml",
        &stack_toml(&cf, &["api.example.com", "new.example.com"]),
    );
    let r = run(sb.cmd().args([
        "setup",
        "--domain",
        "api.example.com",
        "--access-emails",
        "ops@example.com",
        "--restart",
        "none",
    ]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(sb.path("stack.env")).unwrap(),
        format!("AUD_0={}\nAUD_1=old\n", aud(1)),
        "the binding's own key and sink"
    );
    assert!(
        sb.path("audsync.toml.audsync-state.json").is_file(),
        "the config's state file"
    );
    assert!(!sb.path("stack.env.audsync-state.json").exists());
}

/// A `.env` that does not exist, written by two bindings: the failure is said once, and no
/// report line shows an empty field.
#[test]
fn a_missing_env_file_is_reported_once_with_no_empty_fields() {
    let cf = FakeCloudflare::start(vec![
        app(1, "api.example.com", &aud(1)),
        app(2, "n8n.example.com", &aud(2)),
    ]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", crate::support::cloudflare::TOKEN);
    write_private(
        &sb,
        "audsync.toml",
        &stack_toml(&cf, &["api.example.com", "n8n.example.com"]),
    );
    let r = run(sb.cmd().args(["sync", "--restart", "none"]));
    assert_eq!(r.code, 1, "{r:?}");
    // Once in the report, once in the error line on stderr; not once per binding and sink.
    assert_eq!(r.stdout.matches("does not exist").count(), 1, "{r:?}");
    assert_eq!(r.stderr.matches("does not exist").count(), 1, "{r:?}");
    assert!(
        r.stderr
            .contains("bindings api.example.com, n8n.example.com: sink env "),
        "{r:?}"
    );
    for empty in ["()", ": (unchanged)", "(unchanged) [failed]", "[]", ": : "] {
        assert!(!r.stdout.contains(empty), "{empty:?} in {r:?}");
    }
    assert!(r.stdout.contains("AUD_0 [failed]"), "{r:?}");
    // JSON says it once too.
    let j = sync(&sb, &["--restart", "none"]).json();
    assert_eq!(
        j["error"]
            .as_str()
            .unwrap()
            .matches("does not exist")
            .count(),
        1,
        "{j}"
    );
}

/// Every bad value of the file in one go, each at its own line and column: the settings', the
/// file-wide ids', every binding's (a missing key at its binding's header), with the allowed
/// values; a short enumerated word is quoted, free text never (a domain, a URL with a password,
/// an id may be a secret typed into the wrong place); a file-wide setting's problem once.
#[test]
fn validation_names_each_bad_value_at_its_line_with_the_allowed_values() {
    let sb = Sandbox::new();
    let doc = [
        "restart = \"recreat\"",                                                 // 1
        "write_mode = \"in place please\"",                                      // 2
        "timeout = \"tok-SECRET-1\"",                                            // 3
        "",                                                                      // 4
        "[cloudflare]",                                                          // 5
        "account_id = \"acc-SECRET-2\"",                                         // 6
        "token = \"x\"",                                                         // 7
        "",                                                                      // 8
        "[[binding]]",                                                           // 9
        "name = \"one\"",                                                        // 10
        "domain = \"tok_SECRET3 pasted here\"",                                  // 11
        "restart = \"sometimes\"",                                               // 12
        "sinks = [{ env = \"a.env\" }]",                                         // 13
        "",                                                                      // 14
        "[[binding]]",                                                           // 15
        "domain = \"b.example.com\"",                                            // 16
        "source = \"edge\"",                                                     // 17
        "url = \"ftp://user:pw-SECRET-4@b.example.com/\"",                       // 18
        "key = \"not a key SECRET5\"",                                           // 19
        "  targets = [{ compose_service = \"SECRET6\" }, { container = \"\" }]", // 20
        "sinks = [{ env = \"b.env\" }]",                                         // 21
        "",                                                                      // 22
        "[[binding]]",                                                           // 23
        "app_id = \"notauuid-SECRET7\"",                                         // 24
        "create = \"yes please SECRET8\"",                                       // 25
        "",                                                                      // 26
        "[[binding]]",                                                           // 27
        "tunnel_id = \"SECRET9\"",                                               // 28
        "sinks = [{ env = \"d.env\" }]",                                         // 29
    ]
    .join("\n");
    write_private(&sb, "audsync.toml", &doc);
    let r = run(sb.cmd().args(["config"]));
    assert_eq!(r.code, 2, "{r:?}");
    let want = [
        "audsync.toml:1:11: `restart` = \"recreat\" is not one of: auto, restart, recreate, rollout, none",
        "audsync.toml:2:14: `write_mode` must be one of: atomic, in-place",
        "audsync.toml:3:11: `timeout` is not a valid DURATION",
        "audsync.toml:6:14: `cloudflare.account_id` is not a Cloudflare id",
        "audsync.toml:11:10: `domain` is not a host name",
        "audsync.toml:12:11: `restart` = \"sometimes\" is not one of: auto, restart, recreate, rollout, none",
        "audsync.toml:18:7: `url` must be an http(s) URL with a host",
        "audsync.toml:19:7: `key` is not a variable name",
        "audsync.toml:20:34: `compose_service`: expected PROJECT/SERVICE",
        "audsync.toml:20:61: empty container name",
        "audsync.toml:23:1: give at least one sink",
        "audsync.toml:24:10: `app_id` is not a Cloudflare id",
        "audsync.toml:25:10: `create` must be one of: true, false",
        "audsync.toml:27:1: give `domain` (the host the Access application protects) or `app_id`",
        "audsync.toml:28:13: `tunnel_id` is not a Cloudflare id",
    ];
    for w in want {
        assert!(r.stderr.contains(w), "missing {w:?}: {r:?}");
    }
    // In the file's order, one line each, nothing else.
    let listed: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| {
            l.trim_start()
                .starts_with(&*sb.path("audsync.toml").display().to_string())
        })
        .collect();
    assert_eq!(listed.len(), want.len(), "{r:?}");
    for (l, w) in listed.iter().zip(want) {
        assert!(l.contains(w), "{l:?} is not {w:?}: {r:?}");
    }
    assert!(
        !r.stderr.contains("SECRET") && !r.stdout.contains("SECRET"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("pw-"), "{r:?}");
    // `sync` refuses the same way, before contacting anything.
    let r = run(sb.cmd().args(["sync", "--dry-run"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(want[4]), "{r:?}");
    assert!(!r.stderr.contains("SECRET"), "{r:?}");
}
