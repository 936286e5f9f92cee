//! Precedence, in-process: flags > process env > `.env` > config file > defaults, with the
//! variables injected (no process environment is read).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use crate::cli::Command;

const ACC_FLAG: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ACC_ENV: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const ACC_DOTENV: &str = "cccccccccccccccccccccccccccccccc";
const ACC_FILE: &str = "dddddddddddddddddddddddddddddddd";

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> String {
        self.0.path().join(name).display().to_string()
    }
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }
}

fn parse_with(args: &[&str], vars: &[(&str, &str)]) -> Result<Parsed, ParseError> {
    let mut argv = vec!["audsync"];
    argv.extend_from_slice(args);
    parse(argv, Vars::from_pairs(vars.iter().copied()))
}

fn sync_args(p: &Parsed) -> &crate::cli::SyncArgs {
    match &p.cli.command {
        Command::Sync(a) => a,
        other => panic!("not sync: {other:?}"),
    }
}

/// A config file setting the account and the timeout, a .env setting the account.
fn layers(d: &Dir) -> (String, String) {
    let cfg = d.write(
        "audsync.toml",
        &format!("timeout = \"7s\"\n[cloudflare]\naccount_id = \"{ACC_FILE}\"\n"),
    );
    let env = d.write(
        ".env",
        &format!("CLOUDFLARE_ACCOUNT_ID={ACC_DOTENV}\nAUDSYNC_LOCK_TIMEOUT=9s\n"),
    );
    (cfg, env)
}

#[test]
fn every_layer_in_order() {
    let d = Dir::new();
    let (cfg, env) = layers(&d);
    let base = [
        "sync",
        "--config",
        &cfg,
        "--env-file",
        &env,
        "--domain",
        "api.example.com",
    ];
    let mut args = base.to_vec();
    args.extend(["--account-id", ACC_FLAG]);
    let vars = [("CLOUDFLARE_ACCOUNT_ID", ACC_ENV)];

    let p = parse_with(&args, &vars).unwrap();
    assert_eq!(
        sync_args(&p).source.account_id.as_deref(),
        Some(ACC_FLAG),
        "flag wins"
    );
    assert_eq!(p.origins["account_id"], Origin::Flag);

    let p = parse_with(&base, &vars).unwrap();
    assert_eq!(
        sync_args(&p).source.account_id.as_deref(),
        Some(ACC_ENV),
        "process env next"
    );
    assert_eq!(
        p.origins["account_id"],
        Origin::Env("CLOUDFLARE_ACCOUNT_ID".into())
    );

    let p = parse_with(&base, &[]).unwrap();
    assert_eq!(
        sync_args(&p).source.account_id.as_deref(),
        Some(ACC_DOTENV),
        ".env next"
    );
    assert_eq!(
        p.origins["account_id"],
        Origin::EnvFile(env.clone().into(), 1)
    );

    let no_env = ["sync", "--config", &cfg, "--domain", "api.example.com"];
    let p = parse_with(&no_env, &[]).unwrap();
    assert_eq!(
        sync_args(&p).source.account_id.as_deref(),
        Some(ACC_FILE),
        "then the config file"
    );
    let abs = std::path::absolute(&cfg).unwrap();
    assert_eq!(p.origins["account_id"], Origin::File(abs.clone(), 3));
    assert_eq!(
        sync_args(&p).source.timeout,
        std::time::Duration::from_secs(7)
    );
    assert_eq!(p.origins["timeout"], Origin::File(abs, 1));

    // Defaults last.
    assert_eq!(
        sync_args(&p).lock_timeout,
        std::time::Duration::from_secs(60)
    );
    assert_eq!(p.origins["lock_timeout"], Origin::Default);
    let p = parse_with(&base, &[]).unwrap();
    assert_eq!(
        sync_args(&p).lock_timeout,
        std::time::Duration::from_secs(9)
    );
}

