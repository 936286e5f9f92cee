//! `--discover` (issue 22): bindings from `audsync.*` labels on the real Docker engine with
//! docker-compose v1, and the labels that are refused because they would choose the file
//! written (#[ignore]d: scripts/test.sh runs them).

use std::path::{Path, PathBuf};

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{Docker, env_of, id_of, image};
use crate::support::{Run, Sandbox, run};

pub(crate) const API: &str = "api.example.com";
pub(crate) const ADMIN: &str = "admin.example.com";
pub(crate) const DOCS: &str = "docs.example.com";

pub(crate) fn service(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = format!(
        "  {name}:\n    image: {}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n    env_file: .env\n",
        image()
    );
    if !labels.is_empty() {
        s.push_str("    labels:\n");
        for (k, v) in labels {
            s.push_str(&format!("      {k}: \"{v}\"\n"));
        }
    }
    s
}

/// A compose project directory `parent/<prefix><suffix>` with these services and `.env`.
pub(crate) fn project(
    d: &Docker,
    parent: &Path,
    suffix: &str,
    services: &[String],
    env: &str,
) -> (PathBuf, String) {
    let name = format!("{}{suffix}", d.prefix);
    let dir = parent.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut yml = "version: \"2.4\"\nservices:\n".to_string();
    for s in services {
        yml.push_str(s);
    }
    std::fs::write(dir.join("docker-compose.yml"), yml).unwrap();
    std::fs::write(dir.join(".env"), env).unwrap();
    d.compose_project(&dir, &name);
    (dir, name)
}

pub(crate) fn compose(dir: &Path, project: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("docker-compose")
        .args(["-p", project])
        .args(args)
        .current_dir(dir)
        .env_remove("CLOUDFLARE_AUD_TAG")
        .output()
        .expect("docker-compose");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

fn sync(sb: &Sandbox, d: &Docker, args: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--discover",
        "--discover-scope",
        &d.prefix,
        "--output",
        "json",
    ]);
    c.args(args);
    run(&mut c)
}

pub(crate) fn cloudflare() -> FakeCloudflare {
    FakeCloudflare::start(vec![
        app(1, API, &aud(1)),
        app(2, ADMIN, &aud(2)),
        app(3, DOCS, &aud(3)),
    ])
}

