//! Unit tests of the desired-state function, one spec variant at a time.

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::testing::{cache_from_spec, default_cache};
use super::*;

fn statefulsets(objects: &[Object]) -> Vec<&StatefulSet> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::StatefulSet(s) => Some(s.as_ref()),
            _ => None,
        })
        .collect()
}

fn sts<'a>(objects: &'a [Object], name: &str) -> &'a StatefulSet {
    statefulsets(objects)
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no StatefulSet {name}"))
}

fn daemonset(objects: &[Object]) -> &DaemonSet {
    objects
        .iter()
        .find_map(|o| match o {
            Object::DaemonSet(d) => Some(d.as_ref()),
            _ => None,
        })
        .expect("a DaemonSet")
}

fn service<'a>(objects: &'a [Object], name: &str) -> &'a Service {
    objects
        .iter()
        .find_map(|o| match o {
            Object::Service(s) if s.metadata.name.as_deref() == Some(name) => Some(s.as_ref()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Service {name}"))
}

fn policy<'a>(objects: &'a [Object], name: &str) -> &'a NetworkPolicy {
    objects
        .iter()
        .find_map(|o| match o {
            Object::NetworkPolicy(p) if p.metadata.name.as_deref() == Some(name) => {
                Some(p.as_ref())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no NetworkPolicy {name}"))
}

fn pod_spec(t: &PodTemplateSpec) -> &PodSpec {
    t.spec.as_ref().unwrap()
}

fn node_container(t: &PodTemplateSpec) -> &Container {
    &pod_spec(t).containers[0]
}

fn args(t: &PodTemplateSpec) -> &[String] {
    node_container(t).args.as_deref().unwrap()
}

fn has_arg(t: &PodTemplateSpec, arg: &str) -> bool {
    args(t).iter().any(|a| a == arg)
}

fn kinds_and_names(objects: &[Object]) -> Vec<(String, String)> {
    objects
        .iter()
        .map(|o| (o.kind(), o.name().to_string()))
        .collect()
}

fn config_hash(t: &PodTemplateSpec) -> String {
    t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION].clone()
}

#[test]
fn statefulset_with_managed_etcd_and_disk_renders_every_object() {
    let objects = desired(&default_cache()).unwrap();
    let expected = [
        ("Service", "web-etcd-peer"),
        ("Service", "web-etcd"),
        ("PodDisruptionBudget", "web-etcd"),
        ("NetworkPolicy", "web-etcd"),
        ("StatefulSet", "web-etcd"),
        ("Service", "web-peer"),
        ("Service", "web"),
        ("PodDisruptionBudget", "web"),
        ("NetworkPolicy", "web"),
        ("StatefulSet", "web"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
    assert_eq!(kinds_and_names(&objects), expected);
}

#[test]
fn every_object_is_owned_by_the_cache_and_lives_in_its_namespace() {
    let cache = default_cache();
    for o in desired(&cache).unwrap() {
        let v = o.to_value();
        assert_eq!(v["metadata"]["namespace"], "cdn", "{}", o.name());
        let owners = v["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0]["kind"], "CasseroleCache");
        assert_eq!(owners[0]["apiVersion"], "casserole.io/v1alpha1");
        assert_eq!(owners[0]["name"], "web");
        assert_eq!(owners[0]["uid"], cache.metadata.uid.clone().unwrap());
        assert_eq!(owners[0]["controller"], true);
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            FIELD_MANAGER
        );
        assert!(v["apiVersion"].is_string() && v["kind"].is_string());
    }
}

#[test]
fn a_surrogate_id_is_passed_on_and_an_empty_one_turns_surrogate_control_off() {
    for (spec_value, flag) in [
        ("edge-1", "--surrogate-id=edge-1"),
        ("\"\"", "--surrogate-id="),
    ] {
        let cache = cache_from_spec(&format!(
            "upstream: https://mirror.example.org/pub\nsurrogateId: {spec_value}\n"
        ));
        let objects = desired(&cache).unwrap();
        let flags = args(&sts(&objects, "web").spec.template);
        assert_eq!(
            flags
                .iter()
                .filter(|a| a.starts_with("--surrogate-id"))
                .collect::<Vec<_>>(),
            vec![flag],
            "{spec_value}"
        );
    }
}

#[test]
fn cache_pods_get_the_flags_derived_from_the_spec() {
    let cache = cache_from_spec(
        r#"
upstream: https://mirror.example.org/pub
passThrough: ["^/private/", "\\.sig$"]
minTtlSeconds: 120
chunkSize: 4Mi
memory: {maxUsage: 1Gi}
disk: {size: 100Gi, maxUsage: 90Gi, cleanedUsage: 70Gi}
logFormat: text
"#,
    );
    let objects = desired(&cache).unwrap();
    let t = &sts(&objects, "web").spec.template;
    let expected = [
        "--address=0.0.0.0:8080",
        "--admin-address=0.0.0.0:9090",
        "--peer-address=0.0.0.0:8000",
        "--peering-address=http://$(POD_IP):8000",
        "--node-id=$(POD_NAME)",
        "--upstream=https://mirror.example.org/pub",
        "--pass-through=^/private/",
        "--pass-through=\\.sig$",
        "--min-ttl=120s",
        "--chunk-size=4Mi",
        "--max-memory-usage=1Gi",
        "--disk-cache-enabled=true",
        "--disk-cache-dir=/var/cache/casserole",
        "--max-disk-usage=90Gi",
        "--cleaned-disk-usage=70Gi",
        "--etcd=http://web-etcd.cdn.svc:2379",
        "--cluster-name=cdn.web",
        "--peer-token-file=/etc/casserole/peer/token",
        "--log-format=text",
        "--shutdown-grace=30s",
    ];
    assert_eq!(args(t), expected);
    // $(POD_IP) and $(POD_NAME) are only expanded if the env vars exist, from the downward API.
    let env = node_container(t).env.as_ref().unwrap();
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(field("POD_IP").as_deref(), Some("status.podIP"));
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
}

#[test]
fn disk_watermarks_default_to_fractions_of_the_volume() {
    let cache = cache_from_spec("upstream: http://u\ndisk: {size: 10G}\n");
    let objects = desired(&cache).unwrap();
    let t = &sts(&objects, "web").spec.template;
    assert!(has_arg(t, "--max-disk-usage=8000000000"));
    assert!(has_arg(t, "--cleaned-disk-usage=6000000000"));
}

#[test]
fn statefulset_disk_is_a_volume_claim_template_mounted_at_the_cache_dir() {
    let cache = cache_from_spec(
        "upstream: http://u\ndisk: {size: 50Gi, storageClassName: fast-ssd}\nreplicas: 5\n",
    );
    let objects = desired(&cache).unwrap();
    let s = sts(&objects, "web");
    assert_eq!(s.spec.replicas, Some(5));
    assert_eq!(s.spec.service_name.as_deref(), Some("web-peer"));
    let claims = s.spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(
        claims[0].metadata.name.as_deref(),
        Some(cache::CACHE_VOLUME)
    );
    let claim_spec = claims[0].spec.as_ref().unwrap();
    assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(
        claim_spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "50Gi"
    );
    let mounts = node_container(&s.spec.template)
        .volume_mounts
        .as_ref()
        .unwrap();
    assert!(mounts
        .iter()
        .any(|m| m.name == cache::CACHE_VOLUME && m.mount_path == cache::DISK_CACHE_DIR));
    let policy = s
        .spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .unwrap();
    assert_eq!(policy.when_deleted.as_deref(), Some("Delete"));
}

#[test]
fn disabled_disk_has_no_volume_and_says_so_to_the_node() {
    let cache = cache_from_spec("upstream: http://u\ndisk: {enabled: false}\n");
    let objects = desired(&cache).unwrap();
    let s = sts(&objects, "web");
    assert!(s.spec.volume_claim_templates.is_none());
    let t = &s.spec.template;
    assert!(has_arg(t, "--disk-cache-enabled=false"));
    assert!(!args(t).iter().any(|a| a.starts_with("--max-disk-usage")));
    assert!(!args(t).iter().any(|a| a.starts_with("--disk-cache-dir")));
    let mounts = node_container(t).volume_mounts.as_ref().unwrap();
    assert!(!mounts.iter().any(|m| m.name == cache::CACHE_VOLUME));
}

#[test]
fn daemonset_with_external_etcd_uses_an_ephemeral_volume_and_no_etcd_objects() {
    let cache = cache_from_spec(
        r#"
upstream: https://u.example
workload: DaemonSet
disk: {size: 20Gi, storageClassName: local-nvme}
etcd: {external: {endpoints: ["http://etcd-a:2379", "http://etcd-b:2379"]}}
"#,
    );
    let objects = desired(&cache).unwrap();
    assert!(statefulsets(&objects).is_empty());
    assert!(!objects.iter().any(|o| o.name().contains("etcd")));
    let d = daemonset(&objects);
    let t = &d.spec.template;
    assert!(has_arg(t, "--etcd=http://etcd-a:2379,http://etcd-b:2379"));
    let volume = pod_spec(t)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == cache::CACHE_VOLUME)
        .expect("ephemeral cache volume");
    let claim = volume
        .ephemeral
        .as_ref()
        .unwrap()
        .volume_claim_template
        .as_ref()
        .unwrap();
    assert_eq!(claim.spec.storage_class_name.as_deref(), Some("local-nvme"));
    assert_eq!(
        claim
            .spec
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "20Gi"
    );
    // No anti-affinity default for a DaemonSet: it already runs one pod per node.
    assert!(pod_spec(t).affinity.is_none());
}

#[test]
fn daemonset_without_disk_has_no_ephemeral_volume() {
    let cache =
        cache_from_spec("upstream: http://u\nworkload: DaemonSet\ndisk: {enabled: false}\n");
    let objects = desired(&cache).unwrap();
    let t = &daemonset(&objects).spec.template;
    assert!(!pod_spec(t)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .any(|v| v.ephemeral.is_some()));
}

#[test]
fn managed_etcd_has_stable_peers_and_the_right_initial_cluster() {
    let objects = desired(&default_cache()).unwrap();
    let s = sts(&objects, "web-etcd");
    assert_eq!(s.spec.replicas, Some(3));
    assert_eq!(s.spec.service_name.as_deref(), Some("web-etcd-peer"));
    assert_eq!(s.spec.pod_management_policy.as_deref(), Some("Parallel"));
    let a = args(&s.spec.template);
    let initial = a
        .iter()
        .find(|a| a.starts_with("--initial-cluster="))
        .unwrap();
    assert_eq!(
        initial,
        "--initial-cluster=\
         web-etcd-0=http://web-etcd-0.web-etcd-peer.cdn.svc:2380,\
         web-etcd-1=http://web-etcd-1.web-etcd-peer.cdn.svc:2380,\
         web-etcd-2=http://web-etcd-2.web-etcd-peer.cdn.svc:2380"
    );
    assert!(a.contains(
        &"--initial-advertise-peer-urls=http://$(POD_NAME).web-etcd-peer.cdn.svc:2380".to_string()
    ));
    assert!(a.contains(&"--initial-cluster-token=cdn-web".to_string()));
    let headless = service(&objects, "web-etcd-peer").spec.as_ref().unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
    let claims = s.spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(
        claims[0]
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "1Gi"
    );
}

#[test]
fn single_member_etcd_lists_only_itself() {
    let cache = cache_from_spec(
        "upstream: http://u\netcd: {managed: {replicas: 1, storage: 2Gi, image: 'my/etcd:v3.5.9'}}\n",
    );
    let objects = desired(&cache).unwrap();
    let s = sts(&objects, "web-etcd");
    assert_eq!(s.spec.replicas, Some(1));
    assert_eq!(
        node_container(&s.spec.template).image.as_deref(),
        Some("my/etcd:v3.5.9")
    );
    assert!(has_arg(
        &s.spec.template,
        "--initial-cluster=web-etcd-0=http://web-etcd-0.web-etcd-peer.cdn.svc:2380"
    ));
}

#[test]
fn every_pod_runs_hardened_and_with_probes() {
    for spec in [
        "upstream: http://u\n",
        "upstream: http://u\nworkload: DaemonSet\n",
    ] {
        let objects = desired(&cache_from_spec(spec)).unwrap();
        let mut templates: Vec<&PodTemplateSpec> = statefulsets(&objects)
            .iter()
            .map(|s| &s.spec.template)
            .collect();
        if let Some(Object::DaemonSet(d)) = objects.iter().find(|o| o.kind() == "DaemonSet") {
            templates.push(&d.spec.template);
        }
        assert_eq!(templates.len(), 2, "{spec}");
        for t in templates {
            let pod = pod_spec(t).security_context.as_ref().unwrap();
            assert_eq!(pod.run_as_non_root, Some(true));
            assert_eq!(
                pod.seccomp_profile.as_ref().unwrap().type_,
                "RuntimeDefault"
            );
            for c in &pod_spec(t).containers {
                let sc = c.security_context.as_ref().unwrap();
                assert_eq!(sc.read_only_root_filesystem, Some(true));
                assert_eq!(sc.allow_privilege_escalation, Some(false));
                assert_eq!(sc.run_as_non_root, Some(true));
                assert_eq!(
                    sc.capabilities.as_ref().unwrap().drop.as_deref(),
                    Some(&["ALL".to_string()][..])
                );
                assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
            }
        }
    }
}

#[test]
fn cache_probes_and_metrics_use_the_admin_port() {
    let objects = desired(&default_cache()).unwrap();
    let t = &sts(&objects, "web").spec.template;
    let c = node_container(t);
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(live.path.as_deref(), Some("/healthz"));
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    assert_eq!(live.port, IntOrString::String("metrics".into()));
    let ports: Vec<(String, i32)> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("http".into(), 8080),
            ("peer".into(), 8000),
            ("metrics".into(), 9090)
        ]
    );
    let ann = t.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9090");
}

#[test]
fn selectors_match_pod_labels_and_status_selector() {
    let cache = default_cache();
    let objects = desired(&cache).unwrap();
    let s = sts(&objects, "web");
    let selector = s.spec.selector.match_labels.as_ref().unwrap();
    let pod_labels = s
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(pod_labels.get(k), Some(v));
    }
    assert_eq!(
        service(&objects, "web")
            .spec
            .as_ref()
            .unwrap()
            .selector
            .as_ref(),
        Some(selector)
    );
    assert_eq!(
        selector_string(&cache),
        "app.kubernetes.io/component=cache,app.kubernetes.io/instance=web,app.kubernetes.io/name=casserole"
    );
    // etcd pods must not be selected by the cache selector.
    let etcd_labels = sts(&objects, "web-etcd")
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert_ne!(etcd_labels["app.kubernetes.io/component"], "cache");
}

