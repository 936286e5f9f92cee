//! The container audsync itself runs in, if any: audsync never targets it (stopping it would
//! stop the pass half-way, and a recreate could not be finished by the process it killed).
//!
//! Found from the 64-hex container ids in `/proc/self/cgroup` (cgroup v1, and v2 with the
//! cgroupfs driver) and `/proc/self/mountinfo` (the engine's `/etc/hostname`, `/etc/hosts` and
//! `/etc/resolv.conf` come from `…/containers/<id>/`), and the hostname, which the engine sets
//! to the id's first 12 characters unless told otherwise. Reads files only; never fails.

use std::sync::OnceLock;

/// Candidate ids of the container this process runs in (none outside a container).
pub(super) fn ids() -> &'static [String] {
    static IDS: OnceLock<Vec<String>> = OnceLock::new();
    IDS.get_or_init(|| {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mut ids = ids_in(&read("/proc/self/cgroup"));
        ids.extend(ids_in(&etc_mounts(&read("/proc/self/mountinfo"))));
        ids.sort();
        ids.dedup();
        ids
    })
}

/// The host name of this process (its UTS namespace's).
pub(super) fn hostname() -> Option<String> {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    (!name.is_empty()).then_some(name)
}

/// The mountinfo lines of the files the engine mounts into a container (`/etc/hostname`,
/// `/etc/hosts`, `/etc/resolv.conf`). Only those: on a host, mountinfo also lists every
/// container's `…/containers/<id>/mounts/shm`, which is not ours.
pub(super) fn etc_mounts(mountinfo: &str) -> String {
    mountinfo
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 4
                && matches!(f[4], "/etc/hostname" | "/etc/hosts" | "/etc/resolv.conf")
                && f[3].contains("/containers/")
        })
        .map(|l| l.split(' ').nth(3).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The 64-hex words of `text`, deduplicated.
pub(super) fn ids_in(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_ascii_hexdigit()) {
        if word.len() == 64 && !out.iter().any(|o| o == word) {
            out.push(word.to_ascii_lowercase());
        }
    }
    out
}

/// Whether container `id` (64 hex) is the one this process runs in: one of `ids`, or its
/// 12-character prefix is the `hostname`.
pub(super) fn is_own(id: &str, ids: &[String], hostname: Option<&str>) -> bool {
    let id = id.to_ascii_lowercase();
    ids.contains(&id)
        || hostname.is_some_and(|h| {
            h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()) && id.starts_with(h)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1e5b2c9a7d4e6f8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";

    #[test]
    fn the_own_id_is_read_from_cgroup_and_mountinfo() {
        let cgroup = format!("12:pids:/docker/{ID}\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(ids_in(&cgroup), [ID]);
        let mountinfo = format!(
            "612 590 254:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw\n"
        );
        assert_eq!(ids_in(&etc_mounts(&mountinfo)), [ID]);
        let host =
            format!("700 30 0:55 / /var/lib/docker/containers/{ID}/mounts/shm rw - tmpfs shm rw\n");
        assert!(
            ids_in(&etc_mounts(&host)).is_empty(),
            "another container's shm on a host"
        );
        assert!(ids_in("0::/\n").is_empty(), "cgroup v2 namespaced: nothing");
    }

    #[test]
    fn a_target_is_own_by_id_or_by_the_hostname_prefix() {
        assert!(is_own(ID, &[ID.to_string()], None));
        assert!(is_own(ID, &[], Some(&ID[..12])));
        assert!(!is_own(ID, &[], Some("web-1")));
        assert!(
            !is_own(ID, &[], Some("3f1e5b2c9a7d4")),
            "13 characters: not a prefix id"
        );
        let other = "a".repeat(64);
        assert!(!is_own(&other, &[ID.to_string()], Some(&ID[..12])));
    }
}
