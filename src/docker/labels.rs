//! What the engine says about labelled objects (for `--discover`) and what happens to them
//! (the event stream `watch` follows). Only facts: names and labels as the engine reports
//! them. Whether a label may be believed is decided by the caller (`sync::discover`), never
//! here; this module never reads a file.

use std::collections::HashMap;

use bollard::query_parameters::{EventsOptions, ListContainersOptions, ListServicesOptions};
use futures_util::{Stream, StreamExt};

use super::Engine;
use crate::reconcile::ActionError;

/// Which kind of engine object carries the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Container,
    SwarmService,
}

/// One container or Swarm service carrying a given label.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Labelled {
    pub kind: Kind,
    /// Its name (without the leading `/`).
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// One event of the stream: enough to decide whether a pass is due.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// `container` or `service`.
    pub kind: String,
    pub action: String,
    /// The object's id (a container's changes with every recreate; its name does not).
    pub id: Option<String>,
    /// The object's name (attribute `name`), when the engine gives it.
    pub name: Option<String>,
    /// The object's labels (container events carry them as attributes).
    pub attributes: HashMap<String, String>,
    /// Seconds since the epoch, for reopening the stream with `since`.
    pub time: Option<i64>,
}

/// The container events that may change what a container runs with or who it is.
pub(crate) const CONTAINER_ACTIONS: &[&str] = &["create", "start", "rename", "destroy"];

impl Engine {
    /// Every container (running or not) and Swarm service carrying `label`. A node that is no
    /// Swarm manager has no services (not an error).
    pub(crate) async fn labelled(&self, label: &str) -> Result<Vec<Labelled>, ActionError> {
        let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .map_err(|e| ActionError {
                logs: Vec::new(),
                rolled_back: false,
                message: format!("could not list the containers labelled {label}: {e}"),
                hint: Some(
                    "check that the Docker daemon is running and reachable (DOCKER_HOST)".into(),
                ),
            })?;
        let mut out: Vec<Labelled> = list
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.into_iter().next()?;
                Some(Labelled {
                    kind: Kind::Container,
                    name: name.trim_start_matches('/').to_string(),
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect();
        if let Ok(services) = self
            .docker
            .list_services(Some(ListServicesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
        {
            out.extend(services.into_iter().filter_map(|s| {
                let spec = s.spec?;
                Some(Labelled {
                    kind: Kind::SwarmService,
                    name: spec.name?,
                    labels: spec.labels.unwrap_or_default(),
                })
            }));
        }
        out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Ok(out)
    }

    /// The labels of Swarm service `id` (service events carry none); `None` when it cannot be
    /// inspected (removed meanwhile, not a manager).
    pub(crate) async fn service_labels(&self, id: &str) -> Option<HashMap<String, String>> {
        let s = self.docker.inspect_service(id, None).await.ok()?;
        s.spec?.labels
    }

    /// The engine's event stream from `since` (seconds since the epoch; `None`: from now):
    /// container create/start/rename/destroy and service updates. It ends when the engine
    /// goes away; an item is an error when the connection fails.
    pub(crate) fn events(
        &self,
        since: Option<i64>,
    ) -> impl Stream<Item = Result<Event, bollard::errors::Error>> + Send + 'static {
        let mut filters = HashMap::new();
        filters.insert(
            "type".to_string(),
            vec!["container".to_string(), "service".to_string()],
        );
        let mut events: Vec<String> = CONTAINER_ACTIONS.iter().map(|s| s.to_string()).collect();
        events.push("update".into());
        filters.insert("event".to_string(), events);
        self.docker
            .events(Some(EventsOptions {
                since: since.map(|s| s.to_string()),
                until: None,
                filters: Some(filters),
            }))
            .map(|r| {
                r.map(|m| {
                    let actor = m.actor.unwrap_or_default();
                    let attributes = actor.attributes.unwrap_or_default();
                    Event {
                        kind: m.typ.map(|t| t.to_string()).unwrap_or_default(),
                        action: m.action.unwrap_or_default(),
                        id: actor.id.filter(|i| !i.is_empty()),
                        name: attributes.get("name").cloned(),
                        attributes,
                        time: m.time,
                    }
                })
            })
    }
}

/// The name a recreate's temporary container stands for (itself for any other name).
pub(crate) fn base_name(name: &str) -> String {
    super::ops::base_name(name)
}
