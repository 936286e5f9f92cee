//! `audsync sync` and `audsync get` against the fake Cloudflare, through the real binary.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use serde_json::Value;

use crate::support::cloudflare::{
    self, ACCOUNT, EMAIL, FakeCloudflare, Fault, GLOBAL_KEY, TOKEN, app, aud, uuid,
};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const ENV: &str = "# lambda-server settings\nexport DATABASE_URL=\"postgres://db/x\"\nCLOUDFLARE_AUD_TAG=old\nOTHER=1\n";

fn setup() -> (FakeCloudflare, Sandbox) {
    let cf = FakeCloudflare::start(vec![
        app(1, "web.example.com", &aud(1)),
        app(2, HOST, &aud(2)),
    ]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(ENV);
    (cf, sb)
}

fn sync(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--restart", "none"])
        .args(extra);
    run(&mut c)
}

#[test]
fn happy_path_writes_the_new_aud_and_nothing_else() {
    let (cf, sb) = setup();
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        sb.read_env(),
        ENV.replace(
            "CLOUDFLARE_AUD_TAG=old",
            &format!("CLOUDFLARE_AUD_TAG={}", aud(2))
        )
    );
    // --restart none: written to the .env, not applied to the container.
    assert!(
        r.stdout.contains("written, not applied (--restart none)"),
        "{r:?}"
    );
    let reqs = cf.requests();
    assert_eq!(reqs.len(), 1, "one filtered list call: {reqs:?}");
    assert_eq!(reqs[0].path, format!("/accounts/{ACCOUNT}/access/apps"));
    assert_eq!(reqs[0].query.get("domain").map(String::as_str), Some(HOST));
    assert_eq!(reqs[0].query.get("exact").map(String::as_str), Some("true"));
    assert_eq!(
        reqs[0].headers.get("authorization"),
        Some(&format!("Bearer {TOKEN}"))
    );
}

