//! `GET /status`: what `watch` knows of every binding (JSON, `schema` 1), read-only: each
//! binding's AUD prefix (never the whole value), application, last check, last change, last
//! error, each sink's and target's state, and when the next pass is due. Behind the same
//! bearer token as `POST /sync` when one is set. Also the per-binding and per-target metrics,
//! with label sets bounded by [`MAX_SERIES`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::sync::Report;

/// At most this many bindings and this many targets get series of their own; the rest are
/// counted under `binding="(other)"` / `target="(other)"`.
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
    named: Mutex<(Vec<String>, Vec<String>)>,
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

    pub fn set_next_pass(&self, wait: std::time::Duration) {
        self.doc.lock().unwrap_or_else(|p| p.into_inner()).next_pass = Some(now() + wait.as_secs());
    }

    pub fn record(&self, r: &Report) {
        let t = now();
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        let mut doc = self.doc.lock().unwrap_or_else(|p| p.into_inner());
        let old: BTreeMap<String, BindingStatus> =
            doc.bindings.drain(..).map(|b| (b.id.clone(), b)).collect();
        for b in &r.bindings {
            let prev = old.get(&b.id).cloned().unwrap_or_default();
            let failed = b.status == crate::sync::Status::Failed;
            let wrote = b.status == crate::sync::Status::Written;
            let bl = Self::label(&mut named.0, &b.id);
            let labels = vec![("binding", bl)];
            if failed {
                self.failures.get_or_create(&labels).inc();
            } else {
                self.last_success.get_or_create(&labels).set(t as f64);
            }
            if wrote {
                self.changes.get_or_create(&labels).inc();
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
                        name: c.name.clone(),
                        state: serde_json::to_value(c.result)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        for c in &r.targets {
            let tl = Self::label(&mut named.1, &c.name);
            let result = match c.result {
                crate::reconcile::TargetResult::Failed => "failed",
                _ => "done",
            };
            if c.action != crate::reconcile::Action::None {
                self.target_actions
                    .get_or_create(&vec![
                        ("target", tl.clone()),
                        ("result", result.to_string()),
                    ])
                    .inc();
            }
            if result == "done" {
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
    fn label_sets_are_bounded() {
        let mut l = Vec::new();
        for i in 0..MAX_SERIES {
            assert_eq!(Status::label(&mut l, &format!("b{i}")), format!("b{i}"));
        }
        assert_eq!(Status::label(&mut l, "one-more"), OTHER);
        assert_eq!(Status::label(&mut l, "b0"), "b0");
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
