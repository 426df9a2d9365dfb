//! Cluster-wide purges through etcd.
//!
//! The node that receives a purge writes a record `/casserole/<cluster>/purges/<id>` under a
//! lease of `--purge-ttl`; every member watches that prefix, applies each record once, and
//! confirms it with an ack `/casserole/<cluster>/purge-acks/<id>/<member key>` under the same
//! lease, naming the object versions it found. A chunk owner need not hold the metadata of the
//! objects whose chunks it stores, so the receiver gathers the versions from the acks and, if
//! they add any, writes the record again (`round` 2) with all of them; members drop those
//! chunks and ack again. A member that was down or cut off reads every record when it
//! (re)connects and applies those it has not applied yet (applied ids and rounds are kept on
//! its disk tier, so a restart does not purge what was fetched again since). Records live as
//! long as their lease: a member away for longer than `--purge-ttl` misses them.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, time::timeout};
use tracing::{info, warn};

use super::{local::LocalStores, PurgeMetrics, Target};
use crate::cluster::member_key;

/// Deadline for one unary etcd call.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Disk tier metadata name of the applied-purges record; metadata names of objects are SHA-256
/// hex, so this cannot clash with one.
const APPLIED_RECORD: &str = "casserole:purges-applied";

#[derive(Clone, Debug)]
pub struct PurgeEtcdConfig {
    pub endpoints: Vec<String>,
    pub cluster_name: String,
    pub node_id: String,
    pub ttl: Duration,
}

impl PurgeEtcdConfig {
    fn records_prefix(&self) -> String {
        format!("/casserole/{}/purges/", self.cluster_name)
    }
    fn acks_prefix(&self, id: &str) -> String {
        format!("/casserole/{}/purge-acks/{id}/", self.cluster_name)
    }
    fn ack_key(&self, id: &str) -> String {
        format!(
            "{}{}",
            self.acks_prefix(id),
            member_key::encode(&self.node_id)
        )
    }
}

