//! Persistent disk tier: one file per chunk, plus small metadata blobs. Both kinds count
//! against `max_bytes` and are evicted in one least-recently-used order.
//!
//! Layout under `dir`:
//! - `tmp/`                         files being written; anything here at `open` is debris of a crash
//! - `chunks/<vv>/<version>-<index>` (`vv` = first two hex chars of the version, to keep directories small)
//! - `meta/<sha256(name) hex>`
//!
//! Every file is `header ++ key ++ payload`, so a renamed, truncated or bit-flipped file is
//! detected on read and dropped instead of served.
//!
//! Concurrency: the index sits under one `std::sync::Mutex` that is never held across `.await`
//! nor during file I/O. Each operation runs entirely inside `spawn_blocking`, index update
//! included, so a caller dropping the future mid-way cannot leave the index out of step with
//! the directory. Two path sets keep writers and deleters apart:
//! - `writing`: a put is in progress for this path; deleters (eviction, `remove_version`,
//!   corruption clean-up) leave the path alone.
//! - `deleting`: a deleter owns this path; a writer waits before renaming into it, so a
//!   deleter's `unlink` can never hit a freshly written file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    time::SystemTime,
};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::object::ChunkKey;

mod format;
mod index;
mod metrics;
mod open;
mod source;
use format::{
    encode_header, file_len, read_verified, stored_key, valid_version, Loaded, KIND_CHUNK,
    KIND_META,
};
pub use metrics::DiskMetrics;

use index::{FileKey, State};

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

/// How many victims one eviction pass claims at once, to keep each hold of the index lock short.
const EVICT_BATCH: usize = 64;

pub struct DiskConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub cleaned_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("disk full")]
    Full,
    #[error("entry of {size} bytes exceeds the disk tier maximum of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("invalid key: {0}")]
    InvalidKey(String),
}

impl DiskError {
    /// ENOSPC gets its own variant so callers can tell "disk full" from "disk broken".
    fn from_io(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::StorageFull {
            DiskError::Full
        } else {
            DiskError::Io(e)
        }
    }
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    cleaned_bytes: u64,
    metrics: DiskMetrics,
    state: Mutex<State>,
    /// Signalled whenever paths leave `deleting`.
    deleted: Condvar,
    tmp_seq: AtomicU64,
}

pub struct DiskTier {
    inner: Arc<Inner>,
}

impl DiskTier {
    /// Creates dirs, removes leftover temp files, rebuilds the index from the directory, evicts if over max.
    pub async fn open(cfg: DiskConfig, metrics: DiskMetrics) -> Result<Arc<DiskTier>, DiskError> {
        let inner = blocking(move || open::open_blocking(cfg, metrics)).await?;
        Ok(Arc::new(DiskTier {
            inner: Arc::new(inner),
        }))
    }

    pub fn contains(&self, key: &ChunkKey) -> bool {
        let key = FileKey::Chunk(key.clone());
        self.inner.lock().index.contains_key(&key)
    }

