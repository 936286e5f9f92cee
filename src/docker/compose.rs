//! Keeping compose's view of a container right after audsync replaced it.
//!
//! `docker-compose up -d` recreates a container whose `com.docker.compose.config-hash` label
//! differs from the hash it computes for the service now. After the `.env` changed, the hash
//! changes too; a container audsync made with the old label would be recreated once more by the
//! next `up -d`, at an unrelated moment. So the new container gets the hash compose itself
//! prints (`docker-compose config --hash=SERVICE`), run the way `up` was: from the project's
//! `working_dir` label, with `-p PROJECT`, `-f` for each `config_files` entry made absolute,
//! `--env-file` when one was used, and a clean environment (the calling process's variables
//! would beat `.env`). Without a compose CLI, or when it fails, the label is left as it was and
//! a warning says the next `up -d` recreates once. It never guesses a hash, and never prints a
//! value of the environment (compose's output is parsed, not logged).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse};

pub(crate) const PROJECT: &str = "com.docker.compose.project";
pub(crate) const SERVICE: &str = "com.docker.compose.service";
const HASH: &str = "com.docker.compose.config-hash";
const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
const ENV_FILE: &str = "com.docker.compose.project.environment_file";
/// The compose CLI audsync asks (v1, and the standalone v2 binary of the same name).
const CLI: &str = "docker-compose";
/// `config --hash` starts Python and asks the daemon for the image id: seconds, not minutes.
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

/// The compose CLI on `env`'s `PATH`, if any.
pub(crate) fn cli(env: &ComposeEnv) -> Option<PathBuf> {
    env.path.iter().map(|d| d.join(CLI)).find(|p| p.is_file())
}

/// The warning for a compose container replaced while no compose CLI could say the new hash.
pub(crate) fn no_cli_warning(name: &str) -> String {
    format!(
        "no {CLI} on PATH: {name} keeps its old compose config-hash, so the next `docker-compose up -d` recreates it once (install docker-compose where audsync runs to avoid that)"
    )
}

/// Give `body` (the new container of compose container `info`) the config hash compose
/// computes now. Best effort: on any failure the label stays and a warning is logged. The CLI
/// is looked for on `env`'s `PATH` and run with `env`'s variables only.
pub(crate) async fn label_new_hash(
    info: &ContainerInspectResponse,
    body: &mut ContainerCreateBody,
    changes: &[(String, String)],
    env: &ComposeEnv,
) {
    if !is_compose(info) {
        return;
    }
    let name = super::ops::name_of(info, "");
    let Some(cli) = cli(env) else {
        tracing::warn!(container = %name, "{}", no_cli_warning(&name));
        return;
    };
    let vars = env.vars.clone();
    let labels = info
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let Some(args) = hash_args(&labels) else {
        tracing::warn!(container = %name, "its compose labels lack working_dir/config_files: the next `docker-compose up -d` recreates it once");
        return;
    };
    let service = labels.get(SERVICE).cloned().unwrap_or_default();
    let dir = labels.get(WORKING_DIR).cloned().unwrap_or_default();
    let keys: Vec<String> = changes.iter().map(|(k, _)| k.clone()).collect();
    let run = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(cli);
        cmd.current_dir(&dir).args(&args).env_clear();
        cmd.envs(vars.iter().map(|(k, v)| (k, v)));
        for k in &keys {
            cmd.env_remove(k);
        }
        cmd.stdin(std::process::Stdio::null()).output()
    });
    let out = match tokio::time::timeout(CLI_TIMEOUT, run).await {
        Ok(Ok(Ok(o))) => o,
        Ok(Ok(Err(e))) => {
            tracing::warn!(container = %name, error = %e, "cannot run {CLI}: the next `docker-compose up -d` recreates it once");
            return;
        }
        _ => {
            tracing::warn!(container = %name, "{CLI} config --hash did not answer: the next `docker-compose up -d` recreates it once");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    match (out.status.success(), parse_hash(&stdout, &service)) {
        (true, Some(hash)) => {
            tracing::info!(container = %name, hash = %hash, "compose config-hash of the new container");
            body.labels
                .get_or_insert_with(Default::default)
                .insert(HASH.to_string(), hash);
        }
        _ => {
            // Compose's error messages name files and services, not values.
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err.lines().next().unwrap_or_default().to_string();
            tracing::warn!(container = %name, status = %out.status, stderr = %first, "{CLI} config --hash failed: the next `docker-compose up -d` recreates it once");
        }
    }
}

/// `-p P -f /abs/file … [--env-file /abs] config --hash=SERVICE`, from the labels.
fn hash_args(labels: &std::collections::HashMap<String, String>) -> Option<Vec<String>> {
    let project = labels.get(PROJECT)?;
    let service = labels.get(SERVICE)?;
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
    args.push("config".into());
    args.push(format!("--hash={service}"));
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
            hash_args(&labels).unwrap(),
            [
                "-p",
                "lambda",
                "-f",
                "/srv/lambda/docker-compose.yml",
                "-f",
                "/etc/extra.yml",
                "--env-file",
                "/srv/lambda/conf/.env",
                "config",
                "--hash=api"
            ]
        );
        let mut rel = labels.clone();
        rel.insert(WORKING_DIR.into(), "srv".into());
        assert_eq!(
            hash_args(&rel),
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
        assert_eq!(cli(&ComposeEnv::default()), None);
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
