//! Day-2 reconcile tests on the scripted API server: nothing pruned while an object is refused,
//! the live StatefulSets backing the transition rules, tokens validated on read, the admin
//! token, failures reported on the cache, and the CRD state at start.

use std::sync::Arc;

use http::{Method, StatusCode};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::crd::CasseroleCacheStatus;
use crate::crd_upgrade::{ensure, CrdState};
use crate::metrics::Metrics;
use crate::mock::{self, echo, status_error};
use crate::reconcile::{Error, REQUEUE_READY};
use crate::reconcile_tests::*;
use crate::resources::testing::{cache_from_spec, default_cache};
use crate::resources::{desired_for, Inputs};

/// A cache whose previous generation was applied (a spec change is being reconciled).
fn changed(spec: &str) -> crate::crd::CasseroleCache {
    let mut cache = cache_from_spec(spec);
    cache.metadata.generation = Some(2);
    cache.status = Some(CasseroleCacheStatus {
        observed_generation: Some(1),
        ..CasseroleCacheStatus::default()
    });
    cache
}

#[tokio::test]
async fn a_refused_daemonset_never_prunes_the_working_statefulset() {
    let (ctx, mut server) = context();
    let cache = Arc::new(changed(
        "upstream: http://u\nworkload: DaemonSet\netcd: {external: {endpoints: ['http://e:2379']}}\n",
    ));
    let objects = desired_with_token(&cache, EXISTING_TOKEN);
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| existing_secret())
            .await;
        expect_live(&mut server, &cache).await;
        for object in &objects {
            server
                .expect(Method::PATCH, &object_path(object), |s| {
                    if s.body["kind"] == "DaemonSet" {
                        status_error(403, "Forbidden")
                    } else {
                        workload_answer(s, 1)
                    }
                })
                .await;
        }
        // Degraded/ApplyFailed, then one Warning: and no GET/DELETE of the StatefulSet.
        let status = server
            .expect(Method::PATCH, STATUS_PATH, |s| status_answer(&cache, s))
            .await;
        server.expect(Method::POST, EVENTS_PATH, echo).await;
        status.body["status"].clone()
    };
    let (result, status) = tokio::join!(run(cache.clone(), &ctx), scenario);
    assert!(matches!(result, Err(Error::Apply(_))));
    assert_eq!(condition(&status, "Degraded")["reason"], "ApplyFailed");
    // This generation is not applied yet: its leftovers are pruned once it is.
    assert_eq!(status["observedGeneration"], 1);
    drop(ctx);
    server.done().await;
}

/// The live etcd StatefulSet of an earlier spec with `replicas` members.
fn live_etcd(replicas: i32) -> Value {
    let old = cache_from_spec(&format!(
        "upstream: http://u\netcd: {{managed: {{replicas: {replicas}}}}}\n"
    ));
    let objects = desired_for(&old, &Inputs::default()).unwrap();
    objects
        .iter()
        .find(|o| o.name() == "web-etcd" && o.kind() == "StatefulSet")
        .unwrap()
        .to_value()
}

#[tokio::test]
async fn etcd_membership_change_is_refused_against_the_live_statefulset_without_cel() {
    let (ctx, mut server) = context();
    // The CRD in the cluster lacks the transition rule: the spec went from 1 to 3 members.
    let cache = Arc::new(changed("upstream: http://u\n"));
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| existing_secret())
            .await;
        server
            .expect(Method::GET, &format!("{STS_PATH}/web-etcd"), |_| {
                (StatusCode::OK, live_etcd(1))
            })
            .await;
        server
            .expect(Method::GET, &format!("{STS_PATH}/web"), |_| {
                status_error(404, "NotFound")
            })
            .await;
        let status = server
            .expect(Method::PATCH, STATUS_PATH, |s| status_answer(&cache, s))
            .await;
        let event = server.expect(Method::POST, EVENTS_PATH, echo).await;
        (status.body["status"].clone(), event.body)
    };
    let (result, (status, event)) = tokio::join!(run(cache.clone(), &ctx), scenario);
    assert_eq!(result.unwrap(), Action::await_change());
    let ready = condition(&status, "Ready");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.etcd.managed.replicas"),
        "{ready}"
    );
    assert_eq!(event["reason"], "InvalidSpec");
    drop(ctx);
    // Nothing applied.
    server.done().await;
}

