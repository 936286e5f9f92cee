//! Compose's config hash after audsync replaced a container (stamped only when it is true),
//! and targets resolved before any sink is written, on the real Docker engine with
//! docker-compose v1 (#[ignore]d: scripts/test.sh runs them).

use std::time::Duration;

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{Docker, docker, env_of, id_of, image, wait_healthy};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";

fn setup(env: &str) -> (FakeCloudflare, Sandbox, Docker, String) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(env);
    let d = Docker::new();
    let project = d.prefix.clone();
    std::fs::write(
        sb.path("docker-compose.yml"),
        format!(
            r#"version: "2.4"
services:
  api:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
    env_file: .env
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 500ms
      retries: 3
"#,
            image = image()
        ),
    )
    .unwrap();
    d.compose_project(sb.dir(), &project);
    (cf, sb, d, project)
}

fn compose(sb: &Sandbox, project: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("docker-compose")
        .args(["-p", project])
        .args(args)
        .current_dir(sb.dir())
        .env_remove(KEY)
        .env_remove("LOG_LEVEL")
        .output()
        .expect("docker-compose");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

fn sync(sb: &Sandbox, args: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--output", "json"]);
    c.args(args);
    run(&mut c)
}

/// `sync` that recreates the project's service `api`.
fn recreate(sb: &Sandbox, project: &str) -> Run {
    sync(
        sb,
        &[
            "--compose-service",
            &format!("{project}/api"),
            "--restart",
            "recreate",
        ],
    )
}

fn container_of(project: &str) -> String {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ]);
    let names: Vec<&str> = out.lines().collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].to_string()
}

/// Issue 20: LOG_LEVEL=debug set in `.env` before the pass is not hidden by a stamped hash:
/// the label stays, the report names LOG_LEVEL (never its value), and `up -d` recreates.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn compose_hash_is_kept_while_other_changes_are_pending() {
    require_docker!(not_podman: "compose's config-hash; podman-compose's own hash is not stamped");
    let (_cf, sb, _d, project) = setup(&format!("{KEY}=old\nLOG_LEVEL=info\n"));
    compose(&sb, &project, &["up", "-d"]);
    let n = container_of(&project);
    wait_healthy(&n, Duration::from_secs(30));
    sb.write_env(&format!("{KEY}=old\nLOG_LEVEL=debug-verbose-level\n"));

    let r = recreate(&sb, &project);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["containers"][0]["action"], "recreate", "{r:?}");
    assert_eq!(
        j["containers"][0]["pending"],
        serde_json::json!(["LOG_LEVEL"]),
        "{r:?}"
    );
    assert!(
        !r.stdout.contains("debug-verbose-level"),
        "names only: {r:?}"
    );
    let after = id_of(&n);
    assert_eq!(env_of(&n, KEY), Some(aud(2)));
    assert_eq!(env_of(&n, "LOG_LEVEL").as_deref(), Some("info"));

    let out = compose(&sb, &project, &["up", "-d"]);
    assert_ne!(
        id_of(&n),
        after,
        "`up -d` applies the pending change: {out}"
    );
    assert_eq!(
        env_of(&n, "LOG_LEVEL").as_deref(),
        Some("debug-verbose-level")
    );
    assert_eq!(env_of(&n, KEY), Some(aud(2)));
}

/// Issue 20: the same pending change is said in the text report and in the notification, in
/// the issue's words, with the variable's name and never a value.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn compose_pending_changes_are_named_in_the_text_report_and_the_notification() {
    require_docker!(not_podman: "compose's config-hash; podman-compose's own hash is not stamped");
    const BEFORE: &str = "quiet-level-before";
    const AFTER: &str = "debug-verbose-level";
    let (_cf, mut sb, _d, project) = setup(&format!("{KEY}=old\nLOG_LEVEL={BEFORE}\n"));
    let h = crate::notify::hooks();
    sb.var(
        "AUDSYNC_NOTIFY",
        &format!("http://127.0.0.1:{}/hook/x", h.port()),
    );
    compose(&sb, &project, &["up", "-d"]);
    let n = container_of(&project);
    wait_healthy(&n, Duration::from_secs(30));
    sb.write_env(&format!("{KEY}=old\nLOG_LEVEL={AFTER}\n"));

    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--compose-service",
        &format!("{project}/api"),
        "--restart",
        "recreate",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    let said =
        "other changes are pending (LOG_LEVEL): the next `docker compose up -d` recreates it";
    assert!(r.stdout.contains(said), "the text report says it: {r:?}");
    let got = h.at("/hook");
    assert_eq!(h.events(), vec!["changed"], "{r:?}");
    let body = &got[0].body;
    let j = got[0].json();
    assert!(
        j["message"].as_str().unwrap_or_default().contains(said),
        "the notification says it: {j:#}"
    );
    assert_eq!(
        j["data"]["containers"][0]["pending"],
        serde_json::json!(["LOG_LEVEL"]),
        "{j:#}"
    );
    for value in [BEFORE, AFTER] {
        assert!(!r.stdout.contains(value), "names only: {r:?}");
        assert!(!r.stderr.contains(value), "names only: {r:?}");
        assert!(!body.contains(value), "names only: {body}");
    }
    assert_eq!(env_of(&n, "LOG_LEVEL").as_deref(), Some(BEFORE));
}

