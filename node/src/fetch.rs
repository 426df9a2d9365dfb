//! Walks the tiers for each chunk a response needs: memory, (owner peer,) disk, upstream.
//!
//! * Single flight: one fetch per chunk per node; every concurrent reader follows it and gets
//!   its bytes as they arrive, so a cold chunk starts streaming before it is complete.
//! * Read-ahead: a response keeps up to `readahead + 1` chunks in flight, so a cold object
//!   arrives at the upstream's aggregate rate even when each upstream connection is throttled,
//!   while a slow client holds at most that many chunks in memory (backpressure).
//! * Promotion: a chunk read from disk or the upstream lands in memory; one from the upstream is
//!   also written to disk, off the response path.

use std::{
    collections::{HashMap, VecDeque},
    ops::RangeInclusive,
    sync::{Arc, Mutex},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::sync::{watch, Semaphore};

use crate::{
    cluster::membership::Member,
    metadata::MetadataStore,
    metrics::Metrics,
    object::{ChunkKey, ObjectMeta},
    tier::{disk::DiskTier, memory::MemoryTier, peer::PeerTier, Chunk, Source},
    upstream::{ByteStream, Upstream, UpstreamError},
};

/// Which tiers a lookup may use. Requests from peers are served from this node's own tiers only,
/// so two nodes that briefly disagree on ownership never bounce a request between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Cluster,
    LocalOnly,
}

#[derive(Clone, Debug)]
enum Progress {
    /// This many pieces are available so far.
    Running(usize),
    Done(usize),
    Failed(UpstreamError),
}

/// One chunk being fetched, shared by every reader that wants it.
struct Flight {
    /// Where the bytes come from; refined while the fetch runs (a peer says whether it had the
    /// chunk or fetched it upstream; a corrupt disk file turns into an upstream fetch).
    source: Mutex<Source>,
    pieces: Mutex<Vec<Bytes>>,
    progress: watch::Sender<Progress>,
}

impl Flight {
    fn new(source: Source) -> Self {
        Flight {
            source: Mutex::new(source),
            pieces: Mutex::new(Vec::new()),
            progress: watch::Sender::new(Progress::Running(0)),
        }
    }

    fn source(&self) -> Source {
        *self.source.lock().expect("flight lock")
    }

    fn set_source(&self, source: Source) {
        *self.source.lock().expect("flight lock") = source;
    }

    fn push(&self, piece: Bytes) {
        let count = {
            let mut pieces = self.pieces.lock().expect("flight lock");
            pieces.push(piece);
            pieces.len()
        };
        self.progress.send_replace(Progress::Running(count));
    }

    fn finish(&self) {
        let count = self.pieces.lock().expect("flight lock").len();
        self.progress.send_replace(Progress::Done(count));
    }

    fn fail(&self, error: UpstreamError) {
        self.progress.send_replace(Progress::Failed(error));
    }
}

/// Marks a flight failed if its task ends without finishing it (panic or cancellation), so no
/// reader waits forever.
struct FlightGuard(Arc<Flight>);

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
    state: ReaderState,
}

enum ReaderState {
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

pub struct ChunkFetcher {
    memory: MemoryTier,
    peers: Option<Arc<PeerTier>>,
    disk: Option<Arc<DiskTier>>,
    upstream: Arc<Upstream>,
    metadata: Arc<MetadataStore>,
    flights: Mutex<HashMap<ChunkKey, Arc<Flight>>>,
    /// Bytes of chunks being fetched, not yet in the memory tier: with the tier's own bound this
    /// keeps all chunk memory within `--max-memory-usage`, however many requests are in flight.
    flight_budget: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    readahead: usize,
}

/// How `--max-memory-usage` is split between cached chunks and chunks being fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    pub tier_bytes: u64,
    pub flight_bytes: u64,
}

impl MemoryBudget {
    /// An eighth for fetches in flight, but always enough for one request's whole read-ahead
    /// window; the rest for the memory tier.
    pub fn split(max_memory: u64, chunk_size: u64, readahead: usize) -> Self {
        let window = chunk_size * (readahead as u64 + 1);
        let flight_bytes = (max_memory / 8).max(window).min(u32::MAX as u64);
        MemoryBudget {
            tier_bytes: max_memory.saturating_sub(flight_bytes).max(chunk_size),
            flight_bytes,
        }
    }
}

/// The tiers a fetcher walks, fastest first; the upstream is the last source.
pub struct Tiers {
    pub memory: MemoryTier,
    pub peers: Option<Arc<PeerTier>>,
    pub disk: Option<Arc<DiskTier>>,
    pub upstream: Arc<Upstream>,
}

