//! `--discover`: bindings from labels, judged each pass before anything is locked.
//!
//! A container or Swarm service labelled `audsync.domain=HOST` becomes a binding. Labels are
//! forgeable (anyone who may create a container writes any label, compose's included), so a
//! label never chooses the file written on its own:
//!
//! - a compose container's working directory must hold the compose file its labels name, that
//!   file must be its directory owner's alone, and it must define the service *with the same
//!   `audsync.domain` label* (the service is identified by the file on disk, not by labels);
//!   every container of the service must name the same directory, and the project name must be
//!   the directory's (or the file's `name:`);
//! - the project's `.env` is a sink only under a root of the trusted configuration
//!   (`discover_roots`), when it is a regular file that passes [`trusted_env_file`] and holds
//!   the key; otherwise the containers' environment is all that changes (with a warning);
//! - a directory outside the roots, a `.env` that fails the trust rule, a directory without
//!   its compose file: refused, named in a warning, nothing written.
//!
//! Bindings of the configuration win; two discovered bindings of one key in one `.env` with
//! different domains are refused both; at most [`MAX_DISCOVERED`] are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::discover::{
    DiscoverConfig, Found, LABEL_DOMAIN, LABEL_KEY, LABEL_NAME, LABEL_RESTART, MAX_DISCOVERED,
};
use crate::config::{Binding, BindingSink, BindingTarget, SyncConfig};
use crate::docker::labels::{Kind, Labelled};

const PROJECT: &str = "com.docker.compose.project";
const SERVICE: &str = "com.docker.compose.service";
const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
const ONEOFF: &str = "com.docker.compose.oneoff";

/// The largest compose file read.
const MAX_COMPOSE_FILE: u64 = 1 << 20;

/// What a pass found: the bindings to add, and what was refused or left out (each a warning).
#[derive(Debug, Default)]
pub(crate) struct Discovery {
    pub bindings: Vec<Binding>,
    pub warnings: Vec<String>,
    /// The engine could not be asked: nothing was judged, so nothing may be called in sync.
    pub unreachable: Option<String>,
}

/// The configuration with the discovered bindings added (the configuration's own first).
/// With the engine unreachable, the third part says so (the labelled services were not
/// looked at).
pub(crate) async fn with_discovered(cfg: &SyncConfig) -> (SyncConfig, Vec<String>, Option<String>) {
    let mut out = cfg.clone();
    let Some(d) = &cfg.discover else {
        return (out, vec![], None);
    };
    let found = discover(cfg, d).await;
    out.bindings.extend(found.bindings);
    (out, found.warnings, found.unreachable)
}

/// The bindings labels make and what was refused (nothing without `--discover`), for
/// `audsync config`: judged exactly as a pass judges them, nothing written.
pub(crate) async fn discovered(cfg: &SyncConfig) -> Discovery {
    match &cfg.discover {
        Some(d) => discover(cfg, d).await,
        None => Discovery::default(),
    }
}

async fn discover(cfg: &SyncConfig, d: &DiscoverConfig) -> Discovery {
    let engine = match crate::docker::Engine::connect(&cfg.docker_host).await {
        Ok(e) => e,
        Err(e) => return unreachable(&e.message),
    };
    match engine.labelled(LABEL_DOMAIN).await {
        Ok(objects) => judge(&objects, d, &cfg.bindings),
        Err(e) => unreachable(&e.message),
    }
}

fn unreachable(why: &str) -> Discovery {
    let message = format!("--discover: the labelled containers could not be listed: {why}");
    Discovery {
        bindings: vec![],
        warnings: vec![message.clone()],
        unreachable: Some(message),
    }
}

/// The roots as real paths (a root that does not exist holds nothing).
fn real_roots(d: &DiscoverConfig) -> Vec<PathBuf> {
    d.roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect()
}

