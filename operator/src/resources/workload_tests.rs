//! Unit tests of the pod-level and per-workload choices: what DaemonSet mode gets instead of a
//! StatefulSet's PDB, probes and termination timing, scheduling fields, and the etcd pods.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};

use super::testing::{cache_from_spec, default_cache};
use super::*;

fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> Option<&'a Object> {
    objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
}

fn statefulset<'a>(objects: &'a [Object], name: &str) -> &'a StatefulSet {
    match find(objects, "StatefulSet", name) {
        Some(Object::StatefulSet(s)) => s,
        _ => panic!("no StatefulSet {name}"),
    }
}

fn template_of(o: &Object) -> &PodTemplateSpec {
    match o {
        Object::StatefulSet(s) => &s.spec.template,
        Object::DaemonSet(d) => &d.spec.template,
        _ => panic!("not a workload"),
    }
}

fn pod(t: &PodTemplateSpec) -> &PodSpec {
    t.spec.as_ref().unwrap()
}

fn cache_template(objects: &[Object]) -> &PodTemplateSpec {
    template_of(
        objects
            .iter()
            .find(|o| {
                matches!(o, Object::DaemonSet(_))
                    || (o.kind() == "StatefulSet" && o.name() == "web")
            })
            .unwrap(),
    )
}

const DAEMONSET: &str =
    "upstream: http://u\nworkload: DaemonSet\netcd: {external: {endpoints: ['http://e:2379']}}\n";

#[test]
fn daemonset_mode_is_node_local_and_has_no_budget_that_blocks_drains() {
    let objects = desired(&cache_from_spec(DAEMONSET)).unwrap();
    let Some(Object::Service(svc)) = find(&objects, "Service", "web") else {
        panic!("no client Service");
    };
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"));
    assert!(find(&objects, "PodDisruptionBudget", "web").is_none());
    // ...and an earlier StatefulSet's budget is pruned.
    let cache = cache_from_spec(DAEMONSET);
    let leftovers = leftovers(&cache, &objects);
    assert!(leftovers
        .iter()
        .any(|(ar, name)| ar.kind == "PodDisruptionBudget" && name == "web"));

    let objects = desired(&default_cache()).unwrap();
    let Some(Object::Service(svc)) = find(&objects, "Service", "web") else {
        panic!("no client Service");
    };
    assert_eq!(svc.spec.as_ref().unwrap().internal_traffic_policy, None);
    assert!(find(&objects, "PodDisruptionBudget", "web").is_some());
}

#[test]
fn cache_pods_start_slowly_stop_gracefully_and_drain_endpoints_first() {
    for spec in ["upstream: http://u\n", DAEMONSET] {
        let objects = desired(&cache_from_spec(spec)).unwrap();
        let t = cache_template(&objects);
        let c = &pod(t).containers[0];
        let startup = c.startup_probe.as_ref().expect("a startup probe");
        let allowance = startup.period_seconds.unwrap() * startup.failure_threshold.unwrap();
        assert!(allowance >= 600, "startup allowance {allowance}s");
        let pause = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        let pause = pause.sleep.as_ref().expect("a preStop sleep").seconds;
        assert!(pause > 0);
        let grace: i64 = c
            .args
            .as_ref()
            .unwrap()
            .iter()
            .find_map(|a| a.strip_prefix("--shutdown-grace="))
            .and_then(|s| s.strip_suffix('s'))
            .unwrap()
            .parse()
            .unwrap();
        let termination = pod(t).termination_grace_period_seconds.unwrap();
        assert!(
            termination > pause + grace,
            "terminationGracePeriodSeconds {termination} <= preStop {pause} + --shutdown-grace {grace}"
        );
    }
}

