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

use super::trust::{self, Facts};

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
    /// The file's owner and mode, and whether it may steer a run, as found when it was read.
    pub facts: Option<Facts>,
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
    ///
    /// A `.env` that may not steer the run ([`trust`]) is only a sink: when it holds none of
    /// audsync's settings its layer is empty; when it holds some, the run stops here, naming
    /// them, the path component at fault and the fixes.
    pub fn with_env_file(mut self, path: &Path) -> Result<Env, Error> {
        let ctx = trust::Context::from_vars(&self.process);
        let (values, facts) = match trust::read(path, crate::fsx::MAX_TEXT, &ctx) {
            Ok(Some((bytes, facts))) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| Error::usage(format!("{}: not UTF-8 text", path.display())))?;
                let parsed = envfile::parse(&text).map_err(|e| {
                    Error::usage(format!(
                        "{}: does not parse as a .env file: {e}",
                        path.display()
                    ))
                })?;
                let lines = envfile::key_lines(&text);
                let values: BTreeMap<String, (String, usize)> = parsed
                    .into_iter()
                    .map(|(k, v)| {
                        let line = lines.get(&k).copied().unwrap_or(0);
                        (k, (v, line))
                    })
                    .collect();
                (values, Some(facts))
            }
            Ok(None) => (BTreeMap::new(), None),
            Err(e) => {
                return Err(Error::usage(format!("cannot read {}: {e}", path.display())));
            }
        };
        let values = match facts.as_ref().map(|f| &f.verdict) {
            Some(Err(why)) => {
                let names = super::setting_names();
                let found: Vec<&str> = values
                    .keys()
                    .map(String::as_str)
                    .filter(|k| names.contains(*k) || k.starts_with("AUDSYNC_"))
                    .collect();
                if !found.is_empty() {
                    return Err(Error::usage(untrusted_env_file(path, &found, why)));
                }
                BTreeMap::new()
            }
            _ => values,
        };
        self.env_file = Some(path.to_path_buf());
        self.dotenv = FileLayer {
            path: path.to_path_buf(),
            values,
            facts,
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
        (0..4).find_map(|layer| self.in_layer(layer, name))
    }

    /// A non-empty value of `name` in one layer: 0 the process environment, 1 the `.env` file,
    /// 2 the config file, 3 values fetched from a secret store.
    fn in_layer(&self, layer: usize, name: &str) -> Option<(String, Origin)> {
        let from_file = |l: &FileLayer, file: bool| {
            let (v, line) = l.values.get(name).filter(|(v, _)| !v.is_empty())?;
            let origin = if file {
                Origin::File(l.path.clone(), *line)
            } else {
                Origin::EnvFile(l.path.clone(), *line)
            };
            Some((v.clone(), origin))
        };
        match layer {
            0 => self
                .process
                .get(name)
                .map(|v| (v.to_string(), Origin::Env(name.to_string()))),
            1 => from_file(&self.dotenv, false),
            2 => from_file(&self.file, true),
            _ => self
                .fetched
                .get(name)
                .map(|v| v.expose().to_string())
                .filter(|v| !v.is_empty())
                .map(|v| (v, Origin::Infisical)),
        }
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
    /// Within one layer the two are one setting (the plain value first), and a higher layer's
    /// `NAME_FILE` beats a lower layer's `NAME`. The file must be one that may steer the run
    /// ([`trust`]).
    pub fn secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        let file_var = format!("{name}_FILE");
        for layer in 0..4 {
            if let Some((v, _)) = self.in_layer(layer, name) {
                return Ok(Some(Secret::new(v)));
            }
            if let Some((path, _)) = self.in_layer(layer, &file_var) {
                return self.read_secret_file(&file_var, &path).map(Some);
            }
        }
        Ok(None)
    }

    fn read_secret_file(&self, file_var: &str, path: &str) -> Result<Secret, Error> {
        let ctx = trust::Context::from_vars(&self.process);
        let (bytes, facts) = match trust::read(Path::new(path), crate::fsx::MAX_SECRET, &ctx) {
            Ok(Some(read)) => read,
            Ok(None) => {
                return Err(Error::usage(format!(
                    "{file_var}={path}: cannot read the file: no such file"
                )));
            }
            Err(e) => {
                return Err(Error::usage(format!(
                    "{file_var}={path}: cannot read the file: {e}"
                )));
            }
        };
        if let Err(why) = &facts.verdict {
            return Err(Error::usage(format!(
                "{file_var}={path}: not trusted to hold a credential: {why}; run {}, or point {file_var} at a file owned by root or by the user running audsync (uid {}) that nobody else can write",
                why.fix(),
                why.me
            )));
        }
        let raw = String::from_utf8(bytes)
            .map_err(|_| Error::usage(format!("{file_var}={path}: the file is not UTF-8 text")))?;
        let v = raw.trim_end_matches(['\n', '\r']).to_string();
        if v.is_empty() {
            return Err(Error::usage(format!(
                "{file_var}={path}: the file is empty"
            )));
        }
        Ok(Secret::new(v))
    }
}

/// The message for a `.env` that holds audsync settings but may not steer the run.
fn untrusted_env_file(path: &Path, found: &[&str], why: &trust::Untrusted) -> String {
    let p = path.display();
    let owner = if why.uid == 0 || why.uid == why.me {
        String::new()
    } else {
        format!(", or run audsync as the file's owner (uid {})", why.uid)
    };
    format!(
        "{p} holds audsync settings ({}), but it may not steer this run: {why}. Move these settings to a config file owned by root (e.g. /etc/audsync/audsync.toml, mode 0600) and keep {p} a sink only (audsync still writes the AUD there); or run {}{owner}",
        found.join(", "),
        why.fix()
    )
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
            facts: None,
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
    fn a_higher_layers_file_beats_a_lower_layers_plain_value() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "from-the-file\n").unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, "CLOUDFLARE_API_TOKEN=from-the-env-file\n").unwrap();
        let env = Env::new(Vars::from_pairs([(
            "CLOUDFLARE_API_TOKEN_FILE",
            token.to_str().unwrap(),
        )]))
        .with_env_file(&p)
        .unwrap();
        let got = env.secret("CLOUDFLARE_API_TOKEN").unwrap().unwrap();
        assert_eq!(got.expose(), "from-the-file");
        // Within one layer the plain value comes first.
        let env = Env::new(Vars::from_pairs([
            ("CLOUDFLARE_API_TOKEN_FILE", token.to_str().unwrap()),
            ("CLOUDFLARE_API_TOKEN", "plain"),
        ]));
        let got = env.secret("CLOUDFLARE_API_TOKEN").unwrap().unwrap();
        assert_eq!(got.expose(), "plain");
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
