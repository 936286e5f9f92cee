//! The Infisical sink: a thin adapter that drives [`crate::infisical`]'s client for one key.
//! It compares before it writes (Infisical would make a new secret version of an equal value),
//! creates the secret when it does not exist, and remembers a write held for approval so it is
//! not submitted again while it waits (the state file keeps it between runs).
//!
//! It owns no request and no credential handling: login, retries and the hold-off after a
//! refused login are the client's. It must never read flags or the environment (the settings
//! come from `config::infisical`), never restart anything, and never log a token; the AUD it
//! writes is not a secret and may be logged.

use std::time::Duration;

use super::{Error, Observation, SinkInfo, WriteOutcome};
use crate::infisical::auth::now_secs;
use crate::infisical::{self, Written};
use crate::state::PendingWrite;

// The paths `cli`, `sync` and `verify` use today; they can name `crate::infisical` directly.
pub(crate) use crate::infisical::{Client, Settings};

/// `infisical::Error` as a sink error: the same message and hint, and whether Infisical
/// answered at all.
impl From<infisical::Error> for Error {
    fn from(e: infisical::Error) -> Error {
        Error::Infisical {
            message: e.message().to_string(),
            hint: e.hint(),
            unreachable: e.is_unreachable(),
        }
    }
}

fn err(message: impl Into<String>) -> Error {
    Error::Infisical {
        message: message.into(),
        hint: None,
        unreachable: false,
    }
}

/// The Infisical sink for one key.
#[derive(Debug)]
pub(crate) struct InfisicalSink {
    client: Client,
    key: String,
    /// Learned by `observe`: whether to PATCH or POST first.
    exists: Option<bool>,
    /// A write of this key at this location held for approval (from the state file, then as
    /// this pass leaves it).
    pending: Option<PendingWrite>,
}

impl InfisicalSink {
    pub(crate) fn new(settings: Settings, key: &str) -> InfisicalSink {
        InfisicalSink {
            client: Client::new(settings),
            key: key.to_string(),
            exists: None,
            pending: None,
        }
    }

    /// Start from the write the state file remembers as held for approval (ignored when it is
    /// for another location or key).
    pub(crate) fn with_pending(mut self, pending: Option<&PendingWrite>) -> InfisicalSink {
        let location = self.client.settings().location();
        self.pending = pending
            .filter(|p| p.location == location && p.key == self.key)
            .cloned();
        self
    }

    /// The write held for approval as this pass leaves it, for the state file.
    pub(crate) fn pending(&self) -> Option<&PendingWrite> {
        self.pending.as_ref()
    }

    pub(crate) fn info(&self) -> SinkInfo {
        SinkInfo {
            kind: "infisical",
            target: self.client.settings().location(),
            key: self.key.clone(),
        }
    }

    pub(crate) async fn observe(&mut self, desired: &str) -> Result<Observation, Error> {
        let remote = self.client.read(&self.key).await?;
        self.exists = Some(remote.is_some());
        if let Some(p) = &self.pending {
            let request = p.request.as_deref().unwrap_or("(no id)");
            let location = &p.location;
            if remote.as_ref().is_some_and(|r| r.value == p.value) {
                tracing::info!(key = %self.key, %location, request, value = %p.value, "the value held for approval is live now (change request approved and merged)");
                self.pending = None;
            } else if p.value != desired {
                tracing::warn!(key = %self.key, %location, request, pending = %p.value, desired, "the desired value changed while a write waited for approval; writing the new value");
                self.pending = None;
            } else {
                tracing::info!(key = %self.key, %location, request, "a write of the desired value still waits for approval; not submitted again");
            }
        }
        Ok(match remote {
            Some(r) => Observation {
                needs_write: r.value != desired,
                current: Some(r.value),
                version: r.version,
            },
            None => Observation {
                current: None,
                needs_write: true,
                version: None,
            },
        })
    }

    pub(crate) async fn write(&mut self, desired: &str) -> Result<WriteOutcome, Error> {
        let key = self.key.clone();
        if let Some(p) = self.pending.as_ref().filter(|p| p.value == desired) {
            let request = p
                .request
                .as_deref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default();
            let forget = match &self.client.settings().state_file {
                Some(f) => format!("remove `infisical_pending` from {}", f.display()),
                None => "remove `infisical_pending` from the state file".to_string(),
            };
            return Ok(WriteOutcome::PendingApproval {
                detail: format!(
                    "the change of {key} in {} still waits for approval (change request{request}, submitted {} ago); not submitted again, nothing was restarted. Once it is approved and merged, the next run restarts the containers; if it was rejected or closed, {forget} to submit it again",
                    self.client.settings().long_location(),
                    humantime::format_duration(Duration::from_secs(
                        now_secs().saturating_sub(p.since)
                    ))
                ),
            });
        }
        let first_create = self.exists == Some(false);
        let written = if first_create {
            match self.client.create(&key, desired).await? {
                Some(w) => w,
                // Created by someone else since we looked.
                None => self.client.update(&key, desired).await?.ok_or_else(|| {
                    err(format!("secret {key} neither exists nor can be created"))
                })?,
            }
        } else {
            match self.client.update(&key, desired).await? {
                Some(w) => w,
                None => self.client.create(&key, desired).await?.ok_or_else(|| {
                    err(format!("secret {key} neither exists nor can be created"))
                })?,
            }
        };
        self.exists = Some(true);
        Ok(match written {
            Written::Live { version } => {
                self.pending = None;
                WriteOutcome::Written { version }
            }
            Written::Approval { detail, request } => {
                self.pending = Some(PendingWrite {
                    location: self.client.settings().location(),
                    key,
                    value: desired.to_string(),
                    request,
                    since: now_secs(),
                });
                WriteOutcome::PendingApproval { detail }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_keep_message_hint_and_reachability() {
        let e: Error = infisical::Error::Unreachable {
            message: "GET /api/v4/secrets/K at http://x: cannot connect".into(),
            hint: Some("check INFISICAL_HOST".into()),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "Infisical: GET /api/v4/secrets/K at http://x: cannot connect"
        );
        assert!(e.is_unreachable());
        assert_eq!(e.hint().as_deref(), Some("check INFISICAL_HOST"));
        let e: Error = infisical::Error::Failed {
            message: "not allowed".into(),
            hint: None,
        }
        .into();
        assert_eq!(
            (e.to_string().as_str(), e.is_unreachable()),
            ("Infisical: not allowed", false)
        );
    }
}