#[test]
fn no_change_run_writes_nothing_and_uses_the_cached_app_id() {
    let (cf, sb) = setup();
    assert_eq!(sync(&sb, &[]).code, 0);
    let before = std::fs::metadata(sb.env_path()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let n = cf.requests().len();
    let r = sync(&sb, &["--output", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let after = std::fs::metadata(sb.env_path()).unwrap();
    assert_eq!(
        (before.mtime_nsec(), before.ino()),
        (after.mtime_nsec(), after.ino()),
        "no write at all"
    );
    let j = r.json();
    assert_eq!(j["changed"], false);
    assert_eq!(j["status"], "in_sync");
    let reqs = cf.requests();
    assert_eq!(reqs.len() - n, 1, "a no-change pass is one request");
    assert_eq!(
        reqs.last().unwrap().path,
        format!("/accounts/{ACCOUNT}/access/apps/{}", uuid(2))
    );
}

#[test]
fn recreated_application_invalidates_the_cache() {
    let (cf, sb) = setup();
    assert_eq!(sync(&sb, &[]).code, 0);
    // Delete and create again: new id, new AUD.
    cf.with(|s| {
        s.apps.retain(|a| a["domain"] != HOST);
        s.apps.push(app(9, HOST, &aud(9)));
    });
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        sb.read_env()
            .contains(&format!("CLOUDFLARE_AUD_TAG={}", aud(9)))
    );
}

#[test]
fn dry_run_prints_the_plan_changes_nothing_and_exits_3() {
    let (_cf, sb) = setup();
    let r = sync(&sb, &["--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(sb.read_env(), ENV);
    assert!(r.stdout.contains("(not an AUD) -> 02020202"), "{r:?}");
    assert!(r.stdout.contains("dry run"), "{r:?}");
    assert!(
        !sb.path(".env.audsync-state.json").exists(),
        "dry run writes no state"
    );
    // In sync: dry run exits 0.
    assert_eq!(sync(&sb, &[]).code, 0);
    assert_eq!(sync(&sb, &["--dry-run"]).code, 0);
}

#[test]
fn json_output_has_the_documented_fields() {
    let (_cf, sb) = setup();
    let r = sync(&sb, &["--output", "json", "--container", "lambda-server"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["aud"], aud(2));
    // An old value that is not an AUD is not carried (issue 21).
    assert_eq!(j["previous"], serde_json::Value::Null);
    assert_eq!(j["changed"], true);
    assert_eq!(j["dry_run"], false);
    // --restart none: the container still runs the old value.
    assert_eq!(j["status"], "written");
    assert_eq!(j["app"]["id"], uuid(2));
    assert_eq!(j["sinks"][0]["kind"], "env");
    assert_eq!(j["sinks"][0]["result"], "written");
    assert_eq!(j["sinks"][0]["old"], serde_json::Value::Null);
    assert_eq!(j["containers"][0]["name"], "lambda-server");
    assert_eq!(j["containers"][0]["action"], "none");
}

#[test]
fn get_prints_the_aud_alone() {
    let (_cf, sb) = setup();
    let mut c = sb.cmd();
    c.args(["get", "--domain", HOST]);
    let r = run(&mut c);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, format!("{}\n", aud(2)).as_str()),
        "{r:?}"
    );
    assert_eq!(sb.read_env(), ENV, "get writes nothing");
}

#[test]
fn app_id_skips_the_lookup() {
    let (cf, sb) = setup();
    let mut c = sb.cmd();
    c.args(["get", "--app-id", &uuid(1)]);
    let r = run(&mut c);
    assert_eq!(r.stdout.trim(), aud(1), "{r:?}");
    let reqs = cf.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].path,
        format!("/accounts/{ACCOUNT}/access/apps/{}", uuid(1))
    );
}

#[test]
fn global_key_auth_sends_both_headers() {
    let (cf, mut sb) = setup();
    sb.unset("CLOUDFLARE_API_TOKEN")
        .var("CLOUDFLARE_EMAIL", EMAIL)
        .var("CLOUDFLARE_API_KEY", GLOBAL_KEY);
    assert_eq!(sync(&sb, &[]).code, 0);
    let h = &cf.requests()[0].headers;
    assert_eq!(h.get("x-auth-email").map(String::as_str), Some(EMAIL));
    assert_eq!(h.get("x-auth-key").map(String::as_str), Some(GLOBAL_KEY));
    assert!(!h.contains_key("authorization"));
}

#[test]
fn account_is_detected_when_exactly_one_is_visible() {
    let (cf, mut sb) = setup();
    sb.unset("CLOUDFLARE_ACCOUNT_ID");
    assert_eq!(sync(&sb, &[]).code, 0);
    assert_eq!(cf.requests()[0].path, "/accounts");
    cf.with(|s| {
        s.accounts
            .push(serde_json::json!({"id": "ffffffffffffffffffffffffffffffff", "name": "Work"}))
    });
    std::fs::remove_file(sb.path(".env.audsync-state.json")).unwrap();
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("CLOUDFLARE_ACCOUNT_ID")
            && r.stderr.contains("Home Lab")
            && r.stderr.contains("Work"),
        "{r:?}"
    );
}

#[test]
fn pagination_is_followed_when_the_server_ignores_the_filter() {
    let mut apps: Vec<Value> = (100..2400)
        .map(|i| app(i, &format!("svc{i}.example.com"), &aud(3)))
        .collect();
    apps.insert(2257, app(2, HOST, &aud(2)));
    let cf = FakeCloudflare::start(apps);
    cf.with(|s| s.ignore_domain_filter = true);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(ENV);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(sb.read_env().contains(&aud(2)));
    let pages: Vec<String> = cf
        .requests()
        .iter()
        .map(|r| r.query["page"].clone())
        .collect();
    assert_eq!(
        pages,
        (1..=3).map(|p| p.to_string()).collect::<Vec<_>>(),
        "2,301 apps at 1000 a page (the endpoint's maximum)"
    );
}

