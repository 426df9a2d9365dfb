//! Reconcile tests against the scripted fake API server: every API call the reconciler makes
//! is expected in order, checked, and answered.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::crd::{CasseroleCache, CasseroleCacheStatus};
use crate::metrics::Metrics;
use crate::mock::{self, echo, status_error, ApiServer, Seen};
use crate::reconcile::{error_policy, reconcile, Context, Error, REQUEUE_PENDING, REQUEUE_READY};
use crate::resources::testing::{cache_from_spec, default_cache};
use crate::resources::{desired_for, secret, Inputs, Object};

pub(crate) const SECRET_PATH: &str = "/api/v1/namespaces/cdn/secrets/web-peer-token";
pub(crate) const STATUS_PATH: &str =
    "/apis/casserole.io/v1alpha1/namespaces/cdn/casserolecaches/web/status";
pub(crate) const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/cdn/events";

pub(crate) fn context() -> (Arc<Context>, ApiServer) {
    let (client, server) = mock::client();
    (
        Arc::new(Context::new(
            client,
            Metrics::default(),
            Some("test".into()),
        )),
        server,
    )
}

/// One reconcile, bounded: a request the script does not answer fails the test instead of
/// hanging it.
pub(crate) async fn run(cache: Arc<CasseroleCache>, ctx: &Arc<Context>) -> Result<Action, Error> {
    tokio::time::timeout(Duration::from_secs(10), reconcile(cache, ctx.clone()))
        .await
        .expect("reconcile finished (an unanswered request would hang it)")
}

pub(crate) fn object_path(o: &Object) -> String {
    let ar = o.api_resource();
    let prefix = if ar.group.is_empty() {
        format!("/api/{}", ar.version)
    } else {
        format!("/apis/{}/{}", ar.group, ar.version)
    };
    format!("{prefix}/namespaces/cdn/{}/{}", ar.plural, o.name())
}

/// An apply answer: the object echoed back, with a workload status showing `ready` pods.
pub(crate) fn workload_answer(seen: &Seen, ready: i32) -> (StatusCode, Value) {
    let mut body = seen.body.clone();
    body["metadata"]["generation"] = json!(1);
    match body["kind"].as_str() {
        Some("StatefulSet") => {
            let n = body["spec"]["replicas"].clone();
            body["status"] = json!({
                "observedGeneration": 1, "replicas": n, "readyReplicas": ready.min(n.as_i64().unwrap() as i32),
                "updatedReplicas": n, "availableReplicas": ready,
            });
        }
        Some("DaemonSet") => {
            body["status"] = json!({
                "observedGeneration": 1, "desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                "numberReady": ready, "updatedNumberScheduled": 2, "numberMisscheduled": 0,
            });
        }
        _ => {}
    }
    (StatusCode::OK, body)
}

/// The existing peer token Secret the fake API server hands out.
pub(crate) fn existing_secret() -> (StatusCode, Value) {
    (
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "web-peer-token", "namespace": "cdn"},
               "data": {"token": "ZXhpc3RpbmctcGVlci10b2tlbi0wMDAx"}}),
    )
}
pub(crate) const EXISTING_TOKEN: &str = "existing-peer-token-0001";

/// The desired objects for pods on the given token.
pub(crate) fn desired_with_token(cache: &CasseroleCache, token: &str) -> Vec<Object> {
    let inputs = Inputs {
        peer_token_fingerprint: Some(secret::token_fingerprint(token.as_bytes())),
        ..Inputs::default()
    };
    desired_for(cache, &inputs).unwrap()
}

pub(crate) const STS_PATH: &str = "/apis/apps/v1/namespaces/cdn/statefulsets";

/// Expects the reads of the live StatefulSets (managed etcd, cache StatefulSet) the transition
/// checks compare with, or of the cache DaemonSet; none exists yet.
pub(crate) async fn expect_live(server: &mut ApiServer, cache: &CasseroleCache) {
    if cache.spec.etcd.managed.is_some() {
        server
            .expect(Method::GET, &format!("{STS_PATH}/web-etcd"), |_| {
                status_error(404, "NotFound")
            })
            .await;
    }
    let path = match cache.spec.workload {
        crate::crd::WorkloadKind::StatefulSet => format!("{STS_PATH}/web"),
        crate::crd::WorkloadKind::DaemonSet => DS_PATH.to_string(),
    };
    server
        .expect(Method::GET, &path, |_| status_error(404, "NotFound"))
        .await;
}

