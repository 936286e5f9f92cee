//! Test support: in-process fakes of the external APIs and a harness that runs the binary.
#![allow(dead_code)]

pub mod access;
pub mod cloudflare;
pub mod docker;
pub mod infisical;
pub mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;

/// A tiny HTTP server on 127.0.0.1:0 running on its own thread and runtime, so blocking tests
/// (running the binary) and async tests can both use it. Stopped on drop.
pub struct Server {
    pub url: String,
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start<F, Fut>(handler: F) -> Server
    where
        F: Fn(Request<Body>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(move |req: Request<Body>| {
                    let h = handler.clone();
                    async move { h(req).await }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Server {
            url: format!("http://{addr}"),
            addr,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A scratch directory with a `.env`, and a builder for running the real binary in it with a
/// clean environment (only what the test sets, plus PATH).
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
    /// The lock directory of every run (`AUDSYNC_LOCK_DIR`): never the machine's.
    pub locks: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
            vars: Vec::new(),
            locks: tempfile::tempdir().unwrap(),
        }
    }

    /// A sandbox wired to a fake Cloudflare with the token and account set in the process env.
    pub fn with_cloudflare(cf: &cloudflare::FakeCloudflare) -> Sandbox {
        let mut s = Sandbox::new();
        s.var("CLOUDFLARE_API_URL", &cf.url());
        s.var("CLOUDFLARE_API_TOKEN", cloudflare::TOKEN);
        s.var("CLOUDFLARE_ACCOUNT_ID", cloudflare::ACCOUNT);
        s
    }

    pub fn var(&mut self, k: &str, v: &str) -> &mut Self {
        self.vars.retain(|(kk, _)| kk != k);
        self.vars.push((k.into(), v.into()));
        self
    }

    pub fn unset(&mut self, k: &str) -> &mut Self {
        self.vars.retain(|(kk, _)| kk != k);
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn env_path(&self) -> PathBuf {
        self.path(".env")
    }

    pub fn write_env(&self, content: &str) {
        std::fs::write(self.env_path(), content).unwrap();
    }

    pub fn read_env(&self) -> String {
        std::fs::read_to_string(self.env_path()).unwrap()
    }

    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("audsync").unwrap();
        c.env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        if let Ok(h) = std::env::var("DOCKER_HOST") {
            c.env("DOCKER_HOST", h);
        }
        c.env("AUDSYNC_LOCK_DIR", self.locks.path());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c.current_dir(self.dir.path());
        c.timeout(std::time::Duration::from_secs(120));
        c
    }

    /// Like [`Sandbox::cmd`], but the binary runs under `wrapper` (`setpriv … --`, say): the
    /// wrapper's words, then the binary's path, then the arguments added to the command.
    pub fn cmd_via(&self, wrapper: &[&str]) -> assert_cmd::Command {
        let bin = assert_cmd::cargo::cargo_bin("audsync");
        let mut c = assert_cmd::Command::new(wrapper[0]);
        c.args(&wrapper[1..]).arg(bin);
        c.env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        if let Ok(h) = std::env::var("DOCKER_HOST") {
            c.env("DOCKER_HOST", h);
        }
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c.current_dir(self.dir.path());
        c.timeout(std::time::Duration::from_secs(120));
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The lock a flag-only run with `--env-file <name>` takes first (in the lock directory,
    /// named by the `.env`'s real path, as src/lock.rs names it).
    pub fn flag_lock(&self, env_name: &str) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let real = std::fs::canonicalize(self.path(env_name)).unwrap();
        let h = real
            .as_os_str()
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
        let name = real.file_name().unwrap().to_string_lossy().into_owned();
        self.locks.path().join(format!("run-{name}-{h:016x}.lock"))
    }
}

/// Output of a run, as text, for asserting.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut assert_cmd::Command) -> Run {
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    /// stdout as the one JSON object of `--output json`; panics with the whole run if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}
