//! The local memory tier: chunks in a moka cache bounded by bytes.
//!
//! Chunks are `Bytes`, so a hit hands out a reference-counted view, never a copy.

use futures::future::BoxFuture;
use moka::{notification::RemovalCause, sync::Cache};

use crate::{
    metrics::Registrar,
    object::ChunkKey,
    source::{Chunk, ChunkRequest, ChunkSource, FetchError, Opened, SourceKind},
};

/// Bytes a cached entry costs beyond its payload (key, moka's entry bookkeeping); an estimate,
/// so the bound stays honest for small chunks too.
const ENTRY_OVERHEAD: u64 = 160;

#[derive(Clone)]
pub struct MemoryMetrics {
    pub bytes: prometheus::IntGauge,
    pub chunks: prometheus::IntGauge,
    pub evictions: prometheus::IntCounter,
}

impl MemoryMetrics {
    pub fn new(r: &Registrar) -> Self {
        MemoryMetrics {
            bytes: r.gauge(
                "casserole_memory_bytes",
                "Bytes of chunks held by the memory tier",
            ),
            chunks: r.gauge("casserole_memory_chunks", "Chunks held by the memory tier"),
            evictions: r.counter(
                "casserole_memory_evictions_total",
                "Chunks evicted from the memory tier",
            ),
        }
    }
}

pub struct MemoryTier {
    chunks: Cache<ChunkKey, Chunk>,
    /// Keep chunks served by their owner peer too (`--peer-hot-copy`).
    keep_peer_chunks: bool,
    metrics: MemoryMetrics,
}

impl MemoryTier {
    pub fn new(max_bytes: u64, keep_peer_chunks: bool, metrics: MemoryMetrics) -> Self {
        let evictions = metrics.evictions.clone();
        let chunks = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &ChunkKey, value: &Chunk| -> u32 {
                (value.len() as u64 + ENTRY_OVERHEAD).min(u32::MAX as u64) as u32
            })
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        MemoryTier {
            chunks,
            keep_peer_chunks,
            metrics,
        }
    }

    pub fn get(&self, key: &ChunkKey) -> Option<Chunk> {
        self.chunks.get(key)
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.chunks.contains_key(key)
    }

    pub fn insert(&self, key: ChunkKey, chunk: Chunk) {
        self.chunks.insert(key, chunk);
        // moka evicts in deferred maintenance; with multi-MiB entries arriving quickly that
        // would let the tier overshoot its bound by many chunks. One maintenance pass per chunk
        // costs little next to fetching it.
        self.chunks.run_pending_tasks();
    }

    pub fn remove_version(&self, version: &str) {
        self.remove_versions(&[version]);
    }

    /// Drops every chunk of `versions` in one pass over the keys (a purge of many objects scans
    /// once, not once per version).
    pub fn remove_versions<V: AsRef<str>>(&self, versions: &[V]) {
        let versions: std::collections::HashSet<&str> =
            versions.iter().map(AsRef::as_ref).collect();
        // invalidate_entries_if needs support_invalidation_closures; versions are rare to drop,
        // so a scan of the keys is acceptable.
        for (key, _) in self.chunks.iter() {
            if versions.contains(key.version.as_ref()) {
                self.chunks.invalidate(key.as_ref());
            }
        }
    }

    /// Runs the cache's deferred maintenance: evictions are carried out, and chunks it evicted
    /// that moka still held in its records of recent reads are let go (with their memory).
    pub fn settle(&self) {
        self.chunks.run_pending_tasks();
    }

    /// Brings the size gauges up to date (called before metrics are rendered).
    pub fn refresh_gauges(&self) {
        self.settle();
        self.metrics.bytes.set(self.chunks.weighted_size() as i64);
        self.metrics.chunks.set(self.chunks.entry_count() as i64);
    }

    pub fn weighted_size(&self) -> u64 {
        self.settle();
        self.chunks.weighted_size()
    }
}

impl ChunkSource for MemoryTier {
    fn kind(&self) -> SourceKind {
        SourceKind::Memory
    }

    fn ready(&self, key: &ChunkKey) -> Option<Chunk> {
        self.get(key)
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        let opened = self.get(request.key).map(|chunk| {
            let parts = chunk.parts_from(request.offset as usize);
            Opened {
                stream: Box::pin(futures::stream::iter(parts.into_iter().map(Ok))),
                starts_at: request.offset,
                origin: SourceKind::Memory,
            }
        });
        Box::pin(async move { Ok(opened) })
    }

    fn keep<'a>(
        &'a self,
        key: &'a ChunkKey,
        chunk: &'a Chunk,
        origin: SourceKind,
    ) -> BoxFuture<'a, ()> {
        if origin != SourceKind::Memory && (origin != SourceKind::Peer || self.keep_peer_chunks) {
            self.insert(key.clone(), chunk.clone());
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(i: u64) -> ChunkKey {
        ChunkKey {
            version: std::sync::Arc::from("ab".repeat(32)),
            index: i,
        }
    }

    #[test]
    fn stays_within_its_byte_bound_and_hits_share_bytes() {
        let m = MemoryMetrics::new(&Registrar::new());
        let tier = MemoryTier::new(1_000_000, true, m.clone());
        for i in 0..50 {
            tier.insert(key(i), Bytes::from(vec![i as u8; 100_000]).into());
        }
        assert!(
            tier.weighted_size() <= 1_000_000,
            "{}",
            tier.weighted_size()
        );
        assert!(m.evictions.get() >= 40);
        tier.insert(key(99), Bytes::from(vec![7u8; 1000]).into());
        let a = tier.get(&key(99)).unwrap();
        let b = tier.get(&key(99)).unwrap();
        assert_eq!(
            a.parts()[0].as_ptr(),
            b.parts()[0].as_ptr(),
            "a hit must not copy"
        );
        tier.remove_version(&"ab".repeat(32));
        assert!(tier.get(&key(99)).is_none());
    }

    #[tokio::test]
    async fn keeps_peer_chunks_only_as_hot_copies() {
        let chunk: Chunk = Bytes::from_static(b"abc").into();
        let cold = MemoryTier::new(1_000_000, false, MemoryMetrics::new(&Registrar::new()));
        cold.keep(&key(1), &chunk, SourceKind::Peer).await;
        cold.keep(&key(2), &chunk, SourceKind::Disk).await;
        assert!(cold.get(&key(1)).is_none());
        assert!(cold.get(&key(2)).is_some());
        let hot = MemoryTier::new(1_000_000, true, MemoryMetrics::new(&Registrar::new()));
        hot.keep(&key(1), &chunk, SourceKind::Peer).await;
        assert!(hot.get(&key(1)).is_some());
    }
}
