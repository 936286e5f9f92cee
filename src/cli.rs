//! The command line: one `Args` struct per subcommand, shared options flattened in.
//!
//! clap types only. Every option has an environment variable. Precedence: flags > process
//! environment > the `.env` file (--env-file) > the config file > built-in defaults; the
//! variable lookups are done by `config::parse`, which installs every layer's values
//! as clap defaults. No module outside `config` (and `lib`/`main`) reads these types.
//!
//! This module imports nothing of the crate: its enums are flag-level (the words users type);
//! `config` turns them into the domain's types once.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Cloudflare's API base (`--api-url`'s default).
pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4";
/// Infisical Cloud (`--infisical-host`'s default).
pub const DEFAULT_INFISICAL_HOST: &str = "https://app.infisical.com";

pub const PRECEDENCE: &str = "\
Configuration precedence: command-line flags > process environment > the .env file (--env-file) > the config
file (--config, default ./audsync.toml) > defaults. With a config file, the .env file is read for settings only
when --env-file / AUDSYNC_ENV_FILE names it, and `audsync config` shows where every value came from.
Secrets are read from the environment or the .env file only, never from flags; each also accepts
<NAME>_FILE naming a file that holds it (Docker secrets): CLOUDFLARE_API_TOKEN, or CLOUDFLARE_EMAIL +
CLOUDFLARE_API_KEY; INFISICAL_CLIENT_ID + INFISICAL_CLIENT_SECRET, or INFISICAL_TOKEN. When no Cloudflare
credential is set in either and Infisical is configured, they are read from Infisical (same project,
environment and path).

Exit codes: 0 in sync or change applied; 1 failure (the next run retries); 2 usage or configuration
error; 3 change pending (--dry-run found work, or Infisical holds the write for approval).";

#[derive(Debug, Parser)]
#[command(
    name = "audsync",
    version,
    about = "Keep a Cloudflare Access application's AUD tag in sync with the services that check it",
    long_about = "Keep a Cloudflare Access application's AUD tag in sync with the services that check it.\n\n\
audsync fetches the AUD tag of the Access application protecting a host, writes it where the server\n\
reads it (a .env file), and restarts or recreates the server's container only when something changed.",
    after_help = PRECEDENCE,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The config file (TOML): settings for the whole stack and one [[binding]] per host.
    /// Default: ./audsync.toml when present.
    #[arg(
        long,
        global = true,
        env = "AUDSYNC_CONFIG",
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,
    /// More logging on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options")]
    pub verbose: u8,
    /// Less logging (-q errors only, -qq nothing).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose", help_heading = "Global options")]
    pub quiet: u8,
    /// Send credentials (API token, Infisical client secret) over plain http to a host that is
    /// not a loopback address. Off: credentials go over https, or http to 127.0.0.1/::1/localhost.
    #[arg(long, global = true, env = "AUDSYNC_ALLOW_INSECURE_HTTP", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = "Global options")]
    pub allow_insecure_http: bool,
    /// Log line format on stderr.
    #[arg(long, global = true, env = "AUDSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = "Global options")]
    pub log_format: LogFormat,
    /// The container engine, when DOCKER_HOST is not set: `podman` finds Podman's
    /// Docker-compatible socket (rootful /run/podman/podman.sock; rootless
    /// $XDG_RUNTIME_DIR/podman/podman.sock). DOCKER_HOST, when set, is used as it is.
    #[arg(
        long,
        global = true,
        env = "AUDSYNC_ENGINE",
        value_enum,
        help_heading = "Global options"
    )]
    pub engine: Option<Engine>,
}

/// `--engine`: which container engine to look for (no per-value help: it would turn every
/// `--help` into the long layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    Docker,
    Podman,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Result format on stdout (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `--restart`: what to do with containers when the value changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartMode {
    /// Recreate containers whose environment carries the key; restart the others.
    Auto,
    /// Restart (same configuration; does NOT reload environment variables).
    Restart,
    /// Recreate with the key's value replaced; everything else preserved.
    Recreate,
    /// Start the replacement beside the old container (same networks and aliases), wait until
    /// it is good, then retire the old one: no gap for clients that reach it by network alias.
    /// A container that cannot have a twin (host ports, `host`/`container:` network) is
    /// recreated instead, and the plan says so.
    Rollout,
    /// Touch no container.
    None,
}

/// `--sink`: which kind of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// The `.env` file given by --env-file.
    Env,
    /// An Infisical secret (INFISICAL_* settings).
    Infisical,
}

