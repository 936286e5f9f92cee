//! `audsync watch`: the long-running loop around [`sync::run_pass`] — interval, jitter, backoff,
//! signals, configuration reload — and (in [`http`]) the /healthz and /metrics endpoint.
//!
//! The loop never ends because a pass failed: it logs the failure with its stage, counts it and
//! backs off (see [`next_wait`]). Only invalid configuration at start-up ends it (exit 2), and
//! a stop signal. It never abandons a pass half-way on SIGTERM/SIGINT: it stops after the pass
//! in flight; only a second SIGINT cuts a pass short. It takes the same lock as `sync`, once per
//! pass (inside `run_pass`), so cron, a deploy hook and the watcher never act at once. It never
//! logs a secret: configuration is logged only through types that redact them.

pub(crate) mod events;
pub mod http;
pub(crate) mod status;
pub mod trigger;

use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::Instrument;

pub use crate::config::watch::WatchConfig;
use crate::config::{self, Parsed, SyncConfig, Vars};
use crate::exit;
use crate::sync::Output;
use crate::sync::{self, Report, Status};

/// The longest wait after failed passes, unless `--interval` is longer still.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How often the loop checks its Cloudflare API token (`tokens/verify`) for an expiry within
/// [`crate::cloudflare::EXPIRY_WARNING`].
pub const CREDENTIAL_CHECK_EVERY: Duration = Duration::from_secs(86_400);

/// Warn when the Cloudflare API token of the first API binding expires within 14 days (or is
/// no longer active). One `tokens/verify` request, on its own client (not a pass's request);
/// a failure to check is only logged at debug level: the passes report real failures.
async fn check_credential(cfg: &SyncConfig) {
    let Some(src) = cfg
        .bindings
        .iter()
        .map(|b| &b.source)
        .find(|s| s.edge.is_none() && matches!(s.auth, crate::cloudflare::Auth::Token(_)))
    else {
        return;
    };
    let client = crate::source::client(src);
    match client.verify_token(src.account_id.as_deref()).await {
        Some(Ok(t)) if t.status != "active" => {
            tracing::warn!(status = %t.status, "the Cloudflare API token is not active: create or roll one and update CLOUDFLARE_API_TOKEN");
        }
        Some(Ok(t)) => {
            if let Some(w) = t.expiry_warning(std::time::SystemTime::now()) {
                tracing::warn!("{w}");
            }
        }
        Some(Err(e)) => tracing::debug!(error = %e, "cannot check the Cloudflare API token"),
        None => {}
    }
}

/// When /healthz calls the loop stuck: no pass ended for the longest regular wait (the backoff
/// cap, or the grace) plus 15 minutes, far more than one pass can take (HTTP retries are
/// bounded, a recreate's health wait too).
fn stuck_after(cfg: &WatchConfig) -> Duration {
    let longest_wait = cfg.interval.max(MAX_BACKOFF).max(cfg.unhealthy_after);
    longest_wait.mul_f64(1.0 + cfg.jitter) + Duration::from_secs(15 * 60)
}

/// How long to wait before the next pass: the interval after a success; after the n-th failure
/// in a row, interval x 2^(n-1), at most max(interval, [`MAX_BACKOFF`]). Then `jitter` moves
/// the wait by up to that share either way; `unit` is a uniform random number in [0, 1).
pub fn next_wait(interval: Duration, failures: u32, jitter: f64, unit: f64) -> Duration {
    let base = if failures == 0 {
        interval
    } else {
        let cap = interval.max(MAX_BACKOFF);
        interval
            .saturating_mul(1u32 << (failures - 1).min(20))
            .min(cap)
    };
    let factor = 1.0 + jitter.clamp(0.0, 1.0) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    base.mul_f64(factor.max(0.0))
}

