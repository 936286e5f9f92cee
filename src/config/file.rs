//! The config file (`audsync.toml`): settings for the whole stack and one `[[binding]]` per
//! protected host.
//!
//! The file is walked by hand over the TOML parser's spanned tree, so every problem is listed
//! at once at the line and column of the bad value ([`Problem`]), and no message quotes a value
//! (a mistyped secret must not be printed) but a short bad word of an enumerated setting. Settings map onto the same variable names as the environment (`cloudflare.account_id`
//! is `CLOUDFLARE_ACCOUNT_ID`) and become a layer below it; relative paths are taken from the
//! file's directory. Inline secrets are accepted only from a file that is mode 0600 and owned by
//! the running user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::layers::FileLayer;

/// The default config file, looked for in the working directory.
pub const DEFAULT_NAME: &str = "audsync.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    /// A path: relative paths are taken from the config file's directory.
    Path,
    /// A credential: inline only in a private file; shown redacted.
    Secret,
}

/// Every setting the file may carry outside `[[binding]]`: (table.key, variable, kind).
pub const SETTINGS: &[(&str, &str, Kind)] = &[
    (
        "cloudflare.account_id",
        "CLOUDFLARE_ACCOUNT_ID",
        Kind::Plain,
    ),
    ("cloudflare.api_url", "CLOUDFLARE_API_URL", Kind::Plain),
    ("cloudflare.token", "CLOUDFLARE_API_TOKEN", Kind::Secret),
    (
        "cloudflare.token_file",
        "CLOUDFLARE_API_TOKEN_FILE",
        Kind::Path,
    ),
    ("cloudflare.email", "CLOUDFLARE_EMAIL", Kind::Plain),
    ("cloudflare.api_key", "CLOUDFLARE_API_KEY", Kind::Secret),
    (
        "cloudflare.api_key_file",
        "CLOUDFLARE_API_KEY_FILE",
        Kind::Path,
    ),
    (
        "cloudflare.auth_domain",
        "CLOUDFLARE_AUTH_DOMAIN",
        Kind::Plain,
    ),
    ("cloudflare.team_name", "CLOUDFLARE_TEAM_NAME", Kind::Plain),
    ("infisical.host", "INFISICAL_HOST", Kind::Plain),
    ("infisical.project_id", "INFISICAL_PROJECT_ID", Kind::Plain),
    (
        "infisical.environment",
        "INFISICAL_ENVIRONMENT",
        Kind::Plain,
    ),
    (
        "infisical.secret_path",
        "INFISICAL_SECRET_PATH",
        Kind::Plain,
    ),
    ("infisical.api", "AUDSYNC_INFISICAL_API", Kind::Plain),
    ("infisical.client_id", "INFISICAL_CLIENT_ID", Kind::Secret),
    (
        "infisical.client_id_file",
        "INFISICAL_CLIENT_ID_FILE",
        Kind::Path,
    ),
    (
        "infisical.client_secret",
        "INFISICAL_CLIENT_SECRET",
        Kind::Secret,
    ),
    (
        "infisical.client_secret_file",
        "INFISICAL_CLIENT_SECRET_FILE",
        Kind::Path,
    ),
    ("infisical.token", "INFISICAL_TOKEN", Kind::Secret),
    ("infisical.token_file", "INFISICAL_TOKEN_FILE", Kind::Path),
    ("timeout", "AUDSYNC_TIMEOUT", Kind::Plain),
    ("state_file", "AUDSYNC_STATE_FILE", Kind::Path),
    ("lock_dir", "AUDSYNC_LOCK_DIR", Kind::Path),
    ("lock_timeout", "AUDSYNC_LOCK_TIMEOUT", Kind::Plain),
    ("write_mode", "AUDSYNC_WRITE_MODE", Kind::Plain),
    ("create_env_file", "AUDSYNC_CREATE_ENV_FILE", Kind::Plain),
    ("discover", "AUDSYNC_DISCOVER", Kind::Plain),
    ("discover_scope", "AUDSYNC_DISCOVER_SCOPE", Kind::Plain),
    ("discover_roots", "AUDSYNC_DISCOVER_ROOT", Kind::Path),
    ("restart", "AUDSYNC_RESTART", Kind::Plain),
    ("settle", "AUDSYNC_SETTLE", Kind::Plain),
    ("health_timeout", "AUDSYNC_HEALTH_TIMEOUT", Kind::Plain),
    ("exec_timeout", "AUDSYNC_EXEC_TIMEOUT", Kind::Plain),
    ("output", "AUDSYNC_OUTPUT", Kind::Plain),
    ("log_format", "AUDSYNC_LOG_FORMAT", Kind::Plain),
    ("source", "AUDSYNC_SOURCE", Kind::Plain),
    ("interval", "AUDSYNC_INTERVAL", Kind::Plain),
    ("jitter", "AUDSYNC_JITTER", Kind::Plain),
    ("listen", "AUDSYNC_LISTEN", Kind::Plain),
    ("unhealthy_after", "AUDSYNC_UNHEALTHY_AFTER", Kind::Plain),
    ("notify_on", "AUDSYNC_NOTIFY_ON", Kind::Plain),
    ("trigger_token", "AUDSYNC_TRIGGER_TOKEN", Kind::Secret),
    (
        "trigger_token_file",
        "AUDSYNC_TRIGGER_TOKEN_FILE",
        Kind::Path,
    ),
];

