//! Replacing containers without a second outage, on the real Docker engine: `--restart rollout`
//! (no failed request from a client that reaches the service by network alias), the fallback to
//! a recreate, compose's config hash after a recreate, and the patient health wait of
//! `--health-timeout` (#[ignore]d: scripts/test.sh runs them).

use std::time::{Duration, Instant};

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{
    Docker, docker, docker_try, env_of, free_port, id_of, image, inspect, wait_healthy,
};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
/// Serves HTTP on 8080; leaves at once on SIGTERM.
const SERVER: &str = "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait";
const HEALTH: &str = "wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1";

fn setup() -> (FakeCloudflare, Sandbox, Docker) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    (cf, sb, Docker::new())
}

fn sync(sb: &Sandbox, args: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--output", "json"]);
    c.args(args);
    run(&mut c)
}

/// A client on `net` with four loops, each asking `http://<alias>:8080/<path>` every 20 ms; logs
/// `ok` or `FAIL ...` per request. It does what the dialers of real proxies do (Go's
/// `net.Dialer` in Caddy, Traefik and cloudflared; curl; Python's `create_connection`): resolve
/// the name, try its addresses in order, and move to the next one only while no connection could
/// be made (refused, or no answer to the connect within 1 s). A request that was connected and
/// got no answer fails: it is never sent twice, and the name is resolved once per request.
fn client(d: &Docker, net: &str, alias: &str, path: &str) -> String {
    let script = format!(
        r#"ask() {{ while true; do
  r="FAIL no address"
  for ip in $(timeout 1 nslookup {alias} 2>/dev/null | sed -n 's/^Address: *\([0-9.]*\)$/\1/p'); do
    out=$(printf 'GET /{path} HTTP/1.0\r\n\r\n' | timeout 3 nc -w 1 $ip 8080 2>&1)
    case "$out" in
      *" 200 OK"*) r=ok; break;;
      *"can't connect"*|*"timed out"*) r="FAIL $ip: $out";;
      *) r="FAIL $ip: connected, no answer"; break;;
    esac
  done
  echo "$r"
  usleep 20000
done; }}
ask & ask & ask & ask & wait"#
    );
    d.run("client", &["--network", net, &image(), "sh", "-c", &script])
}

/// (ok, failed) requests the client logged so far.
fn tally(client: &str) -> (usize, usize) {
    let (_, out) = docker_try(&["logs", client]);
    let ok = out.lines().filter(|l| l.trim() == "ok").count();
    let failed = out.lines().filter(|l| l.contains("FAIL")).count();
    (ok, failed)
}

