//! Command targets: a program run once per pass after every sink of every binding that targets
//! it holds the new value (`targets = [{ exec = [...] }]`, `--exec 'CMD ARGS'`).
//!
//! Owns running it safely: the argv as given (never through a shell), in its own process
//! group, stdin from `/dev/null`, an environment of `PATH`, `HOME`, `LANG` and the change only
//! (never audsync's own, which holds credentials), a deadline over both the run and the reading
//! of its output (past it the group gets SIGTERM, then SIGKILL after a grace), and its output
//! bounded, keeping the tail. Imports only `reconcile`'s ports: it must never read a setting,
//! a flag or audsync's environment itself (config hands it everything), and never log a value
//! of its environment.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::reconcile::{ActionError, Target, TargetObservation, Values};

/// At most this much of a command's output (stdout and stderr together) is kept: the tail.
pub(crate) const OUTPUT_CAP: usize = 64 * 1024;
/// After SIGTERM, how long the group has before SIGKILL (or the timeout, if shorter).
const GRACE: Duration = Duration::from_secs(5);
/// After the command exits, how long its output is still read (a grandchild it left running
/// may hold the pipe open; it is not waited for).
const DRAIN: Duration = Duration::from_secs(1);
/// How many lines of its output a failure quotes.
const QUOTED_LINES: usize = 10;

/// How commands are run: settings from `config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// `exec_timeout` / `--exec-timeout` / `AUDSYNC_EXEC_TIMEOUT`.
    pub timeout: Duration,
    /// `PATH`, `HOME`, `LANG` of audsync's environment (those set): the command's base.
    pub base_env: Vec<(String, String)>,
}

/// The variables of audsync's environment a command inherits.
pub const INHERITED: &[&str] = &["PATH", "HOME", "LANG"];

/// What changed, as the command is told (names that are no audsync setting).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Change {
    /// The ids of the bindings whose value the command is to apply.
    pub bindings: Vec<String>,
    /// When exactly one binding changed: its key, new value and old value (empty when unknown).
    pub single: Option<(String, String, String)>,
}

impl Change {
    fn vars(&self) -> Vec<(String, String)> {
        let mut v = vec![("AUDSYNC_CHANGED_BINDINGS".into(), self.bindings.join(" "))];
        if let Some((key, new, old)) = &self.single {
            v.push(("AUDSYNC_CHANGED_KEY".into(), key.clone()));
            v.push(("AUDSYNC_NEW_AUD".into(), new.clone()));
            v.push(("AUDSYNC_OLD_AUD".into(), old.clone()));
        }
        v
    }
}

/// How a command target is named in plans, reports and the state file: `command ARGV` with
/// each word quoted where a shell would need it, so two argvs never share a name.
pub(crate) fn label(argv: &[String]) -> String {
    format!("command {}", quote_words(argv))
}

/// The words, quoted the way a shell would read them back.
pub(crate) fn quote_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One command target.
#[derive(Debug)]
pub(crate) struct CommandTarget {
    argv: Vec<String>,
    settings: ExecSettings,
    change: Change,
}

impl CommandTarget {
    pub(crate) fn new(argv: Vec<String>, settings: ExecSettings) -> CommandTarget {
        CommandTarget {
            argv,
            settings,
            change: Change::default(),
        }
    }

    /// What the pass changed for it (set after the plan, before it is run).
    pub(crate) fn set_change(&mut self, change: Change) {
        self.change = change;
    }

    async fn run_it(&mut self) -> Result<(), ActionError> {
        let mut env = self.settings.base_env.clone();
        env.extend(self.change.vars());
        let shown = quote_words(&self.argv);
        let ran = run(&self.argv, &env, self.settings.timeout)
            .await
            .map_err(|e| ActionError {
                logs: Vec::new(),
                message: format!("command {shown}: {e}"),
                hint: e.hint(),
                rolled_back: false,
            })?;
        let how = match ran.end {
            End::Exited(0) => return Ok(()),
            End::Exited(c) => format!("exited with status {c}"),
            End::Signalled(s) => format!("was killed by signal {s}"),
            End::TimedOut => format!(
                "did not finish within {} (exec_timeout): its process group was stopped",
                humantime::format_duration(self.settings.timeout)
            ),
        };
        let tail = last_lines(&ran.output, QUOTED_LINES);
        let mut message = format!("command {shown} {how}; the next pass runs it again");
        if !tail.is_empty() {
            message.push_str(":\n");
            message.push_str(&tail);
        }
        Err(ActionError {
            logs: Vec::new(),
            message,
            hint: None,
            rolled_back: false,
        })
    }
}

impl Target for CommandTarget {
    async fn observe(
        &mut self,
        _keys: &[String],
        _watch: &[String],
    ) -> Result<TargetObservation, ActionError> {
        // A command holds no environment to read: it is run when a value changed (or is owed).
        Ok(TargetObservation::default())
    }
    async fn restart(&mut self) -> Result<(), ActionError> {
        self.run_it().await
    }
    async fn recreate(&mut self, _changes: &Values) -> Result<(), ActionError> {
        self.run_it().await
    }
    async fn rollout(&mut self, _changes: &Values) -> Result<(), ActionError> {
        self.run_it().await
    }
}

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("an empty command")]
    Empty,
    #[error("cannot start it: {0}")]
    Spawn(#[source] std::io::Error),
}

