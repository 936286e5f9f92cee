//! `watch`'s typed configuration: the `sync` pass plus the loop's interval, jitter, listener
//! and trigger token; built at start and again on SIGHUP (a bad reload keeps the old one).

use std::ffi::OsString;
use std::time::Duration;

use crate::cli::{Command, WatchArgs};
use crate::error::Error;

use super::commands::sync_config;
use super::{ParseError, Parsed, SyncConfig, Vars};

/// A validated `watch` configuration.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub sync: SyncConfig,
    pub interval: Duration,
    pub jitter: f64,
    pub listen: Option<std::net::SocketAddr>,
    pub unhealthy_after: Duration,
    /// The bearer token of `POST /sync` (AUDSYNC_TRIGGER_TOKEN[_FILE]); `None`: route off.
    pub trigger_token: Option<crate::secret::Secret>,
}

/// The `watch` configuration of a parsed `watch` command line.
pub async fn watch_config(p: &Parsed) -> Result<WatchConfig, Error> {
    match &p.cli.command {
        Command::Watch(a) => WatchConfig::load(a, p).await,
        _ => Err(Error::usage("not a watch command line")),
    }
}

/// Why a reload (SIGHUP) kept the previous configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The command line no longer parses against the layers (clap's message).
    #[error("{0}")]
    Parse(String),
    /// It parses but does not build.
    #[error(transparent)]
    Build(#[from] Error),
}

/// Parse the original command line again (SIGHUP): the `.env` and config files are read anew.
pub async fn reload_watch(argv: &[OsString], vars: &Vars) -> Result<WatchConfig, ReloadError> {
    let p = super::parse(argv.iter().cloned(), vars.clone()).map_err(|e| match e {
        ParseError::Clap(e) => ReloadError::Parse(e.to_string().trim().to_string()),
        ParseError::Config(e) => ReloadError::Build(e),
    })?;
    Ok(watch_config(&p).await?)
}

impl WatchConfig {
    /// Validate, then read the Cloudflare credentials from Infisical when they are set nowhere
    /// else (as `sync` does).
    pub async fn load(a: &WatchArgs, p: &Parsed) -> Result<WatchConfig, Error> {
        if a.interval.is_zero() {
            return Err(Error::usage(
                "--interval / AUDSYNC_INTERVAL must be longer than 0 (e.g. 30s, 5m)",
            ));
        }
        let trigger_token = super::trigger_token(&p.env)?;
        let sync = sync_config(&a.sync, p).await?;
        Ok(WatchConfig {
            trigger_token,
            sync,
            interval: a.interval,
            jitter: a.jitter,
            listen: a.listen,
            unhealthy_after: a.unhealthy_after.unwrap_or(a.interval.saturating_mul(3)),
        })
    }
}
