//! What the watcher shows its monitoring: the Prometheus metrics, the health verdict, and the
//! small HTTP server (axum, HTTP/1) that serves `GET /healthz` and `GET /metrics`.
//!
//! Owns the counters and the health state; fed one [`Report`] per pass by the loop. It never
//! serves an error message, a configuration value or a secret: /healthz carries only a status,
//! counts, ages and the failed stage.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::reconcile::Action;
use crate::sync::{Report, Stage};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counters, gauges and the health state, shared by the loop and the server.
pub struct Telemetry {
    registry: Registry,
    passes: Family<Labels1, Counter>,
    failures: Family<Labels1, Counter>,
    container_actions: Family<Labels2, Counter>,
    rollbacks: Counter,
    aud_changes: Counter,
    reloads: Family<Labels1, Counter>,
    consecutive_failures: Gauge,
    last_success: FloatGauge,
    last_change: FloatGauge,
    duration: Histogram,
    health: Mutex<Health>,
    notifications: Family<Labels1, Counter>,
    triggers: Family<Labels1, Counter>,
    /// `POST /sync`, and the loop's pass ids.
    pub trigger: super::trigger::Trigger,
    /// The Docker event stream's state (shared with the loop and the stream's task).
    pub follow: Arc<super::events::Follow>,
    /// `GET /status` and the per-binding, per-target metrics.
    pub status: super::status::Status,
}

struct Health {
    started: Instant,
    unhealthy_after: Duration,
    passes: u64,
    last_ok: Option<bool>,
    last_success: Option<Instant>,
    consecutive_failures: u32,
    last_failed_stage: Option<Stage>,
    /// When the last pass ended (any outcome).
    last_pass_end: Option<Instant>,
    /// No pass ended for this long (or since the start): the loop is wedged.
    stuck_after: Duration,
}

#[derive(Debug, Serialize)]
struct HealthBody {
    /// `ok`, `starting`, `degraded` (failing, still within the grace), `failing`, or `stuck`
    /// (no pass has ended for far longer than the schedule allows).
    status: &'static str,
    passes: u64,
    consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_success_age_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_stage: Option<Stage>,
    /// The Docker event stream: `up`, or `down` (reopening with backoff); absent when not
    /// followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'static str>,
}

