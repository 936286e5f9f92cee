//! Reusable Access policies: list, find one by name, create one from email rules.
//!
//! Owns the `/access/policies` endpoints. It never edits or deletes an existing policy: a policy
//! found by name is reused exactly as it is, because other applications may share it.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Client, Error};

/// Page size for the reusable-policies list: the endpoint's maximum (its default is 100).
pub const PER_PAGE: u32 = 1000;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Policy {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub decision: String,
    /// Optional in the schema (this endpoint lists reusable policies only): not required.
    #[serde(default)]
    pub reusable: Option<bool>,
    #[serde(default)]
    pub app_count: Option<u64>,
}

/// Who a new policy lets in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub emails: Vec<String>,
    pub email_domain: Option<String>,
    /// `{"everyone": {}}`: only with an explicit `--allow-everyone`.
    pub everyone: bool,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.emails.is_empty() && self.email_domain.is_none() && !self.everyone
    }

    /// The `include[]` list: any one rule admits (Cloudflare ORs `include`).
    pub fn include(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .emails
            .iter()
            .map(|e| json!({"email": {"email": e}}))
            .collect();
        if let Some(d) = &self.email_domain {
            v.push(json!({"email_domain": {"domain": d}}));
        }
        if self.everyone {
            v.push(json!({"everyone": {}}));
        }
        v
    }
}

/// The body of `POST /access/policies` for an allow policy.
pub fn new_policy_body(name: &str, rules: &Rules) -> Value {
    json!({
        "name": name,
        "decision": "allow",
        "include": rules.include(),
        "exclude": [],
        "require": [],
    })
}

impl Client {
    /// Every policy of the account (all pages).
    pub async fn policies(&self, account: &str) -> Result<Vec<Policy>, Error> {
        self.list_all(
            &format!("/accounts/{}/access/policies", super::seg(account)),
            &[],
            PER_PAGE,
        )
        .await
    }

    /// The reusable policy called `name` (exact, case-sensitive), if any. Several with that name
    /// are ambiguous: which one the user meant is not ours to guess.
    pub async fn policy_by_name(&self, account: &str, name: &str) -> Result<Option<Policy>, Error> {
        let all = self.policies(account).await?;
        let found: Vec<Policy> = all
            .into_iter()
            .filter(|p| p.name == name && p.reusable != Some(false))
            .collect();
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.into_iter().next()),
            n => Err(Error::Lookup(format!(
                "{n} reusable Access policies are called {name:?} (ids {}); rename all but one, or pass --policy-name with a unique name",
                found
                    .iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// `POST /accounts/{account}/access/policies`.
    pub async fn create_policy(&self, account: &str, body: &Value) -> Result<Policy, Error> {
        self.send(
            reqwest::Method::POST,
            &format!("/accounts/{}/access/policies", super::seg(account)),
            body,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_become_include_entries() {
        let r = Rules {
            emails: vec!["a@b.c".into(), "d@b.c".into()],
            email_domain: Some("b.c".into()),
            everyone: false,
        };
        let body = new_policy_body("P", &r);
        assert_eq!(body["decision"], "allow");
        assert_eq!(
            body["include"],
            json!([
                {"email": {"email": "a@b.c"}},
                {"email": {"email": "d@b.c"}},
                {"email_domain": {"domain": "b.c"}}
            ])
        );
        assert!(Rules::default().is_empty());
        let all = Rules {
            everyone: true,
            ..Rules::default()
        };
        assert_eq!(all.include(), vec![json!({"everyone": {}})]);
    }
}
