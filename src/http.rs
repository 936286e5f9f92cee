//! Small helpers shared by the HTTP clients (Cloudflare, Infisical, the Access edge).
//!
//! Never includes a URL's query or a header in what it returns: callers put the result in
//! errors and logs.

/// Describe a transport-level reqwest failure: timeout, connect, or other, plus its causes.
pub fn describe_transport(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out (see --timeout / AUDSYNC_TIMEOUT)"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        causes.push(c.to_string());
        src = c.source();
    }
    if causes.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", causes.join(": "))
    }
}
