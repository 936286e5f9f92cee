//! Reliability under faults (issue 13, and the `.env` items of issue 11), through the real
//! binary: odd file types, SIGKILL mid-write, huge answers with a memory bound, a `DOCKER_HOST`
//! that does not parse, a `.env` line that does not parse before a secret, a missing `.env`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::{Run, Sandbox, Server, run};

const HOST: &str = "api.example.com";

fn setup(env: &str) -> (FakeCloudflare, Sandbox) {
    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(env);
    (cf, sb)
}

fn sync(sb: &Sandbox, extra: &[&str]) -> Run {
    let mut c = sb.cmd();
    c.args(["sync", "--domain", HOST, "--restart", "none"])
        .args(extra)
        .timeout(Duration::from_secs(30));
    run(&mut c)
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// The real binary as a plain process (to kill it), with the sandbox's clean environment.
fn spawn(sb: &Sandbox, args: &[&str]) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_audsync"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUDSYNC_LOCK_DIR", sb.locks.path())
        .envs(sb.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(sb.dir())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.spawn().unwrap()
}

#[test]
fn odd_file_types_are_refused_and_nothing_hangs() {
    let env = "CLOUDFLARE_AUD_TAG=old\n";
    // (what, how to set it up, extra args, extra env)
    type Prep = Box<dyn Fn(&Sandbox)>;
    let cases: Vec<(&str, Prep, Vec<&str>)> = vec![
        (
            ".env is a FIFO",
            Box::new(|sb: &Sandbox| {
                std::fs::remove_file(sb.env_path()).unwrap();
                mkfifo(&sb.env_path());
            }),
            vec![],
        ),
        (
            ".env is a symlink to /dev/null",
            Box::new(|sb: &Sandbox| {
                std::fs::remove_file(sb.env_path()).unwrap();
                std::os::unix::fs::symlink("/dev/null", sb.env_path()).unwrap();
            }),
            vec![],
        ),
        (
            "the lock file is a FIFO",
            Box::new(|sb: &Sandbox| mkfifo(&sb.flag_lock(".env"))),
            vec![],
        ),
        (
            "the lock file is a symlink to /dev/null",
            Box::new(|sb: &Sandbox| {
                std::os::unix::fs::symlink("/dev/null", sb.flag_lock(".env")).unwrap()
            }),
            vec![],
        ),
        (
            "the state file is a FIFO",
            Box::new(|sb: &Sandbox| mkfifo(&sb.path("state.fifo"))),
            vec!["--state-file", "state.fifo"],
        ),
    ];
    for (what, prep, extra) in cases {
        let (_cf, sb) = setup(env);
        prep(&sb);
        let t = Instant::now();
        let r = sync(&sb, &extra);
        assert_ne!(r.code, 0, "{what}: {r:?}");
        // Refused: a lock or state path that is a link is never followed at all.
        assert!(
            r.stderr.contains("not a regular file") || r.stderr.contains("is a symlink"),
            "{what}: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what}: took {:?}",
            t.elapsed()
        );
    }
    // A *_FILE secret that is a FIFO or an endless device.
    for target in ["fifo", "/dev/zero"] {
        let (_cf, mut sb) = setup(env);
        if target == "fifo" {
            mkfifo(&sb.path("token"));
        } else {
            std::os::unix::fs::symlink(target, sb.path("token")).unwrap();
        }
        sb.unset("CLOUDFLARE_API_TOKEN");
        let p = sb.path("token").display().to_string();
        sb.var("CLOUDFLARE_API_TOKEN_FILE", &p);
        let t = Instant::now();
        let r = sync(&sb, &[]);
        assert_ne!(r.code, 0, "{target}: {r:?}");
        assert!(r.stderr.contains("not a regular file"), "{target}: {r:?}");
        assert!(t.elapsed() < Duration::from_secs(20));
        assert_eq!(sb.read_env(), env);
    }
}

/// A `.env` of about 1 MB whose first line is the key: a write cut anywhere leaves a mix of
/// the new beginning and the old rest (or a new file without its end).
fn big_env() -> (String, String) {
    let mut old = "CLOUDFLARE_AUD_TAG=old\n".to_string();
    let mut i = 0;
    while old.len() < 1_000_000 {
        old.push_str(&format!("VAR_{i:06}={}\n", "v".repeat(60)));
        i += 1;
    }
    let new = old.replacen("=old", &format!("={}", aud(2)), 1);
    (old, new)
}