impl ChunkFetcher {
    pub fn new(
        tiers: Tiers,
        metadata: Arc<MetadataStore>,
        metrics: Arc<Metrics>,
        readahead: usize,
        flight_bytes: u64,
    ) -> Arc<Self> {
        let Tiers {
            memory,
            peers,
            disk,
            upstream,
        } = tiers;
        Arc::new(ChunkFetcher {
            memory,
            peers,
            disk,
            upstream,
            metadata,
            flights: Mutex::new(HashMap::new()),
            flight_budget: Arc::new(Semaphore::new(flight_bytes as usize)),
            metrics,
            readahead,
        })
    }

    pub fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    fn count_lookup(&self, tier: &str) {
        self.metrics.chunk_sources.with_label_values(&[tier]).inc();
    }

    /// Like `open`, but a chunk now in memory is only looked up again when it is read.
    pub fn open_ahead(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        version: &Arc<str>,
        index: u64,
        route: Route,
    ) -> ChunkReader {
        if self.memory.contains(&meta.chunk_key(version, index)) {
            return ChunkReader {
                collapsed: false,
                state: ReaderState::Deferred {
                    fetcher: self.clone(),
                    meta: meta.clone(),
                    version: version.clone(),
                    index,
                    route,
                },
            };
        }
        self.open(meta, version, index, route)
    }

    /// Starts (or joins) getting chunk `index` of `meta`; never waits.
    pub fn open(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        version: &Arc<str>,
        index: u64,
        route: Route,
    ) -> ChunkReader {
        let key = meta.chunk_key(version, index);
        let hit = |chunk: Chunk| ChunkReader {
            collapsed: false,
            state: ReaderState::Ready { chunk, next: 0 },
        };
        if let Some(chunk) = self.memory.get(&key) {
            self.count_lookup("memory");
            return hit(chunk);
        }
        let mut flights = self.flights.lock().expect("flights lock");
        if let Some(flight) = flights.get(&key) {
            self.count_lookup("collapsed");
            return ChunkReader {
                collapsed: true,
                state: ReaderState::Following {
                    flight: flight.clone(),
                    progress: flight.progress.subscribe(),
                    next: 0,
                },
            };
        }
        // A flight finishes by filling memory and then leaving the map, both before we took the
        // lock or both after: checking memory again here means a chunk is never fetched twice.
        if let Some(chunk) = self.memory.get(&key) {
            self.count_lookup("memory");
            return hit(chunk);
        }
        let remote_owners = match (&self.peers, route) {
            (Some(peers), Route::Cluster) => peers.remote_owners(&key.to_string()),
            _ => Vec::new(),
        };
        let source = match &self.disk {
            _ if !remote_owners.is_empty() => Source::Peer,
            Some(disk) if disk.contains(&key) => Source::Disk,
            _ => Source::Upstream,
        };
        let flight = Arc::new(Flight::new(source));
        flights.insert(key.clone(), flight.clone());
        drop(flights);
        self.count_lookup(source.label());
        let progress = flight.progress.subscribe();
        tokio::spawn(
            self.clone()
                .fly(meta.clone(), key, flight.clone(), remote_owners),
        );
        ChunkReader {
            collapsed: false,
            state: ReaderState::Following {
                flight,
                progress,
                next: 0,
            },
        }
    }

    /// Runs one flight to its end, independently of the readers: a client that goes away does not
    /// cancel a fetch others may be following.
    async fn fly(
        self: Arc<Self>,
        meta: Arc<ObjectMeta>,
        key: ChunkKey,
        flight: Arc<Flight>,
        remote_owners: Vec<Member>,
    ) {
        let _guard = FlightGuard(flight.clone());
        // Held until the chunk is in the memory tier (or the fetch failed). The budget always
        // covers at least a whole read-ahead window, so one chunk always fits.
        let chunk_bytes = meta.chunk_len(key.index).min(u32::MAX as u64) as u32;
        let _budget = self
            .flight_budget
            .clone()
            .acquire_many_owned(chunk_bytes)
            .await
            .expect("the flight budget is never closed");
        let started = Instant::now();
        let result = self.fill(&meta, &key, &flight, &remote_owners).await;
        match result {
            Ok((chunk, source)) => {
                self.metrics
                    .chunk_fetch_seconds
                    .with_label_values(&[source.label()])
                    .observe(started.elapsed().as_secs_f64());
                let hot_copy = self.peers.as_ref().is_none_or(|p| p.hot_copy());
                if source != Source::Peer || hot_copy {
                    self.memory.insert(key.clone(), chunk.clone());
                }
                self.flights.lock().expect("flights lock").remove(&key);
                flight.finish();
                // Chunks from a peer live on their owner's disk; only what this node fetched
                // upstream itself is persisted here.
                if source == Source::Upstream {
                    if let Some(disk) = &self.disk {
                        if let Err(e) = disk.put(&key, chunk.to_bytes()).await {
                            tracing::warn!(chunk = %key, error = %e,
                                "disk tier write failed; chunk kept in memory only");
                        }
                    }
                }
            }
            Err(e) => {
                self.flights.lock().expect("flights lock").remove(&key);
                flight.fail(e.clone());
                match &e {
                    UpstreamError::Changed(why) => {
                        self.metrics.objects_changed.inc();
                        tracing::warn!(path = %meta.path, version = %meta.version, reason = %why,
                            "object changed upstream during a fetch; metadata dropped, response aborted");
                        self.memory.remove_version(&meta.version);
                        self.metadata.invalidate(&meta, true).await;
                    }
                    // The upstream's answer contradicts the metadata (length, range): look the
                    // object up afresh next time rather than fail on stale metadata forever.
                    UpstreamError::BadRange(_)
                    | UpstreamError::Truncated { .. }
                    | UpstreamError::TooLong { .. } => {
                        tracing::warn!(path = %meta.path, chunk = %key, error = %e,
                            "chunk fetch failed; metadata dropped");
                        self.metadata.invalidate(&meta, false).await;
                    }
                    _ => {
                        tracing::warn!(path = %meta.path, chunk = %key, error = %e, "chunk fetch failed")
                    }
                }
            }
        }
    }

