//! The AUD tag of a Cloudflare Access application: the one place the rule "64 lowercase hex
//! characters" lives. Every check of an AUD (from the API, the edge's metadata or login
//! redirect, a sink) goes through [`Aud::parse`].
//!
//! An [`Aud`] is only ever made by [`Aud::parse`], so holding one means the value was checked.
//! This module must never accept a value it has not checked (no `From<String>`, no public
//! field), and it imports no other crate module.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Length of an AUD tag, in characters.
pub const LEN: usize = 64;

/// A checked AUD tag: exactly 64 characters out of `0-9a-f`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Aud(String);

/// Why a value is not an AUD tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudError {
    #[error("an AUD tag is {LEN} lowercase hex characters, this one has {0} characters")]
    Length(usize),
    #[error(
        "an AUD tag is {LEN} lowercase hex characters (0-9, a-f), this one holds other characters"
    )]
    NotLowercaseHex,
}

impl Aud {
    /// Check `s` (as it is: no trimming, no lowercasing; Cloudflare sends lowercase).
    pub fn parse(s: &str) -> Result<Aud, AudError> {
        if s.len() != LEN {
            return Err(AudError::Length(s.chars().count()));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(AudError::NotLowercaseHex);
        }
        Ok(Aud(s.to_string()))
    }
}

impl fmt::Display for Aud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Aud {
    type Err = AudError;
    fn from_str(s: &str) -> Result<Aud, AudError> {
        Aud::parse(s)
    }
}

impl AsRef<str> for Aud {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn sixty_four_lowercase_hex_characters_parse() {
        let a = Aud::parse(GOOD).unwrap();
        assert_eq!(a.to_string(), GOOD);
        assert_eq!(GOOD.parse::<Aud>(), Ok(a.clone()));
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(
            Aud::parse(&GOOD.to_ascii_uppercase()),
            Err(AudError::NotLowercaseHex)
        );
        assert_eq!(Aud::parse(&"g".repeat(64)), Err(AudError::NotLowercaseHex));
        assert_eq!(Aud::parse("abc"), Err(AudError::Length(3)));
        assert_eq!(Aud::parse(""), Err(AudError::Length(0)));
        assert_eq!(Aud::parse(&GOOD[..63]), Err(AudError::Length(63)));
        assert_eq!(Aud::parse(&format!("{GOOD}0")), Err(AudError::Length(65)));
        // No trimming: a value with a newline is not an AUD (a sink must not get one).
        assert!(Aud::parse(&format!(" {}", &GOOD[1..])).is_err());
        assert!(Aud::parse(&format!("{}\n", &GOOD[..63])).is_err());
        // 64 bytes that are not 64 characters.
        let multibyte = format!("{}é", &GOOD[..62]);
        assert_eq!(multibyte.len(), 64);
        assert_eq!(Aud::parse(&multibyte), Err(AudError::NotLowercaseHex));
    }

    #[test]
    fn serialises_as_the_bare_string() {
        let a = Aud::parse(GOOD).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{GOOD}\""));
    }

    #[test]
    fn the_error_says_the_rule() {
        assert_eq!(
            AudError::Length(3).to_string(),
            "an AUD tag is 64 lowercase hex characters, this one has 3 characters"
        );
    }
}
