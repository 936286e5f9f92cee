//! Reading a `.env` file as docker compose reads an `env_file`: the tolerant scanner
//! ([`scan`]) that finds every entry and where its value sits, and [`parse`], which turns the
//! entries into the values compose would see (last assignment wins, `$NAME` substitution).
//!
//! This module owns the grammar and nothing else. It must never change or write a file, and
//! never put the text of a line into an error: a line that does not parse is named by its
//! number only (an unclosed quote swallows the lines after it, secrets included).

use std::collections::BTreeMap;
use std::ops::Range;

pub(super) const BOM: &str = "\u{feff}";
/// Stands for an escaped `\$` while substitution runs (a private-use character).
const LITERAL_DOLLAR: char = '\u{e000}';

/// A line of a `.env` file that does not parse: its number and what is wrong, never its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct ParseError {
    /// 1-based; for an unclosed quote, the line where the value starts.
    pub line: usize,
    pub what: &'static str,
}

/// One assignment (or bare key) of a `.env` file, with where its value sits.
#[derive(Debug, Clone)]
pub(super) struct Entry<'a> {
    pub(crate) key: &'a str,
    /// 1-based line where the entry starts.
    pub line: usize,
    /// Byte range (in the body without BOM) of the raw value, quotes included; for a bare key,
    /// the key itself.
    pub(super) span: Range<usize>,
    pub(super) quote: Option<u8>,
    /// The value as written (escapes decoded, no substitution); `None` for a bare key.
    pub(super) value: Option<String>,
}

impl Entry<'_> {
    pub(super) fn is_bare(&self) -> bool {
        self.value.is_none()
    }
    /// `$NAME` / `${NAME}` are substituted (unquoted and double-quoted values).
    pub(super) fn expands(&self) -> bool {
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
pub(super) fn scan(body: &str) -> (Vec<Entry<'_>>, Option<ParseError>) {
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

pub(super) fn split_bom(content: &str) -> (&str, &str) {
    match content.strip_prefix(BOM) {
        Some(rest) => (BOM, rest),
        None => ("", content),
    }
}

/// The line (1-based) of the last assignment of each key: where an error or `audsync config`
/// points, never the text. Lines after one that does not parse are not seen.
pub(crate) fn key_lines(content: &str) -> BTreeMap<String, usize> {
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

pub(super) fn is_name_char(c: char) -> bool {
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