    /// Gets the whole chunk into the flight: owner peers in rendezvous order, then the local disk,
    /// then the upstream. A source that breaks mid-chunk is replaced by the next one, which
    /// continues where the last stopped, so readers never see the switch.
    async fn fill(
        &self,
        meta: &ObjectMeta,
        key: &ChunkKey,
        flight: &Flight,
        remote_owners: &[Member],
    ) -> Result<(Chunk, Source), UpstreamError> {
        let expected = meta.chunk_len(key.index) as usize;
        let mut assembly = Assembly::new(expected, flight);
        if let Some(peers) = &self.peers {
            for peer in remote_owners {
                let attempt = match peers.fetch_chunk(peer, meta, key.index).await {
                    Ok((stream, owner_source)) => {
                        // A chunk its owner had to fetch upstream was a cluster-wide miss.
                        flight.set_source(match owner_source {
                            Source::Upstream => Source::Upstream,
                            _ => Source::Peer,
                        });
                        assembly.pump(stream).await.map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match attempt {
                    Ok(()) if assembly.received() == expected => {
                        return Ok((assembly.finish(), Source::Peer))
                    }
                    Ok(()) => peers.mark_suspect(peer, &"chunk ended early"),
                    Err(why) => peers.mark_suspect(peer, &why),
                }
            }
        }
        if let Some(disk) = self.disk.as_ref().filter(|d| d.contains(key)) {
            match disk.get(key).await {
                Some(bytes) if bytes.len() == expected => {
                    flight.set_source(Source::Disk);
                    let received = assembly.received();
                    if received == 0 {
                        flight.push(bytes.clone());
                        return Ok((Chunk::from(bytes), Source::Disk));
                    }
                    assembly.add(&bytes[received..]);
                    return Ok((assembly.finish(), Source::Disk));
                }
                // Corrupt files were dropped by the disk tier; fetch the chunk again.
                _ => {
                    tracing::info!(chunk = %key, "disk tier could not serve chunk; fetching upstream")
                }
            }
        }
        flight.set_source(Source::Upstream);
        let stream = self.upstream.fetch_chunk(meta, key.index).await?;
        assembly.pump(stream).await?;
        Ok((assembly.finish(), Source::Upstream))
    }

    /// The bytes of `range` (inclusive) of `meta`, in order, with read-ahead.
    pub fn stream_range(
        self: &Arc<Self>,
        meta: Arc<ObjectMeta>,
        range: RangeInclusive<u64>,
        route: Route,
    ) -> RangeReader {
        let chunks = meta.chunks_for(&range);
        RangeReader {
            fetcher: self.clone(),
            version: Arc::from(meta.version.as_str()),
            meta,
            range,
            next_to_open: *chunks.start(),
            last_chunk: *chunks.end(),
            window: VecDeque::new(),
            failed: false,
            route,
            last_source: None,
        }
    }
}

/// The first part of a chunk is handed to readers after this many bytes (low latency), later
/// parts after twice as many as the one before, up to `LAST_PART` (few, large writes).
const FIRST_PART: usize = 16 * 1024;
const LAST_PART: usize = 256 * 1024;

/// Builds a chunk in one allocation of its exact size and hands each completed part to the
/// flight's readers; the finished chunk is those same parts, so nothing is copied twice.
struct Assembly<'a> {
    buf: BytesMut,
    pushed: usize,
    flush_at: usize,
    flight: &'a Flight,
}

impl<'a> Assembly<'a> {
    fn new(expected: usize, flight: &'a Flight) -> Self {
        Assembly {
            buf: BytesMut::with_capacity(expected),
            pushed: 0,
            flush_at: FIRST_PART,
            flight,
        }
    }

