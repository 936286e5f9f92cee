//! A recreate cut short (process killed: SIGKILL, OOM, reboot, a second SIGINT) is finished or
//! undone by the next `sync` (#[ignore]d: scripts/test.sh runs them). These record it as an
//! older version did, in the state file (`recreating`): the migration path; a run of this
//! version journals beside the container's lock (tests/docker_journal.rs kills it at each step). Each test builds, with the
//! docker CLI, the state recreate.rs leaves at one step: the new container created as
//! `NAME-audsync-new-TAG`, the old one stopped and moved aside as `NAME-audsync-old-TAG`, the
//! new one renamed to NAME and started; TAG ends in `-running` when the old one was running.

use std::time::Duration;

use serde_json::Value;

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{Docker, docker, env_of, id_of, image, inspect, wait_healthy};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
const SERVER: &str = "trap 'exit 0' TERM; echo \"serving $CLOUDFLARE_AUD_TAG\"; \
                      httpd -f -p 8080 -h /www & wait";
/// What recreate.rs puts after the `-audsync-new-`/`-audsync-old-` of one recreate of a
/// running container.
const TAG: &str = "a1b2c3-running";

fn setup() -> (FakeCloudflare, Sandbox, Docker) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    (cf, sb, Docker::new())
}

fn sync(sb: &Sandbox, extra: &[&str]) -> (Run, Value) {
    let mut c = sb.cmd();
    c.args([
        "sync", "--domain", HOST, "--output", "json", "--settle", "1s",
    ]);
    c.args(extra);
    let r = run(&mut c);
    let j =
        serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"));
    (r, j)
}

/// The old container, running with the old value (extra `docker run` options first).
fn old_container(d: &Docker, extra: &[&str]) -> String {
    let env = format!("{KEY}=old");
    let mut args = vec!["-e", env.as_str()];
    args.extend_from_slice(extra);
    let img = image();
    args.extend([img.as_str(), "sh", "-c", SERVER]);
    d.run("lambda", &args)
}

/// `docker create` the replacement under its temporary name, with the new value, and record
/// the recreate in the state file as recreate.rs does before it touches anything (the old
/// container's id, the new one's): a recovery trusts that record, never a name.
fn new_container(sb: &Sandbox, name: &str, extra: &[&str]) -> String {
    let old_id = id_of(name);
    let temp = format!("{name}-audsync-new-{TAG}");
    let env = format!("{KEY}={}", aud(2));
    let img = image();
    let mut args = vec!["create", "--name", &temp, "-e", &env];
    args.extend_from_slice(extra);
    args.extend([img.as_str(), "sh", "-c", SERVER]);
    docker(&args);
    let state = serde_json::json!({"recreating": {old_id: {"name": name, "new_id": id_of(&temp)}}});
    std::fs::write(sb.path(".env.audsync-state.json"), state.to_string()).unwrap();
    temp
}

fn aside(name: &str) -> String {
    format!("{name}-audsync-old-{TAG}")
}

/// The service is whole again: one container, under its name, running, with the new value.
fn assert_restored(d: &Docker, c: &str) {
    assert_eq!(inspect(c)["State"]["Running"], true, "{c} runs");
    assert_eq!(d.containers(), vec![c.to_string()], "no leftovers");
    assert_eq!(env_of(c, KEY), Some(aud(2)));
}

