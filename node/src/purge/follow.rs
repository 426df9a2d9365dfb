//! This member's side of the cluster's purge records: it reads them all when it (re)connects,
//! page by page, then follows the watch, applies each record written by another member once,
//! and acks the admin purges.
//!
//! Costs per record: an invalidation drops one path's metadata by key (a prefix only when its
//! target was longer than a record holds); an admin purge also drops the chunks of the versions
//! it names (one scan of the memory tier and one of the disk index per round). What was
//! applied is one etcd revision ([`Progress`]), saved at most once a second.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{Client, EventType, PutOptions, WatchOptions, WatchStream};
use tokio::{sync::watch, time::timeout};
use tracing::{debug, info, warn};

use super::{
    local::LocalStores,
    progress::Progress,
    record::{self, Ack, Keys, Record},
    PurgeMetrics,
};
use crate::cluster::etcd::{list_prefix, op, Etcd, EtcdError, PAGE};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the applied revision is saved while records arrive.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Admin purges whose round is remembered (so a second round only drops chunks); past this the
/// memory is cleared, and a later second round applies its whole record again, which is safe.
const RECENT_MAX: usize = 1024;

pub struct Follower {
    etcd: Arc<Etcd>,
    keys: Keys,
    node_id: String,
    stores: LocalStores,
    metrics: PurgeMetrics,
    progress: Mutex<Progress>,
    /// Admin purge id → the round applied here.
    recent: Mutex<HashMap<String, u32>>,
    caught_up: watch::Sender<bool>,
}

impl Follower {
    /// Starts following (until `stop`); must be called inside a tokio runtime.
    pub async fn start(
        etcd: Arc<Etcd>,
        keys: Keys,
        node_id: String,
        stores: LocalStores,
        metrics: PurgeMetrics,
        stop: watch::Receiver<bool>,
    ) -> Arc<Follower> {
        let progress = Progress::load(stores.disk.as_deref()).await;
        let this = Arc::new(Follower {
            etcd,
            keys,
            node_id,
            stores,
            metrics,
            progress: Mutex::new(progress),
            recent: Mutex::new(HashMap::new()),
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
            let conn = tokio::select! {
                c = self.etcd.connection() => c,
                _ = stop.wait_for(|s| *s) => return,
            };
            let res = match conn {
                Ok(conn) => {
                    let res = tokio::select! {
                        r = self.session(conn.client.clone()) => r,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    if res.is_err() {
                        self.etcd.failed(&conn).await;
                    }
                    res
                }
                Err(e) => Err(e),
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

    /// Applies every record written since the saved progress, then follows the watch until it
    /// fails.
    async fn session(&self, mut client: Client) -> Result<(), EtcdError> {
        let prefix = self.keys.records();
        let listing = list_prefix(&mut client, &prefix, PAGE).await?;
        let since = self
            .progress()
            .applied_through(listing.cluster_id, listing.revision);
        for kv in &listing.kvs {
            if kv.mod_revision() <= since {
                continue;
            }
            if let Some(record) = record::parse(kv.value()) {
                self.on_record(&mut client, record, kv.lease()).await?;
            }
        }
        let mut progress = Progress {
            cluster_id: listing.cluster_id,
            revision: listing.revision,
        };
        self.save(progress).await;
        self.caught_up.send_replace(true);

        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(listing.revision + 1);
        let mut watch: WatchStream = op(client.watch(prefix.as_str(), Some(opts))).await?;
        let mut tick = tokio::time::interval(SAVE_EVERY);
        let mut unsaved = false;
        loop {
            let resp = tokio::select! {
                msg = watch.message() => msg?,
                _ = tick.tick() => {
                    if std::mem::take(&mut unsaved) {
                        self.save(progress).await;
                    }
                    continue;
                }
            };
            let Some(resp) = resp else {
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
                if let Some(record) = record::parse(kv.value()) {
                    self.on_record(&mut client, record, kv.lease()).await?;
                }
            }
            if let Some(revision) = resp.header().map(|h| h.revision()) {
                progress.revision = progress.revision.max(revision);
                unsaved = true;
            }
        }
    }

    fn progress(&self) -> Progress {
        *self.progress.lock().expect("progress lock")
    }

    async fn save(&self, progress: Progress) {
        *self.progress.lock().expect("progress lock") = progress;
        progress.save(self.stores.disk.as_deref()).await;
    }

    /// Applies a record another member wrote (a purge is applied where it was asked before it
    /// is written), then acks it unless it is an invalidation.
    async fn on_record(
        &self,
        client: &mut Client,
        record: Record,
        lease: i64,
    ) -> Result<(), EtcdError> {
        if record.origin == self.node_id {
            return Ok(());
        }
        if record.invalidation {
            let removed = self.stores.forget(&record.target).await;
            self.metrics
                .applied(&record.target, "invalidation", removed.scans);
            debug!(purge = %record.id, target = record.target.text(), via = %record.origin,
                objects = removed.objects, "invalidation applied");
            return Ok(());
        }
        let done = self.recent_round(&record.id);
        let versions = match done {
            Some(round) if round >= record.round => return Ok(()),
            Some(_) => {
                let scans = self.stores.drop_chunks(&record.versions).await;
                self.metrics.scanned(scans);
                record.versions.clone()
            }
            None => {
                let removed = self.stores.apply(&record.target, &record.versions).await;
                self.metrics
                    .applied(&record.target, "cluster", removed.scans);
                info!(purge = %record.id, kind = record.target.kind(), target = record.target.text(),
                    requested_by = %record.requested_by, via = %record.origin,
                    objects = removed.objects, versions = removed.versions.len(), "purge applied");
                removed.versions
            }
        };
        self.remember_round(&record.id, record.round);
        let ack = Ack {
            id: record.id.clone(),
            round: record.round,
            versions,
        };
        let body = serde_json::to_vec(&ack).expect("ack serializes");
        let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        op(client.put(self.keys.ack(&record, &self.node_id), body, opts)).await?;
        Ok(())
    }

    fn recent_round(&self, id: &str) -> Option<u32> {
        self.recent.lock().expect("recent lock").get(id).copied()
    }

    fn remember_round(&self, id: &str, round: u32) {
        let mut recent = self.recent.lock().expect("recent lock");
        if recent.len() >= RECENT_MAX {
            recent.clear();
        }
        recent.insert(id.to_string(), round);
    }
}