/// The keys a `[[binding]]` may carry.
pub const BINDING_KEYS: &[&str] = &[
    "name",
    "domain",
    "app_id",
    "key",
    "sinks",
    "targets",
    "restart",
    "tunnel_id",
    "source",
    "url",
    "create",
];

/// A value with the line and column (1-based, in characters) of where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub value: T,
    pub line: usize,
    pub col: usize,
}

impl<T> At<T> {
    pub fn pos(&self) -> (usize, usize) {
        (self.line, self.col)
    }
}

/// Where a binding writes the value.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkSpec {
    /// A `.env` file (absolute, or relative to the config file's directory).
    Env(PathBuf),
    /// A folder (secret path) inside the Infisical project.
    Infisical(String),
}

/// What a binding applies the value to.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSpec {
    Container(String),
    /// `PROJECT/SERVICE`.
    ComposeService(String),
    /// A Swarm service, by name.
    SwarmService(String),
    /// A command, as its words (`exec = ["systemctl", "restart", "lambda"]`).
    Exec(Vec<String>),
}

/// One `[[binding]]`, as written (validated later, with the other layers, in `config`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileBinding {
    /// Line and column of the `[[binding]]` header (where a missing key is reported).
    pub line: usize,
    pub col: usize,
    pub fields: BTreeMap<String, At<String>>,
    pub sinks: Vec<At<SinkSpec>>,
    pub targets: Vec<At<TargetSpec>>,
    /// Line of `sinks` / `targets`, when given.
    pub sinks_line: Option<usize>,
    pub targets_line: Option<usize>,
}

impl FileBinding {
    pub fn get(&self, k: &str) -> Option<&At<String>> {
        self.fields.get(k)
    }

    /// Where the value of `k` is written, else the binding's header.
    pub fn pos(&self, k: &str) -> (usize, usize) {
        self.fields.get(k).map_or((self.line, self.col), At::pos)
    }
}

/// The parsed file.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Settings by variable name (a layer of [`super::Env`]).
    pub settings: BTreeMap<String, At<String>>,
    pub bindings: Vec<FileBinding>,
    /// `notify = [...]`: notification URLs (secrets: they carry tokens).
    pub notify: Vec<At<String>>,
    /// The file's owner and mode, and whether it may steer a run, as found when it was read
    /// ([`super::trust`]); `parse` in `config` refuses an untrusted file before using it.
    pub facts: Option<super::trust::Facts>,
    /// The problems of the file's shape ([`parse_all`]), reported with the values' problems.
    pub problems: Vec<Problem>,
}