pub(crate) const DS_PATH: &str = "/apis/apps/v1/namespaces/cdn/daemonsets/web";

/// Expects one forced apply per desired object, in order, each carrying exactly the desired
/// object for pods on `token`; returns the bodies.
pub(crate) async fn expect_applies(
    server: &mut ApiServer,
    cache: &CasseroleCache,
    token: &str,
    ready: i32,
) -> Vec<Value> {
    let mut bodies = Vec::new();
    for object in desired_with_token(cache, token) {
        let seen = server
            .expect(Method::PATCH, &object_path(&object), |s| {
                workload_answer(s, ready)
            })
            .await;
        seen.assert_apply();
        assert_eq!(
            seen.body,
            object.to_value(),
            "apply body of {}",
            object.name()
        );
        bodies.push(seen.body);
    }
    bodies
}

/// The answer to a status patch: the cache with the status that was sent.
pub(crate) fn status_answer(cache: &CasseroleCache, seen: &Seen) -> (StatusCode, Value) {
    let mut c = serde_json::to_value(cache).unwrap();
    c["status"] = seen.body["status"].clone();
    (StatusCode::OK, c)
}

const PODS_PATH: &str = "/api/v1/namespaces/cdn/pods";

/// The cache pods, `ready` of them Ready.
fn pods_answer(total: usize, ready: usize) -> (StatusCode, Value) {
    let items: Vec<Value> = (0..total)
        .map(|i| {
            json!({"metadata": {"name": format!("web-{i}"), "namespace": "cdn"},
                   "status": {"conditions": [{"type": "Ready", "status": if i < ready {"True"} else {"False"}}]}})
        })
        .collect();
    (
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
    )
}

/// Expects the pod list the members come from.
pub(crate) async fn expect_members(server: &mut ApiServer, total: usize, ready: usize) {
    let seen = server
        .expect(Method::GET, PODS_PATH, |_| pods_answer(total, ready))
        .await;
    assert!(
        seen.query.contains("app.kubernetes.io%2Finstance%3Dweb")
            || seen.query.contains("app.kubernetes.io/instance=web"),
        "{}",
        seen.query
    );
}

pub(crate) fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The whole first reconcile of a new cache, as the API server sees it.
async fn first_reconcile_scenario(
    server: &mut ApiServer,
    cache: &CasseroleCache,
) -> (Seen, Vec<Value>, Value) {
    first_reconcile_with_prune_answer(server, cache, 404).await
}

/// The first reconcile, where looking for leftovers answers `prune_code` (404: none there;
/// 403: RBAC without `get` on DaemonSets).
pub(crate) async fn first_reconcile_with_prune_answer(
    server: &mut ApiServer,
    cache: &CasseroleCache,
    prune_code: u16,
) -> (Seen, Vec<Value>, Value) {
    server
        .expect(Method::GET, SECRET_PATH, |_| status_error(404, "NotFound"))
        .await;
    let created = server
        .expect(Method::POST, "/api/v1/namespaces/cdn/secrets", echo)
        .await;
    let event = server.expect(Method::POST, EVENTS_PATH, echo).await;
    assert_eq!(event.body["reason"], "Created");
    assert_eq!(event.body["type"], "Normal");
    let token = created.body["stringData"]["token"].as_str().unwrap();
    expect_live(server, cache).await;
    let applies = expect_applies(server, cache, token, 3).await;
    // A new spec: look for leftovers of another workload kind (none).
    server
        .expect(
            Method::GET,
            "/apis/apps/v1/namespaces/cdn/daemonsets/web",
            // kube's `get_opt` recognises a missing object by the reason, not only the code.
            |_| {
                status_error(
                    prune_code,
                    if prune_code == 404 {
                        "NotFound"
                    } else {
                        "Forbidden"
                    },
                )
            },
        )
        .await;
    expect_members(server, 3, 3).await;
    let status = server
        .expect(Method::PATCH, STATUS_PATH, |s| status_answer(cache, s))
        .await;
    status.assert_apply();
    // A new cache: a Normal Event lists what was created.
    let event = server.expect(Method::POST, EVENTS_PATH, echo).await;
    assert_eq!(
        (event.body["type"].as_str(), event.body["reason"].as_str()),
        (Some("Normal"), Some("Created"))
    );
    let note = event.body["note"].as_str().unwrap();
    assert!(
        note.contains("StatefulSet web-etcd") && note.contains("StatefulSet web"),
        "{note}"
    );
    (created, applies, status.body["status"].clone())
}

