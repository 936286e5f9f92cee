//! The typed configurations of the commands built on `sync`'s: `setup`, `verify` and `watch`
//! (and `sync`'s own, with the Cloudflare credentials read from Infisical when they are set
//! nowhere else). Like the rest of `config`, the only place that reads their clap types.

use crate::cli::SyncArgs;
use crate::error::Error;

use super::{Parsed, SyncConfig};

pub use super::setup::setup_config;
pub use super::watch::{reload_watch, watch_config};

/// The `sync` configuration, reading the Cloudflare credentials from Infisical when they are
/// set nowhere else.
pub async fn sync_config(args: &SyncArgs, p: &Parsed) -> Result<SyncConfig, Error> {
    let state_file = match (&args.state_file, &p.file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(f)) => Some(super::sync::sidecar(&f.path, ".audsync-state.json")),
        (None, None) => None,
    };
    let env =
        super::resolve_credentials_at(&args.source, state_file.as_deref(), p.env.clone(), |e| {
            SyncConfig::build(args, e, p.file.as_ref(), &p.origins).map(drop)
        })
        .await?;
    SyncConfig::build(args, &env, p.file.as_ref(), &p.origins)
}