impl FileConfig {
    pub fn layer(&self) -> FileLayer {
        FileLayer {
            path: self.path.clone(),
            values: self
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), (v.value.clone(), v.line)))
                .collect(),
            facts: self.facts.clone(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// Read and check the file; a file that cannot be read, or a syntax error, is the one message
/// returned; the problems of its shape are kept in [`FileConfig::problems`]. The file's
/// owner and mode are recorded ([`FileConfig::facts`]); a file that may not steer the run is
/// not parsed at all (its settings are refused as a whole by the caller).
pub fn load(path: &Path, ctx: &super::trust::Context) -> Result<FileConfig, Vec<String>> {
    let shown = path.display().to_string();
    let (bytes, facts) = match super::trust::read(path, crate::fsx::MAX_TEXT, ctx) {
        Ok(Some(read)) => read,
        Ok(None) => {
            return Err(vec![format!(
                "{shown}: no such file (--config / AUDSYNC_CONFIG)"
            )]);
        }
        Err(e) => return Err(vec![format!("cannot read {shown}: {e}")]),
    };
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if !facts.trusted() {
        return Ok(FileConfig {
            path: abs,
            facts: Some(facts),
            ..FileConfig::default()
        });
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return Err(vec![format!("{shown}: not UTF-8 text")]);
    };
    let private = if facts.private_to(ctx.euid) {
        Ok(())
    } else if facts.uid != ctx.euid {
        Err(NotPrivate(format!(
            "it is owned by uid {}, not by the user running audsync (uid {})",
            facts.uid, ctx.euid
        )))
    } else {
        Err(NotPrivate(format!(
            "its mode is {:o}; run `chmod 600 {}`",
            facts.mode & 0o777,
            path.display()
        )))
    };
    let mut cfg = parse_all(&text, &abs, private)?;
    cfg.facts = Some(facts);
    Ok(cfg)
}

/// Why a config file is not private (inline secrets are refused then).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotPrivate(String);

/// A problem of the file, at the line and column of the bad value (of the key that is unknown,
/// or of the table that lacks a key). Its message names the setting and what is allowed, never
/// the value (free text may be a secret typed into the wrong place); the one exception is a
/// short bad word for an enumerated setting (`restart = "recreat"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl Problem {
    pub fn new(pos: (usize, usize), msg: impl Into<String>) -> Problem {
        Problem {
            line: pos.0,
            col: pos.1,
            msg: msg.into(),
        }
    }
}

/// Every problem as `path:line:col: message`, in the file's order, each once.
pub fn render(path: &Path, mut problems: Vec<Problem>) -> Vec<String> {
    problems.sort();
    problems.dedup();
    let shown = path.display();
    problems
        .into_iter()
        .map(|p| format!("{shown}:{}:{}: {}", p.line, p.col, p.msg))
        .collect()
}

/// Parse `text` (the file at `path`). `private` says whether inline secrets are allowed.
/// Every problem of the file's shape is returned at once ([`render`]ed).
pub fn parse(
    text: &str,
    path: &Path,
    private: Result<(), NotPrivate>,
) -> Result<FileConfig, Vec<String>> {
    let cfg = parse_all(text, path, private)?;
    if cfg.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(render(path, cfg.problems))
    }
}

