//! Object metadata lookups: memory (moka, expiring at the object's freshness), then the disk
//! tier (so a restarted node still knows its objects), then a `HEAD` to the upstream.
//!
//! Concurrent lookups of one path are collapsed into one (moka's `try_get_with`), so a burst of
//! clients costs the upstream one `HEAD`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use moka::{future::Cache, Expiry};

use crate::{
    fetch::Route,
    metrics::Metrics,
    object::{unix_now, ObjectMeta},
    policy::{evaluate_head, HeadContext, Uncacheable},
    tier::{
        disk::DiskTier,
        peer::{MetaAnswer, PeerTier},
    },
    upstream::{Upstream, UpstreamError},
};

/// Why a lookup produced no metadata.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("not cacheable: {0}")]
    Uncacheable(Uncacheable),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Where the metadata of a lookup came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaSource {
    Cached,
    Upstream,
}

struct FreshnessExpiry;

impl Expiry<String, Arc<ObjectMeta>> for FreshnessExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<ObjectMeta>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.time_to_live(unix_now()))
    }
}

pub struct MetadataConfig {
    pub min_ttl: Duration,
    pub chunk_size: u64,
    pub max_entries: u64,
}

pub struct MetadataStore {
    memory: Cache<String, Arc<ObjectMeta>>,
    disk: Option<Arc<DiskTier>>,
    peers: Option<Arc<PeerTier>>,
    upstream: Arc<Upstream>,
    cfg: MetadataConfig,
    metrics: Arc<Metrics>,
}

impl MetadataStore {
    pub fn new(
        cfg: MetadataConfig,
        upstream: Arc<Upstream>,
        disk: Option<Arc<DiskTier>>,
        peers: Option<Arc<PeerTier>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let memory = Cache::builder()
            .max_capacity(cfg.max_entries)
            .expire_after(FreshnessExpiry)
            .build();
        MetadataStore {
            memory,
            disk,
            peers,
            upstream,
            cfg,
            metrics,
        }
    }

    /// Metadata of `path` if it is cacheable. With `Route::Cluster`, a miss asks the owner of the
    /// path's metadata first, so every node agrees on one object version.
    pub async fn lookup(
        &self,
        path: &str,
        route: Route,
    ) -> Result<(Arc<ObjectMeta>, MetaSource), LookupError> {
        if let Some(meta) = self.memory.get(path).await {
            if meta.is_fresh(unix_now()) {
                self.metrics
                    .metadata_lookups
                    .with_label_values(&["memory"])
                    .inc();
                return Ok((meta, MetaSource::Cached));
            }
            self.memory.invalidate(path).await;
        }
        let loaded_here = std::sync::atomic::AtomicBool::new(false);
        let meta = self
            .memory
            .try_get_with(path.to_string(), async {
                loaded_here.store(true, std::sync::atomic::Ordering::Relaxed);
                self.load(path, route).await
            })
            .await
            .map_err(|e: Arc<LookupError>| (*e).clone())?;
        let source = if loaded_here.load(std::sync::atomic::Ordering::Relaxed) {
            MetaSource::Upstream
        } else {
            MetaSource::Cached
        };
        Ok((meta, source))
    }

