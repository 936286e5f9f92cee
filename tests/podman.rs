//! Podman's Docker-compatible API: the example of docs/podman.md, and what podman-compose
//! labels look like. scripts/test-podman.sh runs these against Podman (with the engine tests
//! that must pass there); a `podman_only_` test fails, saying why, on any other engine, and
//! scripts/test.sh leaves those out.

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{Docker, env_of, id_of, image, inspect, is_podman};
use crate::support::{Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
/// The lambda-server stand-in: serves HTTP on 8080 and logs its AUD.
const SERVER: &str = "trap 'exit 0' TERM; \
                      echo \"lambda-server starting with audience $CLOUDFLARE_AUD_TAG\"; \
                      httpd -f -p 8080 -h /www & wait";

fn setup() -> (FakeCloudflare, Sandbox, Docker) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    (cf, sb, Docker::new())
}

/// docs/podman.md, "Example: lambda-server under Podman": a container on a network with an
/// alias, no healthcheck (Podman shows an empty `State.Health`), its AUD from an env file;
/// `audsync sync --engine podman --restart recreate` without DOCKER_HOST finds Podman's socket
/// and recreates it with the new value, keeping network, alias and labels.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn podman_only_lambda_server_example_is_recreated_through_engine_podman() {
    require_docker!();
    assert!(
        is_podman(),
        "this test is about Podman: run it with scripts/test-podman.sh (AUDSYNC_TEST_ENGINE=podman)"
    );
    let (_cf, sb, d) = setup();
    let net = d.network("lambda-net");
    let env_file = sb.env_path();
    let c = d.run(
        "lambda-server",
        &[
            "--network",
            &net,
            "--network-alias",
            "lambda",
            "--env-file",
            env_file.to_str().unwrap(),
            "--label",
            "com.example.team=api",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    let before = inspect(&c);
    assert_eq!(
        before["State"]["Health"]["Status"], "",
        "Podman's empty health state of a container without a healthcheck"
    );
    let old_id = id_of(&c);

    let mut cmd = sb.cmd();
    // As the docs run it: no DOCKER_HOST, `--engine podman` finds the socket.
    cmd.env_remove("DOCKER_HOST").args([
        "sync",
        "--engine",
        "podman",
        "--domain",
        HOST,
        "--container",
        &c,
        "--restart",
        "recreate",
        "--settle",
        "2s",
        "--output",
        "json",
    ]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["result"], "done", "{r:?}");
    assert_eq!(env_of(&c, KEY), Some(aud(2)));
    let after = inspect(&c);
    assert_ne!(
        after["Id"],
        old_id.as_str(),
        "a new container holds the name"
    );
    assert_eq!(after["State"]["Running"], true);
    let aliases = &after["NetworkSettings"]["Networks"][&net]["Aliases"];
    assert!(
        aliases.as_array().unwrap().iter().any(|a| a == "lambda"),
        "{aliases}"
    );
    assert_eq!(after["Config"]["Labels"]["com.example.team"], "api");
    assert_eq!(d.containers(), vec![c.clone()], "the old container is gone");
    // A second run has nothing to do.
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["action"], "none", "{r:?}");
}

/// podman-compose labels its containers with the compose project and service (and its own
/// `io.podman.compose.*`) but sets no `com.docker.compose.oneoff`: they are still the
/// service's containers. A `oneoff=True` container (`compose run`) is not.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn podman_compose_containers_without_a_oneoff_label_are_the_service() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let project = d.name("proj");
    let label = |k: &str, v: &str| format!("{k}={v}");
    let labels = |n: &str| {
        vec![
            label("com.docker.compose.project", &project),
            label("com.docker.compose.service", "lambda-server"),
            label("com.docker.compose.container-number", n),
            label("io.podman.compose.project", &project),
        ]
    };
    let run_with = |what: &str, labels: Vec<String>| {
        let env = format!("{KEY}=old");
        let mut args: Vec<&str> = vec!["-e", &env];
        for l in &labels {
            args.extend(["--label", l]);
        }
        let img = image();
        args.extend([img.as_str(), "sh", "-c", SERVER]);
        d.run(what, &args)
    };
    let member = run_with("member_1", labels("1"));
    let mut oneoff_labels = labels("1");
    oneoff_labels.push(label("com.docker.compose.oneoff", "True"));
    let oneoff = run_with("run_1", oneoff_labels);

    let mut cmd = sb.cmd();
    cmd.args([
        "sync",
        "--domain",
        HOST,
        "--compose-service",
        &format!("{project}/lambda-server"),
        "--restart",
        "recreate",
        "--settle",
        "1s",
        "--output",
        "json",
    ]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{r:?}");
    let targets = r.json()["containers"].clone();
    assert_eq!(targets.as_array().map(Vec::len), Some(1), "{r:?}");
    assert_eq!(targets[0]["name"], member.as_str(), "{r:?}");
    assert_eq!(env_of(&member, KEY), Some(aud(2)));
    assert_eq!(
        env_of(&oneoff, KEY).as_deref(),
        Some("old"),
        "a one-off is left alone"
    );
}