#[derive(Debug, Default)]
struct Tally {
    runs: usize,
    old_after_kill: usize,
    new_after_kill: usize,
    torn_after_kill: usize,
    finished_before_kill: usize,
    leftovers_after_kill: usize,
}

impl Tally {
    fn count(&mut self, alive: bool, after: &str, old: &str, new: &str) {
        self.runs += 1;
        if !alive {
            self.finished_before_kill += 1;
        } else if after == old {
            self.old_after_kill += 1;
        } else if after == new {
            self.new_after_kill += 1;
        } else {
            self.torn_after_kill += 1;
        }
    }
}

fn temp_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".audsync-") && n.ends_with(".tmp"))
        .collect()
}

/// Kill the binary at `delay` after `trigger` shows up (or after the spawn when `trigger` is
/// `None`). Returns whether it was still running when killed.
fn kill_at(
    sb: &Sandbox,
    args: &[&str],
    trigger: Option<&dyn Fn() -> bool>,
    delay: Duration,
) -> bool {
    let mut child = spawn(sb, args);
    let start = Instant::now();
    if let Some(seen) = trigger {
        while !seen() {
            if child.try_wait().unwrap().is_some() || start.elapsed() > Duration::from_secs(20) {
                return false;
            }
        }
    }
    let t = Instant::now();
    while t.elapsed() < delay {
        std::hint::spin_loop();
    }
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    alive
}

