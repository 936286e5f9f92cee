//! Strings from outside (Cloudflare, Infisical, the engine, a JWT, a container's logs) made safe
//! to show: control characters (escape sequences, newlines that would forge a report line such
//! as `hint: …`), bidi overrides and zero-width characters are written visibly as `\u{…}`
//! (`\n`, `\r`, `\t`, `\e` for the common ones), and a backslash as `\\` so that nothing
//! printed can be mistaken for an escape. Ground floor: imports nothing of the crate.

use std::borrow::Cow;

/// Characters that are never printed as themselves.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // bidi embeddings, overrides and isolates; marks
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
            // zero-width and invisible separators, word joiner, invisible operators, BOM
            | '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}'
            // line and paragraph separators (newlines to some terminals and viewers)
            | '\u{2028}' | '\u{2029}' | '\u{0085}'
            // interlinear annotations, Hangul fillers, soft hyphen
            | '\u{FFF9}'..='\u{FFFB}' | '\u{3164}' | '\u{115F}' | '\u{1160}' | '\u{00AD}'
            // tag characters
            | '\u{E0000}'..='\u{E007F}')
}

/// An outside string as it may be shown in text output and notifications.
pub(crate) fn outside(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// A field or the message of a text log line (every one, whatever it carries: the log writer
/// cannot tell an app name from a path): [`outside`]'s escapes, except that a backslash is left
/// as it is, so that the escapes tracing already wrote into a quoted field (`\"`, `\n`) stay
/// readable. No character of the line can end it, colour it or reorder it.
pub(crate) fn in_log(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// A JSON log line: JSON escapes control characters already, not bidi or zero-width ones; those
/// are written as JSON's own `\uXXXX` escapes (they only occur inside strings: the structure is
/// ASCII), so a reader of the raw line sees them and a parser reads the same value.
pub(crate) fn in_json(s: &str) -> Cow<'_, str> {
    // A raw line break is the line's own end (JSON writes those inside strings as `\n`).
    let raw = |c: char| hidden(c) && c != '\n';
    if !s.chars().any(raw) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if raw(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn escape(s: &str, backslash: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| hidden(c) || (backslash && c == '\\')) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' if backslash => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            c if hidden(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`outside`] for several lines (a container's log lines): each line escaped on its own, the
/// line breaks kept.
pub(crate) fn outside_lines(s: &str) -> String {
    s.lines().map(outside).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_bidi_and_zero_width_visibly() {
        assert_eq!(outside("api.example.com"), "api.example.com");
        assert!(matches!(outside("plain text"), Cow::Borrowed(_)));
        assert_eq!(
            outside("app\n  hint: run rm -rf"),
            "app\\n  hint: run rm -rf"
        );
        assert_eq!(outside("\u{1b}[31mred\u{1b}[0m"), "\\e[31mred\\e[0m");
        assert_eq!(outside("abc\u{202E}fed"), "abc\\u{202e}fed");
        assert_eq!(outside("a\u{200B}b\u{FEFF}"), "a\\u{200b}b\\u{feff}");
        assert_eq!(outside("x\u{7}\u{9b}y"), "x\\u{0007}\\u{009b}y");
        assert_eq!(
            outside("a\\nb"),
            "a\\\\nb",
            "a literal backslash-n stays distinguishable"
        );
        assert_eq!(
            outside_lines("one\ntwo\u{1b}]0;x\u{7}"),
            "one\ntwo\\e]0;x\\u{0007}"
        );
        assert_eq!(outside("Ünïcödé ok"), "Ünïcödé ok");
    }

    #[test]
    fn log_lines_escape_the_same_characters_and_keep_their_own_escapes() {
        assert_eq!(
            in_log("name=\"a\\\"b\" \u{1b}[31mred\u{202e}\nhint: forged"),
            "name=\"a\\\"b\" \\e[31mred\\u{202e}\\nhint: forged"
        );
        assert!(matches!(in_log("plain line"), Cow::Borrowed(_)));
        // JSON: the value a parser reads is unchanged, the raw line shows the characters.
        let line =
            serde_json::json!({"f": "a\u{202e}b\u{200b}c\u{e0041}\u{1b}\u{85}"}).to_string() + "\n";
        let safe = in_json(&line);
        assert!(
            safe.ends_with("}\n") && safe.matches('\n').count() == 1,
            "{safe}"
        );
        assert!(
            !safe.contains('\u{202e}') && !safe.contains('\u{200b}'),
            "{safe}"
        );
        assert!(
            safe.contains("\\u202e") && safe.contains("\\udb40\\udc41"),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["f"], "a\u{202e}b\u{200b}c\u{e0041}\u{1b}\u{85}");
    }
}
