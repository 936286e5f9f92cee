//! `sync` against Swarm services on a single-node swarm of the real engine: a dry run shows the
//! spec's env diff and changes nothing, every task runs the new value, a second pass does
//! nothing, a new task that fails its healthcheck is rolled back (#[ignore]d: scripts/test.sh
//! runs it). One test, so the swarm is made and left once: leaving it tears
//! networks down under other tests that run meanwhile. The swarm is initialised here when none is active, and
//! left at the end only then; an active swarm is joined as it is.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

/// The binary as a plain process (to kill it), with the sandbox's clean environment.
fn spawn(sb: &Sandbox, service: &str, extra: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_audsync"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUDSYNC_LOCK_DIR", sb.locks.path())
        .envs(sb.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .current_dir(sb.dir())
        .args(["sync", "--domain", HOST, "--swarm-service", service])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        c.env("DOCKER_HOST", h);
    }
    c.spawn().unwrap()
}

/// Kill `child` once `seen` holds (it must, within a minute, while the child still runs).
fn kill_when(mut child: Child, what: &str, seen: impl Fn() -> bool) {
    let start = Instant::now();
    while !seen() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what}: the run ended before the kill point"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: never seen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn update_state(name: &str) -> String {
    inspect_service(name)["UpdateStatus"]["State"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The lock record of Swarm service `name` (src/lock.rs names it `swarm-<name>-<hash>.json`).
fn record_path(sb: &Sandbox, name: &str) -> PathBuf {
    std::fs::read_dir(sb.locks.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            f.starts_with(&format!("swarm-{name}-")) && f.ends_with(".json")
        })
        .unwrap_or_else(|| panic!("no record of {name}"))
}

/// Issue 24: killed at each step of a Swarm update, the next run converges on the running
/// tasks, not the spec: the service ends on the new value (exit 0), or, for a value whose new
/// task fails its healthcheck, rolled back with exit 1 -- and that value is then remembered
/// as failed, not pushed again until its backoff has passed, reported failing every pass.
fn kill_points(swarm: &mut Swarm, d: &Docker) {
    let want = format!("{KEY}={}", aud(2));
    let old = format!("{KEY}=old");
    let mut healthy = |what: &str| -> (Sandbox, String, FakeCloudflare) {
        let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
        let sb = Sandbox::with_cloudflare(&cf);
        sb.write_env(&format!("{KEY}=old\n"));
        let name = d.name(what);
        swarm.service(
            &name,
            &[
                "--replicas",
                "2",
                "--env",
                &old,
                "--update-delay",
                "3s",
                "--update-monitor",
                "1s",
                &image(),
                "sh",
                "-c",
                SERVER,
            ],
        );
        running_tasks(&name, 2, Duration::from_secs(60));
        (sb, name, cf)
    };
    let on_new_now = |name: &str| {
        // Right when the run returns: no waiting for Swarm here.
        for env in running_tasks(name, 2, Duration::from_secs(1)) {
            assert!(env.contains(&want), "{name}: {env:?}");
        }
        assert_eq!(update_state(name), "completed", "{name}");
    };

    // 1. Killed after the sink write, before the service update.
    let (sb, name, _cf) = healthy("k1");
    let fifo = sb.path("hold.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let held = sb.path("hold.fifo.held");
    let child = spawn(
        &sb,
        &name,
        &[("AUDSYNC_TEST_HOLD_APPLY", fifo.to_str().unwrap())],
    );
    kill_when(child, "before the update", || held.exists());
    assert!(sb.read_env().contains(&want), "the sink was written first");
    assert!(
        spec_env(&name).contains(&old),
        "the service is not updated yet"
    );
    let r = sync(&sb, &name);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["result"], "done", "{r:?}");
    on_new_now(&name);

    // 2. Killed once the update is sent, while Swarm rolls it out (3 s between the replicas):
    // the spec says the new value, the tasks do not yet; the next run waits for them.
    let (sb, name, _cf) = healthy("k2");
    let child = spawn(&sb, &name, &[]);
    kill_when(child, "during the rollout", || {
        spec_env(&name).contains(&want)
    });
    let r = sync(&sb, &name);
    assert_eq!(r.code, 0, "{r:?}");
    let t = &r.json()["containers"][0];
    assert_eq!(t["result"], "done", "{r:?}");
    assert!(
        t["reason"].as_str().unwrap().contains("not converged"),
        "{r:?}"
    );
    on_new_now(&name);
    let r = sync(&sb, &name);
    assert_eq!(r.json()["containers"][0]["action"], "none", "{r:?}");

    // 3. The issue: a new task that fails its healthcheck (update policy: pause), audsync
    // killed once Swarm paused. The next run does not say "in sync".
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    let name = d.name("k3");
    let bad_aud = format!("BAD_AUD={}", aud(2));
    swarm.service(
        &name,
        &[
            "--env",
            &old,
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
            "--update-failure-action",
            "pause",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    running_tasks(&name, 1, Duration::from_secs(60));
    let child = spawn(&sb, &name, &[]);
    kill_when(child, "once Swarm paused", || {
        update_state(&name) == "paused"
    });
    assert!(spec_env(&name).contains(&want), "paused on the new spec");
    let r = sync(&sb, &name);
    assert_eq!(r.code, 1, "not in sync: {r:?}");
    let t = &r.json()["containers"][0];
    assert_eq!(t["result"], "failed", "{r:?}");
    assert_eq!(t["error"]["rolled_back"], true, "{r:?}");
    assert!(spec_env(&name).contains(&old), "{:?}", spec_env(&name));
    for env in running_tasks(&name, 1, Duration::from_secs(60)) {
        assert!(env.contains(&old), "{env:?}");
    }
    let record: Value =
        serde_json::from_slice(&std::fs::read(record_path(&sb, &name)).unwrap()).unwrap();
    assert_eq!(record["failed"]["values"][KEY], aud(2), "{record}");
    assert_eq!(record["failed"]["attempts"], 1, "{record}");

    // Remembered: not pushed again (the service is not touched), reported failing.
    let version = inspect_service(&name)["Version"]["Index"].clone();
    let r = sync(&sb, &name);
    assert_eq!(r.code, 1, "{r:?}");
    let t = &r.json()["containers"][0];
    assert_eq!(t["result"], "failed", "{r:?}");
    let msg = t["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not pushed again"), "{msg}");
    assert_eq!(
        inspect_service(&name)["Version"]["Index"],
        version,
        "not pushed"
    );

    // Once the backoff has passed it is tried again, and the backoff grows.
    let path = record_path(&sb, &name);
    let mut record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    record["failed"]["at"] = 0.into();
    std::fs::write(&path, record.to_string()).unwrap();
    let r = sync(&sb, &name);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.json()["containers"][0]["error"]["rolled_back"],
        true,
        "{r:?}"
    );
    assert_ne!(
        inspect_service(&name)["Version"]["Index"],
        version,
        "tried again"
    );
    let record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(record["failed"]["attempts"], 2, "{record}");
    assert!(spec_env(&name).contains(&old));
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
    require_docker!(not_podman: "Podman has no Swarm");
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
    kill_points(&mut swarm, &d);
    assert!(
        inspect_service(&bad)["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Retries"]
            == 2,
        "the healthcheck survives the update and the rollback"
    );
}
