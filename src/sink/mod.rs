//! Sinks: the places the AUD is written to so the server can read it (`.env`, Infisical).
//!
//! Each sink reads its current value, says whether a write is needed, and writes. A sink never
//! restarts anything and never decides ordering: that is `reconcile`'s job.

pub mod envfile;
pub mod infisical;

use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;

pub use envfile::{EnvFileSink, WriteMode};
pub use infisical::InfisicalSink;

/// Which kind of sink, as named on the command line (`--sink env,infisical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// The `.env` file given by --env-file.
    Env,
    /// An Infisical secret (INFISICAL_* settings).
    Infisical,
}

/// What a sink is, for plans, logs and JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkInfo {
    pub kind: &'static str,
    /// A path, or `project/environment/path` for Infisical.
    pub target: String,
    pub key: String,
}

/// What a sink holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub current: Option<String>,
    /// False only when the sink already holds exactly the desired value everywhere.
    pub needs_write: bool,
    /// The secret version, for sinks that have one.
    pub version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum WriteOutcome {
    Unchanged,
    Written {
        version: Option<u64>,
    },
    /// The write is held back for approval (Infisical change policies): the value is not live.
    PendingApproval {
        detail: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    EnvFile { path: PathBuf, message: String },
    #[error("Infisical: {message}")]
    Infisical {
        message: String,
        hint: Option<String>,
        /// Infisical did not answer (connect failure, timeout), as opposed to answering "no".
        unreachable: bool,
    },
}

impl Error {
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::EnvFile { .. } => None,
            Error::Infisical { hint, .. } => hint.clone(),
        }
    }

    /// True when the system did not answer at all (not when it refused or failed).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Infisical {
                unreachable: true,
                ..
            }
        )
    }
}

/// The interface `reconcile` drives.
pub trait Sink: Send {
    fn info(&self) -> SinkInfo;
    fn observe(&mut self, desired: &str)
    -> impl Future<Output = Result<Observation, Error>> + Send;
    fn write(&mut self, desired: &str) -> impl Future<Output = Result<WriteOutcome, Error>> + Send;
}

/// Every sink the binary knows, behind one type.
#[derive(Debug)]
pub enum AnySink {
    Env(EnvFileSink),
    Infisical(Box<InfisicalSink>),
}

impl Sink for AnySink {
    fn info(&self) -> SinkInfo {
        match self {
            AnySink::Env(s) => s.info(),
            AnySink::Infisical(s) => s.info(),
        }
    }

    async fn observe(&mut self, desired: &str) -> Result<Observation, Error> {
        match self {
            AnySink::Env(s) => s.observe(desired),
            AnySink::Infisical(s) => s.observe(desired).await,
        }
    }

    async fn write(&mut self, desired: &str) -> Result<WriteOutcome, Error> {
        match self {
            AnySink::Env(s) => s.write(desired),
            AnySink::Infisical(s) => s.write(desired).await,
        }
    }
}
