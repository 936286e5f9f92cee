//! `GET /status`: what `watch` knows of every binding (JSON, `schema` 1), read-only: each
//! binding's AUD prefix (never the whole value), application, last check, last change, last
//! error, each sink's and target's state, and when the next pass is due. Behind the same
//! bearer token as `POST /sync` when one is set. Also the per-binding and per-target metrics,
//! with label sets bounded by [`MAX_SERIES`]: label values are only the names of configured or
//! discovered bindings and of their targets, never anything else a container says.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::sync::Report;

/// At most this many bindings, this many targets and this many (binding, target) pairs get
/// series of their own; the rest are counted under `binding="(other)"` / `target="(other)"`.
pub const MAX_SERIES: usize = 100;
const OTHER: &str = "(other)";

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct BindingStatus {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub key: String,
    /// The first characters of the current AUD (never the whole value).
    pub aud_prefix: Option<String>,
    pub application: Option<String>,
    pub status: String,
    /// Unix seconds of the last pass that looked at it, and of the last value it wrote.
    pub last_check: Option<u64>,
    pub last_change: Option<u64>,
    pub last_error: Option<String>,
    pub sinks: Vec<Part>,
    pub targets: Vec<Part>,
}

/// A sink or target and its state after the last pass.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Part {
    pub name: String,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct StatusDoc {
    pub schema: u32,
    /// Unix seconds when the next pass is due (interval or backoff), when known.
    pub next_pass: Option<u64>,
    pub bindings: Vec<BindingStatus>,
}

pub struct Status {
    doc: Mutex<StatusDoc>,
    last_success: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    changes: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    target_actions: Family<Labels, Counter>,
    target_last_success: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    apply_duration: Family<Labels, Histogram, fn() -> Histogram>,
    named: Mutex<Named>,
}

/// The label values handed out so far: bindings, targets, and (binding, target) pairs.
#[derive(Default)]
struct Named {
    bindings: Vec<String>,
    targets: Vec<String>,
    pairs: Vec<(String, String)>,
}

/// Buckets of a target's apply: 50 ms to about 100 s (a recreate that waits for health).
fn apply_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 12))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The first 8 characters of an AUD.
pub fn prefix(aud: &str) -> String {
    aud.chars().take(8).collect()
}

/// How a target is named where no token guards the reader (`/metrics`, and `/status` when no
/// token is set): a container or service by its name; a command (`command ARGV`) by its
/// program and a hash of the whole argv only, since an operator's argv may carry a credential
/// (a `curl -H 'Authorization: …'`). Two argvs still get two names.
pub(crate) fn public_target(name: &str) -> String {
    let Some(argv) = name.strip_prefix("command ") else {
        return name.to_string();
    };
    let program = argv
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches(['\'', '"'])
        .rsplit('/')
        .next()
        .unwrap_or_default();
    // Stable across runs and versions, so a series keeps its name.
    let hash = crate::tag::fnv1a(argv.as_bytes());
    format!("command {program} #{:08x}", hash >> 32)
}

impl Status {
    pub fn new(registry: &mut Registry) -> Status {
        let s = Status {
            doc: Mutex::new(StatusDoc {
                schema: 1,
                ..StatusDoc::default()
            }),
            last_success: Family::default(),
            changes: Family::default(),
            failures: Family::default(),
            target_actions: Family::default(),
            target_last_success: Family::default(),
            apply_duration: Family::new_with_constructor(apply_histogram),
            named: Mutex::default(),
        };
        registry.register(
            "audsync_binding_last_success_timestamp_seconds",
            "Unix time of the last pass in which the binding was in sync or brought in sync",
            s.last_success.clone(),
        );
        registry.register(
            "audsync_binding_changes",
            "Values written for the binding",
            s.changes.clone(),
        );
        registry.register(
            "audsync_binding_failures",
            "Passes in which the binding failed",
            s.failures.clone(),
        );
        registry.register(
            "audsync_target_actions",
            "Restarts, recreates and rollouts of the target, by result (done, failed)",
            s.target_actions.clone(),
        );
        registry.register(
            "audsync_target_last_success_timestamp_seconds",
            "Unix time of the last pass in which the target ran the current values",
            s.target_last_success.clone(),
        );
        registry.register(
            "audsync_target_apply_duration_seconds",
            "How long the target's restart, recreate, rollout or command took, by binding and target",
            s.apply_duration.clone(),
        );
        s
    }