    fn received(&self) -> usize {
        self.pushed + self.buf.len()
    }

    fn add(&mut self, bytes: &[u8]) {
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
    async fn pump(&mut self, mut stream: ByteStream) -> Result<(), UpstreamError> {
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

    fn finish(mut self) -> Chunk {
        self.flush();
        Chunk::new(self.flight.pieces.lock().expect("flight lock").clone())
    }
}

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
    failed: bool,
    route: Route,
    /// Source and collapsing of the chunk the last bytes came from.
    last_source: Option<(Source, bool)>,
}

impl RangeReader {
    fn fill_window(&mut self) {
        // Until the first bytes arrive only the first chunk is fetched: read-ahead fetches
        // starting at the same moment would compete with it for the upstream and delay them.
        let window = if self.last_source.is_none() {
            1
        } else {
            self.fetcher.readahead + 1
        };
        while self.window.len() < window && self.next_to_open <= self.last_chunk {
            let index = self.next_to_open;
            let fetcher = &self.fetcher;
            let reader = if self.window.is_empty() {
                fetcher.open(&self.meta, &self.version, index, self.route)
            } else {
                fetcher.open_ahead(&self.meta, &self.version, index, self.route)
            };
            self.window.push_back(Open {
                index,
                offset: 0,
                reader,
                retried: false,
            });
            self.next_to_open += 1;
        }
    }

    /// Source and collapsing of the chunk the last bytes came from (or, before any, of the
    /// first chunk).
    pub fn source(&mut self) -> Option<(Source, bool)> {
        self.fill_window();
        self.last_source.or_else(|| {
            self.window
                .front()
                .map(|o| (o.reader.source(), o.reader.collapsed))
        })
    }

    pub async fn next(&mut self) -> Option<Result<Bytes, UpstreamError>> {
        if self.failed {
            return None;
        }
        loop {
            self.fill_window();
            let chunk_size = self.meta.chunk_size;
            let open = self.window.front_mut()?;
            let chunk_start = open.index * chunk_size;
            match open.reader.next().await {
                Some(Ok(piece)) => {
                    let piece_start = chunk_start + open.offset;
                    open.offset += piece.len() as u64;
                    let piece_end = chunk_start + open.offset; // exclusive
                    let from = (*self.range.start()).max(piece_start);
                    let to = (*self.range.end() + 1).min(piece_end);
                    let source = open.reader.source();
                    self.last_source = Some((source, open.reader.collapsed));
                    if piece_end > *self.range.end() {
                        // The rest of this chunk is past the range: stop reading it.
                        self.window.pop_front();
                    }
                    if from < to {
                        let slice =
                            piece.slice((from - piece_start) as usize..(to - piece_start) as usize);
                        self.fetcher
                            .metrics
                            .bytes_served
                            .with_label_values(&[source.label()])
                            .inc_by(slice.len() as u64);
                        return Some(Ok(slice));
                    }
                }
                // Joining a fetch that then failed is bad luck, not this request's failure: try
                // once with a fetch of its own (the failed flight has left the map by now).
                Some(Err(e))
                    if open.reader.collapsed
                        && open.offset == 0
                        && !open.retried
                        && !matches!(e, UpstreamError::Changed(_)) =>
                {
                    open.retried = true;
                    open.reader =
                        self.fetcher
                            .open(&self.meta, &self.version, open.index, self.route);
                }
                Some(Err(e)) => {
                    self.failed = true;
                    self.window.clear();
                    return Some(Err(e));
                }
                None => {
                    let expected = self.meta.chunk_len(open.index);
                    if open.offset != expected {
                        self.failed = true;
                        let got = open.offset;
                        self.window.clear();
                        return Some(Err(UpstreamError::Truncated { expected, got }));
                    }
                    self.window.pop_front();
                }
            }
        }
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, UpstreamError>> + Send {
        futures::stream::unfold(self, |mut reader| async move {
            reader.next().await.map(|item| (item, reader))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryBudget;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_memory_budget_covers_tier_and_flights_within_the_maximum() {
        let b = MemoryBudget::split(256 * MIB, 2 * MIB, 4);
        assert_eq!(b.flight_bytes, 32 * MIB);
        assert_eq!(b.tier_bytes + b.flight_bytes, 256 * MIB);
        // Small memory: a read-ahead window still fits in flight.
        let b = MemoryBudget::split(16 * MIB, 2 * MIB, 4);
        assert_eq!(b.flight_bytes, 10 * MIB);
        assert_eq!(b.tier_bytes, 6 * MIB);
        // Tiny memory: the tier keeps at least one chunk.
        let b = MemoryBudget::split(4 * MIB, 2 * MIB, 4);
        assert_eq!(b.tier_bytes, 2 * MIB);
    }
}
