//! The file index: size and recency of every chunk and metadata file, plus the writer/deleter
//! path sets.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::object::ChunkKey;

/// A file of the disk tier: both kinds count against the byte bound and share one LRU order,
/// so a flood of distinct metadata records is evicted like chunks are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum FileKey {
    Chunk(ChunkKey),
    /// The metadata file's name: the hex SHA-256 of the record's name.
    Meta(Arc<str>),
}

pub(super) struct Entry {
    pub(super) size: u64,
    pub(super) tick: u64,
}

/// File index with LRU order. Hand-written rather than the `lru` crate because eviction is by
/// byte watermark, must skip paths being written or deleted, and the order is seeded from file
/// mtimes at startup; a HashMap plus a BTreeMap keyed by a logical access clock does all of that
/// in a few lines with O(log n) touches.
#[derive(Default)]
pub(super) struct State {
    pub(super) index: HashMap<FileKey, Entry>,
    pub(super) lru: BTreeMap<u64, FileKey>,
    pub(super) clock: u64,
    pub(super) used: u64,
    /// How many index entries are chunks (the rest are metadata files).
    pub(super) chunks: usize,
    pub(super) writing: HashMap<PathBuf, u32>,
    pub(super) deleting: HashSet<PathBuf>,
    pub(super) evicting: bool,
}

impl State {
    pub(super) fn insert(&mut self, key: FileKey, size: u64) {
        self.remove(&key);
        self.clock += 1;
        self.lru.insert(self.clock, key.clone());
        if matches!(key, FileKey::Chunk(_)) {
            self.chunks += 1;
        }
        self.index.insert(
            key,
            Entry {
                size,
                tick: self.clock,
            },
        );
        self.used += size;
    }

    pub(super) fn remove(&mut self, key: &FileKey) -> Option<u64> {
        let e = self.index.remove(key)?;
        self.lru.remove(&e.tick);
        self.used -= e.size;
        if matches!(key, FileKey::Chunk(_)) {
            self.chunks -= 1;
        }
        Some(e.size)
    }

    pub(super) fn touch(&mut self, key: &FileKey) {
        if let Some(e) = self.index.get_mut(key) {
            self.lru.remove(&e.tick);
            self.clock += 1;
            e.tick = self.clock;
            self.lru.insert(self.clock, key.clone());
        }
    }

    pub(super) fn meta_files(&self) -> usize {
        self.index.len() - self.chunks
    }

    pub(super) fn busy(&self, path: &Path) -> bool {
        self.writing.contains_key(path) || self.deleting.contains(path)
    }
}
