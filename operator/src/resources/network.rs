//! Services, PodDisruptionBudgets and NetworkPolicies.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::cache::{HTTP_PORT, METRICS_PORT, PEER_PORT};
use super::{etcd, object_meta, selector_labels, Component, Object, Plan};
use crate::crd::{CasseroleCache, WorkloadKind};

/// Client Service of the cache (what users point at).
pub fn client_service_name(cache: &CasseroleCache) -> String {
    cache.name_any()
}

/// Headless Service of the cache pods (the StatefulSet's `serviceName`, per-pod DNS).
pub fn peer_service_name(cache: &CasseroleCache) -> String {
    format!("{}-peer", cache.name_any())
}

/// The cache's Services, PodDisruptionBudget and NetworkPolicy (its workload and Secret
/// are built elsewhere).
///
/// A DaemonSet gets no PodDisruptionBudget: the disruption controller cannot compute
/// `maxUnavailable` for pods whose controller has no scale subresource, so such a budget
/// refuses every eviction and blocks node drains; the DaemonSet's own `maxUnavailable: 1`
/// paces its rolling updates, and a drained node's cache pod is disposable by design.
pub fn cache_objects(cache: &CasseroleCache, _plan: &Plan) -> Vec<Object> {
    let mut objects = vec![
        Object::Service(Box::new(peer_service(cache))),
        Object::Service(Box::new(client_service(cache))),
    ];
    if cache.spec.workload == WorkloadKind::StatefulSet {
        objects.push(Object::PodDisruptionBudget(Box::new(pdb(
            cache,
            Component::Cache,
            cache.name_any(),
        ))));
    }
    objects.push(Object::NetworkPolicy(Box::new(cache_policy(cache))));
    objects
}

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

fn peer_service(cache: &CasseroleCache) -> Service {
    Service {
        metadata: object_meta(cache, peer_service_name(cache), Component::Cache),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(cache, Component::Cache)),
            ports: Some(vec![
                service_port("peer", PEER_PORT, "peer"),
                service_port("metrics", METRICS_PORT, "metrics"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn client_service(cache: &CasseroleCache) -> Service {
    let svc = &cache.spec.service;
    let mut metadata = object_meta(cache, client_service_name(cache), Component::Cache);
    if !svc.annotations.is_empty() {
        metadata.annotations = Some(svc.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(selector_labels(cache, Component::Cache)),
            ports: Some(vec![service_port("http", svc.port, "http")]),
            // Node-local caching: a client reaches the cache pod on its own node. (A
            // DaemonSet runs one wherever clients run, given matching tolerations.)
            internal_traffic_policy: (cache.spec.workload == WorkloadKind::DaemonSet)
                .then(|| "Local".into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
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

fn selector(cache: &CasseroleCache, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(cache, component)),
        ..LabelSelector::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

fn from_pods(cache: &CasseroleCache, component: Component) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(selector(cache, component)),
        ..NetworkPolicyPeer::default()
    }
}

/// The peer port (which serves cached chunks to other nodes) admits only this cache's own
/// pods; the client and metrics ports stay open, since selecting the pods in any policy
/// isolates them for every port.
fn cache_policy(cache: &CasseroleCache) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(cache, cache.name_any(), Component::Cache),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(cache, Component::Cache)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![from_pods(cache, Component::Cache)]),
                    ports: Some(vec![tcp(PEER_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![tcp(HTTP_PORT), tcp(METRICS_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// etcd's client port admits the cache pods and the other members, its peer port only the
/// members; metrics stay open for scraping.
pub fn etcd_policy(cache: &CasseroleCache) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(cache, etcd::name(cache), Component::Etcd),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(cache, Component::Etcd)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        from_pods(cache, Component::Cache),
                        from_pods(cache, Component::Etcd),
                    ]),
                    ports: Some(vec![tcp(etcd::CLIENT_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![from_pods(cache, Component::Etcd)]),
                    ports: Some(vec![tcp(etcd::PEER_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![tcp(etcd::METRICS_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}
