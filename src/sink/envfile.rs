//! The `.env` sink: change the one assignment of one key, and nothing else, byte for byte.
//!
//! The edit is a pure function ([`set_key`]) checked afterwards by parsing both versions with
//! dotenvy: if any other key would read differently, nothing is written. Writes are atomic
//! (temp file, fsync, rename, keeping mode and owner) or, with `--write-mode in-place`, rewrite
//! the same inode for a file bind-mounted into a container. A file whose mode has no write bit
//! is refused, not replaced.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Error, WriteOutcome};

const BOM: &str = "\u{feff}";

/// How the new file reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// Temp file in the same directory, fsync, rename over the target. Never half-written.
    Atomic,
    /// Rewrite the same inode: for an `.env` bind-mounted into a container as a single file.
    InPlace,
}

/// Return `content` with every assignment of `key` set to `value`, or the key appended.
/// Everything else (comments, order, quoting, `export`, CRLF, BOM, final newline) is kept.
pub fn set_key(content: &str, key: &str, value: &str) -> Result<String, String> {
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/+=@".contains(c))
    {
        return Err("the value holds characters that would need quoting in a .env file".into());
    }
    let (bom, body) = match content.strip_prefix(BOM) {
        Some(rest) => (BOM, rest),
        None => ("", content),
    };
    let crlf = body
        .find('\n')
        .is_some_and(|i| i > 0 && body.as_bytes()[i - 1] == b'\r');
    let mut out = String::with_capacity(content.len() + key.len() + value.len() + 2);
    out.push_str(bom);
    let mut found = false;
    let mut lines = body.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        let Some(a) = parse_assignment(line) else {
            out.push_str(line);
            continue;
        };
        let rest = &line[a.value_start..];
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'');
        // Where the value ends: `close` is the byte offset in `line` just past the value.
        let mut span = vec![line];
        let close = match quote {
            Some(q) => {
                let mut end = closing_quote(&rest[1..], q).map(|i| a.value_start + 1 + i + 1);
                // A quoted value may run over several lines; collect them.
                while end.is_none() {
                    match lines.next() {
                        Some(next) => {
                            span.push(next);
                            end = closing_quote(next, q).map(|i| i + 1);
                        }
                        None => break,
                    }
                }
                end
            }
            None => None,
        };
        if a.key != key {
            span.iter().for_each(|l| out.push_str(l));
            continue;
        }
        found = true;
        let last = span[span.len() - 1];
        let (content_end, ending) = split_ending(last);
        let tail = match (quote, close) {
            (Some(_), Some(c)) => &last[c..content_end],
            (Some(_), None) => return Err(format!("the quoted value of {key} is never closed")),
            (None, _) => {
                let v = &line[a.value_start..content_end];
                let vend = unquoted_end(v);
                &v[vend..]
            }
        };
        out.push_str(&line[..a.value_start]);
        match quote {
            Some(q) => {
                out.push(q);
                out.push_str(value);
                out.push(q);
            }
            None => out.push_str(value),
        }
        out.push_str(tail);
        out.push_str(ending);
    }
    if !found {
        let nl = if crlf { "\r\n" } else { "\n" };
        if !body.is_empty() && !body.ends_with('\n') {
            out.push_str(nl);
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
        out.push_str(nl);
    }
    Ok(out)
}

struct Assignment<'a> {
    key: &'a str,
    /// Byte offset in the line where the value starts (after `=` and any blanks).
    value_start: usize,
}

fn parse_assignment(line: &str) -> Option<Assignment<'_>> {
    let trimmed = line.trim_start_matches([' ', '\t']);
    let mut pos = line.len() - trimmed.len();
    let mut rest = trimmed;
    if let Some(r) = rest.strip_prefix("export")
        && r.starts_with([' ', '\t'])
    {
        let r2 = r.trim_start_matches([' ', '\t']);
        pos += rest.len() - r2.len();
        rest = r2;
    }
    let klen = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
        .unwrap_or(rest.len());
    if klen == 0 {
        return None;
    }
    let key = &rest[..klen];
    let after = &rest[klen..];
    let after_ws = after.trim_start_matches([' ', '\t']);
    let eq = after_ws.strip_prefix('=')?;
    let val = eq.trim_start_matches([' ', '\t']);
    let value_start = pos + klen + (after.len() - val.len());
    Some(Assignment { key, value_start })
}

/// Byte offset of the closing quote in `s` (which starts just after the opening one).
fn closing_quote(s: &str, q: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if q == '"' && escaped {
            escaped = false;
            continue;
        }
        if q == '"' && c == '\\' {
            escaped = true;
            continue;
        }
        if c == q {
            return Some(i);
        }
    }
    None
}

/// Length of an unquoted value: up to a ` #` comment, without trailing blanks.
fn unquoted_end(v: &str) -> usize {
    let bytes = v.as_bytes();
    let mut end = v.len();
    for i in 1..bytes.len() {
        if bytes[i] == b'#' && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
            end = i;
            break;
        }
    }
    v[..end].trim_end_matches([' ', '\t']).len()
}

fn split_ending(line: &str) -> (usize, &str) {
    if let Some(s) = line.strip_suffix("\r\n") {
        (s.len(), "\r\n")
    } else if let Some(s) = line.strip_suffix('\n') {
        (s.len(), "\n")
    } else {
        (line.len(), "")
    }
}

/// The line (1-based) of the last assignment of each key: where an error or `audsync config`
/// points, never the text.
pub fn key_lines(content: &str) -> BTreeMap<String, usize> {
    let body = content.strip_prefix(BOM).unwrap_or(content);
    body.split_inclusive('\n')
        .enumerate()
        .filter_map(|(i, line)| Some((parse_assignment(line)?.key.to_string(), i + 1)))
        .collect()
}