    /// Reads and verifies a chunk; corrupt or truncated files are deleted and reported as a miss.
    pub async fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        // Misses are answered from the index without a trip to the blocking pool.
        if !self.contains(key) || !valid_version(&key.version) {
            return None;
        }
        let inner = self.inner.clone();
        let key = key.clone();
        blocking(move || Ok(inner.get_chunk_blocking(&key)))
            .await
            .ok()
            .flatten()
    }

    /// Stores a chunk crash-safely; an error leaves the tier as it was (the caller just doesn't cache).
    pub async fn put(&self, key: &ChunkKey, data: Bytes) -> Result<(), DiskError> {
        if !valid_version(&key.version) {
            return Err(DiskError::InvalidKey(key.to_string()));
        }
        let size = file_len(key.to_string().len(), data.len());
        if size > self.inner.max_bytes {
            return Err(DiskError::TooLarge {
                size,
                max: self.inner.max_bytes,
            });
        }
        let inner = self.inner.clone();
        let name = key.to_string();
        let key = FileKey::Chunk(key.clone());
        let rt = Handle::current();
        blocking(move || inner.put_blocking(key, KIND_CHUNK, name.as_bytes(), &data, &rt)).await
    }

    /// Drops every chunk of `version`. Chunks of it still being written land afterwards; callers
    /// stop writing a version before removing it.
    pub async fn remove_version(&self, version: &str) {
        self.remove_versions(&[version]).await;
    }

    /// [`DiskTier::remove_version`] for each of `versions`, in one pass over the index.
    pub async fn remove_versions<V: AsRef<str>>(&self, versions: &[V]) {
        let inner = self.inner.clone();
        let versions: std::collections::HashSet<String> =
            versions.iter().map(|v| v.as_ref().to_owned()).collect();
        let _ = blocking(move || {
            let victims = inner.claim_victims(|st| {
                st.index
                    .keys()
                    .filter(|k| matches!(k, FileKey::Chunk(c) if versions.contains(&*c.version)))
                    .cloned()
                    .collect()
            });
            inner.delete_claimed(victims);
            Ok(())
        })
        .await;
    }

    pub async fn get_meta(&self, name: &str) -> Option<Bytes> {
        let inner = self.inner.clone();
        let name = name.to_owned();
        blocking(move || Ok(inner.get_meta_blocking(&name)))
            .await
            .ok()
            .flatten()
    }

    pub async fn put_meta(&self, name: &str, data: Bytes) -> Result<(), DiskError> {
        if name.len() > u16::MAX as usize {
            return Err(DiskError::InvalidKey(format!(
                "metadata name of {} bytes",
                name.len()
            )));
        }
        let size = file_len(name.len(), data.len());
        if size > self.inner.max_bytes {
            return Err(DiskError::TooLarge {
                size,
                max: self.inner.max_bytes,
            });
        }
        let inner = self.inner.clone();
        let key = meta_key(name);
        let name = name.to_owned();
        let rt = Handle::current();
        blocking(move || inner.put_blocking(key, KIND_META, name.as_bytes(), &data, &rt)).await
    }

    pub async fn remove_meta(&self, name: &str) {
        let inner = self.inner.clone();
        let name = name.to_owned();
        let _ = blocking(move || {
            let key = meta_key(&name);
            let path = inner.path_of(&key);
            let mut st = inner.lock();
            while st.deleting.contains(&path) {
                st = inner.wait(st);
            }
            st.deleting.insert(path.clone());
            st.remove(&key);
            inner.publish(&st);
            drop(st);
            remove_quietly(&path);
            inner.release(std::slice::from_ref(&path));
            Ok(())
        })
        .await;
    }

    /// Names of every metadata record, for scans (a prefix purge); reads one header per record.
    pub async fn meta_names(&self) -> Vec<String> {
        let dir = self.inner.dir.join("meta");
        blocking(move || {
            let mut names = Vec::new();
            for e in fs::read_dir(&dir)?.flatten() {
                if let Ok(Some(key)) = stored_key(&e.path(), KIND_META) {
                    names.extend(String::from_utf8(key).ok());
                }
            }
            Ok(names)
        })
        .await
        .unwrap_or_default()
    }

    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().used
    }

    pub fn chunk_count(&self) -> usize {
        self.inner.lock().chunks
    }

    pub fn meta_count(&self) -> usize {
        self.inner.lock().meta_files()
    }
}

