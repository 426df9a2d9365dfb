//! The `CasseroleCache` custom resource (`casserole.io/v1alpha1`).
//!
//! Everything the apiserver can check on its own lives in the generated schema: defaults,
//! enums, patterns, ranges and CEL rules (`x-kubernetes-validations`) for rules that span
//! fields. What a schema cannot express (regex syntax, derived disk watermarks, name length
//! budgets) is checked by [`crate::resources::desired`] and surfaces as `InvalidSpec`.

// kube-derive's repeated `printcolumn(type_ = ...)` items look like duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A size spelled as a Kubernetes quantity ("2Mi", "100M", "1.5Gi", "1000"): exactly the
/// grammar the node parses (`casserole_limits`), a subset of what CEL's `quantity()` reads.
///
/// Quantities are strings (not int-or-string) so that CEL's `quantity()` can compare them.
pub const QUANTITY_PATTERN: &str = casserole_limits::QUANTITY_PATTERN;

/// One cached HTTP upstream served by a cluster of `casserole-node` pods.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "casserole.io",
    version = "v1alpha1",
    kind = "CasseroleCache",
    namespaced,
    shortname = "casserole",
    status = "CasseroleCacheStatus",
    derive = "PartialEq",
    validation = crate::schema_rules::name_rule(),
    doc = "A distributed HTTP cache for large objects in front of one upstream",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Upstream", type_ = "string", json_path = ".status.upstream"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Pods Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema_rules::spec_transitions)]
pub struct CasseroleCacheSpec {
    /// Base URL of the origin server every request is forwarded to (http or https, an
    /// optional port and path, no query or fragment).
    #[schemars(regex(pattern = casserole_limits::HTTP_URL_PATTERN), length(max = 2048))]
    pub upstream: String,

    /// Paths routed to another origin: a request whose path starts with `prefix` is fetched
    /// from `url` (node flag `--route PREFIX=URL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["prefix"]))]
    pub routes: Vec<RouteSpec>,

    /// The nodes follow the upstream's redirects themselves, into their own origins only
    /// (node flag `--follow-redirects /`): for clients that cannot follow a redirect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_redirects: bool,

    /// Query parameters of the upstream's URLs left out of the cache key: the signature
    /// parameters of presigned URLs (node flag `--ignore-query-param /=NAME`). A fresh copy is
    /// then served to any signature, valid or not; an expired one gets 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = casserole_limits::QUERY_PARAM_NAME_PATTERN)))]
    pub ignore_query_params: Vec<String>,

    /// Freshness lifetimes by URL: objects whose path and query match `pattern` (Rust `regex`
    /// syntax) are fresh for `ttl` (node flag `--ttl-rule REGEX=DURATION`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub ttl_rules: Vec<TtlRuleSpec>,

    /// Secret holding the bearer token of the nodes' purge API (`--admin-token-file`); without
    /// it the purge API is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<SecretKeyRef>,

    /// URL regexes (Rust `regex` syntax, matched against the request path and query) that are
    /// always proxied to the upstream without caching.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub pass_through: Vec<String>,

    /// Objects whose freshness lifetime is shorter than this are not cached. 0 (the default,
    /// as the node's): every storable response is kept, however short-lived, and revalidated.
    #[serde(default = "default_min_ttl")]
    #[schemars(range(min = 0, max = 31536000))]
    pub min_ttl_seconds: i64,

    /// The name the cache answers to in the origin's `Surrogate-Control` (directives for the
    /// caches acting on the origin's behalf, e.g. `max-age=86400;casserole`), sent upstream as
    /// `Surrogate-Capability` (node flag `--surrogate-id`). Unset: the node's `casserole`;
    /// empty: `Surrogate-Control` is not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = casserole_limits::SURROGATE_ID_PATTERN))]
    pub surrogate_id: Option<String>,

    /// Size of one cached chunk (a quantity, 64Ki to 64Mi, e.g. 2Mi). Changing it invalidates
    /// the cache.
    #[serde(default = "default_chunk_size")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 32))]
    #[schemars(transform = crate::schema_rules::chunk_size)]
    pub chunk_size: String,