#[test]
fn the_process_environment_is_the_injected_one() {
    // A variable of the real process environment (PATH) is not an audsync setting, so inject
    // one under a setting's name and see it used, while the real process has none.
    assert!(std::env::var_os("AUDSYNC_KEY").is_none());
    let p = parse_with(
        &[
            "sync",
            "--domain",
            "a.example.com",
            "--env-file",
            "/nonexistent/.env",
        ],
        &[("AUDSYNC_KEY", "MY_AUD")],
    )
    .unwrap();
    assert_eq!(sync_args(&p).key, "MY_AUD");
    assert_eq!(p.origins["key"], Origin::Env("AUDSYNC_KEY".into()));
}

#[test]
fn with_a_config_file_the_env_file_is_read_for_settings_only_when_named() {
    let d = Dir::new();
    let (cfg, env) = layers(&d);
    // The default `.env` is relative to the working directory: name the sandbox's explicitly
    // through the variable, then not at all.
    let p = parse_with(
        &["sync", "--config", &cfg, "--domain", "a.example.com"],
        &[("AUDSYNC_ENV_FILE", &env)],
    )
    .unwrap();
    assert_eq!(sync_args(&p).source.account_id.as_deref(), Some(ACC_DOTENV));
    let p = parse_with(
        &["sync", "--config", &cfg, "--domain", "a.example.com"],
        &[],
    )
    .unwrap();
    assert_eq!(sync_args(&p).source.account_id.as_deref(), Some(ACC_FILE));
    assert!(p.env.env_file.is_none(), "no .env layer");
}

fn stack(d: &Dir, extra: &str) -> String {
    d.write(
        "audsync.toml",
        &format!(
            r#"[cloudflare]
account_id = "{ACC_FILE}"

[[binding]]
domain = "api.example.com"
key = "API_AUD"
sinks = [{{ env = "stack.env" }}]
targets = [{{ container = "lambda-server" }}]
restart = "recreate"

[[binding]]
domain = "n8n.example.com"
key = "N8N_AUD"
sinks = [{{ env = "stack.env" }}]
targets = [{{ container = "lambda-server" }}, {{ compose_service = "ai/n8n" }}]
{extra}"#
        ),
    )
}

fn build(p: &Parsed) -> Result<SyncConfig, Error> {
    let env = p
        .env
        .clone()
        .with_fetched("CLOUDFLARE_API_TOKEN", Secret::new("t"));
    SyncConfig::build(sync_args(p), &env, p.file.as_ref(), &p.origins)
}

#[test]
fn bindings_come_from_the_file_with_paths_next_to_it() {
    let d = Dir::new();
    let cfg = stack(&d, "");
    let p = parse_with(&["sync", "--config", &cfg], &[]).unwrap();
    let c = build(&p).unwrap();
    assert_eq!(c.bindings.len(), 2);
    assert!(!c.flag_binding);
    let b = &c.bindings[1];
    assert_eq!(
        (b.id.as_str(), b.key.as_str()),
        ("n8n.example.com", "N8N_AUD")
    );
    assert_eq!(
        b.sinks,
        vec![BindingSink::Env(d.0.path().join("stack.env"))]
    );
    assert_eq!(
        b.targets[1],
        BindingTarget::ComposeService {
            project: "ai".into(),
            service: "n8n".into()
        }
    );
    assert_eq!(
        c.bindings[0].restart,
        crate::reconcile::RestartMode::Recreate
    );
    assert_eq!(
        b.restart,
        crate::reconcile::RestartMode::Auto,
        "the default"
    );
    // One state file and one lock per config, next to it.
    let real = std::fs::canonicalize(&cfg).unwrap();
    assert_eq!(
        c.state_file,
        real.with_file_name("audsync.toml.audsync-state.json")
    );
    assert_eq!(
        c.lock_file,
        real.with_file_name("audsync.toml.audsync.lock")
    );
}

