//! The cache: a StatefulSet (or DaemonSet) of `casserole-node` pods, with a headless peer
//! Service, a client Service, a PodDisruptionBudget and a NetworkPolicy.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, EphemeralVolumeSource, KeyToPath, Lifecycle,
    LifecycleHandler, PersistentVolumeClaimTemplate, PodAffinityTerm, PodAntiAffinity, PodSpec,
    PodTemplateSpec, SecretVolumeSource, Service, ServiceSpec, SleepAction, Volume, VolumeMount,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::common::{
    hash_of, labels, namespace, object_meta, selector, selector_labels, Component, IpFamily, Object,
};
pub use super::names::cache::{
    client_service_name, peer_service_name, workload_name, HTTP_PORT, METRICS_PORT, PEER_PORT,
};
use super::network::{from_pods, pdb, service_port, tcp};
use super::pod::{
    claim, container_port, container_security_context, field_env, http_probe, pod_security_context,
};
use super::secret::{peer_token_secret_name, PREVIOUS_TOKEN_KEY, TOKEN_KEY};
use super::validate::{DiskPlan, Plan};
use crate::crd::{CasseroleCache, LogFormat, WorkloadKind};

/// Pod-template annotation whose change rolls the cache pods.
pub const CONFIG_HASH_ANNOTATION: &str = "casserole.io/config-hash";
/// Pod-template annotation carrying the peer token's fingerprint.
pub const PEER_TOKEN_ANNOTATION: &str = "casserole.io/peer-token";
pub const DISK_CACHE_DIR: &str = "/var/cache/casserole";
pub const PEER_TOKEN_DIR: &str = "/etc/casserole/peer";
pub const ADMIN_TOKEN_DIR: &str = "/etc/casserole/admin";
/// Pod-template annotation carrying the admin token's fingerprint (the node reads it at start).
pub const ADMIN_TOKEN_ANNOTATION: &str = "casserole.io/admin-token";
/// Volume (and claim-template) name of the disk tier.
pub const CACHE_VOLUME: &str = "cache";
/// How long a node drains in-flight requests; the pod gets a few seconds more before SIGKILL.
const SHUTDOWN_GRACE_SECONDS: i64 = 30;
/// How long a terminating pod keeps serving before the node is told to stop: long enough for
/// its endpoint to leave the Services (and kube-proxy/peers to notice).
pub const PRE_STOP_PAUSE_SECONDS: i64 = 5;
/// Startup allowance: the disk index scan of a large cache may take minutes, and liveness
/// must not kill a node still scanning (10 s × 60 = 10 min).
const STARTUP_PROBE_PERIOD: i32 = 10;
const STARTUP_PROBE_FAILURES: i32 = 60;
/// Kubernetes sends SIGKILL this long after it starts terminating a pod: the pause, the node's
/// own grace for in-flight responses, and a margin.
pub const TERMINATION_GRACE_SECONDS: i64 = PRE_STOP_PAUSE_SECONDS + SHUTDOWN_GRACE_SECONDS + 5;

