//! audsync: keep a Cloudflare Access application's AUD tag in sync with the services that check it.
//!
//! Data flows one way: [`config`] -> [`source`] (Cloudflare) -> [`reconcile`] -> [`sink`] ->
//! [`docker`] targets. `main.rs` only parses, starts logging and maps the result to an exit code.

pub(crate) mod aud;
pub mod cli;
pub(crate) mod cloudflare;
pub mod config;
pub(crate) mod docker;
pub(crate) mod error;
pub(crate) mod exec;
pub mod exit;
pub(crate) mod fsx;
pub(crate) mod http;
pub(crate) mod infisical;
pub(crate) mod lock;
pub(crate) mod notify;
pub(crate) mod progress;
pub(crate) mod reconcile;
pub(crate) mod secret;
pub(crate) mod setup;
pub(crate) mod shown;
pub mod sink;
pub(crate) mod source;
pub(crate) mod state;
pub(crate) mod sync;
pub(crate) mod tag;
pub(crate) mod verify;
pub(crate) mod watch;

use cli::{Cli, Command, LogFormat};
use config::{Env, Parsed};
use error::Error;
use sync::report::Output;

/// Start logging on stderr. `-v`/`-q` pick the level; `RUST_LOG` overrides.
pub fn init_logging(verbose: u8, quiet: u8, format: LogFormat) {
    let level = match (quiet, verbose) {
        (q, _) if q >= 2 => "off",
        (1, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let default = if verbose >= 3 {
        // bollard logs whole inspect answers (container environments, which may hold secrets)
        // at debug and trace: never let -vvv print them.
        format!("{level},bollard=info")
    } else {
        // Keep our own crate at the chosen level and the HTTP stack quieter.
        format!("{level},hyper=warn,hyper_util=warn,reqwest=warn,rustls=warn,bollard=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    init_with(filter, format);
}

/// bollard logs whole inspect answers and create bodies at debug and trace, i.e. container
/// environments that may hold secrets: whatever `-v` or `RUST_LOG` says, its lines above info
/// are dropped. A ceiling, not a directive: both filters must let a line through, so `-qq` (or
/// `RUST_LOG=off`) silences bollard too.
fn log_ceiling() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("bollard", LevelFilter::INFO)
}

fn init_with(filter: tracing_subscriber::EnvFilter, format: LogFormat) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = filter.and(log_ceiling());
    // Colour only on a terminal: journald, Loki and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = log_layer(format, ansi, progress::stderr).with_filter(filter);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// The log lines, text or JSON, written to what `out` makes. Every field and message passes the
/// one sanitiser (`shown`): a log line carries app names, hosts, engine and API messages, and
/// none of them may end the line, colour it or reorder it. In JSON, the encoder escapes control
/// characters and `shown::in_json` the rest.
fn log_layer<S, W>(
    format: LogFormat,
    ansi: bool,
    out: fn() -> W,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: std::io::Write + 'static,
{
    use tracing_subscriber::Layer as _;
    let layer = tracing_subscriber::fmt::layer().with_ansi(ansi);
    match format {
        LogFormat::Json => layer.json().with_writer(move || JsonLines(out())).boxed(),
        LogFormat::Text => layer
            .fmt_fields(sanitised_fields())
            .with_writer(out)
            .boxed(),
    }
}

/// The text log's fields as tracing writes them (`name=value`, the message bare), each value
/// escaped by [`shown::in_log`].
fn sanitised_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let v = format!("{value:?}");
        let v = shown::in_log(&v);
        if field.name() == "message" {
            write!(w, "{v}")
        } else {
            write!(w, "{}={v}", field.name())
        }
    })
    .delimited(" ")
}

/// A writer of JSON log lines: each line through [`shown::in_json`].
struct JsonLines<W>(W);

impl<W: std::io::Write> std::io::Write for JsonLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) => self.0.write_all(shown::in_json(s).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Run a parsed command; returns the process exit code. The Infisical access tokens the run
/// minted are revoked at the end (a one-shot run and `watch` alike).
pub async fn run(parsed: Parsed) -> u8 {
    let code = run_command(parsed).await;
    crate::infisical::auth::revoke_minted().await;
    code
}

async fn run_command(parsed: Parsed) -> u8 {
    let quiet = parsed.cli.global.quiet;
    let output = match &parsed.cli.command {
        Command::Sync(a) => Some(Output::from(a.output)),
        Command::Watch(a) => Some(a.sync.output.into()),
        Command::Setup(a) => Some(a.sync.output.into()),
        _ => None,
    };
    progress::init(output == Some(Output::Text), quiet > 0);
    let env = parsed.env.clone();
    match &parsed.cli.command {
        Command::Sync(args) => {
            let cfg = config::commands::sync_config(args, &parsed).await;
            sync::command(cfg, args.dry_run, args.output.into(), quiet > 0).await
        }
        Command::Config(_) => match config::show::prepare(&parsed) {
            Ok(mut shown) => {
                let found = sync::discover::discovered(shown.config()).await;
                shown.add_discovered(&found.bindings, &found.warnings);
                print!("{}", shown.render());
                exit::OK
            }
            Err(e) => {
                report_error(&e.to_string(), e.hint().as_deref(), Output::Text);
                e.exit_code()
            }
        },
        Command::Setup(args) => {
            let cfg = config::commands::setup_config(args, &parsed).await;
            setup::command(cfg, args.sync.output.into()).await
        }
        Command::Verify(args) => {
            let cfg = config::verify::VerifyConfig::build(
                args,
                &env,
                parsed.file.as_ref(),
                &parsed.origins,
            );
            verify::command(cfg).await
        }
        Command::Watch(_) => {
            let argv = parsed.argv.clone();
            watch::run(parsed, argv).await
        }
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics when a write fails, and a reader that
            // stops early (`| head -1`) closes the pipe.
            let mut buf = Vec::new();
            clap_complete::generate(args.shell, &mut cmd, "audsync", &mut buf);
            match write_stdout(&buf) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("error: cannot write the completions: {e}");
                    exit::FAILURE
                }
            }
        }
        Command::Man(args) => match man(args.out_dir.as_deref()) {
            Ok(()) => exit::OK,
            // `audsync man | head`: the reader had enough.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
            Err(e) => {
                eprintln!("error: cannot write the man page: {e}");
                exit::FAILURE
            }
        },
        Command::Get(args) => match get(args, &env).await {
            Ok(aud) => {
                println!("{aud}");
                exit::OK
            }
            Err(e) => {
                report_error(&e.to_string(), e.hint().as_deref(), Output::Text);
                e.exit_code()
            }
        },
    }
}