#[test]
fn peer_port_admits_only_the_caches_own_pods() {
    let objects = desired(&default_cache()).unwrap();
    let rules = policy(&objects, "web")
        .spec
        .as_ref()
        .unwrap()
        .ingress
        .clone()
        .unwrap();
    let peer_rule = rules
        .iter()
        .find(|r| {
            r.ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.port == Some(IntOrString::Int(8000)))
        })
        .unwrap();
    let from = peer_rule.from.as_ref().expect("peer port is restricted");
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap(),
        &selector_labels(&default_cache(), Component::Cache)
    );
    // The client port stays reachable from anywhere.
    assert!(rules.iter().any(|r| r.from.is_none()
        && r.ports
            .as_ref()
            .unwrap()
            .iter()
            .any(|p| p.port == Some(IntOrString::Int(8080)))));
}

#[test]
fn client_service_follows_the_service_spec() {
    let cache = cache_from_spec(
        "upstream: http://u\nservice: {type: LoadBalancer, port: 8081, annotations: {a: b}}\n",
    );
    let objects = desired(&cache).unwrap();
    let svc = service(&objects, "web");
    assert_eq!(svc.metadata.annotations.as_ref().unwrap()["a"], "b");
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (8081, Some(IntOrString::String("http".into())))
    );
}

