//! The CRD's CEL rules (`x-kubernetes-validations`), compiled and evaluated client-side with
//! kube-cel (the apiserver's CEL libraries, `quantity()` included): every example passes, and
//! every example whose header says CEL rejects it is rejected with the rule's message.

use std::path::{Path, PathBuf};

use casserole_operator::crd::CasseroleCache;
use kube::core::cel::{validate_cel, validate_cel_update};

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Parsing through serde applies the same defaults the schema declares (a unit test checks
/// they agree), as the apiserver does before it evaluates CEL.
fn load(path: &Path) -> CasseroleCache {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn examples_pass_the_cel_rules() {
    let examples = yaml_files("examples");
    assert!(examples.len() >= 3);
    for path in examples {
        if let Err(e) = validate_cel(&load(&path)) {
            panic!("{}: {e:?}", path.display());
        }
    }
}

#[test]
fn cel_rejected_examples_fail_the_cel_rules() {
    let mut checked = 0;
    for path in yaml_files("examples/invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let Some(expected) = text
            .lines()
            .find_map(|l| l.strip_prefix("# rejected-by: schema (CEL: "))
            .map(|m| m.trim_end_matches(')').to_string())
        else {
            continue;
        };
        let errors = validate_cel(&load(&path))
            .err()
            .unwrap_or_else(|| panic!("{}: CEL accepted it", path.display()));
        let errors = format!("{errors:?}");
        assert!(errors.contains(&expected), "{}: {errors}", path.display());
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} CEL-rejected examples");
}

fn cache(spec: serde_json::Value) -> CasseroleCache {
    cache_named("web", spec)
}

fn cache_named(name: &str, mut spec: serde_json::Value) -> CasseroleCache {
    spec["upstream"] = "http://u".into();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "casserole.io/v1alpha1", "kind": "CasseroleCache",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn rejected(result: Result<(), kube::core::cel::ValidationErrors>) -> String {
    format!("{:?}", result.expect_err("the CEL rules accepted it"))
}

#[test]
fn chunk_size_bounds_are_the_nodes() {
    use casserole_limits::{CHUNK_SIZE_MAX, CHUNK_SIZE_MIN};
    for ok in [
        "64Ki".to_string(),
        "64Mi".to_string(),
        CHUNK_SIZE_MIN.to_string(),
        CHUNK_SIZE_MAX.to_string(),
    ] {
        validate_cel(&cache(serde_json::json!({"chunkSize": ok}))).unwrap();
    }
    for bad in [
        (CHUNK_SIZE_MIN - 1).to_string(),
        (CHUNK_SIZE_MAX + 1).to_string(),
        "128Mi".into(),
        "4Ki".into(),
    ] {
        let errors = rejected(validate_cel(&cache(serde_json::json!({"chunkSize": bad}))));
        assert!(errors.contains("between 64Ki and 64Mi"), "{errors}");
    }
}

#[test]
fn sizes_are_whole_positive_byte_counts() {
    for bad in ["0", "1.5"] {
        let errors = rejected(validate_cel(&cache(
            serde_json::json!({"memory": {"maxUsage": bad}}),
        )));
        assert!(errors.contains("whole number of bytes"), "{bad}: {errors}");
    }
    validate_cel(&cache(serde_json::json!({"memory": {"maxUsage": "1.5Ki"}}))).unwrap();
}

#[test]
fn names_that_collide_with_another_caches_objects_are_refused() {
    for name in ["web-etcd", "web-peer", &"a".repeat(43)] {
        let errors = rejected(validate_cel(&cache_named(name, serde_json::json!({}))));
        assert!(
            errors.contains("must not end with -etcd or -peer"),
            "{errors}"
        );
    }
    validate_cel(&cache_named("web-etcd-cache", serde_json::json!({}))).unwrap();
}

#[test]
fn scaling_a_daemonset_cache_is_refused_not_ignored() {
    let ds = |n: i32| cache(serde_json::json!({"workload": "DaemonSet", "replicas": n}));
    let errors = rejected(validate_cel_update(&ds(5), &ds(3)));
    assert!(
        errors.contains("no effect on a DaemonSet cache"),
        "{errors}"
    );
    validate_cel_update(&ds(3), &ds(3)).unwrap();
    // Switching workload while changing replicas is fine.
    let sts = cache(serde_json::json!({"workload": "StatefulSet", "replicas": 5}));
    validate_cel_update(&sts, &ds(3)).unwrap();
}

#[test]
fn names_must_be_dns1035_labels_like_the_operator_says() {
    for name in ["my.cache", "1cache", "web-"] {
        let errors = rejected(validate_cel(&cache_named(name, serde_json::json!({}))));
        assert!(errors.contains("DNS-1035"), "{name}: {errors}");
        let mut c = cache_named(name, serde_json::json!({}));
        c.metadata.namespace = Some("ns".into());
        let refused = casserole_operator::resources::validate::plan(&c).unwrap_err();
        assert_eq!(refused.field, "metadata.name", "{name}");
    }
}

#[test]
fn etcd_membership_and_volumes_are_fixed_after_creation() {
    let old = cache(serde_json::json!({"etcd": {"managed": {"replicas": 1}}}));
    let new = cache(serde_json::json!({"etcd": {"managed": {"replicas": 3}}}));
    let errors = rejected(validate_cel_update(&new, &old));
    assert!(
        errors.contains("etcd.managed.replicas cannot change"),
        "{errors}"
    );
    let errors = rejected(validate_cel_update(&old, &new));
    assert!(
        errors.contains("etcd.managed.replicas cannot change"),
        "{errors}"
    );
    // Storage may grow (the operator expands the claims), never shrink.
    let bigger = cache(serde_json::json!({"etcd": {"managed": {"replicas": 1, "storage": "2Gi"}}}));
    validate_cel_update(&bigger, &old).unwrap();
    let errors = rejected(validate_cel_update(&old, &bigger));
    assert!(
        errors.contains("etcd.managed.storage cannot shrink"),
        "{errors}"
    );
    // Unrelated changes pass, and so does switching to an external etcd.
    let scaled = cache(serde_json::json!({"replicas": 5, "etcd": {"managed": {"replicas": 1}}}));
    validate_cel_update(&scaled, &old).unwrap();
    let external =
        cache(serde_json::json!({"etcd": {"external": {"endpoints": ["http://e:2379"]}}}));
    validate_cel_update(&external, &old).unwrap();
}

#[test]
fn statefulset_volume_claims_are_fixed_but_daemonset_volumes_may_change() {
    let old = cache(serde_json::json!({"disk": {"size": "10Gi"}}));
    // Growing is allowed (the operator expands the claims), shrinking is not.
    validate_cel_update(&cache(serde_json::json!({"disk": {"size": "20Gi"}})), &old).unwrap();
    let errors = rejected(validate_cel_update(
        &cache(serde_json::json!({"disk": {"size": "5Gi"}})),
        &old,
    ));
    assert!(errors.contains("disk.size cannot shrink"), "{errors}");
    for (new, field) in [
        (
            serde_json::json!({"disk": {"size": "10Gi", "storageClassName": "fast"}}),
            "disk.storageClassName",
        ),
        (
            serde_json::json!({"disk": {"enabled": false}}),
            "disk.enabled",
        ),
    ] {
        let errors = rejected(validate_cel_update(&cache(new), &old));
        assert!(
            errors.contains(&format!("{field} cannot change")),
            "{errors}"
        );
    }
    let ds =
        |size: &str| cache(serde_json::json!({"workload": "DaemonSet", "disk": {"size": size}}));
    validate_cel_update(&ds("20Gi"), &ds("10Gi")).unwrap();
    // Switching the workload kind creates a new StatefulSet: allowed.
    validate_cel_update(
        &cache(serde_json::json!({"disk": {"size": "20Gi"}})),
        &ds("10Gi"),
    )
    .unwrap();
}