/// `--write-mode`: how the new file reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WriteMode {
    /// Temp file in the same directory, fsync, rename over the target. Never half-written.
    Atomic,
    /// Rewrite the same inode: for an `.env` bind-mounted into a container as a single file.
    InPlace,
}

/// `--infisical-api`: which generation of the secrets API to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InfisicalApi {
    /// `/api/v3/secrets/raw/{name}` with `workspaceId` (deprecated; older self-hosted instances).
    V3,
    /// `/api/v4/secrets/{name}` with `projectId`.
    V4,
}

/// `--notify-on`: what a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum NotifyEvent {
    /// An AUD was written (applied or not), or a drift repaired.
    Changed,
    /// A pass failed (in `watch`: the first of a streak).
    Failed,
    /// A recreate failed and the old container was put back.
    #[value(name = "rolled_back")]
    RolledBack,
    /// The first good pass after a streak of failed ones (`watch`).
    Recovered,
}

// `--help` headings. Every option names its own heading: a flattened struct's
// `next_help_heading` would otherwise carry over to the options declared after it.
const HEADING_SOURCE: &str = "Cloudflare source and configuration";
const HEADING_INFISICAL: &str = "Infisical";
const HEADING_SINKS: &str = "Sinks and containers";
const HEADING_RUN: &str = "Run";
const HEADING_ACCESS: &str = "Protected host and Access team";
const HEADING_TUNNEL: &str = "Tunnel";
const HEADING_SETUP: &str = "Access application and policy (setup)";
const HEADING_VERIFY_PLACES: &str = "Where the AUD lives";
const HEADING_VERIFY_CHECKS: &str = "Checks";
const HEADING_WATCH: &str = "Agent (watch)";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One reconcile pass: fetch the AUD, write it to the sinks, restart/recreate containers if it changed.
    #[command(after_help = PRECEDENCE)]
    Sync(SyncArgs),
    /// Print the AUD tag alone on stdout, e.g. AUD=$(audsync get --domain api.example.com).
    #[command(after_help = PRECEDENCE)]
    Get(GetArgs),
    /// Create (or find) the Access application for a host, give it a policy, require Access on
    /// the tunnel route, then sync the AUD like `sync`. Idempotent; --dry-run shows every change.
    #[command(after_help = PRECEDENCE)]
    Setup(SetupArgs),
    /// Check the chain: login redirect, team certs, the AUD everywhere it lives, and a token.
    /// Exit 0 only when every check that ran passed.
    #[command(after_help = PRECEDENCE)]
    Verify(VerifyArgs),
    /// Run `sync` every --interval until stopped: backs off on errors, reloads on SIGHUP, stops
    /// after the pass in flight on SIGTERM/SIGINT, and can serve /healthz and /metrics.
    #[command(after_help = WATCH_HELP)]
    Watch(WatchArgs),
    /// Print a shell completion script, e.g. audsync completions bash > /etc/bash_completion.d/audsync
    Completions(CompletionsArgs),
    /// Print the effective configuration (secrets redacted) with where each value came from
    /// (flag, env, file:line, default); exit 2 listing every problem when it does not validate.
    #[command(after_help = PRECEDENCE)]
    Config(ConfigArgs),
    /// Print the man page (roff) on stdout, e.g. audsync man > /usr/local/share/man/man1/audsync.1,
    /// or write one page per command into a directory with --out-dir.
    Man(ManArgs),
}

/// Where the AUD is learned: the Cloudflare API, or the protected host itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Origin {
    /// The Cloudflare API (needs a token that can read Access applications).
    Api,
    /// The protected host's answer (cf-access-metadata, else the login redirect's kid); no API
    /// token needed. See the README for its limits.
    Edge,
}

