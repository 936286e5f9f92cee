//! `watch` follows the Docker event stream, so a targeted or labelled container that starts
//! with a stale value is converged within seconds rather than at the next interval.
//!
//! One task holds the stream (container create/start/rename/destroy, service update); an event
//! about something a binding targets (by container name, compose project/service or Swarm
//! service) or a container or Swarm service labelled `audsync.domain` (with `--discover`; a
//! service event carries no labels, so the service's are looked up) marks a pass due. A
//! burst (a whole `up -d`) is folded into one pass after [`QUIET`] without events (at most
//! [`MAX_FOLD`] after the first). Events about the containers a pass just made or replaced are
//! audsync's own and are dropped ([`Follow::passed`]); they are known by id, not by name, so a
//! container someone recreates under the same name right after a pass still asks for one. When the stream ends (the engine restarted) it is
//! reopened with backoff, from the last event's time, so nothing in between is missed; while
//! it is down, /healthz says so. It never decides anything itself: it only asks for a pass.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::config::{BindingTarget, SyncConfig};
use crate::docker::labels::{Event, base_name};

/// Quiet time after the last event of a burst before the pass starts.
pub const QUIET: Duration = Duration::from_millis(1500);
/// The longest a burst can put its pass off.
pub const MAX_FOLD: Duration = Duration::from_secs(10);
/// How long after a pass the events of the containers it made or replaced are still its own.
pub const OWN_EVENTS: Duration = Duration::from_secs(10);
/// At most this many (name, id) pairs remembered between two passes.
const MAX_IDS: usize = 4096;
/// Reopening backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What events are about, to tell whether a pass is due.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Interest {
    containers: BTreeSet<String>,
    compose: BTreeSet<(String, String)>,
    swarm: BTreeSet<String>,
    labelled: bool,
    /// `--discover-scope`: labelled containers outside it are never discovered, so their
    /// events ask for nothing.
    scope: Option<String>,
}

impl Interest {
    pub fn of(cfg: &SyncConfig) -> Interest {
        let mut i = Interest {
            labelled: cfg.discover.is_some(),
            scope: cfg.discover.as_ref().and_then(|d| d.scope.clone()),
            ..Interest::default()
        };
        for t in cfg.bindings.iter().flat_map(|b| &b.targets) {
            match t {
                BindingTarget::Container(c) => {
                    i.containers.insert(c.clone());
                }
                BindingTarget::ComposeService { project, service } => {
                    i.compose.insert((project.clone(), service.clone()));
                }
                BindingTarget::SwarmService(s) => {
                    i.swarm.insert(s.clone());
                }
                BindingTarget::Exec(_) => {}
            }
        }
        i
    }

    /// Nothing to follow: no container, service or label could ever matter.
    pub fn is_empty(&self) -> bool {
        !self.labelled
            && self.containers.is_empty()
            && self.compose.is_empty()
            && self.swarm.is_empty()
    }

    /// Whether a labelled container named `name` (a compose container: its project) is
    /// within `--discover-scope` (as `sync::discover` judges it).
    fn in_scope(&self, name: Option<&str>) -> bool {
        match &self.scope {
            None => true,
            Some(scope) => name.is_some_and(|n| n.starts_with(scope.as_str())),
        }
    }

    /// Whether `e` may leave something a binding targets with a stale value.
    pub fn matches(&self, e: &Event) -> bool {
        let name = e.name.as_deref().map(base_name);
        match e.kind.as_str() {
            "service" => {
                // Service events carry no labels: `follow` adds the service's own.
                (self.labelled
                    && e.attributes
                        .contains_key(crate::config::discover::LABEL_DOMAIN)
                    && self.in_scope(name.as_deref()))
                    || name.is_some_and(|n| self.swarm.contains(&n))
            }
            "container" => {
                let a = &e.attributes;
                (self.labelled
                    && a.contains_key(crate::config::discover::LABEL_DOMAIN)
                    && self.in_scope(
                        a.get("com.docker.compose.project")
                            .map(String::as_str)
                            .or(name.as_deref()),
                    ))
                    || name.is_some_and(|n| self.containers.contains(&n))
                    || match (
                        a.get("com.docker.compose.project"),
                        a.get("com.docker.compose.service"),
                    ) {
                        (Some(p), Some(s)) => self.compose.contains(&(p.clone(), s.clone())),
                        _ => false,
                    }
            }
            _ => false,
        }
    }
}

