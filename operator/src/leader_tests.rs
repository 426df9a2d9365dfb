//! Leader election on the scripted API server, in virtual time.

use super::*;
use crate::mock::{self, status_error, ApiServer};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/casserole-operator";
const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

fn lock() -> (LeaseLock, ApiServer) {
    let (client, server) = mock::client();
    let api = Api::namespaced(client, "ops");
    (
        LeaseLock::new(api, "casserole-operator", "pod-a", Duration::from_secs(15)),
        server,
    )
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

fn lease(holder: &str, renewed: i64, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "casserole-operator", "namespace": "ops", "resourceVersion": "42"},
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15,
            "acquireTime": "2001-01-01T00:00:00.000000Z",
            "renewTime": MicroTime(at(renewed)), "leaseTransitions": transitions,
        }
    })
}

fn ok(v: Value) -> (StatusCode, Value) {
    (StatusCode::OK, v)
}

#[tokio::test]
async fn creates_the_lease_when_there_is_none() {
    let (lock, mut server) = lock();
    let scenario = async {
        server
            .expect(Method::GET, PATH, |_| status_error(404, "NotFound"))
            .await;
        server
            .expect(Method::POST, COLLECTION, |s| ok(s.body.clone()))
            .await
    };
    let (outcome, created) = tokio::join!(lock.try_acquire_or_renew(at(1000)), scenario);
    assert_eq!(outcome.unwrap(), Outcome::Leader);
    assert_eq!(created.body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(created.body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(created.body["spec"]["leaseTransitions"], 0);
    assert_eq!(
        created.body["spec"]["renewTime"],
        json!(MicroTime(at(1000)))
    );
}

#[tokio::test]
async fn renews_its_own_lease_with_optimistic_concurrency() {
    let (lock, mut server) = lock();
    let scenario = async {
        server
            .expect(Method::GET, PATH, |_| ok(lease("pod-a", 995, 2)))
            .await;
        server
            .expect(Method::PUT, PATH, |s| ok(s.body.clone()))
            .await
    };
    let (outcome, put) = tokio::join!(lock.try_acquire_or_renew(at(1000)), scenario);
    assert_eq!(outcome.unwrap(), Outcome::Leader);
    assert_eq!(put.body["metadata"]["resourceVersion"], "42");
    assert_eq!(put.body["spec"]["renewTime"], json!(MicroTime(at(1000))));
    // Renewal is not a transition, and keeps the acquire time.
    assert_eq!(put.body["spec"]["leaseTransitions"], 2);
    assert_eq!(
        put.body["spec"]["acquireTime"],
        "2001-01-01T00:00:00.000000Z"
    );
}

#[tokio::test]
async fn follows_a_live_lease_held_by_another() {
    let (lock, mut server) = lock();
    let scenario = async {
        server
            .expect(Method::GET, PATH, |_| ok(lease("pod-b", 990, 0)))
            .await;
    };
    let (outcome, ()) = tokio::join!(lock.try_acquire_or_renew(at(1000)), scenario);
    assert_eq!(
        outcome.unwrap(),
        Outcome::Follower {
            holder: Some("pod-b".into())
        }
    );
    drop(lock);
    server.done().await; // no write attempted
}

fn lease_v(holder: &str, renewed: i64, version: &str) -> Value {
    let mut l = lease(holder, renewed, 3);
    l["metadata"]["resourceVersion"] = version.into();
    l
}

#[tokio::test(start_paused = true)]
async fn takes_over_only_a_record_unchanged_for_a_lease_duration_as_seen_here() {
    let (lock, mut server) = lock();
    // pod-b's clock is far behind ours: its renewTime looks ancient. That alone must not
    // make the lease look expired; only our own observation counts.
    for (advance, version) in [(0, "42"), (10, "43"), (14, "43")] {
        tokio::time::advance(Duration::from_secs(advance)).await;
        let scenario = server.expect(Method::GET, PATH, move |_| ok(lease_v("pod-b", 1, version)));
        let (outcome, _) = tokio::join!(lock.try_acquire_or_renew(at(1000)), scenario);
        // 0 s: first sight; 10 s: it changed (pod-b renewed); 24 s: unchanged for 14 s only.
        assert!(!outcome.unwrap().is_leader(), "after +{advance}s");
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let scenario = async {
        server
            .expect(Method::GET, PATH, |_| ok(lease_v("pod-b", 1, "43")))
            .await;
        server
            .expect(Method::PUT, PATH, |s| ok(s.body.clone()))
            .await
    };
    let (outcome, put) = tokio::join!(lock.try_acquire_or_renew(at(1000)), scenario);
    assert_eq!(
        outcome.unwrap(),
        Outcome::Leader,
        "unchanged for 15 s: taken over"
    );
    assert_eq!(put.body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(put.body["spec"]["leaseTransitions"], 4);
    assert_eq!(put.body["spec"]["acquireTime"], json!(MicroTime(at(1000))));
}

#[tokio::test]
async fn losing_the_race_makes_a_follower() {
    let (lock, mut server) = lock();
    let scenario = async {
        // Released (no holder): free at once, but another replica writes first.
        server
            .expect(Method::GET, PATH, |_| ok(lease("", 900, 3)))
            .await;
        server
            .expect(Method::PUT, PATH, |_| status_error(409, "Conflict"))
            .await;
    };
    let (outcome, ()) = tokio::join!(lock.try_acquire_or_renew(at(1000)), scenario);
    assert_eq!(outcome.unwrap(), Outcome::Follower { holder: None });
}

#[tokio::test]
async fn release_clears_the_holder_only_if_it_is_us() {
    let (lock, mut server) = lock();
    let scenario = async {
        server
            .expect(Method::GET, PATH, |_| ok(lease("pod-a", 990, 1)))
            .await;
        server
            .expect(Method::PUT, PATH, |s| ok(s.body.clone()))
            .await
    };
    let (result, put) = tokio::join!(lock.release(), scenario);
    result.unwrap();
    assert!(put.body["spec"].get("holderIdentity").is_none());

    let (lock, mut server) = self::lock();
    let scenario = async {
        server
            .expect(Method::GET, PATH, |_| ok(lease("pod-b", 990, 1)))
            .await;
    };
    let (result, ()) = tokio::join!(lock.release(), scenario);
    result.unwrap();
    drop(lock);
    server.done().await;
}

#[tokio::test(start_paused = true)]
async fn a_standby_stops_waiting_at_once_on_shutdown() {
    let (lock, mut server) = lock();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let scenario = async {
        server
            .expect(Method::GET, PATH, |_| ok(lease("pod-b", 5, 1)))
            .await;
        // SIGTERM arrives while standing by.
        stop.send(()).unwrap();
    };
    let (leading, ()) = tokio::join!(lock.acquire_unless(shutdown), scenario);
    assert!(leading.is_none());
    drop(lock);
    server.done().await; // no further election round
}

#[tokio::test(start_paused = true)]
async fn hold_returns_when_another_replica_took_the_lease() {
    let (lock, mut server) = lock();
    let scenario = async {
        // First renewal succeeds, the second finds pod-b holding the lease.
        server
            .expect(Method::GET, PATH, |_| ok(lease("pod-a", 0, 0)))
            .await;
        server
            .expect(Method::PUT, PATH, |s| ok(s.body.clone()))
            .await;
        server
            .expect(Method::GET, PATH, move |_| ok(lease("pod-b", 5, 1)))
            .await;
    };
    let (lost, ()) = tokio::join!(lock.hold(Instant::now()), scenario);
    assert_eq!(lost, LostLease::TakenBy(Some("pod-b".into())));
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_hang_stops_before_a_standby_may_take_over() {
    let (lock, mut server) = lock();
    let timing = lock.timing();
    assert!(timing.renew_deadline < timing.lease);
    assert!(timing.request_timeout() < timing.renew_deadline);
    let hold = async { (lock.hold(Instant::now()).await, Instant::now()) };
    let scenario = async {
        server
            .expect(Method::GET, PATH, |_| ok(lease("pod-a", 0, 0)))
            .await;
        let renewed_at = Instant::now();
        server
            .expect(Method::PUT, PATH, |s| ok(s.body.clone()))
            .await;
        // From now on the API server accepts requests and never answers them.
        let mut unanswered = Vec::new();
        while let Ok(Some(pending)) =
            tokio::time::timeout(timing.lease * 2, server.0.next_request()).await
        {
            unanswered.push(pending);
        }
        (renewed_at, unanswered.len())
    };
    let ((lost, gave_up_at), (renewed_at, hung)) = tokio::join!(hold, scenario);
    assert_eq!(lost, LostLease::RenewDeadline);
    assert!(hung >= 1, "renewals were attempted");
    // (Virtual time.) A standby that saw that renewal may take over no earlier than a
    // lease duration after it; the leader had stopped before.
    let led_for = gave_up_at - renewed_at;
    assert!(
        led_for < timing.lease,
        "led {led_for:?} past its last renewal"
    );
    assert!(
        led_for >= timing.renew_deadline - timing.retry,
        "{led_for:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_acquire_shortens_the_first_term_instead_of_overlapping_a_standby() {
    let (lock, mut server) = lock();
    let timing = lock.timing();
    let slow = timing.request_timeout() - Duration::from_millis(100);
    let started = Instant::now();
    let lead = async {
        let sent = lock.acquire().await;
        (lock.hold(sent).await, Instant::now())
    };
    let scenario = async {
        server
            .expect(Method::GET, PATH, |_| status_error(404, "NotFound"))
            .await;
        // The create reaches the API server (and a standby could observe it) at once, but
        // its answer is slow.
        let (request, send) = server.0.next_request().await.unwrap();
        assert_eq!(request.method(), Method::POST);
        tokio::time::sleep(slow).await;
        send.send_response(
            http::Response::builder()
                .status(StatusCode::CREATED)
                .body(kube::client::Body::from(
                    serde_json::to_vec(&lease("pod-a", 0, 0)).unwrap(),
                ))
                .unwrap(),
        );
        // Renewals hang from now on.
        let mut unanswered = Vec::new();
        while let Ok(Some(pending)) =
            tokio::time::timeout(timing.lease * 2, server.0.next_request()).await
        {
            unanswered.push(pending);
        }
    };
    let ((lost, gave_up_at), ()) = tokio::join!(lead, scenario);
    assert_eq!(lost, LostLease::RenewDeadline);
    // Counted from the write, not from its slow answer: gone before a standby's lease wait.
    let led_for = gave_up_at - started;
    assert!(led_for < timing.lease, "{led_for:?}");
    // Counting from the slow answer instead would have led up to `slow` longer.
    assert!(led_for < slow + timing.renew_deadline, "{led_for:?}");
}
