//! The byte-exact edit of a `.env` file's text: set every assignment of one key ([`set_key`])
//! and prove the result ([`verify_edit`]): both versions parse, the key reads the new value and
//! every other key reads as before.
//!
//! This module owns pure functions from text to text. It must never touch the file system,
//! never change a byte outside the values of the key edited (comments, order, quoting,
//! `export`, blanks, line endings, BOM and final newline stay as they are), and never put a
//! value into an error: errors name line numbers and keys only.

use std::collections::BTreeSet;

use super::parse::{ParseError, is_name_char, parse, scan, split_bom};

/// Why an edit was refused. Names keys and line numbers, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The new value would need quoting (blanks, quotes, newlines, `#`, `$`...).
    #[error("the value holds characters that would need quoting in a .env file")]
    NeedsQuoting,
    /// The text does not parse, so where the key sits is unknown.
    #[error("does not parse as a .env file ({0}); fix it by hand")]
    DoesNotParse(ParseError),
    /// The text before the edit does not parse ([`verify_edit`]).
    #[error("the file does not parse as a .env file ({0}); fix it by hand")]
    BeforeDoesNotParse(ParseError),
    /// The edited text would not parse.
    #[error("the edited file would not parse ({0})")]
    AfterDoesNotParse(ParseError),
    /// After the edit the key would not read the new value.
    #[error("after the edit {key} would not read the new value")]
    NotNewValue { key: String },
    /// The edit would change other keys (named, in order).
    #[error("the edit would change other keys ({}); nothing written", .keys.join(", "))]
    ChangesOthers { keys: Vec<String> },
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
pub fn set_key(content: &str, key: &str, value: &str) -> Result<String, Error> {
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:/+=@".contains(c))
    {
        return Err(Error::NeedsQuoting);
    }
    let (bom, body) = split_bom(content);
    let (entries, err) = scan(body);
    if let Some(e) = err {
        return Err(Error::DoesNotParse(e));
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

/// The edit plus its proof: parse both versions; only `key` may differ, and it must read `value`.
pub fn checked_edit(content: &str, key: &str, value: &str) -> Result<String, Error> {
    let edited = set_key(content, key, value)?;
    verify_edit(content, &edited, key, value)?;
    Ok(edited)
}

/// Prove an edit: both versions parse, `key` reads `value`, and every other key reads as
/// before — except keys whose own text refers to `key` (`X=${KEY}`): those are meant to follow.
pub(crate) fn verify_edit(
    content: &str,
    edited: &str,
    key: &str,
    value: &str,
) -> Result<(), Error> {
    let before = parse(content).map_err(Error::BeforeDoesNotParse)?;
    let after = parse(edited).map_err(Error::AfterDoesNotParse)?;
    if after.get(key).map(String::as_str) != Some(value) {
        return Err(Error::NotNewValue {
            key: key.to_string(),
        });
    }
    let followers = referring_keys(content, key);
    let changed: BTreeSet<&str> = before
        .keys()
        .chain(after.keys())
        .filter(|k| *k != key && !followers.contains(k.as_str()) && before.get(*k) != after.get(*k))
        .map(String::as_str)
        .collect();
    if !changed.is_empty() {
        return Err(Error::ChangesOthers {
            keys: changed.into_iter().map(str::to_string).collect(),
        });
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
        .unwrap_err()
        .to_string();
        assert!(e.contains("would change other keys (A)"), "{e}");
        let e = verify_edit(
            "A=1\nCLOUDFLARE_AUD_TAG=old\n",
            "CLOUDFLARE_AUD_TAG=newvalue\n",
            K,
            V,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("(A)"), "a lost key is a change: {e}");
        let e = verify_edit("CLOUDFLARE_AUD_TAG=old\n", "CLOUDFLARE_AUD_TAG=old\n", K, V)
            .unwrap_err()
            .to_string();
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
        let e = set_key(s, K, V).unwrap_err().to_string();
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

    #[test]
    fn equal_value_edit_is_identity() {
        let s = "A=1\nCLOUDFLARE_AUD_TAG=newvalue # c\n";
        assert_eq!(set_key(s, K, V).unwrap(), s);
    }
}
