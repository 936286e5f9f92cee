//! The errors of `docker/`: one enum, variants by kind, so that a retry, a fallback or a
//! rollback is decided by matching a variant (or bollard's status code), never by reading a
//! message. The texts are the ones users see in reports.

use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::ServiceUpdateStatusStateEnum;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The engine could not be reached, or the connection broke off (`what`: the call).
    #[error("{what}: {source}")]
    Unreachable {
        what: String,
        #[source]
        source: BollardError,
    },
    /// The engine knows no such object (404).
    #[error("{what}: {source}")]
    NotFound {
        what: String,
        #[source]
        source: BollardError,
    },
    /// The engine refused the call as conflicting with the object's state (409).
    #[error("{what}: {source}")]
    Conflict {
        what: String,
        #[source]
        source: BollardError,
    },
    /// The engine answered another error status.
    #[error("{what}: {source}")]
    Status {
        what: String,
        status: u16,
        #[source]
        source: BollardError,
    },
    /// The engine did not answer in time (bollard's request timeout).
    #[error("{what}: {source}")]
    Timeout {
        what: String,
        #[source]
        source: BollardError,
    },
    /// The engine's answer could not be read.
    #[error("{what}: {source}")]
    Parse {
        what: String,
        #[source]
        source: BollardError,
    },
    /// The raw Swarm calls (see `swarm::raw`) need the engine's unix socket.
    #[error(
        "Swarm service updates go through the engine's unix socket; DOCKER_HOST={host} is not one"
    )]
    NotUnixSocket { host: String },
    /// The service as inspected carries no version index to update it at.
    #[error("the engine gave no version index")]
    NoVersion,
    /// The state file (the recreate journal) could not be read or written.
    #[error(transparent)]
    State(#[from] crate::state::Error),
    /// The new container stopped.
    #[error("the new container exited (code {code})")]
    Exited { code: i64 },
    /// The new container stopped and its restart policy started it again.
    #[error("the new container exited and was restarted by its restart policy")]
    Restarted,
    /// The new container's healthcheck said `unhealthy` (`within`: the explicit bound it had).
    #[error(
        "the new container became unhealthy{} (last check: {last_check})",
        .within.map(|b| format!(" and was not healthy within {}", humantime::format_duration(b))).unwrap_or_default()
    )]
    Unhealthy {
        within: Option<Duration>,
        last_check: String,
    },
    /// The new container was not `healthy` within the bound.
    #[error("the new container was not healthy within {}", humantime::format_duration(*.0))]
    NotHealthy(Duration),
    /// A recovery found the name held by a container its journal does not name: it is
    /// never started, renamed or removed.
    #[error(
        "the name {name} is held by container {id}, which this apply's journal does not name (audsync did not create it): it is left alone"
    )]
    NameTaken { name: String, id: String },
    /// A recovery found neither the old container nor the new one of its journal.
    #[error("neither the old container ({old}) nor the new one exists any more")]
    BothGone { old: String },
    /// After a recovery acted, what it sees is not what it meant to leave.
    #[error("after recovering, {0}")]
    Unverified(String),
    /// Swarm paused or rolled back an update (a new task failed).
    #[error(
        "Swarm stopped the update ({state}: {message}){}",
        .failed_task.as_ref().map(|t| format!("; a new task failed: {t}")).unwrap_or_default()
    )]
    SwarmStopped {
        state: ServiceUpdateStatusStateEnum,
        message: String,
        failed_task: Option<String>,
    },
    /// A Swarm update did not complete within the bound.
    #[error(
        "the update did not complete within {} (state {})",
        humantime::format_duration(*.bound),
        .state.map(|s| s.to_string()).unwrap_or_else(|| "none".into())
    )]
    SwarmTimeout {
        bound: Duration,
        state: Option<ServiceUpdateStatusStateEnum>,
    },
    /// A previous run found the update failed and was rolling it back when it stopped.
    #[error("the update had failed; a previous run was rolling it back")]
    FailedBefore,
    /// Swarm paused the rollback to the previous spec.
    #[error("Swarm paused the rollback")]
    RollbackPaused,
    /// A failed Swarm update to roll back, with no earlier value known (no running task and no
    /// previous spec carries one).
    #[error("no earlier value is known to roll back to")]
    NothingToRollBackTo,
    /// Neither `docker-compose` nor `docker compose` is on the PATH audsync runs with.
    #[error("no docker-compose (v1) or `docker compose` (v2) on PATH")]
    ComposeMissing,
    /// The container's compose labels do not say how `up` was run.
    #[error("its compose labels lack an absolute working_dir or config_files")]
    ComposeLabels,
    /// The compose CLI could not be started.
    #[error("cannot run {cli}: {source}")]
    ComposeRun {
        cli: String,
        #[source]
        source: std::io::Error,
    },
    /// The compose CLI did not answer in time.
    #[error("{cli} did not answer within {}", humantime::format_duration(*.within))]
    ComposeTimeout { cli: String, within: Duration },
    /// The compose CLI failed (`stderr`: its first line, which names files and services,
    /// never values).
    #[error("`{cli} {what}` failed ({status}): {stderr}")]
    ComposeFailed {
        cli: String,
        what: &'static str,
        status: String,
        stderr: String,
    },
    /// The compose CLI's answer could not be read.
    #[error("cannot read the answer of `{cli} {what}`: {why}")]
    ComposeAnswer {
        cli: String,
        what: &'static str,
        why: String,
    },
}