    /// The label value for `name`: itself while fewer than [`MAX_SERIES`] are named.
    fn label(list: &mut Vec<String>, name: &str) -> String {
        if list.iter().any(|n| n == name) {
            return name.to_string();
        }
        if list.len() < MAX_SERIES {
            list.push(name.to_string());
            return name.to_string();
        }
        OTHER.to_string()
    }

    /// The labels of a (binding, target) pair: both `(other)` once [`MAX_SERIES`] pairs are
    /// named, so the histogram's series stay bounded even when every target serves every
    /// binding.
    fn pair(named: &mut Named, binding: &str, target: &str) -> Labels {
        let b = Self::label(&mut named.bindings, binding);
        let t = Self::label(&mut named.targets, &public_target(target));
        let known = named.pairs.iter().any(|(pb, pt)| *pb == b && *pt == t);
        if !known && named.pairs.len() >= MAX_SERIES {
            return vec![
                ("binding", OTHER.to_string()),
                ("target", OTHER.to_string()),
            ];
        }
        if !known {
            named.pairs.push((b.clone(), t.clone()));
        }
        vec![("binding", b), ("target", t)]
    }

    pub fn set_next_pass(&self, wait: std::time::Duration) {
        self.doc.lock().unwrap_or_else(|p| p.into_inner()).next_pass = Some(now() + wait.as_secs());
    }

