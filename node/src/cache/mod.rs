//! The cache as one request sees it: opening an object looks its metadata up and hands the body
//! of the lookup's probe, when this lookup made one, to the fetcher; the request then reads its
//! ranges, its first chunk through the fetch that body started.
//!
//! This layer sits above `metadata` and `fetch` and below the client front (`http`) and the peer
//! API, so the probe's body moves down the call path and back up (metadata returns it, this
//! layer hands it to the fetcher), never sideways through a handle one keeps of the other.

mod turns;

use std::{
    collections::HashSet,
    ops::RangeInclusive,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use turns::OpenTurns;

use crate::{
    fetch::{ChunkFetcher, LeadingChunk, RangeReader},
    metadata::{Asker, Found, LookupError, MetaSource, MetadataStore, Missed},
    object::ObjectMeta,
    peer::{server::LocalMetadata, wire::MetaAnswer},
    policy::ClientDemands,
    source::Route,
    upstream::UpstreamError,
};

/// A client's target as the cache takes it (see `Cache::key_of`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    pub key: String,
    pub upstream_target: Option<Arc<str>>,
}

impl Keyed {
    /// What the upstream is asked for: the client's target.
    pub fn upstream(&self) -> &str {
        self.upstream_target.as_deref().unwrap_or(&self.key)
    }
}

/// An object opened for one request.
pub struct Opened {
    pub meta: Arc<ObjectMeta>,
    pub source: MetaSource,
    /// The chunk this request's own lookup fetched, read through the fetch it started.
    pub first_chunk: Option<LeadingChunk>,
    /// Fields of the upstream's answer to this request's own lookup that the stored copy
    /// leaves out (`metadata::Found::withheld`).
    pub withheld: http::HeaderMap,
}

pub struct Cache {
    metadata: Arc<MetadataStore>,
    fetcher: Arc<ChunkFetcher>,
    /// Paths being revalidated in the background (stale-while-revalidate), one at a time each.
    revalidating: Arc<Mutex<HashSet<String>>>,
    /// One open of a path at a time (see `turns`).
    turns: OpenTurns,
}

/// Frees a path for the next background revalidation however the current one ends.
struct Revalidating {
    paths: Arc<Mutex<HashSet<String>>>,
    path: String,
}

impl Drop for Revalidating {
    fn drop(&mut self) {
        self.paths
            .lock()
            .expect("revalidating lock")
            .remove(&self.path);
    }
}

impl Cache {
    pub fn new(metadata: Arc<MetadataStore>, fetcher: Arc<ChunkFetcher>) -> Arc<Self> {
        Arc::new(Cache {
            metadata,
            fetcher,
            revalidating: Arc::default(),
            turns: OpenTurns::default(),
        })
    }

    /// Looks `path` up for a request (see `MetadataStore::lookup`); the first chunk comes back
    /// when the lookup fetched it.
    pub async fn open(
        &self,
        path: &str,
        route: Route,
        ask: Asker<'_>,
        demands: &ClientDemands,
    ) -> Result<Opened, Missed> {
        // A hit probes nothing, so it needs no turn (hot objects are opened concurrently), and
        // is the whole lookup. Requests that ask for confirmation collapse onto one another's
        // revalidation below; taking turns would make them ask the upstream one after the other.
        if let Some(found) = self.metadata.fresh_in_memory(path, demands).await {
            // The open that stored this copy may not have handed its probe's body to the
            // fetcher yet: reading the first chunk before it does would fetch that chunk again.
            self.turns.wait_for_open(path).await;
            return Ok(self.opened(path, route, found, ask.upstream_target));
        }
        let _turn = match demands.may_ask_for_confirmation() {
            false => Some(self.turns.take(path).await),
            true => None,
        };
        // Boxed: a lookup's state is large, and a hit, which does not take this path, would
        // carry (and copy) it otherwise.
        let found = Box::pin(self.metadata.lookup(path, route, ask, demands)).await?;
        Ok(self.opened(path, route, found, ask.upstream_target))
    }

    /// The key a client's target is cached under, and the target itself when the upstream must
    /// be asked for it rather than for the key (a signed URL whose signature is not part of the
    /// key); an expired signature is refused (see `Upstream::cache_key`).
    pub fn key_of(&self, target: String) -> Result<Keyed, crate::upstream::SignatureError> {
        let key = match self.metadata.cache_key(&target)? {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(key) => Some(key),
        };
        Ok(match key {
            None => Keyed {
                key: target,
                upstream_target: None,
            },
            Some(key) => Keyed {
                key,
                upstream_target: Some(Arc::from(target)),
            },
        })
    }

