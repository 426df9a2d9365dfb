//! Leader election on a `coordination.k8s.io/v1` Lease, so several operator replicas can run
//! with exactly one reconciling.
//!
//! The protocol is client-go's: the holder renews `renewTime` well within
//! `leaseDurationSeconds`; anyone may take over a lease that has not changed for its duration.
//! Every write is a replace carrying the `resourceVersion` that was read, so two candidates
//! racing for the same lease cannot both win (the loser gets 409 Conflict).
//!
//! Timing is judged on this replica's own monotonic clock only, never by comparing another
//! host's `renewTime` with ours (their clocks may disagree by more than the lease):
//! - a standby takes over only after it has seen the same record, unchanged, for a whole lease
//!   duration since it first observed it;
//! - the leader gives up once it has not renewed for the renew deadline (2/3 of the lease),
//!   counted from when it *sent* its last successful renewal, which is before any standby
//!   observed that renewal; so it stops reconciling before a standby's wait can end;
//! - every request has a timeout shorter than what is left before that deadline.
//!
//! Written here rather than with `kube-lease-manager`: that crate computes expiry as the
//! holder's `renewTime` plus the duration, compared with the local wall clock, which is exactly
//! the cross-host clock comparison these rules exclude, and it has no renew deadline.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

/// A lease this process competes for.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The other holder's record as last seen, and when this replica first saw it.
    observed: Mutex<Option<Observed>>,
}

/// The durations of the election, derived from the lease duration like client-go's defaults
/// (15 s lease, 10 s renew deadline, 2 s retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a record must stay unchanged before a standby takes the lease over.
    pub lease: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// Pause between election rounds.
    pub retry: Duration,
}

impl Timing {
    pub fn for_lease(lease: Duration) -> Timing {
        Timing {
            lease,
            renew_deadline: lease * 2 / 3,
            retry: (lease / 7).max(Duration::from_millis(100)),
        }
    }

    /// Longest a single request may take: well inside the renew deadline.
    pub fn request_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    since: Instant,
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
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease: Duration) -> LeaseLock {
        LeaseLock {
            api,
            name: name.into(),
            identity: identity.into(),
            timing: Timing::for_lease(lease),
            observed: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Whether another holder's record has stayed unchanged for a lease duration, as seen
    /// from here. A new or changed record restarts the wait.
    fn expired(&self, lease: &Lease, holder: &Option<String>) -> bool {
        let spec = lease.spec.clone().unwrap_or_default();
        let seen = Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            resource_version: lease.metadata.resource_version.clone(),
            since: Instant::now(),
        };
        let mut observed = self.observed.lock().expect("not poisoned");
        let since = match observed.as_ref() {
            Some(old)
                if old.holder == seen.holder
                    && old.renew_time == seen.renew_time
                    && old.resource_version == seen.resource_version =>
            {
                old.since
            }
            _ => {
                *observed = Some(seen.clone());
                seen.since
            }
        };
        // The holder's own duration, when it states one: it promised to renew within it.
        let lease_for = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.timing.lease);
        since.elapsed() >= lease_for
    }

    /// One election round: create the lease if there is none, renew it if it is ours, take it
    /// over if its holder released it or left it unchanged for a lease duration, otherwise stay
    /// a follower.
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
        // A released lease (no holder) is free at once.
        if !ours && holder.is_some() && !self.expired(&current, &holder) {
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

    /// One round, bounded by the request timeout (a hung API server must not hang the
    /// election).
    async fn round(&self, limit: Duration) -> Result<Outcome, String> {
        match tokio::time::timeout(limit, self.try_acquire_or_renew(Timestamp::now())).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// Blocks until this process is the leader, retrying every retry period.
    pub async fn acquire(&self) {
        loop {
            match self.round(self.timing.request_timeout()).await {
                Ok(Outcome::Leader) => return,
                Ok(Outcome::Follower { holder }) => {
                    info!(?holder, "standing by: another replica leads")
                }
                Err(error) => warn!(%error, "leader election failed"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// [`acquire`](Self::acquire), unless `shutdown` resolves first: then `false`, at once (a
    /// standby must not sit out the termination grace period).
    pub async fn acquire_unless(&self, shutdown: impl std::future::Future<Output = ()>) -> bool {
        tokio::select! {
            () = self.acquire() => true,
            () = shutdown => false,
        }
    }

    /// Renews the lease every retry period and returns once leadership is lost: another
    /// replica holds it, or no renewal succeeded within the renew deadline (after which a
    /// standby may soon take over, so the caller must stop reconciling at once).
    pub async fn hold(&self) -> LostLease {
        // Counted from when the last successful renewal was *sent*.
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry).await;
            let deadline = renewed + self.timing.renew_deadline;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return LostLease::RenewDeadline;
            }
            let sent = Instant::now();
            match self.round(left.min(self.timing.request_timeout())).await {
                Ok(Outcome::Leader) => renewed = sent,
                Ok(Outcome::Follower { holder }) => return LostLease::TakenBy(holder),
                Err(error) => warn!(%error, "renewing the leader lease failed"),
            }
        }
    }
}

/// Why [`LeaseLock::hold`] gave up leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostLease {
    TakenBy(Option<String>),
    /// No renewal succeeded within the renew deadline.
    RenewDeadline,
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
            let scenario =
                server.expect(Method::GET, PATH, move |_| ok(lease_v("pod-b", 1, version)));
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
        assert!(!leading);
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
        let (lost, ()) = tokio::join!(lock.hold(), scenario);
        assert_eq!(lost, LostLease::TakenBy(Some("pod-b".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewals_hang_stops_before_a_standby_may_take_over() {
        let (lock, mut server) = lock();
        let timing = lock.timing();
        assert!(timing.renew_deadline < timing.lease);
        assert!(timing.request_timeout() < timing.renew_deadline);
        let hold = async { (lock.hold().await, Instant::now()) };
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
}
