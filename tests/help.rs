//! `--help` of every command, snapshotted: a change to what users read is a reviewed change
//! (`cargo insta review`). Run against the real binary with a clean environment, so no layer
//! (`.env`, config file, process environment) shows up as a default.

use assert_cmd::Command;

fn help(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::cargo_bin("audsync")
        .expect("binary")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("COLUMNS", "100")
        .current_dir(dir.path())
        .output()
        .expect("run audsync");
    assert!(out.status.success(), "{args:?} exited {:?}", out.status);
    String::from_utf8(out.stdout).expect("utf-8")
}

macro_rules! help_snapshot {
    ($name:ident, $($arg:expr),+) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(help(&[$($arg),+]));
        }
    };
}

help_snapshot!(help_top, "--help");
help_snapshot!(help_sync, "sync", "--help");
help_snapshot!(help_get, "get", "--help");
help_snapshot!(help_setup, "setup", "--help");
help_snapshot!(help_verify, "verify", "--help");
help_snapshot!(help_watch, "watch", "--help");
help_snapshot!(help_completions, "completions", "--help");
help_snapshot!(help_config, "config", "--help");
help_snapshot!(help_man, "man", "--help");
help_snapshot!(help_sync_short, "sync", "-h");
help_snapshot!(help_setup_short, "setup", "-h");
