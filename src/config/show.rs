//! `audsync config`: the effective configuration of `sync` / `watch`, one value a line with
//! where it came from (like `git config --show-origin`), secrets redacted. Validation problems
//! are all listed and exit 2. Nothing is contacted, except that with `--discover` the caller
//! asks the engine which bindings labels make and adds them ([`Shown::add_discovered`]), each
//! with its origin (`label on container X`).

use serde_json::{Value, json};

use super::file::{Kind, SETTINGS};
use super::{Binding, Env, Origin, Parsed, SyncConfig};
use crate::error::Error;

/// The configuration as shown, before discovered bindings are added.
pub struct Shown {
    cfg: SyncConfig,
    entries: Entries,
    /// Where discovered bindings go: after the configured ones, before the files.
    at: usize,
    warnings: Vec<String>,
    file: Option<String>,
    output: super::Output,
}

impl Shown {
    /// The validated configuration shown (for discovery).
    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    /// Add the bindings labels make, numbered after the configured ones, each value with the
    /// binding's origin; and what discovery refused or left out (warnings).
    pub fn add_discovered(&mut self, found: &[Binding], warnings: &[String]) {
        let mut out = Entries::default();
        for (i, b) in found.iter().enumerate() {
            let n = self.cfg.bindings.len() + i + 1;
            let origin = b.origin.clone().unwrap_or_else(|| "label".into());
            out.put(&origin, format!("binding[{n}]"), b.id.as_str());
            match &b.source.selector {
                super::Selector::Host(h) => {
                    out.put(&origin, format!("binding[{n}].domain"), h.as_str())
                }
                super::Selector::AppId(a) => {
                    out.put(&origin, format!("binding[{n}].app_id"), a.as_str())
                }
            }
            out.put(&origin, format!("binding[{n}].key"), b.key.as_str());
            out.put(&origin, format!("binding[{n}].sinks"), sinks_value(b));
            out.put(&origin, format!("binding[{n}].targets"), targets_value(b));
            out.put(&origin, format!("binding[{n}].restart"), restart_value(b));
        }
        let len = out.0.len();
        self.entries.0.splice(self.at..self.at, out.0);
        self.at += len;
        self.warnings.extend(warnings.iter().cloned());
    }

    /// Text (one value a line) or JSON, as `--output` says.
    pub fn render(&self) -> String {
        match self.output {
            super::Output::Text => self.entries.text(self.file.as_deref(), &self.warnings),
            super::Output::Json => self.entries.json(self.file.as_deref(), &self.warnings),
        }
    }
}

/// Render the configuration (without discovered bindings), or every problem found.
pub fn render(p: &Parsed) -> Result<String, Error> {
    prepare(p).map(|s| s.render())
}

/// Build the configuration to show, or every problem found.
pub fn prepare(p: &Parsed) -> Result<Shown, Error> {
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
    let mut out = Entries::default();
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
        } else if matches!(*var, "CLOUDFLARE_API_URL" | "INFISICAL_HOST") {
            redact_url(&value)
        } else {
            value
        };
        out.put(origin, *key, shown);
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
        let shown: Vec<Value> = cfg
            .notify
            .endpoints
            .iter()
            .map(|e| json!(format!("{e} [redacted]")))
            .collect();
        out.put(origin, "notify", shown);
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
        out.put(head, format!("binding[{n}]"), b.id.as_str());
        match &b.source.selector {
            super::Selector::Host(h) => {
                out.put(
                    origin_of("domain", "domain"),
                    format!("binding[{n}].domain"),
                    h.as_str(),
                );
            }
            super::Selector::AppId(a) => {
                out.put(
                    origin_of("app_id", "app_id"),
                    format!("binding[{n}].app_id"),
                    a.as_str(),
                );
            }
        }
        out.put(
            origin_of("key", "key"),
            format!("binding[{n}].key"),
            b.key.as_str(),
        );
        let sinks = sinks_value(b);
        out.put(
            line_of(fb.and_then(|f| f.sinks_line), "sinks"),
            format!("binding[{n}].sinks"),
            sinks,
        );
        let targets = targets_value(b);
        out.put(
            line_of(fb.and_then(|f| f.targets_line), "containers"),
            format!("binding[{n}].targets"),
            targets,
        );
        let restart = restart_value(b);
        let restart_origin = match p.origins.get("restart") {
            Some(o @ (Origin::Flag | Origin::Env(_) | Origin::EnvFile(..))) => o.to_string(),
            _ => origin_of("restart", "restart"),
        };
        out.put(restart_origin, format!("binding[{n}].restart"), restart);
        if let Some(t) = &b.tunnel_id {
            out.put(
                origin_of("tunnel_id", "tunnel_id"),
                format!("binding[{n}].tunnel_id"),
                t.as_str(),
            );
        }
        if b.source.edge.is_some() {
            out.put(
                origin_of("source", "origin"),
                format!("binding[{n}].source"),
                "edge",
            );
        }
    }
    let at = out.0.len();
    let state_origin = p
        .origins
        .get("state_file")
        .cloned()
        .unwrap_or(Origin::Default);
    out.put(
        state_origin,
        "state_file",
        cfg.state_file.display().to_string(),
    );
    out.put(
        Origin::Default,
        "lock_file",
        cfg.lock_file.display().to_string(),
    );
    Ok(Shown {
        cfg,
        entries: out,
        at,
        warnings: Vec::new(),
        file: p.file.as_ref().map(|f| f.path.display().to_string()),
        output: super::Output::from(args.watch.sync.output),
    })
}

