//! Streaming a byte range of one object from its chunks, with a read-ahead window sized by
//! `window::FetchWindow`.

use std::{
    collections::VecDeque,
    ops::RangeInclusive,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::Stream;

use super::{
    flight::ChunkReader, readers::Cursor, window::FetchWindow, ChunkFetcher, LeadingChunk,
};
use crate::{
    object::ObjectMeta,
    source::{FetchError, Route, SourceKind},
};

struct Open {
    index: u64,
    /// Bytes of this chunk read so far.
    offset: u64,
    reader: ChunkReader,
    /// Already reopened once after joining a fetch that failed.
    retried: bool,
}

/// Streams a byte range of one object from its chunks, keeping a bounded window in flight.
pub struct RangeReader {
    fetcher: Arc<ChunkFetcher>,
    meta: Arc<ObjectMeta>,
    version: Arc<str>,
    range: RangeInclusive<u64>,
    next_to_open: u64,
    last_chunk: u64,
    window: VecDeque<Open>,
    /// How many chunks `window` may hold.
    size: FetchWindow,
    /// The window size last added to `casserole_fetch_window_chunks`.
    reported: usize,
    /// Alive while the reader is: a head start (see `head_start`) is dropped with its response.
    alive: Arc<()>,
    failed: bool,
    route: Route,
    /// Origin and collapsing of the chunk the last bytes came from.
    last_origin: Option<(SourceKind, bool)>,
    /// Counts the bytes handed out by their origin (client responses only).
    served: Option<Served>,
    /// Bytes already read, handed out again first (see `put_back`).
    put_back: Option<Bytes>,
    /// Its place among the readers of a whole-only object, whose stream keeps pace with them
    /// (see `readers`).
    cursor: Option<Cursor>,
}

/// The served-bytes counters by origin, and the one of the origin counted last.
struct Served {
    by_origin: prometheus::IntCounterVec,
    counter: Option<(SourceKind, prometheus::IntCounter)>,
}

/// What `next` yields and how long it waited for it: nothing when it was ready at once (a
/// chunk in memory), so a hit reads no clock.
async fn waited_for<F: std::future::Future>(next: F) -> (F::Output, Duration) {
    let mut next = std::pin::pin!(next);
    if let std::task::Poll::Ready(item) = futures::poll!(next.as_mut()) {
        return (item, Duration::ZERO);
    }
    let asked = Instant::now();
    let item = next.await;
    (item, asked.elapsed())
}

impl RangeReader {
    /// `range` is inclusive, non-empty and within the object.
    pub fn new(
        fetcher: Arc<ChunkFetcher>,
        meta: Arc<ObjectMeta>,
        range: RangeInclusive<u64>,
        route: Route,
    ) -> Self {
        let chunks = meta.chunks_for(&range);
        let size = fetcher.new_window(meta.chunk_size, route);
        let version: Arc<str> = Arc::from(meta.version.as_str());
        let cursor = meta
            .whole_only
            .then(|| (fetcher.stream_readers).enter(&version, *chunks.start(), *chunks.end()));
        RangeReader {
            cursor,
            size,
            reported: 0,
            alive: Arc::new(()),
            fetcher,
            version,
            meta,
            range,
            next_to_open: *chunks.start(),
            last_chunk: *chunks.end(),
            window: VecDeque::new(),
            failed: false,
            route,
            last_origin: None,
            served: None,
            put_back: None,
        }
    }

    /// Counts every byte this reader hands out in `counter`, labelled by its origin.
    pub fn counting(mut self, counter: prometheus::IntCounterVec) -> Self {
        self.served = Some(Served {
            by_origin: counter,
            counter: None,
        });
        self
    }

    /// Reads the range's first chunk through the reader that leads its fetch when this
    /// request's own lookup fetched it (see `LeadingChunk`).
    pub fn led_by(mut self, first: Option<LeadingChunk>) -> Self {
        if let Some(first) = first.filter(|f| f.index == self.next_to_open) {
            self.window.push_back(Open {
                index: first.index,
                offset: 0,
                reader: first.reader,
                retried: false,
            });
            self.next_to_open += 1;
            self.head_start();
        }
        self
    }

    /// From a latency-bound upstream, starts the read-ahead chunks as soon as the first chunk
    /// has had time to arrive over its connection (its transfer time, a fraction of the
    /// latency), rather than once its first bytes are here: that saves nearly a round trip and
    /// still leaves the first chunk's connection to itself. The reader joins these fetches when
    /// its window opens.
    fn head_start(&self) {
        let link = self.fetcher.links.for_route(self.route);
        let Some(delay) = self.size.head_start(self.meta.chunk_size, link) else {
            return;
        };
        // Called once the first chunk is open: `next_to_open` is the one after it.
        let last = self.next_to_open + self.size.size().saturating_sub(2) as u64;
        let ahead = self.next_to_open..=last.min(self.last_chunk);
        if ahead.is_empty() {
            return;
        }
        let alive = Arc::downgrade(&self.alive);
        let (fetcher, meta, version) = (
            self.fetcher.clone(),
            self.meta.clone(),
            self.version.clone(),
        );
        let route = self.route;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for index in ahead {
                if alive.strong_count() == 0 {
                    return;
                }
                // The flight goes on without a reader; the response joins it.
                drop(fetcher.open_ahead(&meta, &version, index, route));
            }
        });
    }

    fn fill_window(&mut self) {
        // Until the first bytes arrive only the first chunk is fetched: read-ahead fetches
        // starting at the same moment would compete with it for the upstream and delay them
        // (measured: +20 ms of time to first byte from a 50 ms origin on a busy 2-core machine).
        let window = if self.last_origin.is_none() {
            1
        } else {
            self.size.size()
        };
        if window != self.reported {
            let gauge = &self.fetcher.metrics.window_chunks;
            gauge.add(window as i64 - self.reported as i64);
            self.reported = window;
        }
        while self.window.len() < window && self.next_to_open <= self.last_chunk {
            let index = self.next_to_open;
            let fetcher = &self.fetcher;
            let reader = if self.window.is_empty() {
                fetcher.open(&self.meta, &self.version, index, self.route)
            } else {
                // No memory free for it now: read ahead again once the reader moved on.
                let Some(reader) = fetcher.open_ahead(&self.meta, &self.version, index, self.route)
                else {
                    break;
                };
                reader
            };
            self.window.push_back(Open {
                index,
                offset: 0,
                reader,
                retried: false,
            });
            self.next_to_open += 1;
            if self.last_origin.is_none() {
                self.head_start();
            }
        }
        if let Some(cursor) = &self.cursor {
            cursor.opened_to(self.next_to_open);
        }
    }

    /// Origin and collapsing of the chunk the last bytes (or the error) came from; `None`
    /// before the first call to `next`. Only reports: it never opens a chunk.
    pub fn origin(&self) -> Option<(SourceKind, bool)> {
        self.last_origin
    }

    /// Hands `piece`, the bytes `next` gave last, out again first: a response waits for its
    /// first bytes before its status is decided, then streams them with the rest.
    pub fn put_back(mut self, piece: Bytes) -> Self {
        self.put_back = Some(piece).filter(|p| !p.is_empty());
        self
    }

    pub async fn next(&mut self) -> Option<Result<Bytes, FetchError>> {
        if let Some(piece) = self.put_back.take() {
            return Some(Ok(piece));
        }
        if self.failed {
            return None;
        }
        loop {
            self.fill_window();
            let chunk_size = self.meta.chunk_size;
            if self.window.front()?.reader.is_deferred() {
                self.reopen_front();
            }
            let open = self.window.front_mut()?;
            let chunk_start = open.index * chunk_size;
            match waited_for(open.reader.next()).await {
                (Some(Ok(piece)), waited) => {
                    self.size.took(piece.len(), waited);
                    let piece_start = chunk_start + open.offset;
                    open.offset += piece.len() as u64;
                    let piece_end = chunk_start + open.offset; // exclusive
                    let from = (*self.range.start()).max(piece_start);
                    let to = (*self.range.end() + 1).min(piece_end);
                    self.last_origin = Some((open.reader.origin(), open.reader.collapsed));
                    if piece_end > *self.range.end() {
                        // The rest of this chunk is past the range: stop reading it.
                        self.window.pop_front();
                    }
                    if let Some(cursor) = &self.cursor {
                        cursor.moved();
                    }
                    if from < to {
                        let slice =
                            piece.slice((from - piece_start) as usize..(to - piece_start) as usize);
                        self.count_served(slice.len());
                        return Some(Ok(slice));
                    }
                }
                // Joining a fetch that then failed is bad luck, not this request's failure: try
                // once with a fetch of its own (the failed flight has left the map by now).
                (Some(Err(e)), _)
                    if open.reader.collapsed
                        && open.offset == 0
                        && !open.retried
                        && !e.is_changed() =>
                {
                    open.retried = true;
                    self.reopen_front();
                }
                (Some(Err(e)), _) => {
                    self.last_origin = Some((open.reader.origin(), open.reader.collapsed));
                    return Some(Err(self.fail(e)));
                }
                (None, _) => {
                    let expected = self.meta.chunk_len(open.index);
                    if open.offset != expected {
                        let error = FetchError::Short {
                            from: open.reader.origin(),
                            expected,
                            got: open.offset,
                        };
                        return Some(Err(self.fail(error)));
                    }
                    let origin = open.reader.origin();
                    self.window.pop_front();
                    let link = self.fetcher.links.get(origin);
                    self.size.chunk_done(chunk_size, link);
                }
            }
        }
    }

    /// Counts `bytes` handed out under the origin of the chunk they came from; the counter is
    /// looked up once per origin, not for every piece.
    fn count_served(&mut self, bytes: usize) {
        let (Some(served), Some((origin, _))) = (&mut self.served, self.last_origin) else {
            return;
        };
        if served.counter.as_ref().is_none_or(|(of, _)| *of != origin) {
            let counter = served.by_origin.with_label_values(&[origin.label()]);
            served.counter = Some((origin, counter));
        }
        if let Some((_, counter)) = &served.counter {
            counter.inc_by(bytes as u64);
        }
    }

    /// Drops the window's chunks after the front one; they are opened again when reached.
    fn let_go_ahead(&mut self) {
        if let Some(front) = self.window.front() {
            self.next_to_open = front.index + 1;
            self.window.truncate(1);
            if let Some(cursor) = &self.cursor {
                cursor.opened_to(self.next_to_open);
            }
        }
    }

    /// Opens the chunk at the front of the window (again: it left memory after the window
    /// reached it, or the fetch it joined failed). When that needs memory that is not free now,
    /// the chunks read ahead are let go first (they are opened again when reached), so the
    /// reader does not hold memory while it waits for memory.
    fn reopen_front(&mut self) {
        let index = self.window.front().expect("a front chunk").index;
        let (fetcher, meta, version) = (&self.fetcher, &self.meta, &self.version);
        let reader = match fetcher.open_now(meta, version, index, self.route) {
            Some(reader) => reader,
            None => {
                let reader = fetcher.open(meta, version, index, self.route);
                self.let_go_ahead();
                reader
            }
        };
        self.window.front_mut().expect("a front chunk").reader = reader;
    }

    fn fail(&mut self, error: FetchError) -> FetchError {
        self.failed = true;
        self.window.clear();
        error
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, FetchError>> + Send {
        futures::stream::unfold(self, |mut reader| async move {
            reader.next().await.map(|item| (item, reader))
        })
    }
}

impl Drop for RangeReader {
    fn drop(&mut self) {
        let gauge = &self.fetcher.metrics.window_chunks;
        gauge.sub(self.reported as i64);
    }
}
