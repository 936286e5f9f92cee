//! Which settings sources may steer a run: the `.env` read for settings, the config file
//! (found or named), a `*_FILE`. A source is trusted only when it, and every directory on its
//! real path up to `/`, is owned by root or by the user running, and writable by nobody else:
//! not by others, and by its group only when that group is the owner's private group or the
//! Docker socket's group (whose members are root-equivalent already). A root-owned sticky
//! directory (`/tmp`) is allowed on the path. This is the rule of OpenSSH's `StrictModes` and
//! git's `safe.directory`; naming a file on the command line does not make it trusted.
//!
//! The facts are gathered once, when a file is read ([`read`]): the file's owner and mode come
//! from `fstat` on the descriptor the text was read from, so the decision is about the file
//! actually read, never a second look at a path that could have been swapped. This module
//! never reads or prints a file's content beyond returning it to the caller.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::layers::Vars;

/// Who may be trusted besides root and the user running: read once per decision.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The effective uid of the run.
    pub euid: u32,
    /// The Docker socket's group, when the socket exists.
    pub docker_gid: Option<u32>,
    /// `/etc/passwd`: uid -> (name, primary gid).
    users: BTreeMap<u32, (String, u32)>,
    /// `/etc/group`: gid -> (name, members).
    groups: BTreeMap<u32, (String, Vec<String>)>,
}

impl Context {
    /// The running user, the socket `DOCKER_HOST` names (default `/var/run/docker.sock`), and
    /// the system's users and groups.
    pub fn from_vars(vars: &Vars) -> Context {
        let socket = match vars.get("DOCKER_HOST") {
            Some(h) => h.strip_prefix("unix://").map(PathBuf::from),
            None => Some(PathBuf::from("/var/run/docker.sock")),
        };
        let docker_gid = socket
            .and_then(|p| rustix::fs::stat(&p).ok())
            .filter(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket
            })
            .map(|st| st.st_gid);
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Context {
            euid: rustix::process::geteuid().as_raw(),
            docker_gid,
            users: parse_passwd(&read("/etc/passwd")),
            groups: parse_group(&read("/etc/group")),
        }
    }

    /// A context with explicit users and groups (tests).
    #[cfg(test)]
    pub fn with_tables(euid: u32, docker_gid: Option<u32>, passwd: &str, group: &str) -> Context {
        Context {
            euid,
            docker_gid,
            users: parse_passwd(passwd),
            groups: parse_group(group),
        }
    }

    /// `gid` is `uid`'s private group: its primary group, with no other member (listed in
    /// `/etc/group`, or another user whose primary group it is).
    fn private_group(&self, uid: u32, gid: u32) -> bool {
        let Some((name, primary)) = self.users.get(&uid) else {
            return false;
        };
        if *primary != gid {
            return false;
        }
        let listed_others = self
            .groups
            .get(&gid)
            .is_some_and(|(_, members)| members.iter().any(|m| m != name));
        let primary_others = self.users.iter().any(|(u, (_, g))| *u != uid && *g == gid);
        !listed_others && !primary_others
    }

    /// Why one path component (`uid`, `gid`, `mode` with file type bits) is not trusted.
    fn judge(&self, uid: u32, gid: u32, mode: u32, dir: bool) -> Option<Why> {
        let sticky_root_dir = dir && uid == 0 && mode & 0o1000 != 0;
        if uid != 0 && uid != self.euid {
            return Some(Why::Owner);
        }
        if sticky_root_dir {
            return None;
        }
        if mode & 0o002 != 0 {
            return Some(Why::OtherWritable);
        }
        if mode & 0o020 != 0 && !self.private_group(uid, gid) && self.docker_gid != Some(gid) {
            return Some(Why::GroupWritable);
        }
        None
    }
}

fn parse_passwd(text: &str) -> BTreeMap<u32, (String, u32)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((
                f.get(2)?.parse().ok()?,
                (f[0].to_string(), f.get(3)?.parse().ok()?),
            ))
        })
        .collect()
}

fn parse_group(text: &str) -> BTreeMap<u32, (String, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| s.trim().to_string())
                        .collect()
                })
                .unwrap_or_default();
            Some((f.get(2)?.parse().ok()?, (f[0].to_string(), members)))
        })
        .collect()
}

/// What is wrong with a path component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Owned by neither root nor the user running.
    Owner,
    /// Writable by others.
    OtherWritable,
    /// Writable by a group that is neither the owner's private group nor the Docker group.
    GroupWritable,
    /// The path now names another file than the one read.
    Changed,
}

/// The path component that made a source untrusted, with its owner and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    pub component: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    pub why: Why,
    /// The user running.
    pub me: u32,
}

