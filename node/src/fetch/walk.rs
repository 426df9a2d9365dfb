//! One flight from start to end: the walk over a chunk's sources, written once.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Instant};

use bytes::Bytes;
use futures::FutureExt;

use super::{
    flight::{Assembly, Flight},
    ChunkFetcher,
};
use crate::{
    object::{ChunkKey, ObjectMeta},
    source::{Chunk, ChunkRequest, ChunkSource, FetchError, Route, SourceKind},
    upstream::UpstreamError,
};

/// Ends a flight however its task ends (panic or cancellation included): readers see a failure
/// rather than waiting forever, and the chunk leaves the in-flight map so the next request
/// fetches it afresh.
struct FlightGuard<'a> {
    fetcher: &'a ChunkFetcher,
    key: &'a ChunkKey,
    flight: &'a Arc<Flight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.fetcher.leave_map(self.key, self.flight);
        if self.flight.is_running() {
            self.flight.fail(FetchError::Abandoned);
        }
    }
}

/// A flight's share of the fetch memory budget, shown in `casserole_fetch_flight_bytes` while
/// held.
struct Budget {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    gauge: prometheus::IntGauge,
    bytes: i64,
}

impl Budget {
    /// The fetch is over: its memory share now goes with the chunk (see `Chunk::pinned`).
    fn into_pin(mut self) -> Arc<tokio::sync::OwnedSemaphorePermit> {
        Arc::new(self.permit.take().expect("taken once"))
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

impl ChunkFetcher {
    /// Removes `flight` from the in-flight map unless a newer flight took its place.
    pub(super) fn leave_map(&self, key: &ChunkKey, flight: &Arc<Flight>) {
        let mut flights = self.flights.lock().expect("flights lock");
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
    }

    /// Runs one flight to its end, independently of the readers: a client that goes away does not
    /// cancel a fetch others may be following.
    pub(super) async fn fly(
        self: Arc<Self>,
        meta: Arc<ObjectMeta>,
        key: ChunkKey,
        flight: Arc<Flight>,
        route: Route,
        first: Option<Arc<dyn ChunkSource>>,
    ) {
        let _guard = FlightGuard {
            fetcher: &self,
            key: &key,
            flight: &flight,
        };
        // Held while the chunk's bytes live (see below), or until the fetch fails. The budget
        // always covers at least a whole read-ahead window, so one chunk always fits.
        let chunk_bytes = meta.chunk_len(key.index).min(u32::MAX as u64) as u32;
        let wait = self.cfg.budget_timeout;
        let acquire = self.flight_budget.clone().acquire_many_owned(chunk_bytes);
        let budget = match tokio::time::timeout(wait, acquire).await {
            Ok(permit) => {
                self.metrics.flight_bytes.add(i64::from(chunk_bytes));
                Budget {
                    permit: Some(permit.expect("the flight budget is never closed")),
                    gauge: self.metrics.flight_bytes.clone(),
                    bytes: i64::from(chunk_bytes),
                }
            }
            Err(_) => {
                tracing::warn!(chunk = %key, ?wait, "no memory budget for a chunk fetch");
                flight.fail(FetchError::Busy(wait));
                return;
            }
        };
        let started = Instant::now();
        let mut walk = self.walk_for(&meta, &key, route);
        if let Some(first) = first {
            walk.insert(1, first);
        }
        match self.fill(&meta, &key, &flight, &walk).await {
            Ok(((chunk, tail), served_by)) => {
                // The chunk's bytes stay counted while the tier or any reader holds them, so
                // chunks pinned by readers (stalled ones included) hold back new fetches
                // instead of growing the process past --max-memory-usage.
                let pin = budget.into_pin();
                let chunk = chunk.pinned(pin.clone());
                flight.hold(pin);
                self.metrics
                    .seconds
                    .with_label_values(&[flight.origin().label()])
                    .observe(started.elapsed().as_secs_f64());
                let (memory, stores): (Vec<_>, Vec<_>) =
                    walk.iter().partition(|s| s.kind() == SourceKind::Memory);
                for store in memory {
                    store.keep(&key, &chunk, served_by).await;
                }
                flight.finish(chunk.clone(), tail);
                for store in stores {
                    store.keep(&key, &chunk, served_by).await;
                }
                // The flight leaves the map only now that every store has kept the chunk (or
                // refused it); until then it answers as a hit (`open`). Leaving right after the
                // memory tier was wrong: the tier may turn the chunk away (its admission favours
                // chunks read more often, so a tier full of a large object refuses a new one's
                // chunks) and the disk write takes a while (fsync), so a request arriving in
                // between (the probing request's own first chunk, `wget -c` resuming inside the
                // chunk it was cut in) found the chunk nowhere and fetched it upstream again.
                self.leave_map(&key, &flight);
            }
            Err(e) => {
                self.leave_map(&key, &flight);
                flight.fail(e.clone());
                self.after_failure(&meta, &key, &e).await;
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
