//! What a long wait shows: in text mode on a terminal, a spinner naming what is awaited and for
//! how long at most, once the wait has lasted [`SHOW_AFTER`]; otherwise (JSON output, `-q`,
//! stderr not a terminal, `TERM=dumb`) one log line when a wait expected to be long starts, and
//! one when it ends.
//!
//! The hook in the waiting code is one guard: `let _w = progress::wait("…", expected);` held
//! for the wait. Never shows a value, only the label the caller gives.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// Waits shorter than this show nothing.
pub const SHOW_AFTER: Duration = Duration::from_secs(2);

static SPINNER: AtomicBool = AtomicBool::new(false);

/// The spinner on screen, if any: log lines are written around it.
static SHOWN: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

fn shown() -> std::sync::MutexGuard<'static, Option<indicatif::ProgressBar>> {
    SHOWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// stderr for the log lines: a spinner on screen is cleared for the line and drawn again
/// below it, so the two never mix on one line.
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let pb = shown().clone();
        match pb {
            Some(pb) => pb.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The log writer (`tracing_subscriber::fmt().with_writer(progress::stderr)`).
pub fn stderr() -> Stderr {
    Stderr
}

/// Allow the spinner (text output, not `-q`). It is still shown only when stderr is a terminal
/// that is not `TERM=dumb`.
pub fn init(text_output: bool, quiet: bool) {
    SPINNER.store(text_output && !quiet, Ordering::Relaxed);
}

/// Whether a spinner can be drawn now: indicatif hides its stderr target when stderr is not a
/// terminal or TERM is unset or `dumb`.
fn spinner_allowed() -> bool {
    SPINNER.load(Ordering::Relaxed)
        && std::io::stderr().is_terminal()
        && !indicatif::ProgressBar::new_spinner().is_hidden()
}

/// Held for the duration of one wait; dropping it ends the wait.
pub struct Wait {
    label: String,
    started: Instant,
    logged: bool,
    spinner: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// Start a wait for `label` (e.g. "lambda-server to stop") that may take up to `expected`.
pub fn wait(label: impl Into<String>, expected: Duration) -> Wait {
    let label = label.into();
    let up_to = humantime::format_duration(Duration::from_secs(expected.as_secs().max(1)));
    if spinner_allowed() {
        let (tx, rx) = mpsc::channel::<()>();
        let msg = format!("waiting for {label} (up to {up_to})");
        let handle = std::thread::spawn(move || {
            if !matches!(
                rx.recv_timeout(SHOW_AFTER),
                Err(mpsc::RecvTimeoutError::Timeout)
            ) {
                return;
            }
            // Counted from the start of the wait, not from when the spinner appears.
            let pb = indicatif::ProgressBar::new_spinner().with_elapsed(SHOW_AFTER);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            {
                pb.set_style(style);
            }
            pb.set_message(msg);
            pb.enable_steady_tick(Duration::from_millis(120));
            *shown() = Some(pb.clone());
            let _ = rx.recv();
            shown().take();
            pb.finish_and_clear();
        });
        return Wait {
            label,
            started: Instant::now(),
            logged: false,
            spinner: Some((tx, handle)),
        };
    }
    let logged = expected > SHOW_AFTER;
    if logged {
        tracing::info!(up_to = %up_to, "waiting for {label}");
    }
    Wait {
        label,
        started: Instant::now(),
        logged,
        spinner: None,
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.spinner.take() {
            drop(tx);
            let _ = handle.join();
        }
        if self.logged {
            let took = Duration::from_millis(self.started.elapsed().as_millis() as u64);
            tracing::info!(took = %humantime::format_duration(took), "done waiting for {}", self.label);
        }
    }
}