fn sinks_value(b: &Binding) -> Vec<Value> {
    b.sinks
        .iter()
        .map(|s| match s {
            super::BindingSink::Env(p) => json!({ "env": p.display().to_string() }),
            super::BindingSink::Infisical(p) => json!({ "infisical": p }),
        })
        .collect()
}

fn targets_value(b: &Binding) -> Vec<Value> {
    b.targets
        .iter()
        .map(|t| match t {
            super::BindingTarget::Container(c) => json!({ "container": c }),
            super::BindingTarget::ComposeService { project, service } => {
                json!({ "compose_service": format!("{project}/{service}") })
            }
            super::BindingTarget::SwarmService(s) => json!({ "swarm_service": s }),
            super::BindingTarget::Exec(w) => json!({ "exec": w }),
        })
        .collect()
}

fn restart_value(b: &Binding) -> String {
    serde_json::to_value(b.restart)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The values shown, in order: (origin, key, value). A secret is already `[redacted]`.
#[derive(Default)]
struct Entries(Vec<(String, String, Value)>);

impl Entries {
    fn put(&mut self, origin: impl ToString, key: impl Into<String>, value: impl Into<Value>) {
        self.0.push((origin.to_string(), key.into(), value.into()));
    }

    /// One value a line: `<origin>\t<key> = <value>`; discovery's warnings as `#` lines.
    fn text(&self, file: Option<&str>, warnings: &[String]) -> String {
        let mut out = String::from(
            "# effective configuration of sync / watch: <origin>\\t<key> = <value> (secrets redacted)\n",
        );
        if let Some(f) = file {
            out.push_str(&format!("# config file: {f}\n"));
        }
        for (origin, key, value) in &self.0 {
            let origin = crate::shown::outside(origin);
            out.push_str(&format!("{origin}\t{key} = {}\n", shown(value)));
        }
        for w in warnings {
            out.push_str(&format!("# discover: {}\n", crate::shown::outside(w)));
        }
        out
    }

    /// One JSON object: `{"schema": 1, "config_file", "values": [{"key", "value", "origin"}]}`,
    /// and `warnings` when discovery refused or left something out.
    fn json(&self, file: Option<&str>, warnings: &[String]) -> String {
        let values: Vec<Value> = self
            .0
            .iter()
            .map(|(origin, key, value)| json!({ "key": key, "value": value, "origin": origin }))
            .collect();
        let mut doc = json!({ "schema": 1, "config_file": file, "values": values });
        if !warnings.is_empty() {
            doc["warnings"] = json!(warnings);
        }
        format!("{doc}\n")
    }
}

/// A value as the text lines show it: strings quoted, `[{ env = "…" }, …]` lists.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) if s == "[redacted]" => s.clone(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(shown).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(m) => {
            let fields: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k} = {}", shown(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        other => other.to_string(),
    }
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

/// A URL setting as shown: `user:password@` and every query value replaced by `[redacted]`
/// (they may carry credentials); a value that does not parse as a URL is not shown at all.
pub fn redact_url(value: &str) -> String {
    let Ok(u) = url::Url::parse(value) else {
        return "[redacted: not a URL]".into();
    };
    if u.username().is_empty()
        && u.password().is_none()
        && u.query().is_none()
        && u.fragment().is_none()
    {
        return value.to_string();
    }
    let mut out = format!("{}://", u.scheme());
    if !u.username().is_empty() || u.password().is_some() {
        out.push_str("[redacted]@");
    }
    out.push_str(u.host_str().unwrap_or(""));
    if let Some(port) = u.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(u.path());
    if u.query().is_some() {
        let pairs: Vec<String> = u
            .query_pairs()
            .map(|(k, _)| format!("{k}=[redacted]"))
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn url_settings_lose_their_userinfo_and_query_values() {
        let r = super::redact_url(
            "https://admin:hunter2@api.example.com:8443/client/v4?token=abc123&x=1",
        );
        assert_eq!(
            r,
            "https://[redacted]@api.example.com:8443/client/v4?token=[redacted]&x=[redacted]"
        );
        assert_eq!(
            super::redact_url("https://app.infisical.com"),
            "https://app.infisical.com"
        );
        assert!(!super::redact_url("not a url hunter2").contains("hunter2"));
    }
}
