//! The local memory tier: chunks in a moka cache bounded by bytes.
//!
//! Chunks are `Bytes`, so a hit hands out a reference-counted view, never a copy.

use std::sync::Arc;

use moka::{notification::RemovalCause, sync::Cache};

use super::Chunk;
use crate::{metrics::Metrics, object::ChunkKey};

/// Bytes a cached entry costs beyond its payload (key, moka's entry bookkeeping); an estimate,
/// so the bound stays honest for small chunks too.
const ENTRY_OVERHEAD: u64 = 160;

pub struct MemoryTier {
    chunks: Cache<ChunkKey, Chunk>,
    metrics: Arc<Metrics>,
}

impl MemoryTier {
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let evictions = metrics.memory_evictions.clone();
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
        MemoryTier { chunks, metrics }
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
        let version: Arc<str> = Arc::from(version);
        // invalidate_entries_if needs support_invalidation_closures; versions are rare to drop,
        // so a scan of the keys is acceptable.
        for (key, _) in self.chunks.iter() {
            if key.version == version {
                self.chunks.invalidate(key.as_ref());
            }
        }
    }

    /// Brings the size gauges up to date (called before metrics are rendered).
    pub fn refresh_gauges(&self) {
        self.chunks.run_pending_tasks();
        self.metrics
            .memory_bytes
            .set(self.chunks.weighted_size() as i64);
        self.metrics
            .memory_chunks
            .set(self.chunks.entry_count() as i64);
    }

    pub fn weighted_size(&self) -> u64 {
        self.chunks.run_pending_tasks();
        self.chunks.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(i: u64) -> ChunkKey {
        ChunkKey {
            version: Arc::from("ab".repeat(32)),
            index: i,
        }
    }

    #[test]
    fn stays_within_its_byte_bound_and_hits_share_bytes() {
        let m = Arc::new(Metrics::unregistered());
        let tier = MemoryTier::new(1_000_000, m.clone());
        for i in 0..50 {
            tier.insert(key(i), Bytes::from(vec![i as u8; 100_000]).into());
        }
        assert!(
            tier.weighted_size() <= 1_000_000,
            "{}",
            tier.weighted_size()
        );
        assert!(m.memory_evictions.get() >= 40);
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
}