/// [`parse`], keeping the problems of the file's shape in [`FileConfig::problems`] beside what
/// did parse, so that the values' problems are reported with them in one go. A syntax error is
/// the one message returned alone.
pub fn parse_all(
    text: &str,
    path: &Path,
    private: Result<(), NotPrivate>,
) -> Result<FileConfig, Vec<String>> {
    let shown = path.display().to_string();
    let lines = LineIndex::new(text);
    let (doc, errors) = DeTable::parse_recoverable(text);
    // The first error only: the parser's recovery turns one mistake (an unclosed quote) into a
    // cascade of errors on the lines after it, which point nowhere useful.
    if let Some(e) = errors.first() {
        let (line, col) = e
            .span()
            .map(|s| lines.mistake_at(text, s.start))
            .unwrap_or((0, 0));
        // The parser's message names the syntax rule only; its Display would quote the line,
        // which may hold a secret.
        return Err(vec![format!(
            "{shown}:{line}:{col}: TOML syntax error: {}",
            e.message()
        )]);
    }
    let mut problems: Vec<Problem> = Vec::new();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut cfg = FileConfig {
        path: path.to_path_buf(),
        ..FileConfig::default()
    };
    let at = |s: &std::ops::Range<usize>| lines.line_col(text, s.start);
    for (k, v) in doc.get_ref().iter() {
        let key = k.get_ref().as_ref();
        let kat = at(&k.span());
        match (key, v.get_ref()) {
            ("cloudflare" | "infisical", DeValue::Table(t)) => {
                for (k2, v2) in t.iter() {
                    let full = format!("{key}.{}", k2.get_ref());
                    setting(
                        &full,
                        v2,
                        at(&k2.span()),
                        at(&v2.span()),
                        dir,
                        &private,
                        &mut cfg,
                        &mut problems,
                    );
                }
            }
            ("cloudflare" | "infisical", _) => problems.push(Problem::new(
                at(&v.span()),
                format!("`{key}` must be a table ([{key}])"),
            )),
            ("binding", DeValue::Array(items)) => {
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::Table(t) => {
                            let b = binding(t, at(&item.span()), dir, &at, &mut problems);
                            cfg.bindings.push(b);
                        }
                        _ => problems.push(Problem::new(
                            at(&item.span()),
                            "each binding must be a table ([[binding]])",
                        )),
                    }
                }
            }
            ("notify", DeValue::Array(items)) => {
                if let Err(why) = &private {
                    problems.push(Problem::new(
                        kat,
                        format!("`notify` URLs carry tokens, but {why}; make the file private, or set AUDSYNC_NOTIFY in the environment"),
                    ));
                    continue;
                }
                for item in items.iter() {
                    let (line, col) = at(&item.span());
                    match item.get_ref() {
                        DeValue::String(s) => cfg.notify.push(At {
                            value: s.to_string(),
                            line,
                            col,
                        }),
                        _ => problems.push(Problem::new(
                            (line, col),
                            "each `notify` entry must be a URL string",
                        )),
                    }
                }
            }
            ("discover_roots", DeValue::Array(items)) => {
                // A list of directories: one comma-separated value, each taken from the file's
                // directory when relative.
                let mut roots = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) if !s.contains(',') => roots.push(resolve(dir, s)),
                        _ => problems.push(Problem::new(
                            at(&item.span()),
                            "each `discover_roots` entry must be a directory path (without commas)",
                        )),
                    }
                }
                let (line, col) = at(&v.span());
                cfg.settings.insert(
                    "AUDSYNC_DISCOVER_ROOT".to_string(),
                    At {
                        value: roots.join(","),
                        line,
                        col,
                    },
                );
            }
            ("notify", _) => problems.push(Problem::new(
                at(&v.span()),
                "`notify` must be a list of URLs (notify = [\"ntfy+https://ntfy.sh/topic\"])",
            )),
            ("binding", _) => problems.push(Problem::new(
                kat,
                "`binding` must be an array of tables ([[binding]])",
            )),
            _ => setting(
                key,
                v,
                kat,
                at(&v.span()),
                dir,
                &private,
                &mut cfg,
                &mut problems,
            ),
        }
    }
    cfg.problems = problems;
    Ok(cfg)
}

/// One setting: `kat` is where its key is, `vat` where its value is.
#[allow(clippy::too_many_arguments)]
fn setting(
    key: &str,
    v: &Spanned<DeValue<'_>>,
    kat: (usize, usize),
    vat: (usize, usize),
    dir: &Path,
    private: &Result<(), NotPrivate>,
    cfg: &mut FileConfig,
    problems: &mut Vec<Problem>,
) {
    let Some((_, var, kind)) = SETTINGS.iter().find(|(k, _, _)| *k == key) else {
        problems.push(Problem::new(
            kat,
            format!("unknown setting `{key}` (see docs/configuration.md)"),
        ));
        return;
    };
    let Some(value) = scalar(v.get_ref()) else {
        problems.push(Problem::new(vat, format!("`{key}` must be a string")));
        return;
    };
    let value = match kind {
        Kind::Secret => {
            if let Err(why) = private {
                problems.push(Problem::new(
                    vat,
                    format!("`{key}` is a secret written in the file, but {why}; make the file private, or use `{key}_file` / the {var} environment variable"),
                ));
                return;
            }
            value
        }
        Kind::Path => resolve(dir, &value),
        Kind::Plain => value,
    };
    cfg.settings.insert(
        var.to_string(),
        At {
            value,
            line: vat.0,
            col: vat.1,
        },
    );
}

