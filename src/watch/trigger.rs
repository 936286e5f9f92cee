//! `POST /sync`: run a pass now. Requires `Authorization: Bearer <AUDSYNC_TRIGGER_TOKEN>`,
//! compared in constant time, first: a request with the right token is limited by one token
//! bucket of its own, and requests without it by a bucket per client address (so guessing is
//! slow, and a flood of refused requests never costs a real trigger its turn). Triggers that arrive before the next pass starts
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

impl Bucket {
    fn full() -> Bucket {
        Bucket {
            tokens: BURST,
            last: Instant::now(),
        }
    }

    /// Take one token, or say how many seconds until one is there.
    fn take(&mut self) -> Result<(), u64> {
        let now = Instant::now();
        let rate = 1.0 / REFILL.as_secs_f64();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// How many client addresses the unauthenticated limiter remembers; past it, idle (refilled)
/// ones are forgotten, and when none is, every new address shares one bucket.
const CLIENTS: usize = 4096;

/// The buckets of requests without the right token, per client address.
#[derive(Default)]
struct Refused {
    by_client: std::collections::HashMap<Option<std::net::IpAddr>, Bucket>,
}

impl Refused {
    fn take(&mut self, client: Option<std::net::IpAddr>) -> Result<(), u64> {
        if !self.by_client.contains_key(&client) && self.by_client.len() >= CLIENTS {
            let idle = BURST * REFILL.as_secs_f64();
            self.by_client
                .retain(|_, b| b.last.elapsed().as_secs_f64() < idle);
        }
        let key = if self.by_client.len() >= CLIENTS && !self.by_client.contains_key(&client) {
            None
        } else {
            client
        };
        self.by_client
            .entry(key)
            .or_insert_with(Bucket::full)
            .take()
    }
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
    refused: Mutex<Refused>,
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
            bucket: Mutex::new(Bucket::full()),
            refused: Mutex::new(Refused::default()),
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

    /// Judge one request by its `Authorization` header and the client's address. The token is
    /// checked first: the right one draws on the triggers' own bucket, anything else on the
    /// client address's.
    pub fn judge(&self, authorization: Option<&[u8]>, client: Option<std::net::IpAddr>) -> Verdict {
        let token = lock(&self.token).clone();
        let Some(token) = token else {
            return Verdict::NotFound;
        };
        let presented = authorization.and_then(|h| {
            let (scheme, rest) = h.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| rest.trim_ascii())
        });
        let good = presented.is_some_and(|p| token_eq(p, token.expose().as_bytes()));
        if good {
            match lock(&self.bucket).take() {
                Ok(()) => Verdict::Accepted(self.request()),
                Err(secs) => Verdict::Limited(secs),
            }
        } else {
            match lock(&self.refused).take(client) {
                Ok(()) => Verdict::Unauthorized,
                Err(secs) => Verdict::Limited(secs),
            }
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
            Trigger::default().judge(Some(b"Bearer x"), None),
            Verdict::NotFound
        );
        let t = armed();
        assert_eq!(t.judge(None, None), Verdict::Unauthorized);
        assert_eq!(t.judge(Some(b"Bearer wrong"), None), Verdict::Unauthorized);
        assert_eq!(
            t.judge(Some(b"Bearer 0123456789abcdef-toke"), None),
            Verdict::Unauthorized
        );
        assert_eq!(
            t.judge(Some(b"Basic 0123456789abcdef-token"), None),
            Verdict::Unauthorized
        );
        assert_eq!(
            t.judge(Some(b"bearer 0123456789abcdef-token"), None),
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
            assert_ne!(t.judge(Some(b"Bearer nope"), None), Verdict::NotFound);
        }
        assert!(matches!(t.judge(Some(b"Bearer nope"), None), Verdict::Limited(s) if s >= 1));
    }

    #[test]
    fn refused_requests_never_cost_a_real_trigger_its_turn() {
        let t = armed();
        let flood = Some(std::net::IpAddr::from([192, 0, 2, 7]));
        for _ in 0..3 * BURST as usize {
            assert_ne!(t.judge(None, flood), Verdict::NotFound);
        }
        assert!(matches!(
            t.judge(Some(b"Bearer nope"), flood),
            Verdict::Limited(_)
        ));
        // The real trigger, from the same address or another, is served.
        assert_eq!(
            t.judge(Some(b"Bearer 0123456789abcdef-token"), flood),
            Verdict::Accepted(1)
        );
        // Another client's guesses have a bucket of their own.
        let other = Some(std::net::IpAddr::from([192, 0, 2, 8]));
        assert_eq!(t.judge(None, other), Verdict::Unauthorized);
    }
}