    pub fn record(&self, r: &Report) {
        let t = now();
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        let mut doc = self.doc.lock().unwrap_or_else(|p| p.into_inner());
        if r.bindings.is_empty() && r.status == crate::sync::Status::Failed {
            // The pass failed before it judged any binding (the lock, the Cloudflare listing):
            // every binding known keeps its last state, with this failure.
            for b in &mut doc.bindings {
                let labels = vec![("binding", Self::label(&mut named.bindings, &b.id))];
                self.failures.get_or_create(&labels).inc();
                b.status = r.status.as_str().to_string();
                b.last_check = Some(t);
                b.last_error = r.error.clone();
            }
            return;
        }
        let old: BTreeMap<String, BindingStatus> =
            doc.bindings.drain(..).map(|b| (b.id.clone(), b)).collect();
        for b in &r.bindings {
            let prev = old.get(&b.id).cloned().unwrap_or_default();
            let failed = b.status == crate::sync::Status::Failed;
            // A value written to one of its sinks: the pass is `changed` when every target
            // then runs it, `written` when some still does not, even `failed` when one failed.
            let wrote = b
                .sinks
                .iter()
                .any(|s| s.result == crate::reconcile::SinkResult::Written);
            let bl = Self::label(&mut named.bindings, &b.id);
            let labels = vec![("binding", bl)];
            // Both counters exist from the binding's first pass (at 0), so a query over them
            // sees the binding before its first change or failure.
            let (failures, changes) = (
                self.failures.get_or_create(&labels),
                self.changes.get_or_create(&labels),
            );
            if failed {
                failures.inc();
            } else {
                self.last_success.get_or_create(&labels).set(t as f64);
            }
            if wrote {
                changes.inc();
            }
            doc.bindings.push(BindingStatus {
                id: b.id.clone(),
                origin: b.origin.clone(),
                key: b.key.clone(),
                aud_prefix: b.aud.as_deref().map(prefix).or(prev.aud_prefix),
                application: b.app.as_ref().map(|a| a.name.clone()).or(prev.application),
                status: b.status.as_str().to_string(),
                last_check: Some(t),
                last_change: if wrote { Some(t) } else { prev.last_change },
                last_error: if failed { b.error.clone() } else { None },
                sinks: b
                    .sinks
                    .iter()
                    .map(|s| Part {
                        name: format!("{} {}", s.kind, s.target),
                        state: serde_json::to_value(s.result)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    })
                    .collect(),
                targets: r
                    .targets
                    .iter()
                    .filter(|c| b.targets.contains(&c.name))
                    .map(|c| Part {
                        name: public_target(&c.name),
                        state: serde_json::to_value(c.result)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        for c in &r.targets {
            let tl = Self::label(&mut named.targets, &public_target(&c.name));
            let result = match c.result {
                crate::reconcile::TargetResult::Failed => "failed",
                _ => "done",
            };
            if let Some(took) = c.duration {
                for b in &c.bindings {
                    self.apply_duration
                        .get_or_create(&Self::pair(&mut named, b, &c.name))
                        .observe(took.as_secs_f64());
                }
            }
            if c.action != crate::reconcile::Action::None {
                self.target_actions
                    .get_or_create(&vec![
                        ("target", tl.clone()),
                        ("result", result.to_string()),
                    ])
                    .inc();
            }
            // Skipped (its sink failed, or it waits) or planned: it does not run the values.
            let runs_them = matches!(
                c.result,
                crate::reconcile::TargetResult::Done | crate::reconcile::TargetResult::None
            );
            if runs_them {
                self.target_last_success
                    .get_or_create(&vec![("target", tl)])
                    .set(t as f64);
            }
        }
    }

    pub fn doc(&self) -> StatusDoc {
        self.doc.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_target_is_named_by_its_program_and_a_hash_only() {
        let a = public_target("command curl -H 'Authorization: Bearer SECRET1' https://x/");
        let b = public_target("command curl -H 'Authorization: Bearer SECRET2' https://x/");
        assert!(a.starts_with("command curl #"), "{a}");
        assert!(!a.contains("SECRET") && !a.contains("Bearer"), "{a}");
        assert_ne!(a, b, "two argvs, two names");
        assert_eq!(public_target("/usr/bin/true"), "/usr/bin/true");
        assert!(
            public_target("command /usr/bin/systemctl restart x")
                .starts_with("command systemctl #")
        );
    }

    #[test]
    fn label_sets_are_bounded() {
        let mut l = Vec::new();
        for i in 0..MAX_SERIES {
            assert_eq!(Status::label(&mut l, &format!("b{i}")), format!("b{i}"));
        }
        assert_eq!(Status::label(&mut l, "one-more"), OTHER);
        assert_eq!(Status::label(&mut l, "b0"), "b0");
    }

    fn binding(id: &str, status: crate::sync::Status) -> crate::sync::report::BindingReport {
        crate::sync::report::BindingReport {
            id: id.into(),
            origin: None,
            key: "CLOUDFLARE_AUD_TAG".into(),
            aud: Some("0123456789abcdef".into()),
            previous: None,
            app: None,
            sinks: vec![crate::sync::report::SinkLine {
                kind: "env",
                target: "/srv/app/.env".into(),
                key: "CLOUDFLARE_AUD_TAG".into(),
                old: None,
                version: None,
                action: crate::reconcile::WriteAction::Write,
                result: crate::reconcile::SinkResult::Written,
                new_version: None,
                error: None,
            }],
            targets: vec!["t1".into()],
            tunnel: None,
            status,
            error: None,
            hint: None,
            stage: None,
        }
    }

    fn target(result: crate::reconcile::TargetResult) -> crate::reconcile::TargetReport {
        crate::reconcile::TargetReport {
            name: "t1".into(),
            action: crate::reconcile::Action::Restart,
            reason: String::new(),
            result,
            bindings: vec!["b1".into()],
            error: None,
            keeps_old: Default::default(),
            pending: None,
            duration: Some(std::time::Duration::from_millis(300)),
        }
    }

    fn pass(status: crate::sync::Status, targets: Vec<crate::reconcile::TargetReport>) -> Report {
        let mut r = Report::from_error(&crate::error::Error::failed("x", None), false);
        r.status = status;
        r.error = None;
        r.bindings = vec![binding("b1", status)];
        r.targets = targets;
        r
    }

    fn encoded(reg: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, reg).unwrap();
        out
    }

    #[test]
    fn a_pass_that_fails_before_any_binding_keeps_them_with_its_error() {
        let mut reg = Registry::default();
        let s = Status::new(&mut reg);
        // `changed`: written, and every target runs it.
        s.record(&pass(crate::sync::Status::Changed, vec![]));
        let mut r = Report::from_error(
            &crate::error::Error::failed("the listing failed", None),
            false,
        );
        r.stage = Some(crate::sync::Stage::Source);
        s.record(&r);
        let doc = s.doc();
        assert_eq!(doc.bindings.len(), 1, "{doc:?}");
        let b = &doc.bindings[0];
        assert_eq!(b.status, "failed");
        assert!(
            b.last_error
                .as_deref()
                .is_some_and(|e| e.contains("the listing failed")),
            "{b:?}"
        );
        assert_eq!(
            b.aud_prefix.as_deref(),
            Some("01234567"),
            "the last value known is kept"
        );
        assert!(b.last_change.is_some(), "{b:?}");
        assert!(encoded(&reg).contains(r#"audsync_binding_failures_total{binding="b1"} 1"#));
    }

    #[test]
    fn apply_durations_are_observed_per_binding_and_target_and_skipped_targets_are_no_success() {
        use crate::reconcile::TargetResult;
        let mut reg = Registry::default();
        let s = Status::new(&mut reg);
        let mut skipped = target(TargetResult::Skipped);
        skipped.duration = None;
        s.record(&pass(crate::sync::Status::Failed, vec![skipped]));
        let text = encoded(&reg);
        assert!(
            !text.contains(r#"audsync_target_last_success_timestamp_seconds{target="t1"}"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"audsync_target_apply_duration_seconds_count{"#),
            "{text}"
        );
        s.record(&pass(
            crate::sync::Status::Written,
            vec![target(TargetResult::Done)],
        ));
        let text = encoded(&reg);
        assert!(
            text.contains(r#"audsync_target_last_success_timestamp_seconds{target="t1"}"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"audsync_target_apply_duration_seconds_count{binding="b1",target="t1"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"audsync_target_apply_duration_seconds_sum{binding="b1",target="t1"} 0.3"#
            ),
            "{text}"
        );
    }

    #[test]
    fn pairs_of_binding_and_target_are_bounded_too() {
        let mut named = Named::default();
        // 10 bindings x 10 targets: each name is within its own cap, the pairs are not.
        for i in 0..MAX_SERIES {
            let l = Status::pair(&mut named, &format!("b{}", i / 10), &format!("t{}", i % 10));
            assert_eq!(l[0].1, format!("b{}", i / 10));
        }
        let l = Status::pair(&mut named, "b0", "t-new");
        assert_eq!((l[0].1.as_str(), l[1].1.as_str()), (OTHER, OTHER));
        let l = Status::pair(&mut named, "b0", "t0");
        assert_eq!(
            (l[0].1.as_str(), l[1].1.as_str()),
            ("b0", "t0"),
            "a known pair keeps its labels"
        );
    }

    #[test]
    fn the_status_document_keeps_its_schema() {
        let mut reg = Registry::default();
        let s = Status::new(&mut reg);
        s.set_next_pass(std::time::Duration::from_secs(60));
        let mut v = serde_json::to_value(s.doc()).unwrap();
        v["next_pass"] = serde_json::json!(0);
        insta::assert_snapshot!(serde_json::to_string(&v).unwrap(), @r#"{"bindings":[],"next_pass":0,"schema":1}"#);
        let b = serde_json::to_value(BindingStatus {
            sinks: vec![Part {
                name: "env /srv/app/.env".into(),
                state: "written".into(),
            }],
            ..BindingStatus::default()
        })
        .unwrap();
        let keys: Vec<&String> = b.as_object().unwrap().keys().collect();
        insta::assert_snapshot!(format!("{keys:?}"), @r#"["application", "aud_prefix", "id", "key", "last_change", "last_check", "last_error", "sinks", "status", "targets"]"#);
        assert!(prefix("0123456789abcdef").len() == 8);
    }
}
