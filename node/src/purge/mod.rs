//! Purges: removing an object (all versions, metadata and chunks, memory and disk) or every
//! object under a path prefix, now rather than when it expires.
//!
//! [`Purger::purge`] applies a purge on this node (`local`) and, with etcd, publishes it so every
//! member applies it too (`publish`), including members that are away at the time: each member
//! reads the records when it (re)connects and follows them (`follow`, `progress`). Without etcd
//! the purge is local to this node. [`Purger::invalidate`] is the cheap kind the front end asks
//! for after a write or a reload: coalesced per target and window (`coalesce`), written as
//! bounded records (`record`).
//!
//! The records live in etcd under `/casserole/<cluster>/purges/` for `--purge-ttl`: the
//! `record` module says how they are keyed and bounded.

mod coalesce;
mod follow;
mod local;
mod progress;
mod publish;
mod record;

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

pub use local::{LocalStores, Removed, Scans, Target};

use coalesce::{Admission, Invalidations, QUEUE_CAPACITY};
use follow::Follower;
use publish::Publisher;
use record::{Keys, Record, MAX_TARGET};

use crate::cluster::{etcd::Etcd, membership::Membership};

/// Settings of cluster-wide purges.
#[derive(Clone, Debug)]
pub struct PurgeEtcdConfig {
    /// Used only when membership has no etcd connection to share.
    pub endpoints: Vec<String>,
    pub cluster_name: String,
    pub node_id: String,
    /// How long a record stays in etcd: a member away for longer misses it.
    pub ttl: Duration,
}

/// How long a purge request waits for the members' confirmations.
const CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// Purge metrics, registered by this module.
#[derive(Clone)]
pub struct PurgeMetrics {
    /// Purges applied on this node, by kind (path, prefix) and how they arrived (api, cluster).
    pub purges: prometheus::IntCounterVec,
    /// Failed etcd operations of purges (publishing, watching, acking).
    pub errors: prometheus::IntCounter,
    /// Whole-store scans purges made here, by store (memory, disk).
    pub scans: prometheus::IntCounterVec,
    /// Invalidations asked of this node, by outcome (queued, coalesced, dropped, then
    /// published or failed per record written).
    pub invalidations: prometheus::IntCounterVec,
}

impl PurgeMetrics {
    pub fn new(r: &crate::metrics::Registrar) -> Self {
        PurgeMetrics {
            purges: r.counter_vec(
                "casserole_purges_total",
                "Purges applied on this node by kind (path, prefix) and origin (api: asked here, cluster: another member's)",
                &["kind", "via"],
            ),
            errors: r.counter(
                "casserole_purge_errors_total",
                "Failed etcd operations of cluster-wide purges",
            ),
            scans: r.counter_vec(
                "casserole_purge_scans_total",
                "Whole-store scans made by purges on this node (memory: the chunk tier or the metadata in memory; disk: the disk index)",
                &["store"],
            ),
            invalidations: r.counter_vec(
                "casserole_purge_invalidations_total",
                "Invalidations (writes, reloads that found a new version) by outcome: queued, coalesced (same target in the window), dropped (window full), published, failed",
                &["outcome"],
            ),
        }
    }

    /// A purge applied here (`via`: api, cluster, invalidation), and the scans it made.
    fn applied(&self, target: &Target, via: &str, scans: Scans) {
        self.purges.with_label_values(&[target.kind(), via]).inc();
        self.scanned(scans);
    }

    fn scanned(&self, scans: Scans) {
        self.scans
            .with_label_values(&["memory"])
            .inc_by(scans.memory);
        self.scans.with_label_values(&["disk"]).inc_by(scans.disk);
    }
}

/// The answer to a purge request.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub id: String,
    pub kind: &'static str,
    pub target: String,
    /// Members at the time of the purge, this node included.
    pub members: usize,
    /// Members that confirmed having applied it, this node included.
    pub confirmed: usize,
    /// Members that did not confirm in time; with etcd they apply it when they come back.
    pub pending: Vec<String>,
    pub removed_here: Removed,
    /// Why the purge stayed on this node, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

pub struct Purger {
    stores: LocalStores,
    membership: Membership,
    cluster: Option<Cluster>,
    metrics: PurgeMetrics,
}

/// The etcd side of purges.
struct Cluster {
    follower: Arc<Follower>,
    publisher: Arc<Publisher>,
    invalidations: Arc<Invalidations>,
}

impl Purger {
    /// With `etcd`, starts following the cluster's purge records (until `stop`).
    pub async fn start(
        stores: LocalStores,
        membership: Membership,
        etcd: Option<PurgeEtcdConfig>,
        metrics: PurgeMetrics,
        stop: watch::Receiver<bool>,
    ) -> Purger {
        let cluster = match etcd {
            Some(cfg) => Some(Cluster::start(cfg, &membership, &stores, &metrics, stop).await),
            None => None,
        };
        Purger {
            stores,
            membership,
            cluster,
            metrics,
        }
    }

