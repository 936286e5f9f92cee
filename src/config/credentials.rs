//! The credentials phase of building a configuration, between gathering the layers and using
//! the built configuration: the Cloudflare credential comes from a layer (or its `<NAME>_FILE`)
//! or, when no layer sets one and Infisical is configured, from Infisical — read once, after
//! the one build has validated everything else (so bad input is reported before any request),
//! and installed into the built configuration. Nothing is built twice and no stand-in token
//! exists at any point.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cli::SourceArgs;
use crate::cloudflare::Auth;
use crate::error::Error;

use super::{Env, SourceConfig, SyncConfig};

/// Configurations built by this process (`-vv` logs each build with the count): a test
/// proves a run builds exactly one.
static BUILDS: AtomicU64 = AtomicU64::new(0);

/// Count one build and say so at debug level.
pub(crate) fn built(what: &'static str) {
    let n = BUILDS.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::debug!(what, builds = n, "configuration built");
}

/// Something built that carries Cloudflare credentials.
pub(crate) trait Install {
    /// Give every source that has no credential the one read from Infisical.
    fn install(&mut self, auth: &Auth);
}

impl Install for SourceConfig {
    fn install(&mut self, auth: &Auth) {
        if matches!(self.auth, Auth::None) {
            self.auth = auth.clone();
        }
    }
}

impl Install for SyncConfig {
    fn install(&mut self, auth: &Auth) {
        for b in &mut self.bindings {
            b.source.install(auth);
        }
    }
}

impl Install for super::setup::SetupConfig {
    fn install(&mut self, auth: &Auth) {
        self.sync.install(auth);
    }
}

/// Build once with `build`, then (only when no layer sets a Cloudflare credential and
/// Infisical is configured) read the credential from Infisical once and install it. `state_file`
/// is where Infisical's login refusals are remembered.
pub(crate) async fn build_with<T: Install>(
    source: &SourceArgs,
    state_file: Option<&Path>,
    mut env: Env,
    build: impl FnOnce(&Env) -> Result<T, Error>,
) -> Result<T, Error> {
    let settings = if super::has_cloudflare_credentials(&env) {
        None
    } else {
        super::infisical::infisical_settings(&source.infisical, &env, source.timeout)?
    };
    env.defer_cloudflare_auth = settings.is_some();
    let mut cfg = build(&env)?;
    let Some(mut settings) = settings else {
        return Ok(cfg);
    };
    settings.state_file = Some(match state_file {
        Some(p) => p.to_path_buf(),
        None => super::sync::sidecar(&source.env_file, ".audsync-state.json"),
    });
    let mut fetched = super::infisical::read_cloudflare_credentials(&settings, env).await?;
    fetched.defer_cloudflare_auth = false;
    let auth = super::cloudflare_auth(&fetched)?;
    cfg.install(&auth);
    Ok(cfg)
}