    /// A request for `path` passed on a verdict got `status` (see `MetadataStore::passed`).
    pub async fn passed(&self, path: &str, status: u16) {
        self.metadata.passed(path, status).await;
    }

    /// `only-if-cached`: what this node holds, without asking anyone (see
    /// `MetadataStore::lookup_stored`).
    pub async fn open_stored(&self, path: &str, demands: &ClientDemands) -> Option<Opened> {
        let (meta, source) = self.metadata.lookup_stored(path, demands).await?;
        Some(Opened {
            meta,
            source,
            first_chunk: None,
            withheld: http::HeaderMap::new(),
        })
    }

    /// The bytes of `range` (inclusive) of `meta`, with read-ahead; `first_chunk` is the
    /// request's own fetch of the range's first chunk, if its lookup made one.
    pub fn read(
        &self,
        meta: Arc<ObjectMeta>,
        range: RangeInclusive<u64>,
        route: Route,
        first_chunk: Option<LeadingChunk>,
    ) -> RangeReader {
        self.fetcher
            .stream_range(meta, range, route)
            .led_by(first_chunk)
    }

    /// A lookup's answer made ready for its request: a stale copy served now revalidated behind
    /// the request, the request's upstream target attached (its own copy of the metadata), and
    /// the probe's body handed to the fetcher.
    fn opened(
        &self,
        path: &str,
        route: Route,
        found: Found,
        upstream_target: Option<&Arc<str>>,
    ) -> Opened {
        let Found {
            meta,
            source,
            first_chunk,
            withheld,
        } = found;
        if source == MetaSource::StaleWhileRevalidate {
            self.revalidate_in_background(path, route, meta.clone(), upstream_target.cloned());
        }
        let meta = ObjectMeta::for_target(meta, upstream_target);
        let first_chunk = first_chunk.and_then(|body| self.fetcher.adopt_probe(&meta, body));
        Opened {
            meta,
            source,
            first_chunk,
            withheld,
        }
    }

    /// Revalidates `stale` off the request path, one revalidation per path at a time. A new
    /// version's probe body goes to the fetcher like any lookup's, before the new record is
    /// kept, so the first chunk of the new version is not fetched twice.
    fn revalidate_in_background(
        &self,
        path: &str,
        route: Route,
        stale: Arc<ObjectMeta>,
        upstream_target: Option<Arc<str>>,
    ) {
        if !self
            .revalidating
            .lock()
            .expect("revalidating lock")
            .insert(path.to_string())
        {
            return;
        }
        let guard = Revalidating {
            paths: self.revalidating.clone(),
            path: path.to_string(),
        };
        let (metadata, fetcher) = (self.metadata.clone(), self.fetcher.clone());
        tokio::spawn(async move {
            let path = guard.path.as_str();
            let revalidated = metadata
                .revalidate_stale(path, route, stale, upstream_target.as_ref())
                .await;
            match revalidated {
                Ok(Found {
                    meta, first_chunk, ..
                }) => {
                    // The first chunk's fetch exists before the new record is seen: a request
                    // reading the new version joins it instead of fetching the chunk again.
                    if let Some(body) = first_chunk {
                        drop(fetcher.adopt_probe(&meta, body));
                    }
                    metadata.keep_revalidated(path, meta).await;
                }
                Err(missed) => {
                    tracing::warn!(path, error = %missed.error, "background revalidation failed")
                }
            }
        });
    }
}

/// The peer API's metadata lookups: an owner's lookup for a peer probes the object's first
/// chunk, whose body this node keeps like a client's lookup would.
impl LocalMetadata for Cache {
    fn lookup_local<'a>(
        &'a self,
        path: &'a str,
        upstream_target: Option<Arc<str>>,
    ) -> BoxFuture<'a, Result<MetaAnswer, UpstreamError>> {
        Box::pin(async move {
            let _turn = self.turns.take(path).await;
            let target = upstream_target.as_ref();
            match self.metadata.lookup_local(path, target).await {
                Ok(found) => {
                    let opened = self.opened(path, Route::LocalOnly, found, target);
                    Ok(MetaAnswer::Cacheable(Box::new((*opened.meta).clone())))
                }
                Err(missed) => match missed.error {
                    LookupError::Uncacheable(why) => Ok(MetaAnswer::Uncacheable(why)),
                    LookupError::Upstream(e) => Err(e),
                },
            }
        })
    }

    fn is_own(&self, meta: &ObjectMeta) -> bool {
        self.metadata.is_consistent(meta, &meta.path)
    }

    fn keys_to(&self, target: &str, key: &str) -> bool {
        self.metadata
            .cache_key(target)
            .is_ok_and(|computed| computed == key)
    }
}
