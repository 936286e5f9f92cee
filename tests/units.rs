//! Issue 21: the shipped systemd units confine the agent, and still let it work. PID 1 is not
//! systemd on the test machines, so the unit's capability bounding set is applied with
//! `setpriv` (util-linux) around the real binary: a `sync` rewrites a `.env` of another owner
//! and recreates a container with exactly those capabilities, no new privileges and nothing
//! inheritable. scripts/check-units.sh checks the rest of the unit (systemd-analyze).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::require_docker;
use crate::support::cloudflare::{FakeCloudflare, app, aud};
use crate::support::docker::{Docker, env_of, image};
use crate::support::{Run, Sandbox, run};

const HOST: &str = "api.example.com";
const KEY: &str = "CLOUDFLARE_AUD_TAG";
/// The owner of the app's `.env`: not root.
const OWNER: u32 = 1000;

/// The `CapabilityBoundingSet=` of a shipped unit, as setpriv names (`chown`, …).
fn unit_caps(unit: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/systemd")
        .join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{} has no CapabilityBoundingSet=", path.display()));
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// `sync` under setpriv with only `caps` in the bounding set (none inheritable, no new
/// privileges), recreating `container`.
fn confined_sync(sb: &Sandbox, caps: &[String], container: &str, extra: &[&str]) -> Run {
    let bset = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut c = sb.cmd_via(&[
        "setpriv",
        "--bounding-set",
        &bset,
        "--inh-caps=-all",
        "--no-new-privs",
        "--",
    ]);
    c.args([
        "sync",
        "--domain",
        HOST,
        "--container",
        container,
        "--settle",
        "1s",
        "--output",
        "json",
    ])
    .args(extra);
    run(&mut c)
}

#[test]
#[ignore = "needs the Docker engine: run scripts/test.sh"]
fn the_units_capabilities_are_enough_to_rewrite_a_foreign_env_and_recreate() {
    require_docker!(not_podman: "not checked on Podman");
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "the units run audsync as root: run this test as root"
    );
    let caps = unit_caps("audsync-watch.service");
    assert_eq!(
        caps,
        unit_caps("audsync.service"),
        "both units keep the same set"
    );
    assert!(
        !caps.iter().any(|c| c == "sys_admin" || c == "net_admin"),
        "{caps:?}"
    );

    let cf = FakeCloudflare::start(vec![app(2, HOST, &aud(2))]);
    let sb = Sandbox::with_cloudflare(&cf);
    sb.write_env(&format!("{KEY}=old\n"));
    // The app's deploy user owns the .env (0600) and its directory (0700).
    for (p, mode) in [(sb.env_path(), 0o600), (sb.dir().to_path_buf(), 0o700)] {
        std::os::unix::fs::chown(&p, Some(OWNER), Some(OWNER)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let d = Docker::new();
    let c = d.run(
        "lambda",
        &["-e", &format!("{KEY}=old"), &image(), "sleep", "3600"],
    );

    // Without any capability root cannot even enter the directory: the proof is not vacuous.
    let r = confined_sync(&sb, &[], &c, &[]);
    assert_ne!(r.code, 0, "{r:?}");
    assert_eq!(sb.read_env(), format!("{KEY}=old\n"));
    assert_eq!(env_of(&c, KEY).as_deref(), Some("old"));

    // With the unit's set: written, owner and mode kept, container recreated.
    let r = confined_sync(&sb, &caps, &c, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sb.read_env(), format!("{KEY}={}\n", aud(2)));
    let m = std::fs::metadata(sb.env_path()).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (OWNER, OWNER, 0o600));
    let j = r.json();
    assert_eq!(j["containers"][0]["action"], "recreate", "{r:?}");
    assert_eq!(env_of(&c, KEY), Some(aud(2)));

    // A rotation written in place (the same inode: an .env bind-mounted as a single file).
    let inode = m.ino();
    cf.set_aud(0, &aud(3));
    let r = confined_sync(&sb, &caps, &c, &["--write-mode", "in-place"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(sb.read_env(), format!("{KEY}={}\n", aud(3)));
    let m = std::fs::metadata(sb.env_path()).unwrap();
    assert_eq!(m.ino(), inode);
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (OWNER, OWNER, 0o600));
    assert_eq!(env_of(&c, KEY), Some(aud(3)));
}
