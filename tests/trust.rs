//! Issue 11 (trust): nobody but Cloudflare chooses the AUD, no secret leaks, nothing outside
//! audsync's own files and containers is touched. Each test here failed on the code before.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::support::cloudflare::{self, FakeCloudflare, TOKEN, app, aud};
use crate::support::infisical::{CLIENT_ID, CLIENT_SECRET, PROJECT};
use crate::support::{Run, Sandbox, Server, run};

const HOST: &str = "api.example.com";

fn both(r: &Run) -> String {
    format!("{}\n{}", r.stdout, r.stderr)
}

/// A server counting every request it gets (the place a redirect points to).
fn sink_server() -> (Server, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let server = Server::start(move |_req: Request<Body>| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, "{}").into_response()
        }
    });
    (server, seen)
}

/// A server answering every request with `status` and `Location: <to><path>`.
fn redirector(status: u16, to: String) -> Server {
    Server::start(move |req: Request<Body>| {
        let to = to.clone();
        async move {
            Response::builder()
                .status(status)
                .header("location", format!("{to}{}", req.uri()))
                .body(Body::empty())
                .unwrap()
        }
    })
}

// ---------------------------------------------------------------- no redirect is followed

#[test]
fn api_redirects_to_another_port_are_not_followed_and_nothing_reaches_it() {
    let (target, seen) = sink_server();
    for status in [301, 302, 307, 308] {
        let r = redirector(status, target.url.replace("127.0.0.1", "localhost"));
        // Cloudflare: the token would go along.
        let mut sb = Sandbox::new();
        sb.var("CLOUDFLARE_API_URL", &r.url)
            .var("CLOUDFLARE_API_TOKEN", TOKEN)
            .var("CLOUDFLARE_ACCOUNT_ID", cloudflare::ACCOUNT);
        let mut c = sb.cmd();
        c.args(["get", "-vvv", "--domain", HOST]);
        c.env("RUST_LOG", "trace");
        let out = run(&mut c);
        assert_eq!(out.code, 1, "{status}: {out:?}");
        assert!(
            out.stderr.contains("redirect") && out.stderr.contains("localhost"),
            "the error names the Location host: {out:?}"
        );
        assert!(!both(&out).contains(TOKEN), "{out:?}");
        // Infisical: the client secret would go along.
        let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
        let mut sb = Sandbox::with_cloudflare(&cf);
        sb.var("INFISICAL_HOST", &r.url)
            .var("INFISICAL_PROJECT_ID", PROJECT)
            .var("INFISICAL_CLIENT_ID", CLIENT_ID)
            .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
        sb.write_env("CLOUDFLARE_AUD_TAG=old\n");
        let mut c = sb.cmd();
        c.args([
            "sync", "-vvv", "--domain", HOST, "--sink", "infisical", "--restart", "none",
        ]);
        c.env("RUST_LOG", "trace");
        let out = run(&mut c);
        assert_ne!(out.code, 0, "{status}: {out:?}");
        assert!(out.stderr.contains("localhost"), "{out:?}");
        for secret in [CLIENT_SECRET, CLIENT_ID, TOKEN] {
            assert!(!both(&out).contains(secret), "{secret} leaked: {out:?}");
        }
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0, "a request reached the redirect target");
}

// ---------------------------------------------------------------- https only for credentials

#[test]
fn credentials_over_plain_http_to_a_non_loopback_host_are_refused_before_connecting() {
    for (var, url) in [
        ("CLOUDFLARE_API_URL", "http://192.0.2.1:9/client/v4"),
        ("CLOUDFLARE_API_URL", "http://localhost.example.com:9/"),
        ("INFISICAL_HOST", "http://192.0.2.1:9"),
    ] {
        let mut sb = Sandbox::new();
        sb.var("CLOUDFLARE_API_TOKEN", TOKEN)
            .var("CLOUDFLARE_ACCOUNT_ID", cloudflare::ACCOUNT)
            .var(var, url);
        let args: &[&str] = if var == "INFISICAL_HOST" {
            sb.var("INFISICAL_PROJECT_ID", PROJECT)
                .var("INFISICAL_CLIENT_ID", CLIENT_ID)
                .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
            &["sync", "--domain", HOST, "--sink", "infisical", "--restart", "none", "--timeout", "1s"]
        } else {
            &["get", "--domain", HOST, "--timeout", "1s"]
        };
        let mut c = sb.cmd();
        c.args(args);
        let out = run(&mut c);
        assert_eq!(out.code, 2, "{url}: {out:?}");
        assert!(out.stderr.contains("--allow-insecure-http"), "{out:?}");
        // The explicit opt-in lets it try (and fail to connect: nothing listens there).
        let mut c = sb.cmd();
        c.args(args).env("AUDSYNC_ALLOW_INSECURE_HTTP", "1");
        let out = run(&mut c);
        assert_ne!(out.code, 2, "{url}: {out:?}");
    }
}