fn binding(
    t: &DeTable<'_>,
    header: (usize, usize),
    dir: &Path,
    at: &dyn Fn(&std::ops::Range<usize>) -> (usize, usize),
    problems: &mut Vec<Problem>,
) -> FileBinding {
    let mut b = FileBinding {
        line: header.0,
        col: header.1,
        ..FileBinding::default()
    };
    for (k, v) in t.iter() {
        let key = k.get_ref().as_ref();
        let kat = at(&k.span());
        let vat = at(&v.span());
        if !BINDING_KEYS.contains(&key) {
            problems.push(Problem::new(
                kat,
                format!(
                    "unknown binding key `{key}` (expected one of: {})",
                    BINDING_KEYS.join(", ")
                ),
            ));
            continue;
        }
        match key {
            "sinks" | "targets" => {
                let Some(items) = v.get_ref().as_array() else {
                    problems.push(Problem::new(
                        vat,
                        format!(
                            "`{key}` must be an array of tables, e.g. {key} = [{{ {} }}]",
                            if key == "sinks" {
                                "env = \".env\""
                            } else {
                                "container = \"lambda-server\""
                            }
                        ),
                    ));
                    continue;
                };
                if key == "sinks" {
                    b.sinks_line = Some(kat.0);
                } else {
                    b.targets_line = Some(kat.0);
                }
                for item in items.iter() {
                    let iat = at(&item.span());
                    let entry = item.get_ref().as_table().and_then(|t| {
                        let mut it = t.iter();
                        let first = it.next()?;
                        it.next().is_none().then_some(first)
                    });
                    let Some((ek, ev)) = entry else {
                        problems.push(Problem::new(iat, format!("each entry of `{key}` is a table with one key, e.g. {{ env = \"/srv/app/.env\" }}")));
                        continue;
                    };
                    let eat = at(&ev.span());
                    let (line, col) = eat;
                    let ek = ek.get_ref().as_ref();
                    if (key, ek) == ("targets", "exec") {
                        let words: Option<Vec<String>> = ev.get_ref().as_array().map(|a| {
                            a.iter()
                                .filter_map(|w| match w.get_ref() {
                                    DeValue::String(s) => Some(s.to_string()),
                                    _ => None,
                                })
                                .collect()
                        });
                        match words {
                            Some(w) if !w.is_empty() && w.len() == ev.get_ref().as_array().map_or(0, |a| a.len()) && !w[0].is_empty() => {
                                b.targets.push(At { value: TargetSpec::Exec(w), line, col })
                            }
                            _ => problems.push(Problem::new(eat, "`exec` must be a non-empty array of strings, the program first, e.g. { exec = [\"systemctl\", \"restart\", \"lambda\"] }")),
                        }
                        continue;
                    }
                    let Some(s) = scalar(ev.get_ref()) else {
                        problems.push(Problem::new(
                            eat,
                            format!("`{ek}` in `{key}` must be a string"),
                        ));
                        continue;
                    };
                    match (key, ek) {
                        ("sinks", "env") => b.sinks.push(At { value: SinkSpec::Env(PathBuf::from(resolve(dir, &s))), line, col }),
                        ("sinks", "infisical") => b.sinks.push(At { value: SinkSpec::Infisical(s), line, col }),
                        ("targets", "container") => b.targets.push(At { value: TargetSpec::Container(s), line, col }),
                        ("targets", "compose_service") => b.targets.push(At { value: TargetSpec::ComposeService(s), line, col }),
                        ("targets", "swarm_service") => b.targets.push(At { value: TargetSpec::SwarmService(s), line, col }),
                        ("sinks", other) => problems.push(Problem::new(at(&item.span()), format!("unknown sink `{other}` (expected env or infisical)"))),
                        (_, other) => problems.push(Problem::new(at(&item.span()), format!("unknown target `{other}` (expected container, compose_service, swarm_service or exec)"))),
                    }
                }
            }
            _ => match scalar(v.get_ref()) {
                Some(s) => {
                    b.fields.insert(
                        key.to_string(),
                        At {
                            value: s,
                            line: vat.0,
                            col: vat.1,
                        },
                    );
                }
                None => problems.push(Problem::new(
                    vat,
                    format!("binding key `{key}` must be a string"),
                )),
            },
        }
    }
    b
}

