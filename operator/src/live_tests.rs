//! The live-state checks: pure comparisons, and the volume change on the scripted API server.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::json;

use super::*;
use crate::mock::{self, status_error};
use crate::resources::testing::cache_from_spec;
use crate::resources::{desired, Object};

fn sts_of(objects: &[Object], name: &str) -> StatefulSet {
    objects
        .iter()
        .find_map(|o| match o {
            Object::StatefulSet(s) if s.name_any() == name => Some((**s).clone()),
            _ => None,
        })
        .unwrap()
}

/// The live StatefulSets as an earlier spec made them.
fn live_from(spec: &str) -> Live {
    let objects = desired(&cache_from_spec(spec)).unwrap();
    Live {
        etcd: Some(sts_of(&objects, "web-etcd")),
        cache: Some(sts_of(&objects, "web")),
        daemonset: None,
    }
}

fn check_spec(before: &str, after: &str) -> Result<Vec<Recreate>, InvalidSpec> {
    let cache = cache_from_spec(after);
    check(&cache, &desired(&cache).unwrap(), &live_from(before))
}

#[test]
fn an_unchanged_spec_needs_nothing() {
    let spec = "upstream: http://u\n";
    assert_eq!(check_spec(spec, spec), Ok(vec![]));
    // No live objects (a new cache): nothing to compare.
    let cache = cache_from_spec(spec);
    assert_eq!(
        check(&cache, &desired(&cache).unwrap(), &Live::default()),
        Ok(vec![])
    );
}

#[test]
fn what_the_transition_rules_refuse_is_refused_against_the_live_objects() {
    let base = "upstream: http://u\n";
    let cases = [
        (
            "upstream: http://u\netcd: {managed: {replicas: 1}}\n",
            "spec.etcd.managed.replicas",
        ),
        (
            "upstream: http://u\netcd: {managed: {storage: 512Mi}}\n",
            "spec.etcd.managed.storage",
        ),
        (
            "upstream: http://u\netcd: {managed: {storageClassName: fast}}\n",
            "spec.etcd.managed.storageClassName",
        ),
        ("upstream: http://u\ndisk: {size: 5Gi}\n", "spec.disk.size"),
        (
            "upstream: http://u\ndisk: {storageClassName: fast}\n",
            "spec.disk.storageClassName",
        ),
        (
            "upstream: http://u\ndisk: {enabled: false}\n",
            "spec.disk.enabled",
        ),
    ];
    for (after, field) in cases {
        let err = check_spec(base, after).unwrap_err();
        assert_eq!(err.field, field, "{after}: {err}");
    }
}

#[test]
fn growing_volumes_recreates_the_statefulset_after_growing_its_claims() {
    let r = check_spec(
        "upstream: http://u\n",
        "upstream: http://u\ndisk: {size: 20Gi}\n",
    )
    .unwrap();
    assert_eq!(
        r,
        vec![Recreate {
            statefulset: "web".into(),
            grow: vec![("cache".into(), "20Gi".into(), None)],
        }]
    );
    let r = check_spec(
        "upstream: http://u\n",
        "upstream: http://u\netcd: {managed: {storage: 2Gi}}\n",
    )
    .unwrap();
    assert_eq!(r[0].statefulset, "web-etcd");
}

#[test]
fn claim_templates_with_other_labels_are_recreated_without_growing() {
    let mut live = live_from("upstream: http://u\n");
    let sts = live.cache.as_mut().unwrap();
    let templates = sts.spec.volume_claim_templates.as_mut().unwrap();
    templates[0]
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(
            "app.kubernetes.io/managed-by".into(),
            "casserole-operator".into(),
        );
    let cache = cache_from_spec("upstream: http://u\n");
    let r = check(&cache, &desired(&cache).unwrap(), &live).unwrap();
    assert_eq!(
        r,
        vec![Recreate {
            statefulset: "web".into(),
            grow: vec![]
        }]
    );
}

fn class(expand: bool) -> serde_json::Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "provisioner": "x",
           "metadata": {"name": "std", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
           "allowVolumeExpansion": expand})
}

