//! The managed etcd: a StatefulSet with stable peer names behind a headless Service, a client
//! Service, a PodDisruptionBudget and a NetworkPolicy.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec,
    ResourceRequirements, Service, ServicePort, ServiceSpec, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use super::common::{
    labels, namespace, object_meta, selector, selector_labels, Component, Inputs, Object,
};
pub use super::names::etcd::{
    client_service_name, name, peer_service_name, CLIENT_PORT, METRICS_PORT, PEER_PORT,
};
use super::network::{self, from_pods, pdb, tcp};
use super::pod::{
    claim, container_port, container_security_context, field_env, http_probe, pod_security_context,
    tcp_probe,
};
use crate::crd::{CasseroleCache, ManagedEtcd};

/// Managed etcd image when `spec.etcd.managed.image` is unset (etcd v3 API).
pub const DEFAULT_ETCD_IMAGE: &str = "quay.io/coreos/etcd:v3.5.17";
const DATA_DIR: &str = "/var/lib/etcd";

/// `--initial-cluster`: every member's name and peer URL, derived from the ordinal names the
/// StatefulSet will give its pods.
pub fn initial_cluster(cache: &CasseroleCache, replicas: i32) -> String {
    (0..replicas)
        .map(|i| {
            let member = format!("{}-{i}", name(cache));
            format!("{member}={}", peer_url(cache, &member))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn peer_url(cache: &CasseroleCache, member: &str) -> String {
    format!(
        "http://{member}.{}.{}.svc:{PEER_PORT}",
        peer_service_name(cache),
        namespace(cache)
    )
}

pub fn objects(cache: &CasseroleCache, managed: &ManagedEtcd, inputs: &Inputs) -> Vec<Object> {
    vec![
        Object::Service(Box::new(peer_service(cache))),
        Object::Service(Box::new(client_service(cache))),
        Object::PodDisruptionBudget(Box::new(pdb(cache, Component::Etcd, name(cache)))),
        Object::NetworkPolicy(Box::new(policy(cache, inputs))),
        Object::StatefulSet(Box::new(statefulset(cache, managed, inputs))),
    ]
}

/// The client URL of the managed etcd (what the nodes and the operator connect to).
pub fn client_url(cache: &CasseroleCache) -> String {
    format!(
        "http://{}.{}.svc:{CLIENT_PORT}",
        client_service_name(cache),
        namespace(cache)
    )
}

/// A member's peer URL, by its pod name.
pub fn member_peer_url(cache: &CasseroleCache, member: &str) -> String {
    peer_url(cache, member)
}

fn ports() -> Vec<ServicePort> {
    vec![
        service_port("client", CLIENT_PORT),
        service_port("peer", PEER_PORT),
    ]
}

fn service_port(name: &str, port: i32) -> ServicePort {
    network::service_port(name, port, name)
}

fn peer_service(cache: &CasseroleCache) -> Service {
    Service {
        metadata: object_meta(cache, peer_service_name(cache), Component::Etcd),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Members must resolve each other before any is ready, or the first boot of a
            // 3-member cluster never reaches quorum.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cache, Component::Etcd)),
            ports: Some(ports()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn client_service(cache: &CasseroleCache) -> Service {
    Service {
        metadata: object_meta(cache, client_service_name(cache), Component::Etcd),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(cache, Component::Etcd)),
            ports: Some(vec![service_port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The client port admits the cache pods, the other members and (when known) the operator's
/// namespace, which replaces members whose data is gone; the peer port only the members;
/// metrics stay open for scraping.
fn policy(cache: &CasseroleCache, inputs: &Inputs) -> NetworkPolicy {
    let mut clients = vec![
        from_pods(cache, Component::Cache),
        from_pods(cache, Component::Etcd),
    ];
    if let Some(ns) = &inputs.operator_namespace {
        clients.push(NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    ns.clone(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        });
    }
    NetworkPolicy {
        metadata: object_meta(cache, name(cache), Component::Etcd),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(cache, Component::Etcd)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(clients),
                    ports: Some(vec![tcp(CLIENT_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![from_pods(cache, Component::Etcd)]),
                    ports: Some(vec![tcp(PEER_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![tcp(METRICS_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// `--initial-cluster-state`: `new` until a cluster of several members has formed, then
/// `existing` (ignored by members that have data, and what a member whose data is gone needs
/// to rejoin once the operator re-added it). A single member always bootstraps anew.
pub fn initial_cluster_state(managed: &ManagedEtcd, bootstrapped: bool) -> &'static str {
    if bootstrapped && managed.replicas > 1 {
        "existing"
    } else {
        "new"
    }
}

fn args(cache: &CasseroleCache, managed: &ManagedEtcd, inputs: &Inputs) -> Vec<String> {
    let any = inputs.ip_family.any_address();
    let own_host = format!(
        "$(POD_NAME).{}.{}.svc",
        peer_service_name(cache),
        namespace(cache)
    );
    vec![
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={DATA_DIR}/data"),
        format!("--listen-client-urls=http://{any}:{CLIENT_PORT}"),
        format!("--advertise-client-urls=http://{own_host}:{CLIENT_PORT}"),
        format!("--listen-peer-urls=http://{any}:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls=http://{own_host}:{PEER_PORT}"),
        format!("--listen-metrics-urls=http://{any}:{METRICS_PORT}"),
        format!(
            "--initial-cluster={}",
            initial_cluster(cache, managed.replicas)
        ),
        format!(
            "--initial-cluster-state={}",
            initial_cluster_state(managed, inputs.etcd_bootstrapped)
        ),
        // Distinct per cache so two caches' members can never join each other.
        format!(
            "--initial-cluster-token={}-{}",
            namespace(cache),
            cache.name_any()
        ),
        // Membership keys churn under leases; keep history short.
        "--auto-compaction-mode=periodic".into(),
        "--auto-compaction-retention=1h".into(),
        "--quota-backend-bytes=536870912".into(),
    ]
}

/// Resources of a member when the spec sets none: enough for the membership keys of a cache
/// (a few KiB churned under leases), with a memory limit so a leak cannot take the node.
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q("100m")),
            ("memory".to_string(), q("256Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), q("512Mi"))])),
        ..ResourceRequirements::default()
    }
}

/// Members prefer distinct nodes: losing one node then costs one member, not the quorum.
/// (Preferred, not required, so that small and single-node clusters still schedule them.)
fn anti_affinity(cache: &CasseroleCache) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(selector(cache, Component::Etcd)),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn pod_spec(cache: &CasseroleCache, managed: &ManagedEtcd, container: Container) -> PodSpec {
    let spec = &cache.spec;
    PodSpec {
        containers: vec![container],
        security_context: Some(pod_security_context()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        affinity: Some(anti_affinity(cache)),
        node_selector: (!managed.node_selector.is_empty()).then(|| managed.node_selector.clone()),
        tolerations: (!managed.tolerations.is_empty()).then(|| managed.tolerations.clone()),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        priority_class_name: spec.priority_class_name.clone(),
        ..PodSpec::default()
    }
}

fn statefulset(cache: &CasseroleCache, managed: &ManagedEtcd, inputs: &Inputs) -> StatefulSet {
    let container = Container {
        name: "etcd".into(),
        image: Some(
            managed
                .image
                .clone()
                .unwrap_or_else(|| DEFAULT_ETCD_IMAGE.into()),
        ),
        command: Some(vec!["/usr/local/bin/etcd".into()]),
        args: Some(args(cache, managed, inputs)),
        // A crash's last log lines land in the pod status, where the operator recognises a
        // member whose data is gone.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        env: Some(vec![field_env("POD_NAME", "metadata.name")]),
        ports: Some(vec![
            container_port("client", CLIENT_PORT),
            container_port("peer", PEER_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        // /health needs quorum: right for readiness, wrong for liveness (a member waiting for
        // its peers must not be killed), so liveness only checks the process listens.
        readiness_probe: Some(http_probe("/health", "metrics", 10, 3)),
        liveness_probe: Some(tcp_probe("client", 10, 6)),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        }]),
        security_context: Some(container_security_context()),
        resources: Some(managed.resources.clone().unwrap_or_else(default_resources)),
        ..Container::default()
    };
    StatefulSet {
        metadata: object_meta(cache, name(cache), Component::Etcd),
        spec: StatefulSetSpec {
            replicas: Some(managed.replicas),
            service_name: Some(peer_service_name(cache)),
            // All members must start together to form the initial quorum.
            pod_management_policy: Some("Parallel".into()),
            selector: selector(cache, Component::Etcd),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cache, Component::Etcd)),
                    annotations: Some(BTreeMap::from([
                        ("prometheus.io/scrape".into(), "true".into()),
                        ("prometheus.io/port".into(), METRICS_PORT.to_string()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(cache, managed, container)),
            },
            // Selector labels only: they never change, and a claim template is immutable.
            volume_claim_templates: Some(vec![claim(
                Some("data".into()),
                Some(selector_labels(cache, Component::Etcd)),
                &managed.storage,
                managed.storage_class_name.clone(),
            )]),
            // Deleting the cache deletes the data volumes too; scaling keeps them.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}
