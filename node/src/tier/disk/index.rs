//! The chunk index: size and recency of every chunk file, plus the writer/deleter path sets.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
};

use crate::object::ChunkKey;

pub(super) struct Entry {
    pub(super) size: u64,
    pub(super) tick: u64,
}

/// Chunk index with LRU order. Hand-written rather than the `lru` crate because eviction is by
/// byte watermark, must skip paths being written or deleted, and the order is seeded from file
/// mtimes at startup; a HashMap plus a BTreeMap keyed by a logical access clock does all of that
/// in a few lines with O(log n) touches.
#[derive(Default)]
pub(super) struct State {
    pub(super) index: HashMap<ChunkKey, Entry>,
    pub(super) lru: BTreeMap<u64, ChunkKey>,
    pub(super) clock: u64,
    pub(super) used: u64,
    pub(super) writing: HashMap<PathBuf, u32>,
    pub(super) deleting: HashSet<PathBuf>,
    pub(super) evicting: bool,
}

impl State {
    pub(super) fn insert(&mut self, key: ChunkKey, size: u64) {
        self.remove(&key);
        self.clock += 1;
        self.lru.insert(self.clock, key.clone());
        self.index.insert(
            key,
            Entry {
                size,
                tick: self.clock,
            },
        );
        self.used += size;
    }

    pub(super) fn remove(&mut self, key: &ChunkKey) -> Option<u64> {
        let e = self.index.remove(key)?;
        self.lru.remove(&e.tick);
        self.used -= e.size;
        Some(e.size)
    }

    pub(super) fn touch(&mut self, key: &ChunkKey) {
        if let Some(e) = self.index.get_mut(key) {
            self.lru.remove(&e.tick);
            self.clock += 1;
            e.tick = self.clock;
            self.lru.insert(self.clock, key.clone());
        }
    }

    pub(super) fn busy(&self, path: &Path) -> bool {
        self.writing.contains_key(path) || self.deleting.contains(path)
    }
}