impl Telemetry {
    pub fn new(unhealthy_after: Duration) -> Telemetry {
        let mut registry = Registry::default();
        let passes = Family::<Labels1, Counter>::default();
        registry.register(
            "audsync_passes",
            "Reconcile passes run, by status (in_sync, changed, written, pending, failed)",
            passes.clone(),
        );
        for status in crate::sync::Status::ALL {
            let _ = passes.get_or_create(&[("status", status.as_str())]);
        }
        let failures = Family::<Labels1, Counter>::default();
        registry.register(
            "audsync_pass_failures",
            "Failed passes, by the stage that failed (lock, source, sink, target)",
            failures.clone(),
        );
        for s in Stage::ALL {
            let _ = failures.get_or_create(&[("stage", s.as_str())]);
        }
        let container_actions = Family::<Labels2, Counter>::default();
        registry.register(
            "audsync_container_actions",
            "Container restarts and recreates, by action and result (done, failed)",
            container_actions.clone(),
        );
        for action in ["restart", "recreate"] {
            for result in ["done", "failed"] {
                let _ = container_actions.get_or_create(&[("action", action), ("result", result)]);
            }
        }
        let rollbacks = Counter::default();
        registry.register(
            "audsync_rollbacks",
            "Container recreates that failed (and were rolled back to the old container)",
            rollbacks.clone(),
        );
        let aud_changes = Counter::default();
        registry.register(
            "audsync_aud_changes",
            "Passes that wrote a new AUD to the sinks",
            aud_changes.clone(),
        );
        let reloads = Family::<Labels1, Counter>::default();
        registry.register(
            "audsync_config_reloads",
            "Configuration reloads (SIGHUP), by result (ok, failed)",
            reloads.clone(),
        );
        for r in ["ok", "failed"] {
            let _ = reloads.get_or_create(&[("result", r)]);
        }
        let consecutive_failures = Gauge::default();
        registry.register(
            "audsync_consecutive_failures",
            "Failed passes in a row (0 after a success)",
            consecutive_failures.clone(),
        );
        let last_success = FloatGauge::default();
        registry.register(
            "audsync_last_success_timestamp_seconds",
            "Unix time of the last pass that did not fail (0: none yet)",
            last_success.clone(),
        );
        let last_change = FloatGauge::default();
        registry.register(
            "audsync_last_change_timestamp_seconds",
            "Unix time of the last AUD change written to the sinks (0: none yet)",
            last_change.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        registry.register(
            "audsync_pass_duration_seconds",
            "How long passes took, lock wait included",
            duration.clone(),
        );
        let notifications = Family::<Labels1, Counter>::default();
        registry.register(
            "audsync_notifications",
            "Notifications sent, by result (sent, failed)",
            notifications.clone(),
        );
        for r in ["sent", "failed"] {
            let _ = notifications.get_or_create(&[("result", r)]);
        }
        let triggers = Family::<Labels1, Counter>::default();
        registry.register(
            "audsync_sync_triggers",
            "POST /sync requests, by result (accepted, unauthorized, limited)",
            triggers.clone(),
        );
        for r in ["accepted", "unauthorized", "limited"] {
            let _ = triggers.get_or_create(&[("result", r)]);
        }
        let build = Family::<Labels1, Gauge>::default();
        registry.register(
            "audsync_build_info",
            "The running audsync version (always 1)",
            build.clone(),
        );
        build
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        let status = super::status::Status::new(&mut registry);
        Telemetry {
            registry,
            passes,
            failures,
            container_actions,
            rollbacks,
            aud_changes,
            reloads,
            consecutive_failures,
            last_success,
            last_change,
            duration,
            notifications,
            triggers,
            trigger: Default::default(),
            follow: Default::default(),
            status,
            health: Mutex::new(Health {
                started: Instant::now(),
                unhealthy_after,
                passes: 0,
                last_ok: None,
                last_success: None,
                consecutive_failures: 0,
                last_failed_stage: None,
                last_pass_end: None,
                stuck_after: Duration::MAX,
            }),
        }
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Account for one finished pass.
    pub fn record(&self, r: &Report, elapsed: Duration) {
        self.status.record(r);
        self.passes
            .get_or_create(&[("status", r.status.as_str())])
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
        let failed = r.status == crate::sync::Status::Failed;
        let now = unix_now();
        if failed {
            let stage = r.stage.unwrap_or(Stage::Source);
            self.failures
                .get_or_create(&[("stage", stage.as_str())])
                .inc();
        } else {
            self.last_success.set(now);
        }
        if r.wrote() {
            self.aud_changes.inc();
            self.last_change.set(now);
        }
        for c in &r.targets {
            let action = match c.action {
                Action::Restart => "restart",
                Action::Recreate => "recreate",
                Action::Rollout => "rollout",
                Action::None => continue,
            };
            let result = match c.result {
                crate::reconcile::TargetResult::Done => "done",
                crate::reconcile::TargetResult::Failed => "failed",
                _ => continue,
            };
            self.container_actions
                .get_or_create(&[("action", action), ("result", result)])
                .inc();
            if c.error.as_ref().is_some_and(|e| e.rolled_back) {
                self.rollbacks.inc();
            }
        }
        let mut h = self.health();
        h.passes += 1;
        h.last_ok = Some(!failed);
        h.last_pass_end = Some(Instant::now());
        if failed {
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            h.last_failed_stage = r.stage;
        } else {
            h.consecutive_failures = 0;
            h.last_failed_stage = None;
            h.last_success = Some(Instant::now());
        }
        self.consecutive_failures
            .set(i64::from(h.consecutive_failures));
    }

    /// Account for one notification delivery.
    pub fn notified(&self, ok: bool) {
        let result = if ok { "sent" } else { "failed" };
        self.notifications
            .get_or_create(&[("result", result)])
            .inc();
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&[("result", result)]).inc();
    }

    pub fn set_unhealthy_after(&self, d: Duration) {
        self.health().unhealthy_after = d;
    }

    /// After this long without a pass ending, /healthz answers 503 `stuck` whatever the last
    /// pass said: a wedged loop must not look healthy for ever.
    pub fn set_stuck_after(&self, d: Duration) {
        self.health().stuck_after = d;
    }

    /// Healthy when the last pass did not fail, or when the last success (or the start, before
    /// any success) is younger than `unhealthy_after`.
    fn verdict(&self) -> (bool, HealthBody) {
        let h = self.health();
        let since = h.last_success.unwrap_or(h.started);
        let young = since.elapsed() < h.unhealthy_after;
        let idle = h.last_pass_end.unwrap_or(h.started).elapsed();
        let (healthy, status) = match (h.last_ok, young) {
            _ if idle > h.stuck_after => (false, "stuck"),
            (Some(true), _) => (true, "ok"),
            (None, true) => (true, "starting"),
            (Some(false), true) => (true, "degraded"),
            (_, false) => (false, "failing"),
        };
        let body = HealthBody {
            status,
            passes: h.passes,
            consecutive_failures: h.consecutive_failures,
            last_success_age_seconds: h.last_success.map(|t| t.elapsed().as_secs()),
            failed_stage: h.last_failed_stage,
            events: self.follow.up().map(|up| if up { "up" } else { "down" }),
        };
        (healthy, body)
    }

    /// The OpenMetrics text exposition (which Prometheus reads).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Serve /healthz and /metrics until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/sync", post(trigger_sync))
        .with_state(telemetry);
    serve_bounded(listener, app, max_connections()).await;
}

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last in all (one request: no keep-alive).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// How many connections may be reading their request head at once: a quarter of the
/// open-files limit, at most 64. When all are taken, the oldest one still reading its head is
/// closed for the new one, so clients that send slowly (or nothing) can hold no slot against a
/// client that sends its request at once (a monitoring probe).
pub fn max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    (soft / 4).clamp(1, 64) as usize
}