#[tokio::test]
async fn first_reconcile_creates_the_token_applies_everything_and_reports_ready() {
    let (ctx, mut server) = context();
    let cache = Arc::new(default_cache());
    let (result, (secret, applies, status)) = tokio::join!(
        run(cache.clone(), &ctx),
        first_reconcile_scenario(&mut server, &cache)
    );
    assert_eq!(result.unwrap(), Action::requeue(REQUEUE_READY));
    drop(ctx);
    server.done().await;

    let token = secret.body["stringData"]["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    // Mutable: a rotation patches it (token, then previous); the operator never writes it again.
    assert!(secret.body.get("immutable").is_none());
    assert_eq!(secret.body["metadata"]["ownerReferences"][0]["name"], "web");
    assert_eq!(applies.len(), 10);

    assert_eq!(status["replicas"], 3);
    assert_eq!(status["readyReplicas"], 3);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "EtcdReady")["status"], "True");
    assert_eq!(condition(&status, "Progressing")["status"], "False");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert_eq!(status["members"], json!(["web-0", "web-1", "web-2"]));
    assert_eq!(condition(&status, "MembersReady")["status"], "True");
}

#[tokio::test]
async fn second_reconcile_is_idempotent() {
    // First reconcile, to learn the status it writes.
    let (ctx, mut server) = context();
    let cache = default_cache();
    let (first, (_, first_applies, status)) = tokio::join!(
        run(Arc::new(cache.clone()), &ctx),
        first_reconcile_scenario(&mut server, &cache)
    );
    first.unwrap();

    // The watch hands back the cache with that status.
    let mut cache = cache;
    cache.status = Some(serde_json::from_value::<CasseroleCacheStatus>(status).unwrap());
    let scenario = async {
        // The token exists: it is read, never recreated or rewritten.
        server
            .expect(Method::GET, SECRET_PATH, |_| existing_secret())
            .await;
        expect_live(&mut server, &cache).await;
        let applies = expect_applies(&mut server, &cache, EXISTING_TOKEN, 3).await;
        expect_members(&mut server, 3, 3).await;
        applies
    };
    let (second, second_applies) = tokio::join!(run(Arc::new(cache.clone()), &ctx), scenario);
    assert_eq!(second.unwrap(), Action::requeue(REQUEUE_READY));
    // Same objects, except for the pods' token fingerprint (the first reconcile made a token,
    // this one finds "secret").
    assert_eq!(first_applies.len(), second_applies.len());
    assert_eq!(
        first_applies[..4],
        second_applies[..4],
        "etcd applied again unchanged"
    );
    drop(ctx);
    // In particular: no status write, since nothing changed.
    server.done().await;
}

