//! What may be quoted of a container's logs: every form in which a value of its environment
//! can show up in a log line. Programs print a secret as it is, percent-decoded (the password
//! of a `DATABASE_URL`), JSON-escaped (a config dump), base64-encoded (a Basic header, a
//! key file) or letter-spaced (a banner); each form of every value of at least
//! [`super::recreate`]'s minimum length is redacted. Quoted lines go to the terminal report
//! only, never to a notification (other people's servers).

use base64::Engine as _;

/// Values shorter than this are not worth hiding (`1`, `true`, `prod`), and hiding them would
/// blank ordinary words in the log.
pub(crate) const MIN: usize = 8;

fn percent_decoded(s: &str) -> Option<String> {
    if !s.contains('%') && !s.contains('+') {
        return None;
    }
    let d = url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    (d != s).then_some(d)
}

/// The parts of a URL value that are secrets on their own: its user name and password, raw
/// and percent-decoded.
fn url_parts(s: &str) -> Vec<String> {
    let Ok(u) = url::Url::parse(s) else {
        return vec![];
    };
    let mut out = Vec::new();
    for part in [Some(u.username()), u.password()].into_iter().flatten() {
        if part.is_empty() {
            continue;
        }
        out.push(part.to_string());
        out.extend(percent_decoded(part));
    }
    out
}

/// Every form of every value (of at least [`MIN`] characters) to hide in quoted logs, longest
/// first so that a value containing another is hidden whole.
pub(crate) fn forms(values: &[String]) -> Vec<String> {
    let mut plain: Vec<String> = Vec::new();
    for v in values {
        plain.push(v.clone());
        plain.extend(percent_decoded(v));
        plain.extend(url_parts(v));
    }
    let mut out: Vec<String> = Vec::new();
    for v in plain.iter().filter(|v| v.chars().count() >= MIN) {
        out.push(v.clone());
        let json = serde_json::to_string(v).unwrap_or_default();
        if let Some(inner) = json.get(1..json.len().saturating_sub(1)) {
            out.push(inner.to_string());
        }
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            out.push(engine.encode(v.as_bytes()));
        }
        out.push(v.chars().map(String::from).collect::<Vec<_>>().join(" "));
    }
    out.retain(|f| f.chars().count() >= MIN);
    out.sort_by_key(|f| std::cmp::Reverse(f.len()));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::recreate::redact_line;

    #[test]
    fn every_form_of_an_environment_value_is_redacted() {
        let env = forms(&[
            "s3cr\"et-Pa55w0rd".to_string(),
            "postgres://app:p%40ssw0rd-xyz@db:5432/app".to_string(),
            "prod".to_string(),
        ]);
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr\"et-Pa55w0rd");
        for (line, gone) in [
            ("raw s3cr\"et-Pa55w0rd", "Pa55w0rd"),
            (r#"{"password":"s3cr\"et-Pa55w0rd"}"#, "Pa55w0rd"),
            ("connecting with password p@ssw0rd-xyz", "p@ssw0rd"),
            ("url postgres://app:p%40ssw0rd-xyz@db:5432/app", "ssw0rd"),
            (&format!("key={b64}"), &b64[..12]),
            ("banner s 3 c r \" e t - P a 5 5 w 0 r d", "w 0 r d"),
        ] {
            let out = redact_line(line, &env);
            assert!(
                !out.contains(gone) && out.contains("[redacted]"),
                "{line} -> {out}"
            );
        }
        assert_eq!(redact_line("env=prod", &env), "env=prod");
    }
}
