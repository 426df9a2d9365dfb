//! A chunk source seen through the fetcher's eyes: its latency and throughput measured for the
//! fetch window, and (for the upstream) a cap on how many of its fetches run at once.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use futures::{future::BoxFuture, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{window::LinkEstimates, FetchMetrics};
use crate::{
    object::ChunkKey,
    source::{Chunk, ChunkRequest, ChunkSource, ChunkStream, FetchError, Opened, SourceKind},
};

/// Transfers shorter than this say little about a connection's throughput (a resumed tail, a
/// tiny last chunk): only their latency counts.
const MIN_THROUGHPUT_SAMPLE: u64 = 64 * 1024;

/// Wraps a source: measures every chunk it sends, and with `cap` holds one permit per fetch from
/// opening to the end of its bytes.
pub struct Metered {
    inner: Arc<dyn ChunkSource>,
    links: Arc<LinkEstimates>,
    metrics: FetchMetrics,
    cap: Option<Arc<Semaphore>>,
}

impl Metered {
    pub fn new(
        inner: Arc<dyn ChunkSource>,
        links: Arc<LinkEstimates>,
        metrics: FetchMetrics,
        cap: Option<Arc<Semaphore>>,
    ) -> Self {
        Metered {
            inner,
            links,
            metrics,
            cap,
        }
    }
}

/// What a measured stream carries along until its end.
struct Measuring {
    stream: ChunkStream,
    kind: SourceKind,
    links: Arc<LinkEstimates>,
    metrics: FetchMetrics,
    first_byte_at: Option<Instant>,
    bytes: u64,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Measuring {
    fn record(&self, link: super::window::Link) {
        let label = [self.kind.label()];
        if let Some(l) = link.latency {
            self.metrics.link_latency.with_label_values(&label).set(l);
        }
        if let Some(r) = link.throughput {
            self.metrics
                .link_throughput
                .with_label_values(&label)
                .set(r);
        }
    }

    fn piece(&mut self, piece: &Bytes) {
        if self.first_byte_at.is_none() && !piece.is_empty() {
            self.first_byte_at = Some(Instant::now());
        }
        self.bytes += piece.len() as u64;
    }

    fn ended(&self) {
        if let Some(first) = self
            .first_byte_at
            .filter(|_| self.bytes >= MIN_THROUGHPUT_SAMPLE)
        {
            let link = self
                .links
                .observe_transfer(self.kind, self.bytes, first.elapsed());
            self.record(link);
        }
    }
}

fn measured(state: Measuring) -> ChunkStream {
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        match state.stream.next().await {
            Some(Ok(piece)) => {
                state.piece(&piece);
                Some((Ok(piece), state))
            }
            Some(Err(e)) => Some((Err(e), state)),
            None => {
                state.ended();
                None
            }
        }
    }))
}

impl ChunkSource for Metered {
    fn kind(&self) -> SourceKind {
        self.inner.kind()
    }

    fn ready(&self, key: &ChunkKey) -> Option<Chunk> {
        self.inner.ready(key)
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        Box::pin(async move {
            let permit = match &self.cap {
                Some(cap) => Some(
                    cap.clone()
                        .acquire_owned()
                        .await
                        .expect("the fetch cap is never closed"),
                ),
                None => None,
            };
            let opened_at = Instant::now();
            let Some(opened) = self.inner.open(request).await? else {
                return Ok(None);
            };
            // The latency is the time to the answer's headers, not to its first body bytes:
            // on an upstream whose capacity is capped, the first bytes of a fetch wait for
            // their share behind the window's other fetches, which would make a near upstream
            // look distant (and the window wider, and the wait longer).
            let link = (self.links).observe_latency(self.inner.kind(), opened_at.elapsed());
            let measuring = Measuring {
                stream: opened.stream,
                kind: self.inner.kind(),
                links: self.links.clone(),
                metrics: self.metrics.clone(),
                first_byte_at: None,
                bytes: 0,
                _permit: permit,
            };
            measuring.record(link);
            let stream = measured(measuring);
            Ok(Some(Opened { stream, ..opened }))
        })
    }

    fn keep<'a>(
        &'a self,
        key: &'a ChunkKey,
        chunk: &'a Chunk,
        origin: SourceKind,
    ) -> BoxFuture<'a, ()> {
        self.inner.keep(key, chunk, origin)
    }

    fn failed(&self, error: &FetchError) {
        self.inner.failed(error)
    }
}
