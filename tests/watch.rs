//! `audsync watch` as a child process against the fake Cloudflare: ticks, backoff, signals,
//! reload, the lock, failures by stage, /healthz and /metrics over real HTTP; restarts, recreates,
//! rollbacks and SIGTERM mid-recreate on the real engine (#[ignore]d); plus `completions` and `man`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cloudflare::{FakeCloudflare, Fault, TOKEN, app, aud};
use crate::support::{Sandbox, run};

pub(crate) const HOST: &str = "api.example.com";
const WEB: &str = "web.example.com";

pub(crate) fn setup(env: &str) -> (FakeCloudflare, Sandbox) {
    let cf = FakeCloudflare::start(vec![app(1, WEB, &aud(1)), app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(env);
    (cf, sb)
}

/// A running `audsync watch`; its stdout and stderr are collected line by line. Killed on drop.
pub(crate) struct Watcher {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    status: Option<ExitStatus>,
}

fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

impl Watcher {
    pub(crate) fn start(sb: &Sandbox, args: &[&str]) -> Watcher {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("audsync"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AUDSYNC_LOCK_DIR", sb.locks.path())
            .envs(sb.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(sb.dir())
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let stdout = collect(child.stdout.take().unwrap());
        Watcher {
            child,
            stderr,
            stdout,
            status: None,
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {sig} failed");
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The JSON log lines (with --log-format json).
    pub(crate) fn json_logs(&self) -> Vec<Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub(crate) fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status.is_none()
    }

    /// Wait for the process to end; panics after `limit`.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> i32 {
        let ok = wait_until(limit, || !self.running());
        assert!(ok, "watch did not exit within {limit:?}\n{}", self.stderr());
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        let st = self.status.unwrap();
        st.code()
            .unwrap_or_else(|| panic!("killed by a signal: {st:?}\n{}", self.stderr()))
    }

    /// Wait until `cond` holds, failing the test with the log when it never does.
    pub(crate) fn expect(
        &mut self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Watcher) -> bool,
    ) {
        let start = Instant::now();
        loop {
            if cond(self) {
                return;
            }
            assert!(
                self.running(),
                "watch exited ({:?}) while waiting for {what}\n{}",
                self.status,
                self.stderr()
            );
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub(crate) const LIMIT: Duration = Duration::from_secs(30);

fn fast(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec!["--restart", "none", "--interval", "200ms", "--jitter", "0"];
    v.extend_from_slice(extra);
    v
}

pub(crate) fn holds(sb: &Sandbox, value: &str) -> bool {
    std::fs::read_to_string(sb.env_path())
        .unwrap_or_default()
        .contains(&format!("CLOUDFLARE_AUD_TAG={value}\n"))
}

pub(crate) fn message(l: &Value) -> &str {
    l["fields"]["message"].as_str().unwrap_or("")
}

#[test]
fn rotated_aud_is_picked_up_on_the_next_tick_and_applied_once() {
    let (cf, sb) = setup("OTHER=1\nCLOUDFLARE_AUD_TAG=old\n");
    let mut w = Watcher::start(
        &sb,
        &fast(&["--domain", HOST, "--log-format", "json", "--output", "json"]),
    );
    w.expect("the first AUD", LIMIT, |_| holds(&sb, &aud(2)));
    let n = cf.requests().len();
    w.expect("two more passes", LIMIT, |_| cf.requests().len() >= n + 2);
    assert!(holds(&sb, &aud(2)));

    // The application is deleted and created again elsewhere: same id here, new AUD.
    cf.set_aud(1, &aud(3));
    w.expect("the rotated AUD", LIMIT, |_| holds(&sb, &aud(3)));
    let inode = std::fs::metadata(sb.env_path()).unwrap().ino();
    let n = cf.requests().len();
    w.expect("three more passes", LIMIT, |_| cf.requests().len() >= n + 3);
    assert_eq!(
        std::fs::metadata(sb.env_path()).unwrap().ino(),
        inode,
        "the in-sync passes after the change write nothing"
    );
    assert_eq!(
        std::fs::read_to_string(sb.env_path()).unwrap(),
        format!("OTHER=1\nCLOUDFLARE_AUD_TAG={}\n", aud(3))
    );

    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
    let logs = w.json_logs();
    let changes: Vec<&Value> = logs
        .iter()
        .filter(|l| message(l) == "AUD changed")
        .collect();
    assert_eq!(
        changes.len(),
        2,
        "old -> 2, 2 -> 3, once each: {changes:#?}"
    );
    let last = changes[1];
    assert_eq!(last["level"], "WARN");
    assert_eq!(last["fields"]["old"], aud(2));
    assert_eq!(last["fields"]["new"], aud(3));
    assert_eq!(last["span"]["name"], "pass", "logged inside the pass span");
    assert!(last["span"]["id"].as_u64().is_some(), "{last}");
    // Each pass logs its outcome with its pass id.
    let done: Vec<&Value> = logs.iter().filter(|l| message(l) == "pass done").collect();
    assert!(done.len() >= 6, "{}", w.stderr());
    let ids: Vec<u64> = done
        .iter()
        .map(|l| l["span"]["id"].as_u64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|p| p[0] < p[1]),
        "pass ids increase: {ids:?}"
    );
    assert_eq!(
        done.iter()
            .filter(|l| l["fields"]["status"] == "written")
            .count(),
        2
    );
    // --output json: one report per pass on stdout.
    let reports: Vec<Value> = w
        .stdout_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), done.len());
    assert_eq!(
        reports.iter().filter(|r| r["status"] == "written").count(),
        2
    );
}

#[test]
fn server_errors_are_survived_with_growing_backoff_then_recovery() {
    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    // Three failed passes: the client tries each request 4 times.
    for _ in 0..12 {
        cf.fault(Fault::Status500);
    }
    let mut w = Watcher::start(
        &sb,
        &[
            "--domain",
            HOST,
            "--restart",
            "none",
            "--interval",
            "300ms",
            "--jitter",
            "0",
        ],
    );
    w.expect("recovery", Duration::from_secs(60), |_| holds(&sb, &aud(2)));
    let n = cf.requests().len();
    w.expect("a pass after recovery", LIMIT, |_| cf.requests().len() > n);
    let reqs = cf.requests();
    assert!(reqs.len() >= 14, "{reqs:?}");
    // The spacing between the last call of a failed pass and the first of the next one.
    let gap = |k: usize| reqs[4 * k].at - reqs[4 * k - 1].at;
    let (g1, g2, g3) = (gap(1), gap(2), gap(3));
    let ms = Duration::from_millis;
    assert!(
        g1 >= ms(300) && g2 >= ms(600) && g3 >= ms(1200),
        "{g1:?} {g2:?} {g3:?}"
    );
    assert!(g1 < g2 && g2 < g3, "backoff grows: {g1:?} {g2:?} {g3:?}");
    let after = reqs[13].at - reqs[12].at;
    assert!(
        after < g3,
        "after a success the interval resumes: {after:?} vs {g3:?}"
    );
    assert!(w.running());
    let log = w.stderr();
    assert!(log.contains("pass failed"), "{log}");
    assert!(log.contains("HTTP 500"), "{log}");
    assert!(
        log.contains("stage=\"source\"") || log.contains("stage=source"),
        "{log}"
    );
    assert!(log.contains("backing off"), "{log}");
    assert!(log.contains("failures=3"), "{log}");
    w.signal("INT");
    assert_eq!(w.wait_exit(LIMIT), 0);
}

#[test]
fn sigterm_during_a_pass_exits_cleanly_after_it() {
    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    cf.fault(Fault::Delay(1500));
    let mut w = Watcher::start(&sb, &fast(&["--domain", HOST]));
    w.expect("the pass in flight", LIMIT, |_| !cf.requests().is_empty());
    w.signal("TERM");
    let code = w.wait_exit(LIMIT);
    assert_eq!(code, 0, "{}", w.stderr());
    assert!(holds(&sb, &aud(2)), "the pass in flight was finished");
    assert_eq!(cf.requests().len(), 1, "no pass after the stop");
    let log = w.stderr();
    assert!(
        log.contains("SIGTERM: stopping after the pass in flight"),
        "{log}"
    );
    assert!(log.contains("stopped after the pass in flight"), "{log}");
}

#[test]
fn sigterm_between_passes_exits_at_once() {
    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    let mut w = Watcher::start(
        &sb,
        &["--domain", HOST, "--restart", "none", "--interval", "1h"],
    );
    w.expect("the first pass", LIMIT, |_| holds(&sb, &aud(2)));
    w.signal("TERM");
    assert_eq!(w.wait_exit(Duration::from_secs(10)), 0, "{}", w.stderr());
    assert_eq!(cf.requests().len(), 1);
}

#[test]
fn second_sigint_stops_at_once() {
    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    cf.fault(Fault::Delay(60_000));
    let mut w = Watcher::start(&sb, &fast(&["--domain", HOST, "--timeout", "2m"]));
    w.expect("the pass in flight", LIMIT, |_| !cf.requests().is_empty());
    w.signal("INT");
    w.expect("the first SIGINT noted", LIMIT, |w| {
        w.stderr()
            .contains("SIGINT: stopping after the pass in flight")
    });
    assert!(w.running(), "the first SIGINT waits for the pass");
    w.signal("INT");
    assert_eq!(w.wait_exit(Duration::from_secs(20)), 130, "{}", w.stderr());
    assert!(holds(&sb, "old"), "nothing written");
    assert!(w.stderr().contains("second SIGINT"), "{}", w.stderr());
}

#[test]
fn sighup_rereads_the_env_file_and_a_bad_reload_keeps_the_old_config() {
    let (cf, sb) = setup(&format!("AUDSYNC_DOMAIN={HOST}\nCLOUDFLARE_AUD_TAG=old\n"));
    let mut w = Watcher::start(&sb, &fast(&[]));
    w.expect("the first AUD", LIMIT, |_| holds(&sb, &aud(2)));

    // Point the .env at another host: nothing changes until SIGHUP.
    sb.write_env(&format!(
        "AUDSYNC_DOMAIN={WEB}\nCLOUDFLARE_AUD_TAG={}\n",
        aud(2)
    ));
    let n = cf.requests().len();
    w.expect("three more passes", LIMIT, |_| cf.requests().len() >= n + 3);
    assert!(holds(&sb, &aud(2)), "no reload without SIGHUP");
    w.signal("HUP");
    w.expect("the new host's AUD", LIMIT, |_| holds(&sb, &aud(1)));
    assert!(
        w.stderr().contains("configuration reloaded"),
        "{}",
        w.stderr()
    );

    // A broken .env: the reload fails, the loop goes on with the previous configuration.
    sb.write_env(&format!(
        "AUDSYNC_DOMAIN={WEB}\nAUDSYNC_KEY=1X\nCLOUDFLARE_AUD_TAG={}\n",
        aud(1)
    ));
    w.signal("HUP");
    w.expect("the failed reload", LIMIT, |w| {
        w.stderr().contains("configuration reload failed")
    });
    // Names the setting, never its value (free text may be a secret pasted into the wrong place).
    assert!(
        w.stderr().contains("--key is not a variable name") && !w.stderr().contains("1X"),
        "names the setting, not the value: {}",
        w.stderr()
    );
    cf.set_aud(0, &aud(4));
    w.expect("the next change applied", LIMIT, |_| holds(&sb, &aud(4)));
    assert_eq!(
        sb.read_env(),
        format!(
            "AUDSYNC_DOMAIN={WEB}\nAUDSYNC_KEY=1X\nCLOUDFLARE_AUD_TAG={}\n",
            aud(4)
        )
    );
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0);
}

#[test]
fn watch_reads_the_config_file_and_sighup_rereads_it() {
    let (cf, mut sb) = setup("");
    sb.unset("CLOUDFLARE_API_URL");
    let one = format!(
        "[cloudflare]\napi_url = \"{}\"\n\n[[binding]]\ndomain = \"{HOST}\"\nkey = \"API_AUD\"\nsinks = [{{ env = \"stack.env\" }}]\n",
        cf.url()
    );
    std::fs::write(sb.path("audsync.toml"), &one).unwrap();
    std::fs::write(sb.path("stack.env"), "API_AUD=old\nWEB_AUD=old\n").unwrap();
    let stack = || std::fs::read_to_string(sb.path("stack.env")).unwrap_or_default();
    let mut w = Watcher::start(&sb, &fast(&[]));
    w.expect("the first binding applied", LIMIT, |_| {
        stack().contains(&format!("API_AUD={}", aud(2)))
    });
    assert!(stack().contains("WEB_AUD=old"));
    // A second binding: applied after SIGHUP only.
    let two = format!(
        "{one}\n[[binding]]\ndomain = \"{WEB}\"\nkey = \"WEB_AUD\"\nsinks = [{{ env = \"stack.env\" }}]\n"
    );
    std::fs::write(sb.path("audsync.toml"), two).unwrap();
    let n = cf.requests().len();
    w.expect("two more passes", LIMIT, |_| cf.requests().len() >= n + 2);
    assert!(stack().contains("WEB_AUD=old"), "no reload without SIGHUP");
    w.signal("HUP");
    w.expect("the second binding applied", LIMIT, |_| {
        stack().contains(&format!("WEB_AUD={}", aud(1)))
    });
    // A file that does not validate: the reload fails and names the line, the loop goes on.
    std::fs::write(sb.path("audsync.toml"), format!("{one}\nbogus = 1\n")).unwrap();
    w.signal("HUP");
    w.expect("the failed reload", LIMIT, |w| {
        w.stderr().contains("configuration reload failed")
    });
    assert!(
        w.stderr()
            .contains("audsync.toml:9:1: unknown binding key `bogus`"),
        "{}",
        w.stderr()
    );
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0);
}

#[test]
fn invalid_configuration_at_startup_exits_2_with_the_fix() {
    let (_cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    let cases: [(&[&str], &str); 4] = [
        (&["--domain", HOST, "--interval", "0s"], "--interval"),
        (&["--domain", HOST, "--jitter", "80%"], "0% to 50%"),
        (&["--interval", "1m"], "--domain"),
        (&["--domain", HOST, "--interval", "soon"], "5m"),
    ];
    for (args, needle) in cases {
        let mut c = sb.cmd();
        c.arg("watch").args(args);
        let r = run(&mut c);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {r:?}");
    }
    // An address already taken: a failure (exit 1), not a configuration error, so that a
    // service manager restarts the agent once the port is free (the unit's
    // RestartPreventExitStatus=2 stops retries only for real configuration errors).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut c = sb.cmd();
    c.args([
        "watch",
        "--domain",
        HOST,
        "--restart",
        "none",
        "--listen",
        &addr,
    ]);
    let r = run(&mut c);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--listen"), "{r:?}");
}

#[test]
fn secrets_never_reach_the_logs_at_any_verbosity() {
    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    cf.fault(Fault::Status500);
    let mut w = Watcher::start(&sb, &fast(&["--domain", HOST, "-vvv", "--output", "json"]));
    w.expect("a change", LIMIT, |_| holds(&sb, &aud(2)));
    let n = cf.requests().len();
    w.expect("another pass", LIMIT, |_| cf.requests().len() > n);
    w.signal("HUP");
    w.expect("a reload", LIMIT, |w| {
        w.stderr().contains("configuration reloaded")
    });
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0);
    let all = format!("{}\n{}", w.stderr(), w.stdout_lines().join("\n"));
    assert!(all.contains("cloudflare request"), "trace logging was on");
    assert!(!all.contains(TOKEN), "the token leaked");
}

// ---- /healthz and /metrics over real HTTP ----

/// GET over a raw HTTP/1.1 connection: (status, content type, body).
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    http_get_with(addr, path, "")
}

