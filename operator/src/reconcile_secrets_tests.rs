//! Secrets granted per namespace (issue 22, M8) on the scripted API server: a cache in a
//! namespace where RBAC gives the operator no Secrets is told why and how to grant them,
//! nothing else is touched, and it is retried (a new RoleBinding triggers no watch).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::crd::CasseroleCacheStatus;
use crate::mock::{echo, ApiServer};
use crate::reconcile::{error_policy, Error};
use crate::reconcile_tests::*;
use crate::resources::testing::default_cache;
use crate::secret_scope::SecretsGrant;

/// The API server's answer to a request RBAC does not allow.
fn forbidden(verb: &str) -> (StatusCode, serde_json::Value) {
    let message = format!("secrets \"web-peer-token\" is forbidden: User \"system:serviceaccount:ops:casserole-operator\" cannot {verb} resource \"secrets\" in API group \"\" in the namespace \"cdn\"");
    (
        StatusCode::FORBIDDEN,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": "Forbidden", "code": 403}),
    )
}

fn grant() -> SecretsGrant {
    SecretsGrant {
        cluster_role: "casserole-secrets".into(),
        service_account: "ops:casserole-operator".into(),
    }
}

/// Expects the status patch that reports the failure; returns the status sent.
async fn expect_status(
    server: &mut ApiServer,
    cache: &crate::crd::CasseroleCache,
) -> serde_json::Value {
    let seen = server
        .expect(Method::PATCH, STATUS_PATH, |s| status_answer(cache, s))
        .await;
    seen.body["status"].clone()
}

#[tokio::test]
async fn a_namespace_without_secrets_is_told_how_to_grant_them_and_retried() {
    let (ctx, mut server) = context();
    let ctx = Arc::new(
        Arc::try_unwrap(ctx)
            .ok()
            .expect("one owner")
            .with_secrets_grant(grant()),
    );
    let cache = Arc::new(default_cache());
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| forbidden("get"))
            .await;
        // No apply, no prune: the status says why, and one Warning Event.
        let status = expect_status(&mut server, &cache).await;
        let event = server.expect(Method::POST, EVENTS_PATH, echo).await;
        (status, event.body)
    };
    let (result, (status, event)) = tokio::join!(run(cache.clone(), &ctx), scenario);
    let error = result.unwrap_err();
    assert!(matches!(error, Error::SecretsForbidden { .. }), "{error}");
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "SecretAccessDenied");
    let message = degraded["message"].as_str().unwrap();
    for part in [
        "may not use Secrets in namespace cdn",
        "cannot get resource \"secrets\"",
        "kubectl -n cdn create rolebinding casserole-secrets --clusterrole=casserole-secrets --serviceaccount=ops:casserole-operator",
        "rbac.secretNamespaces",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("SecretAccessDenied"))
    );
    assert_eq!(event["note"].as_str(), Some(message));
    // Retried with backoff: a RoleBinding made later is found without a spec change.
    let action = error_policy(cache.clone(), &error, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let failures = ctx
        .metrics
        .failures
        .with_label_values(&["secrets_forbidden"]);
    assert_eq!(failures.get(), 1);
    drop(ctx);
    server.done().await;
}

#[tokio::test]
async fn a_refused_create_of_the_peer_token_is_the_same_refusal_told_once() {
    let (ctx, mut server) = context();
    let mut cache = default_cache();
    // The previous reconcile already reported it: no second Warning Event.
    let earlier = crate::status::reconcile_failed(
        &cache,
        "SecretAccessDenied",
        "told before",
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    );
    cache.status = Some(CasseroleCacheStatus { ..earlier });
    let cache = Arc::new(cache);
    let scenario = async {
        server
            .expect(Method::GET, SECRET_PATH, |_| {
                crate::mock::status_error(404, "NotFound")
            })
            .await;
        let create = "/api/v1/namespaces/cdn/secrets";
        server
            .expect(Method::POST, create, |_| forbidden("create"))
            .await;
        expect_status(&mut server, &cache).await
    };
    let (result, status) = tokio::join!(run(cache.clone(), &ctx), scenario);
    assert!(matches!(result, Err(Error::SecretsForbidden { .. })));
    let degraded = condition(&status, "Degraded");
    assert_eq!(degraded["reason"], "SecretAccessDenied");
    let message = degraded["message"].as_str().unwrap();
    assert!(message.contains("cannot create resource"), "{message}");
    // The default grant: the names operator/deploy/operator.yaml uses.
    assert!(
        message.contains("--clusterrole=casserole-operator-secrets --serviceaccount=casserole-system:casserole-operator"),
        "{message}"
    );
    drop(ctx);
    server.done().await;
}