#[test]
fn restart_flag_overrides_every_binding_and_domain_selects() {
    let d = Dir::new();
    let cfg = stack(&d, "");
    let p = parse_with(
        &[
            "sync",
            "--config",
            &cfg,
            "--restart",
            "none",
            "--domain",
            "n8n.example.com",
        ],
        &[],
    )
    .unwrap();
    let c = build(&p).unwrap();
    assert_eq!(c.bindings.len(), 1);
    assert_eq!(c.bindings[0].id, "n8n.example.com");
    assert_eq!(c.bindings[0].restart, crate::reconcile::RestartMode::None);
    let p = parse_with(
        &["sync", "--config", &cfg],
        &[("AUDSYNC_RESTART", "restart")],
    )
    .unwrap();
    assert!(
        build(&p)
            .unwrap()
            .bindings
            .iter()
            .all(|b| b.restart == crate::reconcile::RestartMode::Restart)
    );
}

#[test]
fn binding_options_outside_the_file_are_refused_when_it_has_bindings() {
    let d = Dir::new();
    let cfg = stack(&d, "");
    let p = parse_with(
        &["sync", "--config", &cfg, "--key", "X"],
        &[("AUDSYNC_CONTAINER", "web")],
    )
    .unwrap();
    let e = build(&p).unwrap_err().to_string();
    assert!(e.contains("--key / AUDSYNC_KEY is set"), "{e}");
    assert!(e.contains("--container / AUDSYNC_CONTAINER is set"), "{e}");
}