/// Run the binary with a file-size limit of `limit` bytes: the kernel kills it (SIGXFSZ) the
/// moment a write goes past that offset — a kill at an exact byte of the in-place write.
/// Returns whether it was killed by a signal.
fn killed_at_byte(sb: &Sandbox, args: &[&str], limit: usize) -> bool {
    let out = Command::new("prlimit")
        .arg(format!("--fsize={limit}:{limit}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_audsync"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUDSYNC_LOCK_DIR", sb.locks.path())
        .envs(sb.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(sb.dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    std::os::unix::process::ExitStatusExt::signal(&out).is_some()
}

/// A run killed after it cleared its journal entry but before it removed the safety copy
/// leaves `.env.audsync-backup` behind with nothing naming it (the in-place test above hits
/// that instant now and then): the next run removes it, whatever it has to write, and leaves
/// the file alone.
#[test]
fn a_safety_copy_no_journal_entry_names_is_removed_by_the_next_run() {
    let current = format!("CLOUDFLARE_AUD_TAG={}\nOTHER=1\n", aud(2));
    let (_cf, sb) = setup(&current);
    let backup = sb.path(".env.audsync-backup");
    for mode in ["in-place", "atomic"] {
        std::fs::write(&backup, "CLOUDFLARE_AUD_TAG=old\nOTHER=1\n").unwrap();
        let r = sync(&sb, &["--write-mode", mode]);
        assert_eq!(r.code, 0, "{mode}: {r:?}");
        assert!(!backup.exists(), "{mode}: the stale safety copy is removed");
        assert_eq!(std::fs::read_to_string(sb.env_path()).unwrap(), current);
    }
    // A dry run touches nothing.
    std::fs::write(&backup, "x").unwrap();
    let r = sync(&sb, &["--dry-run"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(backup.exists(), "a dry run removes nothing");
}

#[test]
fn in_place_write_killed_at_20_moments_is_old_or_new_never_a_mix_after_the_next_run() {
    let (old, new) = big_env();
    let (_cf, sb) = setup(&old);
    let args = [
        "sync",
        "--domain",
        HOST,
        "--restart",
        "none",
        "--write-mode",
        "in-place",
    ];
    let backup = sb.path(".env.audsync-backup");
    // Calibrate: how long from the safety copy's appearance to the end of a whole run.
    let mut child = spawn(&sb, &args);
    let mut appeared = None;
    while child.try_wait().unwrap().is_none() {
        if appeared.is_none() && backup.exists() {
            appeared = Some(Instant::now());
        }
    }
    let window = appeared.map_or(Duration::from_millis(20), |t| t.elapsed());
    assert_eq!(
        std::fs::read_to_string(sb.env_path()).unwrap(),
        new,
        "calibration run"
    );
    let ino = std::fs::metadata(sb.env_path()).unwrap().ino();
    let has_prlimit = Command::new("prlimit").arg("--version").output().is_ok();

    let mut tally = Tally::default();
    for i in 0..20u32 {
        sb.write_env(&old);
        let alive = match i {
            // At exact bytes of the write, past the old length (the safety copy fits).
            0..8 if has_prlimit => {
                let at = old.len() + 1 + (new.len() - old.len() - 2) * i as usize / 7;
                killed_at_byte(&sb, &args, at)
            }
            // SIGKILL from the safety copy's appearance to the end of the run.
            0..14 => {
                let seen = || backup.exists();
                kill_at(&sb, &args, Some(&seen), window * (i % 8) / 7)
            }
            // SIGKILL at moments counted from the start.
            _ => kill_at(
                &sb,
                &args,
                None,
                Duration::from_millis(u64::from(i - 13) * 40),
            ),
        };
        let after = std::fs::read_to_string(sb.env_path()).unwrap_or_default();
        tally.count(alive, &after, &old, &new);
        let r = sync(&sb, &["--write-mode", "in-place"]);
        assert_eq!(r.code, 0, "run {i}: {r:?}");
        let now = std::fs::read_to_string(sb.env_path()).unwrap();
        assert!(
            now == new,
            "run {i}: after the next run the file is not the new one ({} bytes, expected {})",
            now.len(),
            new.len()
        );
        assert!(!backup.exists(), "run {i}: the safety copy is removed");
        let state = std::fs::read_to_string(sb.path(".env.audsync-state.json")).unwrap();
        assert!(
            !state.contains("in_place_writes"),
            "run {i}: nothing journalled in the state file: {state}"
        );
        assert_eq!(journalled(&sb), 0, "run {i}: the journal is cleared");
        assert_eq!(
            std::fs::metadata(sb.env_path()).unwrap().ino(),
            ino,
            "same inode"
        );
    }
    eprintln!("in-place fault table: {tally:?}");
    assert_eq!(tally.runs, 20);
    if has_prlimit {
        assert!(
            tally.torn_after_kill > 0,
            "some kills tore the file: {tally:?}"
        );
    }
}

/// The in-place writes journalled in the records of the lock directory (`<lock>.json`).
fn journalled(sb: &Sandbox) -> usize {
    std::fs::read_dir(sb.locks.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            !v["in_place_write"].is_null()
        })
        .count()
}

/// Issue 20: what belongs to a resource is kept with its lock. A config run (its state file
/// beside `a/audsync.toml`) is killed at an exact byte of its in-place write of `.env`; then a
/// flag run on the same `.env` (another configuration, another state file) takes that
/// `.env`'s lock and finds the journal beside it: it puts the previous content back, writes
/// the new one, and says so. (With the journal in the config run's state file, the flag run
/// never saw it: it took the torn file as it was and removed the safety copy as a leftover.)
#[test]
fn an_in_place_write_a_config_run_left_torn_is_finished_by_a_flag_run_on_the_same_env() {
    assert!(
        Command::new("prlimit").arg("--version").output().is_ok(),
        "needs prlimit (util-linux) to kill at an exact byte"
    );
    let (old, new) = big_env();
    let (_cf, sb) = setup(&old);
    std::fs::create_dir(sb.path("a")).unwrap();
    std::fs::write(
        sb.path("a/audsync.toml"),
        format!(
            "[[binding]]\ndomain = \"{HOST}\"\nkey = \"CLOUDFLARE_AUD_TAG\"\nrestart = \"none\"\n\
             sinks = [{{ env = \"../.env\" }}]\n"
        ),
    )
    .unwrap();
    let backup = sb.path(".env.audsync-backup");
    // Past the old length, before the end of the new content: the write is cut there.
    let at = old.len() + (new.len() - old.len()) / 2;
    let killed = killed_at_byte(
        &sb,
        &[
            "sync",
            "--config",
            "a/audsync.toml",
            "--write-mode",
            "in-place",
        ],
        at,
    );
    assert!(killed, "run A was killed mid-write");
    let torn = std::fs::read_to_string(sb.env_path()).unwrap();
    assert!(
        torn != old && torn != new && new.starts_with(&torn),
        "run A left the file torn ({} bytes; old {}, new {})",
        torn.len(),
        old.len(),
        new.len()
    );
    assert!(backup.exists(), "run A's safety copy is there");

    // Run B: a flag-only run on the same .env.
    let r = sync(&sb, &["--write-mode", "in-place"]);
    assert_eq!(r.code, 0, "{r:?}");
    let after = std::fs::read_to_string(sb.env_path()).unwrap();
    assert!(
        after == new,
        "run B did not finish the write run A left torn ({} bytes, expected {}): {}",
        after.len(),
        new.len(),
        r.stderr
    );
    assert!(
        r.stderr.contains("was undone") || r.stdout.contains("was undone"),
        "run B says what it did: {r:?}"
    );
    assert!(!backup.exists(), "the safety copy is removed");
    assert_eq!(journalled(&sb), 0, "the journal is cleared");
    for state in [
        "a/audsync.toml.audsync-state.json",
        ".env.audsync-state.json",
    ] {
        let s = std::fs::read_to_string(sb.path(state)).unwrap_or_default();
        assert!(!s.contains("in_place_writes"), "{state}: {s}");
    }
}

#[test]
fn atomic_write_killed_leaves_no_torn_file_and_its_temp_files_are_removed() {
    let (old, new) = big_env();
    let (_cf, sb) = setup(&old);
    let args = ["sync", "--domain", HOST, "--restart", "none"];
    let dir = sb.dir().to_path_buf();
    // A leftover of an older version and one of this one: removed by the next run.
    std::fs::write(sb.path(".audsync-AbC123.tmp"), "x").unwrap();
    std::fs::write(sb.path(".audsync-.env.Zz9.tmp"), "x").unwrap();
    std::fs::write(sb.path(".audsync-keepme"), "x").unwrap();
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        temp_leftovers(&dir).is_empty(),
        "{:?}",
        temp_leftovers(&dir)
    );
    assert!(
        sb.path(".audsync-keepme").exists(),
        "only temp files are removed"
    );
    let mut tally = Tally::default();
    for i in 0..10u32 {
        sb.write_env(&old);
        let seen = || !temp_leftovers(&dir).is_empty();
        let alive = kill_at(
            &sb,
            &args,
            Some(&seen),
            Duration::from_micros(u64::from(i) * 300),
        );
        let after = std::fs::read_to_string(sb.env_path()).unwrap();
        assert!(
            after == old || after == new,
            "run {i}: atomic mode never tears"
        );
        tally.count(alive, &after, &old, &new);
        if !temp_leftovers(&dir).is_empty() {
            tally.leftovers_after_kill += 1;
        }
        let r = sync(&sb, &[]);
        assert_eq!(r.code, 0, "run {i}: {r:?}");
        assert_eq!(std::fs::read_to_string(sb.env_path()).unwrap(), new);
        assert!(
            temp_leftovers(&dir).is_empty(),
            "run {i}: {:?}",
            temp_leftovers(&dir)
        );
    }
    eprintln!("atomic fault table: {tally:?}");
}

/// Peak RSS (KiB) of one run of the binary, measured by `/usr/bin/time` (getrusage).
fn peak_rss_kib(sb: &Sandbox, args: &[&str]) -> Option<(i32, String, u64)> {
    if !Path::new("/usr/bin/time").exists() {
        eprintln!("no /usr/bin/time: memory bound not measured");
        return None;
    }
    let out_file = sb.path("rss.txt");
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&out_file)
        .arg(env!("CARGO_BIN_EXE_audsync"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AUDSYNC_LOCK_DIR", sb.locks.path())
        .envs(sb.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(sb.dir())
        .output()
        .unwrap();
    let rss = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        rss,
    ))
}

#[test]
fn a_huge_answer_and_an_endless_device_fail_fast_with_little_memory() {
    // 100 MB answer, streamed without Content-Length.
    let server = Server::start(|_req| async {
        let chunk = bytes_of(1024 * 1024);
        let stream = futures_util::stream::iter(
            std::iter::once(Ok::<_, std::io::Error>(
                b"{\"success\":true,\"result\":[\"".to_vec(),
            ))
            .chain((0..100).map(move |_| Ok(chunk.clone()))),
        );
        axum::response::Response::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from_stream(stream))
            .unwrap()
    });
    let (_cf, mut sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    sb.var("CLOUDFLARE_API_URL", &server.url);
    let args = ["sync", "--domain", HOST, "--restart", "none"];
    if let Some((code, stderr, rss)) = peak_rss_kib(&sb, &args) {
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("larger than the 8 MiB"), "{stderr}");
        assert!(rss < 64 * 1024, "peak RSS {rss} KiB for a 100 MB answer");
        eprintln!("huge answer: peak RSS {rss} KiB");
    }
    // An endless device as the .env (through a symlink) and as a *_FILE.
    let (_cf, mut sb) = setup("");
    std::fs::remove_file(sb.env_path()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", sb.env_path()).unwrap();
    if let Some((code, stderr, rss)) = peak_rss_kib(&sb, &args) {
        assert_ne!(code, 0);
        assert!(stderr.contains("not a regular file"), "{stderr}");
        assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
        eprintln!("endless device: peak RSS {rss} KiB");
    }
    sb.unset("CLOUDFLARE_API_TOKEN");
    sb.var("CLOUDFLARE_API_TOKEN_FILE", "/dev/zero");
    std::fs::remove_file(sb.env_path()).unwrap();
    sb.write_env("");
    if let Some((code, stderr, rss)) = peak_rss_kib(&sb, &args) {
        assert_ne!(code, 0);
        assert!(stderr.contains("not a regular file"), "{stderr}");
        assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
    }
}

fn bytes_of(n: usize) -> Vec<u8> {
    vec![b'a'; n]
}

#[test]
fn docker_host_that_does_not_parse_is_a_usage_error_before_anything_is_contacted() {
    let (cf, mut sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    for bad in [
        "/var/run/docker.sock",
        "ssh://me@host",
        "tcp://",
        "unix://relative",
    ] {
        sb.var("DOCKER_HOST", bad);
        let mut c = sb.cmd();
        c.args(["sync", "--domain", HOST, "--container", "app"]);
        let r = run(&mut c);
        assert_eq!(r.code, 2, "{bad}: {r:?}");
        assert!(r.stderr.contains("DOCKER_HOST"), "{r:?}");
    }
    assert!(
        cf.requests().is_empty(),
        "nothing contacted: {:?}",
        cf.requests()
    );
    assert_eq!(sb.read_env(), "CLOUDFLARE_AUD_TAG=old\n");
}

#[test]
fn an_unclosed_quote_before_a_secret_is_named_by_line_only_at_any_verbosity() {
    const SECRET: &str = "s3cr3t-token-value-never-printed";
    let bad = format!("A=1\nB=\"unclosed\nCLOUDFLARE_API_TOKEN={SECRET}\nC=2\n");
    // As the settings layer (--env-file is read for settings) ...
    let (_cf, mut sb) = setup(&bad);
    for (verbosity, rust_log) in [("-v", None), ("-vvv", None), ("-q", Some("trace"))] {
        match rust_log {
            Some(l) => sb.var("RUST_LOG", l),
            None => sb.unset("RUST_LOG"),
        };
        let r = sync(&sb, &[verbosity]);
        assert_ne!(r.code, 0, "{r:?}");
        assert!(r.stderr.contains("line 2"), "{r:?}");
        assert!(
            !r.stderr.contains(SECRET) && !r.stdout.contains(SECRET),
            "{r:?}"
        );
        assert!(!r.stderr.contains("unclosed"), "no text of the line: {r:?}");
        assert_eq!(sb.read_env(), bad);
    }
    // ... and as a sink of a config-file binding (the settings come from elsewhere).
    let (_cf, mut sb) = setup("");
    std::fs::write(sb.path("app.env"), &bad).unwrap();
    std::fs::write(
        sb.path("audsync.toml"),
        format!("[[binding]]\ndomain = \"{HOST}\"\nrestart = \"none\"\nsinks = [{{ env = \"app.env\" }}]\n"),
    )
    .unwrap();
    for (verbosity, rust_log) in [("-vvv", None), ("-v", Some("trace"))] {
        match rust_log {
            Some(l) => sb.var("RUST_LOG", l),
            None => sb.unset("RUST_LOG"),
        };
        let mut c = sb.cmd();
        c.args(["sync", "--config", "audsync.toml", verbosity]);
        let r = run(&mut c);
        assert_ne!(r.code, 0, "{r:?}");
        assert!(
            r.stderr.contains("line 2") || r.stdout.contains("line 2"),
            "{r:?}"
        );
        assert!(
            !r.stderr.contains(SECRET) && !r.stdout.contains(SECRET),
            "{r:?}"
        );
        assert_eq!(std::fs::read_to_string(sb.path("app.env")).unwrap(), bad);
    }
}

#[test]
fn compose_style_env_files_are_synced_not_blocked() {
    // Blanks around `=`, a bare KEY, CR-only endings, two assignments of the key.
    let env =
        "A = spaced\rSHELL_ONLY\rCLOUDFLARE_AUD_TAG = old\rB='it\\'s'\rCLOUDFLARE_AUD_TAG=older\r";
    let (_cf, sb) = setup(env);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let want = env
        .replace("= old", &format!("= {}", aud(2)))
        .replace("=older", &format!("={}", aud(2)));
    assert_eq!(sb.read_env(), want);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "in sync now: {r:?}");
    assert_eq!(sb.read_env(), want);
}

#[test]
fn a_missing_env_file_is_an_error_unless_creating_is_allowed() {
    let (_cf, mut sb) = setup("");
    std::fs::remove_file(sb.env_path()).unwrap();
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(".env") && r.stderr.contains("does not exist"),
        "{r:?}"
    );
    assert!(r.stderr.contains("--create-env-file"), "{r:?}");
    assert!(!sb.env_path().exists());
    let r = sync(&sb, &["--dry-run"]);
    assert_eq!(r.code, 1, "a dry run fails the same way: {r:?}");
    sb.var("AUDSYNC_CREATE_ENV_FILE", "true");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sb.read_env(), format!("CLOUDFLARE_AUD_TAG={}\n", aud(2)));
    // In a config file: create = true.
    let (_cf, mut sb) = setup("");
    sb.unset("AUDSYNC_CREATE_ENV_FILE");
    std::fs::write(
        sb.path("audsync.toml"),
        format!("[[binding]]\ndomain = \"{HOST}\"\nrestart = \"none\"\ncreate = true\nsinks = [{{ env = \"sub/app.env\" }}]\n"),
    )
    .unwrap();
    // A dry run into a directory that does not exist fails as the real run would.
    let mut c = sb.cmd();
    c.args(["sync", "--config", "audsync.toml", "--dry-run"]);
    let dry = run(&mut c);
    let mut c = sb.cmd();
    c.args(["sync", "--config", "audsync.toml"]);
    let real = run(&mut c);
    assert_ne!(real.code, 0, "{real:?}");
    assert_eq!(dry.code, real.code, "dry {dry:?}\nreal {real:?}");
    std::fs::create_dir(sb.path("sub")).unwrap();
    let mut c = sb.cmd();
    c.args(["sync", "--config", "audsync.toml"]);
    let r = run(&mut c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        std::fs::read_to_string(sb.path("sub/app.env"))
            .unwrap()
            .contains(&aud(2))
    );
}

#[test]
fn a_symlinked_env_is_written_only_into_a_file_of_the_directory_owner() {
    // Running as root here: a target owned by another uid than the directory's is refused.
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: cannot chown to another user; skipped");
        return;
    }
    let (_cf, sb) = setup("");
    std::fs::remove_file(sb.env_path()).unwrap();
    let real = sb.path("real.env");
    std::fs::write(&real, "CLOUDFLARE_AUD_TAG=old\n").unwrap();
    std::os::unix::fs::chown(&real, Some(4242), Some(4242)).unwrap();
    std::os::unix::fs::symlink("real.env", sb.env_path()).unwrap();
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("symlink") && r.stderr.contains("4242"),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&real).unwrap(),
        "CLOUDFLARE_AUD_TAG=old\n"
    );
    std::os::unix::fs::chown(&real, Some(0), Some(0)).unwrap();
    assert_eq!(sync(&sb, &[]).code, 0);
    assert!(std::fs::read_to_string(&real).unwrap().contains(&aud(2)));
}

