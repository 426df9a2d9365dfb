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

    /// Blocks until this process is the leader, retrying every retry period. Returns when the
    /// winning round was *sent*: the renew deadline counts from there, since a standby starts
    /// its wait when it observes the write, which a slow answer may have delayed us past.
    pub async fn acquire(&self) -> Instant {
        loop {
            let sent = Instant::now();
            match self.round(self.timing.request_timeout()).await {
                Ok(Outcome::Leader) => return sent,
                Ok(Outcome::Follower { holder }) => {
                    info!(?holder, "standing by: another replica leads")
                }
                Err(error) => warn!(%error, "leader election failed"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// [`acquire`](Self::acquire), unless `shutdown` resolves first: then `None`, at once (a
    /// standby must not sit out the termination grace period).
    pub async fn acquire_unless(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Option<Instant> {
        tokio::select! {
            sent = self.acquire() => Some(sent),
            () = shutdown => None,
        }
    }

    /// Renews the lease every retry period and returns once leadership is lost: another
    /// replica holds it, or no renewal succeeded within the renew deadline (after which a
    /// standby may soon take over, so the caller must stop reconciling at once). `acquired` is
    /// when the round that won the lease was sent ([`acquire`](Self::acquire)).
    pub async fn hold(&self, acquired: Instant) -> LostLease {
        // Counted from when the last successful renewal was *sent*.
        let mut renewed = acquired;
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
#[path = "leader_tests.rs"]
mod tests;