/// Every labelled object judged; the survivors merged, checked against the configured bindings
/// and capped.
pub(crate) fn judge(objects: &[Labelled], d: &DiscoverConfig, configured: &[Binding]) -> Discovery {
    let roots = real_roots(d);
    let mut out = Discovery::default();
    // The directory each compose service's containers name: a service named from two
    // directories is being joined by a forged container, and is refused whole.
    let mut dirs: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for o in objects.iter().filter(|o| o.kind == Kind::Container) {
        if let (Some(p), Some(s)) = (o.labels.get(PROJECT), o.labels.get(SERVICE)) {
            dirs.entry((p.clone(), s.clone()))
                .or_default()
                .insert(o.labels.get(WORKING_DIR).cloned().unwrap_or_default());
        }
    }
    let mut found: Vec<Found> = Vec::new();
    let mut seen_targets: BTreeSet<BindingTarget> = BTreeSet::new();
    for o in objects {
        if o.labels
            .get(ONEOFF)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            continue;
        }
        if let Some(scope) = &d.scope {
            let name = match (o.kind, o.labels.get(PROJECT)) {
                (Kind::Container, Some(p)) => p,
                _ => &o.name,
            };
            if !name.starts_with(scope.as_str()) {
                continue;
            }
        }
        if o.kind == Kind::Container && crate::docker::labels::base_name(&o.name) != o.name {
            // A recreate's temporary stands for a container judged under its own name.
            continue;
        }
        match judge_one(o, &roots, &d.trust, &dirs) {
            Ok((f, warning)) => {
                // Every replica of a compose service says the same: one binding.
                if f.targets.iter().all(|t| seen_targets.contains(t)) {
                    continue;
                }
                seen_targets.extend(f.targets.iter().cloned());
                if let Some(w) = warning {
                    out.warnings.push(w);
                }
                found.push(f);
            }
            Err(why) => out.warnings.push(format!(
                "--discover: refused the label on {}: {why}; nothing is written for it",
                what(o)
            )),
        }
    }
    // One key in one `.env` has one source: the same domain is one binding, two domains are a
    // conflict, neither applied.
    let mut by_sink: BTreeMap<(BindingSink, String), Vec<usize>> = BTreeMap::new();
    for (i, f) in found.iter().enumerate() {
        for s in &f.sinks {
            by_sink
                .entry((s.clone(), DiscoverConfig::key_of(f.key.as_deref())))
                .or_default()
                .push(i);
        }
    }
    let mut dropped: BTreeSet<usize> = BTreeSet::new();
    for ((sink, key), ix) in &by_sink {
        let domains: BTreeSet<&str> = ix.iter().map(|&i| found[i].domain.as_str()).collect();
        if domains.len() > 1 {
            let names: Vec<&str> = ix.iter().map(|&i| found[i].origin.as_str()).collect();
            out.warnings.push(format!(
                "--discover: conflict: {} name {key} in {} with different domains; neither is applied",
                names.join(" and "),
                sink_name(sink)
            ));
            dropped.extend(ix.iter().copied());
        } else if let [first, rest @ ..] = ix.as_slice() {
            for &i in rest {
                if dropped.insert(i) {
                    let targets = found[i].targets.clone();
                    found[*first].targets.extend(targets);
                }
            }
        }
    }
    let mut bindings = Vec::new();
    for (i, f) in found.iter().enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        match d.binding(f) {
            Ok(b) => {
                if let Some(c) = configured.iter().find(|c| overlaps(c, &b)) {
                    tracing::info!(
                        binding = %c.id,
                        "--discover: the configuration's binding wins over the {}",
                        f.origin
                    );
                    continue;
                }
                bindings.push(b);
            }
            Err(e) => out.warnings.push(format!(
                "--discover: refused the {}: {e}; nothing is written for it",
                f.origin
            )),
        }
    }
    if bindings.len() > MAX_DISCOVERED {
        let left: Vec<String> = bindings
            .drain(MAX_DISCOVERED..)
            .filter_map(|b| b.origin)
            .collect();
        out.warnings.push(format!(
            "--discover: at most {MAX_DISCOVERED} discovered bindings; left out: {}",
            left.join(", ")
        ));
    }
    out.bindings = bindings;
    out
}

/// A configured binding covers a discovered one: the same key in a shared sink or target.
fn overlaps(configured: &Binding, discovered: &Binding) -> bool {
    configured.key == discovered.key
        && (configured
            .sinks
            .iter()
            .any(|s| discovered.sinks.contains(s))
            || configured
                .targets
                .iter()
                .any(|t| discovered.targets.contains(t)))
}

fn sink_name(s: &BindingSink) -> String {
    match s {
        BindingSink::Env(p) => p.display().to_string(),
        BindingSink::Infisical(p) => format!("Infisical {p}"),
    }
}

