//! Remotely-managed tunnel ingress: read the configuration, require Access on the rule for a
//! host (`originRequest.access`), and keep that rule's `audTag` current.
//!
//! The configuration is handled as generic JSON from GET to PUT: typed structs would drop fields
//! this program does not know, and the PUT replaces the whole configuration. The functions here
//! change only `originRequest.access` of the rules whose `hostname` is the host, never reorder
//! rules, and never write to a locally-managed tunnel (a PUT would turn it into a remotely
//! managed one behind its owner's back).

use serde_json::{Map, Value, json};

use super::edge::Team;
use super::{Client, Error};

/// Why the rule for a host cannot be managed here; each message says what to do instead. What
/// the configuration says (its rules' hostnames, its `source`) is shown through the sanitiser:
/// the message has lines of its own (`hint: …`), so no outside string may add one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngressError {
    #[error(
        "tunnel {tunnel_id} is locally managed (source \"{}\"): its ingress lives in cloudflared's own config file, which this program does not edit.\n{}",
        crate::shown::outside(.source_kind),
        local_instructions(.host, .team, .aud)
    )]
    Local {
        tunnel_id: String,
        source_kind: String,
        host: String,
        team: String,
        aud: String,
    },
    #[error(
        "tunnel {tunnel_id} has no ingress rule for {host} (rules: {}).\nhint: add a public hostname {host} to the tunnel (Zero Trust > Networks > Tunnels > the tunnel > Public Hostname > Add), then run this again; or unset CLOUDFLARE_TUNNEL_ID if {host} is not served through this tunnel",
        list(.hostnames)
    )]
    NoRule {
        tunnel_id: String,
        host: String,
        hostnames: Vec<String>,
    },
    #[error(
        "tunnel {tunnel_id}: {host} is served only by the wildcard rule \"{}\"; requiring Access there would demand this application's token on every host it covers.\nhint: add a public hostname {host} (same service) above the wildcard rule, then run this again",
        crate::shown::outside(.wildcard)
    )]
    OnlyWildcard {
        tunnel_id: String,
        host: String,
        wildcard: String,
    },
    #[error(
        "tunnel {tunnel_id}: the configuration has no `ingress` list; add a public hostname {host} to the tunnel first"
    )]
    NoIngress { tunnel_id: String, host: String },
    #[error(
        "tunnel {tunnel_id}: the rule for {host} requires Access but names no teamName; cloudflared refuses an audTag without a teamName (and then applies none of the remote configuration), so audTag was not written.\nhint: set CLOUDFLARE_TEAM_NAME (or CLOUDFLARE_AUTH_DOMAIN=https://<team>.cloudflareaccess.com) so the rule gets its teamName, or set the team on the route in the dashboard (Networks > Tunnels > the tunnel > Public Hostname > Access)"
    )]
    NoTeam { tunnel_id: String, host: String },
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter()
            .map(|h| crate::shown::outside(h))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn local_instructions(host: &str, team: &str, aud: &str) -> String {
    format!(
        "hint: in cloudflared's config.yml, give the ingress rule for {host} this originRequest, restart cloudflared, and unset CLOUDFLARE_TUNNEL_ID so this step is skipped:\n  - hostname: {host}\n    service: <unchanged>\n    originRequest:\n      access:\n        required: true\n        teamName: {team}\n        audTag:\n          - {aud}"
    )
}

/// The `source` of a configuration answer: `cloudflare` (remote) or `local`.
pub fn source_of(answer: &Value) -> &str {
    answer.get("source").and_then(Value::as_str).unwrap_or("")
}

/// The `config` object of a configuration answer.
pub fn config_of(answer: &Value) -> &Value {
    answer.get("config").unwrap_or(&Value::Null)
}

fn hostname(rule: &Value) -> Option<String> {
    rule.get("hostname")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
}