impl Error {
    /// A failed engine call (`what`: the call, as the message starts), by the kind of failure.
    pub(crate) fn engine(what: impl Into<String>, source: BollardError) -> Error {
        let what = what.into();
        match &source {
            BollardError::DockerResponseServerError {
                status_code: 404, ..
            } => Error::NotFound { what, source },
            BollardError::DockerResponseServerError {
                status_code: 409, ..
            } => Error::Conflict { what, source },
            BollardError::DockerResponseServerError { status_code, .. } => Error::Status {
                what,
                status: *status_code,
                source,
            },
            BollardError::RequestTimeoutError => Error::Timeout { what, source },
            BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
                Error::Parse { what, source }
            }
            _ => Error::Unreachable { what, source },
        }
    }

    /// The engine's status and message, when it answered with an error status.
    pub(crate) fn answer(&self) -> Option<(u16, &str)> {
        match self {
            Error::NotFound { source, .. }
            | Error::Conflict { source, .. }
            | Error::Status { source, .. } => match source {
                BollardError::DockerResponseServerError {
                    status_code,
                    message,
                } => Some((*status_code, message.as_str())),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_are_sorted_by_kind_and_keep_their_text() {
        let status = |code: u16| BollardError::DockerResponseServerError {
            status_code: code,
            message: "m".into(),
        };
        let e = Error::engine("cannot inspect x", status(404));
        assert!(matches!(e, Error::NotFound { .. }));
        assert_eq!(
            e.to_string(),
            "cannot inspect x: Docker responded with status code 404: m"
        );
        assert!(matches!(
            Error::engine("x", status(409)),
            Error::Conflict { .. }
        ));
        let e = Error::engine("x", status(500));
        assert!(matches!(e, Error::Status { status: 500, .. }));
        assert_eq!(e.answer(), Some((500, "m")));
        assert!(matches!(
            Error::engine("x", BollardError::RequestTimeoutError),
            Error::Timeout { .. }
        ));
        assert!(matches!(
            Error::engine("x", std::io::Error::other("gone").into()),
            Error::Unreachable { .. }
        ));
    }

    #[test]
    fn health_texts_are_unchanged() {
        let bound = Duration::from_secs(5);
        assert_eq!(
            Error::Unhealthy {
                within: Some(bound),
                last_check: "boom".into()
            }
            .to_string(),
            "the new container became unhealthy and was not healthy within 5s (last check: boom)"
        );
        assert_eq!(
            Error::Unhealthy {
                within: None,
                last_check: "boom".into()
            }
            .to_string(),
            "the new container became unhealthy (last check: boom)"
        );
        assert_eq!(
            Error::NotHealthy(bound).to_string(),
            "the new container was not healthy within 5s"
        );
    }
}
