//! The ground every owned object stands on: the `Object` they are handed out as, which
//! component they belong to, their labels, selectors and metadata, and what they depend on
//! besides the spec. Nothing here knows any one component.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::crd::CasseroleCache;

/// The single server-side apply field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "casserole-operator";
/// Namespace assumed when a rendered resource has none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Which half of a cache an object belongs to (the `app.kubernetes.io/component` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Cache,
    Etcd,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Cache => "cache",
            Component::Etcd => "etcd",
        }
    }
}

/// One object owned by a `CasseroleCache`, typed so tests can inspect fields directly.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    NetworkPolicy(Box<NetworkPolicy>),
    Secret(Box<Secret>),
}

impl Object {
    fn meta(&self) -> &ObjectMeta {
        match self {
            Object::StatefulSet(o) => o.meta(),
            Object::DaemonSet(o) => o.meta(),
            Object::Service(o) => o.meta(),
            Object::PodDisruptionBudget(o) => o.meta(),
            Object::NetworkPolicy(o) => o.meta(),
            Object::Secret(o) => o.meta(),
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// Group/version/kind/plural, enough to address the object through `Api<DynamicObject>`.
    pub fn api_resource(&self) -> ApiResource {
        match self {
            Object::StatefulSet(_) => ApiResource::erase::<StatefulSet>(&()),
            Object::DaemonSet(_) => ApiResource::erase::<DaemonSet>(&()),
            Object::Service(_) => ApiResource::erase::<Service>(&()),
            Object::PodDisruptionBudget(_) => ApiResource::erase::<PodDisruptionBudget>(&()),
            Object::NetworkPolicy(_) => ApiResource::erase::<NetworkPolicy>(&()),
            Object::Secret(_) => ApiResource::erase::<Secret>(&()),
        }
    }

    pub fn kind(&self) -> String {
        self.api_resource().kind
    }

    /// The full object as JSON, with `apiVersion` and `kind` (which k8s-openapi's typed
    /// structs leave to their `Resource` impl), as sent in an apply patch.
    pub fn to_value(&self) -> serde_json::Value {
        fn with_type<T: Serialize + Resource<DynamicType = ()>>(o: &T) -> serde_json::Value {
            let mut v = serde_json::to_value(o).expect("k8s-openapi objects serialize");
            v["apiVersion"] = T::api_version(&()).into();
            v["kind"] = T::kind(&()).into();
            v
        }
        match self {
            Object::StatefulSet(o) => with_type(o.as_ref()),
            Object::DaemonSet(o) => with_type(o.as_ref()),
            Object::Service(o) => with_type(o.as_ref()),
            Object::PodDisruptionBudget(o) => with_type(o.as_ref()),
            Object::NetworkPolicy(o) => with_type(o.as_ref()),
            Object::Secret(o) => with_type(o.as_ref()),
        }
    }
}

/// The IP family of pod addresses (`status.podIP`) in the cluster: an IPv6 address must be
/// bracketed in the peering URL the node advertises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IpFamily {
    #[default]
    #[value(name = "IPv4")]
    IPv4,
    #[value(name = "IPv6")]
    IPv6,
}

impl IpFamily {
    /// The address that listens on every interface of the family (a pod has only its own).
    pub fn any_address(self) -> &'static str {
        match self {
            IpFamily::IPv4 => "0.0.0.0",
            IpFamily::IPv6 => "[::]",
        }
    }

    pub fn of(ip: std::net::IpAddr) -> IpFamily {
        match ip {
            std::net::IpAddr::V4(_) => IpFamily::IPv4,
            std::net::IpAddr::V6(_) => IpFamily::IPv6,
        }
    }
}

/// What the owned objects depend on besides the spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    /// IP family of the cluster's pod addresses.
    pub ip_family: IpFamily,
    /// Fingerprint of the peer token (`token_fingerprint` of the Secret's module), when known:
    /// a pod-template annotation, so a new token (the Secret was deleted and made again) rolls
    /// the pods onto it.
    pub peer_token_fingerprint: Option<String>,
    /// The peer token Secret also holds a `previous` token (a rotation in progress): the
    /// nodes accept it too.
    pub peer_token_previous: bool,
    /// Fingerprint of the admin token (`spec.adminToken`), when known: a new one rolls the
    /// pods (the node reads its token file at start).
    pub admin_token_fingerprint: Option<String>,
    /// The managed etcd has formed its cluster (see `etcd::initial_cluster_state`).
    pub etcd_bootstrapped: bool,
    /// Namespace of the operator, admitted to the managed etcd's client port (member
    /// replacement); `None` when rendering outside a cluster.
    pub operator_namespace: Option<String>,
}

/// Namespace of the cache (and of everything it owns).
pub fn namespace(cache: &CasseroleCache) -> String {
    cache
        .namespace()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

/// Labels that select one component's pods; never change them (selectors are immutable).
pub fn selector_labels(cache: &CasseroleCache, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "casserole".into()),
        ("app.kubernetes.io/instance".into(), cache.name_any()),
        (
            "app.kubernetes.io/component".into(),
            component.as_str().into(),
        ),
    ])
}

/// The [`selector_labels`] as a label selector (of a workload, budget, policy or affinity).
pub fn selector(cache: &CasseroleCache, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(cache, component)),
        ..LabelSelector::default()
    }
}

/// Selector labels plus the informational ones.
pub fn labels(cache: &CasseroleCache, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(cache, component);
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels.insert("app.kubernetes.io/part-of".into(), "casserole".into());
    labels
}

/// `kubectl`-style selector string of the cache pods (status.selector, for the scale
/// subresource and HPAs).
pub fn selector_string(cache: &CasseroleCache) -> String {
    selector_labels(cache, Component::Cache)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata of an owned object: name, namespace, labels and the controller owner reference
/// that lets Kubernetes garbage-collect it with the cache. A cache read from a file (render)
/// has no uid, hence no owner reference.
pub fn object_meta(cache: &CasseroleCache, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(cache)),
        labels: Some(labels(cache, component)),
        owner_references: cache.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Short, stable hash of any serializable value (for the config-hash annotation).
pub fn hash_of<T: Serialize>(value: &T) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(value).expect("serializable");
    hex::encode(&Sha256::digest(bytes)[..8])
}
