//! Keeping compose's view of a container right after audsync replaced it.
//!
//! `docker compose up -d` recreates a container whose `com.docker.compose.config-hash` label
//! differs from the hash it computes for the service now. Stamping compose's new hash on the
//! container audsync builds is a claim that the container equals what compose would create now
//! -- true only when nothing but this pass's keys changed. audsync cannot recompute the hash
//! (v1 hashes the image's current id, v2 hashes differently, both read the caller's
//! environment), so it takes compose's own word, twice: the service's hash and resolved
//! configuration (`config --hash=SERVICE`, `config`) **before** any sink is written
//! ([`Snapshot`], asked when the container is observed) and again after. The new hash is
//! stamped only when the old container carried the *before* hash and the two configurations
//! differ in nothing but the environment entries of the keys this pass changed (see
//! [`decide`]); otherwise the old label stays, so the next `up -d` applies the user's pending
//! changes, and the names of the variables that differ are reported (never their values).
//! When compose cannot be asked, nothing is stamped.
//!
//! Compose is run the way `up` was: from the project's `working_dir` label, with `-p PROJECT`,
//! `-f` for each `config_files` entry made absolute, `--env-file` when one was used, and a clean
//! environment (the calling process's variables would beat `.env`). Both compose v1
//! (`docker-compose`) and v2 (`docker compose`, or a v2 `docker-compose` binary) are found; the
//! one matching the container's `com.docker.compose.version` label is preferred. It never
//! guesses a hash, and never prints a value of the environment (compose's output is parsed,
//! not logged).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse};

use super::Error;

pub(crate) const PROJECT: &str = "com.docker.compose.project";
pub(crate) const SERVICE: &str = "com.docker.compose.service";
const HASH: &str = "com.docker.compose.config-hash";
const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
const ENV_FILE: &str = "com.docker.compose.project.environment_file";
/// The v1 CLI (and the standalone v2 binary of the same name).
const V1_CLI: &str = "docker-compose";
/// The Docker CLI, whose `compose` plugin is v2.
const DOCKER_CLI: &str = "docker";
const VERSION: &str = "com.docker.compose.version";
/// `config` starts Python (v1) and asks the daemon for the image id: seconds, not minutes.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Variables the compose CLI needs to reach the same daemon; nothing else is passed.
pub(crate) const PASSED: &[&str] = &[
    "PATH",
    "HOME",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CONTEXT",
];

/// Where the compose CLI is looked for and what it runs with, taken by config from the
/// process environment's snapshot (this module reads no variable itself). Its `Debug` shows
/// names only.
#[derive(Clone, Default, PartialEq)]
pub struct ComposeEnv {
    /// The directories of `PATH`, in order.
    pub(crate) path: Vec<PathBuf>,
    /// The variables of [`PASSED`] that are set (also when empty), passed to the CLI.
    pub(crate) vars: Vec<(String, String)>,
}

impl ComposeEnv {
    /// From `get(name)`: the value of variable `name` when it is set.
    pub(crate) fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> ComposeEnv {
        ComposeEnv {
            path: get("PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|d| !d.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
            vars: PASSED
                .iter()
                .filter_map(|n| Some((n.to_string(), get(n)?.to_string())))
                .collect(),
        }
    }
}

impl std::fmt::Debug for ComposeEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComposeEnv")
            .field("path", &self.path)
            .field(
                "vars",
                &self.vars.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Whether the container was made by compose (it carries the project and service labels).
pub(crate) fn is_compose(info: &ContainerInspectResponse) -> bool {
    let labels = info.config.as_ref().and_then(|c| c.labels.as_ref());
    labels.is_some_and(|l| l.contains_key(PROJECT) && l.contains_key(SERVICE))
}

/// A compose CLI found on the PATH, and the major version it reported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cli {
    program: PathBuf,
    /// `docker compose` (the v2 plugin) rather than a `docker-compose` binary.
    plugin: bool,
    major: u8,
}

impl Cli {
    /// How the user would type it, for messages.
    pub(crate) fn shown(&self) -> &'static str {
        if self.plugin {
            "docker compose"
        } else {
            "docker-compose"
        }
    }