#[test]
fn app_found_only_by_destination_when_the_filter_misses_it() {
    let mut a = app(5, "legacy.example.com", &aud(5));
    a["destinations"] = serde_json::json!([{"type": "public", "uri": "legacy.example.com"}, {"type": "public", "uri": HOST}]);
    let cf = FakeCloudflare::start(vec![a]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(ENV);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(sb.read_env().contains(&aud(5)));
}

#[test]
fn no_matching_app_names_the_host_and_lists_what_was_seen() {
    let cf = FakeCloudflare::start(vec![
        app(1, "web.example.com", &aud(1)),
        app(3, "api.example.com.evil.net", &aud(3)),
    ]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(ENV);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("no Access application protects api.example.com"),
        "{r:?}"
    );
    assert!(r.stderr.contains("App 1 (web.example.com"), "{r:?}");
    assert_eq!(sb.read_env(), ENV);
}

#[test]
fn ambiguous_matches_are_listed() {
    let mut a = app(1, "api.example.com/v1", &aud(1));
    a["destinations"] = serde_json::json!([{"type": "public", "uri": "api.example.com/v1"}]);
    let mut b = app(2, "api.example.com/v2", &aud(2));
    b["destinations"] = serde_json::json!([{"type": "public", "uri": "api.example.com/v2"}]);
    let cf = FakeCloudflare::start(vec![a, b]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(ENV);
    // Each covers only a path: neither is the host's (issue 21), and both paths are named.
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("only paths of it")
            && r.stderr.contains("api.example.com/v1")
            && r.stderr.contains("api.example.com/v2"),
        "{r:?}"
    );
    assert_eq!(sb.read_env(), ENV);
    // Two applications for the whole host are ambiguous.
    cf.with(|s| {
        s.apps = vec![app(1, HOST, &aud(1)), app(2, HOST, &aud(2))];
    });
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("2 Access applications match")
            && r.stderr.contains("App 1")
            && r.stderr.contains("App 2"),
        "{r:?}"
    );
    assert_eq!(sb.read_env(), ENV);
}

#[test]
fn malformed_aud_writes_nothing() {
    let cf = FakeCloudflare::start(vec![app(2, HOST, "NOT-HEX")]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(ENV);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not 64 lowercase hex"), "{r:?}");
    assert_eq!(sb.read_env(), ENV);
}

#[test]
fn authentication_error_shows_code_message_and_hint() {
    let (_cf, mut sb) = setup();
    sb.var("CLOUDFLARE_API_TOKEN", "wrong-token");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("[10000] Authentication error"), "{r:?}");
    assert!(r.stderr.contains("Access: Apps and Policies Read"), "{r:?}");
    assert!(!r.stderr.contains("wrong-token"));
}

#[test]
fn rate_limit_is_retried_after_retry_after() {
    let (cf, sb) = setup();
    cf.fault(Fault::Status429 {
        retry_after: Some("1".into()),
    });
    let t = std::time::Instant::now();
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(900),
        "Retry-After honoured"
    );
    assert_eq!(cf.requests().len(), 2);
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let (cf, sb) = setup();
    cf.fault(Fault::Status500);
    assert_eq!(sync(&sb, &[]).code, 0);
    assert_eq!(cf.requests().len(), 2);

    let (cf, sb) = setup();
    for _ in 0..10 {
        cf.fault(Fault::Status500);
    }
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("HTTP 500"), "{r:?}");
    assert_eq!(cf.requests().len(), 4, "4 attempts, then give up");
    assert_eq!(sb.read_env(), ENV);
}

#[test]
fn other_client_errors_are_not_retried() {
    let (cf, mut sb) = setup();
    sb.var("CLOUDFLARE_ACCOUNT_ID", "ffffffffffffffffffffffffffffffff");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(cf.requests().len(), 1);
    assert!(
        r.stderr.contains("HTTP 404") && r.stderr.contains("CLOUDFLARE_ACCOUNT_ID"),
        "{r:?}"
    );
}

#[test]
fn malformed_json_and_success_false_are_errors() {
    let (cf, sb) = setup();
    cf.fault(Fault::Malformed);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("malformed answer"), "{r:?}");
    cf.fault(Fault::SuccessFalse);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("[7003]"), "{r:?}");
    assert_eq!(sb.read_env(), ENV);
}