/// Slots only `GET /healthz` and `GET /metrics` may take once the others are in use, so that
/// requests to other routes (an unauthenticated `POST /sync` flood) never leave the probes
/// without one.
pub const RESERVED: usize = 4;

/// The address of the client that sent a request.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Connections still reading their request head, oldest first: each with the signal that
/// closes it when a newer one needs the slot.
#[derive(Default)]
struct Pending {
    next: u64,
    queue: std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>,
}

fn pending_lock(p: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serve `app` on `listener`. Three pools:
/// - at most `limit` connections reading their request head, with a header read timeout
///   ([`HEADER_TIMEOUT`]); past it, the oldest such connection is closed for the new one;
/// - at most `limit` requests being handled, plus [`RESERVED`] slots for `/healthz` and
///   `/metrics` only (a request that finds no slot gets 503 at once);
/// - every connection has no keep-alive and an overall bound ([`CONNECTION_TIMEOUT`]); at most
///   `2 * limit + RESERVED` are open at once (a file descriptor each), the rest wait in the
///   kernel's backlog.
///
/// The client's address reaches the handlers as a [`Peer`] extension. A failed accept
/// (EMFILE) is logged and retried after a pause, never a busy loop.
pub async fn serve_bounded(listener: tokio::net::TcpListener, app: Router, limit: usize) {
    use tower::ServiceExt as _;
    let limit = limit.max(1);
    let open = Arc::new(tokio::sync::Semaphore::new(2 * limit + RESERVED));
    let pending = Arc::new(Mutex::new(Pending::default()));
    let handling = Arc::new(tokio::sync::Semaphore::new(limit));
    let reserved = Arc::new(tokio::sync::Semaphore::new(RESERVED));
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "the /healthz and /metrics server cannot accept a connection; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let evict = Arc::new(tokio::sync::Notify::new());
        let id = {
            let mut p = pending_lock(&pending);
            while p.queue.len() >= limit {
                if let Some((_, oldest)) = p.queue.pop_front() {
                    oldest.notify_one();
                }
            }
            p.next += 1;
            let id = p.next;
            p.queue.push_back((id, evict.clone()));
            id
        };
        let (app, pending, handling, reserved) = (
            app.clone(),
            pending.clone(),
            handling.clone(),
            reserved.clone(),
        );
        tokio::spawn(async move {
            let head_done = {
                let pending = pending.clone();
                move || pending_lock(&pending).queue.retain(|(i, _)| *i != id)
            };
            let service = hyper::service::service_fn(
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    head_done();
                    let probe = req.method() == axum::http::Method::GET
                        && matches!(req.uri().path(), "/healthz" | "/metrics");
                    let slot = handling.clone().try_acquire_owned().or_else(|e| {
                        if probe {
                            reserved.clone().try_acquire_owned()
                        } else {
                            Err(e)
                        }
                    });
                    req.extensions_mut().insert(Peer(peer));
                    let app = app.clone();
                    async move {
                        let Ok(slot) = slot else {
                            return Ok::<_, std::convert::Infallible>(
                                (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response(),
                            );
                        };
                        let answer = app.oneshot(req).await;
                        drop(slot);
                        answer
                    }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                _ = evict.notified() => {}
            }
            pending_lock(&pending).queue.retain(|(i, _)| *i != id);
            drop(permit);
        });
    }
}

async fn healthz(State(t): State<Arc<Telemetry>>) -> Response {
    let (healthy, body) = t.verdict();
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// `GET /status` (see [`super::status`]): the trigger token's bearer, when one is set.
async fn status(State(t): State<Arc<Telemetry>>, headers: axum::http::HeaderMap) -> Response {
    let auth = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if !t.trigger.allows_read(auth) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid Authorization: Bearer token is required\n",
        )
            .into_response();
    }
    axum::Json(t.status.doc()).into_response()
}