    async fn load(&self, path: &str, route: Route) -> Result<Arc<ObjectMeta>, LookupError> {
        let key = ObjectMeta::meta_key(path);
        if let (Some(peers), Route::Cluster) = (&self.peers, route) {
            for peer in peers.remote_owners(&key) {
                match peers.fetch_meta(&peer, path).await {
                    Ok(MetaAnswer::Cacheable(meta)) if self.is_consistent(&meta, path) => {
                        self.metrics
                            .metadata_lookups
                            .with_label_values(&["peer"])
                            .inc();
                        return Ok(Arc::new(meta));
                    }
                    Ok(MetaAnswer::Cacheable(meta)) => {
                        peers.mark_suspect(
                            &peer,
                            &format_args!(
                            "metadata version {} does not match this node's upstream or chunk size",
                            meta.version
                        ),
                        );
                    }
                    Ok(MetaAnswer::Uncacheable(why)) => return Err(LookupError::Uncacheable(why)),
                    Err(e) => peers.mark_suspect(&peer, &e),
                }
            }
        }
        if let Some(disk) = &self.disk {
            if let Some(raw) = disk.get_meta(&key).await {
                match serde_json::from_slice::<ObjectMeta>(&raw) {
                    Ok(meta)
                        if meta.path == path
                            && meta.chunk_size == self.cfg.chunk_size
                            && meta.is_fresh(unix_now()) =>
                    {
                        self.metrics
                            .metadata_lookups
                            .with_label_values(&["disk"])
                            .inc();
                        return Ok(Arc::new(meta));
                    }
                    Ok(_) => disk.remove_meta(&key).await,
                    Err(e) => {
                        tracing::warn!(path, error = %e, "unreadable metadata record on disk, dropped");
                        disk.remove_meta(&key).await;
                    }
                }
            }
        }
        self.metrics
            .metadata_lookups
            .with_label_values(&["upstream"])
            .inc();
        let (status, headers, response_time) = self.upstream.head(path).await?;
        let ctx = HeadContext {
            upstream: self.upstream.base(),
            path,
            min_ttl: self.cfg.min_ttl,
            chunk_size: self.cfg.chunk_size,
            response_time,
        };
        let meta = evaluate_head(&ctx, status, &headers).map_err(LookupError::Uncacheable)?;
        if let Some(disk) = &self.disk {
            let record = Bytes::from(serde_json::to_vec(&meta).expect("metadata serializes"));
            if let Err(e) = disk.put_meta(&key, record).await {
                tracing::warn!(path, error = %e, "could not persist metadata; it stays in memory only");
            }
        }
        Ok(Arc::new(meta))
    }

    /// Whether metadata from a peer describes `path` on this node's upstream, cut in this node's
    /// chunk size: a misconfigured peer must not make this node cache foreign bytes.
    pub fn is_consistent(&self, meta: &ObjectMeta, path: &str) -> bool {
        meta.path == path
            && meta.chunk_size == self.cfg.chunk_size
            && meta.version
                == ObjectMeta::compute_version(
                    self.upstream.base(),
                    path,
                    &meta.validator,
                    meta.length,
                    meta.chunk_size,
                )
    }

    /// Forgets every record of `path`, in memory and on disk, whatever its version (a purge);
    /// returns the versions those records named, so their chunks can be dropped too.
    pub async fn purge_path(&self, path: &str) -> Vec<String> {
        let mut versions = Vec::new();
        if let Some(meta) = self.memory.remove(path).await {
            versions.push(meta.version.clone());
        }
        if let Some(disk) = &self.disk {
            let key = ObjectMeta::meta_key(path);
            if let Some(raw) = disk.get_meta(&key).await {
                versions.extend(
                    serde_json::from_slice::<ObjectMeta>(&raw)
                        .ok()
                        .map(|m| m.version),
                );
                disk.remove_meta(&key).await;
            }
        }
        versions.sort();
        versions.dedup();
        versions
    }

    /// [`MetadataStore::purge_path`] for every path starting with `prefix`; scans the memory
    /// records and the disk's metadata files. Returns the purged (path, version) pairs.
    pub async fn purge_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let mut paths: Vec<String> = self
            .memory
            .iter()
            .map(|(path, _)| path.to_string())
            .filter(|p| p.starts_with(prefix))
            .collect();
        if let Some(disk) = &self.disk {
            for name in disk.meta_names().await {
                let Some(raw) = disk.get_meta(&name).await else {
                    continue;
                };
                match serde_json::from_slice::<ObjectMeta>(&raw) {
                    Ok(meta) if meta.path.starts_with(prefix) => paths.push(meta.path),
                    _ => {}
                }
            }
        }
        paths.sort();
        paths.dedup();
        let mut purged = Vec::new();
        for path in paths {
            for version in self.purge_path(&path).await {
                purged.push((path.clone(), version));
            }
        }
        purged
    }

    /// Forgets `meta`: memory and disk record, and with `drop_chunks` (the object changed
    /// upstream) its chunks on disk. A newer version already looked up again is left alone.
    pub async fn invalidate(&self, meta: &ObjectMeta, drop_chunks: bool) {
        if let Some(current) = self.memory.get(&meta.path).await {
            if current.version == meta.version {
                self.memory.invalidate(&meta.path).await;
            }
        }
        if let Some(disk) = &self.disk {
            let key = ObjectMeta::meta_key(&meta.path);
            let on_disk = disk
                .get_meta(&key)
                .await
                .and_then(|raw| serde_json::from_slice::<ObjectMeta>(&raw).ok());
            if on_disk.is_some_and(|m| m.version == meta.version) {
                disk.remove_meta(&key).await;
            }
            if drop_chunks {
                disk.remove_version(&meta.version).await;
            }
        }
    }
}
