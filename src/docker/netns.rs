//! Containers that share another one's network (`network_mode: container:<base>`, compose's
//! `network_mode: service:<base>`): when the base is replaced, they are left in a namespace
//! that is gone, and a recreate of theirs copying `container:<old id>` fails on the dead id.
//!
//! Within a pass the engine remembers which container replaced which ([`Replaced`]): a
//! dependent recreated after its base is created against the new base id, and a base that was
//! replaced has its dependents recreated against it at once, in order, each journalled in its
//! own record (a dependent this pass holds no lock for is not touched: the base's action fails
//! and names it). A dependent whose base no longer exists and that no run of this pass can map
//! is reported when it is observed, so the pass fails truthfully until it is recreated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::ListContainersOptions;

/// Old container id -> the id of the container that replaced it, in this pass.
#[derive(Clone, Default)]
pub(crate) struct Replaced(Arc<Mutex<BTreeMap<String, String>>>);

impl Replaced {
    pub(super) fn insert(&self, old: &str, new: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(old.to_string(), new.to_string());
        }
    }

    /// The container that replaced `id` (itself a full id or a prefix), if any.
    pub(super) fn get(&self, id: &str) -> Option<String> {
        let m = self.0.lock().ok()?;
        let mut cur = m
            .iter()
            .find(|(old, _)| !id.is_empty() && old.starts_with(id))
            .map(|(_, new)| new.clone())?;
        // A base replaced twice in one pass: follow the chain.
        while let Some(next) = m.get(&cur) {
            cur = next.clone();
        }
        Some(cur)
    }
}

/// The `X` of `network_mode: container:X`.
pub(super) fn base_of(info: &ContainerInspectResponse) -> Option<String> {
    info.host_config
        .as_ref()?
        .network_mode
        .as_deref()?
        .strip_prefix("container:")
        .map(str::to_string)
}

/// The names of the containers whose network is container `old_id`'s (or `old_name`'s).
pub(super) async fn dependents(
    docker: &Docker,
    old_id: &str,
    old_name: &str,
) -> Result<Vec<String>, bollard::errors::Error> {
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await?;
    let by_id = format!("container:{old_id}");
    let by_name = format!("container:{old_name}");
    Ok(list
        .into_iter()
        .filter(|c| {
            c.host_config
                .as_ref()
                .and_then(|h| h.network_mode.as_deref())
                .is_some_and(|m| m == by_id || m == by_name)
        })
        .filter_map(|c| c.names?.into_iter().next())
        .map(|n| n.trim_start_matches('/').to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_base_is_found_by_prefix_and_through_a_chain() {
        let r = Replaced::default();
        r.insert("aaaa1111", "bbbb2222");
        r.insert("bbbb2222", "cccc3333");
        assert_eq!(r.get("aaaa").as_deref(), Some("cccc3333"));
        assert_eq!(r.get("zzzz"), None);
        assert_eq!(r.get(""), None);
    }
}