#[test]
fn scheduling_fields_and_the_users_annotations_reach_the_pods() {
    let cache = cache_from_spec(
        "upstream: http://u\n\
         imagePullSecrets: [{name: regcred}]\n\
         priorityClassName: cache-critical\n\
         topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}]\n\
         podAnnotations: {prometheus.io/scrape: 'false', example.com/team: delivery}\n",
    );
    let objects = desired(&cache).unwrap();
    let t = cache_template(&objects);
    let p = pod(t);
    assert_eq!(p.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    assert_eq!(p.priority_class_name.as_deref(), Some("cache-critical"));
    assert_eq!(p.topology_spread_constraints.as_ref().unwrap().len(), 1);
    let annotations = t.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
    assert_eq!(
        annotations["prometheus.io/scrape"], "false",
        "the user's value wins"
    );
    assert_eq!(annotations["example.com/team"], "delivery");
    assert!(annotations.contains_key(CONFIG_HASH_ANNOTATION));
    // The etcd pods are pulled and prioritised the same way.
    let etcd = pod(&statefulset(&objects, "web-etcd").spec.template);
    assert_eq!(etcd.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    assert_eq!(etcd.priority_class_name.as_deref(), Some("cache-critical"));
}

#[test]
fn etcd_members_have_resources_spread_over_nodes_and_follow_their_scheduling() {
    let objects = desired(&default_cache()).unwrap();
    let etcd = pod(&statefulset(&objects, "web-etcd").spec.template);
    assert_eq!(
        etcd.containers[0].resources,
        Some(etcd::default_resources())
    );
    let anti = etcd
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    let term = &anti
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0]
        .pod_affinity_term;
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        term.label_selector.as_ref().unwrap().match_labels.as_ref(),
        Some(&selector_labels(&default_cache(), Component::Etcd))
    );

    let cache = cache_from_spec(
        "upstream: http://u\n\
         etcd: {managed: {replicas: 3, resources: {requests: {cpu: 250m}}, \
         nodeSelector: {pool: infra}, tolerations: [{key: infra, operator: Exists}]}}\n",
    );
    let objects = desired(&cache).unwrap();
    let etcd = pod(&statefulset(&objects, "web-etcd").spec.template);
    let resources = etcd.containers[0].resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "250m");
    assert_eq!(etcd.node_selector.as_ref().unwrap()["pool"], "infra");
    assert_eq!(
        etcd.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("infra")
    );
}

#[test]
fn daemonset_rolls_by_surge_so_a_node_never_lacks_its_cache_pod() {
    let cache = cache_from_spec("upstream: http://u\nworkload: DaemonSet\n");
    let objects = desired(&cache).unwrap();
    let Some(Object::DaemonSet(d)) = find(&objects, "DaemonSet", "web") else {
        panic!("no DaemonSet");
    };
    let rolling = d
        .spec
        .update_strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
}

#[test]
fn claim_templates_carry_only_the_immutable_selector_labels() {
    let objects = desired(&default_cache()).unwrap();
    let cache = default_cache();
    for (name, component) in [("web", Component::Cache), ("web-etcd", Component::Etcd)] {
        let sts = statefulset(&objects, name);
        let templates = sts.spec.volume_claim_templates.as_ref().unwrap();
        assert_eq!(
            templates[0].metadata.labels.as_ref(),
            Some(&selector_labels(&cache, component)),
            "{name}"
        );
    }
}

#[test]
fn the_crd_serves_a_second_version_and_shows_no_credentials() {
    let crd = crate::crd_object();
    let versions: Vec<_> = crd
        .spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.served, v.storage))
        .collect();
    assert_eq!(
        versions,
        [("v1alpha1", true, true), ("v1beta1", true, false)]
    );
    assert_eq!(crd.spec.versions[0].schema, crd.spec.versions[1].schema);
    assert!(crd.spec.conversion.is_none(), "identity conversion (None)");
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap();
    let path = |name: &str| {
        columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.json_path.clone())
    };
    assert_eq!(path("Upstream").as_deref(), Some(".status.upstream"));
    assert!(path("Reason").unwrap().contains("reason"));
    let mut cache = cache_from_spec("upstream: 'https://user:secret@host:8443/p'\n");
    cache.metadata.generation = Some(1);
    assert_eq!(
        crate::status::upstream_shown(&cache).as_deref(),
        Some("https://host:8443/p")
    );
}
