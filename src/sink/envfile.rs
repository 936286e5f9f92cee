//! The `.env` sink: change the assignments of one key, and nothing else, byte for byte.
//!
//! The file is read by our own tolerant parser ([`scan`]), which accepts what docker compose
//! accepts as an `env_file` (v1 and v2): `KEY = value` with blanks around `=`, `export`, a bare
//! `KEY` (value from the shell), LF, CRLF and CR-only line endings, quoted values over several
//! lines, `\'` in single quotes. The edit is a pure function ([`set_key`]) checked afterwards
//! by parsing both versions: if any other key would read differently, nothing is written.
//! A line that does not parse is reported by its number only, never its text (an unclosed
//! quote swallows the lines after it, secrets included).
//!
//! Writes are atomic (temp file, fsync, rename, keeping mode and owner) or, with
//! `--write-mode in-place`, rewrite the same inode for a file bind-mounted into a container,
//! journalled in the state file so a run killed mid-write is finished or undone by the next
//! one. A file whose mode has no write bit is refused, not replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Error, WriteOutcome};

const BOM: &str = "\u{feff}";
/// Stands for an escaped `\$` while substitution runs (a private-use character).
const LITERAL_DOLLAR: char = '\u{e000}';

/// How the new file reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// Temp file in the same directory, fsync, rename over the target. Never half-written.
    Atomic,
    /// Rewrite the same inode: for an `.env` bind-mounted into a container as a single file.
    InPlace,
}

/// A line of a `.env` file that does not parse: its number and what is wrong, never its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based; for an unclosed quote, the line where the value starts.
    pub line: usize,
    pub what: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

/// One assignment (or bare key) of a `.env` file, with where its value sits.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub key: &'a str,
    /// 1-based line where the entry starts.
    pub line: usize,
    /// Byte range (in the body without BOM) of the raw value, quotes included; for a bare key,
    /// the key itself.
    span: Range<usize>,
    quote: Option<u8>,
    /// The value as written (escapes decoded, no substitution); `None` for a bare key.
    value: Option<String>,
}

impl Entry<'_> {
    fn is_bare(&self) -> bool {
        self.value.is_none()
    }
    /// `$NAME` / `${NAME}` are substituted (unquoted and double-quoted values).
    fn expands(&self) -> bool {
        self.quote != Some(b'\'') && !self.is_bare()
    }
}

fn is_blank(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | 0x0b | 0x0c)
}

fn is_eol(c: u8) -> bool {
    c == b'\n' || c == b'\r'
}

/// Every entry of `body` (no BOM) in order, and the first line that does not parse (scanning
/// stops there).
pub fn scan(body: &str) -> (Vec<Entry<'_>>, Option<ParseError>) {
    let b = body.as_bytes();
    let n = b.len();
    let mut i = 0;
    let mut line = 1;
    let mut out = Vec::new();
    let skip_to_eol = |i: &mut usize| {
        while *i < n && !is_eol(b[*i]) {
            *i += 1;
        }
    };
    loop {
        while i < n && is_blank(b[i]) {
            i += 1;
        }
        if i >= n {
            break;
        }
        if is_eol(b[i]) {
            i += if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            line += 1;
            continue;
        }
        if b[i] == b'#' {
            skip_to_eol(&mut i);
            continue;
        }
        let start_line = line;
        if body[i..].starts_with("export") && b.get(i + 6).is_some_and(|c| is_blank(*c)) {
            let mut j = i + 6;
            while j < n && is_blank(b[j]) {
                j += 1;
            }
            if j < n && !is_eol(b[j]) && b[j] != b'#' {
                i = j;
            }
        }
        let ks = i;
        while i < n && !is_blank(b[i]) && !is_eol(b[i]) && b[i] != b'=' && b[i] != b'#' {
            i += 1;
        }
        let ke = i;
        if ks == ke {
            let e = ParseError {
                line: start_line,
                what: "an assignment without a key (the line starts with `=`)",
            };
            return (out, Some(e));
        }
        let key = &body[ks..ke];
        while i < n && is_blank(b[i]) {
            i += 1;
        }
        if i >= n || is_eol(b[i]) || b[i] == b'#' {
            // A bare `KEY`: compose takes its value from the shell.
            skip_to_eol(&mut i);
            out.push(Entry {
                key,
                line: start_line,
                span: ks..ke,
                quote: None,
                value: None,
            });
            continue;
        }
        if b[i] != b'=' {
            let e = ParseError {
                line: start_line,
                what: "the key is followed by something other than `=` (a blank inside the key?)",
            };
            return (out, Some(e));
        }
        i += 1;
        let after_eq = i;
        while i < n && is_blank(b[i]) {
            i += 1;
        }
        if i < n && (b[i] == b'"' || b[i] == b'\'') {
            let q = b[i];
            let vs = i;
            i += 1;
            let mut value = String::new();
            let mut seg = i;
            let mut closed = false;
            while i < n {
                let c = b[i];
                if c == b'\\' && i + 1 < n && b[i + 1].is_ascii() {
                    let d = b[i + 1];
                    let decoded = match (q, d) {
                        (b'"', b'n') => Some('\n'),
                        (b'"', b't') => Some('\t'),
                        (b'"', b'r') => Some('\r'),
                        (b'"', b'"') => Some('"'),
                        (b'"', b'\\') => Some('\\'),
                        (b'"', b'$') => Some(LITERAL_DOLLAR),
                        (b'\'', b'\'') => Some('\''),
                        _ => None,
                    };
                    if let Some(ch) = decoded {
                        value.push_str(&body[seg..i]);
                        value.push(ch);
                        i += 2;
                        seg = i;
                        continue;
                    }
                }
                if c == q {
                    value.push_str(&body[seg..i]);
                    i += 1;
                    closed = true;
                    break;
                }
                if c == b'\n' || (c == b'\r' && b.get(i + 1) != Some(&b'\n')) {
                    line += 1;
                }
                i += 1;
            }
            if !closed {
                let e = ParseError {
                    line: start_line,
                    what: "a quoted value is never closed",
                };
                return (out, Some(e));
            }
            let span = vs..i;
            while i < n && is_blank(b[i]) {
                i += 1;
            }
            if i < n && !is_eol(b[i]) && b[i] != b'#' {
                let e = ParseError {
                    line,
                    what: "text after the closing quote of a value",
                };
                return (out, Some(e));
            }
            skip_to_eol(&mut i);
            out.push(Entry {
                key,
                line: start_line,
                span,
                quote: Some(q),
                value: Some(value),
            });
            continue;
        }
        // Unquoted: to the end of the line; a `#` after a blank starts a comment.
        let vs = i;
        skip_to_eol(&mut i);
        let mut ve = i;
        if let Some(k) = (vs..i).find(|&k| b[k] == b'#' && k > after_eq && is_blank(b[k - 1])) {
            ve = k;
        }
        while ve > vs && is_blank(b[ve - 1]) {
            ve -= 1;
        }
        // An empty value sits right after `=` (before any blank and comment).
        let (vs, ve) = if ve == vs {
            (after_eq, after_eq)
        } else {
            (vs, ve)
        };
        out.push(Entry {
            key,
            line: start_line,
            span: vs..ve,
            quote: None,
            value: Some(body[vs..ve].to_string()),
        });
    }
    (out, None)
}

