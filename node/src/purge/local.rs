//! Removing a purge target from this node's own stores: metadata (memory and disk) and the
//! chunks of every version it named (memory tier, hot copies included, and disk tier).
//!
//! What each costs: a path's metadata is found by key (memory and disk); dropping the chunks of
//! any number of versions scans the memory tier and the disk index once each; only a prefix
//! scans the metadata (memory and disk). [`Scans`] counts them, for `casserole_purge_scans_total`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{fetch::ChunkFetcher, metadata::MetadataStore, tier::disk::DiskTier};

/// What a purge removes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One path (and query), all its versions.
    Path(String),
    /// Every path that starts with this.
    Prefix(String),
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Path(_) => "path",
            Target::Prefix(_) => "prefix",
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Target::Path(p) | Target::Prefix(p) => p,
        }
    }

    /// Paths are matched as the front end sees them: they start with `/`.
    pub fn validate(&self) -> Result<(), String> {
        if !self.text().starts_with('/') {
            return Err(format!("{} must start with '/'", self.kind()));
        }
        Ok(())
    }

    /// The target cut to `max` bytes: a longer path becomes the prefix of its first `max` bytes
    /// (a superset, so nothing it named survives).
    pub fn bounded(self, max: usize) -> Target {
        if self.text().len() <= max {
            return self;
        }
        let text = self.text();
        let cut = super::record::floor_char_boundary(text, max);
        Target::Prefix(text[..cut].to_string())
    }

    /// The target as the front end keys objects: a path in its normalised form
    /// (`/a/./%73` purges `/a/s`), so no spelling of a path escapes its purge.
    pub fn canonical(self) -> Result<Target, String> {
        self.validate()?;
        match self {
            Target::Path(p) => crate::target::validate(&p)
                .map(|clean| Target::Path(clean.into_owned()))
                .map_err(|e| format!("path: {e}")),
            prefix => Ok(prefix),
        }
    }
}

/// The stores a purge removes data from.
#[derive(Clone)]
pub struct LocalStores {
    pub metadata: Arc<MetadataStore>,
    pub fetcher: Arc<ChunkFetcher>,
    pub disk: Option<Arc<DiskTier>>,
}

/// What one local application removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Removed {
    /// Metadata records (objects) dropped.
    pub objects: usize,
    /// Versions whose chunks were dropped (this node's own records, plus those given).
    pub versions: Vec<String>,
    #[serde(skip)]
    pub scans: Scans,
}

/// Whole-store scans one application made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scans {
    pub memory: u64,
    pub disk: u64,
}

impl std::ops::AddAssign for Scans {
    fn add_assign(&mut self, other: Scans) {
        self.memory += other.memory;
        self.disk += other.disk;
    }
}

impl LocalStores {
    /// Drops the target's metadata and the chunks of its versions, plus the chunks of `also`
    /// (versions other members found for the target: a chunk owner need not hold the metadata
    /// of the objects whose chunks it stores).
    pub async fn apply(&self, target: &Target, also: &[String]) -> Removed {
        let mut removed = self.forget(target).await;
        removed.versions.extend(also.iter().cloned());
        removed.versions.sort();
        removed.versions.dedup();
        removed.scans += self.drop_chunks(&removed.versions).await;
        removed
    }

    /// Drops the target's metadata only: after an invalidation a new lookup finds the new
    /// version, whose chunks have other keys, so the old chunks cost nothing but space.
    pub async fn forget(&self, target: &Target) -> Removed {
        let (versions, scans) = match target {
            Target::Path(path) => (self.metadata.purge_path(path).await, Scans::default()),
            Target::Prefix(prefix) => {
                let purged = self.metadata.purge_prefix(prefix).await;
                let scans = Scans {
                    memory: 1,
                    disk: u64::from(self.disk.is_some()),
                };
                (purged.into_iter().map(|(_, v)| v).collect(), scans)
            }
        };
        Removed {
            objects: versions.len(),
            versions,
            scans,
        }
    }

    /// Drops every chunk of `versions`, in memory and on disk: one scan of each, however many
    /// versions.
    pub async fn drop_chunks(&self, versions: &[String]) -> Scans {
        if versions.is_empty() {
            return Scans::default();
        }
        // Fetches of these versions still running keep nothing from now on.
        for version in versions {
            self.fetcher.forget_version(version).await;
        }
        self.fetcher.memory().remove_versions(versions);
        let mut scans = Scans { memory: 1, disk: 0 };
        if let Some(disk) = &self.disk {
            disk.remove_versions(versions).await;
            scans.disk = 1;
        }
        scans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_body_is_the_target() {
        let t: Target = serde_json::from_str(r#"{"path": "/a/b.iso?x=1"}"#).unwrap();
        assert_eq!(t, Target::Path("/a/b.iso?x=1".into()));
        assert_eq!((t.kind(), t.text()), ("path", "/a/b.iso?x=1"));
        let t: Target = serde_json::from_str(r#"{"prefix": "/a/"}"#).unwrap();
        assert_eq!(t, Target::Prefix("/a/".into()));
        assert!(t.validate().is_ok());
        assert!(serde_json::from_str::<Target>(r#"{"glob": "/a/*"}"#).is_err());
        assert!(serde_json::from_str::<Target>(r#"{"path": "/a", "prefix": "/b"}"#).is_err());
        assert!(Target::Path("a/b".into()).validate().is_err());
        assert!(Target::Prefix(String::new()).validate().is_err());
        assert_eq!(
            Target::Path("/a/./%73ecret.iso".into()).canonical(),
            Ok(Target::Path("/a/secret.iso".into()))
        );
        assert!(Target::Path("/a/%2e%2e/x".into()).canonical().is_err());
    }
}