#[tokio::test]
async fn a_peer_token_the_node_would_refuse_is_an_invalid_spec_not_a_crash_loop() {
    let (ctx, mut server) = context();
    let cache = Arc::new(default_cache());
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| {
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "Secret",
                           "metadata": {"name": "web-peer-token", "namespace": "cdn"},
                           "data": {"token": "c2hvcnQ="}}),
                )
            })
            .await;
        let status = server
            .expect(Method::PATCH, STATUS_PATH, |s| status_answer(&cache, s))
            .await;
        // The Event is refused (no RBAC for events): the reconcile still succeeds.
        server
            .expect(Method::POST, EVENTS_PATH, |_| {
                status_error(403, "Forbidden")
            })
            .await;
        status.body["status"].clone()
    };
    let (result, status) = tokio::join!(run(cache.clone(), &ctx), scenario);
    assert_eq!(result.unwrap(), Action::await_change());
    let message = condition(&status, "Ready")["message"].as_str().unwrap();
    assert!(
        message.contains("Secret web-peer-token/token") && message.contains("at least 16"),
        "{message}"
    );
    drop(ctx);
    server.done().await;
}

#[tokio::test]
async fn admin_token_and_previous_peer_token_reach_the_pods() {
    let (ctx, mut server) = context();
    let cache = Arc::new(cache_from_spec(
        "upstream: http://u\nadminToken: {name: purge, key: admin}\n",
    ));
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| {
                let (code, mut body) = existing_secret();
                body["data"]["previous"] = json!("cHJldmlvdXMtcGVlci10b2tlbi0x");
                (code, body)
            })
            .await;
        server
            .expect(Method::GET, "/api/v1/namespaces/cdn/secrets/purge", |_| {
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "purge"},
                           "data": {"admin": "YWRtaW4tdG9rZW4tb2YtMTYtY2hhcnM="}}),
                )
            })
            .await;
        expect_live(&mut server, &cache).await;
        let mut sts = Value::Null;
        for _ in 0..10 {
            let (request, send) = server.0.next_request().await.unwrap();
            let body: Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap_or(Value::Null);
            if body["kind"] == "StatefulSet" && body["metadata"]["name"] == "web" {
                sts = body.clone();
            }
            send.send_response(
                http::Response::builder()
                    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
        sts
    };
    let (_, sts) = tokio::join!(
        tokio::time::timeout(std::time::Duration::from_secs(3), run(cache.clone(), &ctx)),
        scenario
    );
    let pod = &sts["spec"]["template"];
    let args = pod["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--admin-token-file=/etc/casserole/admin/token"),
        "{args}"
    );
    assert!(
        args.contains("--peer-token-previous-file=/etc/casserole/peer/previous"),
        "{args}"
    );
    // Keyed with the peer token: not a plain hash of the admin token a reader could test
    // guesses against.
    let admin = &pod["metadata"]["annotations"]["casserole.io/admin-token"];
    let peer = format!("{EXISTING_TOKEN}\nprevious-peer-token-1");
    let keyed =
        crate::resources::secret::keyed_fingerprint(peer.as_bytes(), b"admin-token-of-16-chars");
    assert_eq!(admin.as_str(), Some(keyed.as_str()));
    let plain = crate::resources::secret::token_fingerprint(b"admin-token-of-16-chars");
    assert_ne!(admin.as_str(), Some(plain.as_str()));
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(volumes.contains(r#""secretName":"purge""#), "{volumes}");
}

#[tokio::test]
async fn a_failure_outside_apply_is_reported_on_the_cache() {
    let (ctx, mut server) = context();
    let cache = Arc::new(default_cache());
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| {
                status_error(500, "InternalError")
            })
            .await;
        let status = server
            .expect(Method::PATCH, STATUS_PATH, |s| status_answer(&cache, s))
            .await;
        status.body["status"].clone()
    };
    let (result, status) = tokio::join!(run(cache.clone(), &ctx), scenario);
    assert!(matches!(result, Err(Error::Kube(_))));
    assert_eq!(condition(&status, "Degraded")["reason"], "ReconcileFailed");
    drop(ctx);
    server.done().await;
}

