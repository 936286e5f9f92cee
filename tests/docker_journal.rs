//! The journal of recreates and rollouts on the real Docker engine (#[ignore]d: scripts/test.sh
//! runs them). The binary is killed (SIGKILL, by its debug-only `AUDSYNC_TEST_KILL_AT=<step>`
//! hook) right after the journal recorded each step; the next run must leave one container
//! under the name, on the new value, no twin, with a truthful exit code. Also: an old container
//! that cannot start again (its port taken) is never counted as done, a container that took the
//! name is never touched, a paused container stays paused, and `sync` finishes its step on
//! SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{
    Docker, docker, docker_try, env_of, free_port, id_of, image, inspect,
};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
const SERVER: &str = "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait";
const HEALTH: &str = "wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1";

fn setup() -> (FakeCloudflare, Sandbox, Docker) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    (cf, sb, Docker::new())
}

fn sync_cmd(sb: &Sandbox, c: &str, restart: &str) -> assert_cmd::Command {
    let mut cmd = sb.cmd();
    cmd.args([
        "sync",
        "--domain",
        HOST,
        "--output",
        "json",
        "--settle",
        "1s",
        "--container",
        c,
        "--restart",
        restart,
    ]);
    cmd
}

fn sync(sb: &Sandbox, c: &str, restart: &str) -> (Run, Value) {
    let r = run(&mut sync_cmd(sb, c, restart));
    let j = serde_json::from_str(r.stdout.trim()).unwrap_or(Value::Null);
    (r, j)
}

/// A run killed by SIGKILL right after the journal recorded `step`.
fn sync_killed_at(sb: &Sandbox, c: &str, restart: &str, step: &str) -> Run {
    let mut cmd = sync_cmd(sb, c, restart);
    cmd.env("AUDSYNC_TEST_KILL_AT", step);
    run(&mut cmd)
}

/// A server answering on 8080, healthy once it does (extra `docker run` options first).
fn server(d: &Docker, what: &str, extra: &[&str]) -> String {
    let env = format!("{KEY}=old");
    let mut args = vec![
        "-e",
        &env,
        "--health-cmd",
        HEALTH,
        "--health-interval",
        "500ms",
        "--health-retries",
        "3",
    ];
    args.extend_from_slice(extra);
    let img = image();
    args.extend([img.as_str(), "sh", "-c", SERVER]);
    d.run(what, &args)
}

/// Every container whose name starts with `c` (the name itself, and any twin).
fn family(c: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name=^/{c}"),
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

/// The service is whole: one container under the name, running, on the new value, no twin.
fn assert_whole(c: &str, why: &str) {
    assert_eq!(family(c), vec![c.to_string()], "no twin left ({why})");
    assert_eq!(inspect(c)["State"]["Running"], true, "{c} runs ({why})");
    assert_eq!(env_of(c, KEY), Some(aud(2)), "the new value ({why})");
}

/// The journal beside the container's lock (the record `<lock>.json`), if any.
fn journal_of(sb: &Sandbox) -> Vec<Value> {
    std::fs::read_dir(sb.locks.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("container-") && n.ends_with(".json")
        })
        .filter_map(|e| {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            v.get("applying").cloned()
        })
        .collect()
}

