//! `sync` restarting containers on the real Docker engine (#[ignore]d:
//! scripts/test.sh runs them after checking that the engine answers).

use serde_json::Value;

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{
    Docker, Events, IGNORES_TERM, id_of, image, started_at, stop_duration,
};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const ENV: &str = "CLOUDFLARE_AUD_TAG=old\nOTHER=1\n";
/// A server that reads its AUD at start-up (no key in its environment) and stops on SIGTERM.
const SERVER: &str = "trap 'exit 0' TERM; echo up; sleep 3600 & wait";

fn setup() -> (FakeCloudflare, Sandbox, Docker) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(ENV);
    (cf, sb, Docker::new())
}

fn server(d: &Docker, what: &str) -> String {
    d.run(what, &[&image(), "sh", "-c", SERVER])
}

fn sync(sb: &Sandbox, container: &str, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--restart",
        "restart",
        "--container",
        container,
        "--output",
        "json",
    ])
    .args(extra);
    run(&mut c)
}

fn new_env() -> String {
    ENV.replace("=old", &format!("={}", aud(2)))
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_changed_value_restarts_the_container() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let c = server(&d, "srv");
    let before = started_at(&c);
    let r = sync(&sb, &c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sb.read_env(), new_env());
    assert_ne!(started_at(&c), before, "the container was restarted");
    let j = r.json();
    assert_eq!(j["containers"][0]["action"], "restart");
    assert_eq!(j["containers"][0]["result"], "done");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_no_change_run_restarts_nothing() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    let c = server(&d, "srv");
    assert_eq!(sync(&sb, &c, &[]).code, 0);
    let before = started_at(&c);
    let r = sync(&sb, &c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(started_at(&c), before, "no restart without a change");
    let j = r.json();
    assert_eq!(j["status"], "in_sync");
    assert_eq!(j["containers"][0]["action"], "none");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_missing_container_fails_before_the_write_and_the_next_run_restarts_it() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    let name = d.name("late");
    let r = sync(&sb, &name, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_ne!(
        sb.read_env(),
        new_env(),
        "targets are resolved before any sink is written"
    );
    assert!(
        r.stderr
            .contains(&format!("container {name} does not exist")),
        "{r:?}"
    );

    // The container appears; the next run writes the value and restarts it.
    server(&d, "late");
    let before = started_at(&name);
    let r = sync(&sb, &name, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sb.read_env(), new_env());
    assert_ne!(started_at(&name), before, "the restart happened");
    let j = r.json();
    assert_eq!(j["changed"], true);
    assert_eq!(j["containers"][0]["result"], "done");

    // And it is owed no more.
    let before = started_at(&name);
    assert_eq!(sync(&sb, &name, &[]).code, 0);
    assert_eq!(started_at(&name), before);
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn an_unreachable_daemon_fails_after_the_write_and_the_next_run_restarts() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, mut sb, d) = setup();
    let c = server(&d, "srv");
    let before = started_at(&c);
    sb.var("DOCKER_HOST", "unix:///nonexistent.sock");
    let r = sync(&sb, &c, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    // An engine that cannot be reached is not a target that does not exist: the value is
    // written (it is right whatever the engine's state) and the restart is owed.
    assert_eq!(sb.read_env(), new_env(), "the sink was written first");
    assert!(
        r.stderr
            .contains("cannot reach the Docker daemon at unix:///nonexistent.sock"),
        "{r:?}"
    );
    assert!(r.stderr.contains("WAS written"), "{r:?}");
    let hint = r.json()["hint"].as_str().unwrap_or_default().to_string();
    assert!(
        hint.contains("DOCKER_HOST"),
        "the hint names the fix: {r:?}"
    );
    assert_eq!(started_at(&c), before);

    sb.unset("DOCKER_HOST");
    let r = sync(&sb, &c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_ne!(started_at(&c), before, "the owed restart happened");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_value_changed_by_someone_else_still_restarts_the_container_once() {
    require_docker!(not_podman: "not checked on Podman");
    let (cf, sb, d) = setup();
    let c = server(&d, "srv");
    assert_eq!(sync(&sb, &c, &[]).code, 0, "first run: applied aud(2)");
    // Another writer (a second host sharing the secret, a person) puts the next AUD into the
    // sink before this agent runs: the sink is already in sync, the container is not.
    cf.set_aud(0, &aud(3));
    sb.write_env(&ENV.replace("=old", &format!("={}", aud(3))));
    let before = started_at(&c);
    let r = sync(&sb, &c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["changed"], false, "nothing written by this run: {j}");
    assert_eq!(j["containers"][0]["action"], "restart", "{j}");
    assert_ne!(
        started_at(&c),
        before,
        "restarted for the value it never ran with"
    );
    let before = started_at(&c);
    let r = sync(&sb, &c, &[]);
    assert_eq!(
        (r.code, r.json()["status"].clone()),
        (0, Value::from("in_sync")),
        "{r:?}"
    );
    assert_eq!(started_at(&c), before, "and only once");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_restart_honours_the_containers_own_stop_timeout() {
    require_docker!(not_podman: "stop times from the event stream; not checked on Podman");
    let (_cf, sb, d) = setup();
    // The engine's default is 10 s; this container asks for 1 s.
    let c = d.run(
        "stubborn",
        &["--stop-timeout", "1", &image(), "sh", "-c", IGNORES_TERM],
    );
    assert_eq!(
        crate::support::docker::inspect(&c)["Config"]["StopTimeout"],
        1
    );
    let before = started_at(&c);
    let events = Events::watch(&id_of(&c));
    let t = std::time::Instant::now();
    let r = sync(&sb, &c, &[]);
    let elapsed = t.elapsed();
    let events = events.stop();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["action"], "restart");
    assert_ne!(started_at(&c), before, "the container was restarted");
    let (stop, killed) = stop_duration(&events);
    assert!(
        killed,
        "it ignored SIGTERM and had to be killed: {events:#?}"
    );
    // Behaviour checks with generous bounds: with the engine default the stop alone takes 10 s.
    assert!(
        stop < std::time::Duration::from_secs(5),
        "SIGTERM to exit took {stop:?}: the 1 s StopTimeout was not used"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(9),
        "sync took {elapsed:?}"
    );
}