    /// How cache pods are run: a StatefulSet of `replicas` pods, or a DaemonSet with one pod
    /// per Kubernetes node (node-local caching).
    #[serde(default)]
    pub workload: WorkloadKind,

    /// Number of cache pods in StatefulSet mode (the scale subresource writes this field).
    /// In DaemonSet mode it has no effect (one pod per eligible node) and cannot change.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// In-memory tier.
    #[serde(default)]
    pub memory: MemorySpec,

    /// On-disk tier, backed by a PersistentVolumeClaim per pod (StatefulSet) or a generic
    /// ephemeral volume (DaemonSet).
    #[serde(default)]
    pub disk: DiskSpec,

    /// Where cluster membership is kept: an etcd the operator runs, or an existing one.
    #[serde(default)]
    pub etcd: EtcdSpec,

    /// Container image of `casserole-node`. Set, it wins over operator upgrades (upgrade the
    /// cache on your own schedule); unset, it is the release matching the operator, so an
    /// operator upgrade rolls the cache onto it (announced by a NodeImageChanged Event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Image pull policy of the cache container.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// Compute resources of the cache container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node selector of cache pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of cache pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity of cache pods. When unset, StatefulSet pods prefer distinct nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Topology spread constraints of cache pods (e.g. across zones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// PriorityClass of cache pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// Secrets to pull the cache (and managed etcd) images with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Extra annotations on cache pods. They win over the operator's defaults
    /// (`prometheus.io/*`); only `casserole.io/*` keys are the operator's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// The client-facing Service.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Log format of the cache nodes.
    #[serde(default)]
    pub log_format: LogFormat,
}

fn default_min_ttl() -> i64 {
    0
}
fn default_chunk_size() -> String {
    "2Mi".into()
}
fn default_replicas() -> i32 {
    3
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    #[default]
    StatefulSet,
    DaemonSet,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// In-memory tier settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemorySpec {
    /// Memory the chunk cache may use per pod (a quantity). Leave headroom in `resources`.
    #[serde(default = "default_memory")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 32))]
    #[schemars(transform = crate::schema_rules::size)]
    pub max_usage: String,
}

impl Default for MemorySpec {
    fn default() -> Self {
        MemorySpec {
            max_usage: default_memory(),
        }
    }
}

fn default_memory() -> String {
    "100M".into()
}

/// On-disk tier settings. Watermarks: `cleanedUsage < maxUsage < size`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.maxUsage) || quantity(self.maxUsage).isLessThan(quantity(self.size))",
        "message": "disk.maxUsage must be less than disk.size"
    },
    {
        "rule": "!has(self.cleanedUsage) || !has(self.maxUsage) || quantity(self.cleanedUsage).isLessThan(quantity(self.maxUsage))",
        "message": "disk.cleanedUsage must be less than disk.maxUsage"
    }
]))]
pub struct DiskSpec {
    /// Whether the disk tier is used at all.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Size of the volume requested per pod.
    #[serde(default = "default_disk_size")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 32))]
    #[schemars(transform = crate::schema_rules::size)]
    pub size: String,

    /// Disk usage at which cleaning starts (default: 80% of `size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 32))]
    #[schemars(transform = crate::schema_rules::size)]
    pub max_usage: Option<String>,

    /// Usage that cleaning brings the disk back down to (default: 75% of `maxUsage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 32))]
    #[schemars(transform = crate::schema_rules::size)]
    pub cleaned_usage: Option<String>,

    /// StorageClass of the volume (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl Default for DiskSpec {
    fn default() -> Self {
        DiskSpec {
            enabled: true,
            size: default_disk_size(),
            max_usage: None,
            cleaned_usage: None,
            storage_class_name: None,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_disk_size() -> String {
    "10Gi".into()
}

/// etcd for cluster membership: exactly one of `managed` and `external`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.managed) != has(self.external)",
        "message": "exactly one of etcd.managed and etcd.external must be set"
    }
]))]
pub struct EtcdSpec {
    /// An etcd cluster run by the operator next to the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedEtcd>,