#[derive(Default)]
struct Inner {
    interest: Interest,
    /// Names of the objects whose events ask for a pass, not served yet (each with its
    /// latest event's time).
    due: std::collections::BTreeMap<String, Instant>,
    /// The first unserved event's time.
    first: Option<Instant>,
    /// The ids of the objects the last pass made or replaced, and until when their events are
    /// its own.
    own: HashMap<String, Instant>,
    /// The (base name, id, time) of the events noted since the last pass ended: which ids a
    /// pass's objects had, learnt from its own events.
    ids: VecDeque<(String, String, Instant)>,
    /// `None`: not following; `Some(false)`: the stream is down.
    up: Option<bool>,
    /// Events seen, and the ones that asked for a pass.
    seen: u64,
    asked: u64,
}

/// The state the stream's task and the loop share.
#[derive(Default)]
pub struct Follow {
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

impl Follow {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_interest(&self, i: Interest) {
        self.lock().interest = i;
    }

    /// Whether labelled objects matter (`--discover`): a service event then needs the
    /// service's labels, which it does not carry.
    fn labelled(&self) -> bool {
        self.lock().interest.labelled
    }

    /// `None`: not following; `Some(false)`: the stream is down (reopening).
    pub fn up(&self) -> Option<bool> {
        self.lock().up
    }

    fn set_up(&self, up: bool) {
        self.lock().up = Some(up);
    }

    /// Note one event; true when it asks for a pass.
    pub fn note(&self, e: &Event, now: Instant) -> bool {
        let mut g = self.lock();
        g.seen += 1;
        if !g.interest.matches(e) {
            return false;
        }
        let name = e.name.as_deref().map(base_name).unwrap_or_default();
        g.own.retain(|_, until| *until > now);
        if let Some(id) = &e.id {
            if g.own.contains_key(id) {
                return false;
            }
            if g.ids.len() >= MAX_IDS {
                g.ids.pop_front();
            }
            g.ids.push_back((name.clone(), id.clone(), now));
        }
        g.asked += 1;
        g.due.insert(name, now);
        g.first.get_or_insert(now);
        drop(g);
        self.wake.notify_one();
        true
    }

    /// A pass is due.
    pub fn pending(&self) -> bool {
        !self.lock().due.is_empty()
    }

    /// A pass ended that replaced or restarted `touched`: the events, until [`OWN_EVENTS`]
    /// from now, of the objects that bore those names during the pass (by id: the containers
    /// it made and the ones it replaced) are its own; everything noted so far is served by it,
    /// except events about other containers that arrived during the pass (a user's `up -d`
    /// meanwhile). A container made later under one of those names is someone else's.
    pub fn passed(&self, touched: &[String], started: Instant, now: Instant) {
        let mut g = self.lock();
        let touched: BTreeSet<String> = touched.iter().map(|t| base_name(t)).collect();
        let ids: Vec<String> = g
            .ids
            .drain(..)
            .filter(|(name, _, at)| *at >= started && touched.contains(name))
            .map(|(_, id, _)| id)
            .collect();
        for id in ids {
            g.own.insert(id, now + OWN_EVENTS);
        }
        for t in &touched {
            g.due.remove(t);
        }
        // Events from before the pass started were served by it.
        g.due.retain(|_, at| *at > started);
        g.first = g.due.values().min().copied();
    }

    /// Wait until a pass is due and the burst is over (quiet for [`QUIET`], or [`MAX_FOLD`]
    /// after its first event).
    pub async fn settled(&self) {
        loop {
            if self.pending() {
                break;
            }
            self.wake.notified().await;
        }
        loop {
            let first = self.lock().first.unwrap_or_else(Instant::now);
            let left = MAX_FOLD.saturating_sub(first.elapsed());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(QUIET.min(left), self.wake.notified()).await {
                Err(_) => return,
                Ok(()) => continue,
            }
        }
    }

