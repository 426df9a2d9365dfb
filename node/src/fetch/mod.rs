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

use tokio::sync::Semaphore;

mod flight;
mod range_reader;

pub use flight::ChunkReader;
use flight::{Assembly, Flight, FlightGuard, ReaderState};
pub use range_reader::RangeReader;

use crate::{
    cluster::membership::Member,
    metadata::MetadataStore,
    metrics::Metrics,
    object::{ChunkKey, ObjectMeta},
    tier::{disk::DiskTier, memory::MemoryTier, peer::PeerTier, Chunk, Source},
    upstream::{Upstream, UpstreamError},
};

/// Which tiers a lookup may use. Requests from peers are served from this node's own tiers only,
/// so two nodes that briefly disagree on ownership never bounce a request between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Cluster,
    LocalOnly,
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
