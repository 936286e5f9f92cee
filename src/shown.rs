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

/// An outside string as it may be shown in text output, logs and notifications.
pub(crate) fn outside(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| hidden(c) || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
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
}
