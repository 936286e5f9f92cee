//! `sync` against Swarm services on a single-node swarm of the real engine: a dry run shows the
//! spec's env diff and changes nothing, every task runs the new value, a second pass does
//! nothing, a new task that fails its healthcheck is rolled back (#[ignore]d: scripts/test.sh
//! runs it). One test, so the swarm is made and left once: leaving it tears
//! networks down under other tests that run meanwhile. The swarm is initialised here when none is active, and
//! left at the end only then; an active swarm is joined as it is.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{Docker, docker, docker_try, image};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
const SERVER: &str = "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait";

/// A single-node swarm for the test; left on drop only when this test made it.
struct Swarm {
    made: bool,
    services: Vec<String>,
}

impl Swarm {
    fn join() -> Swarm {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        let made = if state == "active" {
            false
        } else {
            let (code, out) = docker_try(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
            // Another test run may have made one meanwhile: use it.
            assert!(
                code == 0 || out.contains("already part of a swarm"),
                "docker swarm init: {out}"
            );
            code == 0
        };
        Swarm {
            made,
            services: Vec::new(),
        }
    }

    fn service(&mut self, name: &str, args: &[&str]) {
        let mut all = vec![
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            name,
        ];
        all.extend_from_slice(args);
        docker(&all);
        self.services.push(name.to_string());
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for s in &self.services {
            let _ = docker_try(&["service", "rm", s]);
        }
        if self.made {
            let _ = docker_try(&["swarm", "leave", "--force"]);
        }
    }
}

fn inspect_service(name: &str) -> Value {
    let out = docker(&["service", "inspect", name]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

fn spec_env(name: &str) -> Vec<String> {
    inspect_service(name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

/// The env of every running task's container, once all `replicas` run.
fn running_tasks(name: &str, replicas: usize, limit: Duration) -> Vec<Vec<String>> {
    let start = Instant::now();
    loop {
        let ids = docker(&[
            "service",
            "ps",
            name,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.ID}}",
        ]);
        let mut envs = Vec::new();
        for id in ids.lines() {
            let out = docker(&["inspect", "--type", "task", id]);
            let t: Value = serde_json::from_str(&out).unwrap();
            if t[0]["Status"]["State"] == "running" {
                let env = t[0]["Spec"]["ContainerSpec"]["Env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_string())
                    .collect();
                envs.push(env);
            }
        }
        if envs.len() == replicas && ids.lines().count() == replicas {
            return envs;
        }
        assert!(start.elapsed() < limit, "{name}: tasks not running: {ids}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn sync(sb: &Sandbox, service: &str) -> Run {
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--output",
        "json",
        "--swarm-service",
        service,
    ]);
    run(&mut c)
}

/// How the plan shortens a value (an AUD: its first 8 characters).
fn short(v: &str) -> String {
    if v.chars().count() > 12 {
        format!("{}…", &v[..8])
    } else {
        v.to_string()
    }
}

/// A `--dry-run` of `service` (JSON, then text) plans its update and shows `diff` for it,
/// exits 3, shows no other entry of its env, and leaves the service at its version index.
fn dry_run_shows(sb: &Sandbox, service: &str, diff: &str, other: &str) {
    let version = inspect_service(service)["Version"]["Index"].clone();
    assert!(version.is_u64(), "{version}");
    let env = spec_env(service);
    let env_file = sb.read_env();
    for output in ["json", "text"] {
        let mut c = sb.cmd();
        c.args([
            "sync",
            "--domain",
            HOST,
            "--output",
            output,
            "--swarm-service",
            service,
            "--dry-run",
        ]);
        let r = run(&mut c);
        assert_eq!(r.code, 3, "{output}: {r:?}");
        assert!(
            !r.stdout.contains(other) && !r.stderr.contains(other),
            "another env entry is never shown: {r:?}"
        );
        if output == "json" {
            let t = &r.json()["containers"][0];
            assert_eq!(t["name"], format!("swarm:{service}"), "{r:?}");
            assert_eq!(t["result"], "planned", "{r:?}");
            let reason = t["reason"].as_str().unwrap();
            assert!(reason.contains(diff), "{reason}");
        } else {
            let line = r
                .stdout
                .lines()
                .find(|l| l.contains(&format!("swarm:{service}")))
                .unwrap_or_default();
            assert!(line.contains(diff), "{r:?}");
        }
    }
    assert_eq!(
        inspect_service(service)["Version"]["Index"],
        version,
        "a dry run does not update the service"
    );
    assert_eq!(spec_env(service), env);
    assert_eq!(sb.read_env(), env_file);
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn swarm_services_follow_the_aud_and_a_failing_update_is_rolled_back() {
    require_docker!();
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    let d = Docker::new();
    let mut swarm = Swarm::join();
    let web = d.name("web");
    let env = format!("{KEY}=old");
    swarm.service(
        &web,
        &[
            "--replicas",
            "2",
            "--env",
            &env,
            "--env",
            "OTHER=kept",
            "--health-cmd",
            "wget -q -O /dev/null http://127.0.0.1:8080/",
            "--health-interval",
            "500ms",
            "--update-monitor",
            "2s",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    running_tasks(&web, 2, Duration::from_secs(60));

    // A dry run shows what the update would change in the spec, and changes nothing.
    dry_run_shows(
        &sb,
        &web,
        &format!("{KEY}: (not an AUD) -> {}", short(&aud(2))),
        "OTHER",
    );

    let r = sync(&sb, &web);
    assert_eq!(r.code, 0, "{r:?}");
    let t = &r.json()["containers"][0];
    assert_eq!(t["name"], format!("swarm:{web}"), "{r:?}");
    assert_eq!(t["result"], "done", "{r:?}");
    let want = format!("{KEY}={}", aud(2));
    assert_eq!(spec_env(&web), vec![want.clone(), "OTHER=kept".into()]);
    for env in running_tasks(&web, 2, Duration::from_secs(60)) {
        assert!(env.contains(&want), "{env:?}");
    }
    let spec = &inspect_service(&web)["Spec"];
    assert!(
        spec["UpdateConfig"]["Monitor"] == 2_000_000_000u64,
        "the service's UpdateConfig is kept"
    );
    assert!(
        spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Interval"] == 500_000_000u64,
        "the healthcheck is kept: {spec}"
    );

    // Nothing to do the second time.
    let r = sync(&sb, &web);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["action"], "none", "{r:?}");

    // Drift: the spec holds another value -> converged; a new task that fails its
    // healthcheck with the value -> paused by Swarm, rolled back by audsync, exit 1.
    let bad = d.name("bad");
    let bad_aud = format!("BAD_AUD={}", aud(2));
    swarm.service(
        &bad,
        &[
            "--env",
            &env,
            "--env",
            &bad_aud,
            "--health-cmd",
            "[ \"$CLOUDFLARE_AUD_TAG\" != \"$BAD_AUD\" ]",
            "--health-interval",
            "500ms",
            "--health-retries",
            "2",
            "--update-monitor",
            "3s",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    running_tasks(&bad, 1, Duration::from_secs(60));
    let r = sync(&sb, &bad);
    assert_eq!(r.code, 1, "{r:?}");
    let t = &r.json()["containers"][0];
    assert_eq!(t["result"], "failed", "{r:?}");
    assert_eq!(t["error"]["rolled_back"], true, "{r:?}");
    let msg = t["error"]["message"].as_str().unwrap();
    assert!(msg.contains("Swarm stopped the update"), "{msg}");
    assert!(
        spec_env(&bad).contains(&env),
        "rolled back: {:?}",
        spec_env(&bad)
    );
    assert!(
        inspect_service(&bad)["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Retries"]
            == 2,
        "the healthcheck survives the update and the rollback"
    );
}