/// Two labelled services and one unlabelled: the two follow their applications (the `.env`
/// written, the containers recreated), the third is never touched; a labelled service added
/// with `up -d` is picked up without a configuration change.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn discovered_services_follow_their_applications_and_the_unlabelled_is_left_alone() {
    require_docker!(not_podman: "runs docker-compose; podman-compose is not checked");
    let cf = cloudflare();
    let sb = Sandbox::with_cloudflare(&cf);
    let d = Docker::new();
    let srv = sb.path("srv");
    let (dir, p) = project(
        &d,
        &srv,
        "",
        &[
            service("api", &[("audsync.domain", API)]),
            service(
                "admin",
                &[("audsync.domain", ADMIN), ("audsync.key", "ADMIN_AUD_TAG")],
            ),
            // Not reading the .env: compose itself recreates a service whose env_file changed.
            service("plain", &[]).replace("    env_file: .env\n", ""),
        ],
        "CLOUDFLARE_AUD_TAG=old\nADMIN_AUD_TAG=old\n",
    );
    compose(&dir, &p, &["up", "-d"]);
    let plain = format!("{p}_plain_1");
    let plain_id = id_of(&plain);
    let root = srv.display().to_string();

    let dry = sync(&sb, &d, &["--discover-root", &root, "--dry-run"]);
    assert_eq!(dry.code, 3, "{dry:?}");
    let j = dry.json();
    let origins: Vec<&str> = j["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["origin"].as_str())
        .collect();
    assert_eq!(
        origins,
        vec![
            format!("label on container {p}_admin_1"),
            format!("label on container {p}_api_1")
        ],
        "{dry:?}"
    );

    let r = sync(&sb, &d, &["--discover-root", &root]);
    assert_eq!(r.code, 0, "{r:?}");
    let env = std::fs::read_to_string(dir.join(".env")).unwrap();
    assert!(
        env.contains(&format!("CLOUDFLARE_AUD_TAG={}", aud(1))),
        "{env}"
    );
    assert!(env.contains(&format!("ADMIN_AUD_TAG={}", aud(2))), "{env}");
    assert_eq!(
        env_of(&format!("{p}_api_1"), "CLOUDFLARE_AUD_TAG"),
        Some(aud(1))
    );
    assert_eq!(
        env_of(&format!("{p}_admin_1"), "ADMIN_AUD_TAG"),
        Some(aud(2))
    );
    assert_eq!(
        id_of(&plain),
        plain_id,
        "the unlabelled service is never touched"
    );

    // A labelled service more, brought up by compose alone.
    let mut yml = std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap();
    yml.push_str(&service(
        "docs",
        &[("audsync.domain", DOCS), ("audsync.key", "DOCS_AUD_TAG")],
    ));
    std::fs::write(dir.join("docker-compose.yml"), yml).unwrap();
    std::fs::write(dir.join(".env"), format!("{env}DOCS_AUD_TAG=old\n")).unwrap();
    compose(&dir, &p, &["up", "-d"]);
    let r = sync(&sb, &d, &["--discover-root", &root]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(env_of(&format!("{p}_docs_1"), "DOCS_AUD_TAG"), Some(aud(3)));
    assert_eq!(id_of(&plain), plain_id);
}

/// A `.env` owned by another user, a project outside the discovery roots, and a working
/// directory label pointing at a directory without its compose file: each refused and named,
/// no `.env` written.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn labels_that_would_choose_the_file_written_are_refused_and_named() {
    require_docker!(not_podman: "runs docker-compose; podman-compose is not checked");
    let cf = cloudflare();
    let sb = Sandbox::with_cloudflare(&cf);
    let d = Docker::new();
    let srv = sb.path("srv");
    let old = "CLOUDFLARE_AUD_TAG=old\n";
    // 1. Its .env belongs to someone else.
    let (own_dir, own) = project(
        &d,
        &srv,
        "own",
        &[service("api", &[("audsync.domain", API)])],
        old,
    );
    rustix::fs::chown(
        own_dir.join(".env"),
        Some(rustix::fs::Uid::from_raw(4242)),
        Some(rustix::fs::Gid::from_raw(4242)),
    )
    .unwrap();
    compose(&own_dir, &own, &["up", "-d"]);
    // 2. Outside the roots.
    let (out_dir, out) = project(
        &d,
        &sb.path("elsewhere"),
        "out",
        &[service("api", &[("audsync.domain", API)])],
        old,
    );
    compose(&out_dir, &out, &["up", "-d"]);
    // 3. A working directory that holds no compose file (labels written by hand).
    let bare = srv.join(format!("{}bare", d.prefix));
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(bare.join(".env"), old).unwrap();
    let forged = d.run(
        "forged",
        &[
            "-l",
            &format!("com.docker.compose.project={}bare", d.prefix),
            "-l",
            "com.docker.compose.service=api",
            "-l",
            &format!("com.docker.compose.project.working_dir={}", bare.display()),
            "-l",
            "com.docker.compose.project.config_files=docker-compose.yml",
            "-l",
            &format!("audsync.domain={API}"),
            "-e",
            "CLOUDFLARE_AUD_TAG=old",
            &image(),
            "sleep",
            "3600",
        ],
    );
    let forged_id = id_of(&forged);

    let r = sync(&sb, &d, &["--discover-root", &srv.display().to_string()]);
    let warnings = r.json()["warnings"].to_string();
    assert!(
        warnings.contains(&format!("container {own}_api_1"))
            && warnings.contains("is owned by uid 4242"),
        "{r:?}"
    );
    assert!(
        warnings.contains(&format!("container {out}_api_1"))
            && warnings.contains("outside the discovery roots"),
        "{r:?}"
    );
    assert!(
        warnings.contains(&format!("container {forged}"))
            && warnings.contains("holds no compose file docker-compose.yml"),
        "{r:?}"
    );
    for dir in [&own_dir, &out_dir, &bare] {
        assert_eq!(
            std::fs::read_to_string(dir.join(".env")).unwrap(),
            old,
            "{}",
            dir.display()
        );
    }
    assert_eq!(id_of(&forged), forged_id);
    assert_eq!(
        env_of(&format!("{own}_api_1"), "CLOUDFLARE_AUD_TAG").as_deref(),
        Some("old")
    );
}