/// The clean case: nothing but the AUD changed, so compose's new hash is stamped and `up -d`
/// leaves audsync's container alone.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn compose_hash_is_stamped_when_only_the_aud_changed() {
    require_docker!(not_podman: "compose's config-hash; podman-compose's own hash is not stamped");
    let (_cf, sb, _d, project) = setup(&format!("{KEY}=old\nLOG_LEVEL=info\n"));
    compose(&sb, &project, &["up", "-d"]);
    let n = container_of(&project);
    wait_healthy(&n, Duration::from_secs(30));

    let r = recreate(&sb, &project);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json()["containers"][0].get("pending").is_none(), "{r:?}");
    let after = id_of(&n);
    let out = compose(&sb, &project, &["up", "-d"]);
    assert!(out.contains("is up-to-date"), "{out}");
    assert_eq!(id_of(&n), after, "{out}");
}

/// A bare container name nothing created fails its binding before its `.env` changes.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_missing_container_fails_before_the_env_is_written() {
    require_docker!(not_podman: "not checked on Podman");
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    let d = Docker::new();
    let missing = d.name("never-created");
    let r = sync(&sb, &["--container", &missing, "--restart", "recreate"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(sb.read_env(), format!("{KEY}=old\n"), "{r:?}");
    assert!(r.stdout.contains("does not exist"), "{r:?}");
}

/// A recreate asks compose twice (before the `.env` write and after): the CLI is found once
/// (one `version`), and each time its two questions (`config --hash`, `config`) run at once,
/// not one after the other: a docker-compose v1 start costs a second on a loaded machine.
/// A wrapper on PATH logs every start and end and holds `config` calls for a second.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn compose_is_found_once_per_pass_and_asked_both_questions_at_once() {
    require_docker!(not_podman: "docker-compose v1's CLI; podman-compose's own hash is not stamped");
    let (_cf, mut sb, _d, project) = setup(&format!("{KEY}=old\n"));
    compose(&sb, &project, &["up", "-d"]);
    let n = container_of(&project);
    wait_healthy(&n, Duration::from_secs(30));

    let real = std::process::Command::new("sh")
        .args(["-c", "command -v docker-compose"])
        .output()
        .unwrap();
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let bin = sb.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = sb.path("calls.log");
    let wrapper = bin.join("docker-compose");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"start $*\" >> {log}\ncase \"$*\" in *config*) sleep 1;; esac\n{real} \"$@\"\nrc=$?\necho \"end $*\" >> {log}\nexit $rc\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    sb.var("PATH", &path);

    let r = recreate(&sb, &project);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(env_of(&n, KEY), Some(aud(2)));
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    let starts = |what: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with("start") && l.ends_with(what))
            .count()
    };
    assert_eq!(starts(" version"), 1, "the CLI is found once:\n{calls}");
    assert_eq!(starts(" config"), 2, "asked before and after:\n{calls}");
    assert_eq!(starts(" config --hash=api"), 2, "{calls}");
    // Each ask: both questions start before either ends.
    let questions: Vec<&&str> = lines.iter().filter(|l| l.contains(" config")).collect();
    assert_eq!(questions.len(), 8, "{calls}");
    for ask in questions.chunks(4) {
        assert!(
            ask[0].starts_with("start") && ask[1].starts_with("start"),
            "the two questions of one ask run at once:\n{calls}"
        );
    }
}