/// Parse like dotenvy does (what compose-style readers and our own config see).
pub fn parse(content: &str) -> Result<BTreeMap<String, String>, String> {
    let body = content.strip_prefix(BOM).unwrap_or(content);
    let mut map = BTreeMap::new();
    for item in dotenvy::from_read_iter(body.as_bytes()) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        map.insert(k, v);
    }
    Ok(map)
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
    let changed: std::collections::BTreeSet<&str> = before
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
fn referring_keys<'a>(content: &'a str, key: &str) -> std::collections::BTreeSet<&'a str> {
    let braced = format!("${{{key}}}");
    let bare = format!("${key}");
    content
        .lines()
        .filter_map(|line| {
            let a = parse_assignment(line)?;
            let v = &line[a.value_start..];
            let bare_hit = v.match_indices(&bare).any(|(i, _)| {
                !v[i + bare.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            });
            (a.key != key && (v.contains(&braced) || bare_hit)).then_some(a.key)
        })
        .collect()
}

/// The `.env` file sink: every key bound to this file, written in one atomic write.
#[derive(Debug, Clone)]
pub struct EnvFileSink {
    pub path: PathBuf,
    pub mode: WriteMode,
}

impl EnvFileSink {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::EnvFile {
            path: self.path.clone(),
            message: msg.into(),
        }
    }

    fn read(&self) -> Result<Option<String>, Error> {
        crate::fsx::read_text(&self.path).map_err(|e| self.err(e))
    }

    /// What the file holds for each key of `desired`.
    pub fn observe_all(
        &self,
        desired: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, crate::reconcile::KeyObservation>, Error> {
        use crate::reconcile::KeyObservation;
        let Some(content) = self.read()? else {
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
        Ok(out)
    }

    /// Set every key of `desired`, each edit proven by re-parsing, in one write.
    pub fn write_all(&self, desired: &BTreeMap<String, String>) -> Result<WriteOutcome, Error> {
        let content = self.read()?;
        let mut new = content.clone().unwrap_or_default();
        for (key, value) in desired {
            new = if content.is_some() {
                checked_edit(&new, key, value)
            } else {
                set_key(&new, key, value)
            }
            .map_err(|e| self.err(e))?;
        }
        if content.as_deref() == Some(new.as_str()) {
            return Ok(WriteOutcome::Unchanged);
        }
        // Write through a symlink to its target, so the link stays a link.
        let target = match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => fs::canonicalize(&self.path)
                .map_err(|e| self.err(format!("cannot resolve the symlink: {e}")))?,
            _ => self.path.clone(),
        };
        let meta = match fs::metadata(&target) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.err(format!("cannot stat: {e}"))),
        };
        if let Some(m) = &meta
            && m.permissions().mode() & 0o222 == 0
        {
            return Err(self.err(format!(
                "the file is read-only (mode {:o}); make it writable (chmod u+w) or stop syncing to it; nothing was written",
                m.permissions().mode() & 0o7777
            )));
        }
        match (self.mode, &meta) {
            (WriteMode::InPlace, Some(_)) => write_in_place(&target, new.as_bytes()),
            _ => write_atomic(&target, new.as_bytes(), meta.as_ref()),
        }
        .map_err(|e| self.err(e))?;
        Ok(WriteOutcome::Written { version: None })
    }
}

fn write_atomic(target: &Path, bytes: &[u8], meta: Option<&fs::Metadata>) -> Result<(), String> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".audsync-")
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .map_err(|e| format!("cannot write the temporary file: {e}"))?;
    if let Some(m) = meta {
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
    tmp.persist(target)
        .map_err(|e| format!("cannot replace the file: {}", e.error))?;
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

/// Rewrite the same inode. Not atomic by nature, so a copy of the current content is first
/// written (atomically) beside the file; after a failed write the content is put back, and the
/// copy is kept for the user when even that fails. The copy is removed after a good write.
fn write_in_place(target: &Path, bytes: &[u8]) -> Result<(), String> {
    let old = fs::read(target).map_err(|e| format!("cannot read before writing: {e}"))?;
    let backup = backup_path(target);
    write_atomic(&backup, &old, None)?;
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(target)
            .map_err(|e| format!("cannot open for writing: {e}"))?;
        rewrite(&mut f, bytes)
    })();
    match result {
        Ok(()) => {
            let _ = fs::remove_file(&backup);
            Ok(())
        }
        Err(e) => {
            let restored = fs::OpenOptions::new()
                .write(true)
                .open(target)
                .map_err(|e| e.to_string())
                .and_then(|mut f| rewrite(&mut f, &old));
            match restored {
                Ok(()) => {
                    let _ = fs::remove_file(&backup);
                    Err(format!("{e}; the previous content was put back"))
                }
                Err(_) => Err(format!(
                    "{e}; the previous content is saved in {}: copy it back",
                    backup.display()
                )),
            }
        }
    }
}

fn rewrite(f: &mut fs::File, bytes: &[u8]) -> Result<(), String> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(0))
        .map_err(|e| format!("seek failed: {e}"))?;
    f.write_all(bytes)
        .map_err(|e| format!("write failed: {e}"))?;
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
    fn equal_value_edit_is_identity() {
        let s = "A=1\nCLOUDFLARE_AUD_TAG=newvalue # c\n";
        assert_eq!(set_key(s, K, V).unwrap(), s);
    }
}