// --- Docker: state that heals (#[ignore]d: scripts/test.sh runs them) ---

const KEY: &str = "CLOUDFLARE_AUD_TAG";
const SLEEPER: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

fn docker_sync(sb: &Sandbox, container: &str) -> Run {
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--container",
        container,
        "--restart",
        "recreate",
        "--settle",
        "1s",
    ]);
    run(&mut c)
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_paused_container_is_left_paused_not_recreated_running() {
    crate::require_docker!();
    use crate::support::docker::{Docker, docker, env_of, id_of, image, inspect};
    let d = Docker::new();
    let (_cf, sb) = setup(&format!("{KEY}=old\n"));
    let name = d.run(
        "paused",
        &["-e", &format!("{KEY}=old"), &image(), "sh", "-c", SLEEPER],
    );
    let id = id_of(&name);
    docker(&["pause", &name]);
    let r = docker_sync(&sb, &name);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("paused"), "{r:?}");
    assert_eq!(id_of(&name), id, "not recreated");
    assert_eq!(inspect(&name)["State"]["Paused"], true, "still paused");
    assert_eq!(env_of(&name, KEY).as_deref(), Some("old"));
    // Unpaused, the owed change goes through.
    docker(&["unpause", &name]);
    let r = docker_sync(&sb, &name);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(env_of(&name, KEY), Some(aud(2)));
    docker(&["rm", "-f", &name]);
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_container_in_another_ones_network_namespace_is_recreated() {
    crate::require_docker!(not_podman: "network_mode container:<base> is not checked on Podman");
    use crate::support::docker::{Docker, docker, env_of, image, inspect};
    let d = Docker::new();
    let (_cf, sb) = setup(&format!("{KEY}=old\n"));
    let base = d.run("netns", &[&image(), "sh", "-c", SLEEPER]);
    let side = d.run(
        "sidecar",
        &[
            "--network",
            &format!("container:{base}"),
            "-e",
            &format!("{KEY}=old"),
            &image(),
            "sh",
            "-c",
            SLEEPER,
        ],
    );
    let r = docker_sync(&sb, &side);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(env_of(&side, KEY), Some(aud(2)));
    let mode = inspect(&side)["HostConfig"]["NetworkMode"].clone();
    assert!(
        mode.as_str().unwrap_or("").starts_with("container:"),
        "{mode}"
    );
    // The next run is in sync (no refusal on every run).
    let r = docker_sync(&sb, &side);
    assert_eq!(r.code, 0, "{r:?}");
    docker(&["rm", "-f", &side, &base]);
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_container_given_by_id_prefix_is_found_by_name_after_a_recreate() {
    crate::require_docker!();
    use crate::support::docker::{Docker, docker, env_of, id_of, image};
    let d = Docker::new();
    let (_cf, sb) = setup(&format!("{KEY}=old\n"));
    let name = d.run(
        "byid",
        &["-e", &format!("{KEY}=old"), &image(), "sh", "-c", SLEEPER],
    );
    let old_id = id_of(&name);
    let prefix = &old_id[..12];
    let r = docker_sync(&sb, prefix);
    assert_eq!(r.code, 0, "{r:?}");
    assert_ne!(id_of(&name), old_id, "recreated: a new id");
    assert_eq!(env_of(&name, KEY), Some(aud(2)));
    // The id is dead now; the next runs go by the name and are in sync.
    for _ in 0..2 {
        let r = docker_sync(&sb, prefix);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(!r.stderr.contains("does not exist"), "{r:?}");
    }
    // A new value reaches the container found by name.
    sb.write_env(&format!("{KEY}=old\n"));
    let r = docker_sync(&sb, prefix);
    assert_eq!(r.code, 0, "{r:?}");
    docker(&["rm", "-f", &name]);
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn a_missing_env_names_the_compose_project_directory_and_another_env_is_warned_about() {
    crate::require_docker!(not_podman: "not checked on Podman");
    use crate::support::docker::{Docker, docker, image};
    let d = Docker::new();
    let (_cf, sb) = setup("");
    std::fs::remove_file(sb.env_path()).unwrap();
    let proj = sb.path("proj");
    std::fs::create_dir(&proj).unwrap();
    let label = format!("com.docker.compose.project.working_dir={}", proj.display());
    let name = d.run(
        "proj",
        &[
            "--label",
            &label,
            "-e",
            &format!("{KEY}=old"),
            &image(),
            "sh",
            "-c",
            SLEEPER,
        ],
    );
    let r = docker_sync(&sb, &name);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    assert!(
        r.stderr.contains(&proj.display().to_string()),
        "names the project dir: {r:?}"
    );
    // An .env elsewhere than the project directory: written, with a warning.
    sb.write_env(&format!("{KEY}=old\n"));
    let r = docker_sync(&sb, &name);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("not the one in the compose project directory"),
        "{r:?}"
    );
    docker(&["rm", "-f", &name]);
}

#[test]
fn leftover_state_temp_files_of_a_killed_run_are_removed_by_the_next_run() {
    let (_cf, sb) = setup("CLOUDFLARE_AUD_TAG=old\n");
    // What a run killed while writing the state file leaves beside it.
    let left = sb.path(".audsync-state-Ab12Cd.tmp");
    std::fs::write(&left, "{\"owed\":[").unwrap();
    let keep = sb.path(".audsync-state-notes");
    std::fs::write(&keep, "x").unwrap();
    // One a live writer holds locked (a state write in flight in another process): kept.
    let busy = sb.path(".audsync-state-Zz9Yy8.tmp");
    let held = std::fs::File::create(&busy).unwrap();
    held.lock().unwrap();
    // A dry run removes nothing.
    let r = sync(&sb, &["--dry-run"]);
    assert_eq!(r.code, 3, "changes planned: {r:?}");
    assert!(left.exists(), "a dry run changes nothing");
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!left.exists(), "the killed run's temp file is removed");
    assert!(keep.exists(), "only temp files are removed");
    assert!(
        busy.exists(),
        "a temp file a live writer holds is left alone"
    );
    assert!(sb.read_env().contains(&aud(2)));
    // Once its writer is gone, it is a leftover too.
    drop(held);
    let r = sync(&sb, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!busy.exists(), "{:?}", temp_leftovers(sb.dir()));
    assert!(temp_leftovers(sb.dir()).is_empty());
}