/// GET with extra header lines (each ending in `\r\n`): (status, content type, body).
pub(crate) fn http_get_with(addr: &str, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    assert!(
        !header("transfer-encoding").contains("chunked"),
        "expected a sized body: {head}"
    );
    (status, header("content-type"), body.to_string())
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || (colon && f == ':'))
        && c.all(|f| f.is_ascii_alphanumeric() || f == '_' || (colon && f == ':'))
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// A strict reader of the OpenMetrics / Prometheus text exposition: every line must be a
/// well-formed HELP/TYPE/UNIT line, a sample of a declared family, or the final `# EOF`.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    if lines.last() != Some(&"# EOF") || !text.ends_with('\n') {
        return Err("the exposition must end with `# EOF` and a newline".into());
    }
    for (i, line) in lines.iter().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if *line == "# EOF" {
            if i + 1 != lines.len() {
                return Err(bad("# EOF before the end"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (parts.next(), parts.next(), parts.next());
            let name = name
                .filter(|n| is_name(n, true))
                .ok_or_else(|| bad("metric name"))?;
            match (kw, arg) {
                (Some("TYPE"), Some(t)) => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                        "gaugehistogram",
                        "unknown",
                    ];
                    if !known.contains(&t) {
                        return Err(bad("unknown type"));
                    }
                    if types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(bad("TYPE declared twice"));
                    }
                }
                (Some("HELP"), Some(_)) | (Some("UNIT"), Some(_)) => {}
                _ => return Err(bad("comment")),
            }
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(_) => {
                let close = line.rfind('}').ok_or_else(|| bad("unclosed labels"))?;
                (&line[..close + 1], line[close + 1..].trim_start())
            }
            None => line.split_once(' ').ok_or_else(|| bad("no value"))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(&l[..l.len() - 1]).map_err(|e| bad(&e))?),
            None => (series, BTreeMap::new()),
        };
        if !is_name(name, true) {
            return Err(bad("metric name"));
        }
        let mut vals = rest.split(' ');
        let value = vals
            .next()
            .and_then(parse_value)
            .ok_or_else(|| bad("value"))?;
        if let Some(ts) = vals.next()
            && ts.parse::<f64>().is_err()
        {
            return Err(bad("timestamp"));
        }
        if vals.next().is_some() {
            return Err(bad("trailing text"));
        }
        let family = [
            "_total", "_bucket", "_count", "_sum", "_created", "_info", "",
        ]
        .iter()
        .find_map(|suf| {
            let base = name.strip_suffix(suf)?;
            types.contains_key(base).then(|| base.to_string())
        })
        .ok_or_else(|| bad("sample of an undeclared family"))?;
        if types[&family] == "counter" && !name.ends_with("_total") && !name.ends_with("_created") {
            return Err(bad("counter sample without _total"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if !is_name(&key, false) {
            return Err(format!("label name {key:?}"));
        }
        if chars.next() != Some('"') {
            return Err("label value must be quoted".into());
        }
        let mut val = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => val.push('\\'),
                    Some('"') => val.push('"'),
                    Some('n') => val.push('\n'),
                    _ => return Err("bad escape".into()),
                },
                Some('"') => break,
                Some(c) => val.push(c),
                None => return Err("unterminated label value".into()),
            }
        }
        if out.insert(key, val).is_some() {
            return Err("label repeated".into());
        }
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => return Err(format!("unexpected {c:?} after a label")),
        }
    }
    Ok(out)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {samples:#?}"))
        .value
}