/// `POST /sync` (see [`super::trigger`]). Logs the outcome, never the header.
async fn trigger_sync(
    State(t): State<Arc<Telemetry>>,
    client: Option<axum::Extension<Peer>>,
    headers: axum::http::HeaderMap,
) -> Response {
    use super::trigger::Verdict;
    let auth = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let ip = client.map(|c| c.0.0.ip());
    let verdict = t.trigger.judge(auth, ip);
    let result = match verdict {
        Verdict::Accepted(_) => "accepted",
        Verdict::Unauthorized => "unauthorized",
        Verdict::Limited(_) => "limited",
        Verdict::NotFound => "",
    };
    if !result.is_empty() {
        t.triggers.get_or_create(&[("result", result)]).inc();
    }
    match verdict {
        Verdict::Accepted(pass) => {
            tracing::info!(pass, "sync triggered over HTTP");
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "status": "accepted", "pass": pass })),
            )
                .into_response()
        }
        Verdict::Unauthorized => {
            tracing::warn!("POST /sync refused: missing or wrong bearer token");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a valid Authorization: Bearer token is required\n",
            )
                .into_response()
        }
        Verdict::Limited(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            "too many requests\n",
        )
            .into_response(),
        // Someone tried the route: say in one line how to turn it on (it reveals nothing a
        // reader of the README does not know).
        Verdict::NotFound => (
            StatusCode::NOT_FOUND,
            "POST /sync is off: set AUDSYNC_TRIGGER_TOKEN (or AUDSYNC_TRIGGER_TOKEN_FILE, or trigger_token_file in audsync.toml) to enable it\n",
        )
            .into_response(),
    }
}

async fn metrics(State(t): State<Arc<Telemetry>>) -> Response {
    match t.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: &'static str, stage: Option<Stage>) -> Report {
        let mut r = Report::from_error(&crate::error::Error::failed("x", None), false);
        r.status = match status {
            "failed" => crate::sync::Status::Failed,
            "changed" => crate::sync::Status::Changed,
            "pending" => crate::sync::Status::Pending,
            _ => crate::sync::Status::InSync,
        };
        r.error = None;
        r.stage = stage;
        r
    }

    #[test]
    fn health_follows_the_last_pass_and_the_grace() {
        let t = Telemetry::new(Duration::from_secs(3600));
        assert_eq!(t.verdict().1.status, "starting");
        t.record(&report("failed", Some(Stage::Source)), Duration::ZERO);
        let (ok, b) = t.verdict();
        assert!(ok && b.status == "degraded" && b.failed_stage == Some(Stage::Source));
        t.set_unhealthy_after(Duration::ZERO);
        let (ok, b) = t.verdict();
        assert!(!ok && b.status == "failing", "{b:?}");
        t.record(&report("in_sync", None), Duration::ZERO);
        let (ok, b) = t.verdict();
        assert!(ok && b.status == "ok", "{b:?}");
    }

    #[test]
    fn a_loop_that_stopped_ending_passes_is_stuck_even_after_a_success() {
        let t = Telemetry::new(Duration::from_secs(3600));
        t.set_stuck_after(Duration::from_millis(50));
        t.record(&report("in_sync", None), Duration::ZERO);
        assert_eq!(t.verdict().1.status, "ok");
        std::thread::sleep(Duration::from_millis(80));
        let (healthy, body) = t.verdict();
        assert_eq!((healthy, body.status), (false, "stuck"));
        t.record(&report("in_sync", None), Duration::ZERO);
        assert_eq!(t.verdict().1.status, "ok", "a pass that ends clears it");
    }

    #[test]
    fn recreate_failures_count_as_rollbacks() {
        let t = Telemetry::new(Duration::from_secs(1));
        let mut r = report("failed", Some(Stage::Target));
        let failed = |rolled_back| crate::reconcile::TargetReport {
            name: "lambda-server".into(),
            action: Action::Recreate,
            reason: String::new(),
            result: crate::reconcile::TargetResult::Failed,
            bindings: vec![],
            error: Some(crate::reconcile::ActionError {
                message: "recreating failed".into(),
                hint: None,
                rolled_back,
                logs: Vec::new(),
            }),
            keeps_old: Default::default(),
            pending: None,
            duration: None,
        };
        // One that was rolled back, one refused before anything changed (e.g. --rm).
        r.targets.push(failed(true));
        r.targets.push(failed(false));
        t.record(&r, Duration::from_millis(10));
        let text = t.encode().unwrap();
        assert!(text.contains("audsync_rollbacks_total 1"), "{text}");
        assert!(
            text.contains(
                r#"audsync_container_actions_total{action="recreate",result="failed"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"audsync_pass_failures_total{stage="target"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