impl Error {
    fn hint(&self) -> Option<String> {
        match self {
            Error::Spawn(e) if e.kind() == std::io::ErrorKind::NotFound => Some(
                "give the program's absolute path, or put its directory in audsync's PATH".into(),
            ),
            _ => None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Exited(i32),
    Signalled(i32),
    /// Past the deadline: the group got SIGTERM, then SIGKILL.
    TimedOut,
}

/// A finished run: how it ended and the tail of its output (stdout and stderr as they came).
#[derive(Debug, Clone)]
pub(crate) struct Ran {
    pub end: End,
    pub output: Vec<u8>,
}

/// Keeps the last [`OUTPUT_CAP`] bytes.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > 2 * OUTPUT_CAP {
            let cut = self.0.len() - OUTPUT_CAP;
            self.0.drain(..cut);
        }
    }

    fn into_inner(mut self) -> Vec<u8> {
        if self.0.len() > OUTPUT_CAP {
            let cut = self.0.len() - OUTPUT_CAP;
            self.0.drain(..cut);
        }
        self.0
    }
}

/// Run `argv` with exactly `env`, under `timeout` (see the module doc).
pub(crate) async fn run(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Ran, Error> {
    let (prog, args) = argv.split_first().ok_or(Error::Empty)?;
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Should the pass itself be dropped (watch shutting down), the command goes too.
        .kill_on_drop(true)
        .spawn()
        .map_err(Error::Spawn)?;
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    let deadline = Instant::now() + timeout;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut tail = Tail::default();
    let mut status = None;
    let mut until = deadline;
    let (mut bo, mut be) = (vec![0u8; 8192], vec![0u8; 8192]);
    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            r = read_some(&mut stdout, &mut bo), if stdout.is_some() => match r {
                Some(n) => tail.push(&bo[..n]),
                None => stdout = None,
            },
            r = read_some(&mut stderr, &mut be), if stderr.is_some() => match r {
                Some(n) => tail.push(&be[..n]),
                None => stderr = None,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                until = deadline.min(Instant::now() + DRAIN);
            }
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    let end = match status {
        Some(Ok(s)) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(c), _) => End::Exited(c),
                (None, Some(sig)) => End::Signalled(sig),
                (None, None) => End::Exited(-1),
            }
        }
        Some(Err(e)) => return Err(Error::Spawn(e)),
        None => {
            stop(&mut child, pgid, GRACE.min(timeout)).await;
            End::TimedOut
        }
    };
    Ok(Ran {
        end,
        output: tail.into_inner(),
    })
}

/// SIGTERM to the group, up to `grace` for the command to go, then SIGKILL to the group (a
/// member that ignores SIGTERM, or outlived the command, goes too).
async fn stop(
    child: &mut tokio::process::Child,
    pgid: Option<rustix::process::Pid>,
    grace: Duration,
) {
    use rustix::process::{Signal, kill_process_group};
    if let Some(g) = pgid {
        let _ = kill_process_group(g, Signal::TERM);
    }
    let _ = tokio::time::timeout(grace, child.wait()).await;
    if let Some(g) = pgid {
        let _ = kill_process_group(g, Signal::KILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Some bytes of a pipe, or `None` at its end (or on an error: nothing more comes).
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> Option<usize> {
    let p = pipe.as_mut()?;
    match p.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

/// The last `n` non-empty lines of `output`, each indented, with control characters shown as
/// `?` (a terminal must not take them as escapes) and each line bounded.
pub(crate) fn last_lines(output: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| {
            let clean: String = l
                .chars()
                .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
                .take(300)
                .collect();
            format!("  | {clean}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn the_environment_is_exactly_what_is_given_and_stdin_is_empty() {
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        let r = run(&sh("env; cat"), &env, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(r.end, End::Exited(0));
        let out = String::from_utf8(r.output).unwrap();
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k))
            .collect();
        assert_eq!(names, ["PATH"], "{out}");
    }

    #[tokio::test]
    async fn output_is_bounded_keeping_the_tail() {
        let r = run(
            &sh("i=0; while [ $i -lt 3000 ]; do echo line-$i-padding-padding-padding; i=$((i+1)); done; echo LAST"),
            &[("PATH".into(), "/usr/bin:/bin".into())],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        assert!(r.output.len() <= OUTPUT_CAP, "{}", r.output.len());
        assert!(String::from_utf8_lossy(&r.output).ends_with("LAST\n"));
    }

    #[tokio::test]
    async fn a_grandchild_holding_the_pipe_after_a_clean_exit_does_not_hold_the_run() {
        let t0 = std::time::Instant::now();
        let r = run(
            &sh("sleep 30 & echo done"),
            &[("PATH".into(), "/usr/bin:/bin".into())],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        assert_eq!(r.end, End::Exited(0));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn labels_quote_what_a_shell_would_split() {
        assert_eq!(
            label(&["systemctl".into(), "restart".into(), "lambda".into()]),
            "command systemctl restart lambda"
        );
        assert_eq!(
            label(&["echo".into(), "a b".into(), "it's".into(), "".into()]),
            r"command echo 'a b' 'it'\''s' ''"
        );
    }

    #[test]
    fn last_lines_keeps_the_end_and_defuses_escapes() {
        let out = b"one\ntwo\n\x1b[31mred\n\nfour\n";
        assert_eq!(last_lines(out, 2), "  | ?[31mred\n  | four");
    }
}