#[tokio::test]
async fn invalid_spec_sets_the_condition_emits_a_warning_and_applies_nothing() {
    let (ctx, mut server) = context();
    let cache = cache_from_spec("upstream: http://u\npassThrough: ['(unclosed']\n");
    let scenario = async {
        let status = server
            .expect(Method::PATCH, STATUS_PATH, |s| status_answer(&cache, s))
            .await;
        let event = server.expect(Method::POST, EVENTS_PATH, echo).await;
        (event.body, status.body["status"].clone())
    };
    let (result, (event, status)) = tokio::join!(run(Arc::new(cache.clone()), &ctx), scenario);
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(ctx.metrics.invalid_specs.get(), 1);
    drop(ctx);
    server.done().await;

    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidSpec");
    assert_eq!(event["regarding"]["name"], "web");
    assert!(event["note"]
        .as_str()
        .unwrap()
        .contains("spec.passThrough[0]"));
    let ready = condition(&status, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(ready["message"]
        .as_str()
        .unwrap()
        .contains("spec.passThrough[0]"));
}

#[tokio::test]
async fn a_refused_apply_degrades_the_cache_warns_and_still_applies_the_rest() {
    let (ctx, mut server) = context();
    let cache = Arc::new(default_cache());
    let objects = desired_with_token(&cache, EXISTING_TOKEN);
    let refused = objects
        .iter()
        .position(|o| o.kind() == "StatefulSet" && o.name() == "web")
        .unwrap();
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| existing_secret())
            .await;
        expect_live(&mut server, &cache).await;
        let mut applied = Vec::new();
        for (i, object) in objects.iter().enumerate() {
            let seen = server
                .expect(Method::PATCH, &object_path(object), |s| {
                    if i == refused {
                        (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                   "status": "Failure", "reason": "Invalid", "code": 422,
                                   "message": "StatefulSet.apps \"web\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas' are forbidden"}),
                        )
                    } else {
                        workload_answer(s, 3)
                    }
                })
                .await;
            applied.push(seen.body["kind"].clone());
        }
        // No look for leftovers: nothing is pruned while an object is refused.
        let status = server
            .expect(Method::PATCH, STATUS_PATH, |s| status_answer(&cache, s))
            .await;
        let event = server.expect(Method::POST, EVENTS_PATH, echo).await;
        (applied, status.body["status"].clone(), event.body)
    };
    let (result, (applied, status, event)) = tokio::join!(run(cache.clone(), &ctx), scenario);
    // Every object was sent, the ones after the refused one too.
    assert_eq!(applied.len(), objects.len());
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::Apply(f) if f.len() == 1 && f[0].name == "web"),
        "{err}"
    );

    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ApplyFailed");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("StatefulSet web") && message.contains("Forbidden"),
        "{message}"
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "ApplyFailed");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.starts_with("StatefulSet web: ") && note.contains("Forbidden"),
        "{note}"
    );

    assert_eq!(
        error_policy(cache.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(cache.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(ctx.metrics.failures.with_label_values(&["apply"]).get(), 2);
    drop(ctx);
    server.done().await;
}

#[tokio::test]
async fn a_cache_being_deleted_is_not_reconciled() {
    let (ctx, server) = context();
    let mut cache = default_cache();
    cache.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap(),
    ));
    let result = run(Arc::new(cache), &ctx).await;
    assert_eq!(result.unwrap(), Action::await_change());
    drop(ctx);
    // No request at all: no Secret re-created, no object applied, no status written.
    server.done().await;
}

#[tokio::test]
async fn a_deleted_peer_token_is_made_again_and_the_pods_roll_onto_it() {
    let (ctx, mut server) = context();
    let mut cache = default_cache();
    cache.status = Some(CasseroleCacheStatus {
        observed_generation: Some(1),
        ..CasseroleCacheStatus::default()
    });
    let before = desired_with_token(&cache, EXISTING_TOKEN);
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| status_error(404, "NotFound"))
            .await;
        let created = server
            .expect(Method::POST, "/api/v1/namespaces/cdn/secrets", echo)
            .await;
        server.expect(Method::POST, EVENTS_PATH, echo).await;
        let token = created.body["stringData"]["token"]
            .as_str()
            .unwrap()
            .to_string();
        expect_live(&mut server, &cache).await;
        let applies = expect_applies(&mut server, &cache, &token, 3).await;
        expect_members(&mut server, 3, 3).await;
        server
            .expect(Method::PATCH, STATUS_PATH, |s| status_answer(&cache, s))
            .await;
        (token, applies)
    };
    let (result, (token, applies)) = tokio::join!(run(Arc::new(cache.clone()), &ctx), scenario);
    result.unwrap();
    assert_ne!(token, EXISTING_TOKEN);
    let template_annotations =
        |sts: &Value| sts["spec"]["template"]["metadata"]["annotations"].clone();
    let old_sts = before.last().unwrap().to_value();
    let new_sts = applies.last().unwrap();
    assert_eq!(new_sts["metadata"]["name"], "web");
    assert_ne!(
        template_annotations(&old_sts)["casserole.io/config-hash"],
        template_annotations(new_sts)["casserole.io/config-hash"],
        "a new token changes the pod template, which rolls the pods"
    );
    assert_eq!(
        template_annotations(new_sts)["casserole.io/peer-token"],
        secret::token_fingerprint(token.as_bytes())
    );
    drop(ctx);
    server.done().await;
}