/// How the protected host and the Access team are reached from here.
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// Where the protected host is reached (default https://HOST/).
    #[arg(long, env = "AUDSYNC_URL", value_name = "URL", help_heading = HEADING_ACCESS)]
    pub url: Option<String>,
    /// The team domain that issues the tokens, e.g. https://team.cloudflareaccess.com (certs and
    /// issuer are expected there).
    #[arg(long, env = "CLOUDFLARE_AUTH_DOMAIN", value_name = "URL", help_heading = HEADING_ACCESS)]
    pub auth_domain: Option<String>,
    /// The Zero Trust team name (used when CLOUDFLARE_AUTH_DOMAIN is not set).
    #[arg(long, env = "CLOUDFLARE_TEAM_NAME", value_name = "NAME", help_heading = HEADING_ACCESS)]
    pub team_name: Option<String>,
    /// With --source edge: accept the AUD from the login redirect's `kid`, which is NOT signed
    /// (cloudflared stopped trusting it as a security fix), when the edge sends no signed
    /// cf-access-metadata answer. Off: such an edge is an error and nothing is written.
    #[arg(long, env = "AUDSYNC_ALLOW_UNSIGNED_KID", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = HEADING_ACCESS)]
    pub allow_unsigned_kid: bool,
}

/// The `setup` options on top of every `sync` option.
#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub sync: SyncArgs,
    /// Name of the application to create (default: the host).
    #[arg(long, env = "AUDSYNC_APP_NAME", value_name = "NAME", help_heading = HEADING_SETUP)]
    pub app_name: Option<String>,
    /// Session duration of the application to create (Go duration, e.g. 24h, 30m).
    #[arg(
        long,
        env = "AUDSYNC_SESSION_DURATION",
        value_name = "DURATION",
        default_value = "24h",
        help_heading = HEADING_SETUP
    )]
    pub session_duration: String,
    /// The reusable policy to attach; reused when it exists, else created from the rules below.
    #[arg(
        long,
        env = "AUDSYNC_POLICY_NAME",
        value_name = "NAME",
        default_value = "Standard Access Policy",
        help_heading = HEADING_SETUP
    )]
    pub policy_name: String,
    /// Emails the new policy admits (comma-separated).
    #[arg(
        long,
        env = "CLOUDFLARE_ACCESS_EMAILS",
        value_name = "EMAILS",
        value_delimiter = ',',
        help_heading = HEADING_SETUP
    )]
    pub access_emails: Vec<String>,
    /// An email domain the new policy admits, e.g. example.com.
    #[arg(long, env = "CLOUDFLARE_ACCESS_EMAIL_DOMAIN", value_name = "DOMAIN", help_heading = HEADING_SETUP)]
    pub access_email_domain: Option<String>,
    /// The identity provider users must log in with (`allowed_idps` of the new application).
    #[arg(long, env = "GOOGLE_IDP_ID", value_name = "UUID", help_heading = HEADING_SETUP)]
    pub idp_id: Option<String>,
    /// Create a policy that admits everyone when no email rule is given (explicit opt-in).
    #[arg(long, help_heading = HEADING_SETUP)]
    pub allow_everyone: bool,
    /// When only an application shared with other hosts (e.g. *.example.com) covers the host,
    /// use it as it is (never changed) instead of creating the host's own.
    #[arg(long, env = "AUDSYNC_USE_EXISTING", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub use_existing: bool,
    /// When the tunnel has no ingress rule for the host, add one to this service (e.g.
    /// http://caddy:80) above the catch-all.
    #[arg(long, env = "AUDSYNC_TUNNEL_SERVICE", value_name = "URL")]
    pub tunnel_service: Option<String>,
}

