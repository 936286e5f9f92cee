//! The variable layers every setting is looked up in, highest first: the process environment,
//! the `.env` file (`--env-file`), the config file (`audsync.toml`), and values fetched from a
//! secret store (Infisical). Flags sit above all of them (clap), built-in defaults below.
//!
//! The process environment is a snapshot ([`Vars`]) taken once by `main`, so tests inject their
//! own and the precedence is tested in-process. This is the only place a setting's origin is
//! known; it never stores or prints a secret's value in its `Debug`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Error;
use crate::secret::Secret;
use crate::sink::envfile;

/// A snapshot of environment variables (the process's, or a test's).
#[derive(Clone, Default, PartialEq)]
pub struct Vars(BTreeMap<String, String>);

impl Vars {
    /// The process environment, read once (non-UTF-8 variables are skipped).
    pub fn from_process() -> Vars {
        Vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Vars {
        Vars(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// A non-empty value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value as set, also when empty (for variables passed on to a child process as they
    /// are).
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Set at all (also when empty): an empty process variable still hides lower layers'
    /// values from clap, as clap's own env handling did.
    pub fn is_set(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Settings that decide where credentials go or which files are written: taken from a `.env`
/// or config file only when that file is its owner's alone ([`crate::fsx::owner_only_writable`]).
pub fn decides_where(name: &str) -> bool {
    name.ends_with("_FILE")
        || matches!(
            name,
            "CLOUDFLARE_API_URL"
                | "INFISICAL_HOST"
                | "CLOUDFLARE_AUTH_DOMAIN"
                | "AUDSYNC_CONFIG"
                | "AUDSYNC_LOCK_DIR"
                | "AUDSYNC_DISCOVER"
                | "AUDSYNC_DISCOVER_ROOT"
                | "AUDSYNC_ALLOW_INSECURE_HTTP"
                | "AUDSYNC_ALLOW_UNSIGNED_KID"
        )
}

/// Settings a file others can change may not set (the message names them and the fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnsafeSettings(String);

/// Refuse the file's settings that [`decides_where`] when the file is not its owner's alone.
pub fn refuse_unsafe_settings<'a>(
    path: &Path,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), UnsafeSettings> {
    let unsafe_names: Vec<&str> = names
        .into_iter()
        .map(String::as_str)
        .filter(|n| decides_where(n))
        .collect();
    if unsafe_names.is_empty() {
        return Ok(());
    }
    match crate::fsx::owner_only_writable(path) {
        Ok(()) => Ok(()),
        Err(why) => Err(UnsafeSettings(format!(
            "{why}: until then it may not set {} (settings that decide where credentials go and which files are written); or set them in the process environment",
            unsafe_names.join(", ")
        ))),
    }
}

/// Where a setting's value came from (`audsync config` shows it, like `git config --show-origin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    /// The process environment, by variable name.
    Env(String),
    /// The `.env` file (`--env-file`), path and line.
    EnvFile(PathBuf, usize),
    /// The config file, path and line.
    File(PathBuf, usize),
    /// Read from Infisical (Cloudflare credentials).
    Infisical,
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => f.write_str("flag"),
            Origin::Env(n) => write!(f, "env:{n}"),
            Origin::EnvFile(p, l) => write!(f, "env-file:{}:{l}", p.display()),
            Origin::File(p, l) => write!(f, "file:{}:{l}", p.display()),
            Origin::Infisical => f.write_str("infisical"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// One file layer: values by variable name, each with its line.
#[derive(Clone, Default)]
pub struct FileLayer {
    pub path: PathBuf,
    pub values: BTreeMap<String, (String, usize)>,
}

/// Every layer below the flags. Its `Debug` shows keys only: the `.env` file and the config
/// file may hold the API token.
#[derive(Clone, Default)]
pub struct Env {
    /// The `.env` file read for settings (also the default sink of a flag-only run).
    pub env_file: Option<PathBuf>,
    process: Arc<Vars>,
    dotenv: FileLayer,
    file: FileLayer,
    /// Values read from a secret store (Infisical): the last layer.
    fetched: BTreeMap<String, Secret>,
    /// `--allow-insecure-http`: credentials may go over plain http to any host.
    pub allow_insecure_http: bool,
    /// `--engine` / AUDSYNC_ENGINE: where to look for the engine when DOCKER_HOST is unset.
    pub engine: Option<super::engine::Engine>,
    /// No layer sets a Cloudflare credential, and the build must leave it unset (`Auth::None`):
    /// the credentials phase reads it from Infisical after the build and installs it
    /// ([`super::credentials`]), or the build has already reported it missing.
    pub(crate) defer_cloudflare_auth: bool,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("env_file", &self.env_file)
            .field("process_keys", &self.process)
            .field(
                "dotenv_keys",
                &self.dotenv.values.keys().collect::<Vec<_>>(),
            )
            .field("file_keys", &self.file.values.keys().collect::<Vec<_>>())
            .field("fetched_keys", &self.fetched.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Env {
    /// Only the process environment (no files).
    pub fn new(process: Vars) -> Env {
        Env {
            process: Arc::new(process),
            ..Env::default()
        }
    }

    /// Add the `.env` file at `path` as the layer under the process environment. A missing file
    /// is an empty layer. A file that does not parse is reported by path and line only: its
    /// text may hold secrets.
    pub fn with_env_file(mut self, path: &Path) -> Result<Env, Error> {
        let values = match crate::fsx::read_text(path) {
            Ok(Some(text)) => {
                let parsed = envfile::parse(&text).map_err(|e| {
                    Error::usage(format!(
                        "{}: does not parse as a .env file: {e}",
                        path.display()
                    ))
                })?;
                let lines = envfile::key_lines(&text);
                parsed
                    .into_iter()
                    .map(|(k, v)| {
                        let line = lines.get(&k).copied().unwrap_or(0);
                        (k, (v, line))
                    })
                    .collect()
            }
            Ok(None) => BTreeMap::new(),
            Err(e) => return Err(Error::usage(e.to_string())),
        };
        // Only values a lower layer would use matter, but refusing outright is clearer.
        refuse_unsafe_settings(path, values.keys()).map_err(|e| Error::usage(e.to_string()))?;
        self.env_file = Some(path.to_path_buf());
        self.dotenv = FileLayer {
            path: path.to_path_buf(),
            values,
        };
        Ok(self)
    }

    /// Add the config file's settings as the layer under the `.env` file.
    pub fn with_file_layer(mut self, layer: FileLayer) -> Env {
        self.file = layer;
        self
    }

    pub fn process(&self) -> &Vars {
        &self.process
    }

    /// A non-empty value from the process environment, else the `.env` file, else the config
    /// file, else one fetched from a secret store ([`Env::with_fetched`]).
    pub fn get(&self, name: &str) -> Option<String> {
        self.lookup(name).map(|(v, _)| v)
    }

    /// [`Env::get`] with the value's origin.
    pub fn lookup(&self, name: &str) -> Option<(String, Origin)> {
        if let Some(v) = self.process.get(name) {
            return Some((v.to_string(), Origin::Env(name.to_string())));
        }
        for (layer, file) in [(&self.dotenv, false), (&self.file, true)] {
            if let Some((v, line)) = layer.values.get(name).filter(|(v, _)| !v.is_empty()) {
                let origin = if file {
                    Origin::File(layer.path.clone(), *line)
                } else {
                    Origin::EnvFile(layer.path.clone(), *line)
                };
                return Some((v.clone(), origin));
            }
        }
        self.fetched
            .get(name)
            .map(|v| v.expose().to_string())
            .filter(|v| !v.is_empty())
            .map(|v| (v, Origin::Infisical))
    }

    /// The value clap should take as the default of the option reading `name`, when the process
    /// environment does not set it (there clap's value source is "env"): the `.env` file's or
    /// the config file's.
    pub fn layer_default(&self, name: &str) -> Option<String> {
        self.lookup(name).map(|(v, _)| v)
    }

    /// Add a value read from a secret store, below every other layer.
    pub fn with_fetched(mut self, name: &str, value: Secret) -> Env {
        self.fetched.insert(name.to_string(), value);
        self
    }

    /// True when `name` is set in the `.env` file layer (names only, for the leak check).
    pub fn env_file_names(&self) -> impl Iterator<Item = &String> {
        self.dotenv.values.keys()
    }

    /// `NAME`, or the contents of the file named by `NAME_FILE` (trailing newline dropped).
    pub fn secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        if let Some(v) = self.get(name) {
            return Ok(Some(Secret::new(v)));
        }
        let file_var = format!("{name}_FILE");
        let Some(path) = self.get(&file_var) else {
            return Ok(None);
        };
        let raw = crate::fsx::read_secret_file(Path::new(&path))
            .map_err(|e| Error::usage(format!("{file_var}={path}: {e}")))?;
        let v = raw.trim_end_matches(['\n', '\r']).to_string();
        if v.is_empty() {
            return Err(Error::usage(format!(
                "{file_var}={path}: the file is empty"
            )));
        }
        Ok(Some(Secret::new(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_beats_env_file_beats_config_file_beats_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, "A=dotenv\nB=dotenv\n").unwrap();
        let file = FileLayer {
            path: dir.path().join("audsync.toml"),
            values: [
                ("A".to_string(), ("file".to_string(), 3)),
                ("B".to_string(), ("file".to_string(), 4)),
                ("C".to_string(), ("file".to_string(), 5)),
            ]
            .into(),
        };
        let env = Env::new(Vars::from_pairs([("A", "process")]))
            .with_env_file(&p)
            .unwrap()
            .with_file_layer(file)
            .with_fetched("D", Secret::new("fetched"))
            .with_fetched("C", Secret::new("fetched"));
        assert_eq!(
            env.lookup("A").unwrap(),
            ("process".into(), Origin::Env("A".into()))
        );
        assert_eq!(
            env.lookup("B").unwrap(),
            ("dotenv".into(), Origin::EnvFile(p.clone(), 2))
        );
        assert_eq!(
            env.lookup("C").unwrap(),
            (
                "file".into(),
                Origin::File(dir.path().join("audsync.toml"), 5)
            )
        );
        assert_eq!(
            env.lookup("D").unwrap(),
            ("fetched".into(), Origin::Infisical)
        );
        assert_eq!(env.get("E"), None);
    }

    #[test]
    fn env_debug_shows_keys_not_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, "CLOUDFLARE_API_TOKEN=very-secret-token\n").unwrap();
        let env = Env::new(Vars::from_pairs([("X_TOKEN", "process-secret")]))
            .with_env_file(&p)
            .unwrap();
        let shown = format!("{env:?}");
        assert!(
            shown.contains("CLOUDFLARE_API_TOKEN")
                && !shown.contains("very-secret-token")
                && !shown.contains("process-secret"),
            "{shown}"
        );
    }
}

#[cfg(test)]
mod lock_dir_tests {
    /// The lock directory decides where files are created: a file others can change may not
    /// set it.
    #[test]
    fn the_lock_directory_decides_where() {
        assert!(super::decides_where("AUDSYNC_LOCK_DIR"));
    }
}
