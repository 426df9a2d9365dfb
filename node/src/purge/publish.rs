//! Writing this node's purges to etcd, over the node's one connection and one shared lease of
//! `--purge-ttl` (records live between ⅞ × ttl and ttl).
//!
//! An admin purge waits for the members' acks: a chunk owner need not hold the metadata of the
//! objects whose chunks it stores, so the receiver gathers the versions from the acks and, if
//! they add any, writes the record again (`round` 2) with all of them; members drop those
//! chunks and ack again. Invalidations are written a window's worth at a time in a few
//! transactions, and nobody waits for them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use tokio::time::Instant;

use super::record::{Ack, Keys, Record};
use crate::cluster::{
    etcd::{op, Etcd, EtcdError, SharedLease},
    member_key,
};

/// How often a waiting admin purge reads the acks.
const ACK_POLL: Duration = Duration::from_millis(100);
/// Puts per transaction (etcd 3.4 takes at most 128 operations in one).
const TXN_OPS: usize = 64;

pub struct Publisher {
    etcd: Arc<Etcd>,
    keys: Keys,
    node_id: String,
    lease: SharedLease,
}

/// What the members said about one admin purge.
pub struct Confirmations {
    /// Members (node ids) that applied the purge's last round, this node included.
    pub confirmed: BTreeSet<String>,
    /// Versions other members found that this node did not know: their chunks are dropped
    /// here too.
    pub learned: Vec<String>,
}

impl Publisher {
    pub fn new(etcd: Arc<Etcd>, keys: Keys, node_id: String, ttl: Duration) -> Publisher {
        Publisher {
            etcd,
            keys,
            node_id,
            lease: SharedLease::new(ttl),
        }
    }

    /// Publishes an admin purge this node already applied (finding `versions`), then waits up
    /// to `wait` (1.5 × with a second round) for the members in `expected` to confirm it.
    pub async fn publish(
        &self,
        mut record: Record,
        expected: &BTreeSet<String>,
        wait: Duration,
    ) -> Result<Confirmations, EtcdError> {
        let deadline = Instant::now() + wait;
        let conn = self.etcd.connection().await?;
        let mut client = conn.client.clone();
        let res = async {
            self.put(&mut client, &record).await?;
            let mut acks = self
                .wait_acks(&mut client, &record, expected, deadline)
                .await?;
            let found: BTreeSet<String> = acks.values().flat_map(|a| a.versions.clone()).collect();
            let known: BTreeSet<String> = record.versions.iter().cloned().collect();
            let learned: Vec<String> = found.difference(&known).cloned().collect();
            if !learned.is_empty() {
                // Chunk owners without the metadata learn the versions in a second round.
                record.round = 2;
                record.versions = known.union(&found).cloned().collect();
                record = record.bounded();
                self.put(&mut client, &record).await?;
                // Round 1 may have used the whole wait on a member that is down; the others
                // still get a moment to confirm round 2 (the call stays within 1.5 × `wait`).
                let deadline = deadline.max(Instant::now() + wait / 2);
                acks = self
                    .wait_acks(&mut client, &record, expected, deadline)
                    .await?;
            }
            let mut confirmed: BTreeSet<String> = acks.into_keys().collect();
            confirmed.insert(self.node_id.clone());
            Ok(Confirmations { confirmed, learned })
        }
        .await;
        if res.is_err() {
            self.etcd.failed(&conn).await;
        }
        res
    }

    /// Writes `record` under the shared lease; a failed write forgets the lease (it may be gone).
    async fn put(&self, client: &mut Client, record: &Record) -> Result<(), EtcdError> {
        let lease = self.lease.id(client).await?;
        let body = serde_json::to_vec(record).expect("record serializes");
        let key = self.keys.record(record);
        let res = op(client.put(key, body, Some(PutOptions::new().with_lease(lease)))).await;
        if res.is_err() {
            self.lease.forget(lease).await;
        }
        res.map(|_| ())
    }

    /// Reads the acks of `record` every [`ACK_POLL`] until every other expected member acked
    /// its round or the deadline passed; each read is bounded to the members expected.
    async fn wait_acks(
        &self,
        client: &mut Client,
        record: &Record,
        expected: &BTreeSet<String>,
        deadline: Instant,
    ) -> Result<BTreeMap<String, Ack>, EtcdError> {
        let prefix = self.keys.acks(record);
        let limit = expected.len() as i64 + 1;
        loop {
            let opts = GetOptions::new().with_prefix().with_limit(limit);
            let resp = op(client.get(prefix.as_str(), Some(opts))).await?;
            let acks: BTreeMap<String, Ack> = resp
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let node = member_key::decode(kv.key_str().ok()?.strip_prefix(&prefix)?)?;
                    let ack: Ack = serde_json::from_slice(kv.value()).ok()?;
                    let current = ack.id == record.id && ack.round >= record.round;
                    current.then_some((node, ack))
                })
                .collect();
            let all = expected
                .iter()
                .all(|m| *m == self.node_id || acks.contains_key(m));
            if all || Instant::now() >= deadline {
                return Ok(acks);
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }

    /// Writes invalidation records (bounded already), [`TXN_OPS`] puts per transaction; two
    /// records for one key (one bucket) go in different transactions, as etcd refuses a key
    /// twice in one.
    pub async fn publish_invalidations(&self, records: &[Record]) -> Result<(), EtcdError> {
        let conn = self.etcd.connection().await?;
        let mut client = conn.client.clone();
        let res = async {
            let lease = self.lease.id(&mut client).await?;
            for batch in batches(&self.keys, records) {
                let ops: Vec<TxnOp> = batch
                    .into_iter()
                    .map(|(key, record)| {
                        let body = serde_json::to_vec(record).expect("record serializes");
                        TxnOp::put(key, body, Some(PutOptions::new().with_lease(lease)))
                    })
                    .collect();
                if let Err(e) = op(client.txn(Txn::new().and_then(ops))).await {
                    self.lease.forget(lease).await;
                    return Err(e);
                }
            }
            Ok(())
        }
        .await;
        if res.is_err() {
            self.etcd.failed(&conn).await;
        }
        res
    }
}

/// Records with their keys, in transactions of at most [`TXN_OPS`] puts with no key twice.
fn batches<'a>(keys: &Keys, records: &'a [Record]) -> Vec<Vec<(String, &'a Record)>> {
    let mut out: Vec<Vec<(String, &Record)>> = Vec::new();
    for record in records {
        let key = keys.record(record);
        let open = out
            .iter_mut()
            .find(|b| b.len() < TXN_OPS && b.iter().all(|(k, _)| *k != key));
        match open {
            Some(batch) => batch.push((key, record)),
            None => out.push(vec![(key, record)]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::purge::Target;

    #[test]
    fn a_transaction_never_names_a_key_twice() {
        let keys = Keys::new("c");
        let records: Vec<Record> = (0..600)
            .map(|i| Record {
                id: i.to_string(),
                target: Target::Path(format!("/a?{i}")),
                requested_by: String::new(),
                origin: "n".into(),
                at_unix_ms: 0,
                round: 1,
                versions: vec![],
                invalidation: true,
            })
            .collect();
        let batches = batches(&keys, &records);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 600);
        for b in &batches {
            assert!(b.len() <= TXN_OPS);
            let distinct: BTreeSet<&String> = b.iter().map(|(k, _)| k).collect();
            assert_eq!(distinct.len(), b.len());
        }
    }
}
