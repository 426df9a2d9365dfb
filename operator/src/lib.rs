//! `casserole-operator`: reconciles `CasseroleCache` resources into etcd, cache workloads,
//! volumes, Services and policies.

pub mod crd;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod resources;
pub mod run;
pub mod schema_rules;
pub mod server;
pub mod status;

use kube::CustomResourceExt;

/// The CustomResourceDefinition as YAML, exactly what `casserole-operator crd` prints and
/// what `crds/casserolecaches.casserole.io.yaml` must contain.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&crd::CasseroleCache::crd()).expect("the CRD serializes")
}

#[cfg(test)]
mod mock;
#[cfg(test)]
mod reconcile_tests;