/// A string, or a number or boolean written bare (`timeout = 30` is 30 seconds).
fn scalar(v: &DeValue<'_>) -> Option<String> {
    match v {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => Some(i.as_str().to_string()),
        DeValue::Float(f) => Some(f.as_str().to_string()),
        DeValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn resolve(dir: &Path, p: &str) -> String {
    let path = Path::new(p);
    if path.is_absolute() {
        p.to_string()
    } else {
        dir.join(path).display().to_string()
    }
}

/// Byte offset -> 1-based line.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        )
    }

    fn line(&self, offset: usize) -> usize {
        match self.0.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// Where the mistake behind a syntax error at `offset` is: an error found at the start of a
    /// line (the next key after `sinks = [{ env = ".env" }` with no `]`) belongs to the end of
    /// the last line before it that holds anything.
    fn mistake_at(&self, text: &str, offset: usize) -> (usize, usize) {
        let (line, col) = self.line_col(text, offset);
        let start = self.0.get(line.saturating_sub(1)).copied().unwrap_or(0);
        let before = text.get(start..offset.min(text.len())).unwrap_or("");
        if !before.trim().is_empty() || line <= 1 {
            return (line, col);
        }
        let prev = text.get(..start).unwrap_or("").trim_end();
        if prev.is_empty() {
            return (line, col);
        }
        self.line_col(text, prev.len())
    }

    /// Byte offset -> 1-based (line, column in characters).
    fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let line = self.line(offset);
        let start = self.0.get(line.saturating_sub(1)).copied().unwrap_or(0);
        let col = text
            .get(start..offset.min(text.len()))
            .map_or(0, |s| s.chars().count());
        (line, col + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"# the stack
timeout = "10s"
[cloudflare]
account_id = "0123456789abcdef0123456789abcdef"
token_file = "secrets/cf-token"

[[binding]]
domain = "api.example.com"
key = "CLOUDFLARE_AUD_TAG"
sinks = [{ env = "lambda/.env" }, { infisical = "/lambda" }]
targets = [{ container = "lambda-server" }, { compose_service = "localai/lambda" }, { swarm_service = "lambda_api" }]
restart = "auto"

[[binding]]
app_id = "0f3ad5f4-0000-4000-8000-00000000abcd"
key = "N8N_AUD"
sinks = [{ env = "/srv/n8n/.env" }]
"#;

    #[test]
    fn a_syntax_error_before_a_secret_names_the_line_only() {
        for doc in [
            "timeout = \"10s\nlisten = 'x\n[cloudflare]\ntoken = \"cf-SECRET-inline-77\"\n",
            "[cloudflare]\naccount_id = \"abc\ntoken = \"cf-SECRET-inline-77\"\n",
            "[cloudflare\ntoken = \"cf-SECRET-inline-77\"\n",
            "[cloudflare]\ntoken = cf-SECRET-inline-77\n",
            "[cloudflare]\ntoken = \"cf-SECRET-inline-77\n",
        ] {
            let e = parse(doc, Path::new("/x/audsync.toml"), Ok(())).unwrap_err();
            let all = e.join("\n");
            assert!(all.contains("/x/audsync.toml:"), "{all}");
            assert!(!all.contains("SECRET"), "the line's text leaked: {all}");
        }
    }

    #[test]
    fn settings_and_bindings_with_lines_and_resolved_paths() {
        let cfg = parse(DOC, Path::new("/etc/audsync/audsync.toml"), Ok(())).unwrap();
        assert_eq!(
            cfg.settings["AUDSYNC_TIMEOUT"],
            At {
                value: "10s".into(),
                line: 2,
                col: 11,
            }
        );
        assert_eq!(cfg.settings["CLOUDFLARE_ACCOUNT_ID"].line, 4);
        assert_eq!(
            cfg.settings["CLOUDFLARE_API_TOKEN_FILE"].value,
            "/etc/audsync/secrets/cf-token"
        );
        assert_eq!(cfg.bindings.len(), 2);
        let b = &cfg.bindings[0];
        assert_eq!(b.line, 7);
        assert_eq!(b.get("domain").unwrap().value, "api.example.com");
        assert_eq!(
            b.sinks.iter().map(|s| s.value.clone()).collect::<Vec<_>>(),
            vec![
                SinkSpec::Env("/etc/audsync/lambda/.env".into()),
                SinkSpec::Infisical("/lambda".into())
            ]
        );
        assert_eq!(
            b.targets[1].value,
            TargetSpec::ComposeService("localai/lambda".into())
        );
        assert_eq!(
            b.targets[2].value,
            TargetSpec::SwarmService("lambda_api".into())
        );
        assert_eq!(
            cfg.bindings[1].sinks[0].value,
            SinkSpec::Env("/srv/n8n/.env".into())
        );
    }

    #[test]
    fn every_problem_is_listed_with_its_line() {
        let doc = "tmeout = \"1s\"\n[cloudflare]\naccount = \"x\"\n[[binding]]\ndomian = \"a\"\nsinks = [{ file = \"x\" }]\n";
        let p = parse(doc, Path::new("a.toml"), Ok(())).unwrap_err();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(
            p[0].starts_with("a.toml:1:1: unknown setting `tmeout`"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("a.toml:3:1: unknown setting `cloudflare.account`"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("a.toml:5:1: unknown binding key `domian`")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("a.toml:6:10: unknown sink `file`")),
            "{p:?}"
        );
    }

    #[test]
    fn an_inline_secret_needs_a_private_file_and_is_never_quoted() {
        let doc = "[cloudflare]\ntoken = \"cf-SECRET-value\"\n";
        let p = parse(
            doc,
            Path::new("a.toml"),
            Err(NotPrivate("its mode is 644".into())),
        )
        .unwrap_err();
        assert!(
            p[0].contains("a.toml:2") && p[0].contains("chmod") || p[0].contains("mode is 644"),
            "{p:?}"
        );
        assert!(!p[0].contains("cf-SECRET-value"));
        let ok = parse(doc, Path::new("a.toml"), Ok(())).unwrap();
        assert_eq!(ok.settings["CLOUDFLARE_API_TOKEN"].value, "cf-SECRET-value");
    }

    #[test]
    fn a_syntax_error_is_one_message_at_the_line_and_column_of_the_mistake() {
        // An unclosed string on line 2; the lines after it are fine.
        let doc = "timeout = \"10s\"\nlisten = \"127.0.0.1:9\nsettle = \"3s\"\n[cloudflare]\naccount_id = \"abc\"\n";
        let p = parse(doc, Path::new("a.toml"), Ok(())).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("a.toml:2:"), "{p:?}");
        // A bare word where a value belongs: line 3, column 9.
        let doc = "[cloudflare]\naccount_id = \"abc\"\ntoken = cf-bare\n";
        let p = parse(doc, Path::new("a.toml"), Ok(())).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("a.toml:3:9: TOML syntax error"), "{p:?}");
        // An array left open: the parser stumbles on the next line, five times over; the
        // mistake is the end of line 3.
        let doc = "[[binding]]\ndomain = \"a.example.com\"\nsinks = [{ env = \".env\" }\n\ntargets = []\n";
        let p = parse(doc, Path::new("a.toml"), Ok(())).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("a.toml:3:26: TOML syntax error"), "{p:?}");
    }

    #[test]
    fn a_syntax_error_names_the_line_not_the_text() {
        let doc = "[cloudflare]\ntoken = \"cf-SECRET-unclosed\nemail = \"a@b.c\"\n";
        let p = parse(doc, Path::new("a.toml"), Ok(())).unwrap_err();
        assert!(p.iter().all(|m| !m.contains("cf-SECRET")), "{p:?}");
        assert!(p[0].starts_with("a.toml:2:"), "{p:?}");
        assert!(p[0].contains(": TOML syntax error"), "{p:?}");
    }
}