/// The node image matching this operator release, used when `spec.image` is unset.
pub fn default_node_image() -> String {
    format!(
        "ghcr.io/casserole-cache/casserole-node:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The cache's objects: its Services, PodDisruptionBudget, NetworkPolicy and workload (its
/// peer token Secret is created apart, see the `secret` module).
///
/// A DaemonSet gets no PodDisruptionBudget: the disruption controller cannot compute
/// `maxUnavailable` for pods whose controller has no scale subresource, so such a budget
/// refuses every eviction and blocks node drains; the DaemonSet's own surge roll
/// (`maxSurge: 1`, `maxUnavailable: 0`) paces its updates, and a drained node's cache pod is
/// disposable by design.
pub fn objects(cache: &CasseroleCache, plan: &Plan) -> Vec<Object> {
    let mut objects = vec![
        Object::Service(Box::new(peer_service(cache))),
        Object::Service(Box::new(client_service(cache))),
    ];
    if cache.spec.workload == WorkloadKind::StatefulSet {
        objects.push(Object::PodDisruptionBudget(Box::new(pdb(
            cache,
            Component::Cache,
            workload_name(cache),
        ))));
    }
    objects.push(Object::NetworkPolicy(Box::new(policy(cache))));
    objects.push(workload(cache, plan));
    objects
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

/// The peer port (which serves cached chunks to other nodes) admits only this cache's own
/// pods; the client and metrics ports stay open, since selecting the pods in any policy
/// isolates them for every port.
fn policy(cache: &CasseroleCache) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(cache, workload_name(cache), Component::Cache),
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

/// `--cluster-name`: namespaces the etcd prefix, so caches sharing an external etcd never
/// see each other's members. `<namespace>.<name>`: neither a namespace (DNS-1123 label) nor a
/// cache name (DNS-1035 label) holds a '.', so two caches never share a prefix (`team-a`/`web`
/// and `team`/`a-web` did with a '-').
pub fn cluster_name(cache: &CasseroleCache) -> String {
    format!("{}.{}", namespace(cache), cache.name_any())
}

/// The URL peers reach a pod at; an IPv6 literal in a URL needs brackets.
fn peering_url(family: IpFamily) -> String {
    match family {
        IpFamily::IPv4 => format!("http://$(POD_IP):{PEER_PORT}"),
        IpFamily::IPv6 => format!("http://[$(POD_IP)]:{PEER_PORT}"),
    }
}

/// The `casserole-node` command line derived from the spec (the node's CLI contract).
pub fn node_args(cache: &CasseroleCache, plan: &Plan) -> Vec<String> {
    let spec = &cache.spec;
    let any = plan.inputs.ip_family.any_address();
    let mut args = vec![
        format!("--address={any}:{HTTP_PORT}"),
        format!("--admin-address={any}:{METRICS_PORT}"),
        format!("--peer-address={any}:{PEER_PORT}"),
        format!("--peering-address={}", peering_url(plan.inputs.ip_family)),
        "--node-id=$(POD_NAME)".into(),
        format!("--upstream={}", spec.upstream),
    ];
    args.extend(
        spec.pass_through
            .iter()
            .map(|p| format!("--pass-through={p}")),
    );
    args.extend(
        spec.routes
            .iter()
            .map(|r| format!("--route={}={}", r.prefix, r.url)),
    );
    // `/` is the upstream's own origin, as the node names it.
    let origins = std::iter::once(("/", spec.follow_redirects, &spec.ignore_query_params)).chain(
        spec.routes.iter().map(|r| {
            (
                r.prefix.as_str(),
                r.follow_redirects,
                &r.ignore_query_params,
            )
        }),
    );
    for (prefix, follows, ignored) in origins {
        if follows {
            args.push(format!("--follow-redirects={prefix}"));
        }
        args.extend(
            ignored
                .iter()
                .map(|name| format!("--ignore-query-param={prefix}={name}")),
        );
    }
    args.extend(
        spec.ttl_rules
            .iter()
            .map(|r| format!("--ttl-rule={}={}", r.pattern, r.ttl)),
    );
    args.push(format!("--min-ttl={}s", spec.min_ttl_seconds));
    if let Some(id) = &spec.surrogate_id {
        args.push(format!("--surrogate-id={id}"));
    }
    args.push(format!("--chunk-size={}", spec.chunk_size));
    args.push(format!("--max-memory-usage={}", spec.memory.max_usage));
    match &plan.disk {
        Some(disk) => {
            args.push("--disk-cache-enabled=true".into());
            args.push(format!("--disk-cache-dir={DISK_CACHE_DIR}"));
            args.push(format!("--max-disk-usage={}", disk.max_usage));
            args.push(format!("--cleaned-disk-usage={}", disk.cleaned_usage));
        }
        None => args.push("--disk-cache-enabled=false".into()),
    }
    args.push(format!("--etcd={}", plan.etcd_endpoints.join(",")));
    args.push(format!("--cluster-name={}", cluster_name(cache)));
    args.push(format!("--peer-token-file={PEER_TOKEN_DIR}/{TOKEN_KEY}"));
    if plan.inputs.peer_token_previous {
        args.push(format!(
            "--peer-token-previous-file={PEER_TOKEN_DIR}/{PREVIOUS_TOKEN_KEY}"
        ));
    }
    if spec.admin_token.is_some() {
        args.push(format!("--admin-token-file={ADMIN_TOKEN_DIR}/{TOKEN_KEY}"));
    }
    args.push(format!(
        "--log-format={}",
        match spec.log_format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    ));
    args.push(format!("--shutdown-grace={SHUTDOWN_GRACE_SECONDS}s"));
    args
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn container(cache: &CasseroleCache, plan: &Plan) -> Container {
    let spec = &cache.spec;
    let mut mounts = vec![
        mount("peer-token", PEER_TOKEN_DIR, true),
        mount("tmp", "/tmp", false),
    ];
    if plan.disk.is_some() {
        mounts.push(mount(CACHE_VOLUME, DISK_CACHE_DIR, false));
    }
    if spec.admin_token.is_some() {
        mounts.push(mount("admin-token", ADMIN_TOKEN_DIR, true));
    }
    Container {
        name: "casserole-node".into(),
        image: Some(spec.image.clone().unwrap_or_else(default_node_image)),
        image_pull_policy: Some(spec.image_pull_policy.as_str().into()),
        args: Some(node_args(cache, plan)),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
        ]),
        ports: Some(vec![
            container_port("http", HTTP_PORT),
            container_port("peer", PEER_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        startup_probe: Some(http_probe(
            "/healthz",
            "metrics",
            STARTUP_PROBE_PERIOD,
            STARTUP_PROBE_FAILURES,
        )),
        liveness_probe: Some(http_probe("/healthz", "metrics", 10, 3)),
        // The image has no shell: the kubelet's own sleep action (Kubernetes 1.30+).
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_PAUSE_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        readiness_probe: Some(http_probe("/readyz", "metrics", 5, 2)),
        resources: Some(plan.resources.clone()),
        volume_mounts: Some(mounts),
        security_context: Some(container_security_context()),
        ..Container::default()
    }
}

fn volumes(cache: &CasseroleCache, plan: &Plan) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "peer-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(peer_token_secret_name(cache)),
                // Readable by the pod's fsGroup only.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    "64Mi".into(),
                )),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    if let Some(admin) = &cache.spec.admin_token {
        volumes.push(Volume {
            name: "admin-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(admin.name.clone()),
                items: Some(vec![KeyToPath {
                    key: admin.key.clone(),
                    path: TOKEN_KEY.into(),
                    ..KeyToPath::default()
                }]),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    // A DaemonSet has no volumeClaimTemplates: its pods get a generic ephemeral volume,
    // created and deleted with each pod (a node-local cache is disposable by design).
    if let (WorkloadKind::DaemonSet, Some(disk)) = (cache.spec.workload, &plan.disk) {
        volumes.push(Volume {
            name: CACHE_VOLUME.into(),
            ephemeral: Some(EphemeralVolumeSource {
                volume_claim_template: Some(PersistentVolumeClaimTemplate {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(cache, Component::Cache)),
                        ..ObjectMeta::default()
                    }),
                    spec: claim(None, None, &disk.size, disk.storage_class_name.clone())
                        .spec
                        .unwrap_or_default(),
                }),
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// StatefulSet pods prefer distinct nodes unless the user set an affinity: losing one node
/// then loses one cache member, not several.
fn affinity(cache: &CasseroleCache) -> Option<Affinity> {
    if cache.spec.affinity.is_some() || cache.spec.workload == WorkloadKind::DaemonSet {
        return cache.spec.affinity.clone();
    }
    Some(Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(selector(cache, Component::Cache)),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    })
}

/// The pod template, with the config-hash annotation: a hash of the template itself, so any
/// change that reaches the pods (flags, image, volumes, scheduling) rolls them, while a
/// replica count change (not part of the template) never does.
pub fn pod_template(cache: &CasseroleCache, plan: &Plan) -> PodTemplateSpec {
    let spec = &cache.spec;
    // The user's annotations win over the operator's defaults.
    let mut annotations = spec.pod_annotations.clone();
    for (key, value) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", METRICS_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        annotations.entry(key.into()).or_insert(value);
    }
    if let Some(fingerprint) = &plan.inputs.peer_token_fingerprint {
        annotations.insert(PEER_TOKEN_ANNOTATION.into(), fingerprint.clone());
    }
    if let Some(fingerprint) = &plan.inputs.admin_token_fingerprint {
        annotations.insert(ADMIN_TOKEN_ANNOTATION.into(), fingerprint.clone());
    }
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(cache, Component::Cache)),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container(cache, plan)],
            volumes: Some(volumes(cache, plan)),
            security_context: Some(pod_security_context()),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            affinity: affinity(cache),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                .then(|| spec.image_pull_secrets.clone()),
            priority_class_name: spec.priority_class_name.clone(),
            topology_spread_constraints: (!spec.topology_spread_constraints.is_empty())
                .then(|| spec.topology_spread_constraints.clone()),
            ..PodSpec::default()
        }),
    };
    let hash = hash_of(&template);
    if let Some(meta) = template.metadata.as_mut() {
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(CONFIG_HASH_ANNOTATION.into(), hash);
    }
    template
}

fn statefulset(cache: &CasseroleCache, plan: &Plan) -> StatefulSet {
    let claims = plan.disk.as_ref().map(|disk: &DiskPlan| {
        // Selector labels only: they never change, and a claim template is immutable.
        vec![claim(
            Some(CACHE_VOLUME.into()),
            Some(selector_labels(cache, Component::Cache)),
            &disk.size,
            disk.storage_class_name.clone(),
        )]
    });
    StatefulSet {
        metadata: object_meta(cache, workload_name(cache), Component::Cache),
        spec: StatefulSetSpec {
            replicas: Some(cache.spec.replicas),
            service_name: Some(peer_service_name(cache)),
            // Cache members are independent: start and replace them in parallel.
            pod_management_policy: Some("Parallel".into()),
            selector: selector(cache, Component::Cache),
            template: pod_template(cache, plan),
            volume_claim_templates: claims,
            // A cache's disk is only worth keeping while its pod may come back.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Delete".into()),
                },
            ),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

fn daemonset(cache: &CasseroleCache, plan: &Plan) -> DaemonSet {
    DaemonSet {
        metadata: object_meta(cache, workload_name(cache), Component::Cache),
        spec: DaemonSetSpec {
            selector: selector(cache, Component::Cache),
            template: pod_template(cache, plan),
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                // Surge: a node's new pod starts (and passes readiness) before its old one
                // stops, so node-local clients (internalTrafficPolicy: Local) always have one.
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            ..DaemonSetSpec::default()
        },
        ..DaemonSet::default()
    }
}

/// The cache workload of the spec's kind.
fn workload(cache: &CasseroleCache, plan: &Plan) -> Object {
    match cache.spec.workload {
        WorkloadKind::StatefulSet => Object::StatefulSet(Box::new(statefulset(cache, plan))),
        WorkloadKind::DaemonSet => Object::DaemonSet(Box::new(daemonset(cache, plan))),
    }
}