    fn command(&self, dir: &str, vars: &[(String, String)]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        if self.plugin {
            cmd.arg("compose");
        }
        cmd.current_dir(dir).env_clear();
        cmd.envs(vars.iter().map(|(k, v)| (k, v)));
        cmd.stdin(std::process::Stdio::null());
        cmd
    }
}

/// The compose major version in the first line of `version`'s answer: v1 says
/// `docker-compose version 1.29.2, build 5becea4c`, v2 `Docker Compose version v2.24.5` (or
/// `2.24.5-desktop.1`, and just `2.24.5` with `--short`).
pub(crate) fn parse_version(stdout: &str) -> Option<u8> {
    let line = stdout.lines().next()?.trim();
    let word = line.split_whitespace().find(|w| {
        w.trim_start_matches('v')
            .starts_with(|c: char| c.is_ascii_digit())
    })?;
    let major = word.trim_start_matches('v').split('.').next()?;
    major.parse().ok()
}

/// The compose CLIs that may be on `env`'s PATH, in the order they are tried: a
/// `docker-compose` binary, then the `docker` CLI's `compose` plugin.
fn candidates(env: &ComposeEnv) -> Vec<(PathBuf, bool)> {
    let on_path = |name: &str| env.path.iter().map(|d| d.join(name)).find(|p| p.is_file());
    let mut out = Vec::new();
    if let Some(p) = on_path(V1_CLI) {
        out.push((p, false));
    }
    if let Some(p) = on_path(DOCKER_CLI) {
        out.push((p, true));
    }
    out
}

/// Pick the CLI among the ones that answered `version` (`(program, plugin, answer)`): the
/// first of major `want` (the container's own compose version), else the first that answered.
fn choose(found: Vec<(PathBuf, bool, Option<u8>)>, want: Option<u8>) -> Option<Cli> {
    let ok: Vec<Cli> = found
        .into_iter()
        .filter_map(|(program, plugin, major)| {
            Some(Cli {
                program,
                plugin,
                major: major?,
            })
        })
        .collect();
    ok.iter()
        .find(|c| Some(c.major) == want)
        .or(ok.first())
        .cloned()
}

/// Find a compose CLI that answers (blocking: runs `version`).
fn find(env: &ComposeEnv, want: Option<u8>) -> Option<Cli> {
    let found = candidates(env)
        .into_iter()
        .map(|(program, plugin)| {
            let mut cmd = std::process::Command::new(&program);
            if plugin {
                cmd.arg("compose");
            }
            cmd.arg("version").env_clear();
            cmd.envs(env.vars.iter().map(|(k, v)| (k, v)));
            cmd.stdin(std::process::Stdio::null());
            let major = cmd
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)));
            (program, plugin, major)
        })
        .collect();
    choose(found, want)
}