    /// Take the due set when the pass starts (the names are for the log).
    pub fn take(&self) -> Vec<String> {
        let mut g = self.lock();
        g.first = None;
        std::mem::take(&mut g.due).into_keys().collect()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Follow the engine at `host` until the process ends, reopening the stream with backoff.
pub async fn follow(host: String, f: std::sync::Arc<Follow>) {
    let mut since: Option<i64> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        let engine = match crate::docker::Engine::connect(&host).await {
            Ok(e) => e,
            Err(e) => {
                if f.up() != Some(false) {
                    tracing::warn!(error = %e.message, "the Docker event stream is down; reopening with backoff");
                }
                f.set_up(false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        // From the last event seen (the same second again: a repeat only asks for a pass
        // already due), or from now on the first opening.
        let from = since.unwrap_or_else(unix_now);
        let mut stream = Box::pin(engine.events(Some(from)));
        if f.up() == Some(false) {
            tracing::info!("the Docker event stream is open again");
        }
        f.set_up(true);
        let opened = Instant::now();
        while let Some(item) = stream.next().await {
            match item {
                Ok(mut e) => {
                    if let Some(t) = e.time {
                        since = Some(t);
                    }
                    if e.kind == "service"
                        && f.labelled()
                        && let Some(id) = e.id.as_deref()
                        && let Some(labels) = engine.service_labels(id).await
                    {
                        for (k, v) in labels {
                            e.attributes.entry(k).or_insert(v);
                        }
                    }
                    if f.note(&e, Instant::now()) {
                        tracing::debug!(kind = %e.kind, action = %e.action, name = e.name.as_deref().unwrap_or(""), "engine event: a pass is due");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the Docker event stream failed");
                    break;
                }
            }
        }
        since.get_or_insert(from);
        f.set_up(false);
        tracing::warn!("the Docker event stream ended (engine restarted?); reopening with backoff");
        if opened.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, name: &str, labels: &[(&str, &str)]) -> Event {
        event_of(kind, name, "id-1", labels)
    }

    fn event_of(kind: &str, name: &str, id: &str, labels: &[(&str, &str)]) -> Event {
        let mut attributes: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes.insert("name".into(), name.into());
        Event {
            kind: kind.into(),
            action: "start".into(),
            id: Some(id.into()),
            name: Some(name.into()),
            attributes,
            time: Some(1),
        }
    }

    fn interest() -> Interest {
        Interest {
            containers: ["web".to_string()].into(),
            compose: [("p".to_string(), "api".to_string())].into(),
            swarm: ["svc".to_string()].into(),
            labelled: true,
            scope: None,
        }
    }

    #[test]
    fn labelled_containers_outside_the_discovery_scope_ask_for_nothing() {
        let i = Interest {
            scope: Some("shop".into()),
            ..interest()
        };
        let domain = ("audsync.domain", "a.example.com");
        assert!(i.matches(&event("container", "shop-api", &[domain])));
        assert!(i.matches(&event(
            "container",
            "x_api_1",
            &[domain, ("com.docker.compose.project", "shop2")]
        )));
        assert!(!i.matches(&event("container", "blog-api", &[domain])));
        assert!(!i.matches(&event(
            "container",
            "shop_api_1",
            &[domain, ("com.docker.compose.project", "blog")]
        )));
        // A binding's own targets are followed whatever the scope.
        assert!(i.matches(&event("container", "web", &[])));
    }

    /// A labelled Swarm service (its labels added to the event by `follow`) asks for a pass
    /// with `--discover`, within the scope; an unlabelled one, or any without `--discover`,
    /// does not.
    #[test]
    fn labelled_swarm_services_ask_for_a_pass_within_the_scope() {
        let domain = ("audsync.domain", "a.example.com");
        let i = Interest {
            scope: Some("shop".into()),
            ..interest()
        };
        assert!(i.matches(&event("service", "shop-api", &[domain])));
        assert!(!i.matches(&event("service", "blog-api", &[domain])));
        assert!(!i.matches(&event("service", "shop-db", &[])));
        let off = Interest {
            labelled: false,
            ..interest()
        };
        assert!(!off.matches(&event("service", "shop-api", &[domain])));
        assert!(
            off.matches(&event("service", "svc", &[])),
            "a target still is"
        );
    }

    #[test]
    fn only_targeted_or_labelled_objects_ask_for_a_pass() {
        let i = interest();
        assert!(i.matches(&event("container", "web", &[])));
        assert!(i.matches(&event(
            "container",
            "p_api_1",
            &[
                ("com.docker.compose.project", "p"),
                ("com.docker.compose.service", "api")
            ]
        )));
        assert!(i.matches(&event(
            "container",
            "x",
            &[("audsync.domain", "a.example.com")]
        )));
        assert!(i.matches(&event("service", "svc", &[])));
        assert!(!i.matches(&event("container", "other", &[])));
        assert!(!i.matches(&event(
            "container",
            "p_db_1",
            &[
                ("com.docker.compose.project", "p"),
                ("com.docker.compose.service", "db")
            ]
        )));
        let unlabelled = Interest {
            labelled: false,
            ..interest()
        };
        assert!(!unlabelled.matches(&event("container", "x", &[("audsync.domain", "a")])));
    }

    #[test]
    fn a_passes_own_replacements_do_not_ask_for_another() {
        let f = Follow::default();
        f.set_interest(interest());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // During the pass: its new container (a temporary name, then `web`), the old one gone.
        f.note(&event_of("container", "web", "old", &[]), at(1));
        f.note(
            &event_of("container", "web-audsync-new-abc123-running", "new", &[]),
            at(1),
        );
        f.note(&event_of("container", "web", "new", &[]), at(2));
        f.passed(&["web".to_string()], t0, at(3));
        assert!(!f.pending());
        // Its events arriving late are its own.
        assert!(!f.note(&event_of("container", "web", "new", &[]), at(4)));
        assert!(!f.note(&event_of("container", "web", "old", &[]), at(4)));
        assert!(!f.pending());
        // Later, a start of `web` is someone else's.
        assert!(f.note(
            &event_of("container", "web", "new", &[]),
            at(3) + OWN_EVENTS * 2
        ));
        assert!(f.pending());
    }

    /// A container recreated by hand (or `up -d --force-recreate` from a stale `.env`) right
    /// after a pass replaced it bears the same name but a new id: it asks for a pass.
    #[test]
    fn a_recreate_by_someone_else_right_after_a_pass_asks_for_one() {
        let f = Follow::default();
        f.set_interest(interest());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        f.note(
            &event_of("container", "web", "made-by-the-pass", &[]),
            at(1),
        );
        f.passed(&["web".to_string()], t0, at(2));
        assert!(!f.note(
            &event_of("container", "web", "made-by-the-pass", &[]),
            at(3)
        ));
        assert!(f.note(&event_of("container", "web", "made-by-a-user", &[]), at(3)));
        assert_eq!(f.take(), vec!["web".to_string()]);
    }

    #[test]
    fn events_before_a_pass_are_served_by_it_and_others_during_it_are_not() {
        let f = Follow::default();
        f.set_interest(interest());
        let t0 = Instant::now();
        f.note(&event("container", "web", &[]), t0);
        f.passed(
            &[],
            t0 + Duration::from_secs(1),
            t0 + Duration::from_secs(2),
        );
        assert!(!f.pending(), "served by the pass that started after it");
        let f = Follow::default();
        f.set_interest(interest());
        f.note(&event("service", "svc", &[]), t0 + Duration::from_secs(3));
        f.passed(
            &["web".into()],
            t0 + Duration::from_secs(1),
            t0 + Duration::from_secs(4),
        );
        assert!(
            f.pending(),
            "an event during the pass about something else asks again"
        );
    }

    #[tokio::test]
    async fn a_burst_is_folded_into_one_pass_after_a_quiet_time() {
        let f = std::sync::Arc::new(Follow::default());
        f.set_interest(interest());
        let started = Instant::now();
        let g = f.clone();
        let waiter = tokio::spawn(async move { g.settled().await });
        for _ in 0..3 {
            f.note(&event("container", "web", &[]), Instant::now());
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!waiter.is_finished(), "not while the burst goes on");
        }
        waiter.await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(600) + QUIET, "{waited:?}");
        assert_eq!(f.take(), vec!["web".to_string()]);
        assert!(!f.pending());
    }
}
