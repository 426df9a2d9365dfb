//! One chunk being fetched (a flight), the readers that follow it, and the assembly of its bytes.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::watch;

use crate::source::{Chunk, FetchError, Opened, SourceKind};

#[derive(Clone, Debug)]
pub(super) enum Progress {
    /// This many pieces are available so far.
    Running(usize),
    Done(usize),
    Failed(FetchError),
}

/// One chunk being fetched, shared by every reader that wants it.
pub(super) struct Flight {
    /// Where the bytes come from; refined while the fetch runs (a peer says whether it had the
    /// chunk or fetched it upstream; a corrupt disk file turns into an upstream fetch).
    origin: Mutex<SourceKind>,
    pieces: Mutex<Vec<Bytes>>,
    progress: watch::Sender<Progress>,
    /// The chunk's share of the memory account once it is complete: its readers still hold its
    /// pieces, so the share lives as long as the flight.
    pin: Mutex<Option<Arc<tokio::sync::OwnedSemaphorePermit>>>,
    /// The complete chunk, once finished: a finished flight still in the map answers as a hit.
    done: Mutex<Option<Chunk>>,
}

impl Flight {
    pub(super) fn new() -> Self {
        Flight {
            origin: Mutex::new(SourceKind::Upstream),
            pieces: Mutex::new(Vec::new()),
            progress: watch::Sender::new(Progress::Running(0)),
            pin: Mutex::new(None),
            done: Mutex::new(None),
        }
    }

    /// Keeps the chunk's memory share for as long as readers follow this flight.
    pub(super) fn hold(&self, pin: Arc<tokio::sync::OwnedSemaphorePermit>) {
        *self.pin.lock().expect("flight lock") = Some(pin);
    }

    pub(super) fn origin(&self) -> SourceKind {
        *self.origin.lock().expect("flight lock")
    }

    pub(super) fn set_origin(&self, origin: SourceKind) {
        *self.origin.lock().expect("flight lock") = origin;
    }

    fn push(&self, piece: Bytes) {
        let count = {
            let mut pieces = self.pieces.lock().expect("flight lock");
            pieces.push(piece);
            pieces.len()
        };
        self.progress.send_replace(Progress::Running(count));
    }

    /// How many readers follow this flight now.
    pub(super) fn followers(&self) -> usize {
        self.progress.receiver_count()
    }

    pub(super) fn is_running(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Running(_))
    }

    /// Hands readers the chunk's last bytes, held back until the chunk was kept in memory: a
    /// client that has every byte and asks again finds a hit (the memory tier, or this flight,
    /// which stays in the map as the finished chunk until the other stores have it).
    pub(super) fn finish(&self, chunk: Chunk, tail: Bytes) {
        *self.done.lock().expect("flight lock") = Some(chunk);
        let count = {
            let mut pieces = self.pieces.lock().expect("flight lock");
            if !tail.is_empty() {
                pieces.push(tail);
            }
            pieces.len()
        };
        self.progress.send_replace(Progress::Done(count));
    }

    /// The complete chunk, once the flight finished.
    pub(super) fn finished(&self) -> Option<Chunk> {
        self.done.lock().expect("flight lock").clone()
    }

    pub(super) fn fail(&self, error: FetchError) {
        self.progress.send_replace(Progress::Failed(error));
    }

    pub(super) fn follow(self: &Arc<Self>, collapsed: bool) -> ChunkReader {
        ChunkReader {
            collapsed,
            probed: false,
            state: ReaderState::Following {
                flight: self.clone(),
                progress: self.progress.subscribe(),
                next: 0,
            },
        }
    }
}

/// Yields the bytes of one chunk, from a cache hit or by following a flight.
pub struct ChunkReader {
    /// Joined a fetch another request had started.
    pub collapsed: bool,
    /// The request's own lookup fetched this chunk with its probe (see `LeadingChunk`).
    probed: bool,
    state: ReaderState,
}

enum ReaderState {
    /// In memory when the window reached it: opened by its range reader only when it reaches
    /// it (`RangeReader::reopen_front`), so read-ahead over cached chunks pins nothing (a chunk
    /// evicted meanwhile is then fetched like any miss).
    Deferred,
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
    pub(super) fn ready(chunk: Chunk) -> Self {
        ChunkReader {
            collapsed: false,
            probed: false,
            state: ReaderState::Ready { chunk, next: 0 },
        }
    }

    pub(super) fn deferred() -> Self {
        ChunkReader {
            collapsed: false,
            probed: false,
            state: ReaderState::Deferred,
        }
    }

