//! Helpers for tests against the real Docker engine, through the `docker` CLI.
//!
//! Every container, network and volume a test makes is named with a per-run unique prefix and
//! removed when the [`Docker`] guard drops (also on panic), together with the volumes those
//! containers mounted (anonymous ones included) and any compose project started through it.
//! Those tests are `#[ignore]`d (a plain `cargo nextest run` reports them skipped) and start
//! with [`require_docker!`]; scripts/test.sh runs them (`--run-ignored all`).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// First line of every test that needs the engine. Such a test is also marked
/// `#[ignore = "needs the Docker engine: run scripts/test.sh"]`, so a plain `cargo nextest run`
/// or `cargo test` reports it skipped (never passed without running); scripts/test.sh runs it
/// with `--run-ignored all`. When it does run, an unreachable engine fails it with a clear
/// message (never a silent return). scripts/check-docker-tests.py checks the pairing.
///
/// An engine test that is not in the Podman set (the tests scripts/test-podman.sh runs against
/// Podman, docs/podman.md) says why in its first line instead:
/// `require_docker!(not_podman: "Podman has no Swarm")`. scripts/test-podman.sh never runs such a
/// test; if one is run against Podman anyway (`AUDSYNC_TEST_ENGINE=podman`) it fails with that
/// reason rather than pass or skip unchecked. scripts/check-docker-tests.py fails when an engine
/// test is in neither group, or in both.
#[macro_export]
macro_rules! require_docker {
    () => {
        $crate::support::docker::require_engine()
    };
    (not_podman: $why:literal) => {
        $crate::support::docker::require_engine_not_podman($why)
    };
}

/// Panic, saying why, unless `docker version` reaches the engine.
pub fn require_engine() {
    static REACHABLE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = REACHABLE.get_or_init(|| {
        let out = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    });
    if let Err(why) = r {
        panic!(
            "this test needs the Docker engine, which is unreachable (DOCKER_HOST={}): {why}\n\
             start it, or leave the engine tests out (they are #[ignore]d: a plain \
             `cargo nextest run` skips them; scripts/test.sh runs them)",
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
        );
    }
}

/// [`require_engine`], and fail with `why` when the engine under test is Podman: the test is not
/// in the Podman set (see [`require_docker!`]).
pub fn require_engine_not_podman(why: &str) {
    assert!(
        !why.trim().is_empty(),
        "require_docker!(not_podman: …) needs a reason"
    );
    require_engine();
    assert!(
        !is_podman(),
        "this engine test is not run against Podman: {why} (scripts/test-podman.sh runs the \
         Podman set; docs/podman.md)"
    );
}

/// Whether the engine under test is Podman's Docker-compatible API (scripts/test-podman.sh sets
/// `AUDSYNC_TEST_ENGINE=podman` and points DOCKER_HOST at Podman's socket; the `docker` CLI these
/// helpers run talks to it there). Tests use it only where Podman reports a thing differently.
pub fn is_podman() -> bool {
    std::env::var("AUDSYNC_TEST_ENGINE").is_ok_and(|e| e == "podman")
}

