//! What a reconcile announces about the cache pods (issue 22, L3): a change of the node image
//! they are about to roll to (an operator upgrade changes the default image, which rolls every
//! node of a DaemonSet cache, so it must not happen unannounced), a `kubectl scale` of a
//! DaemonSet cache, which cannot apply (the CRD refuses it; this covers a CRD without the rule),
//! and pods a newer operator release already rolled, which an older one must leave alone.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::runtime::events::{Event, EventType};

use crate::context::event;
use crate::crd::{CasseroleCache, WorkloadKind};
use crate::crd_upgrade::version;
use crate::live::Live;
use crate::resources::{cache as cache_objects, default_node_image, Object, FIELD_MANAGER};

/// The container of a cache pod that runs `casserole-node`.
const NODE_CONTAINER: &str = "casserole-node";

/// Everything to announce, in order, once the desired objects are applied.
pub fn news(cache: &CasseroleCache, live: &Live, desired: &[Object]) -> Vec<Event> {
    [image_change(cache, live, desired), replicas_ignored(cache)]
        .into_iter()
        .flatten()
        .collect()
}

fn node_image(template: &PodTemplateSpec) -> Option<&str> {
    template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == NODE_CONTAINER)?
        .image
        .as_deref()
}

fn desired_template<'a>(
    cache: &CasseroleCache,
    desired: &'a [Object],
) -> Option<&'a PodTemplateSpec> {
    let name = cache_objects::workload_name(cache);
    desired.iter().find_map(|o| match o {
        Object::StatefulSet(s) if o.name() == name => Some(&s.spec.template),
        Object::DaemonSet(d) if o.name() == name => Some(&d.spec.template),
        _ => None,
    })
}

fn live_template(live: &Live) -> Option<&PodTemplateSpec> {
    let daemonset = live.daemonset.as_ref().map(|d| &d.spec.template);
    daemonset.or(live.cache.as_ref().map(|s| &s.spec.template))
}

/// A Normal `NodeImageChanged` Event when the live cache workload runs another node image than
/// the one being applied: which image, why (`spec.image`, or the operator's default after an
/// operator upgrade), and at what pace the pods move.
pub fn image_change(cache: &CasseroleCache, live: &Live, desired: &[Object]) -> Option<Event> {
    let old = node_image(live_template(live)?)?;
    let new = node_image(desired_template(cache, desired)?)?;
    if old == new {
        return None;
    }
    let why = match &cache.spec.image {
        Some(_) => "spec.image",
        None => "the operator's default node image, which follows the operator's version: the operator was upgraded; set spec.image to choose when this cache upgrades",
    };
    let pace = match cache.spec.workload {
        WorkloadKind::DaemonSet => {
            "one node at a time, each node's new pod ready before its old one stops"
        }
        WorkloadKind::StatefulSet => "one pod at a time",
    };
    let note = format!("rolling the cache pods from {old} to {new} ({why}); {pace}");
    Some(event(
        EventType::Normal,
        "NodeImageChanged",
        "Rollout",
        note,
    ))
}

/// The live cache pods' image when it is a newer operator release's default node image and
/// the spec sets none: during a rolling upgrade of the operator an older replica may lead for a
/// moment, and must not roll the pods back onto its own default (and the newer one forth
/// again). The cache is left to the newer release.
pub fn newer_release_image(cache: &CasseroleCache, live: &Live) -> Option<String> {
    if cache.spec.image.is_some() {
        return None;
    }
    let image = node_image(live_template(live)?)?;
    let ours = default_node_image();
    let (repository, our_version) = ours.rsplit_once(':')?;
    let their_version = image.strip_prefix(repository)?.strip_prefix(':')?;
    (version(their_version) > version(our_version)).then(|| image.to_string())
}

/// Whether a managed-fields entry wrote `spec.replicas`.
fn owns_replicas(entry: &ManagedFieldsEntry) -> bool {
    entry
        .fields_v1
        .as_ref()
        .and_then(|f| f.0.get("f:spec"))
        .is_some_and(|spec| spec.get("f:replicas").is_some())
}

/// A Warning `ReplicasIgnored` Event, once per generation, when a DaemonSet cache's
/// `spec.replicas` was written through the scale subresource (`kubectl scale`, an HPA): a
/// DaemonSet runs one pod per eligible node, so the number cannot apply.
pub fn replicas_ignored(cache: &CasseroleCache) -> Option<Event> {
    if cache.spec.workload != WorkloadKind::DaemonSet {
        return None;
    }
    let observed = cache.status.as_ref().and_then(|s| s.observed_generation);
    if observed.is_some() && observed == cache.metadata.generation {
        return None; // told when this generation was new
    }
    let scaler = cache.metadata.managed_fields.as_ref()?.iter().find(|m| {
        m.subresource.as_deref() == Some("scale")
            && m.manager.as_deref() != Some(FIELD_MANAGER)
            && owns_replicas(m)
    })?;
    let by = scaler.manager.as_deref().unwrap_or("a client");
    let note = format!(
        "spec.replicas ({}) was set through the scale subresource by {by}: it has no effect on a DaemonSet cache, which runs one pod per eligible node; choose the nodes with nodeSelector and tolerations",
        cache.spec.replicas
    );
    Some(event(EventType::Warning, "ReplicasIgnored", "Scale", note))
}

#[cfg(test)]
#[path = "rollout_news_tests.rs"]
mod tests;