/// Run until stopped. `argv` is the original command line, parsed again on SIGHUP.
pub async fn run(parsed: Parsed, argv: Vec<OsString>) -> u8 {
    let vars = parsed.env.process().clone();
    // Handlers first: a SIGHUP or SIGTERM that arrives early must not kill the process.
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            sync::report_error(
                &format!("cannot install the signal handlers: {e}"),
                None,
                Output::Text,
            );
            return exit::FAILURE;
        }
    };
    let mut cfg = match config::commands::watch_config(&parsed).await {
        Ok(c) => c,
        Err(e) => {
            sync::report_error(&e.to_string(), e.hint().as_deref(), Output::Text);
            return e.exit_code();
        }
    };
    raise_open_files_limit();
    let telemetry = Arc::new(http::Telemetry::new(cfg.unhealthy_after));
    telemetry.set_stuck_after(stuck_after(&cfg));
    telemetry.trigger.set_token(cfg.trigger_token.clone());
    if cfg.trigger_token.is_some() && cfg.listen.is_none() {
        tracing::warn!(
            "AUDSYNC_TRIGGER_TOKEN is set but --listen / AUDSYNC_LISTEN is not: POST /sync is not served"
        );
    }
    if let Some(addr) = cfg.listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let bound = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                tracing::info!(addr = %bound, "serving /healthz and /metrics");
                tokio::spawn(http::serve(listener, telemetry.clone()));
            }
            Err(e) => {
                sync::report_error(
                    &format!("cannot listen on {addr} (--listen / AUDSYNC_LISTEN): {e}"),
                    Some(
                        "pick a free address and port, e.g. 127.0.0.1:9464, or leave --listen unset",
                    ),
                    Output::Text,
                );
                // Not exit 2: a port taken at boot is transient, and systemd's
                // RestartPreventExitStatus=2 would never retry it.
                return exit::FAILURE;
            }
        }
    }
    let follow = telemetry.follow.clone();
    follow.set_interest(events::Interest::of(&cfg.sync));
    if !events::Interest::of(&cfg.sync).is_empty() {
        tokio::spawn(events::follow(cfg.sync.docker_host.clone(), follow.clone()));
    }
    tracing::info!(
        interval = %humantime::format_duration(cfg.interval),
        jitter = cfg.jitter,
        dry_run = cfg.sync.dry_run,
        "watching"
    );

    let mut failures: u32 = 0;
    let mut credential_checked: Option<Instant> = None;
    let mut streak = crate::notify::Streak::default();
    let mut sending = tokio::task::JoinSet::new();
    loop {
        let pass_id = telemetry.trigger.begin();
        let due = follow.take();
        if !due.is_empty() {
            tracing::info!(pass = pass_id, objects = %due.join(", "), "engine events: converging");
        }
        let span = tracing::info_span!("pass", id = pass_id);
        let started = Instant::now();
        let sync_cfg = cfg.sync.clone();
        let mut pass = OffThread::start(
            async move { sync::run_pass_staged(&sync_cfg).await }.instrument(span.clone()),
        );
        let Some(result) = signals.during(pass.result()).await else {
            // Dropped at its next await point, as before; this waits for that.
            pass.cancel().await;
            tracing::warn!(
                pass = pass_id,
                "second SIGINT: stopping now; the pass in flight was cut short (the next run finishes it)"
            );
            flush_notifications(&mut sending).await;
            return exit::INTERRUPTED;
        };
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                let mut r = Report::from_error(&e.error, cfg.sync.dry_run);
                r.stage = Some(e.stage);
                r
            }
        };
        let elapsed = started.elapsed();
        span.in_scope(|| log_pass(&report, elapsed));
        if cfg.sync.output == Output::Json {
            sync::print(&report, Output::Json);
        }
        telemetry.record(&report, elapsed);
        let touched: Vec<String> = report
            .targets
            .iter()
            .filter(|t| t.action != crate::reconcile::Action::None)
            .map(|t| t.name.clone())
            .collect();
        follow.passed(&touched, started, Instant::now());
        let (events, ctx) = streak.next(&report.notice(), Some(pass_id));
        let notify = &cfg.sync.notify;
        if notify.enabled()
            && !cfg.sync.dry_run
            && let Some(event) = notify.pick(&events)
        {
            let m = crate::notify::message(event, &report.notice(), &notify.host, &ctx);
            let (n, t) = (notify.clone(), telemetry.clone());
            sending.spawn(
                async move {
                    for d in crate::notify::send(&n, &m).await {
                        t.notified(d.error.is_none());
                    }
                }
                .instrument(span.clone()),
            );
        }
        while sending.try_join_next().is_some() {}
        failures = if report.status == Status::Failed {
            failures.saturating_add(1)
        } else {
            0
        };

        if signals.stop {
            tracing::info!("stopped after the pass in flight");
            flush_notifications(&mut sending).await;
            return exit::OK;
        }
        // Once a day: does the Cloudflare token expire soon?
        if credential_checked.is_none_or(|t| t.elapsed() >= CREDENTIAL_CHECK_EVERY) {
            credential_checked = Some(Instant::now());
            check_credential(&cfg.sync).await;
        }
        if std::mem::take(&mut signals.reload) {
            reload(&argv, &vars, &mut cfg, &telemetry).await;
            continue;
        }
        let wait = next_wait(cfg.interval, failures, cfg.jitter, fastrand::f64());
        telemetry.status.set_next_pass(wait);
        if failures > 0 {
            tracing::warn!(
                failures,
                retry_in = %humantime::format_duration(round_ms(wait)),
                "pass failed; backing off"
            );
        } else {
            tracing::debug!(next_in = %humantime::format_duration(round_ms(wait)), "waiting");
        }
        match signals.sleep(wait, &telemetry.trigger, &follow).await {
            Wake::Elapsed => {}
            Wake::Events => {}
            Wake::Triggered => tracing::info!("POST /sync: running a pass now"),
            Wake::Stop => {
                tracing::info!("stopped");
                flush_notifications(&mut sending).await;
                return exit::OK;
            }
            Wake::Reload => reload(&argv, &vars, &mut cfg, &telemetry).await,
        }
    }
}