    /// Waits (at most `limit`) until the purges recorded in etcd were applied here, so a node
    /// that was away serves nothing purged meanwhile. True without etcd.
    pub async fn wait_caught_up(&self, limit: Duration) -> bool {
        match &self.cluster {
            Some(c) => c.follower.wait_caught_up(limit).await,
            None => true,
        }
    }

    /// Whether purges reach other members (through etcd).
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Applies `target` here and on every member; `requested_by` is logged and recorded.
    pub async fn purge(&self, target: Target, requested_by: &str) -> Outcome {
        let id = purge_id();
        let removed = self.stores.apply(&target, &[]).await;
        self.metrics.applied(&target, "api", removed.scans);
        let me = self.membership.self_member().id.clone();
        let expected: BTreeSet<String> = self
            .membership
            .members()
            .iter()
            .map(|m| m.id.clone())
            .collect();
        info!(purge = %id, kind = target.kind(), target = target.text(), requested_by,
            objects = removed.objects, versions = removed.versions.len(), "purge requested");
        let mut outcome = Outcome {
            id: id.clone(),
            kind: target.kind(),
            target: target.text().to_string(),
            members: expected.len(),
            confirmed: 1,
            pending: expected.iter().filter(|m| **m != me).cloned().collect(),
            removed_here: removed.clone(),
            warning: None,
        };
        let Some(cluster) = &self.cluster else {
            if expected.len() > 1 {
                outcome.warning = Some(
                    "no etcd: the purge was applied on this node only; purge each member".into(),
                );
            }
            return outcome;
        };
        let record = Record {
            id,
            target,
            requested_by: requested_by.to_string(),
            origin: me.clone(),
            at_unix_ms: unix_ms(),
            round: 1,
            versions: removed.versions,
            invalidation: false,
        }
        .bounded();
        match cluster
            .publisher
            .publish(record, &expected, CONFIRM_WAIT)
            .await
        {
            Ok(c) => {
                let scans = self.stores.drop_chunks(&c.learned).await;
                self.metrics.scanned(scans);
                outcome.confirmed = expected
                    .iter()
                    .filter(|m| c.confirmed.contains(*m))
                    .count()
                    .max(1);
                outcome.pending = expected
                    .iter()
                    .filter(|m| **m != me && !c.confirmed.contains(*m))
                    .cloned()
                    .collect();
            }
            Err(e) => {
                self.metrics.errors.inc();
                warn!(purge = %outcome.id, error = %e, "could not publish the purge to the cluster");
                outcome.warning = Some(format!(
                    "applied on this node only: publishing to the cluster failed: {e}"
                ));
            }
        }
        outcome
    }

    /// Invalidates `path` on the other members (this node forgot it already): coalesced with
    /// the other invalidations of the path in the current window, never waited for.
    pub fn invalidate(&self, path: &str, why: &'static str) {
        let Some(cluster) = &self.cluster else { return };
        let target = Target::Path(path.to_string()).bounded(MAX_TARGET);
        let queued = cluster.invalidations.push(target, why);
        if queued == Admission::Dropped {
            tracing::debug!(path, "invalidation dropped: this window's queue is full");
        }
        self.metrics
            .invalidations
            .with_label_values(&[queued.label()])
            .inc();
    }
}

impl Cluster {
    /// One etcd connection for the node: membership's when it has one.
    async fn start(
        cfg: PurgeEtcdConfig,
        membership: &Membership,
        stores: &LocalStores,
        metrics: &PurgeMetrics,
        stop: watch::Receiver<bool>,
    ) -> Cluster {
        let etcd = membership
            .etcd_connection()
            .unwrap_or_else(|| Etcd::new(cfg.endpoints.clone()));
        let keys = Keys::new(&cfg.cluster_name);
        let follower = Follower::start(
            etcd.clone(),
            keys.clone(),
            cfg.node_id.clone(),
            stores.clone(),
            metrics.clone(),
            stop.clone(),
        )
        .await;
        let publisher = Arc::new(Publisher::new(etcd, keys, cfg.node_id.clone(), cfg.ttl));
        let invalidations = Arc::new(Invalidations::new(QUEUE_CAPACITY));
        tokio::spawn(invalidations.clone().run(
            publisher.clone(),
            cfg.node_id,
            metrics.clone(),
            stop,
        ));
        Cluster {
            follower,
            publisher,
            invalidations,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Time-ordered (so `etcdctl get --prefix` lists purges in order) and unique.
fn purge_id() -> String {
    format!("{:013}-{:08x}", unix_ms(), rand::random::<u32>())
}