fn split_bom(content: &str) -> (&str, &str) {
    match content.strip_prefix(BOM) {
        Some(rest) => (BOM, rest),
        None => ("", content),
    }
}

/// The file's own line ending (the first one found), for a line we add.
fn line_ending(body: &str) -> &'static str {
    match body.find(['\n', '\r']) {
        Some(i) if body[i..].starts_with("\r\n") => "\r\n",
        Some(i) if body[i..].starts_with('\r') => "\r",
        _ => "\n",
    }
}

/// Return `content` with every assignment of `key` set to `value` (a bare `KEY` becomes
/// `KEY=value`), or the key appended. Everything else (comments, order, quoting, `export`,
/// blanks around `=`, line endings, BOM, final newline) is kept byte for byte.
pub fn set_key(content: &str, key: &str, value: &str) -> Result<String, String> {
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/+=@".contains(c))
    {
        return Err("the value holds characters that would need quoting in a .env file".into());
    }
    let (bom, body) = split_bom(content);
    let (entries, err) = scan(body);
    if let Some(e) = err {
        return Err(format!(
            "does not parse as a .env file ({e}); fix it by hand"
        ));
    }
    let mut out = String::with_capacity(content.len() + key.len() + value.len() + 2);
    out.push_str(bom);
    let mut last = 0;
    let mut found = false;
    for e in entries.iter().filter(|e| e.key == key) {
        found = true;
        out.push_str(&body[last..e.span.start]);
        if e.is_bare() {
            out.push_str(key);
            out.push('=');
            out.push_str(value);
        } else if let Some(q) = e.quote {
            out.push(q as char);
            out.push_str(value);
            out.push(q as char);
        } else {
            out.push_str(value);
        }
        last = e.span.end;
    }
    out.push_str(&body[last..]);
    if !found {
        let nl = line_ending(body);
        if !body.is_empty() && !body.ends_with(['\n', '\r']) {
            out.push_str(nl);
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
        out.push_str(nl);
    }
    Ok(out)
}

/// The line (1-based) of the last assignment of each key: where an error or `audsync config`
/// points, never the text. Lines after one that does not parse are not seen.
pub fn key_lines(content: &str) -> BTreeMap<String, usize> {
    let (_, body) = split_bom(content);
    scan(body)
        .0
        .into_iter()
        .filter(|e| !e.is_bare())
        .map(|e| (e.key.to_string(), e.line))
        .collect()
}

/// Parse as compose reads an `env_file`: the last assignment of a key wins; `$NAME` and
/// `${NAME}` in unquoted and double-quoted values take the value of a key set earlier in the
/// file (an unknown name is left as written); a bare `KEY` sets nothing.
pub fn parse(content: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let (_, body) = split_bom(content);
    let (entries, err) = scan(body);
    if let Some(e) = err {
        return Err(e);
    }
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for e in entries {
        let Some(v) = &e.value else { continue };
        let v = if e.expands() {
            expand(v, &map)
        } else {
            v.clone()
        };
        map.insert(e.key.to_string(), v.replace(LITERAL_DOLLAR, "$"));
    }
    Ok(map)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Substitute `$NAME` / `${NAME}` known in `vars`; anything else stays as written.
fn expand(v: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, used) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(j) if inner[..j].chars().all(is_name_char) && j > 0 => (&inner[..j], j + 2),
                _ => ("", 0),
            }
        } else {
            let j = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
            (&after[..j], j)
        };
        match vars.get(name).filter(|_| !name.is_empty()) {
            Some(val) => {
                out.push_str(val);
                rest = &after[used..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The edit plus its proof: parse both versions; only `key` may differ, and it must read `value`.
pub fn checked_edit(content: &str, key: &str, value: &str) -> Result<String, String> {
    let edited = set_key(content, key, value)?;
    verify_edit(content, &edited, key, value)?;
    Ok(edited)
}

/// Prove an edit: both versions parse, `key` reads `value`, and every other key reads as
/// before — except keys whose own text refers to `key` (`X=${KEY}`): those are meant to follow.
pub fn verify_edit(content: &str, edited: &str, key: &str, value: &str) -> Result<(), String> {
    let before = parse(content)
        .map_err(|e| format!("the file does not parse as a .env file ({e}); fix it by hand"))?;
    let after = parse(edited).map_err(|e| format!("the edited file would not parse ({e})"))?;
    if after.get(key).map(String::as_str) != Some(value) {
        return Err(format!("after the edit {key} would not read the new value"));
    }
    let followers = referring_keys(content, key);
    let changed: BTreeSet<&str> = before
        .keys()
        .chain(after.keys())
        .filter(|k| *k != key && !followers.contains(k.as_str()) && before.get(*k) != after.get(*k))
        .map(String::as_str)
        .collect();
    if !changed.is_empty() {
        return Err(format!(
            "the edit would change other keys ({}); nothing written",
            changed.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// Keys whose assignment text refers to `key` by substitution (`$KEY` or `${KEY}`).
fn referring_keys(content: &str, key: &str) -> BTreeSet<String> {
    let braced = format!("${{{key}}}");
    let bare = format!("${key}");
    let (_, body) = split_bom(content);
    scan(body)
        .0
        .into_iter()
        .filter(|e| e.expands() && e.key != key)
        .filter(|e| {
            let v = &body[e.span.clone()];
            v.contains(&braced)
                || v.match_indices(&bare)
                    .any(|(i, _)| !v[i + bare.len()..].starts_with(is_name_char))
        })
        .map(|e| e.key.to_string())
        .collect()
}

/// The `.env` file sink: every key bound to this file, written in one write.
#[derive(Debug, Clone)]
pub struct EnvFileSink {
    pub path: PathBuf,
    pub mode: WriteMode,
    /// Create the file when it is missing (`create = true` / `--create-env-file`); without it a
    /// missing file is an error naming the directory the stack was expected in.
    pub create: bool,
    /// The state file that journals in-place writes (none: in-place writes are not journalled).
    pub journal: Option<PathBuf>,
    /// The compose project directory of the containers this file is for, when known.
    pub project_dir: Option<PathBuf>,
    /// A dry run: observe checks what the write would need (directory, write permission).
    pub dry_run: bool,
}

/// What was read, to notice a change made by someone else before writing.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    content: Option<String>,
    /// dev, inode, size, mtime (s, ns), ctime (s, ns).
    meta: Option<(u64, u64, u64, i64, i64, i64, i64)>,
}

fn meta_key(m: &fs::Metadata) -> (u64, u64, u64, i64, i64, i64, i64) {
    (
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// Why a write did not happen.
enum WriteError {
    /// The file changed since it was read: redo the edit on the new content.
    Changed,
    Failed(String),
}

impl From<String> for WriteError {
    fn from(s: String) -> Self {
        WriteError::Failed(s)
    }
}

/// How often an edit is redone on content someone else changed meanwhile.
const EDIT_TRIES: usize = 3;

impl EnvFileSink {
    /// A sink with the defaults of old: atomic, created when missing, no journal.
    pub fn new(path: PathBuf, mode: WriteMode) -> EnvFileSink {
        EnvFileSink {
            path,
            mode,
            create: true,
            journal: None,
            project_dir: None,
            dry_run: false,
        }
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::EnvFile {
            path: self.path.clone(),
            message: msg.into(),
        }
    }

    /// The file to write: the path itself, or a symlink's target when that target belongs to
    /// the owner of the link's directory (anyone else's file is not written through a link).
    fn target(&self) -> Result<PathBuf, Error> {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::canonicalize(&self.path)
                    .map_err(|e| self.err(format!("cannot resolve the symlink: {e}")))?;
                let dir = self
                    .path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let dir_uid = fs::metadata(dir)
                    .map_err(|e| self.err(format!("cannot stat the link's directory: {e}")))?
                    .uid();
                match fs::metadata(&target) {
                    Ok(t) if t.uid() != dir_uid => Err(self.err(format!(
                        "is a symlink to {}, owned by uid {}, but the link's directory is owned by uid {dir_uid}: audsync writes through a link only to a file of the directory's owner; point --env-file at the target itself, or chown it; nothing was written",
                        target.display(),
                        t.uid()
                    ))),
                    _ => Ok(target),
                }
            }
            _ => Ok(self.path.clone()),
        }
    }

    fn missing_error(&self) -> Error {
        let expected = match &self.project_dir {
            Some(d) => format!(
                "; the compose project of its containers is in {} (label com.docker.compose.project.working_dir)",
                d.display()
            ),
            None => String::new(),
        };
        self.err(format!(
            "does not exist{expected}; point --env-file (or the binding's env sink) at the stack's .env, or allow creating it with --create-env-file / AUDSYNC_CREATE_ENV_FILE (config file: create = true); nothing was written"
        ))
    }

    fn snapshot(&self, target: &Path) -> Result<Snapshot, Error> {
        match crate::fsx::open_regular(target, false, None) {
            Ok(f) => {
                let m = f
                    .metadata()
                    .map_err(|e| self.err(format!("cannot stat: {e}")))?;
                let bytes = crate::fsx::read_open(f, crate::fsx::MAX_TEXT)
                    .map_err(|e| self.err(format!("cannot read: {e}")))?;
                let content = String::from_utf8(bytes).map_err(|_| self.err("not UTF-8 text"))?;
                Ok(Snapshot {
                    content: Some(content),
                    meta: Some(meta_key(&m)),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Snapshot {
                content: None,
                meta: None,
            }),
            Err(e) => Err(self.err(format!("cannot read: {e}"))),
        }
    }

    /// Warn when the file written is not the `.env` of the compose project its containers
    /// came from (compose reads `<project dir>/.env`).
    fn warn_if_elsewhere(&self) {
        let Some(dir) = &self.project_dir else { return };
        let here = fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let there = fs::canonicalize(dir.join(".env")).unwrap_or_else(|_| dir.join(".env"));
        if here != there {
            tracing::warn!(
                env_file = %self.path.display(),
                project_dir = %dir.display(),
                "the .env written is not the one in the compose project directory of its containers; check that the stack reads this file (env_file:)"
            );
        }
    }

    /// What the file holds for each key of `desired`.
    pub fn observe_all(
        &self,
        desired: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, crate::reconcile::KeyObservation>, Error> {
        use crate::reconcile::KeyObservation;
        let target = self.target()?;
        let Some(content) = self.snapshot(&target)?.content else {
            if !self.create {
                return Err(self.missing_error());
            }
            if self.dry_run {
                self.preflight(&target, false)?;
            }
            return Ok(desired
                .keys()
                .map(|k| {
                    (
                        k.clone(),
                        KeyObservation {
                            current: None,
                            needs_write: true,
                            version: None,
                        },
                    )
                })
                .collect());
        };
        let mut parsed: Option<BTreeMap<String, String>> = None;
        let mut out = BTreeMap::new();
        for (key, value) in desired {
            let edited =
                set_key(&content, key, value).map_err(|e| self.err(format!("{key}: {e}")))?;
            if edited == content {
                // Every assignment already holds exactly `value`: no need to parse the file.
                out.insert(
                    key.clone(),
                    KeyObservation {
                        current: Some(value.clone()),
                        needs_write: false,
                        version: None,
                    },
                );
                continue;
            }
            if parsed.is_none() {
                parsed = Some(parse(&content).map_err(|e| {
                    self.err(format!(
                        "does not parse as a .env file ({e}); fix it by hand"
                    ))
                })?);
            }
            let current = parsed.as_ref().and_then(|p| p.get(key).cloned());
            out.insert(
                key.clone(),
                KeyObservation {
                    current,
                    needs_write: true,
                    version: None,
                },
            );
        }
        if self.dry_run && out.values().any(|o| o.needs_write) {
            self.preflight(&target, true)?;
        }
        Ok(out)
    }

    /// What a write needs, checked without writing (a dry run fails as the real run would).
    fn preflight(&self, target: &Path, exists: bool) -> Result<(), Error> {
        use rustix::fs::{Access, access};
        let dir = parent_dir(target);
        if !dir.is_dir() {
            return Err(self.err(format!(
                "the directory {} does not exist; nothing was written",
                dir.display()
            )));
        }
        if exists {
            let m = fs::metadata(target).map_err(|e| self.err(format!("cannot stat: {e}")))?;
            read_only_check(&m).map_err(|e| self.err(e))?;
            if access(target, Access::WRITE_OK).is_err() {
                return Err(self.err("this user may not write the file; nothing was written"));
            }
        }
        let in_place = exists && self.mode == WriteMode::InPlace;
        if !in_place && access(dir, Access::WRITE_OK).is_err() {
            return Err(self.err(format!(
                "cannot create a temporary file in {}: this user may not write there (use --write-mode in-place for a file in a directory you cannot write); nothing was written",
                dir.display()
            )));
        }
        Ok(())
    }

    /// Set every key of `desired`, each edit proven by re-parsing, in one write.
    pub fn write_all(&self, desired: &BTreeMap<String, String>) -> Result<WriteOutcome, Error> {
        self.write_all_between(desired, &mut || {})
    }

    /// [`Self::write_all`], calling `between` after the read and before the write (tests use it
    /// to edit the file in that window).
    pub fn write_all_between(
        &self,
        desired: &BTreeMap<String, String>,
        between: &mut dyn FnMut(),
    ) -> Result<WriteOutcome, Error> {
        let target = self.target()?;
        for attempt in 1..=EDIT_TRIES {
            let snap = self.snapshot(&target)?;
            if snap.content.is_none() && !self.create {
                return Err(self.missing_error());
            }
            let mut new = snap.content.clone().unwrap_or_default();
            for (key, value) in desired {
                new = if snap.content.is_some() {
                    checked_edit(&new, key, value)
                } else {
                    set_key(&new, key, value)
                }
                .map_err(|e| self.err(e))?;
            }
            if snap.content.as_deref() == Some(new.as_str()) {
                return Ok(WriteOutcome::Unchanged);
            }
            if let Some(content) = &snap.content {
                let m = fs::metadata(&target).map_err(|e| self.err(format!("cannot stat: {e}")))?;
                read_only_check(&m).map_err(|e| self.err(e))?;
                debug_assert!(content.len() <= crate::fsx::MAX_TEXT as usize);
            }
            self.warn_if_elsewhere();
            between();
            let result = match (self.mode, &snap.content) {
                (WriteMode::InPlace, Some(old)) => self.write_in_place(&target, old, &new, &snap),
                _ => write_atomic(&target, new.as_bytes(), &snap, |t| self.snapshot(t)),
            };
            match result {
                Ok(()) => return Ok(WriteOutcome::Written { version: None }),
                Err(WriteError::Failed(e)) => return Err(self.err(e)),
                Err(WriteError::Changed) => {
                    tracing::info!(env_file = %self.path.display(), attempt, "the file changed while audsync was writing it; redoing the edit on the new content");
                }
            }
        }
        Err(self.err(format!(
            "the file kept changing while audsync wrote it ({EDIT_TRIES} tries); nothing was written, the next run tries again"
        )))
    }

    /// Rewrite the same inode. Not atomic by nature, so it is journalled: a copy of the
    /// current content is first written (atomically) beside the file and the write recorded in
    /// the state file; the next run finishes or undoes a write that was cut short
    /// ([`recover_in_place`]). After a failed write the content is put back at once; the copy
    /// is removed after a good write.
    fn write_in_place(
        &self,
        target: &Path,
        old: &str,
        new: &str,
        snap: &Snapshot,
    ) -> Result<(), WriteError> {
        let backup = backup_path(target);
        write_atomic_plain(&backup, old.as_bytes())?;
        let entry = crate::state::InPlaceWrite {
            target: target.to_path_buf(),
            backup: backup.clone(),
            new_len: new.len() as u64,
            new_hash: content_hash(new.as_bytes()),
        };
        let forget = |why: &str| {
            if let Some(j) = &self.journal
                && let Err(e) = crate::state::StateFile::update(j, |s| {
                    s.in_place_writes.retain(|w| w.target != target)
                })
            {
                tracing::warn!(error = %e, "cannot clear the in-place write journal ({why})");
            }
            let _ = fs::remove_file(&backup);
        };
        if let Some(j) = &self.journal {
            crate::state::StateFile::update(j, |s| {
                s.in_place_writes.retain(|w| w.target != target);
                s.in_place_writes.push(entry.clone());
            })
            .map_err(|e| {
                let _ = fs::remove_file(&backup);
                WriteError::Failed(format!(
                    "cannot journal the in-place write in the state file: {e}; nothing was written"
                ))
            })?;
        }
        // Right before touching the file: has anyone changed it since it was read?
        match self.snapshot(target) {
            Ok(now) if now == *snap => {}
            Ok(_) => {
                forget("changed");
                return Err(WriteError::Changed);
            }
            Err(e) => {
                forget("unreadable");
                return Err(WriteError::Failed(e.to_string()));
            }
        }
        let mut touched = false;
        let result = (|| {
            let mut f = crate::fsx::open_regular(target, true, None)
                .map_err(|e| format!("cannot open for writing: {e}"))?;
            rewrite(&mut f, new.as_bytes(), &mut touched)
        })();
        match result {
            Ok(()) => {
                forget("done");
                Ok(())
            }
            Err(e) if !touched => {
                forget("failed");
                Err(WriteError::Failed(format!("{e}; the file was not changed")))
            }
            Err(e) => {
                let restored = crate::fsx::open_regular(target, true, None)
                    .map_err(|e| e.to_string())
                    .and_then(|mut f| rewrite(&mut f, old.as_bytes(), &mut true));
                match restored {
                    Ok(()) => {
                        forget("put back");
                        Err(WriteError::Failed(format!(
                            "{e}; the previous content was put back"
                        )))
                    }
                    Err(_) => Err(WriteError::Failed(format!(
                        "{e}; the previous content is saved in {}: the next run puts it back (or copy it back by hand)",
                        backup.display()
                    ))),
                }
            }
        }
    }

    /// Remove the temporary files an earlier, killed run left beside the file (atomic mode's
    /// `.audsync-<name>.*.tmp`, older versions' `.audsync-XXXXXX.tmp`, and an in-place safety
    /// copy no journal entry names). Under the lock, after [`recover_in_place`], so no other
    /// run is writing them. Returns the names removed.
    pub fn remove_leftovers(&self) -> Vec<String> {
        let Ok(target) = self.target() else {
            return vec![];
        };
        let dir = parent_dir(&target);
        let mine = temp_prefix(&target);
        let Ok(rd) = fs::read_dir(dir) else {
            return vec![];
        };
        let mut removed = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let legacy = name.len() == 19
                && name.starts_with(".audsync-")
                && name.ends_with(".tmp")
                && name[9..15].chars().all(|c| c.is_ascii_alphanumeric());
            if !(legacy || (name.starts_with(&mine) && name.ends_with(".tmp"))) {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(e.path()).is_ok() {
                tracing::info!(file = %e.path().display(), "removed a temporary file left by an earlier run that was cut short");
                removed.push(name);
            }
        }
        // An in-place write's safety copy that no journal entry names any more: the file is
        // whole (the journal is written before the file is touched, cleared only after it is
        // done or put back, and the pending entries were recovered before this runs), and a
        // run killed between clearing the entry and removing the copy left it behind.
        let backup = backup_path(&target);
        if self.journal.is_some()
            && fs::symlink_metadata(&backup).is_ok_and(|m| m.file_type().is_file())
            && fs::remove_file(&backup).is_ok()
        {
            tracing::info!(file = %backup.display(), "removed the safety copy of an in-place write an earlier run finished but was cut short before removing it");
            removed.push(
                backup
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        removed
    }
}

fn parent_dir(target: &Path) -> &Path {
    target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn read_only_check(m: &fs::Metadata) -> Result<(), String> {
    if m.permissions().mode() & 0o222 == 0 {
        return Err(format!(
            "the file is read-only (mode {:o}); make it writable (chmod u+w) or stop syncing to it; nothing was written",
            m.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

/// `.audsync-<file name>.` : the temporary files of one target start so.
fn temp_prefix(target: &Path) -> String {
    format!(
        ".audsync-{}.",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".env".into())
    )
}

/// FNV-1a 64 of the bytes, hex: enough to tell the new content from anything else.
pub(crate) fn content_hash(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Temp file beside `target`, fsync, then — if the file is still what was read — rename over
/// it (keeping mode and owner). A file that did not exist is created only if it still does not.
fn write_atomic(
    target: &Path,
    bytes: &[u8],
    snap: &Snapshot,
    now: impl Fn(&Path) -> Result<Snapshot, Error>,
) -> Result<(), WriteError> {
    crate::fsx::check_writable_target(target)
        .map_err(|e| format!("cannot replace {}: {e}", target.display()))?;
    let meta = match fs::metadata(target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot stat: {e}").into()),
    };
    let dir = parent_dir(target);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(target))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .map_err(|e| format!("cannot write the temporary file: {e}"))?;
    if let Some(m) = &meta {
        let f = tmp.as_file();
        f.set_permissions(fs::Permissions::from_mode(m.permissions().mode() & 0o7777))
            .map_err(|e| format!("cannot copy the file mode: {e}"))?;
        if (m.uid(), m.gid()) != current_owner(f) {
            std::os::unix::fs::fchown(f, Some(m.uid()), Some(m.gid())).map_err(|e| {
                format!("cannot keep the file's owner ({}:{}): {e}; run as that user or use --write-mode in-place", m.uid(), m.gid())
            })?;
        }
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| format!("fsync failed: {e}"))?;
    // Right before the rename: has anyone changed the file since it was read?
    match now(target) {
        Ok(n) if n == *snap => {}
        Ok(_) => return Err(WriteError::Changed),
        Err(e) => return Err(e.to_string().into()),
    }
    if snap.content.is_none() {
        match tmp.persist_noclobber(target) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(WriteError::Changed);
            }
            Err(e) => return Err(format!("cannot create the file: {}", e.error).into()),
        }
    } else {
        tmp.persist(target)
            .map_err(|e| format!("cannot replace the file: {}", e.error))?;
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A plain atomic write (the safety copy): temp file, fsync, rename, mode 0600.
fn write_atomic_plain(target: &Path, bytes: &[u8]) -> Result<(), String> {
    crate::fsx::check_writable_target(target)
        .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    let dir = parent_dir(target);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(target))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| format!("cannot write the safety copy: {e}; nothing was written"))?;
    tmp.persist(target).map_err(|e| {
        format!(
            "cannot write the safety copy: {}; nothing was written",
            e.error
        )
    })?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn current_owner(f: &fs::File) -> (u32, u32) {
    f.metadata()
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((u32::MAX, u32::MAX))
}

#[cfg(test)]
thread_local! {
    /// Tests only: every write of an in-place rewrite fails before it writes a byte (a full
    /// disk, a quota), so the failure paths can be driven without root-proof tricks.
    static FAIL_WRITES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One `write` call of an in-place rewrite.
fn write_some(f: &mut fs::File, bytes: &[u8]) -> std::io::Result<usize> {
    #[cfg(test)]
    if FAIL_WRITES.with(|c| c.get()) {
        return Err(std::io::Error::other("no space left on device (injected)"));
    }
    f.write(bytes)
}

fn rewrite(f: &mut fs::File, bytes: &[u8], touched: &mut bool) -> Result<(), String> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(0))
        .map_err(|e| format!("seek failed: {e}"))?;
    // `touched` once a byte reached the file: a write that failed before that (a full disk,
    // a quota) left it as it was, and says so instead of pointing at the safety copy.
    let mut rest = bytes;
    while !rest.is_empty() {
        match write_some(f, rest) {
            Ok(0) => return Err("write failed: no byte was written".into()),
            Ok(n) => {
                *touched = true;
                rest = &rest[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write failed: {e}")),
        }
    }
    *touched = true;
    f.set_len(bytes.len() as u64)
        .map_err(|e| format!("truncate failed: {e}"))?;
    f.sync_all().map_err(|e| format!("fsync failed: {e}"))
}

/// `<file>.audsync-backup` next to the file.
fn backup_path(target: &Path) -> PathBuf {
    let mut name = target
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| ".env".into());
    name.push(".audsync-backup");
    target.with_file_name(name)
}

/// Finish or undo the in-place writes the state file at `state_path` journals (a run killed
/// mid-write): a file that holds the new content is finished, anything else gets the safety
/// copy back; then the copy and the journal entry go. Runs before anything else of a pass.
/// Returns what was done, for the log and the report.
pub fn recover_in_place(state_path: &Path) -> Result<Vec<String>, String> {
    let pending = crate::state::StateFile::load(state_path, true)?
        .state
        .in_place_writes;
    if pending.is_empty() {
        return Ok(vec![]);
    }
    let mut done = Vec::new();
    for w in pending {
        let now = crate::fsx::read_bounded(&w.target, crate::fsx::MAX_TEXT);
        let finished = now
            .as_ref()
            .is_ok_and(|b| b.len() as u64 == w.new_len && content_hash(b) == w.new_hash);
        if finished {
            let _ = fs::remove_file(&w.backup);
            done.push(format!(
                "{}: an in-place write cut short by an earlier run had completed; its safety copy was removed",
                w.target.display()
            ));
            continue;
        }
        let old = match crate::fsx::read_bounded(&w.backup, crate::fsx::MAX_TEXT) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %w.target.display(), backup = %w.backup.display(), error = %e, "an in-place write was cut short and its safety copy cannot be read; check the file by hand");
                done.push(format!(
                    "{}: an in-place write was cut short and its safety copy {} is gone ({e}); check the file by hand",
                    w.target.display(),
                    w.backup.display()
                ));
                continue;
            }
        };
        if now.as_deref().ok() == Some(old.as_slice()) {
            let _ = fs::remove_file(&w.backup);
            done.push(format!(
                "{}: an in-place write cut short by an earlier run had not started; its safety copy was removed",
                w.target.display()
            ));
            continue;
        }
        let put_back = crate::fsx::open_regular(&w.target, true, None)
            .map_err(|e| e.to_string())
            .and_then(|mut f| rewrite(&mut f, &old, &mut true));
        match put_back {
            Ok(()) => {
                let _ = fs::remove_file(&w.backup);
                done.push(format!(
                    "{}: an in-place write cut short by an earlier run was undone (the previous content put back); this run writes it again",
                    w.target.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "{}: an in-place write was cut short and the previous content cannot be put back ({e}); it is saved in {}: copy it back",
                    w.target.display(),
                    w.backup.display()
                ));
            }
        }
    }
    crate::state::StateFile::update(state_path, |s| s.in_place_writes.clear())?;
    for d in &done {
        tracing::warn!("{d}");
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "CLOUDFLARE_AUD_TAG";
    const V: &str = "newvalue";

    fn edit(s: &str) -> String {
        checked_edit(s, K, V).unwrap()
    }

    #[test]
    fn replaces_only_the_value() {
        assert_eq!(
            edit("A=1\nCLOUDFLARE_AUD_TAG=old\nB=2\n"),
            "A=1\nCLOUDFLARE_AUD_TAG=newvalue\nB=2\n"
        );
    }

    #[test]
    fn keeps_quoting_style() {
        assert_eq!(
            edit("CLOUDFLARE_AUD_TAG=\"old\"\n"),
            "CLOUDFLARE_AUD_TAG=\"newvalue\"\n"
        );
        assert_eq!(
            edit("CLOUDFLARE_AUD_TAG='old'\n"),
            "CLOUDFLARE_AUD_TAG='newvalue'\n"
        );
    }

    #[test]
    fn keeps_export_prefix_and_spacing() {
        assert_eq!(
            edit("export CLOUDFLARE_AUD_TAG=old\n"),
            "export CLOUDFLARE_AUD_TAG=newvalue\n"
        );
        assert_eq!(
            edit("  export\tCLOUDFLARE_AUD_TAG = old\n"),
            "  export\tCLOUDFLARE_AUD_TAG = newvalue\n"
        );
    }

    #[test]
    fn keeps_crlf_and_bom() {
        assert_eq!(
            edit("\u{feff}A=1\r\nCLOUDFLARE_AUD_TAG=old\r\n"),
            "\u{feff}A=1\r\nCLOUDFLARE_AUD_TAG=newvalue\r\n"
        );
    }

    #[test]
    fn keeps_blank_lines_and_whitespace_only_lines() {
        let s = "\n\nA=1\n   \n\t\nCLOUDFLARE_AUD_TAG=old\n\n# end\n\n";
        assert_eq!(edit(s), s.replace("=old", "=newvalue"));
    }

    #[test]
    fn refuses_an_edit_that_would_change_another_key() {
        let e = verify_edit(
            "A=1\nCLOUDFLARE_AUD_TAG=old\n",
            "A=2\nCLOUDFLARE_AUD_TAG=newvalue\n",
            K,
            V,
        )
        .unwrap_err();
        assert!(e.contains("would change other keys (A)"), "{e}");
        let e = verify_edit(
            "A=1\nCLOUDFLARE_AUD_TAG=old\n",
            "CLOUDFLARE_AUD_TAG=newvalue\n",
            K,
            V,
        )
        .unwrap_err();
        assert!(e.contains("(A)"), "a lost key is a change: {e}");
        let e =
            verify_edit("CLOUDFLARE_AUD_TAG=old\n", "CLOUDFLARE_AUD_TAG=old\n", K, V).unwrap_err();
        assert!(e.contains("would not read the new value"), "{e}");
    }

    #[test]
    fn keys_that_refer_to_the_key_may_follow_it() {
        let s = "CLOUDFLARE_AUD_TAG=old\nB=\"${CLOUDFLARE_AUD_TAG}-suffix\"\nC=$CLOUDFLARE_AUD_TAG\nD=$CLOUDFLARE_AUD_TAG_OLD\n";
        let out = checked_edit(s, K, V).unwrap();
        assert_eq!(
            out,
            s.replace("CLOUDFLARE_AUD_TAG=old", "CLOUDFLARE_AUD_TAG=newvalue")
        );
        let refs = referring_keys(s, K);
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            vec!["B", "C"],
            "D refers to another key"
        );
    }

    #[test]
    fn keeps_missing_final_newline() {
        assert_eq!(
            edit("A=1\nCLOUDFLARE_AUD_TAG=old"),
            "A=1\nCLOUDFLARE_AUD_TAG=newvalue"
        );
    }

    #[test]
    fn appends_absent_key_adding_newline_first() {
        assert_eq!(edit("A=1"), "A=1\nCLOUDFLARE_AUD_TAG=newvalue\n");
        assert_eq!(edit("A=1\n"), "A=1\nCLOUDFLARE_AUD_TAG=newvalue\n");
        assert_eq!(edit("A=1\r\n"), "A=1\r\nCLOUDFLARE_AUD_TAG=newvalue\r\n");
        assert_eq!(edit(""), "CLOUDFLARE_AUD_TAG=newvalue\n");
    }

    #[test]
    fn rewrites_every_assignment() {
        assert_eq!(
            edit("CLOUDFLARE_AUD_TAG=a\nX=1\nCLOUDFLARE_AUD_TAG=b\n"),
            "CLOUDFLARE_AUD_TAG=newvalue\nX=1\nCLOUDFLARE_AUD_TAG=newvalue\n"
        );
    }

    #[test]
    fn leaves_comments_and_lookalike_keys() {
        let s = "# CLOUDFLARE_AUD_TAG=commented\nCLOUDFLARE_AUD_TAG_OLD=x\nMY_CLOUDFLARE_AUD_TAG=y\nCLOUDFLARE_AUD_TAG=old\n";
        assert_eq!(
            edit(s),
            "# CLOUDFLARE_AUD_TAG=commented\nCLOUDFLARE_AUD_TAG_OLD=x\nMY_CLOUDFLARE_AUD_TAG=y\nCLOUDFLARE_AUD_TAG=newvalue\n"
        );
    }

    #[test]
    fn keeps_inline_comment() {
        assert_eq!(
            edit("CLOUDFLARE_AUD_TAG=old # rotated by hand\n"),
            "CLOUDFLARE_AUD_TAG=newvalue # rotated by hand\n"
        );
        assert_eq!(
            edit("CLOUDFLARE_AUD_TAG=\"old\" # c\n"),
            "CLOUDFLARE_AUD_TAG=\"newvalue\" # c\n"
        );
    }

    #[test]
    fn empty_value_is_replaced() {
        assert_eq!(
            edit("CLOUDFLARE_AUD_TAG=\nA=1\n"),
            "CLOUDFLARE_AUD_TAG=newvalue\nA=1\n"
        );
    }

    #[test]
    fn assignment_inside_another_multiline_value_is_untouched() {
        let s = "CERT=\"line1\nCLOUDFLARE_AUD_TAG=inside\nline3\"\nCLOUDFLARE_AUD_TAG=old\n";
        assert_eq!(
            edit(s),
            "CERT=\"line1\nCLOUDFLARE_AUD_TAG=inside\nline3\"\nCLOUDFLARE_AUD_TAG=newvalue\n"
        );
    }

    #[test]
    fn unsafe_values_are_refused() {
        assert!(set_key("", K, "a b").is_err());
        assert!(set_key("", K, "a\nB=1").is_err());
        assert!(set_key("", K, "\"x").is_err());
    }

    #[test]
    fn compose_style_files_are_edited_only_at_the_key() {
        // Blanks around `=` (compose v1 and v2 both read `A=spaced`).
        assert_eq!(
            edit("A = spaced\nCLOUDFLARE_AUD_TAG = old\n"),
            "A = spaced\nCLOUDFLARE_AUD_TAG = newvalue\n"
        );
        // A bare key of another name is kept; our own bare key gets the value.
        assert_eq!(
            edit("SHELL_VAR\nCLOUDFLARE_AUD_TAG=old\n"),
            "SHELL_VAR\nCLOUDFLARE_AUD_TAG=newvalue\n"
        );
        assert_eq!(
            edit("A=1\nCLOUDFLARE_AUD_TAG\n"),
            "A=1\nCLOUDFLARE_AUD_TAG=newvalue\n"
        );
        // CR-only line endings: every assignment rewritten, a new line gets a CR.
        assert_eq!(
            edit("A=1\rCLOUDFLARE_AUD_TAG=a\rB=2\rCLOUDFLARE_AUD_TAG=b\r"),
            "A=1\rCLOUDFLARE_AUD_TAG=newvalue\rB=2\rCLOUDFLARE_AUD_TAG=newvalue\r"
        );
        assert_eq!(edit("A=1\r"), "A=1\rCLOUDFLARE_AUD_TAG=newvalue\r");
        // Mixed endings, `\'` in single quotes, tab before a comment.
        assert_eq!(
            edit("S='it\\'s'\r\nCLOUDFLARE_AUD_TAG=x\rT=a\t#c\nCLOUDFLARE_AUD_TAG=y\n"),
            "S='it\\'s'\r\nCLOUDFLARE_AUD_TAG=newvalue\rT=a\t#c\nCLOUDFLARE_AUD_TAG=newvalue\n"
        );
        let m =
            parse("S='it\\'s'\nT=a\t#c\nU = v # c\nW=\"x\\$y\"\nH=h\nP=${H}x$H\nQ='$H'\n").unwrap();
        assert_eq!(m["S"], "it's");
        assert_eq!(m["T"], "a");
        assert_eq!(m["U"], "v");
        assert_eq!(m["W"], "x$y");
        assert_eq!(m["P"], "hxh");
        assert_eq!(m["Q"], "$H");
    }

    #[test]
    fn a_line_that_does_not_parse_is_named_by_number_never_by_text() {
        let s = "A=1\nB=\"unclosed-text\nSECRET=hunter2-very-secret\n";
        let e = parse(s).unwrap_err();
        assert_eq!(e.line, 2);
        let e = set_key(s, K, V).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(
            !e.contains("hunter2") && !e.contains("unclosed-text"),
            "{e}"
        );
        let e = parse("A B=secretvalue\n").unwrap_err().to_string();
        assert!(
            e.starts_with("line 1:") && !e.contains("secretvalue"),
            "{e}"
        );
        let e = parse("R=\"x\" trailing-secret\n").unwrap_err().to_string();
        assert!(!e.contains("trailing-secret"), "{e}");
    }

    fn sink_in(dir: &Path, mode: WriteMode) -> EnvFileSink {
        EnvFileSink {
            journal: Some(dir.join("state.json")),
            ..EnvFileSink::new(dir.join(".env"), mode)
        }
    }

    #[test]
    fn an_edit_made_between_read_and_write_is_kept_and_ours_redone_on_it() {
        for mode in [WriteMode::Atomic, WriteMode::InPlace] {
            let dir = tempfile::tempdir().unwrap();
            let sink = sink_in(dir.path(), mode);
            fs::write(&sink.path, "A=1\nCLOUDFLARE_AUD_TAG=old\n").unwrap();
            let desired = BTreeMap::from([(K.to_string(), V.to_string())]);
            let mut once = true;
            let path = sink.path.clone();
            let out = sink
                .write_all_between(&desired, &mut || {
                    if std::mem::take(&mut once) {
                        // Someone else's edit, same size: only the content tells.
                        fs::write(&path, "A=2\nCLOUDFLARE_AUD_TAG=old\n").unwrap();
                    }
                })
                .unwrap();
            assert_eq!(out, WriteOutcome::Written { version: None });
            assert_eq!(
                fs::read_to_string(&sink.path).unwrap(),
                "A=2\nCLOUDFLARE_AUD_TAG=newvalue\n",
                "{mode:?}: their edit kept, ours redone on it"
            );
            assert!(!backup_path(&sink.path).exists());
        }
    }

    #[test]
    fn a_file_that_keeps_changing_is_not_written() {
        for mode in [WriteMode::Atomic, WriteMode::InPlace] {
            let dir = tempfile::tempdir().unwrap();
            let sink = sink_in(dir.path(), mode);
            fs::write(&sink.path, "CLOUDFLARE_AUD_TAG=old\n").unwrap();
            let desired = BTreeMap::from([(K.to_string(), V.to_string())]);
            let path = sink.path.clone();
            let mut n = 0;
            let e = sink
                .write_all_between(&desired, &mut || {
                    n += 1;
                    fs::write(&path, format!("CLOUDFLARE_AUD_TAG=old\nTHEIRS={n}\n")).unwrap();
                })
                .unwrap_err()
                .to_string();
            assert!(e.contains("kept changing"), "{e}");
            assert_eq!(
                fs::read_to_string(&sink.path).unwrap(),
                format!("CLOUDFLARE_AUD_TAG=old\nTHEIRS={n}\n"),
                "{mode:?}: the last edit is kept, nothing of ours written"
            );
            let leftovers: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .collect();
            assert!(leftovers.is_empty(), "{leftovers:?}");
        }
    }

    #[test]
    fn a_write_cut_short_is_finished_or_undone_by_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink_in(dir.path(), WriteMode::InPlace);
        let state = dir.path().join("state.json");
        let old = "A=1\nCLOUDFLARE_AUD_TAG=old\n";
        let new = "A=1\nCLOUDFLARE_AUD_TAG=newvalue\n";
        let journal = |content: &str| {
            fs::write(backup_path(&sink.path), old).unwrap();
            fs::write(&sink.path, content).unwrap();
            crate::state::StateFile::update(&state, |s| {
                s.in_place_writes = vec![crate::state::InPlaceWrite {
                    target: sink.path.clone(),
                    backup: backup_path(&sink.path),
                    new_len: new.len() as u64,
                    new_hash: content_hash(new.as_bytes()),
                }]
            })
            .unwrap();
        };
        // Torn: undone.
        journal("A=1\nCLOUDFLARE_AUD_TAG=newvaluold\n");
        let done = recover_in_place(&state).unwrap();
        assert!(done[0].contains("undone"), "{done:?}");
        assert_eq!(fs::read_to_string(&sink.path).unwrap(), old);
        assert!(!backup_path(&sink.path).exists());
        // Complete: finished.
        journal(new);
        let done = recover_in_place(&state).unwrap();
        assert!(done[0].contains("completed"), "{done:?}");
        assert_eq!(fs::read_to_string(&sink.path).unwrap(), new);
        assert!(!backup_path(&sink.path).exists());
        assert!(
            crate::state::StateFile::load(&state, true)
                .unwrap()
                .state
                .in_place_writes
                .is_empty()
        );
        // Nothing pending: nothing done.
        assert!(recover_in_place(&state).unwrap().is_empty());
    }

    #[test]
    fn a_failed_in_place_write_that_never_touched_the_file_does_not_point_at_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink_in(dir.path(), WriteMode::InPlace);
        let old = "A=1\nCLOUDFLARE_AUD_TAG=old\n";
        fs::write(&sink.path, old).unwrap();
        let desired = BTreeMap::from([(K.to_string(), V.to_string())]);
        // The first write fails before a byte reaches the file (and so would a put-back).
        FAIL_WRITES.with(|c| c.set(true));
        let e = sink.write_all(&desired).unwrap_err().to_string();
        FAIL_WRITES.with(|c| c.set(false));
        assert!(e.contains("no space left"), "{e}");
        assert!(e.contains("the file was not changed"), "{e}");
        for wrong in ["backup", "copy it back", "put back", "next run"] {
            assert!(
                !e.contains(wrong),
                "says {wrong:?} though the file was never touched: {e}"
            );
        }
        assert_eq!(fs::read_to_string(&sink.path).unwrap(), old);
        assert!(
            !backup_path(&sink.path).exists(),
            "the safety copy is removed"
        );
        assert!(
            crate::state::StateFile::load(&dir.path().join("state.json"), true)
                .unwrap()
                .state
                .in_place_writes
                .is_empty(),
            "nothing left in the journal"
        );
        // The next write goes through.
        assert_eq!(
            sink.write_all(&desired).unwrap(),
            WriteOutcome::Written { version: None }
        );
        assert_eq!(
            fs::read_to_string(&sink.path).unwrap(),
            "A=1\nCLOUDFLARE_AUD_TAG=newvalue\n"
        );
    }

    #[test]
    fn equal_value_edit_is_identity() {
        let s = "A=1\nCLOUDFLARE_AUD_TAG=newvalue # c\n";
        assert_eq!(set_key(s, K, V).unwrap(), s);
    }
}