/// A new instance that fails 2 s after it starts (any value but `old`); the old one runs.
const FAILS_LATE: &str = "if [ \"$CLOUDFLARE_AUD_TAG\" != old ]; then sleep 2; exit 1; fi; trap 'exit 0' TERM; sleep 3600 & wait";

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn an_old_container_removed_by_someone_else_during_a_recreate_is_reported_as_removed_not_rolled_back()
 {
    crate::require_docker!();
    use crate::support::docker::{Docker, docker, env_of, image, inspect};
    let d = Docker::new();
    let (_cf, sb) = setup(&format!("{KEY}=old\n"));
    let name = d.run(
        "vanish",
        &[
            "-e",
            &format!("{KEY}=old"),
            &image(),
            "sh",
            "-c",
            FAILS_LATE,
        ],
    );
    let mut c = sb.cmd();
    c.args([
        "sync",
        "--domain",
        HOST,
        "--container",
        &name,
        "--restart",
        "recreate",
        "--settle",
        "5s",
        "--output",
        "json",
    ])
    .timeout(Duration::from_secs(90));
    let pass = std::thread::spawn(move || run(&mut c));
    // While audsync waits on the new container, someone removes the old one (stopped and
    // moved aside under a temporary name).
    let start = Instant::now();
    let aside = loop {
        if let Some(n) = d
            .containers()
            .into_iter()
            .find(|n| n.contains("-audsync-old-"))
        {
            break n;
        }
        assert!(
            !pass.is_finished() && start.elapsed() < Duration::from_secs(60),
            "the old container was never moved aside: {:?}",
            d.containers()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    docker(&["rm", "-f", &aside]);
    let r = pass.join().unwrap();
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    let err = &j["containers"][0]["error"];
    let msg = err["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("another process removed the container {name}")),
        "{r:?}"
    );
    assert!(msg.contains("rolled nothing back"), "{r:?}");
    assert!(!msg.contains("rolled back: the old"), "{r:?}");
    assert!(err.is_object(), "{r:?}");
    assert_ne!(err["rolled_back"], true, "{r:?}");
    assert!(!r.stderr.contains("ROLLBACK INCOMPLETE"), "{r:?}");
    // The new container is what is left, under the name, with the new value.
    assert_eq!(d.containers(), vec![name.clone()]);
    assert_eq!(env_of(&name, KEY), Some(aud(2)));
    // Nothing left for a recovery to chase: the record of the recreate is gone.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sb.path(".env.audsync-state.json")).unwrap())
            .unwrap();
    assert!(state.get("recreating").is_none(), "{state:#}");
    for e in std::fs::read_dir(sb.locks.path()).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".json") {
            let rec = std::fs::read_to_string(e.path()).unwrap();
            assert!(!rec.contains("applying"), "the journal is cleared: {rec}");
        }
    }
    // The next runs say what is there and settle; no endless chase.
    let mut codes = vec![];
    for _ in 0..3 {
        let r = docker_sync(&sb, &name);
        eprintln!("next run: {r:?}");
        assert!(!r.stderr.contains("cut short"), "{r:?}");
        codes.push(r.code);
    }
    eprintln!("next runs: {codes:?}; {}", inspect(&name)["State"]);
    assert_eq!(codes, vec![0, 0, 0], "settles at once");
    docker(&["rm", "-f", &name]);
}
