//! The README's quickstart works as written: its commands are read from README.md itself (the
//! `sh` block after `<!-- quickstart -->`) and run by bash against the fakes, on a compose
//! project whose directory and `.env` belong to an ordinary user (uid 1000), as a deploy user's
//! would, from a directory of audsync's own (#[ignore]d: scripts/test.sh runs it).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::require_docker;
use crate::support::access::{FakeAccess, TestKey};
use crate::support::cloudflare::{FakeCloudflare, TOKEN, app, aud};
use crate::support::docker::{Docker, env_of, id_of, image, wait_healthy};
use crate::support::{Sandbox, run};

const HOST: &str = "api.example.com";
const DEPLOY_UID: u32 = 1000;

/// The commands of the README's quickstart, exactly as a reader copies them.
fn quickstart_commands() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let after = readme
        .split_once("<!-- quickstart -->")
        .expect("README.md has a <!-- quickstart --> marker")
        .1;
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .expect("the marker is followed by a ```sh block");
    let (block, _) = body.split_once("\n```").expect("the block is closed");
    assert!(
        block.contains("compose_service"),
        "the quickstart targets a compose service: {block}"
    );
    block.to_string()
}

fn compose_file() -> String {
    format!(
        r#"version: "2.4"
services:
  lambda-server:
    image: {image}
    command: ["sh", "-c", "trap 'exit 0' TERM; echo \"audience $$CLOUDFLARE_AUD_TAG\"; httpd -f -p 8080 -h /www & wait"]
    env_file: .env
    environment:
      CLOUDFLARE_AUD_TAG: ${{CLOUDFLARE_AUD_TAG}}
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/"]
      interval: 1s
      retries: 2
"#,
        image = image()
    )
}

fn chown_deploy_user(path: &Path) {
    std::os::unix::fs::chown(path, Some(DEPLOY_UID), Some(DEPLOY_UID)).expect("chown");
}

fn compose(dir: &Path, project: &str, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("docker-compose")
        .args(["-p", project])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("docker-compose");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn the_readme_quickstart_works_as_written_on_a_deploy_users_compose_project() {
    require_docker!(not_podman: "runs docker-compose; podman-compose is not checked");
    let commands = quickstart_commands();
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let key = TestKey::generate("team-key-1");
    let edge = FakeAccess::start(HOST, &aud(2), &[&key]);
    let d = Docker::new();
    let sb = Sandbox::new();

    // The deploy user's compose project: its directory is its project name, as compose has it.
    let project = d.prefix.clone();
    let app_dir = sb.path(&project);
    std::fs::create_dir(&app_dir).unwrap();
    std::fs::write(app_dir.join("docker-compose.yml"), compose_file()).unwrap();
    let env_file = app_dir.join(".env");
    std::fs::write(
        &env_file,
        "# the app's settings\nCLOUDFLARE_AUD_TAG=old\nAPP_MODE=prod\n",
    )
    .unwrap();
    for p in [&app_dir, &app_dir.join("docker-compose.yml"), &env_file] {
        chown_deploy_user(p);
    }
    d.compose_project(&app_dir, &project);
    let (code, out) = compose(&app_dir, &project, &["up", "-d"]);
    assert_eq!(code, 0, "{out}");
    let container = format!("{project}_lambda-server_1");
    wait_healthy(&container, Duration::from_secs(30));
    let before = id_of(&container);

    // audsync's own directory (root's), where the reader runs the commands.
    let own_dir = sb.path("audsync");
    std::fs::create_dir(&own_dir).unwrap();
    // The fakes stand in for the Internet: the API URL and the team domain are settings the
    // reader never sets; `verify` reaches the protected host where the fake edge listens.
    let bin_dir = sb.path("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let shim = bin_dir.join("audsync");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nif [ \"$1\" = verify ]; then export AUDSYNC_URL=\"$QUICKSTART_HOST_URL\"; fi\nexec {} \"$@\"\n",
            assert_cmd::cargo::cargo_bin("audsync").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let mut c = assert_cmd::Command::new("bash");
    c.env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("CLOUDFLARE_API_TOKEN", TOKEN)
        .env("DOMAIN", HOST)
        .env("APP_DIR", &app_dir)
        .env("PROJECT", &project)
        .env("CLOUDFLARE_API_URL", cf.url())
        .env("CLOUDFLARE_AUTH_DOMAIN", edge.team_url())
        .env("QUICKSTART_HOST_URL", edge.host_url())
        .args(["-e", "-x", "-c", &commands])
        .current_dir(&own_dir)
        .timeout(Duration::from_secs(240));
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        c.env("DOCKER_HOST", h);
    }
    let r = run(&mut c);
    assert_eq!(r.code, 0, "the quickstart failed: {r:?}");

    // The .env holds the AUD, every other line as it was, and still belongs to the deploy user.
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        format!(
            "# the app's settings\nCLOUDFLARE_AUD_TAG={}\nAPP_MODE=prod\n",
            aud(2)
        )
    );
    let meta = std::fs::metadata(&env_file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (DEPLOY_UID, DEPLOY_UID),
        "owner kept"
    );
    let meta = std::fs::metadata(&app_dir).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (DEPLOY_UID, DEPLOY_UID));
    // The service's container was recreated with it.
    assert_ne!(id_of(&container), before, "recreated: {r:?}");
    assert_eq!(env_of(&container, "CLOUDFLARE_AUD_TAG"), Some(aud(2)));
    // verify's checks ran and passed.
    for check in ["redirect", "certs", "consistency"] {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with(check) && l.contains(" ok ")),
            "{check}: {r:?}"
        );
    }
    // Nothing of audsync's lands in the project directory; no token in the output.
    let mut leftovers: Vec<String> = std::fs::read_dir(&app_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("audsync"))
        .collect();
    leftovers.sort();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!r.stdout.contains(TOKEN) && !r.stderr.contains(TOKEN));

    d.note_volumes();
    let (code, out) = compose(&app_dir, &project, &["down", "-v"]);
    assert_eq!(code, 0, "{out}");
}