/// What compose says of a service at one moment: its config hash and its resolved
/// configuration. `Debug` shows the hash only (the configuration holds secrets).
#[derive(Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) hash: String,
    /// The service's entry of `config`'s `services`.
    service: serde_yaml::Value,
    /// Which CLI said it, for messages.
    cli: &'static str,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("hash", &self.hash)
            .field("cli", &self.cli)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// From the answers of `config --hash=SERVICE` and `config`.
    pub(crate) fn parse(
        cli: &'static str,
        service: &str,
        hash_out: &str,
        config_out: &str,
    ) -> Result<Snapshot, Error> {
        let answer = |what: &'static str, why: String| Error::ComposeAnswer {
            cli: cli.to_string(),
            what,
            why,
        };
        let hash = parse_hash(hash_out, service).ok_or_else(|| {
            answer(
                "config --hash",
                format!("no 64-hex hash for service {service}"),
            )
        })?;
        // Compose's YAML (v2's JSON too) parsed; an error names a position, not a value.
        let all: serde_yaml::Value = serde_yaml::from_str(config_out).map_err(|e| {
            answer(
                "config",
                format!(
                    "not YAML{}",
                    e.location()
                        .map(|l| format!(" (line {})", l.line()))
                        .unwrap_or_default()
                ),
            )
        })?;
        let service_cfg = all
            .get("services")
            .and_then(|s| s.get(service))
            .cloned()
            .ok_or_else(|| answer("config", format!("no service {service}")))?;
        Ok(Snapshot {
            hash,
            service: service_cfg,
            cli,
        })
    }

    /// The service's environment as compose resolved it (`env_file` and `environment`);
    /// a variable without a value (`KEY` alone) is left out.
    pub(crate) fn env(&self) -> std::collections::BTreeMap<String, String> {
        let scalar = |v: &serde_yaml::Value| -> Option<String> {
            match v {
                serde_yaml::Value::String(s) => Some(s.clone()),
                serde_yaml::Value::Number(n) => Some(n.to_string()),
                serde_yaml::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        };
        match self.service.get("environment") {
            Some(serde_yaml::Value::Mapping(m)) => m
                .iter()
                .filter_map(|(k, v)| Some((scalar(k)?, scalar(v)?)))
                .collect(),
            Some(serde_yaml::Value::Sequence(list)) => list
                .iter()
                .filter_map(|e| {
                    let (k, v) = e.as_str()?.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect(),
            _ => Default::default(),
        }
    }

    /// The configuration with the environment entries of `keys` taken out.
    fn without(&self, keys: &[&str]) -> serde_yaml::Value {
        let mut v = self.service.clone();
        match v.get_mut("environment") {
            Some(serde_yaml::Value::Mapping(m)) => {
                m.retain(|k, _| !k.as_str().is_some_and(|k| keys.contains(&k)));
            }
            Some(serde_yaml::Value::Sequence(list)) => list.retain(|e| {
                let k = e.as_str().map(|s| s.split_once('=').map_or(s, |(k, _)| k));
                !k.is_some_and(|k| keys.contains(&k))
            }),
            _ => {}
        }
        v
    }
}

/// Ask compose about the service of compose container `info`: its hash and configuration
/// now. The CLI is `known` (found by an earlier ask of the same probe), else looked for on
/// `env`'s `PATH` (and remembered in `known`); it runs with `env`'s variables only. The two
/// questions are asked at once: each docker-compose v1 start costs about a second.
pub(crate) async fn ask(
    info: &ContainerInspectResponse,
    env: &ComposeEnv,
    known: &mut Option<Cli>,
) -> Result<Snapshot, Error> {
    let labels = info
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let base = base_args(&labels).ok_or(Error::ComposeLabels)?;
    let service = labels.get(SERVICE).cloned().unwrap_or_default();
    let dir = labels.get(WORKING_DIR).cloned().unwrap_or_default();
    let want = labels.get(VERSION).and_then(|v| parse_version(v));
    let env = env.clone();
    let cli = known.clone();
    let run = tokio::task::spawn_blocking(move || -> Result<(Cli, Snapshot), Error> {
        let cli = match cli {
            Some(c) => c,
            None => find(&env, want).ok_or(Error::ComposeMissing)?,
        };
        let shown = cli.shown();
        let run = |what: &'static str, extra: &[String]| -> Result<String, Error> {
            let out = cli
                .command(&dir, &env.vars)
                .args(&base)
                .args(extra)
                .output()
                .map_err(|source| Error::ComposeRun {
                    cli: shown.to_string(),
                    source,
                })?;
            if !out.status.success() {
                // Compose's error messages name files and services, not values.
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(Error::ComposeFailed {
                    cli: shown.to_string(),
                    what,
                    status: out.status.to_string(),
                    stderr: err.lines().next().unwrap_or_default().to_string(),
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let (hash, config) = std::thread::scope(|s| {
            let hash = s.spawn(|| {
                run(
                    "config --hash",
                    &["config".into(), format!("--hash={service}")],
                )
            });
            let config = run("config", &["config".into()]);
            let hash = hash.join().unwrap_or_else(|_| {
                Err(Error::ComposeRun {
                    cli: shown.to_string(),
                    source: std::io::Error::other("the thread asking for the hash panicked"),
                })
            });
            (hash, config)
        });
        let snapshot = Snapshot::parse(shown, &service, &hash?, &config?)?;
        Ok((cli, snapshot))
    });
    match tokio::time::timeout(CLI_TIMEOUT, run).await {
        Ok(Ok(Ok((cli, snapshot)))) => {
            *known = Some(cli);
            Ok(snapshot)
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(e)) => Err(Error::ComposeRun {
            cli: "compose".into(),
            source: std::io::Error::other(e.to_string()),
        }),
        Err(_) => Err(Error::ComposeTimeout {
            cli: "compose".into(),
            within: CLI_TIMEOUT,
        }),
    }
}

/// What to do with the config-hash label of the new container.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Compose's new hash: the new container equals what compose would create now.
    Stamp(String),
    /// The old label stays: compose's configuration holds other changes, so the next `up -d`
    /// recreates it. `pending`: the variables whose values differ between the new container
    /// and compose's configuration (names only).
    Keep { pending: Vec<String> },
}

/// Decide from compose's word `before` the sinks were written and `after`, the old
/// container's `label`, the keys this pass `changed`, and the new container's environment
/// `new_env` (`KEY=value` entries). Pure.
pub(crate) fn decide(
    label: Option<&str>,
    before: &Snapshot,
    after: &Snapshot,
    changed: &[&str],
    new_env: &[String],
) -> Verdict {
    let pending: Vec<String> = after
        .env()
        .into_iter()
        .filter(|(k, v)| super::env_value(new_env, k).as_deref() != Some(v.as_str()))
        .map(|(k, _)| k)
        .collect();
    let matched = label == Some(before.hash.as_str());
    let only_ours = before.without(changed) == after.without(changed);
    if matched && only_ours && pending.is_empty() {
        Verdict::Stamp(after.hash.clone())
    } else {
        Verdict::Keep { pending }
    }
}

/// Settle the config-hash label of `body` (the new container of compose container `info`):
/// ask compose now (`after`) and [`decide`] against `before` (asked before the sinks were
/// written; when none was, no sink of the pass changed since the observe, and `after` stands
/// for it). `Ok(None)`: stamped (or not a compose container); `Ok(Some(pending))`: the old
/// label stays; `Err`: compose could not be asked, the old label stays.
pub(crate) async fn settle(
    info: &ContainerInspectResponse,
    body: &mut ContainerCreateBody,
    changes: &[(String, String)],
    before: Option<&Result<Snapshot, Error>>,
    env: &ComposeEnv,
    known: &mut Option<Cli>,
) -> Result<Option<Vec<String>>, Error> {
    if !is_compose(info) {
        return Ok(None);
    }
    let name = super::ops::name_of(info, "");
    let before = match before {
        Some(Err(e)) => {
            return Err(Error::ComposeAnswer {
                cli: "compose".into(),
                what: "config (before the write)",
                why: e.to_string(),
            });
        }
        Some(Ok(b)) => Some(b),
        None => None,
    };
    let after = ask(info, env, known).await?;
    let before = before.unwrap_or(&after);
    let label = info
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(HASH))
        .map(String::as_str);
    let changed: Vec<&str> = changes.iter().map(|(k, _)| k.as_str()).collect();
    let new_env = body.env.clone().unwrap_or_default();
    match decide(label, before, &after, &changed, &new_env) {
        Verdict::Stamp(hash) => {
            tracing::info!(container = %name, hash = %hash, "compose config-hash of the new container");
            body.labels
                .get_or_insert_with(Default::default)
                .insert(HASH.to_string(), hash);
            Ok(None)
        }
        Verdict::Keep { pending } => {
            tracing::warn!(container = %name, pending = ?pending, "compose's configuration holds other changes: the old config-hash stays, so the next `docker compose up -d` recreates it");
            Ok(Some(pending))
        }
    }
}

/// What became of the config-hash label in a recreate or rollout.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum HashOutcome {
    /// Not replaced (yet), or not a compose container.
    #[default]
    Untouched,
    /// Compose's new hash was stamped.
    Stamped,
    /// The old label stays: other changes are pending (the variable names).
    Pending(Vec<String>),
    /// Compose could not be asked: the old label stays (why).
    Unasked(String),
}

/// A container's dealings with compose over one pass: the environment the CLI runs with,
/// compose's word before the sinks were written, and what became of the label.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    pub(crate) env: ComposeEnv,
    /// Ask compose when the container is observed (the sinks may change after).
    pub(crate) ask_before: bool,
    pub(crate) before: Option<Result<Snapshot, Error>>,
    pub(crate) outcome: HashOutcome,
    /// The CLI the first ask found: the second ask of the pass skips the `version` probes.
    pub(crate) cli: Option<Cli>,
}

impl Probe {
    /// [`settle`], recording the outcome.
    pub(crate) async fn settle(
        &mut self,
        info: &ContainerInspectResponse,
        body: &mut ContainerCreateBody,
        changes: &[(String, String)],
    ) {
        if !is_compose(info) {
            return;
        }
        let before = self.before.as_ref();
        self.outcome = match settle(info, body, changes, before, &self.env, &mut self.cli).await {
            Ok(None) => HashOutcome::Stamped,
            Ok(Some(p)) => HashOutcome::Pending(p),
            Err(e) => {
                let name = super::ops::name_of(info, "");
                tracing::warn!(container = %name, error = %e, "compose could not be asked: the old config-hash stays, so the next `docker compose up -d` recreates it once");
                HashOutcome::Unasked(e.to_string())
            }
        };
    }
}

/// The warning for compose containers replaced while compose could not be asked.
pub(crate) fn unasked_warning(names: &str, why: &str) -> String {
    format!(
        "{names}: compose could not be asked for the new config-hash ({why}); the old one stays, so the next `docker compose up -d` recreates it once (install docker-compose or the compose plugin where audsync runs to avoid that)"
    )
}

/// `-p P -f /abs/file … [--env-file /abs]`, from the labels.
fn base_args(labels: &std::collections::HashMap<String, String>) -> Option<Vec<String>> {
    let project = labels.get(PROJECT)?;
    labels.get(SERVICE)?;
    let dir = Path::new(labels.get(WORKING_DIR)?);
    if !dir.is_absolute() {
        return None;
    }
    let abs = |p: &str| -> String {
        let p = Path::new(p.trim());
        if p.is_absolute() {
            p.display().to_string()
        } else {
            dir.join(p).display().to_string()
        }
    };
    let mut args = vec!["-p".to_string(), project.clone()];
    let files = labels.get(CONFIG_FILES)?;
    for f in files.split(',').filter(|f| !f.trim().is_empty()) {
        args.push("-f".into());
        args.push(abs(f));
    }
    if let Some(e) = labels.get(ENV_FILE).filter(|e| !e.is_empty()) {
        args.push("--env-file".into());
        args.push(abs(e));
    }
    Some(args)
}

/// The 64-hex hash of the line `<service> <hash>`.
fn parse_hash(stdout: &str, service: &str) -> Option<String> {
    stdout.lines().find_map(|l| {
        let (s, h) = l.trim().split_once(' ')?;
        let h = h.trim();
        (s == service && h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| h.to_string())
    })
}

/// A `docker compose run` container (label `com.docker.compose.oneoff=True`); a container
/// without the label (podman-compose sets none) is a service member.
pub(crate) fn is_oneoff(labels: Option<&std::collections::HashMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get("com.docker.compose.oneoff"))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_off_containers_are_told_apart_and_podman_compose_members_have_no_label() {
        use std::collections::HashMap;
        let with =
            |v: &str| HashMap::from([("com.docker.compose.oneoff".to_string(), v.to_string())]);
        assert!(is_oneoff(Some(&with("True"))));
        assert!(!is_oneoff(Some(&with("False"))));
        assert!(
            !is_oneoff(Some(&HashMap::new())),
            "podman-compose: no oneoff label"
        );
        assert!(!is_oneoff(None));
    }

    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_invocation_comes_from_the_labels_with_absolute_paths() {
        let labels: HashMap<String, String> = [
            (PROJECT, "lambda"),
            (SERVICE, "api"),
            (WORKING_DIR, "/srv/lambda"),
            (CONFIG_FILES, "docker-compose.yml,/etc/extra.yml"),
            (ENV_FILE, "conf/.env"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            base_args(&labels).unwrap(),
            [
                "-p",
                "lambda",
                "-f",
                "/srv/lambda/docker-compose.yml",
                "-f",
                "/etc/extra.yml",
                "--env-file",
                "/srv/lambda/conf/.env",
            ]
        );
        let mut rel = labels.clone();
        rel.insert(WORKING_DIR.into(), "srv".into());
        assert_eq!(
            base_args(&rel),
            None,
            "a relative working_dir is not guessed"
        );
    }

    #[test]
    fn the_environment_holds_path_and_the_passed_variables_only() {
        let vars: HashMap<&str, &str> = [
            ("PATH", "/usr/local/bin::/usr/bin"),
            ("DOCKER_HOST", "unix:///run/docker.sock"),
            ("DOCKER_CONTEXT", ""),
            ("CLOUDFLARE_API_TOKEN", "secret-token"),
        ]
        .into();
        let env = ComposeEnv::from_lookup(|n| vars.get(n).copied());
        assert_eq!(
            env.path,
            [PathBuf::from("/usr/local/bin"), PathBuf::from("/usr/bin")]
        );
        let names: Vec<&str> = env.vars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "DOCKER_HOST", "DOCKER_CONTEXT"]);
        let shown = format!("{env:?}");
        assert!(!shown.contains("unix:///run"), "{shown}");
        assert!(candidates(&ComposeEnv::default()).is_empty());
    }

    #[test]
    fn v1_and_v2_are_told_apart_by_their_version_answers() {
        // Recorded answers of `docker-compose version` (v1), `docker compose version` (v2
        // plugin), a Docker Desktop build, and `--short`.
        assert_eq!(
            parse_version(
                "docker-compose version 1.29.2, build unknown\ndocker-py version: 5.0.3\n"
            ),
            Some(1)
        );
        assert_eq!(parse_version("Docker Compose version v2.24.5\n"), Some(2));
        assert_eq!(
            parse_version("Docker Compose version v2.27.0-desktop.2\n"),
            Some(2)
        );
        assert_eq!(parse_version("2.29.1\n"), Some(2));
        assert_eq!(
            parse_version("docker: 'compose' is not a docker command.\n"),
            None
        );
        let v1 = (PathBuf::from("/usr/bin/docker-compose"), false, Some(1));
        let v2 = (PathBuf::from("/usr/bin/docker"), true, Some(2));
        let none = (PathBuf::from("/usr/bin/docker"), true, None);
        // The container's own compose version wins; otherwise the first that answered.
        let c = choose(vec![v1.clone(), v2.clone()], Some(2)).unwrap();
        assert!(c.plugin && c.major == 2);
        assert_eq!(c.shown(), "docker compose");
        assert_eq!(choose(vec![v1.clone(), v2], Some(1)).unwrap().major, 1);
        assert_eq!(
            choose(vec![none.clone(), v1], None).unwrap().shown(),
            "docker-compose"
        );
        assert_eq!(
            choose(vec![none], Some(2)),
            None,
            "a docker CLI without the plugin"
        );
    }

    /// `docker compose config` (v2.24) as recorded: top-level `name`, `env_file` resolved into
    /// `environment`, networks spelled out.
    const V2_CONFIG: &str = r#"name: lambda