/// The local test image (busybox-static), built by scripts/test-image.sh.
pub fn image() -> String {
    std::env::var("AUDSYNC_TEST_IMAGE").unwrap_or_else(|_| "audsync-test/busybox:1".into())
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Run `docker args`; panic with its stderr when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("cannot run the docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run `docker args`, returning (exit code, stdout + stderr).
pub fn docker_try(args: &[&str]) -> (i32, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("cannot run the docker CLI");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A guard owning everything one test made on the engine.
pub struct Docker {
    pub prefix: String,
    networks: RefCell<Vec<String>>,
    volumes: RefCell<Vec<String>>,
    compose: RefCell<Vec<(PathBuf, String)>>,
}

impl Docker {
    pub fn new() -> Docker {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Docker {
            prefix: format!(
                "audsynct{}x{n}x{:04x}",
                std::process::id(),
                fastrand::u16(..)
            ),
            networks: RefCell::default(),
            volumes: RefCell::default(),
            compose: RefCell::default(),
        }
    }

    /// A unique name for a thing called `what` in this test.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// `docker run -d --name <prefix>-<what> <args…>`; returns the name.
    pub fn run(&self, what: &str, args: &[&str]) -> String {
        let name = self.name(what);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        docker(&all);
        name
    }

    pub fn network(&self, what: &str) -> String {
        let name = self.name(what);
        docker(&["network", "create", &name]);
        self.networks.borrow_mut().push(name.clone());
        name
    }

    pub fn volume(&self, what: &str) -> String {
        let name = self.name(what);
        docker(&["volume", "create", &name]);
        self.volumes.borrow_mut().push(name.clone());
        name
    }

    /// Remember a compose project to bring down (with its volumes) on drop.
    pub fn compose_project(&self, dir: &Path, project: &str) {
        self.compose
            .borrow_mut()
            .push((dir.to_path_buf(), project.to_string()));
    }

    /// Remember, for removal on drop, every volume this test's containers mount (anonymous
    /// ones included: after a recreate they are mounted by name, so `rm -v` and
    /// `compose down -v` keep them). Call before removing containers by other means.
    pub fn note_volumes(&self) {
        for c in self.containers() {
            let Ok(v) = inspect_try(&c) else { continue };
            for m in v["Mounts"].as_array().into_iter().flatten() {
                if m["Type"] == "volume"
                    && let Some(n) = m["Name"].as_str()
                {
                    self.volumes.borrow_mut().push(n.to_string());
                }
            }
        }
    }

    /// Names of every container (any state) whose name starts with this test's prefix.
    pub fn containers(&self) -> Vec<String> {
        docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("name={}", self.prefix),
            "--format",
            "{{.Names}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // Note every volume first: once compose is down its containers can no longer say which
        // anonymous volumes they had (mounted by name after a recreate, `down -v` keeps them).
        self.note_volumes();
        for (dir, project) in self.compose.borrow().iter() {
            let _ = Command::new("docker-compose")
                .args(["-p", project, "down", "-v", "--remove-orphans"])
                .current_dir(dir)
                .output();
        }
        let names = self.containers();
        if !names.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(names.iter().map(String::as_str));
            let _ = docker_try(&args);
        }
        for n in self.networks.borrow().iter() {
            let _ = docker_try(&["network", "rm", n]);
        }
        let mut volumes = self.volumes.borrow().clone();
        volumes.sort();
        volumes.dedup();
        for v in &volumes {
            let _ = docker_try(&["volume", "rm", v]);
        }
    }
}

fn inspect_try(name: &str) -> Result<Value, String> {
    let (code, out) = docker_try(&["inspect", "--type", "container", name]);
    if code != 0 {
        return Err(out);
    }
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok(v[0].clone())
}

/// `docker inspect` of one container.
pub fn inspect(name: &str) -> Value {
    inspect_try(name).unwrap_or_else(|e| panic!("docker inspect {name}: {e}"))
}

/// The value of `key` in the container's configured environment.
pub fn env_of(name: &str, key: &str) -> Option<String> {
    let v = inspect(name);
    v["Config"]["Env"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

pub fn started_at(name: &str) -> String {
    inspect(name)["State"]["StartedAt"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn id_of(name: &str) -> String {
    inspect(name)["Id"].as_str().unwrap_or_default().to_string()
}

/// `docker exec name sh -c script` -> (exit code, output).
pub fn exec(name: &str, script: &str) -> (i32, String) {
    docker_try(&["exec", name, "sh", "-c", script])
}

/// Wait until the container's health is `healthy` (panics after `limit`).
pub fn wait_healthy(name: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let v = inspect(name);
        if v["State"]["Health"]["Status"] == "healthy" {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{name} not healthy within {limit:?}: {}",
            v["State"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A free TCP port on 127.0.0.1 (for publishing a container port at a fixed address).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A main process that ignores SIGTERM: only the engine's SIGKILL after the container's stop
/// timeout ends it (so how long a stop takes shows which timeout the engine used).
pub const IGNORES_TERM: &str = "trap '' TERM; echo up; while true; do sleep 1; done";

/// A `docker events` stream for one container, recorded from just before it was started (the
/// `--since` replay covers the moment the subscription takes to set up). The child process is
/// stopped by [`Events::stop`] or on drop.
pub struct Events {
    child: Option<std::process::Child>,
}

impl Events {
    /// Start recording the events of container `id` (use the id: a recreate renames it).
    pub fn watch(id: &str) -> Events {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
            .saturating_sub(1)
            .to_string();
        let child = Command::new("docker")
            .args([
                "events",
                "--since",
                &since,
                "--filter",
                &format!("container={id}"),
                "--format",
                "{{json .}}",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot run docker events");
        Events { child: Some(child) }
    }

    /// Stop recording; the container events seen, in order.
    pub fn stop(mut self) -> Vec<Value> {
        let Some(mut child) = self.child.take() else {
            return Vec::new();
        };
        // Let the last events of the action reach the stream before cutting it.
        std::thread::sleep(Duration::from_millis(500));
        let _ = child.kill();
        let out = child.wait_with_output().expect("docker events output");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// From recorded events: how long the container took to die after it was sent SIGTERM, and
/// whether it had to be killed (SIGKILL). Panics when no SIGTERM or no `die` was recorded.
pub fn stop_duration(events: &[Value]) -> (Duration, bool) {
    let nanos = |e: &Value| e["timeNano"].as_u64().unwrap_or_default();
    let signal = |e: &Value, s: &str| {
        e["Action"] == "kill" && e["Actor"]["Attributes"]["signal"].as_str() == Some(s)
    };
    let term = events
        .iter()
        .find(|e| signal(e, "15"))
        .unwrap_or_else(|| panic!("no SIGTERM recorded: {events:#?}"));
    let after: Vec<&Value> = events
        .iter()
        .skip_while(|e| !std::ptr::eq(*e, term))
        .collect();
    let die = after
        .iter()
        .find(|e| e["Action"] == "die")
        .unwrap_or_else(|| panic!("no die after SIGTERM: {events:#?}"));
    let killed = after.iter().any(|e| signal(e, "9"));
    (
        Duration::from_nanos(nanos(die).saturating_sub(nanos(term))),
        killed,
    )
}

/// The value of `key` in the environment of container `name` when it exists and is running;
/// `None` meanwhile (absent, being recreated, stopped, or without the key).
pub fn running_env(name: &str, key: &str) -> Option<String> {
    let v = inspect_try(name).ok()?;
    if v["State"]["Running"] != true {
        return None;
    }
    v["Config"]["Env"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}
