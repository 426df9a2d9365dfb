//! Leader election on a `coordination.k8s.io/v1` Lease, so several operator replicas can run
//! with exactly one reconciling.
//!
//! The protocol is client-go's: the holder renews `renewTime` well within
//! `leaseDurationSeconds`; anyone may take over a lease whose renew time is older than its
//! duration. Every write is a replace carrying the `resourceVersion` that was read, so two
//! candidates racing for the same lease cannot both win (the loser gets 409 Conflict).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// A lease this process competes for.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// What one election round found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// We hold the lease (just acquired or renewed).
    Leader,
    /// Someone else holds a live lease (or won the race for it).
    Follower { holder: Option<String> },
}

impl Outcome {
    pub fn is_leader(&self) -> bool {
        *self == Outcome::Leader
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One election round: create the lease if there is none, renew it if it is ours, take it
    /// over if its holder stopped renewing, otherwise stay a follower.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<Outcome, kube::Error> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Leader),
                Err(e) if conflict(&e) => Ok(Outcome::Follower { holder: None }),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => {
                *renewed + SignedDuration::from_secs(secs.into()) < now
            }
            // A lease nobody renews (or a released one) is free.
            _ => true,
        };
        if !ours && holder.is_some() && !expired {
            return Ok(Outcome::Follower { holder });
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if ours {
            self.spec(now, spec.acquire_time.clone(), transitions)
        } else {
            self.spec(now, None, transitions + 1)
        };
        let lease = Lease {
            // Keeps resourceVersion: the replace fails with 409 if anyone wrote in between.
            metadata: current.metadata.clone(),
            spec: Some(new_spec),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !ours {
                    info!(identity = %self.identity, previous = ?holder, "took over the leader lease");
                }
                Ok(Outcome::Leader)
            }
            Err(e) if conflict(&e) => Ok(Outcome::Follower { holder }),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown) so a standby takes over at once instead of after
    /// the lease expires. Only clears it while we still hold it.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        spec.acquire_time = None;
        let lease = Lease {
            metadata: current.metadata,
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Err(e) if !conflict(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Blocks until this process is the leader, retrying every `retry`.
    pub async fn acquire(&self, retry: Duration) {
        loop {
            match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(Outcome::Leader) => return,
                Ok(Outcome::Follower { holder }) => {
                    info!(?holder, "standing by: another replica leads")
                }
                Err(e) => warn!(error = %e, "leader election failed"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the lease every `period` and returns once leadership is lost: another replica
    /// holds it, or renewals failed for longer than the lease lasts (after which a standby may
    /// already have taken over, so the caller must stop reconciling).
    pub async fn hold(&self, period: Duration) -> LostLease {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(Outcome::Leader) => last_renewal = tokio::time::Instant::now(),
                Ok(Outcome::Follower { holder }) => return LostLease::TakenBy(holder),
                Err(e) => {
                    warn!(error = %e, "renewing the leader lease failed");
                    if last_renewal.elapsed() >= self.duration {
                        return LostLease::Expired;
                    }
                }
            }
        }
    }
}

/// Why [`LeaseLock::hold`] gave up leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostLease {
    TakenBy(Option<String>),
    Expired,
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn takes_over_an_expired_lease() {
        let (lock, mut server) = lock();
        let scenario = async {
            server
                .expect(Method::GET, PATH, |_| ok(lease("pod-b", 900, 3)))
                .await;
            server
                .expect(Method::PUT, PATH, |s| ok(s.body.clone()))
                .await
        };
        let (outcome, put) = tokio::join!(lock.try_acquire_or_renew(at(1000)), scenario);
        assert_eq!(outcome.unwrap(), Outcome::Leader);
        assert_eq!(put.body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(put.body["spec"]["leaseTransitions"], 4);
        assert_eq!(put.body["spec"]["acquireTime"], json!(MicroTime(at(1000))));
    }

    #[tokio::test]
    async fn losing_the_race_makes_a_follower() {
        let (lock, mut server) = lock();
        let scenario = async {
            server
                .expect(Method::GET, PATH, |_| ok(lease("pod-b", 900, 3)))
                .await;
            server
                .expect(Method::PUT, PATH, |_| status_error(409, "Conflict"))
                .await;
        };
        let (outcome, ()) = tokio::join!(lock.try_acquire_or_renew(at(1000)), scenario);
        assert_eq!(
            outcome.unwrap(),
            Outcome::Follower {
                holder: Some("pod-b".into())
            }
        );
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

    #[tokio::test]
    async fn hold_returns_when_another_replica_took_the_lease() {
        let (lock, mut server) = lock();
        let scenario = async {
            // First renewal succeeds, the second finds pod-b holding a fresh lease.
            server
                .expect(Method::GET, PATH, |_| ok(lease("pod-a", 0, 0)))
                .await;
            server
                .expect(Method::PUT, PATH, |s| ok(s.body.clone()))
                .await;
            let now = Timestamp::now().as_second();
            server
                .expect(Method::GET, PATH, move |_| ok(lease("pod-b", now, 1)))
                .await;
        };
        let (lost, ()) = tokio::join!(lock.hold(Duration::from_millis(10)), scenario);
        assert_eq!(lost, LostLease::TakenBy(Some("pod-b".into())));
    }
}