#[tokio::test]
async fn daemonset_with_external_etcd_reports_pods_not_ready_and_requeues_soon() {
    let (ctx, mut server) = context();
    let cache = cache_from_spec(
        "upstream: http://u\nworkload: DaemonSet\netcd: {external: {endpoints: ['http://etcd:2379']}}\n",
    );
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| status_error(404, "NotFound"))
            .await;
        // Another writer created it first: the reconcile goes on with theirs.
        server
            .expect(Method::POST, "/api/v1/namespaces/cdn/secrets", |_| {
                status_error(409, "AlreadyExists")
            })
            .await;
        server
            .expect(Method::GET, SECRET_PATH, |_| existing_secret())
            .await;
        expect_live(&mut server, &cache).await;
        let applies = expect_applies(&mut server, &cache, EXISTING_TOKEN, 1).await;
        // Leftovers of a StatefulSet/managed-etcd past: ours are deleted, others' kept.
        let owned_by = |uid: &str| {
            json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "x", "ownerReferences": [
                {"apiVersion": "casserole.io/v1alpha1", "kind": "CasseroleCache", "name": "web",
                 "uid": uid, "controller": true}]}})
        };
        let ours = owned_by(cache.metadata.uid.as_deref().unwrap());
        server
            .expect(
                Method::GET,
                "/apis/apps/v1/namespaces/cdn/statefulsets/web",
                |_| (StatusCode::OK, ours.clone()),
            )
            .await;
        server
            .expect(
                Method::DELETE,
                "/apis/apps/v1/namespaces/cdn/statefulsets/web",
                |_| (StatusCode::OK, ours.clone()),
            )
            .await;
        let pruned = server.expect(Method::POST, EVENTS_PATH, echo).await;
        assert_eq!(pruned.body["reason"], "Pruned");
        assert_eq!(pruned.body["type"], "Normal");
        for path in [
            "/apis/policy/v1/namespaces/cdn/poddisruptionbudgets/web",
            "/api/v1/namespaces/cdn/services/web-etcd-peer",
            "/api/v1/namespaces/cdn/services/web-etcd",
            "/apis/policy/v1/namespaces/cdn/poddisruptionbudgets/web-etcd",
        ] {
            server
                .expect(Method::GET, path, |_| status_error(404, "NotFound"))
                .await;
        }
        server
            .expect(
                Method::GET,
                "/apis/networking.k8s.io/v1/namespaces/cdn/networkpolicies/web-etcd",
                |_| (StatusCode::OK, owned_by("someone-else")),
            )
            .await;
        server
            .expect(
                Method::GET,
                "/apis/apps/v1/namespaces/cdn/statefulsets/web-etcd",
                |_| status_error(404, "NotFound"),
            )
            .await;
        expect_members(&mut server, 2, 1).await;
        let status = server
            .expect(Method::PATCH, STATUS_PATH, |s| status_answer(&cache, s))
            .await;
        let created = server.expect(Method::POST, EVENTS_PATH, echo).await;
        assert_eq!(created.body["reason"], "Created");
        (applies, status.body["status"].clone())
    };
    let (result, (applies, status)) = tokio::join!(run(Arc::new(cache.clone()), &ctx), scenario);
    assert_eq!(result.unwrap(), Action::requeue(REQUEUE_PENDING));
    drop(ctx);
    server.done().await;

    assert_eq!(applies.len(), 4, "no PodDisruptionBudget for a DaemonSet");
    assert_eq!(applies.last().unwrap()["kind"], "DaemonSet");
    assert_eq!(
        (status["replicas"].clone(), status["readyReplicas"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(condition(&status, "Ready")["reason"], "PodsNotReady");
    assert_eq!(condition(&status, "EtcdReady")["reason"], "External");
    assert_eq!(condition(&status, "Degraded")["status"], "True");
    // One of the two pods is ready: one member, as many as ready replicas.
    assert_eq!(status["members"], json!(["web-0"]));
    assert_eq!(condition(&status, "MembersReady")["status"], "True");
}