/// One purge as stored in etcd.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub target: Target,
    pub requested_by: String,
    /// Node id of the member that received the purge.
    pub origin: String,
    pub at_unix_ms: u64,
    /// 1 when written; 2 once the versions other members found were added.
    pub round: u32,
    pub versions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ack {
    round: u32,
    versions: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd call timed out")]
    Timeout,
    #[error("{0}")]
    Stream(&'static str),
}

async fn op<T>(fut: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, EtcdError> {
    timeout(OP_TIMEOUT, fut)
        .await
        .map_err(|_| EtcdError::Timeout)?
        .map_err(EtcdError::from)
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(OP_TIMEOUT)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_require_leader(true)
}

/// This member's side of cluster-wide purges: applies records, acks them, and publishes the
/// purges it receives.
pub struct ClusterPurges {
    cfg: PurgeEtcdConfig,
    stores: LocalStores,
    metrics: PurgeMetrics,
    /// Purge id → round applied here.
    applied: Mutex<BTreeMap<String, u32>>,
    caught_up: watch::Sender<bool>,
}

/// What the members said about one purge.
pub struct Confirmations {
    /// Members (node ids) that applied the purge's last round.
    pub confirmed: BTreeSet<String>,
}

impl ClusterPurges {
    /// Starts the watch task; must be called inside a tokio runtime. Stops with `stop`.
    pub async fn start(
        cfg: PurgeEtcdConfig,
        stores: LocalStores,
        metrics: PurgeMetrics,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let applied = load_applied(&stores).await;
        let this = Arc::new(ClusterPurges {
            cfg,
            stores,
            metrics,
            applied: Mutex::new(applied),
            caught_up: watch::channel(false).0,
        });
        tokio::spawn(this.clone().run(stop));
        this
    }

    /// Waits until the records in etcd were read and applied once (at most `limit`).
    pub async fn wait_caught_up(&self, limit: Duration) -> bool {
        let mut rx = self.caught_up.subscribe();
        let caught_up = timeout(limit, rx.wait_for(|c| *c)).await.is_ok();
        caught_up
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let res = tokio::select! {
                r = self.session() => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            if let Err(e) = res {
                self.metrics.errors.inc();
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "purge watch: etcd error; purges missed meanwhile are applied on reconnect");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Lists and applies every record, then follows the watch until it fails.
    async fn session(&self) -> Result<(), EtcdError> {
        let mut client = op(Client::connect(
            &self.cfg.endpoints,
            Some(connect_options()),
        ))
        .await?;
        let prefix = self.cfg.records_prefix();
        let resp = op(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut live = BTreeSet::new();
        for kv in resp.kvs() {
            if let Some(record) = parse_record(kv.value()) {
                live.insert(record.id.clone());
                self.on_record(&mut client, record, kv.lease()).await?;
            }
        }
        // Records whose lease ended are forgotten here too, so the applied set stays small.
        self.applied
            .lock()
            .expect("applied lock")
            .retain(|id, _| live.contains(id));
        self.save_applied().await;
        self.caught_up.send_replace(true);

        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watch: WatchStream = op(client.watch(prefix.as_str(), Some(opts))).await?;
        loop {
            let Some(resp) = watch.message().await? else {
                return Err(EtcdError::Stream("watch stream closed"));
            };
            if resp.canceled() {
                return Err(EtcdError::Stream("watch canceled"));
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                if ev.event_type() != EventType::Put {
                    continue;
                }
                if let Some(record) = parse_record(kv.value()) {
                    self.on_record(&mut client, record, kv.lease()).await?;
                }
            }
        }
    }

    /// Applies a record (or its new round) unless already done, then acks it.
    async fn on_record(
        &self,
        client: &mut Client,
        record: Record,
        lease: i64,
    ) -> Result<(), EtcdError> {
        let done = self
            .applied
            .lock()
            .expect("applied lock")
            .get(&record.id)
            .copied();
        let versions = match done {
            Some(round) if round >= record.round => return Ok(()),
            Some(_) => {
                self.stores.drop_chunks(&record.versions).await;
                record.versions.clone()
            }
            None => {
                let removed = self.stores.apply(&record.target, &record.versions).await;
                self.metrics.count(&record.target, "cluster");
                info!(purge = %record.id, kind = record.target.kind(), target = record.target.text(),
                    requested_by = %record.requested_by, via = %record.origin,
                    objects = removed.objects, versions = removed.versions.len(), "purge applied");
                removed.versions
            }
        };
        self.mark_applied(&record.id, record.round).await;
        self.ack(client, &record.id, record.round, versions, lease)
            .await
    }

    async fn ack(
        &self,
        client: &mut Client,
        id: &str,
        round: u32,
        versions: Vec<String>,
        lease: i64,
    ) -> Result<(), EtcdError> {
        let body = serde_json::to_vec(&Ack { round, versions }).expect("ack serializes");
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        op(client.put(self.cfg.ack_key(id), body, opts)).await?;
        Ok(())
    }

    async fn mark_applied(&self, id: &str, round: u32) {
        self.applied
            .lock()
            .expect("applied lock")
            .insert(id.to_string(), round);
        self.save_applied().await;
    }

    async fn save_applied(&self) {
        let Some(disk) = &self.stores.disk else {
            return;
        };
        let json = serde_json::to_vec(&*self.applied.lock().expect("applied lock"))
            .expect("applied set serializes");
        if let Err(e) = disk.put_meta(APPLIED_RECORD, Bytes::from(json)).await {
            warn!(error = %e, "could not persist the applied purges; a restart applies them again");
        }
    }

    /// Publishes a purge this node received and already applied locally (finding
    /// `versions`), then waits up to `wait` (1.5 × with a second round) for the members in
    /// `expected` to confirm it.
    pub async fn publish(
        &self,
        mut record: Record,
        expected: &BTreeSet<String>,
        wait: Duration,
    ) -> Result<Confirmations, EtcdError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut client = op(Client::connect(
            &self.cfg.endpoints,
            Some(connect_options()),
        ))
        .await?;
        let ttl = self.cfg.ttl.as_secs().max(1) as i64;
        let lease = op(client.lease_grant(ttl, None)).await?.id();
        let key = format!("{}{}", self.cfg.records_prefix(), record.id);
        let record_client = client.clone();
        let put = |record: &Record| {
            let body = serde_json::to_vec(record).expect("record serializes");
            let mut client = record_client.clone();
            let key = key.clone();
            async move { op(client.put(key, body, Some(PutOptions::new().with_lease(lease)))).await }
        };
        self.mark_applied(&record.id, record.round).await;
        put(&record).await?;
        self.ack(&mut client, &record.id, 1, record.versions.clone(), lease)
            .await?;
        let acks = self
            .wait_acks(&mut client, &record.id, expected, 1, deadline)
            .await?;
        let found: BTreeSet<String> = acks.values().flat_map(|a| a.versions.clone()).collect();
        let known: BTreeSet<String> = record.versions.iter().cloned().collect();
        let mut last_round = 1;
        let mut acks = acks;
        if !found.is_subset(&known) {
            // Chunk owners without the metadata learn the versions in a second round.
            record.round = 2;
            record.versions = known.union(&found).cloned().collect();
            last_round = 2;
            self.stores.drop_chunks(&record.versions).await;
            self.mark_applied(&record.id, 2).await;
            put(&record).await?;
            self.ack(&mut client, &record.id, 2, record.versions.clone(), lease)
                .await?;
            // Round 1 may have used the whole wait on a member that is down; the others still
            // get a moment to confirm round 2 (so the whole call stays within 1.5 × `wait`).
            let deadline = deadline.max(tokio::time::Instant::now() + wait / 2);
            acks = self
                .wait_acks(&mut client, &record.id, expected, 2, deadline)
                .await?;
        }
        let confirmed = acks
            .into_iter()
            .filter(|(_, a)| a.round >= last_round)
            .map(|(id, _)| id)
            .collect();
        Ok(Confirmations { confirmed })
    }

    /// Polls the acks of `id` until every expected member acked `round` or the deadline passed.
    async fn wait_acks(
        &self,
        client: &mut Client,
        id: &str,
        expected: &BTreeSet<String>,
        round: u32,
        deadline: tokio::time::Instant,
    ) -> Result<BTreeMap<String, Ack>, EtcdError> {
        let prefix = self.cfg.acks_prefix(id);
        loop {
            let resp =
                op(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix()))).await?;
            let acks: BTreeMap<String, Ack> = resp
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let node = member_key::decode(kv.key_str().ok()?.strip_prefix(&prefix)?)?;
                    Some((node, serde_json::from_slice(kv.value()).ok()?))
                })
                .collect();
            let all = expected
                .iter()
                .all(|m| acks.get(m).is_some_and(|a| a.round >= round));
            if all || tokio::time::Instant::now() >= deadline {
                return Ok(acks);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn parse_record(value: &[u8]) -> Option<Record> {
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

async fn load_applied(stores: &LocalStores) -> BTreeMap<String, u32> {
    let Some(disk) = &stores.disk else {
        return BTreeMap::new();
    };
    disk.get_meta(APPLIED_RECORD)
        .await
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .unwrap_or_default()
}