#[test]
fn request_timeout_is_enforced() {
    let (cf, sb) = setup();
    for _ in 0..4 {
        cf.fault(Fault::Delay(5_000));
    }
    let t = std::time::Instant::now();
    let r = sync(&sb, &["--timeout", "300ms"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(t.elapsed() < std::time::Duration::from_secs(15));
    assert!(
        r.stderr.contains("timed out") || r.stderr.contains("timeout"),
        "{r:?}"
    );
}

#[test]
fn missing_credentials_and_selector_are_usage_errors() {
    let (_cf, mut sb) = setup();
    sb.unset("CLOUDFLARE_API_TOKEN");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("CLOUDFLARE_API_TOKEN"), "{r:?}");
    let mut c = sb.cmd();
    c.args(["sync", "--restart", "none"]);
    let r = run(&mut c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--domain"), "{r:?}");
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--restart", "sometimes"]);
    assert_eq!(run(&mut c).code, 2);
}

#[test]
fn precedence_flag_over_env_over_dotenv() {
    let (cf, mut sb) = setup();
    // Everything from the .env file.
    sb.unset("CLOUDFLARE_API_TOKEN")
        .unset("CLOUDFLARE_ACCOUNT_ID");
    sb.write_env(&format!(
        "CLOUDFLARE_API_TOKEN={TOKEN}\nCLOUDFLARE_ACCOUNT_ID={ACCOUNT}\nAUDSYNC_DOMAIN=web.example.com\nAUDSYNC_RESTART=none\nCLOUDFLARE_AUD_TAG=old\n"
    ));
    let mut c = sb.cmd();
    c.arg("sync");
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        sb.read_env()
            .contains(&format!("CLOUDFLARE_AUD_TAG={}", aud(1))),
        "domain from .env"
    );
    // Process env beats .env.
    sb.var("AUDSYNC_DOMAIN", HOST);
    let r = run(sb.cmd().arg("sync"));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        sb.read_env()
            .contains(&format!("CLOUDFLARE_AUD_TAG={}", aud(2))),
        "domain from env"
    );
    // The flag beats both.
    let r = run(sb.cmd().args(["sync", "--domain", "web.example.com"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        sb.read_env()
            .contains(&format!("CLOUDFLARE_AUD_TAG={}", aud(1))),
        "domain from flag"
    );
    assert!(
        sb.read_env()
            .contains(&format!("CLOUDFLARE_API_TOKEN={TOKEN}")),
        "other keys untouched"
    );
    drop(cf);
}

#[test]
fn secrets_can_come_from_files() {
    let (cf, mut sb) = setup();
    let f = sb.path("token.secret");
    std::fs::write(&f, format!("{TOKEN}\n")).unwrap();
    sb.unset("CLOUDFLARE_API_TOKEN")
        .var("CLOUDFLARE_API_TOKEN_FILE", f.to_str().unwrap());
    assert_eq!(sync(&sb, &[]).code, 0);
    assert_eq!(
        cf.requests()[0].headers["authorization"],
        format!("Bearer {TOKEN}")
    );
    sb.var("CLOUDFLARE_API_TOKEN_FILE", "/nonexistent/secret");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("CLOUDFLARE_API_TOKEN_FILE"), "{r:?}");
}

#[test]
fn no_secret_appears_in_any_output_at_any_verbosity() {
    let (_cf, mut sb) = setup();
    for args in [
        vec!["-vvv"],
        vec!["-vvv", "--output", "json"],
        vec!["-vvv", "--dry-run"],
        vec!["-vvv", "--log-format", "json"],
    ] {
        let r = sync(&sb, &args);
        assert!(r.code == 0 || r.code == 3, "{r:?}");
        for out in [&r.stdout, &r.stderr] {
            assert!(!out.contains(TOKEN), "token leaked with {args:?}: {r:?}");
        }
        assert!(
            r.stderr.contains("cloudflare request"),
            "trace logging is really on: {r:?}"
        );
    }
    sb.unset("CLOUDFLARE_API_TOKEN")
        .var("CLOUDFLARE_EMAIL", EMAIL)
        .var("CLOUDFLARE_API_KEY", GLOBAL_KEY);
    let mut c = sb.cmd();
    c.args([
        "-vvv",
        "sync",
        "--domain",
        HOST,
        "--restart",
        "none",
        "--output",
        "json",
    ]);
    let r = run(&mut c);
    assert!(
        !r.stdout.contains(GLOBAL_KEY) && !r.stderr.contains(GLOBAL_KEY),
        "{r:?}"
    );
    // A failing credential must not be echoed either.
    sb.var("CLOUDFLARE_API_KEY", "wrong-global-key-SECRET");
    let r = sync(&sb, &["-vvv"]);
    assert_eq!(r.code, 1);
    assert!(
        !r.stdout.contains("wrong-global-key-SECRET")
            && !r.stderr.contains("wrong-global-key-SECRET"),
        "{r:?}"
    );
}

#[test]
fn read_only_env_file_is_left_intact() {
    let (_cf, sb) = setup();
    std::fs::set_permissions(sb.env_path(), std::fs::Permissions::from_mode(0o444)).unwrap();
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("read-only"), "{r:?}");
    assert_eq!(sb.read_env(), ENV);
    // Made writable again, the next run finishes the job.
    std::fs::set_permissions(sb.env_path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(sync(&sb, &[]).code, 0);
    assert!(sb.read_env().contains(&aud(2)));
    assert_eq!(
        std::fs::metadata(sb.env_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640,
        "mode kept"
    );
}

#[test]
fn new_env_file_is_created_private() {
    let (_cf, sb) = setup();
    std::fs::remove_file(sb.env_path()).unwrap();
    assert_eq!(sync(&sb, &["--create-env-file"]).code, 0);
    assert_eq!(sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)));
    assert_eq!(
        std::fs::metadata(sb.env_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn symlinked_env_is_written_through() {
    let (_cf, sb) = setup();
    let real = sb.path("real.env");
    std::fs::rename(sb.env_path(), &real).unwrap();
    std::os::unix::fs::symlink("real.env", sb.env_path()).unwrap();
    assert_eq!(sync(&sb, &[]).code, 0);
    assert!(
        std::fs::symlink_metadata(sb.env_path())
            .unwrap()
            .file_type()
            .is_symlink(),
        "still a link"
    );
    assert!(std::fs::read_to_string(&real).unwrap().contains(&aud(2)));
    // Lock and state sit next to the real file, so the link and its target share them.
    assert!(sb.path("real.env.audsync-state.json").exists());
    assert!(!sb.path(".env.audsync-state.json").exists());
    let lock = std::fs::File::open(sb.flag_lock("real.env")).unwrap();
    lock.lock().unwrap();
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--restart",
        "none",
        "--env-file",
        "real.env",
        "--lock-timeout",
        "200ms",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 1, "the target's lock is the same lock: {r:?}");
    let r = sync(&sb, &["--lock-timeout", "200ms"]);
    assert_eq!(r.code, 1, "and so is the link's: {r:?}");
}

#[test]
fn in_place_mode_keeps_the_inode_and_atomic_mode_replaces_it() {
    let (_cf, sb) = setup();
    let ino = std::fs::metadata(sb.env_path()).unwrap().ino();
    assert_eq!(sync(&sb, &["--write-mode", "in-place"]).code, 0);
    assert_eq!(std::fs::metadata(sb.env_path()).unwrap().ino(), ino);
    assert!(sb.read_env().contains(&aud(2)));
    assert_eq!(
        sb.read_env(),
        ENV.replace("=old", &format!("={}", aud(2))),
        "nothing else changed"
    );
    assert!(
        !sb.path(".env.audsync-backup").exists(),
        "the safety copy is removed after a good write"
    );

    let (_cf, sb) = setup();
    let ino = std::fs::metadata(sb.env_path()).unwrap().ino();
    assert_eq!(sync(&sb, &[]).code, 0);
    assert_ne!(std::fs::metadata(sb.env_path()).unwrap().ino(), ino);
}

#[test]
fn a_concurrent_run_holding_the_lock_blocks_this_one() {
    let (_cf, sb) = setup();
    let lock = std::fs::File::create(sb.flag_lock(".env")).unwrap();
    lock.lock().unwrap();
    let r = sync(&sb, &["--lock-timeout", "300ms"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("another audsync run holds the lock"),
        "{r:?}"
    );
    assert_eq!(sb.read_env(), ENV);
    drop(lock);
    assert_eq!(sync(&sb, &[]).code, 0);
}

#[test]
fn unparseable_env_file_is_refused() {
    let (_cf, sb) = setup();
    let bad = "A=\"never closed\nCLOUDFLARE_AUD_TAG=old\n";
    sb.write_env(bad);
    let r = sync(&sb, &["--env-file", ".env"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(".env"), "{r:?}");
    assert_eq!(sb.read_env(), bad);
}

#[test]
fn help_documents_precedence_and_exit_codes() {
    let sb = Sandbox::new();
    let r = run(sb.cmd().args(["sync", "--help"]));
    assert_eq!(r.code, 0);
    for s in [
        "flags > process environment > the .env file",
        "AUDSYNC_DOMAIN",
        "AUDSYNC_RESTART",
        "[default: CLOUDFLARE_AUD_TAG]",
        "Exit codes",
    ] {
        assert!(r.stdout.contains(s), "missing {s:?} in help:\n{}", r.stdout);
    }
    let _ = cloudflare::ACCOUNT;
}

#[test]
fn quiet_prints_nothing_on_success_and_the_report_on_failure() {
    let (cf, sb) = setup();
    // A change that succeeded is a success too: nothing printed.
    let r = sync(&sb, &["-q"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );
    assert!(sb.read_env().contains(&aud(2)), "the change was made");
    // A dry run with work to do exits 3: the plan is printed.
    cf.set_aud(1, &aud(5));
    let r = sync(&sb, &["-q", "--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("dry run"), "{r:?}");
    cf.set_aud(1, &aud(2));
    let r = sync(&sb, &["-q"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "", ""),
        "{r:?}"
    );
}

#[test]
fn env_example_parses_and_documents_every_option_variable() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/.env.example")).unwrap();
    audsync::sink::env::parse(&text).expect(".env.example must parse");
    let cli = std::fs::read_to_string(format!("{root}/src/cli.rs")).unwrap();
    let missing: Vec<&str> = cli
        .split("env = \"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|v| !text.contains(v))
        .collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
}

#[test]
fn default_container_is_lambda_server() {
    let (_cf, sb) = setup();
    let r = run(sb.cmd().args([
        "sync",
        "--domain",
        HOST,
        "--restart",
        "none",
        "--output",
        "json",
    ]));
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["containers"].as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(j["containers"][0]["name"], "lambda-server");
}

#[test]
fn rust_log_is_honoured_without_any_flag() {
    let (_cf, mut sb) = setup();
    let r = sync(&sb, &[]);
    assert!(
        !r.stderr.contains("cloudflare request"),
        "quiet by default: {r:?}"
    );
    sb.var("RUST_LOG", "audsync=debug");
    let r = sync(&sb, &[]);
    assert!(r.stderr.contains("cloudflare request"), "{r:?}");
    assert!(!r.stderr.contains(TOKEN));
}

#[test]
fn owner_and_mode_are_kept_by_the_atomic_write() {
    let (_cf, sb) = setup();
    std::fs::set_permissions(sb.env_path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    // Tests run as root in CI; elsewhere chown to another user is not allowed, so skip there.
    if std::os::unix::fs::chown(sb.env_path(), Some(1234), Some(2345)).is_err() {
        eprintln!("skipped: cannot chown (not root)");
        return;
    }
    let ino = std::fs::metadata(sb.env_path()).unwrap().ino();
    assert_eq!(sync(&sb, &[]).code, 0);
    let m = std::fs::metadata(sb.env_path()).unwrap();
    assert_ne!(m.ino(), ino, "atomic write replaced the file");
    assert_eq!(
        (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
        (1234, 2345, 0o640)
    );
}

/// clap's own refusals name the option and the form it takes, never the value typed (it may be
/// a secret given to the wrong option); an enumerated option quotes a short bad word only.
#[test]
fn a_flag_value_that_does_not_parse_is_not_repeated() {
    let sb = Sandbox::new();
    for args in [
        &["watch", "--interval", "SECRETJUNK"][..],
        &["watch", "--interval", "5 tok-SECRET"],
        &["sync", "--settle", "5SECRET"],
        &["sync", "--health-timeout", "SECRET-health"],
        &["watch", "--listen", "SECRET:listen"],
        &["watch", "--jitter", "SECRET%"],
        &["sync", "--restart", "recreate-SECRET-and-some-more"],
        &["sync", "--output=https://u:SECRET@x"],
        &["sync", "--create-env-file=SECRET"],
        &["sync", "xoxb-SECRET-positional"],
        &["xoxb-SECRET-as-a-command"],
    ] {
        let r = run(sb.cmd().args(args));
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            !r.stderr.contains("SECRET") && !r.stdout.contains("SECRET"),
            "{args:?}: {r:?}"
        );
        let flag = args.get(1).map_or("", |a| a.split('=').next().unwrap());
        if flag.starts_with("--") {
            assert!(r.stderr.contains(flag), "names the option: {args:?}: {r:?}");
        }
    }
    let r = run(sb.cmd().args(["watch", "--interval", "SECRETJUNK"]));
    assert!(
        r.stderr.contains("not a duration (examples: 30s, 5m, 1h"),
        "says the form: {r:?}"
    );
    // Values checked after parsing say the same.
    let r = run(sb.cmd().env("CLOUDFLARE_API_TOKEN", TOKEN).args([
        "sync",
        "--app-id",
        "notauuid-SECRET",
        "--dry-run",
    ]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("--app-id is not a Cloudflare id"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("SECRET"), "{r:?}");
    let r = run(sb.cmd().env("CLOUDFLARE_API_TOKEN", TOKEN).args([
        "sync",
        "--domain",
        "api.example.com/tok SECRET",
        "--dry-run",
    ]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(!r.stderr.contains("SECRET"), "{r:?}");
    // A short word for an enumerated option is a typo to spot: quoted, with the allowed values.
    let r = run(sb.cmd().args(["sync", "--restart", "recreat"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("'recreat'"), "{r:?}");
    assert!(r.stderr.contains("auto, restart, recreate"), "{r:?}");
}

/// What Cloudflare answers reaches the log lines only through the one sanitiser: a tunnel rule's
/// hostname carrying an escape sequence, a bidi override and a newline that would forge a
/// `hint:` line is written visibly escaped, in text and in JSON logs; the line stays one line.
#[test]
fn outside_strings_in_log_lines_are_escaped() {
    const TUNNEL: &str = "c0ffee00-0000-4000-8000-0000000000aa";
    let evil = "\u{1b}[31mevil.example.com\u{202e}moc\nhint: forged by the API";
    let mut a = app(2, HOST, &aud(2));
    a["name"] = serde_json::json!(evil);
    let cf = FakeCloudflare::start(vec![a]);
    cf.with(|s| {
        s.tunnels.insert(
            TUNNEL.into(),
            cloudflare::tunnel(
                TUNNEL,
                "cloudflare",
                serde_json::json!({"ingress": [
                    {"hostname": evil, "service": "http://web:80"},
                    {"service": "http_status:404"}
                ]}),
            ),
        );
    });
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(ENV);
    sb.var("CLOUDFLARE_TUNNEL_ID", TUNNEL)
        .var("CLOUDFLARE_TEAM_NAME", "myteam");
    for format in ["text", "json"] {
        let r = sync(&sb, &["-v", "--log-format", format, "--dry-run"]);
        // The log line that carries the rule's hostnames.
        let line = r
            .stderr
            .lines()
            .find(|l| l.contains("tunnel rule not managed"))
            .unwrap_or_else(|| panic!("{format}: no log line about the rule: {r:?}"));
        assert!(line.contains("evil.example.com"), "{format}: {line}");
        for raw in ['\u{1b}', '\u{202e}'] {
            assert!(!r.stderr.contains(raw), "{format}: raw {raw:?} in {r:?}");
        }
        assert!(
            !r.stderr.lines().any(|l| l.starts_with("hint: forged")),
            "{format}: a forged line: {r:?}"
        );
        // The report quotes the same rules: no forged line there either.
        assert!(
            !r.stdout
                .lines()
                .any(|l| l.trim_start().starts_with("hint: forged")),
            "{format}: a forged report line: {r:?}"
        );
        if format == "text" {
            assert!(
                line.contains(r"\e[31mevil.example.com\u{202e}moc\nhint: forged"),
                "{line}"
            );
        } else {
            let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object");
            assert!(v.to_string().contains("evil.example.com"), "{v}");
            let error = v["fields"]["error"].as_str().unwrap_or_default();
            assert!(error.contains(r"\u{202e}moc\nhint: forged"), "{v}");
        }
    }
}