fn what(o: &Labelled) -> String {
    match o.kind {
        Kind::Container => format!("container {}", o.name),
        Kind::SwarmService => format!("Swarm service {}", o.name),
    }
}

/// One labelled object: what it asks for, with a warning when only the containers' environment
/// changes although the `.env` would undo it; `Err`: why it is refused.
fn judge_one(
    o: &Labelled,
    roots: &[PathBuf],
    trust: &crate::config::trust::Context,
    dirs: &BTreeMap<(String, String), BTreeSet<String>>,
) -> Result<(Found, Option<String>), Refusal> {
    let label = |k: &str| o.labels.get(k).map(|v| v.trim().to_string());
    let domain = label(LABEL_DOMAIN).filter(|d| !d.is_empty());
    let Some(domain) = domain else {
        return Err(Refusal(format!("{LABEL_DOMAIN} is empty")));
    };
    let mut f = Found {
        domain,
        key: label(LABEL_KEY),
        restart: label(LABEL_RESTART),
        name: label(LABEL_NAME),
        sinks: vec![],
        targets: vec![],
        origin: format!("label on {}", what(o)),
    };
    let compose = (o.kind == Kind::Container)
        .then(|| Some((o.labels.get(PROJECT)?, o.labels.get(SERVICE)?)))
        .flatten();
    let Some((project, service)) = compose else {
        f.targets.push(match o.kind {
            Kind::Container => BindingTarget::Container(o.name.clone()),
            Kind::SwarmService => BindingTarget::SwarmService(o.name.clone()),
        });
        return Ok((f, None));
    };
    let key = DiscoverConfig::key_of(f.key.as_deref());
    let named = dirs
        .get(&(project.clone(), service.clone()))
        .map_or(0, BTreeSet::len);
    if named > 1 {
        return Err(Refusal(format!(
            "the containers of compose service {project}/{service} name {named} different working directories (a forged label joins the service)"
        )));
    }
    let dir = checked_project(o, project, service, &f.domain)?;
    f.targets.push(BindingTarget::ComposeService {
        project: project.clone(),
        service: service.clone(),
    });
    let undone = |why: &str| {
        format!(
            "--discover: the {} changes the containers' environment only ({why}): the next `docker compose up -d` undoes it unless {key} moves into {}",
            f.origin,
            dir.join(".env").display()
        )
    };
    if roots.is_empty() {
        return Ok((f.clone(), Some(undone("no --discover-root is set"))));
    }
    if !roots.iter().any(|r| dir.starts_with(r)) {
        return Err(Refusal(format!(
            "its working directory {} lies outside the discovery roots",
            dir.display()
        )));
    }
    let env = dir.join(".env");
    match std::fs::symlink_metadata(&env) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((f.clone(), Some(undone("the project has no .env"))));
        }
        Err(e) => return Err(Refusal(format!("cannot check {}: {e}", env.display()))),
        Ok(_) => {}
    }
    trusted_env_file(&env, &dir, trust)?;
    let holds = std::fs::read_to_string(&env)
        .ok()
        .and_then(|s| crate::sink::env::parse(&s).ok())
        .is_some_and(|m| m.contains_key(&key));
    if !holds {
        return Ok((
            f.clone(),
            Some(undone(&format!("{} does not hold {key}", env.display()))),
        ));
    }
    f.sinks.push(BindingSink::Env(env));
    Ok((f, None))
}

/// Why a labelled object is not taken (named in the report; never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal(String);

