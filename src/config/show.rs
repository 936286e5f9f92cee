//! `audsync config`: the effective configuration of `sync` / `watch`, one value a line with
//! where it came from (like `git config --show-origin`), secrets redacted. Validation problems
//! are all listed and exit 2; nothing is contacted.

use std::fmt::Write;

use super::file::{Kind, SETTINGS};
use super::{Env, Origin, Parsed, SyncConfig};
use crate::error::Error;

/// Render the configuration, or every problem found.
pub fn render(p: &Parsed) -> Result<String, Error> {
    let crate::cli::Command::Config(args) = &p.cli.command else {
        return Err(Error::usage("not the config command"));
    };
    // Credentials that would be read from Infisical at run time are not fetched here.
    let env = if super::has_cloudflare_credentials(&p.env)
        || p.env.get("INFISICAL_PROJECT_ID").is_none()
    {
        p.env.clone()
    } else {
        p.env.clone().with_fetched(
            "CLOUDFLARE_API_TOKEN",
            crate::secret::Secret::new("from-infisical-at-run-time"),
        )
    };
    let cfg = SyncConfig::build(&args.watch.sync, &env, p.file.as_ref(), &p.origins)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# effective configuration of sync / watch: <origin>\\t<key> = <value> (secrets redacted)"
    );
    if let Some(f) = &p.file {
        let _ = writeln!(out, "# config file: {}", f.path.display());
    }
    let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
    let config_cmd = cmd.find_subcommand("config");
    for (key, var, kind) in SETTINGS {
        let arg = config_cmd.and_then(|c| {
            c.get_arguments()
                .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(*var))
        });
        let (value, origin) = match value_of(p, &env, arg, var) {
            Some(v) => v,
            None => continue,
        };
        let shown = if *kind == Kind::Secret || origin == Origin::Infisical {
            "[redacted]".to_string()
        } else {
            format!("{value:?}")
        };
        let _ = writeln!(out, "{origin}\t{key} = {shown}");
    }
    if cfg.notify.enabled() {
        // The URLs carry tokens: kind, scheme and host only.
        let origin = match (p.origins.get("notify"), &p.file) {
            (Some(o), _) if *o != Origin::Default => o.to_string(),
            (_, Some(f)) => {
                Origin::File(f.path.clone(), f.notify.first().map_or(0, |n| n.line)).to_string()
            }
            _ => Origin::Default.to_string(),
        };
        let shown: Vec<String> = cfg
            .notify
            .endpoints
            .iter()
            .map(|e| format!("{:?}", format!("{e} [redacted]")))
            .collect();
        let _ = writeln!(out, "{origin}\tnotify = [{}]", shown.join(", "));
    }
    for (i, b) in cfg.bindings.iter().enumerate() {
        let fb = p
            .file
            .as_ref()
            .and_then(|f| f.bindings.get(i))
            .filter(|_| !cfg.flag_binding);
        let origin_of = |field: &str, flag_id: &str| -> String {
            match fb.and_then(|fb| fb.get(field)) {
                Some(at) => Origin::File(
                    p.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
                    at.line,
                )
                .to_string(),
                None => p
                    .origins
                    .get(flag_id)
                    .cloned()
                    .unwrap_or(Origin::Default)
                    .to_string(),
            }
        };
        let line_of = |l: Option<usize>, flag_id: &str| -> String {
            match (fb, l) {
                (Some(_), Some(l)) => Origin::File(
                    p.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
                    l,
                )
                .to_string(),
                _ => p
                    .origins
                    .get(flag_id)
                    .cloned()
                    .unwrap_or(Origin::Default)
                    .to_string(),
            }
        };
        let n = i + 1;
        let head = fb
            .map(|fb| {
                Origin::File(
                    p.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
                    fb.line,
                )
                .to_string()
            })
            .unwrap_or_else(|| "flags".into());
        let _ = writeln!(out, "{head}\tbinding[{n}] = {:?}", b.id);
        match &b.source.selector {
            super::Selector::Host(h) => {
                let _ = writeln!(
                    out,
                    "{}\tbinding[{n}].domain = {h:?}",
                    origin_of("domain", "domain")
                );
            }
            super::Selector::AppId(a) => {
                let _ = writeln!(
                    out,
                    "{}\tbinding[{n}].app_id = {a:?}",
                    origin_of("app_id", "app_id")
                );
            }
        }
        let _ = writeln!(
            out,
            "{}\tbinding[{n}].key = {:?}",
            origin_of("key", "key"),
            b.key
        );
        let sinks: Vec<String> = b
            .sinks
            .iter()
            .map(|s| match s {
                super::BindingSink::Env(p) => format!("{{ env = {:?} }}", p.display().to_string()),
                super::BindingSink::Infisical(p) => format!("{{ infisical = {p:?} }}"),
            })
            .collect();
        let _ = writeln!(
            out,
            "{}\tbinding[{n}].sinks = [{}]",
            line_of(fb.and_then(|f| f.sinks_line), "sinks"),
            sinks.join(", ")
        );
        let targets: Vec<String> = b
            .targets
            .iter()
            .map(|t| match t {
                super::BindingTarget::Container(c) => format!("{{ container = {c:?} }}"),
                super::BindingTarget::ComposeService { project, service } => {
                    format!("{{ compose_service = \"{project}/{service}\" }}")
                }
                super::BindingTarget::SwarmService(s) => format!("{{ swarm_service = {s:?} }}"),
                super::BindingTarget::Exec(w) => format!("{{ exec = {w:?} }}"),
            })
            .collect();
        let _ = writeln!(
            out,
            "{}\tbinding[{n}].targets = [{}]",
            line_of(fb.and_then(|f| f.targets_line), "containers"),
            targets.join(", ")
        );
        let restart = serde_json::to_value(b.restart)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let restart_origin = match p.origins.get("restart") {
            Some(o @ (Origin::Flag | Origin::Env(_) | Origin::EnvFile(..))) => o.to_string(),
            _ => origin_of("restart", "restart"),
        };
        let _ = writeln!(out, "{restart_origin}\tbinding[{n}].restart = {restart:?}");
        if let Some(t) = &b.tunnel_id {
            let _ = writeln!(
                out,
                "{}\tbinding[{n}].tunnel_id = {t:?}",
                origin_of("tunnel_id", "tunnel_id")
            );
        }
        if b.source.edge.is_some() {
            let _ = writeln!(
                out,
                "{}\tbinding[{n}].source = \"edge\"",
                origin_of("source", "origin")
            );
        }
    }
    let state_origin = p
        .origins
        .get("state_file")
        .cloned()
        .unwrap_or(Origin::Default);
    let _ = writeln!(
        out,
        "{state_origin}\tstate_file = {:?}",
        cfg.state_file.display().to_string()
    );
    let _ = writeln!(
        out,
        "default\tlock_file = {:?}",
        cfg.lock_file.display().to_string()
    );
    Ok(out)
}

/// A setting's value and origin: a flag, a layer, or clap's default.
fn value_of(p: &Parsed, env: &Env, arg: Option<&clap::Arg>, var: &str) -> Option<(String, Origin)> {
    if let Some(a) = arg
        && p.origins.get(a.get_id().as_str()) == Some(&Origin::Flag)
    {
        let v = p
            .matches
            .as_ref()
            .and_then(|m| m.get_raw(a.get_id().as_str()))
            .map(|vals| {
                vals.map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        return Some((v, Origin::Flag));
    }
    if let Some(found) = env.lookup(var) {
        return Some(found);
    }
    let a = arg?;
    let d: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    (!d.is_empty()).then(|| (d.join(","), Origin::Default))
}