/// `verify --skip`: the checks of `verify`, in debugging order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Check {
    /// The Cloudflare API token itself (tokens/verify: status, expiry).
    Credential,
    Redirect,
    Certs,
    Consistency,
    Token,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub access: AccessArgs,
    /// The variable that holds the AUD tag (in the .env file and the container).
    #[arg(
        long,
        env = "AUDSYNC_KEY",
        value_name = "NAME",
        default_value = "CLOUDFLARE_AUD_TAG",
        help_heading = HEADING_VERIFY_PLACES
    )]
    pub key: String,
    /// Where `sync` writes the AUD, read here (never written) to compare: env (the .env file),
    /// infisical (the INFISICAL_* settings), or both (repeatable or comma-separated).
    #[arg(
        long = "sink",
        env = "AUDSYNC_SINK",
        value_enum,
        value_delimiter = ',',
        default_value = "env",
        help_heading = HEADING_VERIFY_PLACES
    )]
    pub sinks: Vec<SinkKind>,
    /// Containers whose environment should carry the AUD (repeatable or comma-separated).
    #[arg(
        long = "container",
        env = "AUDSYNC_CONTAINER",
        value_name = "NAME",
        value_delimiter = ',',
        default_value = "lambda-server",
        help_heading = HEADING_VERIFY_PLACES
    )]
    pub containers: Vec<String>,
    /// Remotely-managed tunnel whose rule for the host should carry the AUD.
    #[arg(long, env = "CLOUDFLARE_TUNNEL_ID", value_name = "UUID", help_heading = HEADING_VERIFY_PLACES)]
    pub tunnel_id: Option<String>,
    /// A token to check (the Cf-Access-Jwt-Assertion value). Prefer --token-file: a flag is
    /// visible in the process list.
    #[arg(
        long,
        env = "AUDSYNC_VERIFY_TOKEN",
        value_name = "JWT",
        hide_env_values = true,
        hide_default_value = true,
        conflicts_with = "token_file",
        help_heading = HEADING_VERIFY_CHECKS
    )]
    pub token: Option<String>,
    /// A file holding the token to check.
    #[arg(long, env = "AUDSYNC_VERIFY_TOKEN_FILE", value_name = "PATH", help_heading = HEADING_VERIFY_CHECKS)]
    pub token_file: Option<PathBuf>,
    /// Leave a check out (repeatable or comma-separated).
    #[arg(long, value_enum, value_name = "NAME", value_delimiter = ',', help_heading = HEADING_VERIFY_CHECKS)]
    pub skip: Vec<Check>,
}

/// `audsync config`: the options of `sync` and `watch`, shown instead of run.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write audsync.1 and audsync-<command>.1 into this directory instead of printing audsync.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

pub const WATCH_HELP: &str = "\
Signals: SIGTERM/SIGINT stop after the pass in flight (a second SIGINT stops at once, exit 130);
SIGHUP re-reads the configuration (the .env file and the environment) and runs a pass; a bad
reload is logged and the previous configuration kept.
A failed pass is retried after interval x 2^(failures-1), at most max(interval, 1h), then the
normal interval resumes after a success. watch logs at info level unless -q/-v/RUST_LOG say otherwise.

Configuration precedence: command-line flags > process environment > the .env file (--env-file) > the config
file (--config, default ./audsync.toml) > defaults.
Exit codes: 0 stopped by a signal; 1 cannot start (e.g. the --listen port is taken); 2 invalid configuration
at start-up; 130 stopped at once by a second SIGINT.";

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub sync: SyncArgs,
    /// Time between passes (humantime: 30s, 5m, 1h).
    #[arg(long, env = "AUDSYNC_INTERVAL", value_name = "DURATION", default_value = "5m", value_parser = parse_duration, help_heading = HEADING_WATCH)]
    pub interval: Duration,
    /// Randomise each wait by up to this share of it, either way (0% to 50%), so many agents
    /// do not call Cloudflare in lockstep.
    #[arg(long, env = "AUDSYNC_JITTER", value_name = "PERCENT", default_value = "10%", value_parser = parse_percent, help_heading = HEADING_WATCH)]
    pub jitter: f64,
    /// Serve GET /healthz and GET /metrics (Prometheus) on this address, e.g. 127.0.0.1:9464.
    /// Port 0 picks a free port (logged). Off by default.
    #[arg(long, env = "AUDSYNC_LISTEN", value_name = "ADDR", help_heading = HEADING_WATCH)]
    pub listen: Option<std::net::SocketAddr>,
    /// /healthz answers 503 once the last pass failed and the last success (or the start) is
    /// older than this. Default: 3 x --interval.
    #[arg(long, env = "AUDSYNC_UNHEALTHY_AFTER", value_name = "DURATION", value_parser = parse_duration, help_heading = HEADING_WATCH)]
    pub unhealthy_after: Option<Duration>,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Where the AUD comes from, and where configuration is read.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = HEADING_SOURCE)]
