//! `sync` recreating containers on the real Docker engine: everything preserved but the one
//! variable, the health gate and roll back, drift, and compose services (#[ignore]d:
//! scripts/test.sh runs them).

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{
    Docker, Events, IGNORES_TERM, docker, docker_try, env_of, exec, free_port, id_of, image,
    inspect, is_podman, started_at, stop_duration, wait_healthy,
};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
/// The lambda-server stand-in: serves HTTP on 8080, logs its AUD, leaves on SIGTERM or on its
/// stop signal SIGUSR1 (noting that in /named/stops when that volume exists).
const SERVER: &str = "trap 'echo stopped-by-USR1 >> /named/stops; exit 0' USR1; \
                      trap 'exit 0' TERM; \
                      echo \"lambda-server starting with audience $CLOUDFLARE_AUD_TAG\"; \
                      httpd -f -p 8080 -h /www & wait";

fn setup() -> (FakeCloudflare, Sandbox, Docker) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    (cf, sb, Docker::new())
}

fn sync(sb: &Sandbox, targets: &[&str], extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--output", "json"]);
    for t in targets {
        c.args(["--container", t]);
    }
    c.args(extra);
    run(&mut c)
}

/// `GET /` on 127.0.0.1:port from the host.
fn http_get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Fields of `docker inspect` that belong to the container instance, not to its
/// configuration, and so must differ (or may) after a recreate.
const RUNTIME_FIELDS: &[(&str, &str)] = &[
    ("Id", "a new container has a new id"),
    ("Created", "creation time of the new container"),
    (
        "State",
        "process state: pid, start time, health log of the new process",
    ),
    (
        "ResolvConfPath",
        "a per-container file under /var/lib/docker/containers/<id>",
    ),
    (
        "HostnamePath",
        "a per-container file under /var/lib/docker/containers/<id>",
    ),
    (
        "HostsPath",
        "a per-container file under /var/lib/docker/containers/<id>",
    ),
    (
        "LogPath",
        "a per-container file under /var/lib/docker/containers/<id>",
    ),
    ("RestartCount", "a counter of the old container's restarts"),
    ("GraphDriver", "the new container's own writable layer"),
    ("ExecIDs", "exec sessions run in the old container"),
    ("SizeRw", "size of the writable layer (only with --size)"),
    (
        "SizeRootFs",
        "size of the root file system (only with --size)",
    ),
    // Compared below, field by field, without their runtime parts.
    (
        "Config",
        "compared below: Env (only the key changes) and Hostname (the short id)",
    ),
    (
        "HostConfig",
        "compared below: Binds gains the anonymous volume, mounted by name",
    ),
    (
        "NetworkSettings",
        "compared below: addresses, endpoint and sandbox ids are runtime",
    ),
    ("Mounts", "compared below, as (type, name, destination, rw)"),
];

