//! One flight from start to end: the walk over a chunk's sources, written once (the flight's
//! claim, completion and failure are `single_flight`'s).

use std::{panic::AssertUnwindSafe, sync::Arc, time::Instant};

use bytes::Bytes;
use futures::FutureExt;

use super::{
    flight::{Assembly, Flight},
    single_flight::Claim,
    ChunkFetcher,
};
use crate::{
    object::{ChunkKey, ObjectMeta},
    source::{Chunk, ChunkRequest, ChunkSource, FetchError, Route, SourceKind},
    upstream::UpstreamError,
};

impl ChunkFetcher {
    /// Runs one claimed fetch to its end, independently of the readers: a client that goes away
    /// does not cancel a fetch others may be following.
    pub(super) async fn fly(
        self: Arc<Self>,
        meta: Arc<ObjectMeta>,
        mut claim: Claim,
        route: Route,
        first: Option<Arc<dyn ChunkSource>>,
    ) {
        let key = claim.key().clone();
        // Held while the chunk's bytes live, or until the fetch fails. The budget always covers
        // at least a whole read-ahead window, so one chunk always fits.
        let chunk_bytes = meta.chunk_len(key.index).min(u32::MAX as u64) as u32;
        if let Err(e) = claim.reserve(chunk_bytes).await {
            claim.fail(e);
            return;
        }
        let started = Instant::now();
        let mut walk = self.walk_for(&meta, &key, route);
        if let Some(first) = first {
            walk.insert(1, first);
        }
        match self.fill(&meta, &key, claim.flight(), &walk).await {
            Ok(((chunk, tail), served_by)) => {
                self.metrics
                    .seconds
                    .with_label_values(&[claim.flight().origin().label()])
                    .observe(started.elapsed().as_secs_f64());
                let completing = claim.complete(chunk, tail, served_by).await;
                completing.store(&walk).await;
            }
            Err(e) => {
                // What the failure contradicts is forgotten before the readers hear of it: a
                // response that has sent nothing yet looks the object up again (see
                // `http::serve`), and must not find the same metadata.
                self.after_failure(&meta, &key, &e).await;
                claim.fail(e);
            }
        }
    }

    /// Gets the whole chunk into the flight from the first source that has it. A source that
    /// fails (or panics) is replaced by the next one, which continues where the last stopped.
    async fn fill(
        &self,
        meta: &ObjectMeta,
        key: &ChunkKey,
        flight: &Flight,
        walk: &[Arc<dyn ChunkSource>],
    ) -> Result<((Chunk, Bytes), SourceKind), FetchError> {
        let expected = meta.chunk_len(key.index) as usize;
        let mut assembly = Assembly::new(expected, flight);
        let mut last_error = None;
        for source in walk {
            let kind = source.kind();
            let request = ChunkRequest {
                meta,
                key,
                offset: assembly.received() as u64,
            };
            let attempt = AssertUnwindSafe(async {
                let Some(opened) = source.open(request).await? else {
                    return Ok(false);
                };
                flight.set_origin(opened.origin);
                assembly.pump(opened, kind).await.map(|()| true)
            })
            .catch_unwind()
            .await
            .unwrap_or(Err(FetchError::Panicked(kind)));
            match attempt {
                Ok(true) => {
                    self.count_lookup(kind.label());
                    return Ok((assembly.finish(), kind));
                }
                Ok(false) => {}
                Err(e) => {
                    self.metrics
                        .source_errors
                        .with_label_values(&[e.party()])
                        .inc();
                    source.failed(&e);
                    if !e.fails_over() {
                        return Err(e);
                    }
                    tracing::debug!(chunk = %key, source = %kind, error = %e, "chunk source failed; trying the next");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or(FetchError::NoSource))
    }

    /// Drops metadata the upstream contradicted, so the next request looks the object up afresh
    /// rather than failing on stale metadata forever.
    async fn after_failure(&self, meta: &ObjectMeta, key: &ChunkKey, e: &FetchError) {
        match e {
            FetchError::Upstream(UpstreamError::Changed(why)) => {
                self.metrics.objects_changed.inc();
                tracing::warn!(path = %meta.path, version = %meta.version, reason = %why,
                    "object changed upstream during a fetch; metadata dropped, response aborted");
                self.sources.memory.remove_version(&meta.version);
                if let Some(metadata) = &self.metadata {
                    metadata.invalidate(meta, true).await;
                }
            }
            FetchError::Upstream(
                UpstreamError::BadRange(_)
                | UpstreamError::Truncated { .. }
                | UpstreamError::TooLong { .. },
            ) => {
                tracing::warn!(path = %meta.path, chunk = %key, error = %e,
                    "chunk fetch failed; metadata dropped");
                if let Some(metadata) = &self.metadata {
                    metadata.invalidate(meta, false).await;
                }
            }
            _ => tracing::warn!(path = %meta.path, chunk = %key, error = %e, "chunk fetch failed"),
        }
    }
}