/// The index key of a metadata record: its file name, the hex SHA-256 of the record's name
/// (names are long URLs; the hash keeps file names short and free of separators).
fn meta_key(name: &str) -> FileKey {
    FileKey::Meta(hex::encode(Sha256::digest(name.as_bytes())).into())
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the whole tier down; the state stays structurally valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.deleted.wait(g).unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, st: &State) {
        self.metrics.used_bytes.set(st.used as i64);
        self.metrics.chunks.set(st.chunks as i64);
        self.metrics.meta_files.set(st.meta_files() as i64);
    }

    fn chunk_path(&self, key: &ChunkKey) -> PathBuf {
        let mut p = self.dir.join("chunks");
        p.push(&key.version[..2]);
        p.push(key.to_string());
        p
    }

    fn path_of(&self, key: &FileKey) -> PathBuf {
        match key {
            FileKey::Chunk(chunk) => self.chunk_path(chunk),
            FileKey::Meta(file) => self.dir.join("meta").join(&**file),
        }
    }

    #[cfg(test)]
    fn meta_path(&self, name: &str) -> PathBuf {
        self.path_of(&meta_key(name))
    }

    fn register_writer(&self, path: &Path) {
        *self.lock().writing.entry(path.to_owned()).or_default() += 1;
    }

    fn unregister_writer(&self, path: &Path) {
        let mut st = self.lock();
        if let Some(n) = st.writing.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                st.writing.remove(path);
            }
        }
    }

    fn release(&self, paths: &[PathBuf]) {
        let mut st = self.lock();
        for p in paths {
            st.deleting.remove(p);
        }
        drop(st);
        self.deleted.notify_all();
    }

    /// temp file → header+payload → fsync → rename → fsync dir. Returns the file length; on Err
    /// the temp file is gone and the final path untouched.
    fn write_file(&self, path: &Path, kind: u8, key: &[u8], data: &[u8]) -> Result<u64, DiskError> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.{seq}", std::process::id()));
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&encode_header(kind, key, data))?;
            f.write_all(data)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            remove_quietly(&tmp);
            return Err(DiskError::from_io(e));
        }
        // A deleter that claimed this path before we registered still owns it; renaming now
        // would let its unlink remove our new file.
        let mut st = self.lock();
        while st.deleting.contains(path) {
            st = self.wait(st);
        }
        drop(st);
        if let Err(e) = fs::rename(&tmp, path) {
            remove_quietly(&tmp);
            return Err(DiskError::from_io(e));
        }
        // Without this the rename itself may not survive a power cut. The file is in place and
        // complete either way, so report the failure but let the caller index it: an Err from
        // here always means nothing changed on disk.
        if let Err(e) = sync_dir(path.parent().expect("entry paths have a parent")) {
            self.metrics.write_errors.inc();
            warn!(file = ?path, error = %e, "disk tier directory fsync failed");
        }
        Ok(file_len(key.len(), data.len()))
    }

    /// Writes a chunk or metadata file and indexes it. A full file system (ENOSPC) below
    /// `max_bytes` evicts to make room and retries once, so the tier recovers by itself.
    fn put_blocking(
        self: &Arc<Self>,
        key: FileKey,
        kind: u8,
        name: &[u8],
        data: &[u8],
        rt: &Handle,
    ) -> Result<(), DiskError> {
        let path = self.path_of(&key);
        self.register_writer(&path);
        let mut res = self.write_file(&path, kind, name, data);
        if matches!(res, Err(DiskError::Full)) && self.make_room(file_len(name.len(), data.len())) {
            res = self.write_file(&path, kind, name, data);
        }
        let mut start_eviction = false;
        {
            let mut st = self.lock();
            if let Ok(n) = res {
                st.insert(key, n);
            }
            if st.used > self.max_bytes && !st.evicting {
                st.evicting = true;
                start_eviction = true;
            }
            self.publish(&st);
        }
        self.unregister_writer(&path);
        if start_eviction {
            let me = self.clone();
            // Evict on another blocking thread so this put returns as soon as its data is safe.
            rt.spawn_blocking(move || me.evict());
        }
        res.map(|_| ()).inspect_err(|e| {
            self.metrics.write_errors.inc();
            warn!(file = ?path, error = %e, "disk tier write failed");
        })
    }

    /// After ENOSPC: evicts at least `needed` bytes (and a tenth of the tier, so the next write
    /// does not hit the wall at once). False when the tier holds too little for that to help.
    fn make_room(&self, needed: u64) -> bool {
        let used = self.lock().used;
        if used < needed {
            return false;
        }
        self.metrics.disk_full.inc();
        let target = used
            .saturating_sub(needed)
            .min(used - used / 10)
            .min(self.cleaned_bytes);
        let evicted = self.evict_down_to(target);
        warn!(
            used,
            target,
            evicted,
            "file system full below --max-disk-usage; evicted to make room \
            (lower --max-disk-usage to the space really available)"
        );
        evicted > 0
    }

    fn get_chunk_blocking(&self, key: &ChunkKey) -> Option<Bytes> {
        let path = self.chunk_path(key);
        let name = key.to_string();
        match read_verified(&path, KIND_CHUNK, name.as_bytes()) {
            Ok(Loaded::Good(payload, file)) => {
                // mtime carries recency across restarts; failing to update it only costs order.
                let _ = file.set_modified(SystemTime::now());
                self.lock().touch(&FileKey::Chunk(key.clone()));
                Some(payload)
            }
            Ok(Loaded::Corrupt(why, ino)) => {
                warn!(chunk = %key, why, "disk tier dropping corrupt chunk");
                self.metrics.checksum_failures.inc();
                self.discard(&path, &FileKey::Chunk(key.clone()), Some(ino));
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Lost a race with eviction, or someone removed the file behind our back.
                self.discard(&path, &FileKey::Chunk(key.clone()), None);
                None
            }
            Err(e) => {
                warn!(chunk = %key, error = %e, "disk tier read failed");
                self.metrics.read_errors.inc();
                None
            }
        }
    }

    fn get_meta_blocking(&self, name: &str) -> Option<Bytes> {
        let key = meta_key(name);
        let path = self.path_of(&key);
        match read_verified(&path, KIND_META, name.as_bytes()) {
            Ok(Loaded::Good(payload, file)) => {
                let _ = file.set_modified(SystemTime::now());
                self.lock().touch(&key);
                Some(payload)
            }
            Ok(Loaded::Corrupt(why, ino)) => {
                warn!(meta = name, why, "disk tier dropping corrupt metadata");
                self.metrics.checksum_failures.inc();
                self.discard(&path, &key, Some(ino));
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.discard(&path, &key, None);
                None
            }
            Err(e) => {
                warn!(meta = name, error = %e, "disk tier metadata read failed");
                self.metrics.read_errors.inc();
                None
            }
        }
    }

    /// Deletes `path` only if it still is the file we inspected (`seen_ino`; None = we saw no
    /// file), so a good file that a concurrent put renamed into place is never thrown away.
    fn discard(&self, path: &Path, key: &FileKey, seen_ino: Option<u64>) {
        let mut st = self.lock();
        loop {
            if st.writing.contains_key(path) {
                return; // the writer replaces the file and the index entry
            }
            if !st.deleting.contains(path) {
                break;
            }
            st = self.wait(st);
        }
        st.deleting.insert(path.to_owned());
        drop(st);
        let gone = match fs::symlink_metadata(path) {
            Ok(m) if Some(m.ino()) == seen_ino => fs::remove_file(path).is_ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => seen_ino.is_none(),
            _ => false,
        };
        let mut st = self.lock();
        st.deleting.remove(path);
        if gone {
            st.remove(key);
            self.publish(&st);
        }
        drop(st);
        self.deleted.notify_all();
    }

    /// Under the lock: picks chunks with `select`, skips those being written or deleted, drops
    /// them from the index and claims their paths. Returns the claimed paths for deletion.
    fn claim_victims(&self, select: impl FnOnce(&State) -> Vec<FileKey>) -> Vec<PathBuf> {
        let mut st = self.lock();
        let mut paths = Vec::new();
        for key in select(&st) {
            let path = self.path_of(&key);
            if st.busy(&path) {
                continue;
            }
            st.remove(&key);
            st.deleting.insert(path.clone());
            paths.push(path);
        }
        self.publish(&st);
        paths
    }

    fn delete_claimed(&self, paths: Vec<PathBuf>) {
        for p in &paths {
            remove_quietly(p);
        }
        self.release(&paths);
    }

    /// Evicts least recently used files until used <= cleaned_bytes; the single background
    /// evictor (`evicting`) started by a put that crossed max_bytes.
    fn evict(&self) {
        loop {
            self.evict_down_to(self.cleaned_bytes);
            // A put that crossed max_bytes meanwhile saw `evicting` and left the work to us:
            // re-check under the lock before clearing it, or nobody would evict.
            let mut st = self.lock();
            if st.used <= self.cleaned_bytes || !st.lru.values().any(|k| !st.busy(&self.path_of(k)))
            {
                st.evicting = false;
                return;
            }
        }
    }

    /// Evicts least recently used files, skipping busy ones, until used <= target or none is
    /// left to evict. Returns how many files went.
    fn evict_down_to(&self, target: u64) -> usize {
        let mut total = 0;
        loop {
            let victims = self.claim_victims(|st| {
                let mut over = st.used.saturating_sub(target);
                let mut keys = Vec::new();
                for key in st.lru.values() {
                    if over == 0 || keys.len() == EVICT_BATCH {
                        break;
                    }
                    if st.busy(&self.path_of(key)) {
                        continue;
                    }
                    over = over.saturating_sub(st.index[key].size);
                    keys.push(key.clone());
                }
                keys
            });
            if victims.is_empty() {
                return total;
            }
            total += victims.len();
            self.metrics.evictions.inc_by(victims.len() as u64);
            debug!(count = victims.len(), "disk tier evicting");
            self.delete_claimed(victims);
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(file = ?path, error = %e, "disk tier could not remove file");
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DiskError> + Send + 'static,
) -> Result<T, DiskError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(DiskError::Io(io::Error::other(e))))
}
