//! `--exec 'CMD ARGS'` split into words the way a POSIX shell splits them (blanks, single and
//! double quotes, backslashes), and nothing more: no variables, globs, pipes or redirections
//! (the command is never run through a shell, so `$HOME` or `|` are plain characters).

/// Why a command line could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordsError {
    #[error("a quote ({0}) is not closed")]
    Unclosed(char),
    #[error("it ends with a lone backslash")]
    TrailingBackslash,
    #[error("it is empty")]
    Empty,
}

/// The words of `s`.
pub fn split(s: &str) -> Result<Vec<String>, WordsError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    // A word has begun (so `''` is an empty word, not nothing).
    let mut started = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if started {
                    words.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            '\'' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(WordsError::Unclosed('\'')),
                    }
                }
            }
            '"' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(WordsError::Unclosed('"')),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(WordsError::Unclosed('"')),
                    }
                }
            }
            '\\' => {
                started = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => return Err(WordsError::TrailingBackslash),
                }
            }
            c => {
                started = true;
                cur.push(c);
            }
        }
    }
    if started {
        words.push(cur);
    }
    if words.is_empty() {
        return Err(WordsError::Empty);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        split(s).unwrap()
    }

    #[test]
    fn splits_as_a_shell_does_without_expanding_anything() {
        assert_eq!(
            w("systemctl restart  lambda"),
            ["systemctl", "restart", "lambda"]
        );
        assert_eq!(
            w(r#"sh -c 'echo "$X" | wc'"#),
            ["sh", "-c", r#"echo "$X" | wc"#]
        );
        assert_eq!(
            w(r#"a "b c" d\ e "q\"x\y" '' x''y"#),
            ["a", "b c", "d e", r#"q"x\y"#, "", "xy"]
        );
        assert_eq!(w("$HOME *"), ["$HOME", "*"]);
    }

    #[test]
    fn refuses_what_a_shell_would_not_finish() {
        assert_eq!(split("echo 'a"), Err(WordsError::Unclosed('\'')));
        assert_eq!(split("echo \"a"), Err(WordsError::Unclosed('"')));
        assert_eq!(split("echo a\\"), Err(WordsError::TrailingBackslash));
        assert_eq!(split("   "), Err(WordsError::Empty));
    }
}
