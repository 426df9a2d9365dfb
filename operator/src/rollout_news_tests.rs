//! The announcements of `rollout_news`, on plain objects (issue 22, L3).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::runtime::events::{Event, EventType};
use serde_json::json;

use super::*;
use crate::crd::CasseroleCacheStatus;
use crate::resources::testing::cache_from_spec;
use crate::resources::{default_node_image, desired_for, Inputs};

const DAEMONSET: &str =
    "upstream: http://u\nworkload: DaemonSet\netcd: {external: {endpoints: ['http://e:2379']}}\n";

fn desired(cache: &CasseroleCache) -> Vec<Object> {
    desired_for(cache, &Inputs::default()).unwrap()
}

/// The live workload as an earlier reconcile applied it, its pods on `image`.
fn live_on(cache: &CasseroleCache, image: &str) -> Live {
    let mut live = Live::default();
    for object in desired(cache) {
        match object {
            Object::DaemonSet(mut d) => {
                let spec = &mut d.spec;
                spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
                live.daemonset = Some(*d);
            }
            Object::StatefulSet(mut s) if s.metadata.name.as_deref() == Some("web") => {
                let spec = &mut s.spec;
                spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
                live.cache = Some(*s);
            }
            _ => {}
        }
    }
    live
}

fn note(event: &Event) -> &str {
    event.note.as_deref().unwrap()
}

#[test]
fn an_operator_upgrade_of_the_default_image_is_announced_with_both_images_and_the_pace() {
    let cache = cache_from_spec(DAEMONSET);
    let old = "ghcr.io/casserole-cache/casserole-node:0.0.9";
    let event = image_change(&cache, &live_on(&cache, old), &desired(&cache)).unwrap();
    assert_eq!(event.type_, EventType::Normal);
    assert_eq!(event.reason, "NodeImageChanged");
    let note = note(&event);
    let new = default_node_image();
    for part in [
        &format!("from {old} to {new}") as &str,
        "the operator was upgraded",
        "set spec.image to choose when",
        "one node at a time, each node's new pod ready before its old one stops",
    ] {
        assert!(note.contains(part), "{part:?} not in {note}");
    }
}

#[test]
fn a_changed_spec_image_is_announced_as_such() {
    let cache = cache_from_spec("upstream: http://u\nimage: registry.local/node:2\n");
    let live = live_on(&cache, "registry.local/node:1");
    let event = image_change(&cache, &live, &desired(&cache)).unwrap();
    let note = note(&event);
    assert!(
        note.contains(
            "from registry.local/node:1 to registry.local/node:2 (spec.image); one pod at a time"
        ),
        "{note}"
    );
}

#[test]
fn the_same_image_or_no_live_workload_announces_nothing() {
    for spec in [DAEMONSET, "upstream: http://u\n"] {
        let cache = cache_from_spec(spec);
        let same = live_on(&cache, &default_node_image());
        assert!(
            image_change(&cache, &same, &desired(&cache)).is_none(),
            "{spec}"
        );
        let new_cache = Live::default();
        assert!(
            image_change(&cache, &new_cache, &desired(&cache)).is_none(),
            "{spec}"
        );
    }
}

/// A DaemonSet cache `kubectl scale`d to 5 while its previous generation was reconciled.
fn scaled(spec: &str, manager: &str, subresource: Option<&str>) -> CasseroleCache {
    let mut cache = cache_from_spec(&format!("{spec}replicas: 5\n"));
    cache.metadata.generation = Some(2);
    cache.status = Some(CasseroleCacheStatus {
        observed_generation: Some(1),
        ..CasseroleCacheStatus::default()
    });
    cache.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some("Update".into()),
        subresource: subresource.map(Into::into),
        fields_v1: Some(FieldsV1(json!({"f:spec": {"f:replicas": {}}}))),
        ..ManagedFieldsEntry::default()
    }]);
    cache
}

#[test]
fn kubectl_scale_of_a_daemonset_cache_is_a_warning_naming_who_and_what_to_do() {
    let cache = scaled(DAEMONSET, "kubectl", Some("scale"));
    let event = replicas_ignored(&cache).unwrap();
    assert_eq!(event.type_, EventType::Warning);
    assert_eq!(event.reason, "ReplicasIgnored");
    let note = note(&event);
    for part in [
        "spec.replicas (5)",
        "by kubectl",
        "no effect on a DaemonSet cache",
        "nodeSelector and tolerations",
    ] {
        assert!(note.contains(part), "{part:?} not in {note}");
    }
    assert_eq!(news(&cache, &Live::default(), &desired(&cache)).len(), 1);
}

#[test]
fn replicas_are_not_a_warning_once_told_nor_for_statefulsets_nor_without_a_scale_write() {
    let mut told = scaled(DAEMONSET, "kubectl", Some("scale"));
    told.status.as_mut().unwrap().observed_generation = Some(2);
    assert!(replicas_ignored(&told).is_none(), "once per generation");
    let statefulset = scaled("upstream: http://u\n", "kubectl", Some("scale"));
    assert!(
        replicas_ignored(&statefulset).is_none(),
        "StatefulSet caches scale"
    );
    let edited = scaled(DAEMONSET, "kubectl-edit", None);
    assert!(
        replicas_ignored(&edited).is_none(),
        "not through the scale subresource"
    );
    let ours = scaled(DAEMONSET, FIELD_MANAGER, Some("scale"));
    assert!(replicas_ignored(&ours).is_none());
}

#[test]
fn an_older_operator_leaves_pods_on_a_newer_releases_default_image() {
    let newer = "ghcr.io/casserole-cache/casserole-node:99.0.0";
    for spec in [DAEMONSET, "upstream: http://u\n"] {
        let cache = cache_from_spec(spec);
        let live = live_on(&cache, newer);
        assert_eq!(
            newer_release_image(&cache, &live).as_deref(),
            Some(newer),
            "{spec}"
        );
    }
    let cache = cache_from_spec(DAEMONSET);
    // Our own release, an older one (the upgrade this operator carries out), another
    // repository, or no live workload: not held.
    for image in [
        default_node_image(),
        "ghcr.io/casserole-cache/casserole-node:0.0.9".to_string(),
        "registry.local/casserole-node:99.0.0".to_string(),
    ] {
        assert_eq!(
            newer_release_image(&cache, &live_on(&cache, &image)),
            None,
            "{image}"
        );
    }
    assert_eq!(newer_release_image(&cache, &Live::default()), None);
    // A pinned spec.image is the user's choice, whatever runs.
    let pinned = cache_from_spec(&format!("{DAEMONSET}image: registry.local/node:1\n"));
    assert_eq!(newer_release_image(&pinned, &live_on(&pinned, newer)), None);
}