/// Give notifications still in flight a moment to go out before the process ends.
async fn flush_notifications(sending: &mut tokio::task::JoinSet<()>) {
    let all = async { while sending.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(15), all)
        .await
        .is_err()
    {
        tracing::warn!("stopping with notifications still undelivered");
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u64::MAX as u128) as u64)
}

/// One log line for the pass's outcome, plus a warning when the AUD changed.
fn log_pass(r: &Report, elapsed: Duration) {
    let ms = elapsed.as_millis() as u64;
    for b in &r.bindings {
        let wrote = b
            .sinks
            .iter()
            .any(|s| s.result == crate::reconcile::SinkResult::Written);
        if let Some(new) = &b.aud
            && b.sinks
                .iter()
                .any(|s| s.action == crate::reconcile::WriteAction::Write)
        {
            // Only an AUD is logged; any other old value (a password) never is.
            let old = match b.previous.as_deref() {
                Some(v) if crate::reconcile::is_aud(v) => v,
                Some(_) => "(not an AUD)",
                None => "(unset)",
            };
            if wrote {
                tracing::warn!(binding = %b.id, old, new = %new, "AUD changed");
            } else if r.dry_run {
                tracing::warn!(binding = %b.id, old, new = %new, "AUD differs from the sinks (dry run: nothing written)");
            }
        }
    }
    match r.status {
        Status::Failed => tracing::error!(
            status = r.status.as_str(),
            stage = r.stage.map(|s| s.as_str()).unwrap_or("unknown"),
            error = r.error.as_deref().unwrap_or(""),
            hint = r.hint.as_deref().unwrap_or(""),
            duration_ms = ms,
            "pass failed"
        ),
        _ => tracing::info!(
            status = r.status.as_str(),
            changed = r.changed,
            duration_ms = ms,
            "pass done"
        ),
    }
}

/// Parse the original command line again (which re-reads the .env file) and swap the
/// configuration in; on any error keep the old one.
async fn reload(
    argv: &[OsString],
    vars: &Vars,
    cfg: &mut WatchConfig,
    telemetry: &http::Telemetry,
) {
    match reloaded(argv, vars).await {
        Ok(new) => {
            if new.listen != cfg.listen {
                tracing::warn!("--listen / AUDSYNC_LISTEN changed: restart audsync to apply it");
            }
            *cfg = WatchConfig {
                listen: cfg.listen,
                ..new
            };
            telemetry.set_unhealthy_after(cfg.unhealthy_after);
            telemetry
                .follow
                .set_interest(events::Interest::of(&cfg.sync));
            telemetry.trigger.set_token(cfg.trigger_token.clone());
            telemetry.set_stuck_after(stuck_after(cfg));
            telemetry.reloaded(true);
            tracing::info!(
                interval = %humantime::format_duration(cfg.interval),
                "configuration reloaded"
            );
        }
        Err(e) => {
            telemetry.reloaded(false);
            tracing::error!(error = %e, "configuration reload failed; keeping the previous configuration");
        }
    }
}

async fn reloaded(
    argv: &[OsString],
    vars: &Vars,
) -> Result<WatchConfig, config::watch::ReloadError> {
    config::commands::reload_watch(argv, vars).await
}

/// The signals the loop answers, and what they asked for so far.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    /// SIGTERM or SIGINT seen: stop after the pass in flight.
    stop: bool,
    /// SIGHUP seen during a pass: reload after it.
    reload: bool,
}

enum Wake {
    Elapsed,
    /// `POST /sync` asked for a pass.
    Triggered,
    /// Engine events about a target or a labelled container, folded.
    Events,
    Stop,
    Reload,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            stop: false,
            reload: false,
        })
    }

    /// Drive `pass` to its end while noting signals. `None`: a second SIGINT cut it short.
    async fn during<F: std::future::Future>(&mut self, pass: F) -> Option<F::Output> {
        tokio::pin!(pass);
        loop {
            tokio::select! {
                out = &mut pass => return Some(out),
                _ = self.term.recv() => {
                    self.stop = true;
                    tracing::info!("SIGTERM: stopping after the pass in flight");
                }
                _ = self.int.recv() => {
                    if self.stop {
                        return None;
                    }
                    self.stop = true;
                    tracing::info!("SIGINT: stopping after the pass in flight (send it again to stop at once)");
                }
                _ = self.hup.recv() => {
                    self.reload = true;
                    tracing::info!("SIGHUP: reloading the configuration after the pass in flight");
                }
            }
        }
    }

    /// Wait between passes; a stop or reload signal, or a trigger, ends the wait early.
    async fn sleep(
        &mut self,
        d: Duration,
        trigger: &trigger::Trigger,
        follow: &events::Follow,
    ) -> Wake {
        let until = tokio::time::Instant::now() + d;
        loop {
            if trigger.pending() {
                return Wake::Triggered;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Wake::Elapsed,
                _ = self.term.recv() => return Wake::Stop,
                _ = self.int.recv() => return Wake::Stop,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    return Wake::Reload;
                }
                // A wake-up left from a trigger already served is checked again above.
                _ = trigger.woken() => {}
                _ = follow.settled() => return Wake::Events,
            }
        }
    }
}

