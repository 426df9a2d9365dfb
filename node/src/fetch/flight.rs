//! One chunk being fetched (a flight), the readers that follow it, and the assembly of its bytes.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::watch;

use super::{ChunkFetcher, Route};
use crate::{
    object::ObjectMeta,
    tier::{Chunk, Source},
    upstream::{ByteStream, UpstreamError},
};

#[derive(Clone, Debug)]
pub(super) enum Progress {
    /// This many pieces are available so far.
    Running(usize),
    Done(usize),
    Failed(UpstreamError),
}

/// One chunk being fetched, shared by every reader that wants it.
pub(super) struct Flight {
    /// Where the bytes come from; refined while the fetch runs (a peer says whether it had the
    /// chunk or fetched it upstream; a corrupt disk file turns into an upstream fetch).
    pub(super) source: Mutex<Source>,
    pub(super) pieces: Mutex<Vec<Bytes>>,
    pub(super) progress: watch::Sender<Progress>,
}

impl Flight {
    pub(super) fn new(source: Source) -> Self {
        Flight {
            source: Mutex::new(source),
            pieces: Mutex::new(Vec::new()),
            progress: watch::Sender::new(Progress::Running(0)),
        }
    }

    pub(super) fn source(&self) -> Source {
        *self.source.lock().expect("flight lock")
    }

    pub(super) fn set_source(&self, source: Source) {
        *self.source.lock().expect("flight lock") = source;
    }

    pub(super) fn push(&self, piece: Bytes) {
        let count = {
            let mut pieces = self.pieces.lock().expect("flight lock");
            pieces.push(piece);
            pieces.len()
        };
        self.progress.send_replace(Progress::Running(count));
    }

    pub(super) fn finish(&self) {
        let count = self.pieces.lock().expect("flight lock").len();
        self.progress.send_replace(Progress::Done(count));
    }

    pub(super) fn fail(&self, error: UpstreamError) {
        self.progress.send_replace(Progress::Failed(error));
    }
}

/// Marks a flight failed if its task ends without finishing it (panic or cancellation), so no
/// reader waits forever.
pub(super) struct FlightGuard(pub(super) Arc<Flight>);

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if matches!(*self.0.progress.borrow(), Progress::Running(_)) {
            self.0
                .fail(UpstreamError::Transfer("chunk fetch abandoned".into()));
        }
    }
}

/// Yields the bytes of one chunk, from a cache hit or by following a flight.
pub struct ChunkReader {
    /// Joined a fetch another request had started.
    pub collapsed: bool,
    pub(super) state: ReaderState,
}

pub(super) enum ReaderState {
    /// In memory when the window reached it: opened only when read, so read-ahead over cached
    /// chunks pins nothing (a chunk evicted meanwhile is then fetched like any miss).
    Deferred {
        fetcher: Arc<ChunkFetcher>,
        meta: Arc<ObjectMeta>,
        version: Arc<str>,
        index: u64,
        route: Route,
    },
    Ready {
        chunk: Chunk,
        next: usize,
    },
    Following {
        flight: Arc<Flight>,
        progress: watch::Receiver<Progress>,
        next: usize,
    },
}

impl ChunkReader {
    /// Where this chunk's bytes come from, as far as known now.
    pub fn source(&self) -> Source {
        match &self.state {
            ReaderState::Ready { .. } | ReaderState::Deferred { .. } => Source::Memory,
            ReaderState::Following { flight, .. } => flight.source(),
        }
    }

    pub async fn next(&mut self) -> Option<Result<Bytes, UpstreamError>> {
        if let ReaderState::Deferred {
            fetcher,
            meta,
            version,
            index,
            route,
        } = &self.state
        {
            *self = fetcher.open(meta, version, *index, *route);
        }
        match &mut self.state {
            ReaderState::Deferred { .. } => unreachable!("resolved above"),
            ReaderState::Ready { chunk, next } => {
                let part = chunk.parts().get(*next).cloned();
                *next += 1;
                part.map(Ok)
            }
            ReaderState::Following {
                flight,
                progress,
                next,
            } => loop {
                let current = progress.borrow_and_update().clone();
                match current {
                    Progress::Running(n) | Progress::Done(n) if *next < n => {
                        let piece = flight.pieces.lock().expect("flight lock")[*next].clone();
                        *next += 1;
                        return Some(Ok(piece));
                    }
                    Progress::Done(_) => return None,
                    Progress::Failed(e) => return Some(Err(e)),
                    Progress::Running(_) => {
                        if progress.changed().await.is_err() {
                            return Some(Err(UpstreamError::Transfer(
                                "chunk fetch abandoned".into(),
                            )));
                        }
                    }
                }
            },
        }
    }
}

/// The first part of a chunk is handed to readers after this many bytes (low latency), later
/// parts after twice as many as the one before, up to `LAST_PART` (few, large writes).
const FIRST_PART: usize = 16 * 1024;
const LAST_PART: usize = 256 * 1024;

/// Builds a chunk in one allocation of its exact size and hands each completed part to the
/// flight's readers; the finished chunk is those same parts, so nothing is copied twice.
pub(super) struct Assembly<'a> {
    buf: BytesMut,
    pushed: usize,
    flush_at: usize,
    flight: &'a Flight,
}

impl<'a> Assembly<'a> {
    pub(super) fn new(expected: usize, flight: &'a Flight) -> Self {
        Assembly {
            buf: BytesMut::with_capacity(expected),
            pushed: 0,
            flush_at: FIRST_PART,
            flight,
        }
    }

    pub(super) fn received(&self) -> usize {
        self.pushed + self.buf.len()
    }

    pub(super) fn add(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= self.flush_at {
            self.flush();
            self.flush_at = (self.flush_at * 2).min(LAST_PART);
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            // split() keeps the remaining capacity: later parts land in the same allocation.
            let part = self.buf.split().freeze();
            self.pushed += part.len();
            self.flight.push(part);
        }
    }

    /// Appends a chunk stream, skipping the bytes an earlier, failed source already delivered.
    pub(super) async fn pump(&mut self, mut stream: ByteStream) -> Result<(), UpstreamError> {
        let mut skip = self.received();
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            let dropped = skip.min(piece.len());
            skip -= dropped;
            if dropped < piece.len() {
                self.add(&piece[dropped..]);
            }
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> Chunk {
        self.flush();
        Chunk::new(self.flight.pieces.lock().expect("flight lock").clone())
    }
}