const PVCS: &str = "/api/v1/namespaces/cdn/persistentvolumeclaims";

#[tokio::test]
async fn growing_patches_every_claim_then_orphans_the_statefulset() {
    let (client, mut server) = mock::client();
    let cache = cache_from_spec("upstream: http://u\ndisk: {size: 20Gi}\n");
    let plan = vec![Recreate {
        statefulset: "web".into(),
        grow: vec![("cache".into(), "20Gi".into(), None)],
    }];
    let scenario = async {
        server
            .expect(Method::GET, "/apis/storage.k8s.io/v1/storageclasses", |_| {
                (StatusCode::OK, json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClassList", "metadata": {}, "items": [class(true)]}))
            })
            .await;
        server
            .expect(Method::GET, PVCS, |_| {
                let pvc =
                    |n: &str| json!({"metadata": {"name": n, "namespace": "cdn"}, "spec": {}});
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {},
                    "items": [pvc("cache-web-0"), pvc("cache-web-1"), pvc("cache-web-extra-0")]}),
                )
            })
            .await;
        let mut patched = vec![];
        for n in ["cache-web-0", "cache-web-1"] {
            let seen = server
                .expect(Method::PATCH, &format!("{PVCS}/{n}"), |s| {
                    (StatusCode::OK, s.body.clone())
                })
                .await;
            assert_eq!(
                seen.body["spec"]["resources"]["requests"]["storage"],
                "20Gi"
            );
            patched.push(n);
        }
        let del = server
            .expect(Method::DELETE, "/apis/apps/v1/namespaces/cdn/statefulsets/web", |_| {
                (StatusCode::OK, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}))
            })
            .await;
        assert_eq!(
            del.body["propagationPolicy"], "Orphan",
            "the pods keep running"
        );
        patched
    };
    let (result, patched) = tokio::join!(carry_out(&client, &cache, &plan), scenario);
    assert_eq!(result.unwrap(), Ok(()));
    assert_eq!(patched.len(), 2);
    drop(client);
    server.done().await;
}

#[tokio::test]
async fn a_class_that_cannot_expand_refuses_before_touching_anything() {
    let (client, mut server) = mock::client();
    let cache = cache_from_spec("upstream: http://u\ndisk: {size: 20Gi, storageClassName: std}\n");
    let plan = vec![Recreate {
        statefulset: "web".into(),
        grow: vec![("cache".into(), "20Gi".into(), Some("std".into()))],
    }];
    let scenario = async {
        server
            .expect(
                Method::GET,
                "/apis/storage.k8s.io/v1/storageclasses/std",
                |_| (StatusCode::OK, class(false)),
            )
            .await;
    };
    let (result, ()) = tokio::join!(carry_out(&client, &cache, &plan), scenario);
    let refused = result.unwrap().unwrap_err();
    assert_eq!(refused.field, "spec.disk.size");
    assert!(
        refused.message.contains("does not allow volume expansion"),
        "{refused}"
    );
    drop(client);
    server.done().await;
}

#[tokio::test]
async fn a_statefulset_being_recreated_is_not_compared_again() {
    let (client, mut server) = mock::client();
    let cache = cache_from_spec("upstream: http://u\ndisk: {size: 20Gi}\n");
    let mut old = serde_json::to_value(live_from("upstream: http://u\n").cache.unwrap()).unwrap();
    old["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let scenario = async {
        server
            .expect(
                Method::GET,
                "/apis/apps/v1/namespaces/cdn/statefulsets/web-etcd",
                |_| status_error(404, "NotFound"),
            )
            .await;
        server
            .expect(
                Method::GET,
                "/apis/apps/v1/namespaces/cdn/statefulsets/web",
                |_| (StatusCode::OK, old.clone()),
            )
            .await;
    };
    let (live, ()) = tokio::join!(fetch(&client, &cache), scenario);
    let live = live.unwrap();
    assert!(live.cache.is_none() && live.etcd.is_none());
    assert_eq!(check(&cache, &desired(&cache).unwrap(), &live), Ok(vec![]));
}
