//! Fixtures shared by the unit and reconcile tests.

use crate::crd::CasseroleCache;

/// A cache as the apiserver would hand it over (uid, generation, defaults applied by serde),
/// from the YAML of its spec.
pub fn cache_from_spec(spec_yaml: &str) -> CasseroleCache {
    let spec = serde_yaml::from_str(spec_yaml).expect("test spec parses");
    let mut cache = CasseroleCache::new("web", spec);
    cache.metadata.namespace = Some("cdn".into());
    cache.metadata.uid = Some("6b3c1c5e-0000-4000-8000-000000000001".into());
    cache.metadata.generation = Some(1);
    cache
}

/// The default test cache: a 3-replica StatefulSet with managed etcd and a disk tier.
pub fn default_cache() -> CasseroleCache {
    cache_from_spec("upstream: https://downloads.example.com\n")
}