services:
  lambda-server:
    command:
      - sleep
      - "1000"
    environment:
      CLOUDFLARE_AUD_TAG: '@AUD@'
      LOG_LEVEL: '@LVL@'
      PORT: "8080"
    image: busybox
    networks:
      default: null
networks:
  default:
    name: lambda_default
"#;
    /// `docker-compose config` (v1.29) as recorded.
    const V1_CONFIG: &str = "services:\n  lambda-server:\n    command: sleep 1000\n    environment:\n      CLOUDFLARE_AUD_TAG: '@AUD@'\n      LOG_LEVEL: '@LVL@'\n      PORT: '8080'\n    image: busybox\nversion: '3.9'\n";

    fn snap(cli: &'static str, config: &str, hash: char, aud: &str, level: &str) -> Snapshot {
        let h = hash.to_string().repeat(64);
        let cfg = config.replace("@AUD@", aud).replace("@LVL@", level);
        Snapshot::parse(cli, "lambda-server", &format!("lambda-server {h}\n"), &cfg).unwrap()
    }

    #[test]
    fn the_hash_is_stamped_only_when_only_this_passes_keys_changed() {
        for (cli, config) in [("docker-compose", V1_CONFIG), ("docker compose", V2_CONFIG)] {
            let before = snap(cli, config, 'a', "old", "info");
            assert_eq!(before.env()["PORT"], "8080");
            let after = snap(cli, config, 'b', "new", "info");
            let new_env = |level: &str| {
                vec![
                    "CLOUDFLARE_AUD_TAG=new".to_string(),
                    format!("LOG_LEVEL={level}"),
                    "PORT=8080".into(),
                    "PATH=/bin".into(),
                ]
            };
            let ours = ["CLOUDFLARE_AUD_TAG"];
            let a = "a".repeat(64);
            // Clean: the container matched compose before, and only our key changed.
            assert_eq!(
                decide(Some(&a), &before, &after, &ours, &new_env("info")),
                Verdict::Stamp("b".repeat(64)),
                "{cli}"
            );
            // The container did not match compose's configuration before the write.
            assert_eq!(
                decide(
                    Some(&"c".repeat(64)),
                    &before,
                    &after,
                    &ours,
                    &new_env("info")
                ),
                Verdict::Keep { pending: vec![] },
                "{cli}"
            );
            assert_eq!(
                decide(None, &before, &after, &ours, &new_env("info")),
                Verdict::Keep { pending: vec![] }
            );
            // LOG_LEVEL=debug set in .env before the pass: compose's hash already differed.
            let before_dbg = snap(cli, config, 'd', "old", "debug");
            let after_dbg = snap(cli, config, 'e', "new", "debug");
            assert_eq!(
                decide(Some(&a), &before_dbg, &after_dbg, &ours, &new_env("info")),
                Verdict::Keep {
                    pending: vec!["LOG_LEVEL".into()]
                },
                "{cli}"
            );
            // Changed between the two asks (another key of the .env written meanwhile).
            assert_eq!(
                decide(Some(&a), &before, &after_dbg, &ours, &new_env("info")),
                Verdict::Keep {
                    pending: vec!["LOG_LEVEL".into()]
                },
                "{cli}"
            );
            // Nothing of the configuration's values shows in Debug.
            let shown = format!("{after_dbg:?}");
            assert!(
                !shown.contains("debug") && !shown.contains("new"),
                "{shown}"
            );
        }
    }

    #[test]
    fn only_the_services_64_hex_line_is_taken() {
        let h = "d6fd21".repeat(10) + "abcd";
        assert_eq!(
            parse_hash(&format!("other {h}\napi {h}\n"), "api"),
            Some(h.clone())
        );
        assert_eq!(parse_hash("api short\n", "api"), None);
        assert_eq!(parse_hash(&format!("apix {h}\n"), "api"), None);
    }
}