fn scrape(addr: &str) -> Vec<Sample> {
    let (code, ctype, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

#[test]
fn exposition_checker_rejects_malformed_text() {
    assert!(parse_exposition("# TYPE a counter\na_total 1\n# EOF\n").is_ok());
    for bad in [
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\na_total one\n# EOF\n",
        "a_total 1\n# EOF\n",
        "# TYPE a counter\na_total{x=\"1} 1\n# EOF\n",
        "# TYPE a counter\na_total{x=1} 1\n# EOF\n",
        "# TYPE a counter\na 1\n# EOF\n",
        "# TYPE a gauge\na 1 2 3\n# EOF\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn healthz_and_metrics_are_served_and_counters_move() {
    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    // The token was revoked: every pass fails at the source (403, not retried).
    cf.with(|s| s.token = Some("some-other-token".into()));
    let mut w = Watcher::start(
        &sb,
        &fast(&[
            "--domain",
            HOST,
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--unhealthy-after",
            "0s",
        ]),
    );
    let mut addr = String::new();
    w.expect("the listening address", LIMIT, |w| {
        w.json_logs().iter().any(|l| {
            if message(l) == "serving /healthz and /metrics" {
                addr = l["fields"]["addr"].as_str().unwrap_or_default().to_string();
                true
            } else {
                false
            }
        })
    });
    w.expect("two failed passes", LIMIT, |_| {
        value(
            &scrape(&addr),
            "audsync_pass_failures_total",
            &[("stage", "source")],
        ) >= 2.0
    });
    let (code, ctype, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "failing", "{h}");
    assert_eq!(h["failed_stage"], "source", "{h}");
    assert!(h["consecutive_failures"].as_u64().unwrap() >= 2, "{h}");
    assert!(
        !body.contains(TOKEN) && body.len() < 300,
        "short, no secrets: {body}"
    );
    let m = scrape(&addr);
    assert_eq!(
        value(&m, "audsync_passes_total", &[("status", "written")]),
        0.0
    );
    assert_eq!(
        value(&m, "audsync_last_success_timestamp_seconds", &[]),
        0.0
    );
    assert!(value(&m, "audsync_consecutive_failures", &[]) >= 2.0);

    // The token is fixed: the next pass succeeds and applies the change.
    cf.with(|s| s.token = Some(TOKEN.into()));
    w.expect("a healthy answer", LIMIT, |_| {
        http_get(&addr, "/healthz").0 == 200
    });
    w.expect("an in-sync pass", LIMIT, |_| {
        value(
            &scrape(&addr),
            "audsync_passes_total",
            &[("status", "in_sync")],
        ) >= 1.0
    });
    let (_, _, body) = http_get(&addr, "/healthz");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["consecutive_failures"], 0, "{h}");

    let m = scrape(&addr);
    let failed = value(&m, "audsync_passes_total", &[("status", "failed")]);
    let all: f64 = m
        .iter()
        .filter(|s| s.name == "audsync_passes_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(
        value(&m, "audsync_passes_total", &[("status", "written")]),
        1.0
    );
    assert_eq!(value(&m, "audsync_aud_changes_total", &[]), 1.0);
    assert_eq!(
        failed,
        value(&m, "audsync_pass_failures_total", &[("stage", "source")])
    );
    assert_eq!(
        value(&m, "audsync_pass_failures_total", &[("stage", "sink")]),
        0.0
    );
    assert_eq!(
        value(&m, "audsync_pass_failures_total", &[("stage", "target")]),
        0.0
    );
    assert_eq!(value(&m, "audsync_consecutive_failures", &[]), 0.0);
    assert_eq!(value(&m, "audsync_rollbacks_total", &[]), 0.0);
    assert_eq!(
        value(
            &m,
            "audsync_container_actions_total",
            &[("action", "restart"), ("result", "done")]
        ),
        0.0
    );
    let observed = value(&m, "audsync_pass_duration_seconds_count", &[]);
    assert_eq!(all, observed, "one duration per pass");
    assert!(
        value(
            &m,
            "audsync_pass_duration_seconds_bucket",
            &[("le", "+Inf")]
        ) >= observed
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for g in [
        "audsync_last_success_timestamp_seconds",
        "audsync_last_change_timestamp_seconds",
    ] {
        let t = value(&m, g, &[]);
        assert!(t > now - 120.0 && t <= now + 1.0, "{g} = {t}");
    }
    assert_eq!(
        value(
            &m,
            "audsync_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(http_get(&addr, "/nope").0, 404);

    // A reload is counted.
    w.signal("HUP");
    w.expect("the reload counted", LIMIT, |_| {
        value(
            &scrape(&addr),
            "audsync_config_reloads_total",
            &[("result", "ok")],
        ) == 1.0
    });
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0);
}

// ---- completions and man ----

/// `audsync completions zsh | head -1`, `audsync man | head`: a reader that closed the pipe is
/// no panic and no error.
#[test]
fn completions_and_man_into_a_closed_pipe_do_not_panic() {
    let sb = Sandbox::new();
    for args in [
        &["completions", "zsh"][..],
        &["completions", "bash"],
        &["man"],
    ] {
        // The read end is closed before the child starts: its first write gets EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(assert_cmd::cargo::cargo_bin("audsync"))
            .args(args)
            .env_clear()
            .current_dir(sb.dir())
            .stdout(Stdio::from(writer))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn completions_and_man_page_mention_the_subcommands() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let r = run(sb.cmd().args(["completions", shell]));
        assert_eq!(r.code, 0, "{shell}: {r:?}");
        for word in ["sync", "watch", "get", "--interval", "--domain"] {
            assert!(r.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    let r = run(sb.cmd().args(["completions", "tcsh"]));
    assert_eq!(r.code, 2, "{r:?}");
    let r = run(sb.cmd().arg("man"));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(".ie") || r.stdout.contains(".TH audsync"),
        "{}",
        r.stdout
    );
    for word in ["audsync\\-watch", "audsync\\-sync", "completions"] {
        assert!(r.stdout.contains(word), "man lacks {word}:\n{}", r.stdout);
    }
    // One page per command, so the references above resolve.
    let r = run(sb.cmd().args(["man", "--out-dir", "man1"]));
    assert_eq!(r.code, 0, "{r:?}");
    let watch = std::fs::read_to_string(sb.path("man1/audsync-watch.1")).unwrap();
    assert!(watch.contains(".TH audsync-watch 1"), "{watch}");
    assert!(
        watch.contains("\\-\\-interval") && watch.contains("\\-\\-jitter"),
        "{watch}"
    );
    for page in [
        "audsync.1",
        "audsync-sync.1",
        "audsync-get.1",
        "audsync-completions.1",
        "audsync-man.1",
    ] {
        assert!(sb.path("man1").join(page).exists(), "{page}");
    }
}

// ---- packaging ----

/// The systemd units, compose snippet, Dockerfiles, cron line and hook in scripts/ validate,
/// and every audsync command line in them parses with this binary.
#[test]
fn packaging_files_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/check-packaging.sh"))
        .env("AUDSYNC_BIN", assert_cmd::cargo::cargo_bin("audsync"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok: all packaging files"), "{text}");
}

// ---- the real Docker engine (#[ignore]d like the other Docker tests) ----

struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// A changed AUD restarts the container once, and /metrics counts the restart.
#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn restarts_are_counted_in_the_metrics() {
    crate::require_docker!(not_podman: "the watch loop is not checked on Podman");
    let image = std::env::var("AUDSYNC_TEST_IMAGE").unwrap_or("audsync-test/busybox:1".into());
    let name = format!(
        "audsync-watch-test-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    );
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name, &image, "sleep", "3600"])
        .output()
        .unwrap();
    let _guard = Container(name.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = |n: &str| {
        let o = Command::new("docker")
            .args(["inspect", "-f", "{{.State.StartedAt}}", n])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let first_start = started(&name);

    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    let mut w = Watcher::start(
        &sb,
        &[
            "--domain",
            HOST,
            "--container",
            &name,
            "--restart",
            "restart",
            "--interval",
            "200ms",
            "--jitter",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
    );
    let mut addr = String::new();
    w.expect("the listening address", LIMIT, |w| {
        w.json_logs().iter().any(|l| {
            let hit = message(l) == "serving /healthz and /metrics";
            if hit {
                addr = l["fields"]["addr"].as_str().unwrap_or_default().to_string();
            }
            hit
        })
    });
    let restarts = |addr: &str| {
        value(
            &scrape(addr),
            "audsync_container_actions_total",
            &[("action", "restart"), ("result", "done")],
        )
    };
    w.expect("the restart counted", LIMIT, |_| restarts(&addr) == 1.0);
    let n = cf.requests().len();
    w.expect("three more passes", LIMIT, |_| cf.requests().len() >= n + 3);
    let m = scrape(&addr);
    assert_eq!(restarts(&addr), 1.0, "restarted once, not on every pass");
    assert_eq!(
        value(
            &m,
            "audsync_container_actions_total",
            &[("action", "restart"), ("result", "failed")]
        ),
        0.0
    );
    assert_ne!(
        started(&name),
        first_start,
        "the container really restarted"
    );
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0);
}

// ---- failures by stage, the lock, and the health grace ----

/// Start a watcher serving /healthz and /metrics on a free port (JSON logs); returns it with
/// the address it serves on.
pub(crate) fn start_listening(sb: &Sandbox, args: &[&str]) -> (Watcher, String) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--listen", "127.0.0.1:0", "--log-format", "json"]);
    let mut w = Watcher::start(sb, &all);
    let mut addr = String::new();
    w.expect("the listening address", LIMIT, |w| {
        w.json_logs().iter().any(|l| {
            let hit = message(l) == "serving /healthz and /metrics";
            if hit {
                addr = l["fields"]["addr"].as_str().unwrap_or_default().to_string();
            }
            hit
        })
    });
    (w, addr)
}

pub(crate) fn metric(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(addr), name, labels)
}

fn failures_at(addr: &str, stage: &str) -> f64 {
    metric(addr, "audsync_pass_failures_total", &[("stage", stage)])
}

/// GET /healthz: (status code, JSON body).
pub(crate) fn health(addr: &str) -> (u16, Value) {
    let (code, _, body) = http_get(addr, "/healthz");
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code, v)
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The failure counters of every stage but `except` are still 0.
fn assert_other_stages_zero(addr: &str, except: &str) {
    let m = scrape(addr);
    for stage in ["lock", "source", "sink", "target"] {
        if stage != except {
            assert_eq!(
                value(&m, "audsync_pass_failures_total", &[("stage", stage)]),
                0.0,
                "stage {stage}"
            );
        }
    }
}

#[test]
fn a_sink_failure_is_counted_at_the_sink_stage_and_survived() {
    let (_cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    // Read-only: the env sink refuses it (even for root, which could write it anyway).
    set_mode(&sb.env_path(), 0o444);
    let (mut w, addr) = start_listening(&sb, &fast(&["--domain", HOST]));
    w.expect("a failure at the sink stage", LIMIT, |_| {
        failures_at(&addr, "sink") >= 1.0
    });
    assert_other_stages_zero(&addr, "sink");
    let (_, h) = health(&addr);
    assert_eq!(h["failed_stage"], "sink", "{h}");
    assert_eq!(metric(&addr, "audsync_aud_changes_total", &[]), 0.0);
    assert!(holds(&sb, "old"), "nothing written");
    assert!(
        w.json_logs().iter().any(|l| message(l) == "pass failed"
            && l["fields"]["stage"] == "sink"
            && l["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("read-only"))),
        "{}",
        w.stderr()
    );

    // Writable again: the loop is still there and the next pass writes the value.
    set_mode(&sb.env_path(), 0o644);
    w.expect("the AUD written", Duration::from_secs(90), |_| {
        holds(&sb, &aud(2))
    });
    w.expect("the change counted", LIMIT, |_| {
        metric(&addr, "audsync_passes_total", &[("status", "written")]) == 1.0
    });
    assert_eq!(metric(&addr, "audsync_consecutive_failures", &[]), 0.0);
    assert_eq!(health(&addr).0, 200);
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

#[test]
fn a_target_failure_is_counted_at_the_target_stage() {
    let (_cf, mut sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    sb.var("DOCKER_HOST", "unix:///nonexistent.sock");
    let (mut w, addr) = start_listening(
        &sb,
        &[
            "--domain",
            HOST,
            "--restart",
            "restart",
            "--interval",
            "200ms",
            "--jitter",
            "0",
        ],
    );
    // The value is written, the restart cannot be done; the next pass retries the owed restart.
    w.expect("two failures at the target stage", LIMIT, |_| {
        failures_at(&addr, "target") >= 2.0
    });
    assert_other_stages_zero(&addr, "target");
    assert!(holds(&sb, &aud(2)), "the sink was written");
    let m = scrape(&addr);
    assert_eq!(value(&m, "audsync_aud_changes_total", &[]), 1.0);
    let actions = |action: &str, result: &str| {
        value(
            &m,
            "audsync_container_actions_total",
            &[("action", action), ("result", result)],
        )
    };
    assert!(actions("restart", "failed") >= 2.0, "{m:?}");
    assert_eq!(actions("restart", "done"), 0.0);
    assert_eq!(actions("recreate", "failed"), 0.0);
    assert_eq!(
        value(&m, "audsync_rollbacks_total", &[]),
        0.0,
        "a failed restart is no rollback"
    );
    let (_, h) = health(&addr);
    assert_eq!(h["failed_stage"], "target", "{h}");
    assert!(w.running(), "the loop survives");
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

#[test]
fn a_held_lock_fails_the_pass_at_the_lock_stage_until_it_is_released() {
    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    // Another run (cron, a deploy hook) holds the lock next to the .env.
    let lock = std::fs::File::create(sb.flag_lock(".env")).unwrap();
    lock.lock().unwrap();
    let (mut w, addr) = start_listening(&sb, &fast(&["--domain", HOST, "--lock-timeout", "200ms"]));
    w.expect("two failures at the lock stage", LIMIT, |_| {
        failures_at(&addr, "lock") >= 2.0
    });
    assert!(w.running(), "the loop survives a held lock");
    assert_other_stages_zero(&addr, "lock");
    let (_, h) = health(&addr);
    assert_eq!(h["failed_stage"], "lock", "{h}");
    assert!(
        cf.requests().is_empty(),
        "a pass without the lock asks nothing"
    );
    assert!(holds(&sb, "old"), "nothing written without the lock");
    assert!(
        w.json_logs().iter().any(|l| message(l) == "pass failed"
            && l["fields"]["stage"] == "lock"
            && l["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("holds the lock"))),
        "{}",
        w.stderr()
    );

    lock.unlock().unwrap();
    drop(lock);
    w.expect(
        "the AUD written once the lock is free",
        Duration::from_secs(90),
        |_| holds(&sb, &aud(2)),
    );
    w.expect("the change counted", LIMIT, |_| {
        metric(&addr, "audsync_passes_total", &[("status", "written")]) == 1.0
    });
    assert_eq!(metric(&addr, "audsync_consecutive_failures", &[]), 0.0);
    let (code, h) = health(&addr);
    assert_eq!((code, &h["status"]), (200, &Value::from("ok")), "{h}");
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

#[test]
fn healthz_stays_200_while_failures_are_younger_than_unhealthy_after() {
    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    cf.with(|s| s.token = Some("some-other-token".into()));
    let (mut w, addr) = start_listening(&sb, &fast(&["--domain", HOST, "--unhealthy-after", "1h"]));
    // The third failed pass ends after at least 200ms + 400ms of backoff: past the default
    // grace of 3 x 200ms, so only --unhealthy-after keeps the answer at 200.
    w.expect("three failed passes", LIMIT, |_| {
        metric(&addr, "audsync_consecutive_failures", &[]) >= 3.0
    });
    let (code, h) = health(&addr);
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["failed_stage"], "source", "{h}");
    assert!(h["consecutive_failures"].as_u64().unwrap() >= 3, "{h}");
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

#[test]
fn healthz_turns_503_after_three_intervals_of_failures_by_default() {
    let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    cf.with(|s| s.token = Some("some-other-token".into()));
    // 1s rather than less, so the first failed pass lands well inside the 3s grace even on a
    // loaded machine.
    let interval = Duration::from_secs(1);
    let spawned = Instant::now();
    let (mut w, addr) = start_listening(
        &sb,
        &[
            "--domain",
            HOST,
            "--restart",
            "none",
            "--interval",
            "1s",
            "--jitter",
            "0",
        ],
    );
    let mut answers: Vec<(Duration, u16, Value)> = Vec::new();
    w.expect("a 503", Duration::from_secs(60), |_| {
        let (code, h) = health(&addr);
        answers.push((spawned.elapsed(), code, h));
        code == 503
    });
    let (at, _, last) = answers.last().unwrap();
    assert_eq!(last["status"], "failing", "{last}");
    assert_eq!(last["failed_stage"], "source", "{last}");
    // The watcher's clock started after ours: it cannot be 503 before 3 x interval on ours.
    assert!(*at >= interval * 3, "503 after only {at:?}: {answers:?}");
    let before = &answers[..answers.len() - 1];
    assert!(before.iter().all(|(_, c, _)| *c == 200), "{answers:?}");
    assert!(
        before
            .iter()
            .any(|(_, _, h)| h["status"] == "degraded"
                && h["consecutive_failures"].as_u64() >= Some(1)),
        "a failed pass within the grace answers 200: {answers:?}"
    );
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

/// GET `path`, giving up after `limit`: an error rather than a hang when nothing answers.
fn get_within(addr: &str, path: &str, limit: Duration) -> Result<(u16, String), String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).unwrap();
    s.set_write_timeout(Some(limit)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("no answer to GET {path} within {limit:?}: {e}"))?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("not an HTTP answer")?;
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok());
    Ok((status.ok_or("no status")?, body.to_string()))
}

#[test]
fn healthz_and_metrics_answer_while_a_pass_is_held_inside_its_env_write() {
    let (_cf, mut sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    // The debug-build hook: the pass's .env write blocks reading this FIFO until we write it.
    let fifo = sb.path("hold-write.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let held = sb.path("hold-write.fifo.held");
    sb.var("AUDSYNC_TEST_HOLD_WRITE", fifo.to_str().unwrap());
    let (mut w, addr) = start_listening(&sb, &fast(&["--domain", HOST]));
    w.expect("the pass held inside its .env write", LIMIT, |_| {
        held.exists()
    });

    // The pass is blocked in a file call until we release it: the server still answers.
    let limit = Duration::from_secs(5);
    let answer = |path: &str| {
        get_within(&addr, path, limit).unwrap_or_else(|e| {
            panic!(
                "{e}: the pass blocks the runtime while it writes\n{}",
                w.stderr()
            )
        })
    };
    let (code, body) = answer("/healthz");
    assert_eq!(code, 200, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "starting", "no pass has ended yet: {h}");
    let (code, body) = answer("/metrics");
    assert_eq!(code, 200, "{body}");
    let m = parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert_eq!(
        value(&m, "audsync_passes_total", &[("status", "written")]),
        0.0
    );
    assert!(holds(&sb, "old"), "still held before the write");

    // Release it (opening the FIFO meets the hook's open; closing it ends its read); no later
    // pass writes, but none could be held again either once the FIFO is gone.
    std::fs::write(&fifo, "go").unwrap();
    std::fs::remove_file(&fifo).unwrap();
    w.expect("the AUD written once released", LIMIT, |_| {
        holds(&sb, &aud(2))
    });
    w.expect("the pass counted", LIMIT, |_| {
        metric(&addr, "audsync_passes_total", &[("status", "written")]) == 1.0
    });
    assert_eq!(health(&addr).1["status"], "ok");
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

// ---- GET /status and the per-binding, per-target metrics (a command target: no engine) ----

const TRIGGER: &str = "status-trigger-token-0123456789";

/// A `.env` sink and a command target that records its runs; no engine anywhere.
fn status_setup() -> (FakeCloudflare, Sandbox, String) {
    let (cf, mut sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    sb.var("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let script = sb.path("reload.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho run >> {}\n", sb.path("runs").display()),
    )
    .unwrap();
    set_mode(&script, 0o755);
    // Unguarded readers see a command by its program and a hash of its argv, never the argv
    // (which may carry a credential): FNV-1a of the argv as the report quotes it.
    let argv = script.display().to_string();
    let hash = argv.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let target = format!("command reload.sh #{:08x}", hash >> 32);
    (cf, sb, target)
}

fn status_args(script: &str) -> Vec<&str> {
    vec![
        "--domain",
        HOST,
        "--exec",
        script,
        "--interval",
        "1h",
        "--jitter",
        "0",
    ]
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The document with every value replaced by its JSON type, arrays by their first element:
/// the schema, for a snapshot that changes only when the schema does.
fn shape(v: &Value) -> Value {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(a) => Value::Array(a.iter().take(1).map(shape).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}

/// `GET /status` over HTTP, behind the trigger token: every binding with the prefix of its
/// AUD (never the value), its application, last check and change, no error, its sink's and
/// target's state, and the next pass; no secret anywhere; refused without the token.
#[test]
fn status_shows_every_binding_behind_the_trigger_token_and_no_secret() {
    let (_cf, mut sb, target) = status_setup();
    sb.var("AUDSYNC_TRIGGER_TOKEN", TRIGGER);
    let script = sb.path("reload.sh").display().to_string();
    let (mut w, addr) = start_listening(&sb, &status_args(&script));
    let bearer = format!("Authorization: Bearer {TRIGGER}\r\n");
    let mut doc = Value::Null;
    w.expect("the first pass in /status", LIMIT, |_| {
        let (code, _, body) = http_get_with(&addr, "/status", &bearer);
        doc = serde_json::from_str(&body).unwrap_or(Value::Null);
        code == 200 && doc["bindings"][0]["status"] == "changed" && !doc["next_pass"].is_null()
    });
    assert!(holds(&sb, &aud(2)), "{}", sb.read_env());
    let (code, ctype, body) = http_get_with(&addr, "/status", &bearer);
    assert_eq!(code, 200, "{body}");
    assert!(ctype.starts_with("application/json"), "{ctype}");

    assert_eq!(doc["schema"], 1, "{doc}");
    let now = unix_now();
    let next = doc["next_pass"].as_u64().unwrap();
    assert!(
        next > now + 3000 && next <= now + 3601,
        "an hour ahead: {doc}"
    );
    let bindings = doc["bindings"].as_array().unwrap();
    assert_eq!(bindings.len(), 1, "{doc}");
    let b = &bindings[0];
    assert_eq!(b["id"], HOST, "{doc}");
    assert_eq!(b["key"], "CLOUDFLARE_AUD_TAG", "{doc}");
    assert_eq!(b["aud_prefix"], aud(2)[..8], "{doc}");
    assert_eq!(b["application"], "App 2", "{doc}");
    for t in ["last_check", "last_change"] {
        let t = b[t].as_u64().unwrap_or_else(|| panic!("{t}: {doc}"));
        assert!(t + 120 > now && t <= now + 1, "{doc}");
    }
    assert!(b["last_error"].is_null(), "{doc}");
    assert!(
        b.get("origin").is_none(),
        "a configured binding has no origin: {doc}"
    );
    // The sink as configured (the default `.env`, relative to the working directory).
    assert_eq!(
        b["sinks"],
        serde_json::json!([{"name": "env .env", "state": "written"}]),
        "{doc}"
    );
    assert_eq!(
        b["targets"],
        serde_json::json!([{"name": target, "state": "done"}]),
        "{doc}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.path("runs")).unwrap(),
        "run\n",
        "the command target ran once"
    );
    // Only the prefix of the AUD; neither token.
    for secret in [aud(2).as_str(), TOKEN, TRIGGER] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    insta::assert_snapshot!(
        "status_schema",
        serde_json::to_string_pretty(&shape(&doc)).unwrap()
    );

    // Without the token, or with another: refused, and nothing of the document shown.
    let other = "Authorization: Bearer status-trigger-token-0123456780\r\n";
    for headers in ["", other, "Authorization: Basic c3RhdHVz\r\n"] {
        let (code, _, body) = http_get_with(&addr, "/status", headers);
        assert_eq!(code, 401, "{headers:?}: {body}");
        assert!(
            !body.contains(HOST) && !body.contains(&aud(2)[..8]),
            "{body}"
        );
    }
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

/// An Infisical sink: `/status` names it and its state, and no secret of Infisical (the
/// client secret, the access tokens, another secret of the folder) nor Cloudflare's token.
#[test]
fn status_of_an_infisical_sink_shows_no_infisical_secret() {
    use crate::support::infisical::{CLIENT_ID, CLIENT_SECRET, FakeInfisical, PROJECT};
    let (_cf, mut sb, target) = status_setup();
    let inf = FakeInfisical::start();
    inf.put("dev", "/", "CLOUDFLARE_AUD_TAG", "old", 1);
    inf.put("dev", "/", "DB_PASSWORD", "db-password-SECRET-5150", 1);
    sb.var("INFISICAL_HOST", &inf.url())
        .var("INFISICAL_PROJECT_ID", PROJECT)
        .var("INFISICAL_CLIENT_ID", CLIENT_ID)
        .var("INFISICAL_CLIENT_SECRET", CLIENT_SECRET);
    let script = sb.path("reload.sh").display().to_string();
    let mut args = status_args(&script);
    args.extend(["--sink", "infisical"]);
    let (mut w, addr) = start_listening(&sb, &args);
    let mut body = String::new();
    w.expect("the written Infisical sink in /status", LIMIT, |_| {
        body = http_get(&addr, "/status").2;
        body.contains(r#""state":"written""#)
    });
    assert_eq!(
        inf.secret("dev", "/", "CLOUDFLARE_AUD_TAG").map(|s| s.0),
        Some(aud(2))
    );
    let doc: Value = serde_json::from_str(&body).unwrap();
    let b = &doc["bindings"][0];
    assert_eq!(b["sinks"].as_array().map(Vec::len), Some(1), "{doc}");
    assert!(
        b["sinks"][0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("infisical ") && n.contains(PROJECT)),
        "{doc}"
    );
    assert_eq!(b["targets"][0]["name"], target.as_str(), "{doc}");
    assert!(!inf.writes().is_empty());
    for secret in ["SECRET", CLIENT_SECRET, TOKEN, aud(2).as_str()] {
        assert!(!body.contains(secret), "{secret} leaked: {body}");
    }
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

/// After a pass that changed something: the per-binding and per-target series, labelled
/// `binding` / `target` (and nothing else but `result` and `le`), with the apply duration of
/// the command target; `/status` answers without a token when none is configured.
#[test]
fn per_binding_and_per_target_metrics_follow_a_change() {
    let (_cf, sb, target) = status_setup();
    let script = sb.path("reload.sh").display().to_string();
    let (mut w, addr) = start_listening(&sb, &status_args(&script));
    // `changed`: written, and the command target ran.
    w.expect("a pass that changed the value", LIMIT, |_| {
        metric(&addr, "audsync_passes_total", &[("status", "changed")]) == 1.0
    });
    let m = scrape(&addr);
    let b = [("binding", HOST)];
    let t = [("target", target.as_str())];
    let bt = [("binding", HOST), ("target", target.as_str())];
    assert_eq!(value(&m, "audsync_binding_changes_total", &b), 1.0);
    assert_eq!(value(&m, "audsync_binding_failures_total", &b), 0.0);
    assert_eq!(
        value(
            &m,
            "audsync_target_actions_total",
            &[t[0], ("result", "done")]
        ),
        1.0
    );
    let now = unix_now() as f64;
    for (name, labels) in [
        ("audsync_binding_last_success_timestamp_seconds", &b),
        ("audsync_target_last_success_timestamp_seconds", &t),
    ] {
        let at = value(&m, name, labels);
        assert!(at > now - 120.0 && at <= now + 1.0, "{name} = {at}");
    }
    assert_eq!(
        value(&m, "audsync_target_apply_duration_seconds_count", &bt),
        1.0
    );
    let sum = value(&m, "audsync_target_apply_duration_seconds_sum", &bt);
    assert!(sum > 0.0, "{sum}");
    assert_eq!(
        value(
            &m,
            "audsync_target_apply_duration_seconds_bucket",
            &[bt[0], bt[1], ("le", "+Inf")]
        ),
        1.0
    );
    // Bounded label sets: only the names of bindings and targets, and fixed words.
    for s in m
        .iter()
        .filter(|s| s.name.starts_with("audsync_binding_") || s.name.starts_with("audsync_target_"))
    {
        for (k, v) in &s.labels {
            let ok = match k.as_str() {
                "binding" => v == HOST,
                "target" => *v == target,
                "result" => ["done", "failed"].contains(&v.as_str()),
                "le" => s.name.ends_with("_bucket"),
                _ => false,
            };
            assert!(ok, "{} {k}={v:?}", s.name);
        }
    }
    let (code, _, body) = http_get(&addr, "/status");
    assert_eq!(code, 200, "no token configured: /status is open: {body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["bindings"][0]["targets"][0]["state"], "done", "{doc}");
    w.signal("TERM");
    assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
}

// ---- recreates, rollbacks and SIGTERM on the real Docker engine (gated) ----
// ---- recreates, rollbacks and SIGTERM on the real Docker engine (#[ignore]d) ----

mod engine {
    use std::time::Duration;

    use super::{HOST, LIMIT, Watcher, holds, message, metric, setup, start_listening};
    use crate::require_docker;
    use crate::support::cloudflare::aud;
    use crate::support::docker::{Docker, env_of, id_of, image, inspect, wait_healthy};

    const KEY: &str = "CLOUDFLARE_AUD_TAG";
    /// Leaves at once on SIGTERM, so the old container stops quickly.
    const IDLE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

    fn recreate_args(container: &str, interval: &'static str) -> Vec<String> {
        [
            "--domain",
            HOST,
            "--container",
            container,
            "--restart",
            "recreate",
            "--settle",
            "1s",
            "--interval",
            interval,
            "--jitter",
            "0",
        ]
        .map(String::from)
        .to_vec()
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    fn actions(addr: &str, action: &str, result: &str) -> f64 {
        metric(
            addr,
            "audsync_container_actions_total",
            &[("action", action), ("result", result)],
        )
    }

    #[test]
    #[ignore = "needs the Docker engine: run scripts/test.sh"]
    fn recreates_are_counted_in_the_metrics() {
        require_docker!(not_podman: "the watch loop is not checked on Podman");
        let d = Docker::new();
        let old = format!("{KEY}=old");
        let c = d.run("lambda", &["-e", &old, &image(), "sh", "-c", IDLE]);
        let (cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
        let args = recreate_args(&c, "200ms");
        let (mut w, addr) = start_listening(&sb, &strs(&args));
        w.expect("the recreate counted", Duration::from_secs(90), |_| {
            actions(&addr, "recreate", "done") >= 1.0
        });
        let n = cf.requests().len();
        w.expect("three more passes", LIMIT, |_| cf.requests().len() >= n + 3);
        assert_eq!(
            actions(&addr, "recreate", "done"),
            1.0,
            "recreated once, not on every pass"
        );
        assert_eq!(actions(&addr, "recreate", "failed"), 0.0);
        assert_eq!(metric(&addr, "audsync_rollbacks_total", &[]), 0.0);
        assert_eq!(
            metric(&addr, "audsync_pass_failures_total", &[("stage", "target")]),
            0.0
        );
        assert_eq!(env_of(&c, KEY), Some(aud(2)));
        assert_eq!(d.containers(), vec![c.clone()], "no leftovers");
        w.signal("TERM");
        assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
    }

    #[test]
    #[ignore = "needs the Docker engine: run scripts/test.sh"]
    fn a_rolled_back_recreate_is_counted_as_a_rollback() {
        require_docker!(not_podman: "the watch loop is not checked on Podman");
        let d = Docker::new();
        let old = format!("{KEY}=old");
        let bad = format!("BAD_AUD={}", aud(2));
        // Healthy with the old value, unhealthy with the one about to arrive.
        let c = d.run(
            "lambda",
            &[
                "-e",
                &old,
                "-e",
                &bad,
                "--health-cmd",
                "[ \"$CLOUDFLARE_AUD_TAG\" != \"$BAD_AUD\" ]",
                "--health-interval",
                "1s",
                "--health-retries",
                "2",
                &image(),
                "sh",
                "-c",
                IDLE,
            ],
        );
        wait_healthy(&c, Duration::from_secs(60));
        let id = id_of(&c);
        let (_cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
        // One pass only: a 1h interval (and backoff) keeps the retry of the owed recreate away.
        let args = recreate_args(&c, "1h");
        let (mut w, addr) = start_listening(&sb, &strs(&args));
        w.expect("the failed pass", Duration::from_secs(120), |_| {
            metric(&addr, "audsync_passes_total", &[("status", "failed")]) >= 1.0
        });
        assert_eq!(metric(&addr, "audsync_rollbacks_total", &[]), 1.0);
        assert_eq!(actions(&addr, "recreate", "failed"), 1.0);
        assert_eq!(actions(&addr, "recreate", "done"), 0.0);
        assert_eq!(
            metric(&addr, "audsync_pass_failures_total", &[("stage", "target")]),
            1.0
        );
        assert!(
            w.json_logs().iter().any(|l| message(l) == "pass failed"
                && l["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("rolled back"))),
            "{}",
            w.stderr()
        );
        // The old container is back under its name; nothing else is left.
        assert_eq!(id_of(&c), id);
        assert_eq!(inspect(&c)["State"]["Running"], true);
        assert_eq!(env_of(&c, KEY).as_deref(), Some("old"));
        assert_eq!(d.containers(), vec![c.clone()]);
        assert!(holds(&sb, &aud(2)), "the sink keeps the new value");
        w.signal("TERM");
        assert_eq!(w.wait_exit(LIMIT), 0, "{}", w.stderr());
    }

    #[test]
    #[ignore = "needs the Docker engine: run scripts/test.sh"]
    fn sigterm_during_a_recreate_exits_only_after_it() {
        require_docker!(not_podman: "the watch loop is not checked on Podman");
        let d = Docker::new();
        let old = format!("{KEY}=old");
        // The first probe runs 3s after the start: the health wait of the recreate takes that.
        let c = d.run(
            "lambda",
            &[
                "-e",
                &old,
                "--health-cmd",
                "true",
                "--health-interval",
                "3s",
                &image(),
                "sh",
                "-c",
                IDLE,
            ],
        );
        wait_healthy(&c, Duration::from_secs(60));
        let id = id_of(&c);
        let (_cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
        let args = recreate_args(&c, "1h");
        let mut w = Watcher::start(&sb, &[strs(&args), vec!["--log-format", "json"]].concat());
        w.expect("the recreate under way", Duration::from_secs(60), |w| {
            w.json_logs()
                .iter()
                .any(|l| message(l) == format!("recreating with {KEY} changed"))
        });
        w.signal("TERM");
        assert_eq!(w.wait_exit(Duration::from_secs(120)), 0, "{}", w.stderr());

        let logs = w.json_logs();
        let at = |m: &str| {
            logs.iter()
                .position(|l| message(l) == m)
                .unwrap_or_else(|| panic!("no {m:?} in\n{}", w.stderr()))
        };
        let term = at("SIGTERM: stopping after the pass in flight");
        let good = at("the new container is good; removing the old one");
        let stopped = at("stopped after the pass in flight");
        assert!(
            term < good && good < stopped,
            "SIGTERM came mid-recreate, the exit after it: {term} {good} {stopped}\n{}",
            w.stderr()
        );
        // The new container runs under the name with the new value; nothing temporary is left.
        assert_ne!(id_of(&c), id, "a new container");
        assert_eq!(env_of(&c, KEY), Some(aud(2)));
        let state = inspect(&c)["State"].clone();
        assert_eq!(state["Running"], true, "{state}");
        assert_eq!(state["Health"]["Status"], "healthy", "{state}");
        let left = d.containers();
        assert_eq!(left, vec![c.clone()], "no -audsync-old-/-audsync-new- left");
        assert!(holds(&sb, &aud(2)));
    }
}
