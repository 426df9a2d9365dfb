//! Building blocks shared by the etcd and cache Services, PodDisruptionBudgets and
//! NetworkPolicies (each component builds its own objects from them).

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::common::{object_meta, selector, Component};
use crate::crd::CasseroleCache;

/// A TCP Service port forwarding to a named container port.
pub fn service_port(name: &str, port: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(target.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// At most one pod of a component voluntarily down at a time: keeps etcd's quorum (2 of 3)
/// and most of the cache's capacity through node drains. For a single etcd member this still
/// lets drains proceed (a PDB that never allows eviction would block them forever).
pub fn pdb(cache: &CasseroleCache, component: Component, name: String) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(cache, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(cache, component)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// A TCP port a NetworkPolicy admits.
pub fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

/// A NetworkPolicy peer: the pods of one component of this cache.
pub fn from_pods(cache: &CasseroleCache, component: Component) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector(cache, component)),
        ..NetworkPolicyPeer::default()
    }
}
