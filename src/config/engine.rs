//! `--engine`: which container engine audsync looks for when `DOCKER_HOST` is not set, and
//! where Podman's Docker-compatible socket is.
//!
//! Owns the socket search only; the engine itself is reached by `docker/` at the address
//! [`super::docker_host`] returns. Nothing here connects to anything: a socket that exists is
//! taken (systemd's socket activation keeps the file there while the service sleeps).

use std::path::Path;

use crate::error::Error;

use super::Env;

/// The engine named by `--engine` / AUDSYNC_ENGINE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

/// Podman's rootful socket (`podman.socket`, `podman system service` as root).
pub const PODMAN_ROOTFUL: &str = "/run/podman/podman.sock";

/// Where Podman's socket may be, most likely first: a rootless user's own
/// (`$XDG_RUNTIME_DIR/podman/podman.sock`, else `/run/user/UID/…`) before the rootful one;
/// root looks at the rootful one first.
pub fn podman_candidates(uid: Option<u32>, xdg_runtime_dir: Option<&str>) -> Vec<String> {
    let mut rootless = Vec::new();
    if let Some(dir) = xdg_runtime_dir.filter(|d| d.starts_with('/')) {
        rootless.push(format!("{}/podman/podman.sock", dir.trim_end_matches('/')));
    }
    if let Some(uid) = uid.filter(|u| *u != 0) {
        let p = format!("/run/user/{uid}/podman/podman.sock");
        if !rootless.contains(&p) {
            rootless.push(p);
        }
    }
    let mut all = Vec::new();
    if uid == Some(0) {
        all.push(PODMAN_ROOTFUL.to_string());
        all.extend(rootless);
    } else {
        all.extend(rootless);
        all.push(PODMAN_ROOTFUL.to_string());
    }
    all
}

/// `unix://` + the first of `candidates` that `exists`; a usage error naming them all, with how
/// to start Podman's socket, when none does.
pub fn pick_podman_socket(
    candidates: &[String],
    exists: impl Fn(&str) -> bool,
) -> Result<String, Error> {
    match candidates.iter().find(|c| exists(c)) {
        Some(c) => Ok(format!("unix://{c}")),
        None => Err(Error::usage(format!(
            "--engine podman: no Podman socket found (looked at {}); start it (rootful: \
             `systemctl enable --now podman.socket`; rootless: `systemctl --user enable --now \
             podman.socket`; without systemd: `podman system service --time=0 \
             unix:///run/podman/podman.sock &`), or set DOCKER_HOST=unix:///path/to/podman.sock",
            candidates.join(", ")
        ))),
    }
}

/// Podman's socket for this process (see [`podman_candidates`]).
pub fn podman_host(env: &Env) -> Result<String, Error> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    let xdg = env.process().get("XDG_RUNTIME_DIR");
    let candidates = podman_candidates(uid, xdg);
    pick_podman_socket(&candidates, |p| Path::new(p).exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Vars, docker_host};

    #[test]
    fn rootless_sockets_come_first_for_a_user_and_last_for_root() {
        assert_eq!(
            podman_candidates(Some(1000), Some("/run/user/1000")),
            [
                "/run/user/1000/podman/podman.sock",
                "/run/podman/podman.sock"
            ]
        );
        assert_eq!(
            podman_candidates(Some(1000), Some("/tmp/xdg/")),
            [
                "/tmp/xdg/podman/podman.sock",
                "/run/user/1000/podman/podman.sock",
                "/run/podman/podman.sock"
            ]
        );
        assert_eq!(
            podman_candidates(Some(0), Some("/run/user/0")),
            ["/run/podman/podman.sock", "/run/user/0/podman/podman.sock"]
        );
        assert_eq!(
            podman_candidates(Some(1000), Some("relative")),
            [
                "/run/user/1000/podman/podman.sock",
                "/run/podman/podman.sock"
            ],
            "a relative XDG_RUNTIME_DIR is ignored"
        );
    }

    #[test]
    fn the_first_socket_that_exists_is_taken_and_none_is_a_usage_error() {
        let c = podman_candidates(Some(1000), Some("/x"));
        assert_eq!(
            pick_podman_socket(&c, |p| p == PODMAN_ROOTFUL).unwrap(),
            "unix:///run/podman/podman.sock"
        );
        assert_eq!(
            pick_podman_socket(&c, |_| true).unwrap(),
            "unix:///x/podman/podman.sock"
        );
        let e = pick_podman_socket(&c, |_| false).unwrap_err();
        assert!(matches!(e, Error::Usage { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("/x/podman/podman.sock") && text.contains("podman.socket"),
            "{text}"
        );
    }

    #[test]
    fn engine_podman_looks_for_podman_and_docker_host_wins_when_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("podman")).unwrap();
        let sock = dir.path().join("podman/podman.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let xdg = dir.path().to_str().unwrap().to_string();
        let mut env = Env::new(Vars::from_pairs([("XDG_RUNTIME_DIR", xdg.as_str())]));
        env.engine = Some(Engine::Podman);
        // Root may find the rootful socket first; either way a Podman socket, never Docker's.
        let host = docker_host(&env).unwrap();
        assert!(
            host == format!("unix://{}", sock.display())
                || host == "unix:///run/podman/podman.sock",
            "{host}"
        );
        let mut env = Env::new(Vars::from_pairs([
            ("XDG_RUNTIME_DIR", xdg.as_str()),
            ("DOCKER_HOST", "unix:///elsewhere.sock"),
        ]));
        env.engine = Some(Engine::Podman);
        assert_eq!(docker_host(&env).unwrap(), "unix:///elsewhere.sock");
        let mut env = Env::new(Vars::from_pairs::<&str, &str>([]));
        env.engine = Some(Engine::Docker);
        assert_eq!(
            docker_host(&env).unwrap(),
            crate::config::DEFAULT_DOCKER_HOST
        );
    }
}