/// A pass, driven off the runtime's thread, so the disk never blocks the runtime.
///
/// A pass does blocking file work all along its way: the lock, the state file (loads, saves,
/// the journal behind the synchronous `reconcile::Journal` port), the `.env` reads, writes and
/// fsyncs, the leak check. On this current-thread runtime each such call would hold /healthz,
/// /metrics, `POST /sync`, the signal handlers and the notifications until it returned.
/// Rather than wrap each of those calls in `spawn_blocking` (a dozen sites, some behind sync
/// traits, and easy to miss in new code), the whole pass runs on a blocking-pool thread with
/// `Handle::block_on`: its awaits still use this runtime's I/O and timer drivers (driven by
/// the main thread, which sits in `Runtime::block_on` for the whole run), and its disk calls
/// block only that thread. A listener on a runtime of its own would have been as small, but
/// would leave the signals and notifications stuck behind a slow disk.
struct OffThread<T> {
    /// Dropped to cancel the pass at its next await point.
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    /// `None`: cancelled.
    done: tokio::task::JoinHandle<Option<T>>,
}

impl<T: Send + 'static> OffThread<T> {
    fn start(pass: impl std::future::Future<Output = T> + Send + 'static) -> OffThread<T> {
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Handle::current();
        let done = tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                tokio::select! {
                    out = pass => Some(out),
                    _ = cancelled => None,
                }
            })
        });
        OffThread {
            cancel: Some(cancel),
            done,
        }
    }

    /// Wait for the pass to end. A panic in it is carried on here, as when it ran inline.
    async fn result(&mut self) -> T {
        match (&mut self.done).await {
            Ok(Some(out)) => out,
            Ok(None) => unreachable!("only cancel() cancels, and it consumes the pass"),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("the pass was lost: {e}"),
            },
        }
    }

    /// Cut the pass short at its next await point (the same points at which dropping its
    /// future inline did) and wait until it has let go of the lock and files.
    async fn cancel(mut self) {
        drop(self.cancel.take());
        let _ = (&mut self.done).await;
    }
}

/// Raise the soft open-files limit to the hard one (a long-running agent with a listener must
/// not run out of descriptors at a distribution's low default of 1024, or a container's).
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return;
    }
    // The kernel caps RLIMIT_NOFILE at fs.nr_open: an "unlimited" hard limit is not settable.
    let target = lim.maximum.unwrap_or(1 << 20);
    let raised = Rlimit {
        current: Some(target),
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::debug!(from = ?lim.current, to = target, "raised the soft open-files limit")
        }
        Err(e) => tracing::debug!(error = %e, "cannot raise the soft open-files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn success_waits_the_interval_and_failures_double_up_to_the_cap() {
        let i = S * 300;
        assert_eq!(next_wait(i, 0, 0.0, 0.5), i);
        assert_eq!(next_wait(i, 1, 0.0, 0.5), i);
        assert_eq!(next_wait(i, 2, 0.0, 0.5), i * 2);
        assert_eq!(next_wait(i, 3, 0.0, 0.5), i * 4);
        assert_eq!(next_wait(i, 5, 0.0, 0.5), MAX_BACKOFF);
        assert_eq!(next_wait(i, u32::MAX, 0.0, 0.5), MAX_BACKOFF);
        // An interval longer than the cap is never shortened.
        assert_eq!(next_wait(S * 7200, 4, 0.0, 0.5), S * 7200);
    }

    #[test]
    fn jitter_stays_within_its_share_either_way() {
        let i = S * 100;
        assert_eq!(next_wait(i, 0, 0.1, 0.0), S * 90);
        assert_eq!(next_wait(i, 0, 0.1, 0.5), i);
        assert!(next_wait(i, 0, 0.1, 0.999_999) <= S * 110);
        assert!(next_wait(i, 0, 0.1, 0.999_999) > S * 109);
        for _ in 0..1000 {
            let w = next_wait(i, 0, 0.5, fastrand::f64());
            assert!(w >= S * 50 && w <= S * 150, "{w:?}");
        }
    }
}
