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

#[test]
fn urls_the_node_would_crash_loop_on_are_refused() {
    for bad in [
        "http://u?x=1",
        "http://u/#top",
        "http://u:99999",
        "http://u:0",
        "http://u:port",
    ] {
        let spec = format!("upstream: '{bad}'\n");
        assert_eq!(invalid_field(&spec), "spec.upstream", "{bad}");
    }
    assert_eq!(
        invalid_field("upstream: http://u\nroutes: [{prefix: /m/, url: 'http://hub?x'}]\n"),
        "spec.routes[0]"
    );
    assert_eq!(
        invalid_field("upstream: http://u\nroutes: [{prefix: m/, url: 'http://hub'}]\n"),
        "spec.routes[0]"
    );
    assert_eq!(
        invalid_field("upstream: http://u\nttlRules: [{pattern: '(', ttl: 1h}]\n"),
        "spec.ttlRules[0]"
    );
    assert_eq!(
        invalid_field("upstream: http://u\nttlRules: [{pattern: '^/x', ttl: 1d}]\n"),
        "spec.ttlRules[0]"
    );
}

#[test]
fn tls_etcd_endpoints_are_refused_with_the_reason() {
    let err = desired(&cache_from_spec(
        "upstream: http://u\netcd: {external: {endpoints: ['https://etcd:2379']}}\n",
    ))
    .unwrap_err();
    assert_eq!(err.field, "spec.etcd.external.endpoints[0]");
    assert!(err.message.contains("no TLS"), "{err}");
}

#[test]
fn names_must_be_dns1035_labels() {
    for bad in ["my.cache", "1cache", "Web"] {
        let mut cache = default_cache();
        cache.metadata.name = Some(bad.into());
        assert_eq!(desired(&cache).unwrap_err().field, "metadata.name", "{bad}");
    }
}

#[test]
fn routes_and_ttl_rules_become_node_flags() {
    let cache = cache_from_spec(
        "upstream: http://u\nroutes: [{prefix: /models/, url: 'http://hub.ml:8080/base'}]\nttlRules: [{pattern: '\\.iso$', ttl: 1h}]\n",
    );
    let plan = validate::plan(&cache).unwrap();
    let args = cache::node_args(&cache, &plan);
    assert!(args.contains(&"--route=/models/=http://hub.ml:8080/base".to_string()));
    assert!(args.contains(&"--ttl-rule=\\.iso$=1h".to_string()));
}

#[test]
fn redirects_and_ignored_query_params_become_node_flags() {
    let cache = cache_from_spec(
        "upstream: http://hub\nfollowRedirects: true\nignoreQueryParams: [Expires]\nroutes: [{prefix: /_cdn/, url: 'http://cdn', followRedirects: true, ignoreQueryParams: [X-Amz-Signature, X-Amz-Date]}]\n",
    );
    let plan = validate::plan(&cache).unwrap();
    let args = cache::node_args(&cache, &plan);
    for flag in [
        "--follow-redirects=/",
        "--ignore-query-param=/=Expires",
        "--follow-redirects=/_cdn/",
        "--ignore-query-param=/_cdn/=X-Amz-Signature",
        "--ignore-query-param=/_cdn/=X-Amz-Date",
    ] {
        assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
    }
    let plain = cache_from_spec("upstream: http://hub\n");
    let args = cache::node_args(&plain, &validate::plan(&plain).unwrap());
    assert!(!args
        .iter()
        .any(|a| a.starts_with("--follow-redirects") || a.starts_with("--ignore-query-param")));
}

#[test]
fn bad_ignored_query_params_are_refused_with_their_field() {
    let bad = cache_from_spec(
        "upstream: http://hub\nroutes: [{prefix: /_cdn/, url: 'http://cdn', ignoreQueryParams: [ok, 'a&b']}]\n",
    );
    let err = validate::plan(&bad).unwrap_err();
    assert_eq!(err.field, "spec.routes[0].ignoreQueryParams[1]");
    let names: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
    let many = cache_from_spec(&format!(
        "upstream: http://hub\nignoreQueryParams: [{}]\n",
        names.join(", ")
    ));
    let err = validate::plan(&many).unwrap_err();
    assert!(err.message.contains("at most 64"), "{}", err.message);
}

#[test]
fn cluster_names_of_different_caches_never_collide() {
    let named = |ns: &str, name: &str| {
        let mut c = default_cache();
        c.metadata.namespace = Some(ns.into());
        c.metadata.name = Some(name.into());
        cache::cluster_name(&c)
    };
    assert_ne!(named("team-a", "web"), named("team", "a-web"));
    assert_eq!(named("team-a", "web"), "team-a.web");
}

#[test]
fn cache_pods_request_what_they_use_unless_the_spec_says() {
    let plan = validate::plan(&default_cache()).unwrap();
    let memory = (100_000_000u64 + (64 << 20)).to_string();
    let r = &plan.resources;
    assert_eq!(r.requests.as_ref().unwrap()["memory"].0, memory);
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, memory);
    assert_eq!(
        r.requests.as_ref().unwrap()["cpu"].0,
        validate::DEFAULT_CPU_REQUEST
    );
    // What the user sets is kept.
    let own =
        cache_from_spec("upstream: http://u\nresources: {requests: {memory: 1Gi, cpu: '2'}}\n");
    let r = validate::plan(&own).unwrap().resources;
    assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "1Gi");
    assert!(r.limits.is_none());
}
