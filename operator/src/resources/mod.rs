//! The pure half of the operator: a `CasseroleCache` in, the objects it should own out.
//!
//! Nothing here talks to the API server or reads the clock or a random source, so the same
//! spec always renders the same objects (what `render`, the unit tests and server-side apply
//! idempotency all rely on). The one exception to "everything is desired state" is the peer
//! token Secret: its content is random and must survive forever, so the reconciler creates it
//! once ([`secret::peer_token_secret`]) instead of applying it every time.
//!
//! Dependencies point one way. [`desired_for`] (here) composes the components, each of which
//! owns all of its objects: [`etcd`] (the managed etcd) and [`cache`] (the cache workload, its
//! Services, budget and policy, on top of [`validate`]'s plan and [`secret`]'s names). Below
//! them stand the building blocks they share: [`pod`] and [`network`], [`names`] (the names
//! and ports by which the objects find each other) and [`common`] (`Object`, labels, metadata).

pub mod cache;
pub mod common;
pub mod etcd;
pub mod names;
pub mod network;
pub mod pod;
pub mod secret;
pub mod validate;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::ApiResource;

pub use cache::{default_node_image, CONFIG_HASH_ANNOTATION, PEER_TOKEN_ANNOTATION};
pub use common::{
    hash_of, labels, namespace, object_meta, selector_labels, selector_string, Component, Inputs,
    IpFamily, Object, DEFAULT_NAMESPACE, FIELD_MANAGER,
};
pub use etcd::DEFAULT_ETCD_IMAGE;
pub use validate::{InvalidSpec, Plan};

use crate::crd::CasseroleCache;

/// Every object the cache should own, in apply order (etcd before the cache that needs it),
/// for IPv4 pods and an unknown token.
pub fn desired(cache: &CasseroleCache) -> Result<Vec<Object>, InvalidSpec> {
    desired_for(cache, &Inputs::default())
}

/// [`desired`] given what the cluster and the peer token Secret say.
pub fn desired_for(cache: &CasseroleCache, inputs: &Inputs) -> Result<Vec<Object>, InvalidSpec> {
    let mut plan = validate::plan(cache)?;
    plan.inputs = inputs.clone();
    let mut objects = Vec::new();
    if let Some(managed) = &plan.managed_etcd {
        objects.extend(etcd::objects(cache, managed, inputs));
    }
    objects.extend(cache::objects(cache, &plan));
    Ok(objects)
}

/// Every (kind, name) some variant of this cache's spec could own: what is in this list but
/// not in [`desired`] is left over from an earlier spec (a workload kind switch, managed etcd
/// replaced by an external one) and must be pruned.
pub fn possible_objects(cache: &CasseroleCache) -> Vec<(ApiResource, String)> {
    let workload = cache::workload_name(cache);
    vec![
        (ApiResource::erase::<StatefulSet>(&()), workload.clone()),
        (ApiResource::erase::<DaemonSet>(&()), workload.clone()),
        (ApiResource::erase::<PodDisruptionBudget>(&()), workload),
        (
            ApiResource::erase::<Service>(&()),
            etcd::peer_service_name(cache),
        ),
        (
            ApiResource::erase::<Service>(&()),
            etcd::client_service_name(cache),
        ),
        (
            ApiResource::erase::<PodDisruptionBudget>(&()),
            etcd::name(cache),
        ),
        (ApiResource::erase::<NetworkPolicy>(&()), etcd::name(cache)),
        (ApiResource::erase::<StatefulSet>(&()), etcd::name(cache)),
    ]
}

/// What [`possible_objects`] has and `desired` does not.
pub fn leftovers(cache: &CasseroleCache, desired: &[Object]) -> Vec<(ApiResource, String)> {
    possible_objects(cache)
        .into_iter()
        .filter(|(ar, name)| {
            !desired
                .iter()
                .any(|o| o.name() == name && o.api_resource() == *ar)
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod validate_tests;
#[cfg(test)]
mod workload_tests;
