//! clap's own errors, rewritten so that they never repeat what was typed as a value: a value
//! given to the wrong option, or one clap could not parse, may be a secret (a token pasted after
//! `--interval`, a webhook URL). The error names the option and the form it takes; the one
//! exception is an enumerated option (`--restart recreat`), whose bad value is quoted when it is
//! a short word (a typo to spot), with the allowed values.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// `e`, or an error saying the same without the value.
pub(super) fn without_values(e: clap::Error) -> clap::Error {
    let text = |k: ContextKind| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg);
    let value = text(ContextKind::InvalidValue).unwrap_or_default();
    let msg = match e.kind() {
        ErrorKind::InvalidValue if value.is_empty() || short_word(&value) => return e,
        ErrorKind::InvalidValue => {
            let allowed = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => v.join(", "),
                _ => String::new(),
            };
            format!(
                "invalid value for '{}' (not repeated here)\n  [possible values: {allowed}]",
                arg.unwrap_or_default()
            )
        }
        ErrorKind::ValueValidation => {
            let arg = arg.unwrap_or_default();
            // The parser's own word says what is expected (`not a duration (examples: 30s,
            // 5m, 1h)`), unless it repeats the value.
            let why = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .filter(|s| value.trim().is_empty() || !s.contains(value.trim()));
            let form = arg
                .split_once(' ')
                .map_or("a valid value", |(_, v)| v)
                .to_string();
            match why {
                Some(why) => format!("invalid value for '{arg}' (not repeated here): {why}"),
                None => format!("invalid value for '{arg}' (not repeated here): expected {form}"),
            }
        }
        ErrorKind::TooManyValues => format!(
            "unexpected value for '{}' (not repeated here): it takes no value",
            arg.unwrap_or_default()
        ),
        // A word where an option belongs: clap quotes it (and suggests `-- WORD`); an option
        // (`--tokn=…`) is shown by its name only, as clap does.
        ErrorKind::UnknownArgument if arg.as_deref().is_some_and(|a| !a.starts_with('-')) => {
            "unexpected argument (a value without an option before it; not repeated here)"
                .to_string()
        }
        // A mistyped command is a short word (quoted, with clap's suggestion); anything else
        // is not repeated.
        ErrorKind::InvalidSubcommand => match text(ContextKind::InvalidSubcommand) {
            Some(s) if !short_word(&s) => {
                "unrecognized subcommand (not repeated here); see `audsync help` for the commands"
                    .to_string()
            }
            _ => return e,
        },
        _ => return e,
    };
    let usage = match e.get(ContextKind::Usage) {
        Some(ContextValue::StyledStr(u)) => format!("\n\n{u}"),
        _ => String::new(),
    };
    clap::Error::raw(
        e.kind(),
        format!("{msg}{usage}\n\nFor more information, try '--help'.\n"),
    )
}

/// A short word may be shown: letters, digits, `-`, `_`, at most 20.
fn short_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 20
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