fn recovered(j: &Value) -> String {
    j["recovered"].to_string()
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_recreate_killed_after_the_stop_restarts_the_old_one_then_recreates() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let c = old_container(&d, &[]);
    let temp = new_container(&sb, &c, &[]);
    docker(&["stop", "-t", "1", &c]);

    let (r, j) = sync(&sb, &["--container", &c]);
    assert_eq!(r.code, 0, "{r:?}");
    // Not left "Created": the old one was running, so the new one runs.
    assert_restored(&d, &c);
    assert!(recovered(&j).contains("rolled back"), "{r:?}");
    assert!(
        !d.containers().contains(&temp),
        "the unused new container is removed"
    );
    assert_eq!(j["containers"][0]["action"], "recreate", "{r:?}");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_recreate_killed_between_the_renames_gives_the_name_back() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let c = old_container(&d, &[]);
    let old_id = id_of(&c);
    new_container(&sb, &c, &[]);
    docker(&["stop", "-t", "1", &c]);
    docker(&["rename", &c, &aside(&c)]);

    let (r, j) = sync(&sb, &["--container", &c]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_ne!(id_of(&c), old_id, "then recreated with the new value");
    assert_restored(&d, &c);
    assert!(recovered(&j).contains("rolled back"), "{r:?}");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_a_dry_run_reports_a_recreate_cut_short_and_touches_nothing() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    let c = old_container(&d, &[]);
    let temp = new_container(&sb, &c, &[]);
    docker(&["stop", "-t", "1", &c]);
    docker(&["rename", &c, &aside(&c)]);

    let (r, j) = sync(&sb, &["--container", &c, "--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(recovered(&j).contains("cut short"), "{r:?}");
    assert!(recovered(&j).contains("to roll back"), "{r:?}");
    let mut left = d.containers();
    left.sort();
    let mut expected = vec![aside(&c), temp];
    expected.sort();
    assert_eq!(left, expected, "nothing touched");
    assert_eq!(inspect(&aside(&c))["State"]["Running"], false);
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_recreate_killed_in_the_health_wait_keeps_a_healthy_new_one() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let health = [
        "--health-cmd",
        "true",
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
    ];
    let c = old_container(&d, &health);
    let temp = new_container(&sb, &c, &health);
    docker(&["stop", "-t", "1", &c]);
    docker(&["rename", &c, &aside(&c)]);
    docker(&["rename", &temp, &c]);
    docker(&["start", &c]);
    let new_id = id_of(&c);

    let (r, j) = sync(&sb, &["--container", &c]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(id_of(&c), new_id, "the good new container is kept");
    wait_healthy(&c, Duration::from_secs(30));
    assert_restored(&d, &c);
    assert!(recovered(&j).contains("is good"), "{r:?}");
    assert_eq!(j["containers"][0]["action"], "none", "{r:?}");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_recreate_killed_before_the_new_one_started_is_rolled_back_and_redone() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let c = old_container(&d, &[]);
    let temp = new_container(&sb, &c, &[]);
    let never_started = id_of(&temp);
    docker(&["stop", "-t", "1", &c]);
    docker(&["rename", &c, &aside(&c)]);
    docker(&["rename", &temp, &c]);

    let (r, j) = sync(&sb, &["--container", &c]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_ne!(id_of(&c), never_started);
    assert_restored(&d, &c);
    assert!(recovered(&j).contains("rolled back"), "{r:?}");
    assert!(recovered(&j).contains("was not running"), "{r:?}");
    assert_eq!(j["containers"][0]["action"], "recreate", "{r:?}");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_recreate_killed_with_an_unhealthy_new_one_under_the_name_is_rolled_back() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let c = old_container(&d, &[]);
    // This replacement went bad (its check fails); the one the next pass makes is fine.
    let temp = new_container(
        &sb,
        &c,
        &[
            "--health-cmd",
            "echo broken; exit 1",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
        ],
    );
    let bad = id_of(&temp);
    docker(&["stop", "-t", "1", &c]);
    docker(&["rename", &c, &aside(&c)]);
    docker(&["rename", &temp, &c]);
    docker(&["start", &c]);

    let (r, j) = sync(&sb, &["--container", &c]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_ne!(id_of(&c), bad);
    assert_restored(&d, &c);
    assert!(recovered(&j).contains("unhealthy"), "{r:?}");
    assert!(recovered(&j).contains("rolled back"), "{r:?}");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_compose_service_leftovers_are_not_taken_for_members() {
    require_docker!(not_podman: "docker-compose's labels; podman-compose's are tests/podman.rs");
    let (_cf, sb, d) = setup();
    let project = d.prefix.clone();
    let labels = [
        format!("com.docker.compose.project={project}"),
        "com.docker.compose.service=lambda".to_string(),
        "com.docker.compose.oneoff=False".to_string(),
        "com.docker.compose.container-number=1".to_string(),
    ];
    let label_args: Vec<&str> = labels
        .iter()
        .flat_map(|l| ["--label", l.as_str()])
        .collect();
    let c = old_container(&d, &label_args);
    // Cut short after the stop: the new container carries the same compose labels.
    new_container(&sb, &c, &label_args);
    docker(&["stop", "-t", "1", &c]);

    let (r, j) = sync(&sb, &["--compose-service", &format!("{project}/lambda")]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_restored(&d, &c);
    let names: Vec<&str> = j["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, vec![c.as_str()], "only the real member: {r:?}");
    assert!(recovered(&j).contains("rolled back"), "{r:?}");
    assert_eq!(
        inspect(&c)["Config"]["Labels"]["com.docker.compose.service"],
        "lambda"
    );
}
