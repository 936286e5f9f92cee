//! The create request for a recreated container, computed from the old one's `inspect`. Pure.
//!
//! Everything the user configured is carried over; only the `KEY=value` entries asked for
//! change. What
//! the engine generated for the old container (ids, addresses, the short-id hostname and alias,
//! a fresh anonymous volume) must not be copied: it would either be refused or silently point
//! at the old container. This module never talks to the engine.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HostConfig, NetworkingConfig,
};

/// What to send to the engine: the create body (with at most one network, which every API
/// version accepts) and the networks to connect before the first start.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub(crate) body: ContainerCreateBody,
    pub(crate) extra_networks: Vec<(String, EndpointSettings)>,
}

/// Build the create body for `info` with every `(key, value)` of `changes` applied, running
/// `image`.
///
/// Only existing `key=` entries are replaced: a container that does not carry a key reads the
/// value some other way, and adding one would change what it runs with behind the user's back.
/// When a key appears twice in `changes`, the last value wins.
pub(crate) fn build(
    info: &ContainerInspectResponse,
    changes: &[(String, String)],
    image: &str,
) -> Spec {
    let config = info.config.clone().unwrap_or_default();
    let id = info.id.clone().unwrap_or_default();
    let short_id: String = id.chars().take(12).collect();

    // Podman lists `HOSTNAME=<hostname>` in the inspected environment: when that is the
    // generated short id, copying it would tell the new container it is the old one.
    let generated_hostname = format!("HOSTNAME={short_id}");
    let env = config.env.map(|env| {
        env.into_iter()
            .filter(|kv| short_id.is_empty() || *kv != generated_hostname)
            .map(|kv| changed(kv, changes))
            .collect()
    });
    // The engine sets the hostname to the short id when none was asked for; copying it would
    // name the new container after the old one.
    let mut host_config = info.host_config.clone().unwrap_or_default();
    // In another container's network namespace (`network_mode: container:<other>`) the
    // hostname shown is the other's, inherited: the engine refuses to be given one.
    let shares_netns = host_config
        .network_mode
        .as_deref()
        .is_some_and(|m| m.starts_with("container:"));
    let hostname = config
        .hostname
        .filter(|h| !h.is_empty() && (short_id.is_empty() || *h != short_id))
        .filter(|_| !shares_netns);
    let domainname = config.domainname.filter(|_| !shares_netns);
    remount_anonymous_volumes(info, &mut host_config);
    normalise_ulimits(&mut host_config);

    let (networking_config, extra_networks) = networks(info, &host_config, &id, &short_id);

    let body = ContainerCreateBody {
        hostname,
        domainname,
        user: config.user,
        attach_stdin: config.attach_stdin,
        attach_stdout: config.attach_stdout,
        attach_stderr: config.attach_stderr,
        exposed_ports: config.exposed_ports,
        tty: config.tty,
        open_stdin: config.open_stdin,
        stdin_once: config.stdin_once,
        env,
        cmd: config.cmd,
        healthcheck: config.healthcheck,
        args_escaped: config.args_escaped,
        image: Some(image.to_string()),
        volumes: config.volumes,
        working_dir: config.working_dir,
        entrypoint: config.entrypoint,
        network_disabled: config.network_disabled,
        on_build: config.on_build,
        labels: config.labels,
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout,
        shell: config.shell,
        host_config: Some(host_config),
        networking_config,
    };
    Spec {
        body,
        extra_networks,
    }
}

/// Podman's inspect names ulimits the kernel's way (`RLIMIT_NOFILE`), and its create refuses
/// that name (`ulimit option "RLIMIT_NOFILE=…" requires name=SOFT:HARD`): send the name
/// `docker run --ulimit` uses (`nofile`), which Docker and Podman both accept. Docker's own
/// inspect already says `nofile`, so this changes nothing there.
fn normalise_ulimits(hc: &mut HostConfig) {
    for u in hc.ulimits.iter_mut().flatten() {
        if let Some(name) = u.name.as_mut()
            && let Some(short) = name
                .strip_prefix("RLIMIT_")
                .or_else(|| name.strip_prefix("rlimit_"))
        {
            *name = short.to_ascii_lowercase();
        }
    }
}

