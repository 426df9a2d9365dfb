//! Unit tests of spec validation, schema defaults and pruning candidates.

use super::testing::{cache_from_spec, default_cache};
use super::*;

fn invalid_field(spec: &str) -> String {
    desired(&cache_from_spec(spec)).unwrap_err().field
}

#[test]
fn invalid_specs_name_the_field() {
    assert_eq!(
        invalid_field("upstream: http://u\npassThrough: ['^/ok', '(unclosed']\n"),
        "spec.passThrough[1]"
    );
    assert_eq!(invalid_field("upstream: ftp://u\n"), "spec.upstream");
    assert_eq!(
        invalid_field("upstream: http://u\nchunkSize: 1k\n"),
        "spec.chunkSize"
    );
    assert_eq!(
        invalid_field("upstream: http://u\nmemory: {maxUsage: lots}\n"),
        "spec.memory.maxUsage"
    );
    // A limit the chunk cache cannot fit in: OOM-killed under load.
    assert_eq!(
        invalid_field(
            "upstream: http://u\nmemory: {maxUsage: 1Gi}\nresources: {limits: {memory: 1Gi}}\n"
        ),
        "spec.resources.limits.memory"
    );
    for fits in ["1088Mi", "2Gi", "1500M", "2e9", "1100000000000m"] {
        let spec = format!(
            "upstream: http://u\nmemory: {{maxUsage: 1Gi}}\nresources: {{limits: {{memory: {fits}}}}}\n"
        );
        assert!(desired(&cache_from_spec(&spec)).is_ok(), "{fits}");
    }
    assert_eq!(
        invalid_field("upstream: http://u\ndisk: {size: 10Gi, maxUsage: 10Gi}\n"),
        "spec.disk.maxUsage"
    );
    // Only detectable after deriving maxUsage (8Gi) from size: CEL sees no maxUsage at all.
    assert_eq!(
        invalid_field("upstream: http://u\ndisk: {size: 10Gi, cleanedUsage: 9Gi}\n"),
        "spec.disk.cleanedUsage"
    );
    assert_eq!(
        invalid_field("upstream: http://u\netcd: {managed: {replicas: 2}}\n"),
        "spec.etcd.managed.replicas"
    );
    assert_eq!(invalid_field("upstream: http://u\netcd: {}\n"), "spec.etcd");
    assert_eq!(
        invalid_field("upstream: http://u\netcd: {external: {endpoints: ['etcd:2379']}}\n"),
        "spec.etcd.external.endpoints[0]"
    );
    // The node's limits, not looser ones: 128Mi chunks and `+1k` would crash-loop the pods.
    assert_eq!(
        invalid_field("upstream: http://u\nchunkSize: 128Mi\n"),
        "spec.chunkSize"
    );
    assert_eq!(
        invalid_field("upstream: http://u\nmemory: {maxUsage: +1k}\n"),
        "spec.memory.maxUsage"
    );
    for name in ["web-etcd", "web-peer"] {
        let mut cache = default_cache();
        cache.metadata.name = Some(name.into());
        assert_eq!(
            desired(&cache).unwrap_err().field,
            "metadata.name",
            "{name}"
        );
    }
    let mut long = default_cache();
    long.metadata.name = Some("a".repeat(validate::MAX_NAME_LEN + 1));
    assert_eq!(desired(&long).unwrap_err().field, "metadata.name");
    // Disabled disk: its sizes are not checked.
    assert!(desired(&cache_from_spec(
        "upstream: http://u\ndisk: {enabled: false, size: 1Gi, maxUsage: 2Gi}\n"
    ))
    .is_ok());
}

#[test]
fn schema_defaults_match_serde_defaults() {
    // `render` and the reconciler see serde's defaults, the apiserver applies the schema's:
    // they must agree or a rendered cache would differ from the applied one.
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(CasseroleCache::crd()).unwrap();
    let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    let defaulted = serde_json::to_value(&default_cache().spec).unwrap();
    let mut checked = 0;
    for (field, schema) in props.as_object().unwrap() {
        if let Some(default) = schema.get("default") {
            assert_eq!(&defaulted[field], default, "default of spec.{field}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} defaults checked");
}

#[test]
fn leftovers_are_what_another_variant_would_own() {
    let names = |spec: &str| {
        let cache = cache_from_spec(spec);
        leftovers(&cache, &desired(&cache).unwrap())
            .into_iter()
            .map(|(ar, name)| format!("{}/{name}", ar.kind))
            .collect::<Vec<_>>()
    };
    assert_eq!(names("upstream: http://u\n"), ["DaemonSet/web"]);
    assert_eq!(
        names("upstream: http://u\nworkload: DaemonSet\netcd: {external: {endpoints: ['http://e:2379']}}\n"),
        [
            "StatefulSet/web",
            "PodDisruptionBudget/web",
            "Service/web-etcd-peer",
            "Service/web-etcd",
            "PodDisruptionBudget/web-etcd",
            "NetworkPolicy/web-etcd",
            "StatefulSet/web-etcd"
        ]
    );
}
