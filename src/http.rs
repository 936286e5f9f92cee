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

/// Build a reqwest client; TLS set-up can fail (no system CA certificates), and that must be an
/// error the user can act on, never a panic in the middle of `watch`.
pub fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, String> {
    builder.build().map_err(|e| {
        let mut msg = format!("cannot set up the HTTP client: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            msg.push_str(&format!(": {c}"));
            src = c.source();
        }
        msg + " (check the system CA certificates: package ca-certificates, SSL_CERT_FILE)"
    })
}
