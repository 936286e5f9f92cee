//! Runs that touch the same container take turns, whichever way they were started (a config
//! file's run and a flag-only cron run): the resource locks of src/lock.rs, on the real Docker
//! engine (#[ignore]d: scripts/test.sh runs it).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::docker_recreate::{compose, compose_file, service_containers};
use crate::require_docker;
use crate::support::Sandbox;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{Docker, docker, env_of, id_of, wait_healthy};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
const LIMIT: Duration = Duration::from_secs(90);

/// The real binary, spawned with the sandbox's clean environment.
pub(crate) fn spawn(
    sb: &Sandbox,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Child {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("audsync"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUDSYNC_LOCK_DIR", sb.locks.path())
        .envs(sb.vars.iter().map(|(k, v)| (k, v)))
        .envs(extra_env.iter().copied())
        .current_dir(sb.dir())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        c.env("DOCKER_HOST", h);
    }
    c.spawn().expect("spawn audsync")
}

/// The child's stderr, collected by a thread as it comes.
pub(crate) fn collect(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut from = child.stderr.take().unwrap();
    let to = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            to.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

pub(crate) fn finish(child: std::process::Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A FIFO for `AUDSYNC_TEST_HOLD_APPLY` in the sandbox, and the file the hook creates when it
/// holds (see src/lock.rs `test_hold_apply`).
pub(crate) fn hold_fifo(sb: &Sandbox) -> (std::path::PathBuf, std::path::PathBuf) {
    let fifo = sb.path("hold-apply.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let held = sb.path("hold-apply.fifo.held");
    (fifo, held)
}

/// Release a run held on `fifo`: opening it meets the hook's open, closing it ends its read.
pub(crate) fn release(fifo: &std::path::Path) {
    drop(std::fs::OpenOptions::new().write(true).open(fifo).unwrap());
}

pub(crate) fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < LIMIT, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run A (a config file's binding) is held inside its apply, just before it recreates the
/// compose service's container; run B (a flag-only `sync --env-file … --compose-service …`, as
/// from cron) is started on the same service. B waits for A's locks; the engine sees one
/// `create`; B then finds the container in sync; both exit 0.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_config_run_and_a_flag_run_on_one_compose_service_take_turns() {
    require_docker!(not_podman: "runs docker-compose; podman-compose is not checked");
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    let d = Docker::new();
    let project = d.prefix.clone();
    std::fs::write(sb.path("docker-compose.yml"), compose_file()).unwrap();
    d.compose_project(sb.dir(), &project);
    let (code, out) = compose(&sb, &project, &["up", "-d"]);
    assert_eq!(code, 0, "{out}");
    let names = service_containers(&project);
    assert_eq!(names.len(), 1, "{names:?}");
    let name = names[0].clone();
    wait_healthy(&name, Duration::from_secs(30));
    let old_id = id_of(&name);
    let service = format!("{project}/lambda-server");

    // A's configuration sits apart, so B (run where the .env is) is a flag-only run.
    std::fs::create_dir(sb.path("a")).unwrap();
    std::fs::write(
        sb.path("a/audsync.toml"),
        format!(
            "[[binding]]\ndomain = \"{HOST}\"\nkey = \"{KEY}\"\nrestart = \"recreate\"\n\
             sinks = [{{ env = \"../.env\" }}]\ntargets = [{{ compose_service = \"{service}\" }}]\n"
        ),
    )
    .unwrap();
    let fifo = sb.path("hold-apply.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let held = sb.path("hold-apply.fifo.held");
    // After compose's own create (sub-second: the engine takes fractional timestamps).
    let t0 = {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    };

    let mut a = spawn(
        &sb,
        &[("AUDSYNC_TEST_HOLD_APPLY", fifo.to_str().unwrap())],
        &["sync", "--config", "a/audsync.toml", "--output", "json"],
    );
    let a_err = collect(&mut a);
    until("A held inside its apply", || held.exists());
    assert_eq!(id_of(&name), old_id, "A is held before its recreate");

    let mut b = spawn(
        &sb,
        &[("RUST_LOG", "info")],
        &[
            "sync",
            "--domain",
            HOST,
            "--env-file",
            ".env",
            "--compose-service",
            &service,
            "--restart",
            "recreate",
            "--lock-timeout",
            "5m",
            "--output",
            "json",
        ],
    );
    let b_err = collect(&mut b);
    until("B waits for the lock A holds", || {
        b_err
            .lock()
            .unwrap()
            .contains("another audsync run is in progress; waiting")
    });
    assert!(b.try_wait().unwrap().is_none(), "B is still waiting");
    assert_eq!(id_of(&name), old_id, "nothing recreated while A is held");

    // Release A: opening the FIFO meets the hook's open, closing it ends its read.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    let (a_code, a_out) = finish(a);
    assert_eq!(a_code, 0, "A: {a_out}\n{}", a_err.lock().unwrap());
    let (b_code, b_out) = finish(b);
    assert_eq!(b_code, 0, "B: {b_out}\n{}", b_err.lock().unwrap());
    let b_report: serde_json::Value = serde_json::from_str(b_out.trim()).unwrap();
    assert_eq!(b_report["status"], "in_sync", "B found it done: {b_out}");

    assert_ne!(id_of(&name), old_id, "A recreated it");
    assert_eq!(env_of(&name, KEY), Some(aud(2)));
    let t1 = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1)
    .to_string();
    let creates = docker(&[
        "events",
        "--since",
        &t0,
        "--until",
        &t1,
        "--filter",
        "event=create",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.ID}}",
    ]);
    assert_eq!(
        creates.lines().filter(|l| !l.is_empty()).count(),
        1,
        "the engine saw one create: {creates}"
    );
    d.note_volumes();
    let (code, out) = compose(&sb, &project, &["down", "-v"]);
    assert_eq!(code, 0, "{out}");
}