/// Per network: what the user configured. Addresses, MAC, endpoint ids are runtime.
fn user_network_settings(v: &Value) -> Value {
    let short = v["Id"].as_str().unwrap_or_default()[..12].to_string();
    let mut out = serde_json::Map::new();
    for (name, ep) in v["NetworkSettings"]["Networks"].as_object().unwrap() {
        let aliases: Vec<Value> = ep["Aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a.as_str() != Some(short.as_str()))
            .cloned()
            .collect();
        // `docker network connect` records an empty object where `docker run` records null;
        // both mean "none set".
        let set = |v: &Value| match v {
            Value::Object(o) if o.is_empty() => Value::Null,
            other => other.clone(),
        };
        out.insert(
            name.clone(),
            json!({
                "NetworkID": ep["NetworkID"],
                "Aliases": aliases,
                "IPAMConfig": set(&ep["IPAMConfig"]),
                "Links": set(&ep["Links"]),
                "DriverOpts": set(&ep["DriverOpts"]),
            }),
        );
    }
    json!({ "Networks": out, "Ports": v["NetworkSettings"]["Ports"] })
}

fn mounts(v: &Value) -> Vec<(String, String, String, bool)> {
    let mut m: Vec<_> = v["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Type"].as_str().unwrap_or_default().to_string(),
                m["Name"].as_str().unwrap_or_default().to_string(),
                m["Destination"].as_str().unwrap_or_default().to_string(),
                m["RW"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    m.sort_by(|a, b| a.2.cmp(&b.2));
    m
}

/// Assert that `after` is `before` with only `KEY` changed to `value`, field by field.
fn assert_same_but_the_key(before: &Value, after: &Value, value: &str) {
    let excluded: Vec<&str> = RUNTIME_FIELDS.iter().map(|(f, _)| *f).collect();
    let (b, a) = (before.as_object().unwrap(), after.as_object().unwrap());
    let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    for k in keys {
        if !excluded.contains(&k.as_str()) {
            assert_eq!(b.get(k), a.get(k), "inspect field {k} changed");
        }
    }
    // Config: every field the same, but Env (one entry) and Hostname (each its own short id).
    let (bc, ac) = (&before["Config"], &after["Config"]);
    for (k, bv) in bc.as_object().unwrap() {
        match k.as_str() {
            "Env" => {
                let expected: Vec<Value> = bv
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| match e.as_str() {
                        Some(s) if s.starts_with(&format!("{KEY}=")) => {
                            json!(format!("{KEY}={value}"))
                        }
                        _ => e.clone(),
                    })
                    .collect();
                if is_podman() {
                    // Podman lists the environment in no stable order, with the HOSTNAME it
                    // set from the (generated) hostname: the new container's own.
                    let host = |v: &Value| format!("HOSTNAME={}", &v["Id"].as_str().unwrap()[..12]);
                    let sorted = |v: &Value, id_of: &Value| {
                        let mut e: Vec<String> = v
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| e.as_str().unwrap().to_string())
                            .map(|e| {
                                if e == host(id_of) {
                                    "HOSTNAME=<own>".into()
                                } else {
                                    e
                                }
                            })
                            .collect();
                        e.sort();
                        e
                    };
                    assert_eq!(
                        sorted(&ac["Env"], after),
                        sorted(&json!(expected), before),
                        "Config.Env: only {KEY} changes"
                    );
                    continue;
                }
                assert_eq!(ac["Env"], json!(expected), "Config.Env: only {KEY} changes");
            }
            "Hostname" => {
                assert_eq!(bv.as_str(), before["Id"].as_str().map(|s| &s[..12]));
                assert_eq!(
                    ac["Hostname"].as_str(),
                    after["Id"].as_str().map(|s| &s[..12]),
                    "the generated hostname is the new container's, not the old id"
                );
            }
            _ => assert_eq!(Some(bv), ac.get(k), "Config.{k} changed"),
        }
    }
    // HostConfig: the same, except the anonymous volume now mounted by name.
    let anon: Vec<String> = before["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            let dest = m["Destination"].as_str().unwrap_or_default();
            m["Type"] == "volume"
                && !before["HostConfig"]["Binds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    // `src:dst[:opts]` (Podman lists every volume here, with options)
                    .any(|b| b.as_str().and_then(|b| b.split(':').nth(1)) == Some(dest))
        })
        .map(|m| {
            format!(
                "{}:{}",
                m["Name"].as_str().unwrap(),
                m["Destination"].as_str().unwrap()
            )
        })
        .collect();
    let mut expected_hc = before["HostConfig"].clone();
    let binds = expected_hc["Binds"].as_array().cloned().unwrap_or_default();
    expected_hc["Binds"] = json!(
        binds
            .into_iter()
            .chain(anon.iter().map(|a| json!(a)))
            .collect::<Vec<_>>()
    );
    assert_eq!(after["HostConfig"], expected_hc, "HostConfig");
    assert_eq!(
        user_network_settings(after),
        user_network_settings(before),
        "networks: aliases, static addresses, links, driver options, published ports"
    );
    assert_eq!(
        mounts(after),
        mounts(before),
        "the same volumes at the same places"
    );
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn recreate_preserves_everything_but_the_key() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let net = d.network("net");
    let net2 = d.network("net2");
    let vol = d.volume("named");
    let port = free_port();
    std::fs::write(
        sb.path("app.env"),
        format!("{KEY}=old\nAPP_MODE=production\n"),
    )
    .unwrap();
    let app_env = sb.path("app.env");
    let publish = format!("127.0.0.1:{port}:8080");
    let named = format!("{vol}:/named");
    let c = d.run(
        "lambda",
        &[
            "--network",
            &net,
            "--network-alias",
            "lambda-alias",
            "-p",
            &publish,
            "-v",
            &named,
            "-v",
            "/anon",
            "--label",
            "com.example.team=api",
            "--label",
            "com.docker.compose.service=lambda-server",
            "--restart",
            "unless-stopped",
            "--env-file",
            app_env.to_str().unwrap(),
            "--health-cmd",
            "wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1",
            "--health-interval",
            "1s",
            "--health-retries",
            "3",
            "--health-start-period",
            "1s",
            "--stop-signal",
            "SIGUSR1",
            "--stop-timeout",
            "7",
            "--cap-add",
            "SYS_TIME",
            "--ulimit",
            "nofile=1024:2048",
            // Podman replaces all its default ulimits with the ones given, and its default
            // nproc (1048576) is above what a CI machine may grant: give one (never enforced
            // on root, which the container runs as).
            "--ulimit",
            "nproc=4096:8192",
            "--workdir",
            "/www",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    docker(&["network", "connect", "--alias", "second-alias", &net2, &c]);
    wait_healthy(&c, Duration::from_secs(30));
    let (code, _) = exec(&c, "echo named-data > /named/f && echo anon-data > /anon/f");
    assert_eq!(code, 0);
    let before = inspect(&c);

    let r = sync(&sb, &[&c], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["containers"][0]["action"], "recreate", "{r:?}");
    assert_eq!(j["containers"][0]["result"], "done");
    assert!(
        j["containers"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("environment carries CLOUDFLARE_AUD_TAG"),
        "{r:?}"
    );

    let after = inspect(&c);
    assert_ne!(after["Id"], before["Id"], "a new container");
    assert_eq!(env_of(&c, KEY), Some(aud(2)));
    assert_eq!(env_of(&c, "APP_MODE").as_deref(), Some("production"));
    assert_same_but_the_key(&before, &after, &aud(2));
    assert_eq!(
        after["State"]["Health"]["Status"], "healthy",
        "waited for health"
    );
    assert_eq!(after["State"]["Running"], true);
    assert_eq!(d.containers(), vec![c.clone()], "the old container is gone");

    // Data in both volumes is still there; the old one was stopped with its own stop signal.
    assert_eq!(
        exec(&c, "cat /named/f /anon/f"),
        (0, "named-data\nanon-data\n".into())
    );
    assert_eq!(
        exec(&c, "cat /named/stops"),
        (0, "stopped-by-USR1\n".into())
    );
    // The aliases resolve from another container, on both networks; the port is published.
    for (network, alias) in [(&net, "lambda-alias"), (&net2, "second-alias")] {
        let (code, out) = docker_try(&[
            "run",
            "--rm",
            "--network",
            network,
            &image(),
            "wget",
            "-q",
            "-O-",
            &format!("http://{alias}:8080/"),
        ]);
        assert_eq!((code, out.trim()), (0, "ok"), "{alias} on {network}");
    }
    assert!(http_get(port).ends_with("ok\n"), "published port answers");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_new_container_that_turns_unhealthy_is_rolled_back() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let bad = format!("BAD_AUD={}", aud(2));
    let c = d.run(
        "lambda",
        &[
            "-e",
            &format!("{KEY}=old"),
            "-e",
            &bad,
            "--health-cmd",
            "if [ \"$CLOUDFLARE_AUD_TAG\" = \"$BAD_AUD\" ]; then echo audience rejected; exit 1; fi",
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
            &image(),
            "sh",
            "-c",
            &format!(
                "{SERVER_BAD_LOG}; {SERVER}"
            ),
        ],
    );
    wait_healthy(&c, Duration::from_secs(30));
    let id = id_of(&c);

    let r = sync(&sb, &[&c], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("became unhealthy"), "{r:?}");
    assert!(r.stderr.contains("rolled back"), "{r:?}");
    assert!(
        r.stdout.contains("FATAL: this audience is not ours"),
        "the new container's log lines are quoted: {r:?}"
    );
    assert!(r.stderr.contains("WAS written"), "{r:?}");
    assert_eq!(
        r.json()["containers"][0]["error"]["rolled_back"],
        true,
        "{r:?}"
    );
    assert_eq!(sb.read_env(), format!("{KEY}={}\n", aud(2)));

    // The old container is back: same id, its name, running, old value; nothing else is left.
    assert_eq!(id_of(&c), id);
    assert_eq!(inspect(&c)["State"]["Running"], true);
    assert_eq!(env_of(&c, KEY).as_deref(), Some("old"));
    assert_eq!(d.containers(), vec![c.clone()]);
}

/// Logs the complaint a real server would make about the new value.
const SERVER_BAD_LOG: &str =
    "[ \"$CLOUDFLARE_AUD_TAG\" = \"$BAD_AUD\" ] && echo 'FATAL: this audience is not ours'";

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_new_container_that_exits_is_rolled_back() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let bad = format!("BAD_AUD={}", aud(2));
    let script = format!(
        "if [ \"$CLOUDFLARE_AUD_TAG\" = \"$BAD_AUD\" ]; then echo 'cannot start: bad audience'; exit 3; fi; {SERVER}"
    );
    let c = d.run(
        "lambda",
        &[
            "-e",
            &format!("{KEY}=old"),
            "-e",
            &bad,
            &image(),
            "sh",
            "-c",
            &script,
        ],
    );
    let id = id_of(&c);
    let r = sync(&sb, &[&c], &["--settle", "3s"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("exited (code 3)"), "{r:?}");
    // The new container's log lines: in the terminal report (stdout), apart from the error.
    assert!(r.stdout.contains("cannot start: bad audience"), "{r:?}");
    assert_eq!(id_of(&c), id);
    assert_eq!(inspect(&c)["State"]["Running"], true);
    assert_eq!(env_of(&c, KEY).as_deref(), Some("old"));
    assert_eq!(d.containers(), vec![c.clone()]);
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn drift_is_converged_and_a_second_sync_does_nothing() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    let args = |d: &Docker| {
        d.run(
            "lambda",
            &["-e", &format!("{KEY}=old"), &image(), "sh", "-c", SERVER],
        )
    };
    let c = args(&d);
    let r = sync(&sb, &[&c], &["--settle", "1s"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(env_of(&c, KEY), Some(aud(2)));

    // Second run: nothing to do, nothing touched.
    let (id, started) = (id_of(&c), started_at(&c));
    let r = sync(&sb, &[&c], &["--settle", "1s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["status"], "in_sync", "{r:?}");
    assert_eq!(j["containers"][0]["action"], "none");
    assert_eq!((id_of(&c), started_at(&c)), (id, started));

    // Someone recreates it by hand with the old value: the sink is in sync, the container is not.
    docker(&["rm", "-f", &c]);
    args(&d);
    let r = sync(&sb, &[&c], &["--settle", "1s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["changed"], false, "no write was needed");
    assert_eq!(j["containers"][0]["action"], "recreate");
    assert!(
        j["containers"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("drifted"),
        "{r:?}"
    );
    assert_eq!(env_of(&c, KEY), Some(aud(2)));
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn dry_run_says_per_container_what_and_why() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    let baked = d.run(
        "baked",
        &["-e", &format!("{KEY}=old"), &image(), "sh", "-c", SERVER],
    );
    let reads = d.run("reads", &[&image(), "sh", "-c", SERVER]);
    let ids = (id_of(&baked), started_at(&reads));
    let r = sync(&sb, &[&baked, &reads], &["--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    let j = r.json();
    let (a, b) = (&j["containers"][0], &j["containers"][1]);
    assert_eq!(
        (a["action"].as_str(), a["result"].as_str()),
        (Some("recreate"), Some("planned"))
    );
    assert!(
        a["reason"]
            .as_str()
            .unwrap()
            .contains("its environment carries CLOUDFLARE_AUD_TAG"),
        "{a}"
    );
    assert_eq!(b["action"], "restart");
    assert!(
        b["reason"]
            .as_str()
            .unwrap()
            .contains("no CLOUDFLARE_AUD_TAG in its environment"),
        "{b}"
    );
    assert_eq!(
        (id_of(&baked), started_at(&reads)),
        ids,
        "dry run touches nothing"
    );
    assert_eq!(sb.read_env(), format!("{KEY}=old\n"));

    // With the sink in sync, a container still holding the old value is drift.
    sb.write_env(&format!("{KEY}={}\n", aud(2)));
    let r = sync(&sb, &[&baked, &reads], &["--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    let j = r.json();
    assert_eq!(j["containers"][0]["action"], "recreate");
    assert!(
        j["containers"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("drifted"),
        "{j}"
    );
    assert_eq!(j["containers"][1]["action"], "none");

    // The text output carries the same reasons.
    let mut cmd = sb.cmd();
    cmd.args(["sync", "--domain", HOST, "--dry-run", "--container", &baked]);
    let r = run(&mut cmd);
    assert!(
        r.stdout
            .contains(&format!("container {baked}: recreate (drifted")),
        "{r:?}"
    );
}

pub(crate) fn compose_file() -> String {
    format!(
        r#"version: "2.4"
services:
  lambda-server:
    image: {image}
    command: ["sh", "-c", "{server}"]
    env_file: .env
    environment:
      CLOUDFLARE_AUD_TAG: ${{CLOUDFLARE_AUD_TAG}}
      BAD_AUD: "${{BAD_AUD:-none}}"
    healthcheck:
      test: ["CMD-SHELL", "[ \"$$CLOUDFLARE_AUD_TAG\" != \"$$BAD_AUD\" ] && wget -q -O /dev/null http://127.0.0.1:8080/"]
      interval: 1s
      retries: 2
    volumes:
      - /data
"#,
        image = image(),
        server = SERVER.replace('"', "\\\"").replace('$', "$$"),
    )
}

pub(crate) fn compose(sb: &Sandbox, project: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("docker-compose")
        .args(["-p", project])
        .args(args)
        .current_dir(sb.dir())
        .output()
        .expect("docker-compose");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

pub(crate) fn service_containers(project: &str) -> Vec<String> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        "label=com.docker.compose.service=lambda-server",
        "--format",
        "{{.Names}}",
    ]);
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_compose_service_is_recreated_one_container_at_a_time() {
    require_docker!(not_podman: "runs docker-compose; podman-compose is not checked");
    let (_cf, sb, d) = setup();
    let project = d.prefix.clone();
    std::fs::write(sb.path("docker-compose.yml"), compose_file()).unwrap();
    d.compose_project(sb.dir(), &project);
    let (code, out) = compose(&sb, &project, &["up", "-d", "--scale", "lambda-server=2"]);
    assert_eq!(code, 0, "{out}");
    let names = service_containers(&project);
    assert_eq!(names.len(), 2, "{names:?}");
    for n in &names {
        wait_healthy(n, Duration::from_secs(30));
        assert_eq!(exec(n, "echo kept > /data/f").0, 0);
    }
    let ids: Vec<String> = names.iter().map(|n| id_of(n)).collect();

    let service = format!("{project}/lambda-server");
    let r = sync(&sb, &[], &["--compose-service", &service]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["containers"].as_array().unwrap().len(), 2, "{r:?}");
    assert_eq!(
        service_containers(&project),
        names,
        "same names, nothing left over"
    );
    for (n, id) in names.iter().zip(&ids) {
        assert_ne!(&id_of(n), id, "{n} was recreated");
        assert_eq!(env_of(n, KEY), Some(aud(2)));
        assert_eq!(
            exec(n, "cat /data/f"),
            (0, "kept\n".into()),
            "anonymous volume kept"
        );
        let labels = &inspect(n)["Config"]["Labels"];
        assert_eq!(labels["com.docker.compose.service"], "lambda-server");
    }

    // Compose still manages the project; its next `up` keeps the new value.
    let (code, out) = compose(&sb, &project, &["up", "-d", "--scale", "lambda-server=2"]);
    assert_eq!(code, 0, "{out}");
    let names = service_containers(&project);
    assert_eq!(names.len(), 2, "{names:?}");
    for n in &names {
        assert_eq!(env_of(n, KEY), Some(aud(2)));
        assert_eq!(inspect(n)["State"]["Running"], true);
    }
    d.note_volumes();
    let (code, out) = compose(&sb, &project, &["down", "-v"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_failure_in_a_compose_service_stops_the_rest_of_it() {
    require_docker!(not_podman: "runs docker-compose; podman-compose is not checked");
    let (_cf, sb, d) = setup();
    let project = d.prefix.clone();
    std::fs::write(sb.path("docker-compose.yml"), compose_file()).unwrap();
    // BAD_AUD is the value about to arrive: every new container turns unhealthy.
    let mut env = std::fs::read_to_string(sb.env_path()).unwrap();
    env.push_str(&format!("BAD_AUD={}\n", aud(2)));
    sb.write_env(&env);
    d.compose_project(sb.dir(), &project);
    let (code, out) = compose(&sb, &project, &["up", "-d", "--scale", "lambda-server=2"]);
    assert_eq!(code, 0, "{out}");
    let names = service_containers(&project);
    for n in &names {
        wait_healthy(n, Duration::from_secs(30));
    }
    let ids: Vec<String> = names.iter().map(|n| id_of(n)).collect();

    let service = format!("{project}/lambda-server");
    let r = sync(&sb, &[], &["--compose-service", &service]);
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    let results: Vec<&str> = j["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, vec!["failed", "skipped"], "{r:?}");
    assert!(
        j["containers"][1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not attempted"),
        "{r:?}"
    );
    assert_eq!(service_containers(&project), names);
    for (n, id) in names.iter().zip(&ids) {
        assert_eq!(&id_of(n), id, "{n} is the original container");
        assert_eq!(env_of(n, KEY).as_deref(), Some("old"));
        assert_eq!(inspect(n)["State"]["Running"], true);
    }
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn an_unknown_compose_service_is_a_clear_error() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    let service = format!("{}/nothing", d.prefix);
    let mut sb = sb;
    sb.var("AUDSYNC_COMPOSE_SERVICE", &service);
    let r = sync(&sb, &[], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("compose service {service} has no containers")),
        "{r:?}"
    );
    sb.unset("AUDSYNC_COMPOSE_SERVICE");
    let r = sync(&sb, &[], &["--compose-service", "no-slash"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("expected PROJECT/SERVICE"), "{r:?}");
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn no_secret_from_a_container_environment_is_logged_at_vvv() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    // A container fed from the same .env (compose `env_file: .env`) holds the API token.
    let token = format!("CLOUDFLARE_API_TOKEN={}", crate::support::cloudflare::TOKEN);
    let c = d.run(
        "lambda",
        &[
            "-e",
            &format!("{KEY}=old"),
            "-e",
            &token,
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    let r = sync(&sb, &[&c], &["-vvv", "--settle", "1s"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("recreating"),
        "-vvv logs the steps: {r:?}"
    );
    for out in [&r.stdout, &r.stderr] {
        assert!(!out.contains(crate::support::cloudflare::TOKEN), "{r:?}");
    }
    // RUST_LOG=trace asks for everything; bollard's dumps of container environments stay out.
    let mut sb = sb;
    sb.var("RUST_LOG", "trace");
    let r = sync(&sb, &[&c], &["--restart", "recreate", "--settle", "1s"]);
    assert!(r.stderr.contains("TRACE"), "trace logging is on: {r:?}");
    for out in [&r.stdout, &r.stderr] {
        assert!(
            !out.contains(crate::support::cloudflare::TOKEN),
            "RUST_LOG=trace leaked: {r:?}"
        );
    }
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_stopped_container_is_recreated_and_left_stopped() {
    require_docker!();
    let (_cf, sb, d) = setup();
    let c = d.name("stopped");
    docker(&[
        "create",
        "--name",
        &c,
        "-e",
        &format!("{KEY}=old"),
        &image(),
        "sh",
        "-c",
        SERVER,
    ]);
    let id = id_of(&c);
    let r = sync(&sb, &[&c], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_ne!(id_of(&c), id);
    assert_eq!(env_of(&c, KEY), Some(aud(2)));
    assert_eq!(
        inspect(&c)["State"]["Running"],
        false,
        "it was not running before"
    );
    assert_eq!(d.containers(), vec![c.clone()]);
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_container_run_with_rm_is_not_recreated() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    let c = d.run(
        "ephemeral",
        &[
            "--rm",
            "-e",
            &format!("{KEY}=old"),
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    let id = id_of(&c);
    let r = sync(&sb, &[&c], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--rm (AutoRemove)"), "{r:?}");
    assert_eq!(
        r.json()["containers"][0]["error"].get("rolled_back"),
        None,
        "refused, not rolled back: {r:?}"
    );
    assert_eq!((id_of(&c), env_of(&c, KEY)), (id, Some("old".into())));
    assert_eq!(inspect(&c)["State"]["Running"], true);
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn the_health_wait_is_bounded_by_health_timeout() {
    require_docker!();
    let (_cf, mut sb, d) = setup();
    // The first probe only runs after a minute: the new container stays `starting`.
    let c = d.run(
        "slow",
        &[
            "-e",
            &format!("{KEY}=old"),
            "--health-cmd",
            "true",
            "--health-interval",
            "60s",
            &image(),
            "sh",
            "-c",
            SERVER,
        ],
    );
    let id = id_of(&c);
    sb.var("AUDSYNC_HEALTH_TIMEOUT", "2s");
    let started = std::time::Instant::now();
    let r = sync(&sb, &[&c], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("was not healthy within 2s"), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "bounded by 2s, not by the check"
    );
    assert_eq!((id_of(&c), env_of(&c, KEY)), (id, Some("old".into())));
    assert_eq!(inspect(&c)["State"]["Running"], true);
}

/// `--restart recreate` recreates a container even when its environment does not carry the key
/// (where `auto` only restarts it): same name, new id, running, the rest as before.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn recreate_mode_recreates_a_container_without_the_key_where_auto_restarts() {
    require_docker!(not_podman: "not checked on Podman");
    let (_cf, sb, d) = setup();
    // Reads its value at start-up: no CLOUDFLARE_AUD_TAG in its environment.
    let c = d.run(
        "reader",
        &[
            "-e",
            "OTHER=1",
            "--label",
            "audsync.test=reader",
            &image(),
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo up; sleep 3600 & wait",
        ],
    );
    assert_eq!(env_of(&c, KEY), None);
    let id = id_of(&c);

    // auto: a restart, the same container.
    let before = started_at(&c);
    let r = sync(&sb, &[&c], &["--restart", "auto"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["action"], "restart", "{r:?}");
    assert_eq!(id_of(&c), id, "auto restarts, it does not recreate");
    assert_ne!(started_at(&c), before, "restarted");

    // The same setup again (the sink back at the old value), with --restart recreate.
    sb.write_env(&format!("{KEY}=old\n"));
    let r = sync(&sb, &[&c], &["--restart", "recreate", "--settle", "1s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["containers"][0]["action"], "recreate", "{r:?}");
    assert_eq!(j["containers"][0]["result"], "done", "{r:?}");
    let after = inspect(&c);
    assert_ne!(
        after["Id"],
        id.as_str(),
        "a new container under the same name"
    );
    assert_eq!(after["State"]["Running"], true);
    assert_eq!(env_of(&c, "OTHER").as_deref(), Some("1"));
    assert_eq!(after["Config"]["Labels"]["audsync.test"], "reader");
    assert_eq!(
        env_of(&c, KEY),
        None,
        "only an existing entry is replaced: the key is not added"
    );
    assert_eq!(d.containers(), vec![c.clone()], "the old one was removed");

    // In sync now: a further run leaves it alone.
    let id = id_of(&c);
    let r = sync(&sb, &[&c], &["--restart", "recreate", "--settle", "1s"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["action"], "none", "{r:?}");
    assert_eq!(id_of(&c), id);
}

/// Recreate stops the old container with its own StopTimeout (1 s here, the engine's default
/// is 10 s): a main process that ignores SIGTERM is killed after about a second.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn recreate_stops_the_old_container_with_its_own_stop_timeout() {
    require_docker!(not_podman: "stop times from the event stream; not checked on Podman");
    let (_cf, sb, d) = setup();
    let c = d.run(
        "stubborn",
        &[
            "--stop-timeout",
            "1",
            "-e",
            &format!("{KEY}=old"),
            &image(),
            "sh",
            "-c",
            IGNORES_TERM,
        ],
    );
    let id = id_of(&c);
    let events = Events::watch(&id);
    let r = sync(&sb, &[&c], &["--restart", "recreate", "--settle", "1s"]);
    let events = events.stop();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["containers"][0]["action"], "recreate");
    assert_ne!(id_of(&c), id);
    assert_eq!(env_of(&c, KEY), Some(aud(2)));
    assert_eq!(
        inspect(&c)["Config"]["StopTimeout"],
        1,
        "the new container keeps the stop timeout"
    );
    let (stop, killed) = stop_duration(&events);
    assert!(
        killed,
        "it ignored SIGTERM and had to be killed: {events:#?}"
    );
    // A behaviour check with a generous bound: with the engine default the stop takes 10 s.
    assert!(
        stop < Duration::from_secs(5),
        "SIGTERM to exit took {stop:?}: the 1 s StopTimeout was not used"
    );
}

/// Issue 20: a container replaced by another process while audsync's recreate is under way
/// (held right after audsync created its new container; the other process renames the old one
/// away and starts its own under the name, as compose does) is reported as that: exit 1, a
/// `failed` notification naming the cause, no rollback claimed and no health advice; the
/// intruder and the old container are left exactly as the other process left them, and the
/// container audsync created is removed.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_container_replaced_by_another_process_during_a_recreate_is_reported_as_replaced() {
    require_docker!(not_podman: "not checked on Podman");
    const IDLE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";
    let (_cf, mut sb, d) = setup();
    let h = crate::notify::hooks();
    sb.var(
        "AUDSYNC_NOTIFY",
        &format!("http://127.0.0.1:{}/hook/x", h.port()),
    );
    let c = d.run(
        "replaced",
        &["-e", &format!("{KEY}=old"), &image(), "sh", "-c", IDLE],
    );
    let old_id = id_of(&c);
    let (fifo, held) = crate::locks::hold_fifo(&sb);
    let mut child = crate::locks::spawn(
        &sb,
        &[
            ("AUDSYNC_TEST_HOLD_APPLY", fifo.to_str().unwrap()),
            ("AUDSYNC_TEST_HOLD_AT", "created"),
        ],
        &[
            "sync",
            "--domain",
            HOST,
            "--container",
            &c,
            "--restart",
            "recreate",
            "--settle",
            "1s",
            "--output",
            "json",
        ],
    );
    let err = crate::locks::collect(&mut child);
    crate::locks::until("the recreate held after its create", || held.exists());

    // Another process replaces it: the old one renamed away, its own under the name.
    let moved = d.name("moved");
    docker(&["rename", &c, &moved]);
    docker(&[
        "run",
        "-d",
        "--name",
        &c,
        "-e",
        &format!("{KEY}=intruder"),
        &image(),
        "sh",
        "-c",
        IDLE,
    ]);
    let intruder = id_of(&c);
    crate::locks::release(&fifo);
    let (code, out) = crate::locks::finish(child);
    let log = err.lock().unwrap().clone();
    assert_eq!(code, 1, "{out}\n{log}");
    let j: Value = serde_json::from_str(out.trim()).unwrap();
    let e = &j["containers"][0]["error"];
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("another process replaced the container {c}")),
        "{j:#}"
    );
    assert!(msg.contains("rolled nothing back"), "{j:#}");
    assert!(!msg.contains("rolled back:"), "{j:#}");
    assert!(!msg.contains("ROLLBACK INCOMPLETE"), "{j:#}");
    assert_ne!(e["rolled_back"], true, "{j:#}");
    let hint = e["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("another process"), "{j:#}");
    assert!(!hint.contains("healthcheck"), "no health advice: {j:#}");

    // Notified as a failure with that cause, never as a rollback.
    assert_eq!(h.events(), vec!["failed"], "{j:#}");
    let n = h.at("/hook")[0].json();
    let text = n["message"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("another process replaced the container {c}")),
        "{text}"
    );
    assert!(!text.contains("(rolled back)"), "{text}");
    assert!(!text.contains("complains about"), "{text}");

    // Theirs untouched: the intruder holds the name, running with its own value; the old
    // container runs on under the name it was given; audsync's new container is gone.
    assert_eq!(id_of(&c), intruder);
    assert_eq!(env_of(&c, KEY).as_deref(), Some("intruder"));
    assert_eq!(inspect(&c)["State"]["Running"], true);
    assert_eq!(id_of(&moved), old_id);
    assert_eq!(inspect(&moved)["State"]["Running"], true);
    assert_eq!(env_of(&moved, KEY).as_deref(), Some("old"));
    let mut left = d.containers();
    left.sort();
    let mut want = vec![c.clone(), moved.clone()];
    want.sort();
    assert_eq!(left, want, "no container of audsync's is left");
}
