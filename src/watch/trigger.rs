//! `POST /sync`: run a pass now. Requires `Authorization: Bearer <AUDSYNC_TRIGGER_TOKEN>`,
//! compared in constant time; rate-limited by one token bucket for the whole endpoint (checked
//! before the token, so guessing is slow too). Triggers that arrive before the next pass starts
//! are one pass: each answers 202 with that pass's id. Without a configured token the route
//! answers 404. Neither the header nor the token is ever logged.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// Burst of requests the endpoint takes, then one per [`REFILL`].
pub const BURST: f64 = 10.0;
pub const REFILL: Duration = Duration::from_secs(6);

/// What a request to `POST /sync` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: the id of the pass that serves it.
    Accepted(u64),
    Unauthorized,
    /// No token configured: the route does not exist.
    NotFound,
    /// Too many requests: retry after this many seconds.
    Limited(u64),
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct Passes {
    /// The id of the last pass started (0: none yet).
    started: u64,
    /// A triggered pass not started yet.
    requested: Option<u64>,
}

/// The trigger state shared by the server and the loop (which takes its pass ids here).
pub struct Trigger {
    token: Mutex<Option<Secret>>,
    bucket: Mutex<Bucket>,
    passes: Mutex<Passes>,
    wake: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger {
            token: Mutex::new(None),
            bucket: Mutex::new(Bucket {
                tokens: BURST,
                last: Instant::now(),
            }),
            passes: Mutex::new(Passes {
                started: 0,
                requested: None,
            }),
            wake: tokio::sync::Notify::new(),
        }
    }
}

/// Equal in time that depends only on the configured token's length.
fn token_eq(presented: &[u8], want: &[u8]) -> bool {
    let mut acc = presented.len().ct_eq(&want.len());
    for (i, w) in want.iter().enumerate() {
        acc &= presented.get(i).copied().unwrap_or(0).ct_eq(w);
    }
    bool::from(acc)
}

impl Trigger {
    pub fn set_token(&self, token: Option<Secret>) {
        *lock(&self.token) = token;
    }

    /// The loop starts a pass: its id. A trigger waiting for it is served by it.
    pub fn begin(&self) -> u64 {
        let mut p = lock(&self.passes);
        p.started += 1;
        p.requested = None;
        p.started
    }

    /// A triggered pass waits to start.
    pub fn pending(&self) -> bool {
        lock(&self.passes).requested.is_some()
    }

    /// Resolves when a trigger arrives (or arrived since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Ask for a pass: the id of the one that will serve it (the next to start).
    pub fn request(&self) -> u64 {
        let mut p = lock(&self.passes);
        if let Some(id) = p.requested {
            return id;
        }
        let id = p.started + 1;
        p.requested = Some(id);
        drop(p);
        self.wake.notify_one();
        id
    }

    fn take_rate(&self) -> Result<(), u64> {
        let mut b = lock(&self.bucket);
        let now = Instant::now();
        let rate = 1.0 / REFILL.as_secs_f64();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(BURST);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    /// Whether a read (`GET /status`) may see: anyone when no token is set, else only with it.
    pub fn allows_read(&self, authorization: Option<&[u8]>) -> bool {
        let token = lock(&self.token).clone();
        let Some(token) = token else {
            return true;
        };
        let presented = authorization.and_then(|h| {
            let (scheme, rest) = h.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| rest.trim_ascii())
        });
        presented.is_some_and(|p| token_eq(p, token.expose().as_bytes()))
    }

    /// Judge one request by its `Authorization` header.
    pub fn judge(&self, authorization: Option<&[u8]>) -> Verdict {
        let token = lock(&self.token).clone();
        let Some(token) = token else {
            return Verdict::NotFound;
        };
        if let Err(secs) = self.take_rate() {
            return Verdict::Limited(secs);
        }
        let presented = authorization.and_then(|h| {
            let (scheme, rest) = h.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| rest.trim_ascii())
        });
        match presented {
            Some(p) if token_eq(p, token.expose().as_bytes()) => Verdict::Accepted(self.request()),
            _ => Verdict::Unauthorized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed() -> Trigger {
        let t = Trigger::default();
        t.set_token(Some(Secret::new("0123456789abcdef-token")));
        t
    }

    #[test]
    fn tokens_are_checked_and_the_route_is_off_without_one() {
        assert_eq!(
            Trigger::default().judge(Some(b"Bearer x")),
            Verdict::NotFound
        );
        let t = armed();
        assert_eq!(t.judge(None), Verdict::Unauthorized);
        assert_eq!(t.judge(Some(b"Bearer wrong")), Verdict::Unauthorized);
        assert_eq!(
            t.judge(Some(b"Bearer 0123456789abcdef-toke")),
            Verdict::Unauthorized
        );
        assert_eq!(
            t.judge(Some(b"Basic 0123456789abcdef-token")),
            Verdict::Unauthorized
        );
        assert_eq!(
            t.judge(Some(b"bearer 0123456789abcdef-token")),
            Verdict::Accepted(1)
        );
    }

    #[test]
    fn triggers_before_a_pass_starts_are_one_pass() {
        let t = armed();
        assert_eq!(t.begin(), 1);
        let a = t.request();
        let b = t.request();
        assert_eq!((a, b), (2, 2));
        assert!(t.pending());
        assert_eq!(t.begin(), 2);
        assert!(!t.pending());
        assert_eq!(
            t.request(),
            3,
            "a trigger during a pass asks for the next one"
        );
    }

    #[test]
    fn the_bucket_limits_bursts() {
        let t = armed();
        for _ in 0..BURST as usize {
            assert_ne!(t.judge(Some(b"Bearer nope")), Verdict::NotFound);
        }
        assert!(matches!(t.judge(Some(b"Bearer nope")), Verdict::Limited(s) if s >= 1));
    }
}