/// Write `bytes` to stdout; a reader that went away (EPIPE) is no error.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// The man page on stdout, or every page (audsync.1, audsync-<command>.1) into `dir`.
fn man(dir: Option<&std::path::Path>) -> std::io::Result<()> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let Some(dir) = dir else {
        return clap_mangen::Man::new(cmd).render(&mut std::io::stdout());
    };
    std::fs::create_dir_all(dir)?;
    let write = |name: String, c: clap::Command| -> std::io::Result<()> {
        let mut f = std::fs::File::create(dir.join(format!("{name}.1")))?;
        clap_mangen::Man::new(c).render(&mut f)
    };
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("audsync-{}", sub.get_name());
        write(name.clone(), sub.clone().name(name))?;
    }
    write("audsync".into(), cmd)
}

async fn get(args: &cli::GetArgs, env: &Env) -> Result<String, Error> {
    let cfg = config::credentials::build_with(&args.source, None, env.clone(), |e| {
        config::credentials::built("get");
        config::SourceConfig::from_args_with(&args.source, e, args.origin, &args.access)
    })
    .await?;
    let client = source::client(&cfg);
    Ok(source::fetch(&client, &cfg, None).await?.aud)
}

pub use sync::report::report_error;

#[cfg(test)]
mod logging_tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Which (target, level) lines get through `directives` capped by the ceiling.
    fn shown(directives: &str) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
            fn on_event(
                &self,
                e: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let m = e.metadata();
                if let Ok(mut v) = self.0.lock() {
                    v.push(format!("{} {}", m.target(), m.level()));
                }
            }
        }
        let seen = Seen::default();
        let filter = tracing_subscriber::EnvFilter::new(directives).and(super::log_ceiling());
        let sub = tracing_subscriber::registry().with(seen.clone().with_filter(filter));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "bollard", "an info line");
            tracing::debug!(target: "bollard::docker", "an inspect answer with the environment");
            tracing::trace!(target: "bollard", "a create body");
            tracing::debug!(target: "audsync", "ours");
        });
        seen.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    #[test]
    fn bollard_is_capped_at_info_and_silenced_with_everything_else() {
        // -vvv / RUST_LOG=trace: ours at trace, bollard never above info.
        assert_eq!(
            shown("trace"),
            vec!["bollard INFO".to_string(), "audsync DEBUG".to_string()]
        );
        assert_eq!(shown("bollard=trace,audsync=trace").len(), 2);
        // -qq ("off") and RUST_LOG=off: nothing at all, bollard included.
        assert!(shown("off").is_empty());
        assert!(shown("error").is_empty());
    }

    static LINES: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

    struct Lines;

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            LINES
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    use super::LogFormat;

    /// Whatever a log line carries — a message built from an outside string, a `%` field, a
    /// `?` field, a plain string field — reaches the log escaped, in text and in JSON.
    #[test]
    fn every_log_field_passes_the_sanitiser() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let evil = "\u{1b}[31mApp\u{202e}ppa\u{200b}\nhint: forged";
        for format in [LogFormat::Text, LogFormat::Json] {
            LINES.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let sub =
                tracing_subscriber::registry().with(super::log_layer(format, false, || Lines));
            tracing::subscriber::with_default(sub, || {
                tracing::warn!(app = %evil, name = evil, debug = ?evil, "skipped {evil}");
            });
            let out =
                String::from_utf8(LINES.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap();
            assert_eq!(out.lines().count(), 1, "{format:?}: one line: {out}");
            assert!(out.ends_with('\n'), "{format:?}: {out}");
            for raw in ['\u{1b}', '\u{202e}', '\u{200b}'] {
                assert!(!out.contains(raw), "{format:?}: raw {raw:?} in {out}");
            }
            match format {
                LogFormat::Text => {
                    assert!(
                        out.contains(r"skipped \e[31mApp\u{202e}ppa\u{200b}\nhint: forged"),
                        "{out}"
                    );
                    assert!(
                        out.contains(r"app=\e[31mApp\u{202e}ppa\u{200b}\nhint: forged"),
                        "{out}"
                    );
                }
                LogFormat::Json => {
                    let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
                    assert_eq!(v["fields"]["app"], evil, "the value a parser reads is kept");
                    assert!(out.contains(r"\u202e") && out.contains(r"\u200b"), "{out}");
                }
            }
        }
    }
}
