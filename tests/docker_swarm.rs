//! `sync` against Swarm services on a single-node swarm of the real engine: a dry run shows the
//! spec's env diff and changes nothing, every task runs the new value, a second pass does
//! nothing, a new task that fails its healthcheck is rolled back, an update killed at each step
//! of its journal is finished by the next run, a paused update of someone else's is left paused
//! (#[ignore]d: scripts/test.sh runs it). One test, so the swarm is made and left once: leaving it tears
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
    killed_at(&sb, &name, "sent");
    assert!(spec_env(&name).contains(&want), "the update was sent");
    let r = sync(&sb, &name);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.json()["recovered"]
            .to_string()
            .contains("finishing a Swarm update a previous run began"),
        "the journal found and finished: {r:?}"
    );
    on_new_now(&name);
    let r = sync(&sb, &name);
    assert_eq!(r.json()["containers"][0]["action"], "none", "{r:?}");

    // 3. The issue: a new task that fails its healthcheck (update policy: pause), audsync
    // killed during the update, Swarm paused. The next run does not say "in sync".
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
    // Killed right after the update was sent (a kill point, not a race with audsync's own
    // wait, which sees the pause as soon as the test would); then Swarm pauses on its own.
    killed_at(&sb, &name, "sent");
    let start = Instant::now();
    while update_state(&name) != "paused" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Swarm never paused: {}",
            update_state(&name)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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

fn record(sb: &Sandbox, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(record_path(sb, name)).unwrap()).unwrap()
}

/// Run audsync with `AUDSYNC_TEST_KILL_AT=<step>` and wait for it to kill itself there.
fn killed_at(sb: &Sandbox, name: &str, step: &str) {
    let mut child = spawn(sb, name, &[("AUDSYNC_TEST_KILL_AT", step)]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "{name}: killed at {step}: {status:?}");
}

/// Issue 24: a Swarm update is journalled in the service's lock record like a recreate: killed
/// at an exact step (`AUDSYNC_TEST_KILL_AT`), the record holds the journal (service id, version
/// index, a hash per value: never the value), and the next run says it finishes an update a
/// previous run began and does: the new value on every running task, exit 0; or, for a new task
/// that fails its healthcheck, rolled back, exit 1, reported as a rollback. Cleared either way.
fn journal_kill_points(swarm: &mut Swarm, d: &Docker) {
    let want = format!("{KEY}={}", aud(2));
    let old = format!("{KEY}=old");
    let bad_aud = format!("BAD_AUD={}", aud(2));
    let mut service = |what: &str, failing: bool| -> (Sandbox, String, FakeCloudflare) {
        let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
        let sb = Sandbox::with_cloudflare(&cf);
        sb.write_env(&format!("{KEY}=old\n"));
        let name = d.name(what);
        let mut args = vec!["--replicas", "2", "--env", &old, "--update-monitor", "1s"];
        if failing {
            args = vec![
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
            ];
        } else {
            args.extend(["--update-delay", "2s"]);
        }
        let image = image();
        args.extend([image.as_str(), "sh", "-c", SERVER]);
        swarm.service(&name, &args);
        running_tasks(&name, if failing { 1 } else { 2 }, Duration::from_secs(60));
        (sb, name, cf)
    };

    // Killed right after the engine accepted the update.
    let (sb, name, _cf) = service("j1", false);
    let before = inspect_service(&name);
    killed_at(&sb, &name, "sent");
    let r = record(&sb, &name);
    let j = &r["applying"];
    assert_eq!(j["kind"], "swarm_update", "{r}");
    assert_eq!(j["step"], "sent", "{r}");
    assert_eq!(j["name"], name, "{r}");
    assert_eq!(j["old_id"], before["ID"], "{r}");
    assert_eq!(j["version"], before["Version"]["Index"], "{r}");
    let hash = j["values"][KEY].as_str().unwrap();
    assert_eq!(hash.len(), 16, "{r}");
    assert!(
        !r.to_string().contains(&aud(2)),
        "no value in the journal: {r}"
    );
    assert!(spec_env(&name).contains(&want), "sent");
    // A dry run says what the next run does, and leaves the journal.
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--output",
        "json",
        "--swarm-service",
        &name,
        "--dry-run",
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.json()["recovered"]
            .to_string()
            .contains("the next run does it"),
        "{r:?}"
    );
    assert_eq!(record(&sb, &name)["applying"]["step"], "sent", "kept");
    let r = sync(&sb, &name);
    assert_eq!(r.code, 0, "{r:?}");
    let recovered = r.json()["recovered"].to_string();
    assert!(
        recovered.contains("finishing a Swarm update a previous run began (step sent)")
            && recovered.contains("every running task carries the new value"),
        "{r:?}"
    );
    for env in running_tasks(&name, 2, Duration::from_secs(1)) {
        assert!(env.contains(&want), "{name}: {env:?}");
    }
    assert_eq!(update_state(&name), "completed");
    assert!(record(&sb, &name).get("applying").is_none(), "cleared");
    let r = sync(&sb, &name);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["action"], "none", "{r:?}");

    // Killed before it was sent: nothing to finish; the next run sends it.
    let (sb, name, _cf) = service("j2", false);
    killed_at(&sb, &name, "begun");
    assert_eq!(record(&sb, &name)["applying"]["step"], "begun");
    assert!(spec_env(&name).contains(&old), "not sent");
    let r = sync(&sb, &name);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.json()["recovered"].to_string().contains("never sent"),
        "{r:?}"
    );
    assert_eq!(r.json()["containers"][0]["result"], "done", "{r:?}");
    for env in running_tasks(&name, 2, Duration::from_secs(1)) {
        assert!(env.contains(&want), "{name}: {env:?}");
    }
    assert!(record(&sb, &name).get("applying").is_none(), "cleared");

    // A new task that fails its healthcheck, killed once sent: rolled back, exit 1.
    for (what, step) in [("j3", "sent"), ("j4", "rolling_back")] {
        let (sb, name, _cf) = service(what, true);
        killed_at(&sb, &name, step);
        let r = record(&sb, &name);
        assert_eq!(r["applying"]["step"], step, "{r}");
        if step == "rolling_back" {
            // The failure is remembered with the step, before the rollback is sent.
            assert_eq!(r["failed"]["attempts"], 1, "{r}");
            assert!(spec_env(&name).contains(&want), "not rolled back yet");
        }
        let r = sync(&sb, &name);
        assert_eq!(r.code, 1, "{step}: {r:?}");
        let j = r.json();
        let t = &j["containers"][0];
        assert_eq!(t["result"], "failed", "{step}: {r:?}");
        assert_eq!(t["error"]["rolled_back"], true, "{step}: {r:?}");
        let msg = t["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("a previous run began") && msg.contains("rolled back"),
            "{step}: {msg}"
        );
        assert!(
            j["recovered"].to_string().contains("rolled back"),
            "{step}: {r:?}"
        );
        if step == "rolling_back" {
            // Known to have failed: rolled back, not resumed to fail again.
            assert!(msg.contains("a previous run was rolling it back"), "{msg}");
        }
        assert!(
            spec_env(&name).contains(&old),
            "{step}: {:?}",
            spec_env(&name)
        );
        for env in running_tasks(&name, 1, Duration::from_secs(60)) {
            assert!(env.contains(&old), "{step}: {env:?}");
        }
        let r = record(&sb, &name);
        assert!(r.get("applying").is_none(), "{step}: cleared: {r}");
        assert_eq!(r["failed"]["attempts"], 1, "{step}: one failure: {r}");
    }
}