/// Indices of the rules whose hostname is exactly `host` (every path of it).
fn rule_indices(config: &Value, tunnel_id: &str, host: &str) -> Result<Vec<usize>, IngressError> {
    let host = host.to_ascii_lowercase();
    let Some(rules) = config.get("ingress").and_then(Value::as_array) else {
        return Err(IngressError::NoIngress {
            tunnel_id: tunnel_id.into(),
            host,
        });
    };
    let exact: Vec<usize> = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| hostname(r).as_deref() == Some(host.as_str()))
        .map(|(i, _)| i)
        .collect();
    if !exact.is_empty() {
        return Ok(exact);
    }
    // cloudflared's `matchHost` (ingress/ingress.go): `*.example.com` matches by suffix, at
    // any depth (`a.example.com`, `a.b.example.com`), never `example.com` itself.
    let wildcard = rules
        .iter()
        .filter_map(hostname)
        .find(|h| wildcard_matches(h, &host));
    if let Some(w) = wildcard {
        return Err(IngressError::OnlyWildcard {
            tunnel_id: tunnel_id.into(),
            host,
            wildcard: w,
        });
    }
    Err(IngressError::NoRule {
        tunnel_id: tunnel_id.into(),
        host,
        hostnames: rules
            .iter()
            .map(|r| hostname(r).unwrap_or_else(|| "(catch-all)".into()))
            .collect(),
    })
}

/// Whether the rule hostname `rule` (`*.example.com`) matches `host` as cloudflared matches it.
pub fn wildcard_matches(rule: &str, host: &str) -> bool {
    rule.strip_prefix('*')
        .filter(|suffix| suffix.starts_with('.'))
        .is_some_and(|suffix| host.len() > suffix.len() && host.ends_with(suffix))
}

/// What `originRequest.access` of one rule for the host says.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleAccess {
    pub index: usize,
    pub path: Option<String>,
    pub required: bool,
    pub team: Option<String>,
    pub aud_tags: Vec<String>,
}