impl Untrusted {
    /// The fix for this component alone (`chown` / `chmod`).
    pub fn fix(&self) -> String {
        let c = self.component.display();
        match self.why {
            Why::Owner => format!("`chown {} {c}`", self.me),
            Why::OtherWritable => format!("`chmod o-w {c}` (`chmod go-w {c}`)"),
            Why::GroupWritable => format!("`chmod go-w {c}`"),
            Why::Changed => "run again".into(),
        }
    }
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.component.display();
        let (uid, gid, mode) = (self.uid, self.gid, self.mode & 0o7777);
        match self.why {
            Why::Owner => write!(
                f,
                "{c} is owned by uid {uid} (gid {gid}, mode {mode:04o}), neither root nor the user running audsync (uid {})",
                self.me
            ),
            Why::OtherWritable => write!(
                f,
                "{c} (owner uid {uid}, gid {gid}, mode {mode:04o}) is writable by others"
            ),
            Why::GroupWritable => write!(
                f,
                "{c} (owner uid {uid}, gid {gid}, mode {mode:04o}) is writable by group {gid}, which is neither its owner's private group nor the Docker socket's group"
            ),
            Why::Changed => write!(f, "{c} changed while it was read"),
        }
    }
}

/// A settings file's provenance: the file read (its owner and mode, from the open descriptor)
/// and whether it may steer a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub verdict: Result<(), Untrusted>,
}

impl Facts {
    pub fn trusted(&self) -> bool {
        self.verdict.is_ok()
    }

    /// Owned by the user running and readable by nobody else (inline secrets).
    pub fn private_to(&self, euid: u32) -> bool {
        self.uid == euid && self.mode & 0o077 == 0
    }
}

/// Read `path` (a regular file, at most `cap` bytes) and judge it; `Ok(None)` when missing.
pub fn read(path: &Path, cap: u64, ctx: &Context) -> std::io::Result<Option<(Vec<u8>, Facts)>> {
    use std::os::unix::fs::MetadataExt;
    let f = match crate::fsx::open_regular(path, false, None) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    let bytes = crate::fsx::read_open(f, cap)?;
    let mut facts = Facts {
        path: path.to_path_buf(),
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode() & 0o7777,
        verdict: Ok(()),
    };
    facts.verdict = judge_path(path, &m, ctx);
    Ok(Some((bytes, facts)))
}

/// The file (from its descriptor's `m`), then every directory of its real path up to `/`.
fn judge_path(path: &Path, m: &std::fs::Metadata, ctx: &Context) -> Result<(), Untrusted> {
    use std::os::unix::fs::MetadataExt;
    let untrusted = |component: &Path, uid, gid, mode, why| Untrusted {
        component: component.to_path_buf(),
        uid,
        gid,
        mode: mode & 0o7777,
        why,
        me: ctx.euid,
    };
    if let Some(why) = ctx.judge(m.uid(), m.gid(), m.mode(), false) {
        return Err(untrusted(path, m.uid(), m.gid(), m.mode(), why));
    }
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    // The real path must still name the file read (a swap would show here).
    match std::fs::metadata(&real) {
        Ok(r) if r.dev() == m.dev() && r.ino() == m.ino() => {}
        _ => {
            return Err(untrusted(path, m.uid(), m.gid(), m.mode(), Why::Changed));
        }
    }
    for dir in real.ancestors().skip(1) {
        let d = match std::fs::symlink_metadata(dir) {
            Ok(d) => d,
            Err(_) => return Err(untrusted(dir, 0, 0, 0, Why::Changed)),
        };
        if let Some(why) = ctx.judge(d.uid(), d.gid(), d.mode(), true) {
            return Err(untrusted(dir, d.uid(), d.gid(), d.mode(), why));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ndeploy:x:1000:1000::/home/deploy:/bin/sh\nalice:x:1001:100::/home/alice:/bin/sh\nbob:x:1002:100::/home/bob:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\ndeploy:x:1000:\nusers:x:100:\ndocker:x:105:deploy\nshared:x:200:deploy,alice\n";

    #[test]
    fn the_rule_of_strict_modes() {
        let c = Context::with_tables(0, Some(105), PASSWD, GROUP);
        // Root's own or the running user's file, not writable by others.
        assert_eq!(c.judge(0, 0, 0o100644, false), None);
        assert_eq!(c.judge(1000, 1000, 0o100644, false), Some(Why::Owner));
        let deploy = Context::with_tables(1000, Some(105), PASSWD, GROUP);
        assert_eq!(
            deploy.judge(1000, 1000, 0o100664, false),
            None,
            "private group"
        );
        assert_eq!(
            deploy.judge(0, 0, 0o100664, false),
            None,
            "root's private group"
        );
        assert_eq!(
            deploy.judge(1000, 105, 0o100664, false),
            None,
            "docker group"
        );
        assert_eq!(
            deploy.judge(1000, 200, 0o100664, false),
            Some(Why::GroupWritable),
            "a shared group"
        );
        let alice = Context::with_tables(1001, None, PASSWD, GROUP);
        assert_eq!(
            alice.judge(1001, 100, 0o100664, false),
            Some(Why::GroupWritable),
            "a primary group shared with bob is not private"
        );
        assert_eq!(
            deploy.judge(1000, 1000, 0o100646, false),
            Some(Why::OtherWritable)
        );
        // Root-owned sticky directories only.
        assert_eq!(c.judge(0, 0, 0o41777, true), None);
        assert_eq!(c.judge(0, 0, 0o40777, true), Some(Why::OtherWritable));
        assert_eq!(c.judge(4242, 4242, 0o41777, true), Some(Why::Owner));
        assert_eq!(
            deploy.judge(1000, 1000, 0o41777, true),
            Some(Why::OtherWritable)
        );
    }
}