    /// An etcd cluster that already exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEtcd>,
}

impl Default for EtcdSpec {
    fn default() -> Self {
        EtcdSpec {
            managed: Some(ManagedEtcd::default()),
            external: None,
        }
    }
}

/// An etcd StatefulSet owned by the cache. Fixed at creation (transition rules).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema_rules::managed_etcd_transitions)]
pub struct ManagedEtcd {
    /// Number of etcd members: 1 (no fault tolerance) or 3.
    #[serde(default = "default_etcd_replicas")]
    #[schemars(extend("enum" = [1, 3]))]
    pub replicas: i32,

    /// Size of each member's data volume.
    #[serde(default = "default_etcd_storage")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 32))]
    #[schemars(transform = crate::schema_rules::size)]
    pub storage: String,

    /// StorageClass of the data volumes (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,

    /// etcd image (v3 API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Compute resources of each member (default: requests 100m CPU and 256Mi memory, limit
    /// 512Mi memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node selector of the members.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

impl Default for ManagedEtcd {
    fn default() -> Self {
        ManagedEtcd {
            replicas: default_etcd_replicas(),
            storage: default_etcd_storage(),
            storage_class_name: None,
            image: None,
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
        }
    }
}

fn default_etcd_replicas() -> i32 {
    3
}
fn default_etcd_storage() -> String {
    "1Gi".into()
}

/// An etcd cluster the operator does not manage.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalEtcd {
    /// Client URLs, e.g. `http://etcd.infra.svc:2379`. Plain http only: the nodes' etcd
    /// client has no TLS (reach a TLS etcd through a proxy on the cluster network).
    #[schemars(
        length(min = 1, max = 16),
        inner(regex(pattern = casserole_limits::ETCD_ENDPOINT_PATTERN))
    )]
    pub endpoints: Vec<String>,
}

/// The client-facing Service.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Port the Service listens on (forwarded to the pods' `http` port).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Annotations of the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            type_: ServiceType::default(),
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_service_port() -> i32 {
    80
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// One `--route`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Path prefix, starting with `/`.
    #[schemars(regex(pattern = r"^/[^\s=?#]*$"), length(min = 1, max = 1024))]
    pub prefix: String,
    /// Origin base URL for those paths (http or https, no query or fragment).
    #[schemars(regex(pattern = casserole_limits::HTTP_URL_PATTERN), length(max = 2048))]
    pub url: String,
    /// The nodes follow this origin's redirects themselves (node flag `--follow-redirects`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_redirects: bool,
    /// Query parameters left out of this route's cache keys, e.g. `X-Amz-Signature`,
    /// `X-Amz-Date`, `X-Amz-Credential`, `X-Amz-Expires` (node flag `--ignore-query-param`).
    /// A fresh copy is then served to any signature, valid or not; an expired one gets 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = casserole_limits::QUERY_PARAM_NAME_PATTERN)))]
    pub ignore_query_params: Vec<String>,
}

/// One `--ttl-rule`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TtlRuleSpec {
    /// Regex on the request's path and query.
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: String,
    /// Freshness lifetime, e.g. `30s`, `5m`, `1h`, or `immutable` (never revalidated while
    /// stored).
    #[schemars(regex(pattern = casserole_limits::TTL_RULE_TTL_PATTERN), length(max = 32))]
    pub ttl: String,
}

/// A key of a Secret in the cache's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(
        regex(pattern = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_token_key")]
    #[schemars(regex(pattern = "^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

fn default_token_key() -> String {
    "token".into()
}

/// Observed state, written by the operator only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CasseroleCacheStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Cache pods that exist (scale subresource `statusReplicasPath`).
    #[serde(default)]
    pub replicas: i32,

    /// Cache pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// The upstream without credentials (the `Upstream` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,

    /// Label selector of the cache pods (scale subresource `labelSelectorPath`, used by HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Cluster members: the cache pods that are ready (their `/readyz` needs their etcd
    /// membership loaded), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,

    /// `Ready`, `EtcdReady`, `MembersReady`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl CasseroleCache {
    /// The condition of this type in the current status, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }
}
