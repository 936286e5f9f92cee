//! `--discover`'s typed configuration: the directories a discovered binding may write under
//! (`--discover-root`, `discover_roots`), and how a binding is made from what labels say.
//!
//! Labels are written by whoever creates a container, so nothing here trusts them: a label's
//! domain, key and restart mode are validated exactly as a `[[binding]]`'s, and where a
//! discovered binding writes is decided by the caller's checks against [`DiscoverConfig::roots`]
//! (which only the trusted configuration sets), never by a label alone.

use std::path::PathBuf;

use crate::cli::{AccessArgs, Origin as SourceOrigin, SourceArgs};
use crate::error::Error;
use crate::reconcile::RestartMode;

use super::sync::{Binding, BindingSink, BindingTarget, DEFAULT_KEY};
use super::{Env, SourceConfig};

/// At most this many discovered bindings in one pass; the rest are named in a warning.
pub const MAX_DISCOVERED: usize = 100;

/// The labels a container or Swarm service carries to become a binding.
pub const LABEL_DOMAIN: &str = "audsync.domain";
pub const LABEL_KEY: &str = "audsync.key";
pub const LABEL_RESTART: &str = "audsync.restart";
pub const LABEL_NAME: &str = "audsync.name";

/// `--discover` is on: where discovered bindings may write, and the source settings they share.
#[derive(Debug, Clone)]
pub struct DiscoverConfig {
    /// A compose project's `.env` is a sink only under one of these (as given; resolved when
    /// used). Empty: discovered bindings change the containers' environment only.
    pub roots: Vec<PathBuf>,
    /// `--discover-scope`: only objects whose name (a compose container: its project) starts
    /// with this.
    pub scope: Option<String>,
    source: SourceArgs,
    access: AccessArgs,
    origin: SourceOrigin,
    env: Env,
    /// Who may own a discovered `.env` and the directories above it (the settings-file rule).
    pub trust: super::trust::Context,
}

/// What the labels of one object (and the checks of its compose project) said.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub domain: String,
    pub key: Option<String>,
    pub restart: Option<String>,
    pub name: Option<String>,
    pub sinks: Vec<BindingSink>,
    pub targets: Vec<BindingTarget>,
    /// Where it came from, for reports: `label on container X`.
    pub origin: String,
}

impl DiscoverConfig {
    pub(super) fn new(
        roots: &[PathBuf],
        scope: Option<&str>,
        source: &SourceArgs,
        access: &AccessArgs,
        origin: SourceOrigin,
        env: &Env,
    ) -> DiscoverConfig {
        let mut source = source.clone();
        source.domain = None;
        source.app_id = None;
        let mut access = access.clone();
        access.url = None;
        DiscoverConfig {
            trust: super::trust::Context::from_vars(env.process()),
            roots: roots
                .iter()
                .filter(|r| !r.as_os_str().is_empty())
                .cloned()
                .collect(),
            scope: scope.filter(|s| !s.is_empty()).map(str::to_string),
            source,
            access,
            origin,
            env: env.clone(),
        }
    }

    /// The key a label names, or the default.
    pub fn key_of(label: Option<&str>) -> String {
        label.map_or_else(|| DEFAULT_KEY.to_string(), str::to_string)
    }

    /// A binding from what labels said, validated as a `[[binding]]` is (the message names
    /// the label at fault, never quotes a value longer than a short word).
    pub fn binding(&self, f: &Found) -> Result<Binding, Error> {
        let key = Self::key_of(f.key.as_deref());
        super::validate_key(&key)
            .map_err(|_| Error::usage(format!("label {LABEL_KEY} is not a variable name")))?;
        let restart = match f.restart.as_deref() {
            None => RestartMode::Auto,
            Some(r) => match <crate::cli::RestartMode as clap::ValueEnum>::from_str(r, false) {
                Ok(m) => m.into(),
                Err(_) => {
                    return Err(Error::usage(format!(
                        "label {LABEL_RESTART} is not one of: auto, restart, recreate, rollout, none"
                    )));
                }
            },
        };
        let mut src = self.source.clone();
        src.domain = Some(f.domain.clone());
        let source = SourceConfig::from_args_with(&src, &self.env, self.origin, &self.access)
            .map_err(|e| Error::usage(format!("label {LABEL_DOMAIN}: {e}")))?;
        let name = f
            .name
            .as_deref()
            .filter(|n| {
                !n.is_empty()
                    && n.len() <= 64
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
            .map(str::to_string);
        Ok(Binding {
            id: name.or_else(|| source.host.clone()).unwrap_or_default(),
            source,
            key,
            sinks: f.sinks.clone(),
            targets: f.targets.clone(),
            restart,
            tunnel_id: None,
            create: false,
            url: None,
            origin: Some(f.origin.clone()),
        })
    }
}
