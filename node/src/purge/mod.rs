//! Purges: removing an object (all versions, metadata and chunks, memory and disk) or every
//! object under a path prefix, now rather than when it expires.
//!
//! [`Purger::purge`] applies a purge on this node (`local`) and, with etcd, publishes it so every
//! member applies it too, including members that are away at the time (`records`). Without
//! etcd the purge is local to this node.

mod local;
mod records;

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

pub use local::{LocalStores, Removed, Target};
pub use records::PurgeEtcdConfig;
use records::{ClusterPurges, Record};

use crate::cluster::membership::Membership;

/// How long a purge request waits for the members' confirmations.
const CONFIRM_WAIT: Duration = Duration::from_secs(5);

/// Purge metrics, registered by this module.
#[derive(Clone)]
pub struct PurgeMetrics {
    /// Purges applied on this node, by kind (path, prefix) and how they arrived (api, cluster).
    pub purges: prometheus::IntCounterVec,
    /// Failed etcd operations of purges (publishing, watching, acking).
    pub errors: prometheus::IntCounter,
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
        }
    }

    fn count(&self, target: &Target, via: &str) {
        self.purges.with_label_values(&[target.kind(), via]).inc();
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
    cluster: Option<Arc<ClusterPurges>>,
    metrics: PurgeMetrics,
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
            Some(cfg) => {
                Some(ClusterPurges::start(cfg, stores.clone(), metrics.clone(), stop).await)
            }
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
            Some(c) => c.wait_caught_up(limit).await,
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
        self.metrics.count(&target, "api");
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
        };
        match cluster.publish(record, &expected, CONFIRM_WAIT).await {
            Ok(c) => {
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