pub struct SourceArgs {
    /// The host the Access application protects, e.g. api.example.com.
    #[arg(long, env = "AUDSYNC_DOMAIN", value_name = "HOST")]
    pub domain: Option<String>,
    /// The Access application's id (UUID); skips the lookup by host.
    #[arg(long, env = "AUDSYNC_APP_ID", value_name = "UUID")]
    pub app_id: Option<String>,
    /// Cloudflare account id. When unset, the only account the credential can see is used.
    #[arg(long, env = "CLOUDFLARE_ACCOUNT_ID", value_name = "ID")]
    pub account_id: Option<String>,
    /// Cloudflare API base URL.
    #[arg(long, env = "CLOUDFLARE_API_URL", value_name = "URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,
    /// The .env file: read for configuration (process env wins) and, for `sync`, the file the AUD is written to.
    #[arg(
        long,
        env = "AUDSYNC_ENV_FILE",
        value_name = "PATH",
        default_value = ".env"
    )]
    pub env_file: PathBuf,
    /// Timeout for each HTTP request (e.g. 10s, 1m).
    #[arg(long, env = "AUDSYNC_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub infisical: InfisicalArgs,
}

/// Where the Infisical secret lives (`--sink infisical`, and Cloudflare credentials read from
/// Infisical). The credentials are secrets: INFISICAL_CLIENT_ID + INFISICAL_CLIENT_SECRET
/// (Universal Auth) or INFISICAL_TOKEN, from the environment or the .env file (or `<NAME>_FILE`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = HEADING_INFISICAL)]
pub struct InfisicalArgs {
    /// Infisical base URL (Infisical Cloud, or a self-hosted instance).
    #[arg(long, env = "INFISICAL_HOST", value_name = "URL", default_value = DEFAULT_INFISICAL_HOST)]
    pub infisical_host: String,
    /// The Infisical project id.
    #[arg(long, env = "INFISICAL_PROJECT_ID", value_name = "ID")]
    pub infisical_project_id: Option<String>,
    /// The Infisical environment slug.
    #[arg(
        long,
        env = "INFISICAL_ENVIRONMENT",
        value_name = "SLUG",
        default_value = "dev"
    )]
    pub infisical_environment: String,
    /// The folder the secret lives in.
    #[arg(
        long,
        env = "INFISICAL_SECRET_PATH",
        value_name = "PATH",
        default_value = "/"
    )]
    pub infisical_secret_path: String,
    /// Infisical API generation: v4 (`/api/v4/secrets`), or v3 (`/api/v3/secrets/raw`) for older
    /// self-hosted instances.
    #[arg(long, env = "AUDSYNC_INFISICAL_API", value_enum, default_value = "v4")]
    pub infisical_api: InfisicalApi,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where the AUD is learned: api (Cloudflare API) or edge (the protected host; no token).
    #[arg(
        long = "source",
        env = "AUDSYNC_SOURCE",
        value_enum,
        value_name = "SOURCE",
        default_value = "api",
        help_heading = HEADING_SOURCE
    )]
    pub origin: Origin,
    #[command(flatten)]
    pub access: AccessArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// The variable that holds the AUD tag.
    #[arg(
        long,
        env = "AUDSYNC_KEY",
        value_name = "NAME",
        default_value = "CLOUDFLARE_AUD_TAG",
        help_heading = HEADING_SINKS
    )]
    pub key: String,
    /// Where to write the AUD (repeatable or comma-separated).
    #[arg(
        long = "sink",
        env = "AUDSYNC_SINK",
        value_enum,
        value_delimiter = ',',
        default_value = "env",
        help_heading = HEADING_SINKS
    )]
    pub sinks: Vec<SinkKind>,
    /// Container to restart/recreate after a change (name or id; repeatable or comma-separated).
    /// Default: lambda-server, unless --compose-service is given.
    #[arg(
        long = "container",
        env = "AUDSYNC_CONTAINER",
        value_name = "NAME",
        value_delimiter = ',',
        help_heading = HEADING_SINKS
    )]
    pub containers: Vec<String>,
    /// A compose service whose containers to restart/recreate, one at a time (repeatable or
    /// comma-separated). Found by their compose labels; one-off `run` containers are left alone.
    #[arg(
        long = "compose-service",
        env = "AUDSYNC_COMPOSE_SERVICE",
        value_name = "PROJECT/SERVICE",
        value_delimiter = ',',
        help_heading = HEADING_SINKS
    )]
    pub compose_services: Vec<String>,
    /// A Swarm service whose spec carries the key (repeatable or comma-separated): its
    /// `ContainerSpec.Env` is updated and Swarm rolls the tasks out by the service's own
    /// UpdateConfig; a paused or failed update is rolled back. Needs a manager node.
    #[arg(
        long = "swarm-service",
        env = "AUDSYNC_SWARM_SERVICE",
        value_name = "NAME",
        value_delimiter = ',',
        help_heading = HEADING_SINKS
    )]
    pub swarm_services: Vec<String>,
    /// A command to run once per pass after the value changed (repeatable): split into words
    /// as a shell splits them, never run through a shell. It gets PATH, HOME, LANG and the
    /// change (AUDSYNC_CHANGED_*, AUDSYNC_NEW_AUD, AUDSYNC_OLD_AUD), never audsync's environment.
    /// No environment variable sets it: a .env must not choose what audsync runs.
    #[arg(long = "exec", value_name = "'CMD ARGS'", help_heading = HEADING_SINKS)]
    pub execs: Vec<String>,
    /// How long a command target may run: past it its process group gets SIGTERM, then
    /// SIGKILL after a grace (5s, or the timeout if shorter), and the binding fails.
    #[arg(long, env = "AUDSYNC_EXEC_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_duration, help_heading = HEADING_SINKS)]
    pub exec_timeout: Duration,
    /// What to do with the containers when the value changed: auto recreates containers whose
    /// environment carries the key (a restart would keep the old value) and restarts the others.
    #[arg(
        long,
        env = "AUDSYNC_RESTART",
        value_enum,
        value_name = "MODE",
        default_value = "auto",
        help_heading = HEADING_SINKS
    )]
    pub restart: RestartMode,
    /// A recreated container without a healthcheck counts as good once it has kept running
    /// this long; otherwise the old container is put back.
    #[arg(long, env = "AUDSYNC_SETTLE", value_name = "DURATION", default_value = "3s", value_parser = parse_duration, help_heading = HEADING_SINKS)]
    pub settle: Duration,
    /// How long a recreated container with a healthcheck may take to become healthy before the
    /// old one is put back. Default: start period + (interval + timeout) x retries of its check.
    #[arg(long, env = "AUDSYNC_HEALTH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, help_heading = HEADING_SINKS)]
    pub health_timeout: Option<Duration>,
    /// How the .env file is written: atomic (temp file + rename) or in-place (same inode, for a
    /// file bind-mounted into a container).
    #[arg(long, env = "AUDSYNC_WRITE_MODE", value_enum, default_value = "atomic", help_heading = HEADING_SINKS)]
    pub write_mode: WriteMode,
    /// Create the .env file when it does not exist. Without it a missing .env is an error
    /// naming the path and the compose project directory its containers came from.
    #[arg(long, env = "AUDSYNC_CREATE_ENV_FILE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = HEADING_SINKS)]
    pub create_env_file: bool,
    /// Also take bindings from labels: a container or Swarm service labelled
    /// `audsync.domain=HOST` (optionally `audsync.key`, `audsync.restart`, `audsync.name`)
    /// becomes a binding. Bindings of the config file win. See docs/discovery.md.
    #[arg(long, env = "AUDSYNC_DISCOVER", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new(), help_heading = HEADING_SINKS)]
    pub discover: bool,
    /// Where a discovered binding may write: a compose project's `.env` only under these
    /// directories (repeatable or comma-separated). None: discovered bindings change the
    /// containers' environment only.
    #[arg(long = "discover-root", env = "AUDSYNC_DISCOVER_ROOT", value_name = "DIR", value_delimiter = ',', help_heading = HEADING_SINKS)]
    pub discover_roots: Vec<PathBuf>,
    /// Discover only containers and services whose name (a compose container: its project)
    /// starts with PREFIX; others on the engine are left alone.
    #[arg(long, env = "AUDSYNC_DISCOVER_SCOPE", value_name = "PREFIX", help_heading = HEADING_SINKS)]
    pub discover_scope: Option<String>,
    /// Show what would change (old value, new value, writes, restarts) and change nothing.
    /// Exit code 3 when something would change, 0 when in sync.
    #[arg(long, help_heading = HEADING_RUN)]
    pub dry_run: bool,
    /// Result format on stdout.
    #[arg(long, env = "AUDSYNC_OUTPUT", value_enum, default_value = "text", help_heading = HEADING_RUN)]
    pub output: Output,
    /// State file (owed restarts, cached application id). Default: <env-file>.audsync-state.json
    #[arg(long, env = "AUDSYNC_STATE_FILE", value_name = "PATH", help_heading = HEADING_RUN)]
    pub state_file: Option<PathBuf>,
    /// Where the locks on what a run touches live (one per .env, container and service),
    /// shared by every way of running. Default: /run/audsync (root), else
    /// $XDG_RUNTIME_DIR/audsync.
    #[arg(long, env = "AUDSYNC_LOCK_DIR", value_name = "DIR")]
    pub lock_dir: Option<PathBuf>,
    /// How long to wait for another run holding the lock.
    #[arg(long, env = "AUDSYNC_LOCK_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_duration, help_heading = HEADING_RUN)]
    pub lock_timeout: Duration,
    /// Where the AUD is learned: api (Cloudflare API) or edge (the protected host; no token).
    #[arg(
        long = "source",
        env = "AUDSYNC_SOURCE",
        value_enum,
        value_name = "SOURCE",
        default_value = "api",
        help_heading = HEADING_SOURCE
    )]
    pub origin: Origin,
    #[command(flatten)]
    pub access: AccessArgs,
    /// Remotely-managed tunnel whose rule for the host requires Access: its audTag is kept
    /// current (one extra API request per pass).
    #[arg(long, env = "CLOUDFLARE_TUNNEL_ID", value_name = "UUID", help_heading = HEADING_TUNNEL)]
    pub tunnel_id: Option<String>,
    /// Send a notification on a change, a failure, a rollback or a recovery to URL (repeatable
    /// or comma-separated): https://… (JSON POST), ntfy+https://host/topic,
    /// slack+https://hooks.slack.com/…, discord+https://discord.com/api/webhooks/…; each also
    /// http:// to a loopback address. These URLs carry tokens: prefer AUDSYNC_NOTIFY (or
    /// `notify = [...]` in a private config file) to the command line.
    #[arg(
        long = "notify",
        env = "AUDSYNC_NOTIFY",
        value_name = "URL",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = "Notifications"
    )]
    pub notify: Vec<String>,
    /// Which events to notify (comma-separated): changed, failed, rolled_back, recovered.
    #[arg(
        long,
        env = "AUDSYNC_NOTIFY_ON",
        value_enum,
        value_name = "EVENTS",
        value_delimiter = ',',
        default_value = "changed,failed,rolled_back,recovered",
        help_heading = "Notifications"
    )]
    pub notify_on: Vec<NotifyEvent>,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// A flag value that does not parse; shown after the flag's name. It says what is expected and
/// never repeats the value (free text may be a secret given to the wrong option).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(String);

/// `10%`, `12.5%` or `10` (percent) -> 0.10; between 0% and 50%.
pub fn parse_percent(s: &str) -> Result<f64, ValueError> {
    let n = s.trim().trim_end_matches('%').trim();
    let v: f64 = n
        .parse()
        .map_err(|_| ValueError("not a percentage (examples: 0%, 10%, 25%)".to_string()))?;
    if !(0.0..=50.0).contains(&v) {
        return Err(ValueError("out of range: use 0% to 50%".to_string()));
    }
    Ok(v / 100.0)
}

/// A duration: humantime (`30s`, `5m`, `1h 30m`) or a bare number of seconds (`--settle 5`).
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    if let Ok(secs) = s.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    // humantime's message quotes the part it did not understand: not repeated.
    humantime::parse_duration(s).map_err(|_| {
        ValueError("not a duration (examples: 30s, 5m, 1h; a bare number is seconds)".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