/// The access settings of every rule for `host`.
pub fn access_of(
    config: &Value,
    tunnel_id: &str,
    host: &str,
) -> Result<Vec<RuleAccess>, IngressError> {
    let idx = rule_indices(config, tunnel_id, host)?;
    Ok(idx
        .into_iter()
        .map(|i| {
            let rule = &config["ingress"][i];
            let access = &rule["originRequest"]["access"];
            RuleAccess {
                index: i,
                path: rule.get("path").and_then(Value::as_str).map(str::to_string),
                required: access.get("required").and_then(Value::as_bool) == Some(true),
                team: access
                    .get("teamName")
                    .and_then(Value::as_str)
                    .filter(|t| !t.trim().is_empty())
                    .map(str::to_string),
                aud_tags: access
                    .get("audTag")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// The `audTag` list with `aud` in it. A list that already holds `aud` is kept. Otherwise the
/// previous AUD (the value being replaced), or a sole entry, is replaced; a list of several
/// unrelated tags (several applications on one route) gets `aud` added and keeps the others.
pub fn with_aud(tags: &[String], aud: &str, previous: Option<&str>) -> Vec<String> {
    if tags.iter().any(|t| t == aud) {
        return tags.to_vec();
    }
    if tags.len() <= 1 {
        return vec![aud.to_string()];
    }
    if let Some(p) = previous
        && tags.iter().any(|t| t == p)
    {
        return tags
            .iter()
            .map(|t| if t == p { aud.to_string() } else { t.clone() })
            .collect();
    }
    let mut v = tags.to_vec();
    v.push(aud.to_string());
    v
}

fn access_object(config: &mut Value, index: usize) -> Option<&mut Map<String, Value>> {
    let rule = config.get_mut("ingress")?.get_mut(index)?.as_object_mut()?;
    let origin = rule
        .entry("originRequest")
        .or_insert_with(|| json!({}))
        .as_object_mut()?;
    origin
        .entry("access")
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

/// A FedRAMP team's rule needs `environment: "fed"`; one already set is kept as it is.
fn set_environment(access: &mut Map<String, Value>, team: &Team) {
    if team.fed && !access.contains_key("environment") {
        access.insert("environment".into(), json!("fed"));
    }
}

/// The configuration with Access required on every rule for `host`: `required: true`,
/// `teamName`, and `aud` in `audTag`. Other keys of `access` (`environment`, …) and everything
/// else are kept. `None` when nothing would change.
pub fn require_access(
    config: &Value,
    tunnel_id: &str,
    host: &str,
    team: &Team,
    aud: &str,
) -> Result<Option<Value>, IngressError> {
    let rules = access_of(config, tunnel_id, host)?;
    let mut new = config.clone();
    let mut changed = false;
    for r in rules {
        let tags = with_aud(&r.aud_tags, aud, None);
        let env_missing = team.fed
            && config["ingress"][r.index]["originRequest"]["access"]
                .get("environment")
                .is_none();
        if r.required
            && r.team.as_deref() == Some(team.name.as_str())
            && tags == r.aud_tags
            && !env_missing
        {
            continue;
        }
        let Some(access) = access_object(&mut new, r.index) else {
            continue;
        };
        access.insert("required".into(), json!(true));
        access.insert("teamName".into(), json!(team.name));
        access.insert("audTag".into(), json!(tags));
        set_environment(access, team);
        changed = true;
    }
    Ok(changed.then_some(new))
}

/// Whether an ingress rule is a catch-all: no hostname (or `*`) and no path.
fn is_catch_all(rule: &Value) -> bool {
    rule.get("hostname")
        .and_then(Value::as_str)
        .is_none_or(|h| h.is_empty() || h == "*")
        && rule.get("path").is_none()
}

/// The configuration with a rule `{hostname: host, service}` added where cloudflared will pick
/// it for `host`: above the first rule that already matches it (a `*.` wildcard, or the
/// catch-all), as the dashboard's "Add public hostname" does; the catch-all stays last. A
/// configuration without `ingress` gets one: the rule and a `http_status:404` catch-all. Refused
/// (`Ok(None)`) when a rule for `host` already exists: that one is kept as it is.
pub fn add_rule(config: &Value, host: &str, service: &str) -> Option<Value> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let mut new = config.clone();
    if !new.is_object() {
        new = json!({});
    }
    let rule = json!({"hostname": host, "service": service});
    let obj = new.as_object_mut()?;
    let Some(rules) = obj.get_mut("ingress").and_then(Value::as_array_mut) else {
        obj.insert(
            "ingress".into(),
            json!([rule, {"service": "http_status:404"}]),
        );
        return Some(new);
    };
    if rules
        .iter()
        .any(|r| hostname(r).as_deref() == Some(host.as_str()))
    {
        return None;
    }
    let at = rules
        .iter()
        .position(|r| is_catch_all(r) || hostname(r).is_some_and(|h| wildcard_matches(&h, &host)))
        .unwrap_or(rules.len());
    rules.insert(at, rule);
    Some(new)
}

/// What [`route`] decided for the rule of a host.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The whole new configuration; `None` when nothing changes.
    pub config: Option<Value>,
    /// A rule for the host was added (with this service).
    pub added: Option<String>,
}

/// The configuration with Access required on the rule for `host` ([`require_access`]); when
/// the tunnel has no rule of its own for `host` (none, only a wildcard, no `ingress` at all) and
/// a `service` is given, the rule is added first ([`add_rule`]). Without a service those cases
/// are the [`IngressError`] that explains them.
pub fn route(
    config: &Value,
    tunnel_id: &str,
    host: &str,
    team: &Team,
    aud: &str,
    service: Option<&str>,
) -> Result<Route, IngressError> {
    match require_access(config, tunnel_id, host, team, aud) {
        Ok(new) => Ok(Route {
            config: new,
            added: None,
        }),
        Err(
            e @ (IngressError::NoRule { .. }
            | IngressError::OnlyWildcard { .. }
            | IngressError::NoIngress { .. }),
        ) => {
            let Some(service) = service else {
                return Err(e);
            };
            let Some(with_rule) = add_rule(config, host, service) else {
                return Err(e);
            };
            let new = require_access(&with_rule, tunnel_id, host, team, aud)?;
            Ok(Route {
                config: Some(new.unwrap_or(with_rule)),
                added: Some(service.to_string()),
            })
        }
        Err(e) => Err(e),
    }
}

/// The configuration with `aud` in the `audTag` of every rule for `host` that requires Access
/// (rules that do not require it are left alone). `None` when nothing would change.
///
/// cloudflared refuses a rule with `required: true`, an `audTag` and a blank `teamName`
/// (`validateAccessConfiguration`), and then applies none of the remote configuration: such a
/// rule gets `team` as its `teamName`, or, with no team configured, the rule is refused
/// ([`IngressError::NoTeam`]) and nothing is written.
pub fn update_aud(
    config: &Value,
    tunnel_id: &str,
    host: &str,
    aud: &str,
    previous: Option<&str>,
    team: Option<&Team>,
) -> Result<Option<Value>, IngressError> {
    let rules = access_of(config, tunnel_id, host)?;
    let mut new = config.clone();
    let mut changed = false;
    for r in rules.iter().filter(|r| r.required) {
        let tags = with_aud(&r.aud_tags, aud, previous);
        let needs_team = r.team.is_none();
        if tags == r.aud_tags && !needs_team {
            continue;
        }
        if needs_team && team.is_none() {
            return Err(IngressError::NoTeam {
                tunnel_id: tunnel_id.into(),
                host: host.to_ascii_lowercase(),
            });
        }
        if let Some(access) = access_object(&mut new, r.index) {
            if let (true, Some(t)) = (needs_team, team) {
                access.insert("teamName".into(), json!(t.name));
                set_environment(access, t);
            }
            access.insert("audTag".into(), json!(tags));
            changed = true;
        }
    }
    Ok(changed.then_some(new))
}

/// A readable diff of the rules that differ between two configurations (`-`/`+` lines).
pub fn diff(old: &Value, new: &Value) -> String {
    let empty = Vec::new();
    let a = old
        .get("ingress")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let b = new
        .get("ingress")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut out = String::new();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i), b.get(i));
        if x == y {
            continue;
        }
        if let Some(x) = x {
            out.push_str(&format!("- ingress[{i}] {x}\n"));
        }
        if let Some(y) = y {
            out.push_str(&format!("+ ingress[{i}] {y}\n"));
        }
    }
    out
}

impl Client {
    /// `GET /accounts/{account}/cfd_tunnel/{tunnel}/configurations`: the whole answer
    /// (`{tunnel_id, version, config, source, …}`), as JSON.
    pub async fn tunnel_configuration(&self, account: &str, tunnel: &str) -> Result<Value, Error> {
        self.get(
            &format!(
                "/accounts/{}/cfd_tunnel/{}/configurations",
                super::seg(account),
                super::seg(tunnel)
            ),
            &[],
        )
        .await
    }

    /// `PUT …/configurations` with `{"config": config}`: the whole configuration.
    pub async fn put_tunnel_configuration(
        &self,
        account: &str,
        tunnel: &str,
        config: &Value,
    ) -> Result<Value, Error> {
        self.send(
            reqwest::Method::PUT,
            &format!(
                "/accounts/{}/cfd_tunnel/{}/configurations",
                super::seg(account),
                super::seg(tunnel)
            ),
            &json!({ "config": config }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "tun";

    fn team() -> Team {
        Team {
            name: "team".into(),
            fed: false,
        }
    }

    fn config() -> Value {
        json!({
            "ingress": [
                {"hostname": "web.example.com", "service": "http://web:80", "originRequest": {"noTLSVerify": true}},
                {"hostname": "api.example.com", "service": "http://lambda:8080", "x-unknown": 1},
                {"hostname": "*.example.com", "service": "http://other:80"},
                {"service": "http_status:404"}
            ],
            "warp-routing": {"enabled": false},
            "originRequest": {"connectTimeout": 10}
        })
    }

    #[test]
    fn require_access_changes_only_the_rule_for_the_host() {
        let old = config();
        let new = require_access(&old, T, "API.example.com", &team(), "aa")
            .unwrap()
            .unwrap();
        let mut expected = old.clone();
        expected["ingress"][1]["originRequest"] =
            json!({"access": {"required": true, "teamName": "team", "audTag": ["aa"]}});
        assert_eq!(new, expected);
        // Second time: nothing to do.
        assert_eq!(
            require_access(&new, T, "api.example.com", &team(), "aa"),
            Ok(None)
        );
        assert!(diff(&old, &new).contains("+ ingress[1]"));
    }

    #[test]
    fn missing_rule_wildcard_only_and_no_ingress_are_explained() {
        let e = require_access(&config(), T, "x.y.org", &team(), "a").unwrap_err();
        assert!(matches!(e, IngressError::NoRule { .. }), "{e}");
        assert!(e.to_string().contains("Public Hostname"), "{e}");
        let e = require_access(&config(), T, "db.example.com", &team(), "a").unwrap_err();
        assert!(matches!(e, IngressError::OnlyWildcard { .. }), "{e}");
        let e = require_access(&json!({}), T, "api.example.com", &team(), "a").unwrap_err();
        assert!(matches!(e, IngressError::NoIngress { .. }), "{e}");
    }

    #[test]
    fn wildcards_match_by_suffix_at_any_depth() {
        assert!(wildcard_matches("*.example.com", "a.example.com"));
        assert!(wildcard_matches("*.example.com", "a.b.example.com"));
        assert!(!wildcard_matches("*.example.com", "example.com"));
        assert!(!wildcard_matches("*.example.com", "a.example.com.evil.net"));
        assert!(!wildcard_matches("*.example.com", "aexample.com"));
        let e = require_access(&config(), T, "a.db.example.com", &team(), "a").unwrap_err();
        assert!(matches!(e, IngressError::OnlyWildcard { .. }), "{e}");
    }

    #[test]
    fn a_required_rule_without_team_gets_the_team_or_is_refused() {
        let mut c = config();
        c["ingress"][1]["originRequest"] =
            json!({"access": {"required": true, "environment": "fed"}});
        let e = update_aud(&c, T, "api.example.com", "n", None, None).unwrap_err();
        assert!(matches!(e, IngressError::NoTeam { .. }), "{e}");
        assert!(e.to_string().contains("CLOUDFLARE_TEAM_NAME"), "{e}");
        let fed = Team {
            name: "gov".into(),
            fed: true,
        };
        let new = update_aud(&c, T, "api.example.com", "n", None, Some(&fed))
            .unwrap()
            .unwrap();
        assert_eq!(
            new["ingress"][1]["originRequest"]["access"],
            json!({"required": true, "environment": "fed", "teamName": "gov", "audTag": ["n"]})
        );
        // A FedRAMP team's new rule gets environment "fed".
        let new = require_access(&config(), T, "api.example.com", &fed, "n")
            .unwrap()
            .unwrap();
        assert_eq!(
            new["ingress"][1]["originRequest"]["access"]["environment"],
            "fed"
        );
    }

    #[test]
    fn aud_tags_follow_the_value() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(with_aud(&s(&[]), "n", None), s(&["n"]));
        assert_eq!(with_aud(&s(&["o"]), "n", None), s(&["n"]));
        assert_eq!(with_aud(&s(&["n", "x"]), "n", None), s(&["n", "x"]));
        assert_eq!(with_aud(&s(&["o", "x"]), "n", Some("o")), s(&["n", "x"]));
        assert_eq!(with_aud(&s(&["o", "x"]), "n", None), s(&["o", "x", "n"]));
    }

    #[test]
    fn update_aud_touches_only_rules_that_require_access() {
        let plain = config();
        assert_eq!(
            update_aud(&plain, T, "api.example.com", "n", None, None),
            Ok(None)
        );
        let with = require_access(&plain, T, "api.example.com", &team(), "o")
            .unwrap()
            .unwrap();
        let new = update_aud(&with, T, "api.example.com", "n", Some("o"), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            new["ingress"][1]["originRequest"]["access"]["audTag"],
            json!(["n"])
        );
        assert_eq!(new["ingress"][1]["x-unknown"], 1);
    }

    #[test]
    fn a_missing_rule_is_added_above_the_catch_all_or_the_wildcard() {
        // No rule for x.y.org: added just before the catch-all, with Access required.
        let r = route(
            &config(),
            T,
            "x.y.org",
            &team(),
            "aa",
            Some("http://caddy:80"),
        )
        .unwrap();
        let new = r.config.unwrap();
        assert_eq!(r.added.as_deref(), Some("http://caddy:80"));
        let rules = new["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 5);
        assert_eq!(
            rules[3],
            json!({"hostname": "x.y.org", "service": "http://caddy:80", "originRequest": {"access": {"required": true, "teamName": "team", "audTag": ["aa"]}}})
        );
        assert_eq!(rules[4], json!({"service": "http_status:404"}));
        assert_eq!(new["warp-routing"], config()["warp-routing"]);
        // Only a wildcard serves db.example.com: the new rule goes above it, or it would never
        // be reached.
        let new = route(
            &config(),
            T,
            "db.example.com",
            &team(),
            "aa",
            Some("http://c:80"),
        )
        .unwrap()
        .config
        .unwrap();
        assert_eq!(new["ingress"][2]["hostname"], "db.example.com");
        assert_eq!(new["ingress"][3]["hostname"], "*.example.com");
        // Without a service these stay errors.
        assert!(matches!(
            route(&config(), T, "x.y.org", &team(), "aa", None),
            Err(IngressError::NoRule { .. })
        ));
        // No ingress at all: the rule and a catch-all.
        let new = route(&json!({}), T, "x.y.org", &team(), "aa", Some("http://c:80"))
            .unwrap()
            .config
            .unwrap();
        assert_eq!(new["ingress"][1], json!({"service": "http_status:404"}));
        // An existing rule is never replaced: the service is not used.
        let r = route(
            &config(),
            T,
            "api.example.com",
            &team(),
            "aa",
            Some("http://c:80"),
        )
        .unwrap();
        assert_eq!(r.added, None);
        assert_eq!(
            r.config.unwrap()["ingress"][1]["service"],
            "http://lambda:8080"
        );
    }
}
