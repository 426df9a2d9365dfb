//! A purge as stored in etcd, its keys, and the bounds on its size.
//!
//! Keys name a hash of the target, never the target itself, and a record holds at most
//! [`MAX_TARGET`] bytes of target and [`MAX_VERSIONS`] versions, so neither a key nor a record
//! grows with a client's query string:
//! - a purge asked through the admin API: `<cluster>/purges/t/<hash>`, one key per target (a
//!   second purge of the target replaces the first), acked by every member under
//!   `<cluster>/purge-acks/<hash>/<member>`;
//! - an invalidation (a write, or a reload that found a new version): `<cluster>/purges/i/<b>`,
//!   where `b` is one of [`INVALIDATION_BUCKETS`] buckets picked by the hash. A later
//!   invalidation in the same bucket replaces the record: members that follow the watch see
//!   every one, a member that was away sees the last of each bucket (an invalidation is a hint
//!   that spares a stale copy, not a promise, RFC 9111 §4.4), and the cluster holds at most
//!   [`INVALIDATION_BUCKETS`] of them whatever the clients send.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::warn;

use super::Target;
use crate::cluster::member_key;

/// Bytes of target a record holds; a longer path is recorded as the prefix of its first
/// `MAX_TARGET` bytes (a superset: nothing stale survives, siblings sharing those bytes are
/// looked up again).
pub const MAX_TARGET: usize = 1024;
/// Versions a record names (the chunks of further versions stay until evicted).
pub const MAX_VERSIONS: usize = 256;
/// Bytes of `requested_by` a record holds.
const MAX_REQUESTED_BY: usize = 256;
/// Invalidation records the cluster holds at most.
pub const INVALIDATION_BUCKETS: usize = 256;

/// One purge as stored in etcd.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Unique per publication (a target purged again gets a new id under the same key).
    pub id: String,
    pub target: Target,
    pub requested_by: String,
    /// Node id of the member that received the purge.
    pub origin: String,
    pub at_unix_ms: u64,
    /// 1 when written; 2 once the versions other members found were added.
    pub round: u32,
    #[serde(default)]
    pub versions: Vec<String>,
    /// An invalidation: members drop the metadata only (a new lookup finds the new version,
    /// whose chunks have other keys), never ack, and the record has no second round.
    #[serde(default)]
    pub invalidation: bool,
}

/// A member's confirmation of a record's round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ack {
    pub id: String,
    pub round: u32,
    pub versions: Vec<String>,
}

impl Record {
    /// Cuts the record to its bounds.
    pub fn bounded(mut self) -> Record {
        self.target = self.target.bounded(MAX_TARGET);
        if self.versions.len() > MAX_VERSIONS {
            warn!(purge = %self.id, versions = self.versions.len(), max = MAX_VERSIONS,
                "a purge names more versions than a record holds; the chunks of the others stay until evicted");
            self.versions.truncate(MAX_VERSIONS);
        }
        if self.requested_by.len() > MAX_REQUESTED_BY {
            let cut = floor_char_boundary(&self.requested_by, MAX_REQUESTED_BY);
            self.requested_by.truncate(cut);
        }
        self
    }
}

/// Where a cluster's records and acks live.
#[derive(Clone, Debug)]
pub struct Keys {
    cluster: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            cluster: cluster.to_string(),
        }
    }

    /// Every record, of both kinds.
    pub fn records(&self) -> String {
        format!("/casserole/{}/purges/", self.cluster)
    }

    /// The key of `record` (bounded first).
    pub fn record(&self, record: &Record) -> String {
        let hash = target_hash(&record.target);
        if record.invalidation {
            let bucket = usize::from(hash[0]) % INVALIDATION_BUCKETS;
            format!("{}i/{bucket:02x}", self.records())
        } else {
            format!("{}t/{}", self.records(), hex::encode(&hash[..16]))
        }
    }

    pub fn acks(&self, record: &Record) -> String {
        let hash = hex::encode(&target_hash(&record.target)[..16]);
        format!("/casserole/{}/purge-acks/{hash}/", self.cluster)
    }

    pub fn ack(&self, record: &Record, node_id: &str) -> String {
        format!("{}{}", self.acks(record), member_key::encode(node_id))
    }
}

fn target_hash(target: &Target) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(target.kind().as_bytes());
    h.update([0]);
    h.update(target.text().as_bytes());
    h.finalize().into()
}

/// The largest index ≤ `max` on a char boundary of `s`.
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// A record read from etcd; unreadable or invalid ones are logged and skipped.
pub fn parse(value: &[u8]) -> Option<Record> {
    match serde_json::from_slice::<Record>(value) {
        Ok(r) if r.target.validate().is_ok() => Some(r),
        Ok(r) => {
            warn!(purge = %r.id, "ignoring a purge record with an invalid target");
            None
        }
        Err(e) => {
            warn!(error = %e, "ignoring an unreadable purge record in etcd");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: Target, invalidation: bool) -> Record {
        Record {
            id: "1".into(),
            target,
            requested_by: "t".into(),
            origin: "n".into(),
            at_unix_ms: 0,
            round: 1,
            versions: vec![],
            invalidation,
        }
    }

    #[test]
    fn a_record_does_not_grow_with_the_target() {
        let long = format!("/a?{}", "q".repeat(8000));
        let r = record(Target::Path(long.clone()), true).bounded();
        assert_eq!(r.target, Target::Prefix(long[..MAX_TARGET].to_string()));
        let r = Record {
            versions: vec!["v".into(); MAX_VERSIONS + 10],
            requested_by: "é".repeat(300),
            ..record(Target::Path("/a".into()), false)
        }
        .bounded();
        assert_eq!(r.versions.len(), MAX_VERSIONS);
        assert!(r.requested_by.len() <= MAX_REQUESTED_BY);
        assert!(serde_json::to_vec(&r).unwrap().len() < 20 * 1024);
        let short = record(Target::Path("/a?x=1".into()), true).bounded();
        assert_eq!(short.target, Target::Path("/a?x=1".into()));
    }

    #[test]
    fn keys_name_a_hash_and_invalidations_share_a_bounded_set_of_buckets() {
        let keys = Keys::new("c");
        let mut buckets = std::collections::BTreeSet::new();
        for i in 0..5000 {
            let r = record(Target::Path(format!("/x?u={i}")), true);
            let key = keys.record(&r);
            assert!(key.starts_with("/casserole/c/purges/i/"), "{key}");
            assert!(key.len() <= "/casserole/c/purges/i/ff".len());
            buckets.insert(key);
        }
        assert_eq!(buckets.len(), INVALIDATION_BUCKETS);
        let a = record(Target::Path("/a".into()), false);
        let again = Record {
            id: "2".into(),
            ..a.clone()
        };
        assert_eq!(keys.record(&a), keys.record(&again), "one key per target");
        let prefix = record(Target::Prefix("/a".into()), false);
        assert_ne!(keys.record(&a), keys.record(&prefix));
        assert!(keys.ack(&a, "http://n:1/").starts_with(&keys.acks(&a)));
    }

    #[test]
    fn records_written_before_invalidations_existed_still_parse() {
        let old = br#"{"id":"1","target":{"path":"/a"},"requested_by":"x","origin":"n","at_unix_ms":1,"round":1,"versions":["v"]}"#;
        let r = parse(old).unwrap();
        assert!(!r.invalidation);
        assert!(parse(br#"{"id":"1"}"#).is_none());
        assert!(parse(br#"{"id":"1","target":{"path":"a"},"requested_by":"x","origin":"n","at_unix_ms":1,"round":1}"#).is_none());
    }
}
