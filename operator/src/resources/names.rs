//! The names and ports by which the owned objects find each other: the cache nodes reach
//! etcd's client Service, the policies admit the ports, the reconciler prunes and watches by
//! name. Each component re-exports its own; nothing here knows how an object is built.

/// The cache workload's names and container ports.
pub mod cache {
    use kube::ResourceExt;

    use crate::crd::CasseroleCache;

    pub const HTTP_PORT: i32 = 8080;
    pub const PEER_PORT: i32 = 8000;
    pub const METRICS_PORT: i32 = 9090;

    /// Name of the StatefulSet or DaemonSet (and of its PodDisruptionBudget and
    /// NetworkPolicy).
    pub fn workload_name(cache: &CasseroleCache) -> String {
        cache.name_any()
    }

    /// Client Service of the cache (what users point at).
    pub fn client_service_name(cache: &CasseroleCache) -> String {
        cache.name_any()
    }

    /// Headless Service of the cache pods (the StatefulSet's `serviceName`, per-pod DNS).
    pub fn peer_service_name(cache: &CasseroleCache) -> String {
        format!("{}-peer", cache.name_any())
    }
}

/// The managed etcd's names and ports.
pub mod etcd {
    use kube::ResourceExt;

    use crate::crd::CasseroleCache;

    pub const CLIENT_PORT: i32 = 2379;
    pub const PEER_PORT: i32 = 2380;
    pub const METRICS_PORT: i32 = 2381;

    /// Name of the StatefulSet, PodDisruptionBudget and NetworkPolicy.
    pub fn name(cache: &CasseroleCache) -> String {
        format!("{}-etcd", cache.name_any())
    }

    /// The client Service the cache nodes connect to.
    pub fn client_service_name(cache: &CasseroleCache) -> String {
        name(cache)
    }

    /// The headless Service that gives members stable DNS names.
    pub fn peer_service_name(cache: &CasseroleCache) -> String {
        format!("{}-etcd-peer", cache.name_any())
    }
}