    /// This reader's chunk was fetched by its request's own probe: its bytes count as fetched
    /// from the upstream for that request, even when another fetch of the chunk (or the memory
    /// tier) hands them over because the probe's body was not needed.
    pub(super) fn fetched_by_probe(mut self) -> Self {
        self.collapsed = false;
        self.probed = true;
        self
    }

    /// Not opened yet: the chunk was in memory when its reader's window reached it.
    pub fn is_deferred(&self) -> bool {
        matches!(self.state, ReaderState::Deferred)
    }

    /// Where this chunk's bytes come from, as far as known now.
    pub fn origin(&self) -> SourceKind {
        if self.probed {
            return SourceKind::Upstream;
        }
        match &self.state {
            ReaderState::Ready { .. } | ReaderState::Deferred => SourceKind::Memory,
            ReaderState::Following { flight, .. } => flight.origin(),
        }
    }

    pub async fn next(&mut self) -> Option<Result<Bytes, FetchError>> {
        match &mut self.state {
            // Its range reader opens it before reading it; never read as it is.
            ReaderState::Deferred => Some(Err(FetchError::Abandoned)),
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
                            return Some(Err(FetchError::Abandoned));
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
    /// The whole chunk, when a source handed it over in one piece (a disk file read at once):
    /// kept as it is rather than copied (it is the chunk's held-back last bytes).
    whole: Option<Bytes>,
    pushed: usize,
    expected: usize,
    flush_at: usize,
    flight: &'a Flight,
}

impl<'a> Assembly<'a> {
    pub(super) fn new(expected: usize, flight: &'a Flight) -> Self {
        Assembly {
            buf: BytesMut::new(),
            whole: None,
            pushed: 0,
            expected,
            flush_at: FIRST_PART,
            flight,
        }
    }

    pub(super) fn received(&self) -> usize {
        self.pushed + self.buf.len() + self.whole.as_ref().map_or(0, Bytes::len)
    }

    pub(super) fn is_complete(&self) -> bool {
        self.received() == self.expected
    }

    /// Appends bytes; a part is handed out once it is large enough, except the chunk's last
    /// bytes, which wait for `finish`.
    pub(super) fn add(&mut self, bytes: &[u8]) {
        if self.buf.capacity() == 0 {
            // One allocation for the whole chunk, made when its first bytes arrive in pieces.
            self.buf.reserve(self.expected - self.received());
        }
        if self.received() + bytes.len() == self.expected {
            self.flush();
            self.buf.extend_from_slice(bytes);
            return;
        }
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

    /// Appends what a source sends, skipping the bytes an earlier, failed source already
    /// delivered. A source that sends more than the chunk holds fails, and nothing past the
    /// chunk is ever handed out.
    pub(super) async fn pump(
        &mut self,
        opened: Opened,
        source: SourceKind,
    ) -> Result<(), FetchError> {
        let Opened {
            mut stream,
            starts_at,
            ..
        } = opened;
        let received = self.received() as u64;
        if starts_at > received {
            return Err(FetchError::Short {
                from: source,
                expected: self.expected as u64,
                got: received,
            });
        }
        let mut skip = (received - starts_at) as usize;
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            let dropped = skip.min(piece.len());
            skip -= dropped;
            let fresh = &piece[dropped..];
            let room = self.expected - self.received();
            if fresh.len() > room {
                // What this source has not handed out yet is dropped, so the next source sends
                // it again: readers never get a byte from a source that overran.
                self.buf.clear();
                self.whole = None;
                return Err(FetchError::TooLong {
                    from: source,
                    expected: self.expected as u64,
                });
            }
            // The chunk's last bytes are held back until the source ends cleanly.
            if self.received() == 0 && piece.len() == self.expected {
                self.whole = Some(piece);
            } else {
                self.add(fresh);
            }
        }
        if !self.is_complete() {
            self.flush();
            return Err(FetchError::Short {
                from: source,
                expected: self.expected as u64,
                got: self.received() as u64,
            });
        }
        Ok(())
    }

    /// The complete chunk, and its last bytes, which the flight's readers get from
    /// `Flight::finish`.
    pub(super) fn finish(mut self) -> (Chunk, Bytes) {
        let tail = self
            .whole
            .take()
            .unwrap_or_else(|| self.buf.split().freeze());
        let mut pieces = self.flight.pieces.lock().expect("flight lock").clone();
        if !tail.is_empty() {
            pieces.push(tail.clone());
        }
        (Chunk::new(pieces), tail)
    }
}