#[test]
fn scaling_keeps_the_config_hash_and_config_changes_roll_it() {
    let base = default_cache();
    let hash = |c: &CasseroleCache| config_hash(&sts(&desired(c).unwrap(), "web").spec.template);
    let mut scaled = base.clone();
    scaled.spec.replicas = 7;
    assert_eq!(hash(&base), hash(&scaled));
    let base_objects = desired(&base).unwrap();
    let scaled_objects = desired(&scaled).unwrap();
    // Only the replica count differs.
    let mut a = sts(&base_objects, "web").clone();
    a.spec.replicas = Some(7);
    assert_eq!(&a, sts(&scaled_objects, "web"));

    let mut changed = base.clone();
    changed.spec.upstream = "https://other.example".into();
    assert_ne!(hash(&base), hash(&changed));
    let mut changed = base.clone();
    changed.spec.memory.max_usage = "2Gi".into();
    assert_ne!(hash(&base), hash(&changed));
}

#[test]
fn desired_is_deterministic() {
    assert_eq!(
        desired(&default_cache()).unwrap(),
        desired(&default_cache()).unwrap()
    );
}

#[test]
fn render_without_uid_has_no_owner_references() {
    let mut cache = default_cache();
    cache.metadata.uid = None;
    for o in desired(&cache).unwrap() {
        assert!(o.to_value()["metadata"].get("ownerReferences").is_none());
    }
}
