//! Sinks: the places the AUD is written to so the server can read it (`.env`, Infisical).
//!
//! Each sink reads its current value, says whether a write is needed, and writes. A sink never
//! restarts anything and never decides ordering: that is `reconcile`'s job.

pub mod env;
pub(crate) mod infisical;

/// The old path of [`env`], kept while callers move (src/config is being rewritten).
pub(crate) use env as envfile;

use serde::Serialize;

use crate::reconcile;

pub(crate) use env::EnvFileSink;
pub use env::WriteMode;
pub(crate) use infisical::InfisicalSink;

/// Which kind of sink, as named on the command line (`--sink env,infisical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// The `.env` file given by --env-file.
    Env,
    /// An Infisical secret (INFISICAL_* settings).
    Infisical,
}

/// What one key of a sink is, for logs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct SinkInfo {
    pub(crate) kind: &'static str,
    /// A path, or `project/environment/path` for Infisical.
    pub(crate) target: String,
    pub(crate) key: String,
}

/// What a sink holds now for one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Observation {
    pub(crate) current: Option<String>,
    /// False only when the sink already holds exactly the desired value everywhere.
    pub(crate) needs_write: bool,
    /// The secret version, for sinks that have one.
    pub(crate) version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum WriteOutcome {
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
pub(crate) enum Error {
    /// The `.env` file sink; the message starts with the file's path.
    #[error(transparent)]
    EnvFile(#[from] env::Error),
    #[error("Infisical: {message}")]
    Infisical {
        message: String,
        hint: Option<String>,
        /// Infisical did not answer (connect failure, timeout), as opposed to answering "no".
        unreachable: bool,
    },
}

impl Error {
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            Error::EnvFile(_) => None,
            Error::Infisical { hint, .. } => hint.clone(),
        }
    }

    /// True when the system did not answer at all (not when it refused or failed).
    #[cfg(test)]
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Infisical {
                unreachable: true,
                ..
            }
        )
    }
}

/// Every sink the binary knows, behind one type, as `reconcile` drives it: one `.env` file
/// (all its keys in one write), or one Infisical folder (one secret per key).
#[derive(Debug)]
pub(crate) enum AnySink {
    Env(EnvFileSink),
    Infisical(Vec<InfisicalSink>),
}

fn port_error(e: Error) -> reconcile::SinkError {
    reconcile::SinkError {
        hint: e.hint(),
        message: e.to_string(),
    }
}

impl AnySink {
    /// The Infisical writes held for approval as this pass leaves them.
    pub(crate) fn pending(&self) -> Vec<crate::state::PendingWrite> {
        match self {
            AnySink::Env(_) => vec![],
            AnySink::Infisical(v) => v.iter().filter_map(|s| s.pending().cloned()).collect(),
        }
    }
}

impl reconcile::Sink for AnySink {
    fn info(&self) -> reconcile::SinkInfo {
        match self {
            AnySink::Env(s) => reconcile::SinkInfo {
                kind: "env",
                target: s.path.display().to_string(),
            },
            AnySink::Infisical(v) => {
                let i = v.first().map(|s| s.info());
                reconcile::SinkInfo {
                    kind: "infisical",
                    target: i.map(|i| i.target).unwrap_or_default(),
                }
            }
        }
    }

    async fn observe(
        &mut self,
        desired: &reconcile::Values,
    ) -> Result<reconcile::SinkObservation, reconcile::SinkError> {
        match self {
            AnySink::Env(s) => s.observe_all(desired).map_err(|e| port_error(e.into())),
            AnySink::Infisical(v) => {
                let mut out = reconcile::SinkObservation::new();
                for s in v.iter_mut() {
                    let key = s.info().key;
                    let Some(want) = desired.get(&key) else {
                        continue;
                    };
                    let o = s.observe(want).await.map_err(port_error)?;
                    out.insert(
                        key,
                        reconcile::KeyObservation {
                            current: o.current,
                            needs_write: o.needs_write,
                            version: o.version,
                        },
                    );
                }
                Ok(out)
            }
        }
    }

    async fn write(
        &mut self,
        desired: &reconcile::Values,
    ) -> Result<reconcile::WriteOutcome, reconcile::SinkError> {
        match self {
            AnySink::Env(s) => {
                #[cfg(debug_assertions)]
                test_hook::hold_write();
                s.write_all(desired)
                    .map_err(|e| port_error(e.into()))
                    .map(|w| match w {
                        WriteOutcome::Unchanged => reconcile::WriteOutcome::Unchanged,
                        _ => reconcile::WriteOutcome::Written {
                            versions: Default::default(),
                        },
                    })
            }
            AnySink::Infisical(v) => {
                // One secret per key; a held or failed one stops the folder's later keys.
                let mut versions = std::collections::BTreeMap::new();
                let mut wrote = false;
                for s in v.iter_mut() {
                    let key = s.info().key;
                    let Some(want) = desired.get(&key) else {
                        continue;
                    };
                    match s.write(want).await.map_err(port_error)? {
                        WriteOutcome::Unchanged => {}
                        WriteOutcome::Written { version } => {
                            wrote = true;
                            if let Some(n) = version {
                                versions.insert(key, n);
                            }
                        }
                        WriteOutcome::PendingApproval { detail } => {
                            return Ok(reconcile::WriteOutcome::PendingApproval { detail });
                        }
                    }
                }
                Ok(if wrote {
                    reconcile::WriteOutcome::Written { versions }
                } else {
                    reconcile::WriteOutcome::Unchanged
                })
            }
        }
    }
}

/// A test hook, compiled into debug builds only (release builds, the ones shipped, have no
/// trace of it): `AUDSYNC_TEST_HOLD_WRITE=<path of a FIFO>` holds every `.env` write of a pass
/// at its start, with the blocking calls a real write makes, until the test releases it.
/// Entering it creates `<path>.held`; opening the FIFO for reading then blocks until the test
/// opens it for writing, and reading it ends when the test closes it: a barrier, no timing.
/// A path that is not a FIFO does nothing, so a stray variable cannot hang a run.
#[cfg(debug_assertions)]
mod test_hook {
    use std::os::unix::fs::FileTypeExt;

    pub(super) fn hold_write() {
        let Some(fifo) = std::env::var_os("AUDSYNC_TEST_HOLD_WRITE") else {
            return;
        };
        let fifo = std::path::PathBuf::from(fifo);
        if !std::fs::symlink_metadata(&fifo).is_ok_and(|m| m.file_type().is_fifo()) {
            return;
        }
        let mut held = fifo.clone().into_os_string();
        held.push(".held");
        let _ = std::fs::write(&held, "");
        tracing::debug!(fifo = %fifo.display(), "test hook: holding the .env write");
        let _ = std::fs::read(&fifo);
    }
}
