//! Exit codes: the contract with cron, hooks and systemd. Listed in the README.

/// In sync, or a change was made and applied everywhere.
pub const OK: u8 = 0;
/// Something failed (Cloudflare, a sink, a container, a check). The next run retries.
pub const FAILURE: u8 = 1;
/// Bad command line or configuration: nothing was contacted, nothing changed.
pub const USAGE: u8 = 2;
/// A change is pending: `--dry-run` found something to change, or Infisical holds the write
/// back for approval. Nothing was restarted.
pub const PENDING: u8 = 3;
/// `watch` stopped at once by a second SIGINT, cutting the pass in flight short (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;
