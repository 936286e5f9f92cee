//! Command targets (`--exec`, `targets = [{ exec = [...] }]`) end to end, through the real
//! binary against the fake Cloudflare, with no Docker at all (`DOCKER_HOST` names nothing).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cloudflare::{ACCOUNT, FakeCloudflare, TOKEN, app, aud};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";

fn setup() -> (FakeCloudflare, Sandbox) {
    let cf = FakeCloudflare::start(vec![app(1, HOST, &aud(1))]);
    let mut sb = Sandbox::with_cloudflare(&cf);
    // No engine anywhere: a binding whose only target is a command must not need one.
    sb.var("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    sb.var("HOME", "/home/audsync-test");
    sb.var("LANG", "C.UTF-8");
    sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
    (cf, sb)
}

/// An executable script in the sandbox.
fn script(sb: &Sandbox, name: &str, body: &str) -> String {
    let p = sb.path(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

/// Records each run: its arguments (one a line) and its whole environment, and counts runs.
fn recorder(sb: &Sandbox) -> String {
    let d = sb.dir().display();
    script(
        sb,
        "record.sh",
        &format!(
            "for a in \"$@\"; do echo \"$a\"; done > {d}/args\nenv > {d}/env\necho run >> {d}/runs\nread line && echo \"stdin was not empty: $line\" >> {d}/runs\nexit 0"
        ),
    )
}

fn runs(sb: &Sandbox) -> usize {
    std::fs::read_to_string(sb.path("runs"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn env_of(sb: &Sandbox) -> Vec<(String, String)> {
    std::fs::read_to_string(sb.path("env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.into(), v.into())))
        // What sh itself adds.
        .filter(|(k, _): &(String, String)| !["PWD", "SHLVL", "_", "OLDPWD"].contains(&k.as_str()))
        .collect()
}

fn sync(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--output", "json"])
        .args(extra);
    run(&mut c)
}

fn target(j: &Value) -> &Value {
    let t = j["containers"].as_array().unwrap_or_else(|| panic!("{j}"));
    assert_eq!(t.len(), 1, "{j}");
    &t[0]
}

#[test]
fn a_command_target_runs_once_after_the_write_with_only_the_change_in_its_environment() {
    let (_cf, sb) = setup();
    let cmd = format!("{} restart 'lambda server' \"$HOME\"", recorder(&sb));

    let r = sync(&sb, &["--exec", &cmd, "--dry-run"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(runs(&sb), 0, "never in --dry-run");
    assert_eq!(target(&r.json())["result"], "planned", "{r:?}");

    let r = sync(&sb, &["--exec", &cmd]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(1)));
    assert_eq!(runs(&sb), 1, "{r:?}");
    let t = target(&r.json()).clone();
    assert_eq!(
        t["name"],
        format!(
            "command {} restart 'lambda server' '$HOME'",
            sb.path("record.sh").display()
        )
    );
    assert_eq!(t["result"], "done", "{t}");
    assert_eq!(
        std::fs::read_to_string(sb.path("args")).unwrap(),
        "restart\nlambda server\n$HOME\n",
        "split as a shell splits words, nothing expanded"
    );
    let mut env = env_of(&sb);
    env.sort();
    let want: Vec<(String, String)> = [
        ("AUDSYNC_CHANGED_BINDINGS", HOST.to_string()),
        ("AUDSYNC_CHANGED_KEY", "CLOUDFLARE_AUD_TAG".into()),
        ("AUDSYNC_NEW_AUD", aud(1)),
        ("AUDSYNC_OLD_AUD", "old".into()),
        ("HOME", "/home/audsync-test".into()),
        ("LANG", "C.UTF-8".into()),
        ("PATH", std::env::var("PATH").unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(env, want);
    let raw = std::fs::read_to_string(sb.path("env")).unwrap();
    assert!(
        !raw.contains(TOKEN),
        "audsync's credential reached the command"
    );
    assert!(
        !raw.contains(ACCOUNT)
            && !raw.contains("CLOUDFLARE_API")
            && !raw.contains("AUDSYNC_LOCK_DIR"),
        "{raw}"
    );

    // In sync: not run again.
    let r = sync(&sb, &["--exec", &cmd]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(runs(&sb), 1, "{r:?}");
}

#[test]
fn a_failing_command_fails_the_binding_quotes_its_output_and_runs_again_next_pass() {
    let (_cf, sb) = setup();
    let d = sb.dir().display().to_string();
    let cmd = script(
        &sb,
        "flaky.sh",
        &format!(
            "echo run >> {d}/runs\nif [ ! -f {d}/ok ]; then echo 'Job for lambda.service failed' >&2; printf 'see \\033[31mjournalctl\\n'; exit 3; fi\nenv > {d}/env"
        ),
    );
    let r = sync(&sb, &["--exec", &cmd]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(runs(&sb), 1);
    let j = r.json();
    let t = target(&j);
    assert_eq!(t["result"], "failed", "{j}");
    let msg = t["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exited with status 3"), "{msg}");
    assert!(msg.contains("Job for lambda.service failed"), "{msg}");
    assert!(
        msg.contains("see ?[31mjournalctl"),
        "escapes defused: {msg}"
    );
    // The sink holds the new value: only the command is owed.
    assert_eq!(sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(1)));

    std::fs::write(sb.path("ok"), "").unwrap();
    let r = sync(&sb, &["--exec", &cmd]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        runs(&sb),
        2,
        "owed: run again though the sink did not change"
    );
    assert_eq!(target(&r.json())["result"], "done", "{r:?}");
    let env = env_of(&sb);
    assert!(env.contains(&("AUDSYNC_NEW_AUD".into(), aud(1))), "{env:?}");
    assert!(
        env.contains(&("AUDSYNC_CHANGED_BINDINGS".into(), HOST.into())),
        "{env:?}"
    );

    let r = sync(&sb, &["--exec", &cmd]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(runs(&sb), 2, "nothing owed any more");
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for its reaper is gone as well.
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_command_past_its_timeout_is_killed_with_its_group_and_a_grandchild_holding_its_output() {
    let (_cf, sb) = setup();
    let d = sb.dir().display().to_string();
    // Ignores SIGTERM (and so does the grandchild that inherits it and keeps stdout open).
    let cmd = script(
        &sb,
        "hang.sh",
        &format!("trap '' TERM\nsleep 300 &\necho $! > {d}/grandchild\necho started\nsleep 300"),
    );
    let t0 = Instant::now();
    let r = sync(&sb, &["--exec", &cmd, "--exec-timeout", "1s"]);
    let took = t0.elapsed();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let j = r.json();
    let msg = target(&j)["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("did not finish within 1s"), "{msg}");
    assert!(msg.contains("started"), "its output is quoted: {msg}");
    let pid: u32 = std::fs::read_to_string(sb.path("grandchild"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while !gone(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone(pid), "the grandchild {pid} outlived the pass");
}

fn write_toml(sb: &Sandbox, text: &str, mode: u32) {
    let p = sb.path("audsync.toml");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn two_bindings(cf: &FakeCloudflare, cmd: &Path) -> String {
    let exec = format!("targets = [{{ exec = [{:?}, \"reload\"] }}]", cmd.display());
    format!(
        "[cloudflare]\naccount_id = \"{ACCOUNT}\"\napi_url = \"{}\"\n\n[[binding]]\nname = \"api\"\ndomain = \"{HOST}\"\nkey = \"AUD_API\"\nsinks = [{{ env = \"stack.env\" }}]\n{exec}\n\n[[binding]]\nname = \"web\"\ndomain = \"web.example.com\"\nkey = \"AUD_WEB\"\nsinks = [{{ env = \"stack.env\" }}]\n{exec}\n",
        cf.url()
    )
}

#[test]
fn two_bindings_naming_the_same_command_run_it_once_and_an_open_config_file_may_not_name_one() {
    let cf = FakeCloudflare::start(vec![
        app(1, HOST, &aud(1)),
        app(2, "web.example.com", &aud(2)),
    ]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", TOKEN);
    sb.var("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    std::fs::write(sb.path("stack.env"), "AUD_API=old\nAUD_WEB=old\n").unwrap();
    let rec = recorder(&sb);
    let text = two_bindings(&cf, Path::new(&rec));

    // Anyone may change this file: it may not decide what audsync runs.
    write_toml(&sb, &text, 0o666);
    let r = run(sb.cmd().args(["sync", "--output", "json"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("may not steer this run") && r.stderr.contains("writable by others"),
        "{r:?}"
    );
    assert_eq!(runs(&sb), 0);

    write_toml(&sb, &text, 0o600);
    let r = run(sb.cmd().args(["sync", "--output", "json"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(runs(&sb), 1, "one run for both bindings: {r:?}");
    assert_eq!(
        std::fs::read_to_string(sb.path("args")).unwrap(),
        "reload\n"
    );
    let env = env_of(&sb);
    assert!(
        env.contains(&("AUDSYNC_CHANGED_BINDINGS".into(), "api web".into())),
        "{env:?}"
    );
    assert!(
        !env.iter()
            .any(|(k, _)| k == "AUDSYNC_NEW_AUD" || k == "AUDSYNC_CHANGED_KEY"),
        "two bindings changed: no single key: {env:?}"
    );
}

#[test]
fn exec_has_no_environment_variable_and_a_bad_command_line_is_a_usage_error() {
    let (_cf, mut sb) = setup();
    let rec = recorder(&sb);
    // Neither the process environment nor the .env can name a command.
    sb.var("AUDSYNC_EXEC", &rec);
    sb.write_env(&format!("CLOUDFLARE_AUD_TAG=old\nAUDSYNC_EXEC={rec}\n"));
    let r = sync(&sb, &["--restart", "none"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(runs(&sb), 0);

    let r = sync(&sb, &["--exec", "echo 'unclosed"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--exec"), "{r:?}");
}

/// docs/command-targets.md, "Example: a systemd service": the binding as printed there, with
/// the `.env` in the sandbox and a `systemctl` on PATH that records what it was asked.
#[test]
fn the_systemd_example_of_the_docs_restarts_the_unit() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/command-targets.md"
    ))
    .unwrap();
    let example = doc.split("## Example: a systemd service").nth(1).unwrap();
    let block = example
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let cf = FakeCloudflare::start(vec![app(1, "lambda.example.com", &aud(1))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", TOKEN);
    sb.var("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let bin = sb.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let d = sb.dir().display().to_string();
    std::fs::write(
        bin.join("systemctl"),
        format!("#!/bin/sh\necho \"$@\" >> {d}/systemctl.log\necho \"$AUDSYNC_NEW_AUD\" >> {d}/systemctl.log\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    sb.var(
        "PATH",
        &format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    );
    let env = sb.path("lambda.env");
    std::fs::write(&env, "CLOUDFLARE_AUD_TAG=old\n").unwrap();
    let text = format!(
        "[cloudflare]\naccount_id = \"{ACCOUNT}\"\napi_url = \"{}\"\n\n{}",
        cf.url(),
        block.replace("/etc/lambda/lambda.env", &env.display().to_string())
    );
    write_toml(&sb, &text, 0o600);
    let r = run(sb.cmd().args(["sync"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("command systemctl restart lambda"),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.path("systemctl.log")).unwrap(),
        format!("restart lambda\n{}\n", aud(1))
    );
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        format!("CLOUDFLARE_AUD_TAG={}\n", aud(1))
    );
}

#[test]
fn verify_shows_a_command_target_as_not_checked_and_never_runs_it() {
    let cf = FakeCloudflare::start(vec![app(1, HOST, &aud(1))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", TOKEN);
    sb.var("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    std::fs::write(sb.path("stack.env"), format!("AUD_API={}\n", aud(1))).unwrap();
    let rec = recorder(&sb);
    let text = format!(
        "[cloudflare]\naccount_id = \"{ACCOUNT}\"\napi_url = \"{}\"\n\n[[binding]]\nname = \"api\"\ndomain = \"{HOST}\"\nurl = \"http://127.0.0.1:9/\"\nkey = \"AUD_API\"\nsinks = [{{ env = \"stack.env\" }}]\ntargets = [{{ exec = [{rec:?}, \"reload\"] }}]\n",
        cf.url()
    );
    write_toml(&sb, &text, 0o600);
    let r = run(sb.cmd().args(["verify"]));
    assert!(
        r.stdout
            .contains(&format!("command {rec} reload: not checked (a command)")),
        "{r:?}"
    );
    assert_eq!(runs(&sb), 0);
}

#[test]
fn exec_as_a_flag_is_refused_when_the_config_file_defines_bindings() {
    let cf = FakeCloudflare::start(vec![app(1, HOST, &aud(1))]);
    let mut sb = Sandbox::new();
    sb.var("CLOUDFLARE_API_TOKEN", TOKEN);
    std::fs::write(sb.path("stack.env"), "AUD_API=old\nAUD_WEB=old\n").unwrap();
    let rec = recorder(&sb);
    write_toml(&sb, &two_bindings(&cf, Path::new(&rec)), 0o600);
    let r = run(sb.cmd().args(["sync", "--exec", &rec]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--exec is set"), "{r:?}");
    assert_eq!(runs(&sb), 0);
}
