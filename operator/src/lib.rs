//! `casserole-operator`: reconciles `CasseroleCache` resources into etcd, cache workloads,
//! volumes, Services and policies.

pub mod context;
pub mod crd;
pub mod crd_upgrade;
pub mod etcd_heal;
pub mod etcd_members;
pub mod health;
pub mod http_client;
pub mod leader;
pub mod live;
pub mod metrics;
pub mod node_views;
pub mod reconcile;
pub mod render;
pub mod resources;
pub mod rollout_news;
pub mod run;
pub mod schema_rules;
pub mod secret_scope;
pub mod server;
pub mod status;
pub mod tokens;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Annotation on the CRD naming the operator release that generated it: how `--apply-crd`
/// avoids downgrading it, and how tests check that the chart's CRD and app version agree.
pub const CRD_VERSION_ANNOTATION: &str = "casserole.io/operator-version";

/// The version the operator reads and writes, and the one the API server stores.
pub const STORAGE_VERSION: &str = "v1alpha1";
/// A second served version with the same schema: the API server converts between the two
/// without a webhook (`conversion.strategy: None` only rewrites `apiVersion`), so manifests
/// can move to it now; see docs/operator-runbook.md for the storage-version migration plan.
pub const NEXT_VERSION: &str = "v1beta1";

/// The CustomResourceDefinition, annotated with this release's version.
pub fn crd_object() -> CustomResourceDefinition {
    let mut crd = crd::CasseroleCache::crd();
    let mut next = crd.spec.versions[0].clone();
    next.name = NEXT_VERSION.into();
    next.storage = false;
    next.served = true;
    crd.spec.versions.push(next);
    crd.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            CRD_VERSION_ANNOTATION.into(),
            env!("CARGO_PKG_VERSION").into(),
        );
    crd
}

/// The CustomResourceDefinition as YAML, exactly what `casserole-operator crd` prints and
/// what `crds/casserolecaches.casserole.io.yaml` must contain.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crd_object()).expect("the CRD serializes")
}

#[cfg(test)]
mod mock;
#[cfg(test)]
mod reconcile_day2_tests;
#[cfg(test)]
mod reconcile_rollout_tests;
#[cfg(test)]
mod reconcile_secrets_tests;
#[cfg(test)]
mod reconcile_tests;