#[test]
fn every_problem_of_the_file_is_listed_at_once() {
    let d = Dir::new();
    let cfg = stack(
        &d,
        "\n[[binding]]\ndomain = \"bad host\"\nkey = \"1X\"\nsinks = [{ env = \"stack.env\" }]\nrestart = \"sometimes\"\n\n[[binding]]\nkey = \"API_AUD\"\nsinks = [{ env = \"stack.env\" }]\ndomain = \"dup.example.com\"\n",
    );
    // The values of the file, each at its line and column, before anything else is read.
    let e = match parse_with(&["sync", "--config", &cfg], &[]) {
        Err(ParseError::Config(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.exit_code(), crate::exit::USAGE);
    let e = e.to_string();
    for want in [
        "audsync.toml:18:10: `domain` is not a host name",
        "audsync.toml:19:7: `key` is not a variable name",
        "audsync.toml:21:11: `restart` = \"sometimes\" is not one of: auto",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    assert!(!e.contains("bad host"), "{e}");
    // What needs the other bindings: a sink written twice, at the second one's value.
    let cfg = stack(
        &d,
        "\n[[binding]]\nkey = \"API_AUD\"\nsinks = [{ env = \"stack.env\" }]\ndomain = \"dup.example.com\"\n",
    );
    let p = parse_with(&["sync", "--config", &cfg], &[]).unwrap();
    let e = build(&p).unwrap_err().to_string();
    assert!(
        e.contains("audsync.toml:19:18: binding 3: another binding already writes API_AUD to"),
        "{e}"
    );
}

#[test]
fn an_inline_secret_in_a_shared_file_is_refused_naming_the_fix() {
    let d = Dir::new();
    let cfg = d.write(
        "audsync.toml",
        "[cloudflare]\ntoken = \"cf-SECRET-inline\"\n",
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = match parse_with(
        &["sync", "--config", &cfg, "--domain", "a.example.com"],
        &[],
    ) {
        Err(ParseError::Config(e)) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(e.contains("chmod 600") && e.contains(":2:"), "{e}");
    assert!(!e.contains("cf-SECRET-inline"), "{e}");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = parse_with(
        &["sync", "--config", &cfg, "--domain", "a.example.com"],
        &[],
    )
    .unwrap();
    assert_eq!(
        p.env
            .secret("CLOUDFLARE_API_TOKEN")
            .unwrap()
            .unwrap()
            .expose(),
        "cf-SECRET-inline"
    );
}

#[test]
fn secret_files_in_the_config_are_read_relative_to_it() {
    let d = Dir::new();
    d.write("cf-token", "tok-from-file\n");
    let cfg = d.write("audsync.toml", "[cloudflare]\ntoken_file = \"cf-token\"\n");
    let p = parse_with(
        &["sync", "--config", &cfg, "--domain", "a.example.com"],
        &[],
    )
    .unwrap();
    assert_eq!(
        p.env
            .secret("CLOUDFLARE_API_TOKEN")
            .unwrap()
            .unwrap()
            .expose(),
        "tok-from-file"
    );
    assert!(Path::new(&d.path("cf-token")).is_file());
}

#[test]
fn single_binding_commands_pick_their_binding_from_the_file() {
    let d = Dir::new();
    let cfg = stack(&d, "");
    let p = parse_with(
        &["get", "--config", &cfg, "--domain", "n8n.example.com"],
        &[],
    )
    .unwrap();
    let Command::Get(a) = &p.cli.command else {
        panic!()
    };
    assert_eq!(a.source.domain.as_deref(), Some("n8n.example.com"));
    let e = parse_with(&["get", "--config", &cfg], &[]).unwrap_err();
    let ParseError::Config(e) = e else { panic!() };
    assert!(
        e.to_string()
            .contains("has 2 bindings: pick one with --domain"),
        "{e}"
    );
}

fn verify_config(args: &[&str]) -> Result<verify::VerifyConfig, Error> {
    let p = parse_with(args, &[]).map_err(|e| match e {
        ParseError::Config(e) => e,
        ParseError::Clap(e) => panic!("{e}"),
    })?;
    let Command::Verify(a) = &p.cli.command else {
        panic!("not verify")
    };
    verify::VerifyConfig::build(a, &p.env, p.file.as_ref(), &p.origins)
}

#[test]
fn verify_with_a_config_file_checks_every_binding_against_its_own_targets() {
    let d = Dir::new();
    let cfg = stack(&d, "");
    let v = verify_config(&["verify", "--config", &cfg]).unwrap();
    let got: Vec<(&str, &str, usize, bool)> = v
        .bindings
        .iter()
        .map(|b| {
            (
                b.id.as_str(),
                b.key.as_str(),
                b.targets.len(),
                b.targets_required,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("api.example.com", "API_AUD", 1, true),
            ("n8n.example.com", "N8N_AUD", 2, true)
        ]
    );
    assert_eq!(
        v.bindings[1].targets[1],
        BindingTarget::ComposeService {
            project: "ai".into(),
            service: "n8n".into()
        }
    );
    assert_eq!(
        v.bindings[1].env_files().collect::<Vec<_>>(),
        [&d.0.path().join("stack.env")]
    );
    assert_eq!(v.bindings[1].url, "https://n8n.example.com/");
    assert!(v.config_file.is_some());
    // No credentials anywhere: verify still checks what it can (no API), as flag-only.
    assert!(v.bindings.iter().all(|b| b.api.is_none()));

    // --domain picks one binding and its own targets (never the flag default lambda-server).
    let v = verify_config(&["verify", "--config", &cfg, "--domain", "n8n.example.com"]).unwrap();
    assert_eq!(v.bindings.len(), 1);
    assert_eq!(v.bindings[0].key, "N8N_AUD");
    assert_eq!(
        v.bindings[0].targets,
        [
            BindingTarget::Container("lambda-server".into()),
            BindingTarget::ComposeService {
                project: "ai".into(),
                service: "n8n".into()
            }
        ]
    );
    let e = verify_config(&["verify", "--config", &cfg, "--domain", "x.example.com"]).unwrap_err();
    assert!(e.to_string().contains("no binding in"), "{e}");
}

#[test]
fn verify_without_a_config_file_is_the_flags_one_binding() {
    let v = verify_config(&["verify", "--domain", "api.example.com"]).unwrap();
    assert!(v.config_file.is_none());
    assert_eq!(v.bindings.len(), 1);
    let b = &v.bindings[0];
    assert_eq!(
        b.targets,
        [BindingTarget::Container("lambda-server".into())]
    );
    assert!(!b.targets_required, "the flag default may not exist here");
    assert_eq!(b.key, "CLOUDFLARE_AUD_TAG");
}

#[test]
fn verify_refuses_a_token_for_many_bindings_and_binding_options_as_flags() {
    let d = Dir::new();
    let cfg = stack(&d, "");
    let tok = d.write("tok", "a.b.c\n");
    let e = verify_config(&["verify", "--config", &cfg, "--token-file", &tok]).unwrap_err();
    assert!(
        e.to_string().contains("a token belongs to one application"),
        "{e}"
    );
    assert!(
        verify_config(&[
            "verify",
            "--config",
            &cfg,
            "--token-file",
            &tok,
            "--domain",
            "api.example.com"
        ])
        .is_ok()
    );
    let e = verify_config(&["verify", "--config", &cfg, "--container", "web"]).unwrap_err();
    assert!(
        e.to_string()
            .contains("--container / AUDSYNC_CONTAINER is set, but"),
        "{e}"
    );
}

fn snapshot_text(d: &Dir, args: &[&str], vars: &[(&str, &str)]) -> String {
    let p = parse_with(args, vars).unwrap();
    let text = show::render(&p).unwrap();
    let dir = std::fs::canonicalize(d.0.path())
        .unwrap()
        .display()
        .to_string();
    text.replace(&dir, "[DIR]")
        .replace(&d.0.path().display().to_string(), "[DIR]")
}

#[test]
fn config_command_shows_every_value_with_its_origin() {
    let d = Dir::new();
    d.write("cf-token", "tok-SECRET\n");
    let cfg = stack(&d, "");
    let cfg_text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[cloudflare]\n",
        "[cloudflare]\ntoken_file = \"cf-token\"\n",
    );
    std::fs::write(&cfg, cfg_text).unwrap();
    let text = snapshot_text(
        &d,
        &["config", "--config", &cfg, "--lock-timeout", "5s"],
        &[
            ("CLOUDFLARE_API_URL", "http://127.0.0.1:9/client/v4"),
            ("INFISICAL_CLIENT_SECRET", "inf-SECRET"),
        ],
    );
    assert!(
        !text.contains("tok-SECRET") && !text.contains("inf-SECRET"),
        "{text}"
    );
    insta::assert_snapshot!(text);
}

#[test]
fn config_command_for_a_flag_only_run() {
    let d = Dir::new();
    let env = d.write(
        ".env",
        "CLOUDFLARE_API_TOKEN=tok-SECRET\nAUDSYNC_DOMAIN=api.example.com\n",
    );
    let text = snapshot_text(
        &d,
        &["config", "--env-file", &env, "--container", "web"],
        &[
            ("CLOUDFLARE_ACCOUNT_ID", ACC_ENV),
            ("AUDSYNC_LOCK_DIR", "/locks"),
        ],
    );
    assert!(!text.contains("tok-SECRET"), "{text}");
    // A flag run's own lock is in the lock directory, named by the .env's real path (whose
    // hash changes with the temporary directory).
    let text = match text.find("/locks/run-.env-") {
        Some(i) => {
            let end = i + "/locks/run-.env-".len();
            format!("{}[HASH]{}", &text[..end], &text[end + 16..])
        }
        None => text,
    };
    insta::assert_snapshot!(text);
}

#[test]
fn config_output_json_is_one_object_with_secrets_redacted() {
    let d = Dir::new();
    d.write("cf-token", "tok-SECRET\n");
    let cfg = stack(&d, "");
    let text = snapshot_text(
        &d,
        &["config", "--config", &cfg, "--output", "json"],
        &[
            ("CLOUDFLARE_API_TOKEN", "tok-SECRET"),
            ("INFISICAL_CLIENT_SECRET", "inf-SECRET"),
        ],
    );
    assert!(
        !text.contains("tok-SECRET") && !text.contains("inf-SECRET"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["config_file"], "[DIR]/audsync.toml");
    let values = v["values"].as_array().unwrap();
    let get = |k: &str| values.iter().find(|e| e["key"] == k).cloned();
    assert_eq!(
        get("cloudflare.token").unwrap()["value"],
        "[redacted]",
        "{v}"
    );
    assert_eq!(
        get("infisical.client_secret").unwrap()["origin"],
        "env:INFISICAL_CLIENT_SECRET"
    );
    let sinks = get("binding[1].sinks").unwrap();
    assert_eq!(sinks["value"][0]["env"], "[DIR]/stack.env", "{sinks}");
    assert_eq!(sinks["origin"], "file:[DIR]/audsync.toml:7");
}
