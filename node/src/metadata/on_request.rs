//! Lookups constrained by the client's own `Cache-Control` (RFC 9111 §5.2.1): a stored copy the
//! request does not accept is confirmed with the upstream first, and `only-if-cached` is
//! answered from what this node holds, or not at all.

use std::sync::{Arc, Mutex};

use super::{unix_now, Asker, Found, LookupError, MetaSource, MetadataStore, Missed};
use crate::{
    object::ObjectMeta,
    policy::{usable, ClientDemands, Usable},
    source::Route,
};

impl MetadataStore {
    /// Metadata of `path` if it is cacheable, and where it came from. With `Route::Cluster`, a
    /// miss asks the owner of the path's metadata first, so every node agrees on one version.
    /// `probe`: a miss is looked up with a `GET` of the chunk holding this byte (the first one
    /// the client wants), whose body becomes that chunk; `None`: with a `HEAD`, for requests
    /// that want no body. A stored copy that does not satisfy `demands` is revalidated first.
    pub async fn lookup(
        &self,
        path: &str,
        route: Route,
        ask: Asker<'_>,
        demands: &ClientDemands,
    ) -> Result<Found, Missed> {
        let found = self.find(path, route, ask, demands).await?;
        if found.source.asked_upstream() {
            return Ok(found);
        }
        match usable(&found.meta, unix_now(), demands) {
            Usable::Revalidate { requested: true } => {
                self.revalidate_on_request(path, (found.meta, found.source), ask)
                    .await
            }
            _ => Ok(found),
        }
    }

    /// The copy of `path` memory holds when it answers `demands` as it is (a lookup would ask
    /// nobody and find it): a hit, counted as `lookup` counts it.
    pub async fn fresh_in_memory(&self, path: &str, demands: &ClientDemands) -> Option<Found> {
        let meta = self.memory.get(path).await?;
        if usable(&meta, unix_now(), demands) != Usable::Fresh {
            return None;
        }
        self.count(MetaSource::Memory);
        Some(Found::without_body(meta, MetaSource::Memory))
    }

    /// `only-if-cached`: what this node holds (memory, then disk) if it satisfies `demands`
    /// as it is. Never asks a peer (whose lookup may go upstream) or the upstream.
    pub async fn lookup_stored(
        &self,
        path: &str,
        demands: &ClientDemands,
    ) -> Option<(Arc<ObjectMeta>, MetaSource)> {
        let served_as =
            |meta: &ObjectMeta, stored: MetaSource| match usable(meta, unix_now(), demands) {
                Usable::Fresh => Some(stored),
                Usable::StaleOnRequest => Some(MetaSource::StaleOnRequest),
                _ => None,
            };
        if let Some(meta) = self.memory.get(path).await {
            if let Some(source) = served_as(&meta, MetaSource::Memory) {
                self.count(source);
                return Some((meta, source));
            }
        }
        let meta = self.stored_on_disk(path).await?;
        let source = served_as(&meta, MetaSource::Disk)?;
        self.memory.insert(path.to_string(), meta.clone()).await;
        self.count(source);
        Some((meta, source))
    }

    /// Confirms `stored` with a conditional request because the client asked to. Requests for
    /// the path that arrive while a confirmation runs share it (their answer comes from the
    /// upstream after they arrived): a burst of reloads costs the upstream one request, and an
    /// object without a validator (every lookup a new version) one new version, not one each.
    /// Only the request whose confirmation ran gets the probe's body.
    async fn revalidate_on_request(
        &self,
        path: &str,
        stored: (Arc<ObjectMeta>, MetaSource),
        ask: Asker<'_>,
    ) -> Result<Found, Missed> {
        let ran = Mutex::new(None);
        let relay = Mutex::new(None);
        let shared = self
            .on_request
            .try_get_with(path.to_string(), async {
                match self.confirm(path, stored.clone(), ask).await {
                    Ok(found) => {
                        let answer = (found.meta.clone(), found.source);
                        *ran.lock().expect("lookup lock") =
                            Some((found.first_chunk, found.withheld));
                        Ok(answer)
                    }
                    Err(missed) => {
                        *ran.lock().expect("lookup lock") = Some(Default::default());
                        *relay.lock().expect("lookup lock") = missed.relay;
                        Err(missed.error)
                    }
                }
            })
            .await;
        let ran = ran.into_inner().expect("lookup lock");
        if ran.is_some() {
            // The next request asks the upstream again.
            self.on_request.invalidate(path).await;
        }
        match shared {
            Ok((meta, source)) => {
                let (first_chunk, withheld) = ran.unwrap_or_default();
                Ok(Found {
                    meta,
                    source,
                    first_chunk,
                    withheld,
                })
            }
            Err(error) => Err(Missed {
                error: (*error).clone(),
                relay: relay.into_inner().expect("lookup lock"),
            }),
        }
    }

    /// One confirmation: a `304` keeps its version and every chunk; a new version replaces it.
    /// When the upstream cannot answer, the stored copy (which the cache's own rules allow) is
    /// served: the request directives state a preference (RFC 9111 §5.2.1), and an outage should
    /// not fail clients that merely asked for a reload.
    async fn confirm(
        &self,
        path: &str,
        stored: (Arc<ObjectMeta>, MetaSource),
        ask: Asker<'_>,
    ) -> Result<Found, Missed> {
        let found = match self.revalidate(path, &stored.0, ask).await {
            Ok(found) => found,
            Err(Missed {
                error: LookupError::Upstream(e),
                ..
            }) => {
                tracing::warn!(path, error = %e,
                    "the upstream could not confirm the stored copy the client asked to confirm; serving it");
                return Ok(Found::without_body(stored.0, stored.1));
            }
            Err(e) => return Err(e),
        };
        self.remember(path, &found.meta).await;
        let source = match found.source {
            MetaSource::Revalidated => MetaSource::RevalidatedOnRequest,
            MetaSource::Upstream if found.meta.version != stored.0.version => {
                MetaSource::ReplacedOnRequest
            }
            other => other,
        };
        self.count(source);
        Ok(Found { source, ..found })
    }
}