fn kill_at_each_step(restart: &str, steps: &[(&str, bool)]) {
    let (_cf, sb, d) = setup();
    for (step, forward) in steps {
        sb.write_env(&format!("{KEY}=old\n"));
        let c = server(&d, &format!("k-{step}"), &[]);
        crate::support::docker::wait_healthy(&c, Duration::from_secs(30));
        let r = sync_killed_at(&sb, &c, restart, step);
        assert_eq!(r.code, -1, "killed at {step}: {r:?}");
        assert_eq!(
            journal_of(&sb).len(),
            1,
            "the journal outlives the kill at {step}"
        );
        let new_id = journal_of(&sb)[0]["new_id"].as_str().map(str::to_string);

        let (r, j) = sync(&sb, &c, restart);
        assert_eq!(r.code, 0, "after a kill at {step}: {r:?}");
        let recovered = j["recovered"].to_string();
        if *forward {
            assert!(recovered.contains("finished forward"), "{step}: {r:?}");
            assert_eq!(
                Some(id_of(&c)),
                new_id,
                "{step}: the healthy new container is kept"
            );
            assert_eq!(j["containers"][0]["action"], "none", "{step}: {r:?}");
        } else {
            assert!(recovered.contains("rolled back"), "{step}: {r:?}");
            assert_ne!(
                j["containers"][0]["action"], "none",
                "{step}: redone: {r:?}"
            );
        }
        crate::support::docker::wait_healthy(&c, Duration::from_secs(30));
        assert_whole(&c, step);
        assert!(journal_of(&sb).is_empty(), "cleared after {step}");
        // A third run has nothing left to do.
        let (r, j) = sync(&sb, &c, restart);
        assert_eq!(
            (r.code, j["containers"][0]["action"].as_str()),
            (0, Some("none")),
            "{r:?}"
        );
        docker(&["rm", "-f", &c]);
    }
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_journal_a_rollout_killed_at_each_step_ends_whole_on_the_new_value() {
    require_docker!(not_podman: "not checked on Podman (docker_recover's fault tests are)");
    kill_at_each_step(
        "rollout",
        &[
            ("begun", false),
            ("created", false),
            ("started", false),
            ("healthy", true),
            ("old_aside", true),
            ("swapped", true),
        ],
    );
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_journal_a_recreate_killed_at_each_step_ends_whole_on_the_new_value() {
    require_docker!(not_podman: "not checked on Podman (docker_recover's fault tests are)");
    kill_at_each_step(
        "recreate",
        &[
            ("begun", false),
            ("created", false),
            ("old_stopped", false),
            ("old_aside", false),
            ("swapped", false),
            ("started", false),
            ("healthy", true),
        ],
    );
}

/// Killed after the old container stopped; its host port is then taken, so it cannot start
/// again. Every run says so (exit 1) until it can; never "done" with the container left
/// stopped.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_journal_an_old_container_that_cannot_start_again_is_never_counted_done() {
    require_docker!(not_podman: "not checked on Podman (docker_recover's fault tests are)");
    let (_cf, sb, d) = setup();
    let port = free_port().to_string();
    let publish = format!("{port}:8080");
    let c = server(&d, "port", &["-p", &publish]);
    let old_id = id_of(&c);
    let r = sync_killed_at(&sb, &c, "recreate", "old_stopped");
    assert_eq!(r.code, -1, "{r:?}");
    let img = image();
    let blocker = d.run("blocker", &["-p", &publish, &img, "sh", "-c", SERVER]);
    for _ in 0..2 {
        let (r, _) = sync(&sb, &c, "recreate");
        assert_eq!(
            r.code, 1,
            "not done while the old container cannot run: {r:?}"
        );
        assert!(format!("{r:?}").contains("cannot recover"), "{r:?}");
        assert_eq!(id_of(&c), old_id);
        assert_eq!(journal_of(&sb).len(), 1, "kept until a run finishes it");
    }
    docker(&["rm", "-f", &blocker]);
    let (r, j) = sync(&sb, &c, "recreate");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(j["recovered"].to_string().contains("rolled back"), "{r:?}");
    assert_whole(&c, "port free again");
    assert!(journal_of(&sb).is_empty());
}

/// A container that takes the name while a recreate is cut short (created only, or running)
/// is never deleted, started or renamed, nor is the user's old container removed: the run
/// fails and says so until the name is free again.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_journal_a_container_that_took_the_name_is_never_touched() {
    require_docker!(not_podman: "not checked on Podman (docker_recover's fault tests are)");
    let (_cf, sb, d) = setup();
    let img = image();
    for (what, create) in [("created", "create"), ("running", "run")] {
        let c = server(&d, &format!("taken-{what}"), &[]);
        let old_id = id_of(&c);
        let r = sync_killed_at(&sb, &c, "recreate", "old_aside");
        assert_eq!(r.code, -1, "{r:?}");
        let mut args = vec![create];
        if create == "run" {
            args.push("-d");
        }
        args.extend(["--name", c.as_str(), img.as_str(), "sh", "-c", SERVER]);
        docker(&args);
        let intruder = id_of(&c);
        let (r, _) = sync(&sb, &c, "recreate");
        assert_eq!(r.code, 1, "{what}: {r:?}");
        assert!(format!("{r:?}").contains("did not create"), "{what}: {r:?}");
        assert_eq!(id_of(&c), intruder, "{what}: the intruder is left alone");
        assert_eq!(
            inspect(&c)["State"]["Running"],
            create == "run",
            "{what}: not started, not stopped"
        );
        assert!(
            docker_try(&["inspect", &old_id]).0 == 0,
            "{what}: the user's old container is kept"
        );
        // Once the name is free again, the old container is put back and the change redone.
        docker(&["rm", "-f", &intruder]);
        let (r, _) = sync(&sb, &c, "recreate");
        assert_eq!(r.code, 0, "{what}: {r:?}");
        assert_whole(&c, what);
        docker(&["rm", "-f", &c]);
    }
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_journal_a_paused_container_is_not_rolled_out_or_restarted() {
    require_docker!(not_podman: "not checked on Podman (docker_recover's fault tests are)");
    let (_cf, sb, d) = setup();
    for mode in ["rollout", "restart"] {
        sb.write_env(&format!("{KEY}=old\n"));
        let c = server(&d, &format!("paused-{mode}"), &[]);
        crate::support::docker::wait_healthy(&c, Duration::from_secs(30));
        let id = id_of(&c);
        let started = inspect(&c)["State"]["StartedAt"].clone();
        docker(&["pause", &c]);
        let (r, _) = sync(&sb, &c, mode);
        assert_eq!(r.code, 1, "{mode}: {r:?}");
        assert!(format!("{r:?}").contains("paused"), "{mode}: {r:?}");
        assert_eq!(id_of(&c), id, "{mode}: not replaced");
        assert_eq!(inspect(&c)["State"]["Paused"], true, "{mode}: still paused");
        assert_eq!(
            inspect(&c)["State"]["StartedAt"],
            started,
            "{mode}: not restarted"
        );
        assert_eq!(family(&c), vec![c.clone()], "{mode}: no twin");
        docker(&["unpause", &c]);
        let (r, _) = sync(&sb, &c, mode);
        assert_eq!(r.code, 0, "{mode}: {r:?}");
        if mode == "rollout" {
            assert_whole(&c, "unpaused");
        }
        docker(&["rm", "-f", &c]);
    }
}

/// SIGTERM while a recreate is under way: the run finishes it, reports it and exits 0.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_journal_sync_finishes_its_recreate_on_sigterm() {
    require_docker!(not_podman: "not checked on Podman (docker_recover's fault tests are)");
    let (_cf, mut sb, d) = setup();
    let c = server(&d, "term", &[]);
    crate::support::docker::wait_healthy(&c, Duration::from_secs(30));
    let fifo = sb.path("hold");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    sb.var("AUDSYNC_TEST_HOLD_APPLY", fifo.to_str().unwrap());
    let locks = sb.locks.path().to_str().unwrap().to_string();
    sb.var("AUDSYNC_LOCK_DIR", &locks);
    let child = Command::new(env!("CARGO_BIN_EXE_audsync"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(sb.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(sb.dir())
        .args([
            "sync",
            "--domain",
            HOST,
            "--output",
            "json",
            "--settle",
            "1s",
            "--container",
            &c,
            "--restart",
            "recreate",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = sb.path("hold.held");
    let start = Instant::now();
    while !held.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never reached the apply"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Release the hold: the recreate goes on. Non-blocking: a run the signal killed has no
    // reader left, and the test fails instead of waiting for ever.
    let mut child = child;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended on SIGTERM before finishing its recreate: {status}");
        }
        match rustix::fs::open(
            &fifo,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => {
                drop(fd);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    crate::support::docker::wait_healthy(&c, Duration::from_secs(30));
    assert_whole(&c, "after SIGTERM");
    assert!(journal_of(&sb).is_empty());
}

/// `network_mode: container:<base>` with both targeted, in either order: the base is
/// replaced, and the container sharing its network is recreated against the new base id
/// after it (it answers on the base's new namespace); the next run is in sync.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn docker_journal_a_container_sharing_the_network_of_a_replaced_base_follows_it() {
    require_docker!(not_podman: "network_mode container:<base> is not checked on Podman");
    let (_cf, sb, d) = setup();
    let img = image();
    let env = format!("{KEY}=old");
    let sleeper = "trap 'exit 0' TERM; while true; do sleep 1; done";
    for (i, side_first) in [false, true].into_iter().enumerate() {
        sb.write_env(&format!("{KEY}=old\n"));
        let base = d.run(&format!("base{i}"), &["-e", &env, &img, "sh", "-c", SERVER]);
        let netns = format!("container:{base}");
        let side = d.run(
            &format!("side{i}"),
            &["--network", &netns, "-e", &env, &img, "sh", "-c", sleeper],
        );
        let targets = if side_first {
            format!("{side},{base}")
        } else {
            format!("{base},{side}")
        };
        let mut cmd = sb.cmd();
        cmd.args([
            "sync",
            "--domain",
            HOST,
            "--output",
            "json",
            "--settle",
            "1s",
            "--container",
            &targets,
            "--restart",
            "recreate",
        ]);
        let r = run(&mut cmd);
        assert_eq!(r.code, 0, "side first: {side_first}: {r:?}");
        let base_id = id_of(&base);
        assert_eq!(
            inspect(&side)["HostConfig"]["NetworkMode"],
            format!("container:{base_id}"),
            "side first: {side_first}: joined the new base"
        );
        for c in [&base, &side] {
            assert_eq!(inspect(c)["State"]["Running"], true, "{c} runs");
            assert_eq!(env_of(c, KEY), Some(aud(2)), "{c}");
        }
        let (code, out) = docker_try(&[
            "exec",
            &side,
            "wget",
            "-q",
            "-O",
            "/dev/null",
            "http://127.0.0.1:8080/",
        ]);
        assert_eq!(code, 0, "the sidecar reaches the base's server: {out}");
        let r = run(&mut cmd);
        assert_eq!(r.code, 0, "in sync: {r:?}");
        docker(&["rm", "-f", &side, &base]);
    }
}