fn wait_requests(client: &str, n: usize) {
    let start = Instant::now();
    while tally(client).0 < n {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "client gets no answer: {:?}",
            tally(client)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a well-behaved server does on SIGTERM: stop listening, answer the requests in flight
/// (up to 2 s), leave. `/cgi-bin/slow` answers after 300 ms, so a request is nearly always in
/// flight.
const GRACEFUL: &str = "mkdir -p /www/cgi-bin; \
    printf '#!/bin/sh\\nsleep 0.3\\necho Content-Type: text/plain\\necho\\necho ok\\n' >/www/cgi-bin/slow; \
    chmod +x /www/cgi-bin/slow; \
    trap 'kill $p; sleep 2; exit 0' TERM; httpd -f -p 8080 -h /www & p=$!; wait";

/// A server on `net` under the alias `api-alias` that listens only `boot` seconds after it
/// starts (an API that loads before it binds), healthy once it answers.
fn server(d: &Docker, net: &str, boot: u32, extra: &[&str]) -> String {
    serving(d, net, boot, SERVER, extra)
}

/// [`server`] running `serve` (a shell command line) once it has booted.
fn serving(d: &Docker, net: &str, boot: u32, serve: &str, extra: &[&str]) -> String {
    let env = format!("{KEY}=old");
    let cmd = format!("sleep {boot}; {serve}");
    let mut args = vec![
        "--network",
        net,
        "--network-alias",
        "api-alias",
        "-e",
        &env,
        "--health-cmd",
        HEALTH,
        "--health-interval",
        "500ms",
        "--health-retries",
        "3",
        "--health-start-period",
        "10s",
    ];
    args.extend_from_slice(extra);
    let img = image();
    args.extend_from_slice(&[&img, "sh", "-c", &cmd]);
    let c = d.run("api", &args);
    wait_healthy(&c, Duration::from_secs(30));
    c
}

/// Three rotations of a server that takes a second to listen and 300 ms to answer: Docker's DNS
/// answers with the new container from the moment it joins the network, and with the old one
/// until a moment after it stopped; the client moves past an address that takes no connection,
/// as proxies do, and the requests in flight on the old container when it is retired are
/// answered (it is stopped on its networks, so it drains them), so no request fails (`recreate`
/// fails them for the second in which nothing serves: BENCHMARKS.md has both, with a client that
/// tries one address only).
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn rollout_drops_no_request_of_a_client_that_uses_the_network_alias() {
    require_docker!();
    let (cf, sb, d) = setup();
    let net = d.network("net");
    let c = serving(&d, &net, 1, GRACEFUL, &[]);
    let cl = client(&d, &net, "api-alias", "cgi-bin/slow");
    wait_requests(&cl, 10);
    let at_start = tally(&cl).0;

    for i in 2..=4u8 {
        cf.set_aud(0, &aud(i));
        let old = id_of(&c);
        let r = sync(&sb, &["--container", &c, "--restart", "rollout"]);
        assert_eq!(r.code, 0, "{r:?}");
        let j = r.json();
        assert_eq!(j["containers"][0]["action"], "rollout", "{r:?}");
        assert_eq!(j["containers"][0]["result"], "done", "{r:?}");
        assert_ne!(id_of(&c), old, "a new container took the name");
        assert_eq!(env_of(&c, KEY), Some(aud(i)));
    }
    let during = tally(&cl).0 - at_start;
    wait_requests(&cl, at_start + during + 25);

    let (ok, failed) = tally(&cl);
    let log = docker_try(&["logs", "--timestamps", &cl]).1;
    let log: Vec<&str> = log.lines().filter(|l| !l.ends_with(" ok")).collect();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during three rollouts: {log:#?}",
        ok + failed,
    );
    assert!(
        during > 30,
        "the client kept asking through the rollouts: {during}"
    );
    assert_eq!(inspect(&c)["State"]["Running"], true);
    let aliases = &inspect(&c)["NetworkSettings"]["Networks"][&net]["Aliases"];
    assert!(
        aliases.as_array().unwrap().iter().any(|a| a == "api-alias"),
        "{aliases}"
    );
    let mut left = d.containers();
    left.sort();
    let mut want = vec![c.clone(), cl.clone()];
    want.sort();
    assert_eq!(
        left, want,
        "the old containers are gone, no temporary is left"
    );

    // A second pass has nothing to do.
    let r = sync(&sb, &["--container", &c, "--restart", "rollout"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["action"], "none", "{r:?}");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_rollout_whose_new_container_is_unhealthy_never_stops_the_old_one() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let net = d.network("net");
    let bad = format!("BAD_AUD={}", aud(2));
    let c = d.run(
        "api",
        &[
            "--network",
            &net,
            "--network-alias",
            "api-alias",
            "-e",
            &format!("{KEY}=old"),
            "-e",
            &bad,
            "--health-cmd",
            "[ \"$CLOUDFLARE_AUD_TAG\" != \"$BAD_AUD\" ]",
            "--health-interval",
            "500ms",
            "--health-retries",
            "2",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    wait_healthy(&c, Duration::from_secs(30));
    let old = id_of(&c);
    let started = inspect(&c)["State"]["StartedAt"].clone();
    // `auto` picks the rollout: aliased, no host port.
    let r = sync(&sb, &["--container", &c]);
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j["containers"][0]["action"], "rollout", "{r:?}");
    assert_eq!(j["containers"][0]["error"]["rolled_back"], true, "{r:?}");
    assert!(r.stderr.contains("became unhealthy"), "{r:?}");
    assert_eq!(id_of(&c), old);
    assert_eq!(
        inspect(&c)["State"]["StartedAt"],
        started,
        "the old one never stopped"
    );
    assert_eq!(env_of(&c, KEY).as_deref(), Some("old"));
    assert_eq!(d.containers(), vec![c.clone()], "the new one was removed");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_container_that_publishes_a_host_port_is_recreated_and_the_plan_says_why() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    let net = d.network("net");
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let c = server(&d, &net, 0, &["-p", &publish]);
    let r = sync(
        &sb,
        &["--container", &c, "--restart", "rollout", "--dry-run"],
    );
    assert_eq!(r.code, 3, "dry run: changes pending {r:?}");
    let t = &r.json()["containers"][0];
    assert_eq!(t["action"], "recreate", "{r:?}");
    let reason = t["reason"].as_str().unwrap();
    assert!(
        reason.contains("no rollout (it publishes host port 8080/tcp): recreated instead"),
        "{reason}"
    );
    let r = sync(&sb, &["--container", &c, "--restart", "rollout"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(env_of(&c, KEY), Some(aud(2)));
}

/// The first probes fail for ~4 s (Docker says `unhealthy` after the first one), then it
/// serves: with `--health-timeout 30s` audsync keeps waiting and keeps the new container.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_slow_boot_past_the_first_unhealthy_is_kept_within_health_timeout() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, mut sb, d) = setup();
    let boot = format!("sleep 4; touch /tmp/up; {SERVER}");
    let c = d.run(
        "slow",
        &[
            "-e",
            &format!("{KEY}=old"),
            "--health-cmd",
            "test -f /tmp/up",
            "--health-interval",
            "500ms",
            "--health-retries",
            "1",
            &image(),
            "sh",
            "-c",
            &boot,
        ],
    );
    wait_healthy(&c, Duration::from_secs(30));
    let old = id_of(&c);
    sb.var("AUDSYNC_HEALTH_TIMEOUT", "30s");
    let r = sync(&sb, &["--container", &c, "--restart", "recreate"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_ne!(id_of(&c), old);
    assert_eq!(env_of(&c, KEY), Some(aud(2)));
    assert_eq!(inspect(&c)["State"]["Health"]["Status"], "healthy");
}

fn compose_file() -> String {
    format!(
        r#"version: "2.4"
services:
  api:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
    environment:
      CLOUDFLARE_AUD_TAG: ${{CLOUDFLARE_AUD_TAG}}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 500ms
      retries: 3
"#,
        image = image()
    )
}

fn compose(sb: &Sandbox, project: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("docker-compose")
        .args(["-p", project])
        .args(args)
        .current_dir(sb.dir())
        .env_remove(KEY)
        .output()
        .expect("docker-compose");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn service_container(project: &str) -> String {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Names}}",
    ]);
    let names: Vec<&str> = out.lines().collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].to_string()
}

/// After audsync replaced a compose container (recreate, then rollout), `docker-compose up -d`
/// finds the config hash it computes and keeps the container.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn compose_up_keeps_the_container_audsync_recreated() {
    require_docker!(not_podman: "compose's config-hash; podman-compose's own hash is not stamped");
    let (cf, sb, d) = setup();
    let project = d.prefix.clone();
    std::fs::write(sb.path("docker-compose.yml"), compose_file()).unwrap();
    d.compose_project(sb.dir(), &project);
    let (code, out) = compose(&sb, &project, &["up", "-d"]);
    assert_eq!(code, 0, "{out}");
    let n = service_container(&project);
    wait_healthy(&n, Duration::from_secs(30));
    let service = format!("{project}/api");

    for (i, mode) in [(2u8, "recreate"), (3, "rollout")] {
        cf.set_aud(0, &aud(i));
        let old = id_of(&n);
        let r = sync(&sb, &["--compose-service", &service, "--restart", mode]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.json()["containers"][0]["action"], mode, "{r:?}");
        assert!(
            r.json()["warnings"].as_array().is_none_or(|w| w.is_empty()),
            "{r:?}"
        );
        let after = id_of(&n);
        assert_ne!(after, old, "{mode}: a new container");
        assert_eq!(env_of(&n, KEY), Some(aud(i)));
        let (code, out) = compose(&sb, &project, &["up", "-d"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(service_container(&project), n);
        assert_eq!(
            id_of(&n),
            after,
            "{mode}: `up -d` kept audsync's container: {out}"
        );
    }
}

/// Runs `sync --restart rollout` on `c` held by the test hook (`at`: a journal step, else just
/// before the rollout), lets `meanwhile` act as another process, and returns the exit code,
/// the JSON report and the notifications' events and texts.
fn rollout_held(
    sb: &mut Sandbox,
    c: &str,
    at: Option<&str>,
    meanwhile: impl FnOnce(),
) -> (i32, serde_json::Value, Vec<String>, Vec<String>) {
    let h = crate::notify::hooks();
    sb.var(
        "AUDSYNC_NOTIFY",
        &format!("http://127.0.0.1:{}/hook/x", h.port()),
    );
    let (fifo, held) = crate::locks::hold_fifo(sb);
    let mut env = vec![("AUDSYNC_TEST_HOLD_APPLY", fifo.to_str().unwrap())];
    if let Some(step) = at {
        env.push(("AUDSYNC_TEST_HOLD_AT", step));
    }
    let mut child = crate::locks::spawn(
        sb,
        &env,
        &[
            "sync",
            "--domain",
            HOST,
            "--container",
            c,
            "--restart",
            "rollout",
            "--settle",
            "1s",
            "--output",
            "json",
        ],
    );
    let err = crate::locks::collect(&mut child);
    crate::locks::until("the rollout held", || held.exists());
    meanwhile();
    crate::locks::release(&fifo);
    let (code, out) = crate::locks::finish(child);
    let j = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{e}: {out}\n{}", err.lock().unwrap()));
    let texts = h
        .at("/hook")
        .iter()
        .map(|g| g.json()["message"].as_str().unwrap_or_default().to_string())
        .collect();
    (code, j, h.events(), texts)
}

/// Issue 20: the old container renamed by another process while the new one starts beside it
/// is reported as renamed: exit 1, a `failed` notification, no "never stopped serving"; the
/// renamed container runs on untouched and audsync's new container is removed.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_container_renamed_by_another_process_during_a_rollout_is_reported_as_renamed() {
    require_docker!(not_podman: "not checked on Podman");
    const IDLE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";
    let (_cf, mut sb, d) = setup();
    let net = d.network("net");
    let c = d.run(
        "renamed",
        &[
            "--network",
            &net,
            "-e",
            &format!("{KEY}=old"),
            &image(),
            "sh",
            "-c",
            IDLE,
        ],
    );
    let old_id = id_of(&c);
    let moved = d.name("moved");
    let (code, j, events, texts) = rollout_held(&mut sb, &c, Some("created"), || {
        docker(&["rename", &c, &moved]);
    });
    assert_eq!(code, 1, "{j:#}");
    let e = &j["containers"][0]["error"];
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "another process renamed the container {c} ({}) to {moved}",
            &old_id[..12]
        )),
        "{j:#}"
    );
    assert!(!msg.contains("never stopped serving"), "{j:#}");
    assert_ne!(e["rolled_back"], true, "{j:#}");
    assert!(
        !e["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("healthcheck"),
        "{j:#}"
    );
    assert_eq!(events, vec!["failed"], "{j:#}");
    assert!(
        texts[0].contains("another process renamed the container"),
        "{texts:?}"
    );
    assert!(!texts[0].contains("(rolled back)"), "{texts:?}");
    // The renamed container runs on, untouched; nothing of audsync's is left.
    assert_eq!(id_of(&moved), old_id);
    assert_eq!(inspect(&moved)["State"]["Running"], true);
    assert_eq!(env_of(&moved, KEY).as_deref(), Some("old"));
    assert_eq!(d.containers(), vec![moved.clone()]);
}

/// Issue 20: a container replaced by another process after audsync read it (held just before
/// the rollout: removed, and another container started under its name) is reported as
/// replaced; the container audsync never read is not rolled out, stopped or removed.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_container_replaced_after_it_was_read_is_left_alone_and_reported() {
    require_docker!(not_podman: "not checked on Podman");
    const IDLE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";
    let (_cf, mut sb, d) = setup();
    let net = d.network("net");
    let run = |value: &str| {
        vec![
            "--network".to_string(),
            net.clone(),
            "-e".to_string(),
            format!("{KEY}={value}"),
            image(),
            "sh".to_string(),
            "-c".to_string(),
            IDLE.to_string(),
        ]
    };
    let args = run("old");
    let c = d.run(
        "replaced",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let intruder = std::cell::RefCell::new(String::new());
    let (code, j, events, texts) = rollout_held(&mut sb, &c, None, || {
        docker(&["rm", "-f", &c]);
        let mut all = vec!["run", "-d", "--name", &c];
        let args = run("intruder");
        all.extend(args.iter().map(String::as_str));
        docker(&all);
        *intruder.borrow_mut() = id_of(&c);
    });
    assert_eq!(code, 1, "{j:#}");
    let msg = j["containers"][0]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        msg.contains(&format!("another process replaced the container {c}")),
        "{j:#}"
    );
    assert!(msg.contains("nothing was changed"), "{j:#}");
    assert_eq!(events, vec!["failed"], "{j:#}");
    assert!(
        texts[0].contains("another process replaced the container"),
        "{texts:?}"
    );
    // The intruder is untouched.
    assert_eq!(id_of(&c), *intruder.borrow());
    assert_eq!(env_of(&c, KEY).as_deref(), Some("intruder"));
    assert_eq!(inspect(&c)["State"]["Running"], true);
    assert_eq!(d.containers(), vec![c.clone()]);
}