/// `kv` with its value replaced when its key is one of `changes`; an entry without `=` is
/// left alone.
fn changed(kv: String, changes: &[(String, String)]) -> String {
    let Some((key, _)) = kv.split_once('=') else {
        return kv;
    };
    match changes.iter().rev().find(|(k, _)| k == key) {
        Some((k, v)) => format!("{k}={v}"),
        None => kv,
    }
}

/// Anonymous volumes (an image `VOLUME`, `-v /data`, `--mount type=volume,dst=/data`) would come
/// back empty: mount each one again by its name at the same place.
fn remount_anonymous_volumes(info: &ContainerInspectResponse, hc: &mut HostConfig) {
    let bound: Vec<String> = hc
        .binds
        .iter()
        .flatten()
        .filter_map(|b| bind_target(b))
        .collect();
    for m in info.mounts.iter().flatten() {
        let (Some("volume"), Some(name), Some(dest)) = (
            m.typ.as_deref(),
            m.name.as_deref(),
            m.destination.as_deref(),
        ) else {
            continue;
        };
        if name.is_empty() || bound.iter().any(|b| b == dest) {
            continue;
        }
        // `--mount type=volume,dst=/x` without a source: give it the name it got.
        if let Some(mount) = hc
            .mounts
            .iter_mut()
            .flatten()
            .find(|hm| hm.target.as_deref() == Some(dest))
        {
            if mount.source.as_deref().unwrap_or("").is_empty() {
                mount.source = Some(name.to_string());
            }
            continue;
        }
        let ro = if m.rw == Some(false) { ":ro" } else { "" };
        hc.binds
            .get_or_insert_with(Vec::new)
            .push(format!("{name}:{dest}{ro}"));
    }
}

/// The container path of a `-v` bind (`src:dst[:opts]`, or just `dst` for an anonymous one).
fn bind_target(bind: &str) -> Option<String> {
    let parts: Vec<&str> = bind.split(':').collect();
    match parts.as_slice() {
        [dst] => Some((*dst).to_string()),
        [_, dst] | [_, dst, _] => Some((*dst).to_string()),
        _ => None,
    }
}

type Networks = (Option<NetworkingConfig>, Vec<(String, EndpointSettings)>);

/// One network in the create body, the others connected before start (API < 1.44 refuses
/// several endpoints at create time).
fn networks(
    info: &ContainerInspectResponse,
    hc: &HostConfig,
    id: &str,
    short_id: &str,
) -> Networks {
    let mode = hc.network_mode.as_deref().unwrap_or("default");
    if mode == "host" || mode == "none" || mode.starts_with("container:") {
        return (None, Vec::new());
    }
    let mut nets: Vec<(String, EndpointSettings)> = info
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| (name, endpoint(ep, id, short_id)))
        .collect();
    nets.sort_by(|a, b| a.0.cmp(&b.0));
    let primary_name = if mode == "default" { "bridge" } else { mode };
    let primary = nets
        .iter()
        .position(|(n, _)| n == primary_name)
        .unwrap_or(0);
    if nets.is_empty() {
        return (None, Vec::new());
    }
    let (name, ep) = nets.remove(primary);
    let cfg = NetworkingConfig {
        endpoints_config: Some(HashMap::from([(name, ep)])),
    };
    (Some(cfg), nets)
}

