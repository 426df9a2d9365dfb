//! Opening the disk tier: directories, crash debris, and the index rebuilt from the files.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Arc, Condvar, Mutex},
    time::SystemTime,
};

use tracing::{debug, warn};

use super::{
    format::{file_len, parse_chunk_name, parse_meta_name, HEADER_FIXED},
    index::{FileKey, State},
    remove_quietly, sync_dir, DiskConfig, DiskError, DiskMetrics, Inner,
};

pub(super) fn open_blocking(cfg: DiskConfig, metrics: DiskMetrics) -> Result<Inner, DiskError> {
    let dir = cfg.dir;
    for sub in ["tmp", "chunks", "meta"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    // Debris of a crash mid-write: never renamed, so never visible; just reclaim the space.
    for e in fs::read_dir(dir.join("tmp"))? {
        let e = e?;
        debug!(file = ?e.path(), "removing leftover temp file");
        remove_quietly(&e.path());
    }
    // Creating all shard dirs up front spares puts a mkdir (and its directory fsync).
    for b in 0..=255u8 {
        fs::create_dir_all(dir.join("chunks").join(hex::encode([b])))?;
    }
    sync_dir(&dir.join("chunks"))?;

    // Stat only: reading every header would make startup of a large cache slow, and get()
    // verifies each file before serving it anyway.
    let mut found = scan_chunks(&dir, &metrics)?;
    found.extend(scan_meta(&dir, &metrics)?);
    found.sort_by_key(|(mtime, _, _)| *mtime);
    let mut st = State::default();
    for (_, key, size) in found {
        st.insert(key, size);
    }
    let inner = Inner {
        dir,
        max_bytes: cfg.max_bytes,
        cleaned_bytes: cfg.cleaned_bytes.min(cfg.max_bytes),
        metrics,
        state: Mutex::new(st),
        deleted: Condvar::new(),
        tmp_seq: AtomicU64::new(0),
    };
    inner.publish(&inner.lock());
    if inner.lock().used > inner.max_bytes {
        inner.lock().evicting = true;
        inner.evict();
    }
    Ok(inner)
}

type Found = Vec<(SystemTime, FileKey, u64)>;

fn scan_chunks(dir: &Path, metrics: &DiskMetrics) -> Result<Found, DiskError> {
    let mut found = Vec::new();
    for shard in fs::read_dir(dir.join("chunks"))? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for e in fs::read_dir(shard.path())? {
            let e = e?;
            let Ok(m) = e.metadata() else { continue }; // vanished while we scanned
            let Some(key) = parse_chunk_name(&e.file_name().to_string_lossy()) else {
                warn!(file = ?e.path(), "ignoring unknown file in disk cache");
                continue;
            };
            if !m.is_file() || key.version[..2] != *shard.file_name().to_string_lossy() {
                warn!(file = ?e.path(), "ignoring misplaced file in disk cache");
                continue;
            }
            if m.len() < file_len(key.to_string().len(), 0) {
                metrics.checksum_failures.inc();
                remove_quietly(&e.path());
                continue;
            }
            let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((mtime, FileKey::Chunk(key), m.len()));
        }
    }
    Ok(found)
}

/// Metadata files count against the bound like chunks, so they are indexed at start too.
fn scan_meta(dir: &Path, metrics: &DiskMetrics) -> Result<Found, DiskError> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir.join("meta"))? {
        let e = e?;
        let Ok(m) = e.metadata() else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        let path: PathBuf = e.path();
        if !m.is_file() || parse_meta_name(&name).is_none() {
            warn!(file = ?path, "ignoring unknown file in disk cache metadata");
            continue;
        }
        if m.len() < HEADER_FIXED as u64 {
            metrics.checksum_failures.inc();
            remove_quietly(&path);
            continue;
        }
        let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((mtime, FileKey::Meta(Arc::from(name)), m.len()));
    }
    Ok(found)
}
