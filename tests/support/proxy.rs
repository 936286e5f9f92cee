//! A unix-socket proxy in front of the Docker engine's socket that a test controls: it forwards
//! every connection to the engine, and on request drops them all and refuses new ones (what a
//! client sees when the engine restarts), then accepts again. Stopped on drop.

use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    /// What the test asks for: accept (true) or refuse.
    accepting: AtomicBool,
    /// What the acceptor thread does now (it follows `accepting` within a few milliseconds).
    listening: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every forwarded connection, to cut them.
    conns: Mutex<Vec<UnixStream>>,
    accepted: AtomicU64,
}

pub struct SocketProxy {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The engine's socket the proxy forwards to: `DOCKER_HOST` when it is a unix socket, else
/// the default one.
pub fn engine_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

fn forward(mut from: UnixStream, mut to: UnixStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl SocketProxy {
    /// Listen on `path` (a unix socket made here), forwarding to `upstream`.
    pub fn start(path: &Path, upstream: &Path) -> SocketProxy {
        let shared = Arc::new(Shared::default());
        shared.accepting.store(true, Ordering::SeqCst);
        let (s, p, up) = (shared.clone(), path.to_path_buf(), upstream.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut listener: Option<UnixListener> = None;
            while !s.stop.load(Ordering::SeqCst) {
                if !s.accepting.load(Ordering::SeqCst) {
                    // Closed, the socket file left behind: a connect is refused.
                    listener = None;
                    s.listening.store(false, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let l = listener.get_or_insert_with(|| {
                    let _ = std::fs::remove_file(&p);
                    let l = UnixListener::bind(&p).expect("bind the proxy socket");
                    l.set_nonblocking(true).expect("nonblocking");
                    l
                });
                s.listening.store(true, Ordering::SeqCst);
                match l.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(engine) = UnixStream::connect(&up) else {
                            continue;
                        };
                        s.accepted.fetch_add(1, Ordering::SeqCst);
                        let mut conns = s.conns.lock().unwrap();
                        for c in [&client, &engine] {
                            conns.push(c.try_clone().expect("clone a stream"));
                        }
                        let (c2, e2) = (
                            client.try_clone().expect("clone"),
                            engine.try_clone().expect("clone"),
                        );
                        std::thread::spawn(move || forward(client, engine));
                        std::thread::spawn(move || forward(e2, c2));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let proxy = SocketProxy {
            path: path.to_path_buf(),
            shared,
            thread: Some(thread),
        };
        proxy.wait_listening(true);
        proxy
    }

    /// `DOCKER_HOST` for a client of the proxy.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn wait_listening(&self, want: bool) {
        for _ in 0..2000 {
            if self.shared.listening.load(Ordering::SeqCst) == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the proxy did not switch to listening={want}");
    }

    /// Refuse new connections, then cut every open one (both ends).
    pub fn refuse_and_drop_all(&self) {
        self.shared.accepting.store(false, Ordering::SeqCst);
        self.wait_listening(false);
        self.drop_all();
    }

    fn drop_all(&self) {
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accept (and forward) connections again.
    pub fn accept_again(&self) {
        self.shared.accepting.store(true, Ordering::SeqCst);
        self.wait_listening(true);
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.drop_all();
        let _ = std::fs::remove_file(&self.path);
    }
}