/// Keep what the user asked for on a network; drop what the engine assigned.
fn endpoint(ep: EndpointSettings, id: &str, short_id: &str) -> EndpointSettings {
    let aliases: Vec<String> = ep
        .aliases
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a != short_id && a != id)
        .collect();
    // An empty IPAMConfig is what inspect shows when no static address was asked for.
    let ipam_config = ep.ipam_config.filter(|c| {
        c.ipv4_address.as_deref().is_some_and(|a| !a.is_empty())
            || c.ipv6_address.as_deref().is_some_and(|a| !a.is_empty())
            || c.link_local_ips.as_ref().is_some_and(|l| !l.is_empty())
    });
    EndpointSettings {
        ipam_config,
        links: ep.links.filter(|l| !l.is_empty()),
        aliases: (!aliases.is_empty()).then_some(aliases),
        driver_opts: ep.driver_opts.filter(|d| !d.is_empty()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerConfig, EndpointIpamConfig, Mount, MountPoint, NetworkSettings,
    };

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn inspect() -> ContainerInspectResponse {
        let ep = |aliases: Vec<&str>, ip: Option<&str>| EndpointSettings {
            aliases: Some(aliases.into_iter().map(String::from).collect()),
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: ip.map(String::from),
                ..Default::default()
            }),
            network_id: Some("netid".into()),
            endpoint_id: Some("epid".into()),
            ip_address: Some("172.18.0.5".into()),
            mac_address: Some("02:42:ac:12:00:05".into()),
            gateway: Some("172.18.0.1".into()),
            ..Default::default()
        };
        ContainerInspectResponse {
            id: Some(ID.into()),
            config: Some(ContainerConfig {
                hostname: Some("0123456789ab".into()),
                env: Some(vec![
                    "PATH=/bin".into(),
                    "CLOUDFLARE_AUD_TAG=old".into(),
                    "CLOUDFLARE_AUD_TAG_OLD=keep".into(),
                ]),
                image: Some("busybox:1".into()),
                labels: Some(HashMap::from([("a".into(), "b".into())])),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some("appnet".into()),
                binds: Some(vec!["named:/named".into()]),
                mounts: Some(vec![Mount {
                    target: Some("/m".into()),
                    typ: Some(bollard::models::MountType::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            mounts: Some(vec![
                MountPoint {
                    typ: Some("volume".into()),
                    name: Some("named".into()),
                    destination: Some("/named".into()),
                    rw: Some(true),
                    ..Default::default()
                },
                MountPoint {
                    typ: Some("volume".into()),
                    name: Some("anon1".into()),
                    destination: Some("/data".into()),
                    rw: Some(true),
                    ..Default::default()
                },
                MountPoint {
                    typ: Some("volume".into()),
                    name: Some("anon2".into()),
                    destination: Some("/m".into()),
                    rw: Some(true),
                    ..Default::default()
                },
            ]),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([
                    (
                        "appnet".into(),
                        ep(vec!["lambda", "0123456789ab"], Some("172.18.0.50")),
                    ),
                    ("othernet".into(), ep(vec!["0123456789ab"], None)),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn one(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_string(), v.to_string())]
    }

    #[test]
    fn two_keys_are_replaced_in_one_body() {
        let mut i = inspect();
        i.config.as_mut().unwrap().env = Some(vec![
            "PATH=/bin".into(),
            "AUD_API=old-api".into(),
            "AUD_ADMIN=old-admin".into(),
            "AUD_API_OLD=keep".into(),
            "NOVALUE".into(),
        ]);
        let changes = vec![
            ("AUD_ADMIN".to_string(), "new-admin".to_string()),
            ("AUD_API".to_string(), "new-api".to_string()),
            ("AUD_MISSING".to_string(), "x".to_string()),
            ("NOVALUE".to_string(), "x".to_string()),
        ];
        let s = build(&i, &changes, "i");
        assert_eq!(
            s.body.env.unwrap(),
            vec![
                "PATH=/bin",
                "AUD_API=new-api",
                "AUD_ADMIN=new-admin",
                "AUD_API_OLD=keep",
                "NOVALUE",
            ],
            "both keys in one body, in place; a key the container does not carry is not added"
        );
        assert_eq!(
            build(&i, &[], "i").body.env.unwrap()[1],
            "AUD_API=old-api",
            "no changes: the environment as it was"
        );
    }

    #[test]
    fn only_the_key_changes_in_env() {
        let s = build(&inspect(), &one("CLOUDFLARE_AUD_TAG", "new"), "sha256:img");
        assert_eq!(
            s.body.env.unwrap(),
            vec![
                "PATH=/bin",
                "CLOUDFLARE_AUD_TAG=new",
                "CLOUDFLARE_AUD_TAG_OLD=keep"
            ]
        );
        assert_eq!(s.body.image.as_deref(), Some("sha256:img"));
        assert_eq!(s.body.labels.unwrap()["a"], "b");
    }

    #[test]
    fn podman_ulimit_names_are_sent_the_way_create_accepts_them() {
        use bollard::models::ResourcesUlimits;
        let u = |name: &str, soft: i64, hard: i64| ResourcesUlimits {
            name: Some(name.into()),
            soft: Some(soft),
            hard: Some(hard),
        };
        let mut i = inspect();
        i.host_config.as_mut().unwrap().ulimits = Some(vec![
            u("RLIMIT_NOFILE", 1024, 2048),
            u("RLIMIT_NPROC", 512, 512),
            u("core", 0, 0),
        ]);
        let hc = build(&i, &one("K", "v"), "i").body.host_config.unwrap();
        assert_eq!(
            hc.ulimits.unwrap(),
            vec![
                u("nofile", 1024, 2048),
                u("nproc", 512, 512),
                u("core", 0, 0)
            ],
            "names as `--ulimit` takes them, values kept"
        );
    }

    #[test]
    fn podmans_hostname_variable_of_a_generated_hostname_is_dropped() {
        let mut i = inspect();
        i.config.as_mut().unwrap().env = Some(vec![
            "container=podman".into(),
            "CLOUDFLARE_AUD_TAG=old".into(),
            "HOSTNAME=0123456789ab".into(),
        ]);
        let s = build(&i, &one("CLOUDFLARE_AUD_TAG", "new"), "i");
        assert_eq!(
            s.body.env.unwrap(),
            vec!["container=podman", "CLOUDFLARE_AUD_TAG=new"],
            "the engine sets HOSTNAME to the new container's own hostname"
        );
        i.config.as_mut().unwrap().env = Some(vec!["HOSTNAME=api".into()]);
        assert_eq!(
            build(&i, &[], "i").body.env.unwrap(),
            vec!["HOSTNAME=api"],
            "one the user chose is kept"
        );
    }

    #[test]
    fn a_generated_hostname_is_dropped_a_chosen_one_kept() {
        let s = build(&inspect(), &one("K", "v"), "i");
        assert_eq!(s.body.hostname, None);
        let mut i = inspect();
        i.config.as_mut().unwrap().hostname = Some("api".into());
        assert_eq!(
            build(&i, &one("K", "v"), "i").body.hostname.as_deref(),
            Some("api")
        );
    }

    #[test]
    fn anonymous_volumes_are_mounted_again_by_name() {
        let s = build(&inspect(), &one("K", "v"), "i");
        let hc = s.body.host_config.unwrap();
        assert_eq!(
            hc.binds.unwrap(),
            vec!["named:/named".to_string(), "anon1:/data".to_string()]
        );
        assert_eq!(hc.mounts.unwrap()[0].source.as_deref(), Some("anon2"));
    }

    #[test]
    fn networks_keep_aliases_and_static_ips_and_drop_runtime_fields() {
        let s = build(&inspect(), &one("K", "v"), "i");
        let eps = s.body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(eps.len(), 1, "one network at create time");
        let app = &eps["appnet"];
        assert_eq!(app.aliases.as_deref(), Some(&["lambda".to_string()][..]));
        assert_eq!(
            app.ipam_config.as_ref().unwrap().ipv4_address.as_deref(),
            Some("172.18.0.50")
        );
        assert_eq!(
            (
                &app.network_id,
                &app.endpoint_id,
                &app.ip_address,
                &app.mac_address
            ),
            (&None, &None, &None, &None)
        );
        assert_eq!(s.extra_networks.len(), 1);
        let (name, other) = &s.extra_networks[0];
        assert_eq!(name, "othernet");
        assert_eq!(other.aliases, None, "only the short-id alias was there");
        assert_eq!(other.ipam_config, None);
    }

    #[test]
    fn host_and_container_network_modes_get_no_endpoints() {
        for mode in ["host", "none", "container:abc"] {
            let mut i = inspect();
            i.host_config.as_mut().unwrap().network_mode = Some(mode.into());
            let s = build(&i, &one("K", "v"), "i");
            assert!(s.body.networking_config.is_none() && s.extra_networks.is_empty());
        }
    }

    #[test]
    fn a_container_in_another_ones_network_namespace_gets_no_hostname() {
        let mut i = inspect();
        i.config.as_mut().unwrap().hostname = Some("inherited-from-other".into());
        i.config.as_mut().unwrap().domainname = Some("example".into());
        i.host_config.as_mut().unwrap().network_mode = Some("container:0123456789abcdef".into());
        let s = build(&i, &one("K", "v"), "i");
        assert_eq!(s.body.hostname, None, "the engine refuses a hostname here");
        assert_eq!(s.body.domainname, None);
        assert!(s.body.networking_config.is_none());
    }
}