const CRD_PATH: &str =
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/casserolecaches.casserole.io";

fn installed_crd(version: &str) -> (StatusCode, Value) {
    let mut crd = serde_json::to_value(crate::crd_object()).unwrap();
    crd["metadata"]["annotations"]["casserole.io/operator-version"] = json!(version);
    (StatusCode::OK, crd)
}

#[tokio::test]
async fn a_crd_apply_refused_by_rbac_is_a_condition_and_a_metric() {
    let (client, mut server) = mock::client();
    let metrics = Metrics::default();
    let scenario = async {
        server
            .expect(Method::GET, CRD_PATH, |_| installed_crd("0.0.1"))
            .await;
        server
            .expect(Method::PATCH, CRD_PATH, |_| status_error(403, "Forbidden"))
            .await;
    };
    let (state, ()) = tokio::join!(ensure(client, true, &metrics), scenario);
    assert!(
        matches!(&state, CrdState::Problem { reason, message }
            if *reason == "CRDApplyFailed" && message.contains("ClusterRoleBinding")),
        "{state:?}"
    );
    assert_eq!(metrics.crd_current.get(), 0);
    assert_eq!(metrics.crd_apply_failures.get(), 1);
    server.done().await;

    let mut status = CasseroleCacheStatus::default();
    let now = k8s_openapi::jiff::Timestamp::now();
    crate::status::set_crd(&mut status, &default_cache(), Some(&state), now);
    assert_eq!(status.conditions[0].type_, "CRDCurrent");
    assert_eq!(status.conditions[0].status, "False");
    assert_eq!(status.conditions[0].reason, "CRDApplyFailed");
}

#[tokio::test]
async fn an_outdated_crd_is_reported_when_the_operator_may_not_apply_it() {
    let (client, mut server) = mock::client();
    let metrics = Metrics::default();
    let scenario = async {
        server
            .expect(Method::GET, CRD_PATH, |_| installed_crd("0.0.1"))
            .await;
    };
    let (state, ()) = tokio::join!(ensure(client.clone(), false, &metrics), scenario);
    assert!(
        matches!(&state, CrdState::Problem { reason, .. } if *reason == "CRDOutdated"),
        "{state:?}"
    );
    assert_eq!(metrics.crd_current.get(), 0);
    // This release's own CRD is current, and so is a newer one.
    let scenario = async {
        server
            .expect(Method::GET, CRD_PATH, |_| {
                installed_crd(env!("CARGO_PKG_VERSION"))
            })
            .await;
        server
            .expect(Method::GET, CRD_PATH, |_| installed_crd("99.0.0"))
            .await;
    };
    let both = async {
        (
            ensure(client.clone(), false, &metrics).await,
            ensure(client.clone(), true, &metrics).await,
        )
    };
    let ((own, newer), ()) = tokio::join!(both, scenario);
    assert_eq!((own, newer), (CrdState::Current, CrdState::Current));
    assert_eq!(metrics.crd_current.get(), 1);
    drop(client);
    server.done().await;
}

#[tokio::test]
async fn pruning_forbidden_by_rbac_does_not_block_the_reconcile() {
    let (ctx, mut server) = context();
    let cache = Arc::new(default_cache());
    let (result, (_, _, status)) = tokio::join!(
        run(cache.clone(), &ctx),
        first_reconcile_with_prune_answer(&mut server, &cache, 403)
    );
    assert_eq!(result.unwrap(), Action::requeue(REQUEUE_READY));
    assert_eq!(condition(&status, "Ready")["status"], "True");
    drop(ctx);
    server.done().await;
}
