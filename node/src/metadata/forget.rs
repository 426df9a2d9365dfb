//! Forgetting metadata records: purges (by path or prefix) and objects found changed or
//! inconsistent upstream. Part of `MetadataStore` (see `ask` for how its methods are split).

use super::MetadataStore;
use crate::object::ObjectMeta;

impl MetadataStore {
    /// Forgets every record of `path`, in memory and on disk, whatever its version (a purge);
    /// returns the versions those records named, so their chunks can be dropped too.
    pub async fn purge_path(&self, path: &str) -> Vec<String> {
        let mut versions = Vec::new();
        if let Some(meta) = self.memory.remove(path).await {
            versions.push(meta.version.clone());
        }
        self.uncacheable.invalidate(path).await;
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

    /// A request for `path` relayed on a pass verdict got `status`: where the verdict came from
    /// an answer without the object (a `404`, a redirect, a refusal) and this one has it, the
    /// object has appeared (a package published, a mirror synced), and the verdict goes, so the
    /// next request looks it up and may store it rather than relay it for the rest of the
    /// verdict's minute. A verdict on an object that is there (`no-store`, `Set-Cookie`) stays.
    pub async fn passed(&self, path: &str, status: u16) {
        let has_the_object = |s: u16| matches!(s, 200 | 206);
        let Some(verdict) = self.uncacheable.get(path).await else {
            return;
        };
        if has_the_object(status) && verdict.status.is_some_and(|s| !has_the_object(s)) {
            tracing::debug!(
                path,
                status,
                "the object has appeared; its pass verdict is dropped"
            );
            self.uncacheable.invalidate(path).await;
        }
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