/// Paused stays paused: someone else's update that Swarm paused, whose running task carries
/// the value audsync keeps, is not resumed (its version index does not move), exit 0.
fn paused_stays_paused(swarm: &mut Swarm, d: &Docker) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}={}\n", aud(2)));
    let name = d.name("paused");
    let env = format!("{KEY}={}", aud(2));
    swarm.service(
        &name,
        &[
            "--env",
            &env,
            "--health-cmd",
            "[ -z \"$BREAK\" ]",
            "--health-interval",
            "500ms",
            "--health-retries",
            "2",
            "--update-monitor",
            "3s",
            "--update-failure-action",
            "pause",
            "--update-order",
            "start-first",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    running_tasks(&name, 1, Duration::from_secs(60));
    // Their update (not audsync's) fails its healthcheck: Swarm pauses it, the old task runs.
    docker(&[
        "service",
        "update",
        "--detach",
        "--env-add",
        "BREAK=1",
        &name,
    ]);
    let start = Instant::now();
    while update_state(&name) != "paused" {
        assert!(start.elapsed() < Duration::from_secs(60), "never paused");
        std::thread::sleep(Duration::from_millis(300));
    }
    let version = inspect_service(&name)["Version"]["Index"].clone();
    let r = sync(&sb, &name);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["action"], "none", "{r:?}");
    assert_eq!(update_state(&name), "paused", "still paused");
    assert_eq!(
        inspect_service(&name)["Version"]["Index"],
        version,
        "not resumed"
    );
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

/// Issue 22: `watch --discover` follows a Swarm service labelled `audsync.domain` on the
/// engine's events, although service events carry no labels: an update that puts a stale value
/// in its spec is converged by a pass the events asked for (the interval is 1 h).
fn watch_follows_labelled_services(swarm: &mut Swarm, d: &Docker) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let mut sb = Sandbox::with_cloudflare(&cf);
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        sb.var("DOCKER_HOST", &h);
    }
    let name = d.name("labelled");
    let label = format!("audsync.domain={HOST}");
    let old = format!("{KEY}=old");
    let want = format!("{KEY}={}", aud(2));
    swarm.service(
        &name,
        &[
            "--label",
            &label,
            "--env",
            &old,
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    running_tasks(&name, 1, Duration::from_secs(60));
    let limit = Duration::from_secs(120);
    let (mut w, _addr) = crate::watch::start_listening(
        &sb,
        &[
            "--discover",
            "--discover-scope",
            &d.prefix,
            "--interval",
            "1h",
            "--jitter",
            "0",
        ],
    );
    w.expect("the first pass converges the service", limit, |_| {
        spec_env(&name).contains(&want)
    });
    let events_pass = |w: &crate::watch::Watcher| {
        w.json_logs().iter().any(|l| {
            crate::watch::message(l) == "engine events: converging"
                && l["fields"]["objects"]
                    .as_str()
                    .is_some_and(|o| o.split(", ").any(|n| n == name))
        })
    };
    w.expect("the first pass ends", limit, |w| {
        w.json_logs()
            .iter()
            .any(|l| crate::watch::message(l) == "pass done")
    });
    let stale = format!("{KEY}=stale");
    docker(&["service", "update", "--detach", "--env-add", &stale, &name]);
    w.expect(
        "the stale update is converged from the events",
        limit,
        |w| events_pass(w) && spec_env(&name).contains(&want),
    );
    for env in running_tasks(&name, 1, Duration::from_secs(60)) {
        assert!(env.contains(&want), "{env:?}");
    }
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
    journal_kill_points(&mut swarm, &d);
    paused_stays_paused(&mut swarm, &d);
    watch_follows_labelled_services(&mut swarm, &d);
    assert!(
        inspect_service(&bad)["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Retries"]
            == 2,
        "the healthcheck survives the update and the rollback"
    );
}
