//! How far this member has applied the cluster's purge records, kept on its disk tier so that a
//! restart applies only what was written while it was away (and does not purge again what was
//! fetched since).
//!
//! One etcd revision replaces a set of applied purge ids: records are read in revision order
//! (the catch-up read at revision R, then the watch from R + 1), so "applied through R" says
//! everything, costs O(1) to update and to save, and never needs pruning.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::tier::disk::DiskTier;

/// Disk tier metadata name of the record; metadata names of objects are SHA-256 hex, so this
/// cannot clash with one.
const PROGRESS_RECORD: &str = "casserole:purges-applied";

/// Every record written at or before `revision` of etcd cluster `cluster_id` was applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub cluster_id: u64,
    pub revision: i64,
}

impl Progress {
    /// Given a read at `revision` of `cluster_id`: the revision through which records were
    /// applied already. 0 (apply everything) when the saved progress is another cluster's, or
    /// ahead of what etcd has (its data was restored or replaced).
    pub fn applied_through(&self, cluster_id: u64, revision: i64) -> i64 {
        if self.cluster_id != cluster_id || self.revision > revision {
            return 0;
        }
        self.revision
    }

    /// The saved progress; none (apply everything) without a disk tier or a readable record,
    /// e.g. the set of applied ids an older version saved there.
    pub async fn load(disk: Option<&DiskTier>) -> Progress {
        let Some(disk) = disk else {
            return Progress::default();
        };
        disk.get_meta(PROGRESS_RECORD)
            .await
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default()
    }

    pub async fn save(&self, disk: Option<&DiskTier>) {
        let Some(disk) = disk else { return };
        let json = serde_json::to_vec(self).expect("progress serializes");
        if let Err(e) = disk.put_meta(PROGRESS_RECORD, Bytes::from(json)).await {
            warn!(error = %e, "could not save how far purges were applied; a restart applies the last ones again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_only_in_the_cluster_and_history_it_was_made_in() {
        let p = Progress {
            cluster_id: 7,
            revision: 100,
        };
        assert_eq!(p.applied_through(7, 150), 100);
        assert_eq!(p.applied_through(7, 100), 100);
        assert_eq!(p.applied_through(8, 150), 0, "another etcd cluster");
        assert_eq!(p.applied_through(7, 50), 0, "etcd went back in time");
        assert_eq!(Progress::default().applied_through(7, 150), 0);
    }

    #[test]
    fn the_applied_set_of_older_versions_reads_as_no_progress() {
        let old = br#"{"0000000000001-0000abcd": 1}"#;
        assert!(serde_json::from_slice::<Progress>(old).is_err());
    }
}