/// `audsync config --discover` lists the bindings labels make, each value with its origin
/// (`label on container X`), after the configured ones; `sync --dry-run` names the origin too.
/// Without `--discover` nothing is listed.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn config_lists_discovered_bindings_with_their_origin() {
    require_docker!(not_podman: "runs docker-compose; podman-compose is not checked");
    let cf = cloudflare();
    let sb = Sandbox::with_cloudflare(&cf);
    let d = Docker::new();
    let srv = sb.path("srv");
    let (dir, p) = project(
        &d,
        &srv,
        "",
        &[service("api", &[("audsync.domain", API)])],
        "CLOUDFLARE_AUD_TAG=old\n",
    );
    compose(&dir, &p, &["up", "-d"]);
    let root = srv.display().to_string();
    let origin = format!("label on container {p}_api_1");
    let config = |extra: &[&str]| {
        let mut c = sb.cmd();
        c.args([
            "config",
            "--discover-scope",
            &d.prefix,
            "--discover-root",
            &root,
        ]);
        c.args(extra);
        run(&mut c)
    };

    let r = config(&["--discover"]);
    assert_eq!(r.code, 0, "{r:?}");
    let env = std::fs::canonicalize(dir.join(".env")).unwrap();
    for line in [
        format!("{origin}\tbinding[1] = \"{API}\""),
        format!("{origin}\tbinding[1].domain = \"{API}\""),
        format!("{origin}\tbinding[1].key = \"CLOUDFLARE_AUD_TAG\""),
        format!(
            "{origin}\tbinding[1].sinks = [{{ env = \"{}\" }}]",
            env.display()
        ),
        format!("{origin}\tbinding[1].targets = [{{ compose_service = \"{p}/api\" }}]"),
    ] {
        assert!(
            r.stdout.lines().any(|l| l == line),
            "no line {line:?} in\n{}",
            r.stdout
        );
    }

    let r = config(&["--discover", "--domain", ADMIN, "--output", "json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let of = |key: &str| {
        j["values"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in {j}"))
    };
    assert_eq!(
        of("binding[1].domain")["value"],
        ADMIN,
        "the configured binding first"
    );
    assert_eq!(of("binding[2].domain")["value"], API, "{j}");
    assert_eq!(of("binding[2].domain")["origin"], origin.as_str(), "{j}");

    let r = config(&["--domain", ADMIN]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("label on"), "opt-in only:\n{}", r.stdout);

    let mut c = sb.cmd();
    c.args([
        "sync",
        "--discover",
        "--discover-scope",
        &d.prefix,
        "--discover-root",
        &root,
        "--dry-run",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains(&format!("discovered: {origin}")), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join(".env")).unwrap(),
        "CLOUDFLARE_AUD_TAG=old\n",
        "nothing written"
    );
}

/// An engine that cannot be asked is no "nothing labelled": the labelled services were not
/// looked at, so the pass fails (exit 1, stage `target`), alone or beside configured bindings
/// (which are still synced).
#[test]
fn discovery_without_an_engine_fails_the_pass_instead_of_calling_it_in_sync() {
    let cf = cloudflare();
    let mut sb = Sandbox::with_cloudflare(&cf);
    sb.var(
        "DOCKER_HOST",
        "unix:///nonexistent/audsync-test-docker.sock",
    );
    let root = sb.path("srv");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.display().to_string();
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--discover",
        "--discover-root",
        &root,
        "--output",
        "json",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j["stage"], "target", "{r:?}");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("could not be listed")),
        "{r:?}"
    );

    // Beside a configured binding: that one is written, the pass still fails.
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--discover",
        "--discover-root",
        &root,
        "--domain",
        API,
        "--restart",
        "none",
        "--output",
        "json",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(1)));
    assert_eq!(r.json()["status"], "failed", "{r:?}");
}