impl From<String> for Refusal {
    fn from(s: String) -> Self {
        Refusal(s)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The trust rule for a discovered `.env`: a regular file (not a symlink, which a neighbour
/// could point anywhere), that the trust rule of settings files accepts (`config::trust`: its
/// owner and every directory up to `/`), and owned by the owner of the project directory.
pub(crate) fn trusted_env_file(
    env: &Path,
    dir: &Path,
    trust: &crate::config::trust::Context,
) -> Result<(), Refusal> {
    let m = std::fs::symlink_metadata(env)
        .map_err(|e| Refusal(format!("cannot check {}: {e}", env.display())))?;
    if !m.file_type().is_file() {
        return Err(Refusal(format!("{} is not a regular file", env.display())));
    }
    let facts = crate::config::trust::read(env, crate::fsx::MAX_TEXT, trust)
        .map_err(|e| Refusal(format!("cannot check {}: {e}", env.display())))?
        .map(|(_, f)| f)
        .ok_or_else(|| Refusal(format!("{} does not exist", env.display())))?;
    if let Err(why) = &facts.verdict {
        return Err(Refusal(format!("{}: {why}", env.display())));
    }
    let d = std::fs::metadata(dir)
        .map_err(|e| Refusal(format!("cannot check {}: {e}", dir.display())))?;
    if m.uid() != d.uid() {
        return Err(Refusal(format!(
            "{} is owned by uid {}, not by the owner of {} (uid {})",
            env.display(),
            m.uid(),
            dir.display(),
            d.uid()
        )));
    }
    Ok(())
}

/// The compose project directory of a labelled compose container, when the files on disk
/// confirm its labels: the directory exists, holds the compose files the labels name (owned by
/// the directory's owner, writable by nobody else), one of which defines `service` with
/// `audsync.domain=domain`, and `project` is the directory's project.
fn checked_project(
    o: &Labelled,
    project: &str,
    service: &str,
    domain: &str,
) -> Result<PathBuf, Refusal> {
    let Some(wd) = o.labels.get(WORKING_DIR).filter(|d| !d.is_empty()) else {
        return Err(Refusal(format!(
            "it names no compose working directory ({WORKING_DIR})"
        )));
    };
    let dir = std::fs::canonicalize(wd)
        .map_err(|_| format!("its working directory {wd} does not exist"))?;
    let owner = std::fs::metadata(&dir)
        .map_err(|e| Refusal(format!("cannot check {}: {e}", dir.display())))?
        .uid();
    let files: Vec<&str> = o
        .labels
        .get(CONFIG_FILES)
        .map(|f| {
            f.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if files.is_empty() {
        return Err(Refusal(format!(
            "it names no compose file ({CONFIG_FILES})"
        )));
    }
    let mut defines = false;
    let mut names: Vec<String> = Vec::new();
    for f in files {
        let path = dir.join(f);
        let real = std::fs::canonicalize(&path).map_err(|_| {
            format!(
                "its working directory {} holds no compose file {f}",
                dir.display()
            )
        })?;
        if !real.starts_with(&dir) {
            return Err(Refusal(format!(
                "its compose file {f} is not inside its working directory {}",
                dir.display()
            )));
        }
        let m = std::fs::metadata(&real).map_err(|e| Refusal(format!("cannot check {f}: {e}")))?;
        if !m.is_file() || m.uid() != owner || m.mode() & 0o022 != 0 || m.len() > MAX_COMPOSE_FILE {
            return Err(Refusal(format!(
                "its compose file {} is not a file of the directory's owner alone",
                real.display()
            )));
        }
        let text = std::fs::read_to_string(&real)
            .map_err(|_| format!("cannot read its compose file {}", real.display()))?;
        let doc: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|_| format!("its compose file {} does not parse", real.display()))?;
        if let Some(n) = doc.get("name").and_then(|n| n.as_str()) {
            names.push(n.to_string());
        }
        if service_label(&doc, service, LABEL_DOMAIN).as_deref() == Some(domain) {
            defines = true;
        }
    }
    if !defines {
        return Err(Refusal(format!(
            "no compose file in {} gives service {service} the label {LABEL_DOMAIN}={domain}",
            dir.display()
        )));
    }
    let dir_name = dir
        .file_name()
        .map(|n| project_name(&n.to_string_lossy()))
        .unwrap_or_default();
    if project != dir_name && !names.iter().any(|n| n == project) {
        return Err(Refusal(format!(
            "its compose project {project} is not the project of {}",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Compose's project name for a directory name: lower case, only `[a-z0-9_-]`.
fn project_name(dir: &str) -> String {
    dir.to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

/// The value of label `key` on `service` in a compose document (labels as a map or a list of
/// `key=value`).
fn service_label(doc: &serde_yaml::Value, service: &str, key: &str) -> Option<String> {
    let labels = doc.get("services")?.get(service)?.get("labels")?;
    let scalar = |v: &serde_yaml::Value| match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match labels {
        serde_yaml::Value::Mapping(m) => m.get(key).and_then(scalar),
        serde_yaml::Value::Sequence(items) => items.iter().find_map(|i| {
            let (k, v) = i.as_str()?.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        }),
        _ => None,
    }
    .map(|v| v.trim().to_string())
}
