//! DaemonSet day-2 announcements on the scripted API server (issue 22, L3): an operator
//! upgrade's new default node image is announced before the nodes roll, and a `kubectl scale`
//! of a DaemonSet cache (where the installed CRD lacks the rule refusing it) is a Warning.

use std::sync::Arc;

use http::{Method, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use serde_json::{json, Value};

use crate::crd::{CasseroleCache, CasseroleCacheStatus};
use crate::mock::{echo, status_error, ApiServer};
use crate::reconcile_tests::*;
use crate::resources::default_node_image;
use crate::resources::testing::cache_from_spec;

const DAEMONSET: &str =
    "upstream: http://u\nworkload: DaemonSet\netcd: {external: {endpoints: ['http://e:2379']}}\n";
const OLD_IMAGE: &str = "ghcr.io/casserole-cache/casserole-node:0.0.9";

/// A DaemonSet cache whose generation 1 ran on two nodes, changed since (generation 2).
fn running_daemonset_cache(extra: &str) -> CasseroleCache {
    let mut cache = cache_from_spec(&format!("{DAEMONSET}{extra}"));
    cache.metadata.generation = Some(2);
    cache.status = Some(CasseroleCacheStatus {
        observed_generation: Some(1),
        replicas: 2,
        ..CasseroleCacheStatus::default()
    });
    cache
}

/// The live DaemonSet as the previous operator release applied it: its pods on `image`.
fn live_daemonset(cache: &CasseroleCache, image: &str) -> Value {
    let mut ds = desired_with_token(cache, EXISTING_TOKEN)
        .into_iter()
        .find(|o| o.kind() == "DaemonSet")
        .unwrap()
        .to_value();
    ds["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
    ds
}

/// The rest of a reconcile of a changed DaemonSet cache after its reads: applies, leftovers
/// (none), members, status; returns the Events published after the status, in order.
async fn apply_and_report(
    server: &mut ApiServer,
    cache: &CasseroleCache,
    events: usize,
) -> Vec<Value> {
    expect_applies(server, cache, EXISTING_TOKEN, 2).await;
    for path in [
        "/apis/apps/v1/namespaces/cdn/statefulsets/web",
        "/apis/policy/v1/namespaces/cdn/poddisruptionbudgets/web",
        "/api/v1/namespaces/cdn/services/web-etcd-peer",
        "/api/v1/namespaces/cdn/services/web-etcd",
        "/apis/policy/v1/namespaces/cdn/poddisruptionbudgets/web-etcd",
        "/apis/networking.k8s.io/v1/namespaces/cdn/networkpolicies/web-etcd",
        "/apis/apps/v1/namespaces/cdn/statefulsets/web-etcd",
    ] {
        server
            .expect(Method::GET, path, |_| status_error(404, "NotFound"))
            .await;
    }
    expect_members(server, 2, 2).await;
    server
        .expect(Method::PATCH, STATUS_PATH, |s| status_answer(cache, s))
        .await;
    let mut published = Vec::new();
    for _ in 0..events {
        published.push(server.expect(Method::POST, EVENTS_PATH, echo).await.body);
    }
    published
}

#[tokio::test]
async fn an_operator_upgrade_announces_the_new_node_image_before_the_nodes_roll() {
    let (ctx, mut server) = context();
    let cache = Arc::new(running_daemonset_cache(""));
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| existing_secret())
            .await;
        let live = live_daemonset(&cache, OLD_IMAGE);
        server
            .expect(Method::GET, DS_PATH, |_| (StatusCode::OK, live.clone()))
            .await;
        apply_and_report(&mut server, &cache, 1).await
    };
    let (result, events) = tokio::join!(run(cache.clone(), &ctx), scenario);
    result.unwrap();
    let event = &events[0];
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Normal"), Some("NodeImageChanged"))
    );
    let note = event["note"].as_str().unwrap();
    let expected = format!("from {OLD_IMAGE} to {}", default_node_image());
    assert!(note.contains(&expected), "{note}");
    assert!(note.contains("the operator was upgraded"), "{note}");
    drop(ctx);
    server.done().await;
}

#[tokio::test]
async fn a_pinned_image_rolls_nothing_and_announces_nothing_on_an_operator_upgrade() {
    let (ctx, mut server) = context();
    let cache = Arc::new(running_daemonset_cache(&format!("image: {OLD_IMAGE}\n")));
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| existing_secret())
            .await;
        let live = live_daemonset(&cache, OLD_IMAGE);
        server
            .expect(Method::GET, DS_PATH, |_| (StatusCode::OK, live.clone()))
            .await;
        // The apply carries the pinned image (expect_applies compares the whole object).
        apply_and_report(&mut server, &cache, 0).await
    };
    let (result, events) = tokio::join!(run(cache.clone(), &ctx), scenario);
    result.unwrap();
    assert!(events.is_empty());
    let ds = desired_with_token(&cache, EXISTING_TOKEN)
        .into_iter()
        .find(|o| o.kind() == "DaemonSet")
        .unwrap()
        .to_value();
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        OLD_IMAGE
    );
    drop(ctx);
    server.done().await;
}

#[tokio::test]
async fn kubectl_scale_of_a_daemonset_cache_is_a_warning_not_silence() {
    let (ctx, mut server) = context();
    let mut cache = running_daemonset_cache("replicas: 5\n");
    cache.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("kubectl".into()),
        operation: Some("Update".into()),
        subresource: Some("scale".into()),
        fields_v1: Some(FieldsV1(json!({"f:spec": {"f:replicas": {}}}))),
        ..ManagedFieldsEntry::default()
    }]);
    let cache = Arc::new(cache);
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| existing_secret())
            .await;
        let live = live_daemonset(&cache, &default_node_image());
        server
            .expect(Method::GET, DS_PATH, |_| (StatusCode::OK, live.clone()))
            .await;
        apply_and_report(&mut server, &cache, 1).await
    };
    let (result, events) = tokio::join!(run(cache.clone(), &ctx), scenario);
    result.unwrap();
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["reason"].as_str()),
        (Some("Warning"), Some("ReplicasIgnored"))
    );
    let note = events[0]["note"].as_str().unwrap();
    assert!(
        note.contains("spec.replicas (5)") && note.contains("by kubectl"),
        "{note}"
    );
    drop(ctx);
    server.done().await;
}

#[tokio::test]
async fn an_older_operator_replica_never_rolls_pods_back_during_an_operator_upgrade() {
    let (ctx, mut server) = context();
    let cache = Arc::new(running_daemonset_cache(""));
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| existing_secret())
            .await;
        let live = live_daemonset(&cache, "ghcr.io/casserole-cache/casserole-node:99.0.0");
        server
            .expect(Method::GET, DS_PATH, |_| (StatusCode::OK, live.clone()))
            .await;
        server.expect(Method::POST, EVENTS_PATH, echo).await.body
    };
    let (result, event) = tokio::join!(run(cache.clone(), &ctx), scenario);
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("NewerRelease"))
    );
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("casserole-node:99.0.0") && note.contains("set spec.image"),
        "{note}"
    );
    // Nothing applied, no status written: the newer release owns the cache.
    assert_eq!(
        result.unwrap(),
        kube::runtime::controller::Action::requeue(crate::reconcile::REQUEUE_READY)
    );
    drop(ctx);
    server.done().await;
}
