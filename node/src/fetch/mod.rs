//! Gets the chunks a response needs by walking the chunk sources once, in order: memory, the
//! chunk's owner peers (cluster memory), disk, upstream.
//!
//! * Single flight: one fetch per chunk per node; every concurrent reader follows it and gets
//!   its bytes as they arrive, so a cold chunk starts streaming before it is complete.
//! * Failover: a source that fails before or during the chunk is replaced by the next one, which
//!   continues where the last stopped, so readers never see the switch.
//! * Read-ahead: a response keeps a window of chunks in flight sized to the source's latency and
//!   throughput and to the reader's pace (`window`), so a cold object arrives at the upstream's
//!   aggregate rate even when the upstream is far away or each of its connections is throttled,
//!   while a slow client holds only the few chunks its pace needs (backpressure). Upstream
//!   fetches are capped node-wide (`--max-upstream-fetches`).
//! * Promotion: a finished chunk is offered to every source of its walk; the stores among them
//!   (memory, disk) keep what their rules allow.

use std::{
    collections::HashMap,
    ops::RangeInclusive,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use futures::{future::BoxFuture, StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

mod feed;
mod flight;
mod metered;
mod range_reader;
mod readers;
mod single_flight;
#[cfg(test)]
mod tests;
mod walk;
pub mod window;

pub use feed::FeedSource;
pub use flight::ChunkReader;
use metered::Metered;
pub use range_reader::RangeReader;
use single_flight::{Claim, Claimed, Flights};
use window::{FetchWindow, LinkEstimates};

use crate::{
    metadata::MetadataStore,
    metrics::Registrar,
    object::{ChunkKey, ObjectMeta},
    peer::{client::PeerClient, server::LocalChunks},
    source::{ChunkRequest, ChunkSource, ChunkStream, FetchError, Opened, Route, SourceKind},
    tier::memory::MemoryTier,
    upstream::{ProbeBody, Upstream, MAX_RANGE_PARTS},
};

#[derive(Clone)]
pub struct FetchMetrics {
    /// Chunk lookups by the source that answered (and `collapsed` for joins).
    pub lookups: prometheus::IntCounterVec,
    pub seconds: prometheus::HistogramVec,
    /// Sources that failed to deliver a chunk, by the failing party.
    pub source_errors: prometheus::IntCounterVec,
    pub objects_changed: prometheus::IntCounter,
    /// The fetch window's estimates, by source kind.
    pub link_latency: prometheus::GaugeVec,
    pub link_throughput: prometheus::GaugeVec,
    /// Bytes of the fetch memory budget held by chunks being fetched.
    pub flight_bytes: prometheus::IntGauge,
    /// Sum of the fetch windows of the responses being sent, in chunks.
    pub window_chunks: prometheus::IntGauge,
}

fn gauge_vec(r: &Registrar, name: &str, help: &str) -> prometheus::GaugeVec {
    let g = prometheus::GaugeVec::new(prometheus::Opts::new(name, help), &["source"])
        .expect("valid metric");
    r.register(name, &g);
    g
}

impl FetchMetrics {
    pub fn new(r: &Registrar) -> Self {
        FetchMetrics {
            lookups: r.counter_vec(
                "casserole_chunk_lookups_total",
                "Chunk lookups by the tier that answered",
                &["tier"],
            ),
            seconds: r.histogram_vec(
                "casserole_chunk_fetch_seconds",
                "Time to obtain one whole chunk, by source",
                &["source"],
            ),
            source_errors: r.counter_vec(
                "casserole_chunk_source_errors_total",
                "Chunk sources that failed to deliver (the next source was tried), by party",
                &["party"],
            ),
            objects_changed: r.counter(
                "casserole_objects_changed_total",
                "Objects found changed upstream while being fetched (response aborted, metadata dropped)",
            ),
            link_latency: gauge_vec(
                r,
                "casserole_fetch_link_latency_seconds",
                "Estimated time from asking a source for a chunk to its first bytes",
            ),
            link_throughput: gauge_vec(
                r,
                "casserole_fetch_link_throughput_bytes_per_second",
                "Estimated throughput of one connection to a source once bytes flow",
            ),
            flight_bytes: r.gauge(
                "casserole_fetch_flight_bytes",
                "Bytes of the fetch memory budget held by chunks being fetched",
            ),
            window_chunks: r.gauge(
                "casserole_fetch_window_chunks",
                "Chunks the responses being sent may have in flight (sum of their fetch windows)",
            ),
        }
    }
}

/// How `--max-memory-usage` is split between cached chunks and chunks being fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    pub tier_bytes: u64,
    pub flight_bytes: u64,
}

impl MemoryBudget {
    /// An eighth for fetches in flight, but always enough for one request's whole read-ahead
    /// window (`--readahead` + 1 chunks, or [`MIN_BUDGET_CHUNKS`] when the window is adaptive),
    /// and for an adaptive window up to a third to hold [`ADAPTIVE_BUDGET_CHUNKS`]; the rest
    /// for the memory tier.
    pub fn split(max_memory: u64, chunk_size: u64, readahead: Option<usize>) -> Self {
        let chunks = readahead.map_or(MIN_BUDGET_CHUNKS, |r| r as u64 + 1);
        let window = chunk_size * chunks;
        let mut flight_bytes = (max_memory / 8).max(window);
        if readahead.is_none() {
            let wide = (chunk_size * ADAPTIVE_BUDGET_CHUNKS).min(max_memory / 3);
            flight_bytes = flight_bytes.max(wide);
        }
        let flight_bytes = flight_bytes.min(u32::MAX as u64);
        MemoryBudget {
            tier_bytes: max_memory.saturating_sub(flight_bytes).max(chunk_size),
            flight_bytes,
        }
    }
}

/// The fetch budget holds at least this many chunks (the fixed window of old), so an adaptive
/// window can always grow past a single round trip's worth.
pub const MIN_BUDGET_CHUNKS: u64 = 5;

/// Chunks an adaptive window may hold when memory allows (a third of it): on the default
/// `--max-memory-usage` (100M) an eighth is 5 chunks, too few for a distant upstream — measured,
/// 128 MiB from 50 ms away took 1.0 s with them against 0.37 s with 16 in flight.
pub const ADAPTIVE_BUDGET_CHUNKS: u64 = 17;

pub struct FetchConfig {
    /// `--readahead`: a fixed window of this many chunks ahead; `None` sizes it adaptively.
    pub readahead: Option<usize>,
    /// Upstream chunk fetches running at once, node-wide; also the most a window grows to.
    pub max_upstream_fetches: usize,
    pub flight_bytes: u64,
    /// The memory tier's share. Cached chunks keep their bytes counted in the same account as
    /// fetches, so it holds `tier_bytes + flight_bytes` in all; chunks readers still hold
    /// count until they let go.
    pub tier_bytes: u64,
    /// How long a new fetch may wait for memory before the request fails with 503.
    pub budget_timeout: Duration,
}

/// The sources a fetcher walks, fastest first.
pub struct Sources {
    pub memory: Arc<MemoryTier>,
    /// Owner peers, asked after memory for `Route::Cluster` lookups.
    pub peers: Option<Arc<PeerClient>>,
    /// After the peers, in order: disk, upstream (or test doubles).
    pub local: Vec<Arc<dyn ChunkSource>>,
    /// Where whole-object streams come from, for objects fetched whole (inserted into the walk
    /// before the first upstream source).
    pub whole_objects: Option<Arc<Upstream>>,
}

pub struct ChunkFetcher {
    sources: Sources,
    /// The whole-object source, when whole objects can be fetched.
    feed_source: Option<Arc<dyn ChunkSource>>,
    metadata: Option<Arc<MetadataStore>>,
    /// Chunks being fetched, and the memory they may use.
    flights: Arc<Flights>,
    /// Whole-object streams being cut into chunks, by version.
    feeds: Mutex<HashMap<Arc<str>, Arc<feed::Feed>>>,
    /// How far the readers of whole-only objects have got, for their streams to keep pace.
    stream_readers: Arc<readers::StreamReaders>,
    me: Weak<ChunkFetcher>,
    /// `--max-upstream-fetches`: one permit per upstream fetch running, range fetches (see
    /// `Metered`) and whole-object streams alike.
    upstream_cap: Arc<Semaphore>,
    /// Latency and throughput of the upstream and the owner peers, measured by `Metered`.
    links: Arc<LinkEstimates>,
    cfg: FetchConfig,
    metrics: FetchMetrics,
}

impl ChunkFetcher {
    /// `metadata` is told when a fetch finds its object changed or inconsistent upstream.
    pub fn new(
        sources: Sources,
        metadata: Option<Arc<MetadataStore>>,
        cfg: FetchConfig,
        metrics: FetchMetrics,
    ) -> Arc<Self> {
        let links = Arc::new(LinkEstimates::default());
        let cap = Arc::new(Semaphore::new(cfg.max_upstream_fetches.max(1)));
        let mut sources = sources;
        // The upstream is measured and capped; disk is neither (local, fast, not a connection).
        sources.local = (sources.local.into_iter())
            .map(|source| match source.kind() {
                SourceKind::Upstream => Arc::new(Metered::new(
                    source,
                    links.clone(),
                    metrics.clone(),
                    Some(cap.clone()),
                )) as Arc<dyn ChunkSource>,
                _ => source,
            })
            .collect();
        Arc::new_cyclic(|me| ChunkFetcher {
            feed_source: sources.whole_objects.clone().map(|upstream| {
                Arc::new(FeedSource::new(me.clone(), upstream)) as Arc<dyn ChunkSource>
            }),
            flights: Flights::new(
                sources.memory.clone(),
                cfg.flight_bytes.saturating_add(cfg.tier_bytes),
                metrics.flight_bytes.clone(),
                cfg.budget_timeout,
            ),
            sources,
            metadata,
            feeds: Mutex::new(HashMap::new()),
            stream_readers: Arc::new(readers::StreamReaders::new()),
            me: me.clone(),
            upstream_cap: cap,
            links,
            cfg,
            metrics,
        })
    }

    pub fn memory(&self) -> &MemoryTier {
        &self.sources.memory
    }

    /// A new response's window: fixed by `--readahead`, else adaptive up to the fetch cap and
    /// what the fetch memory budget holds. Before any chunk was measured, the upstream's answers
    /// so far (this object's lookup) say how far away it is.
    fn new_window(&self, chunk_size: u64, route: Route) -> FetchWindow {
        let fixed = self.cfg.readahead.map(|r| r + 1);
        let budget_chunks = (self.cfg.flight_bytes / chunk_size.max(1)) as usize;
        let cap = self.cfg.max_upstream_fetches.min(budget_chunks);
        let round_trip = (self.sources.whole_objects.as_ref()).and_then(|u| u.round_trip());
        let link = self.links.for_route(route).or_round_trip(round_trip);
        FetchWindow::new(fixed, cap, chunk_size, link)
    }

    /// The sources to walk for chunk `key` of `meta`, in order.
    fn walk_for(
        &self,
        meta: &ObjectMeta,
        key: &ChunkKey,
        route: Route,
    ) -> Vec<Arc<dyn ChunkSource>> {
        let mut walk: Vec<Arc<dyn ChunkSource>> = vec![self.sources.memory.clone()];
        if let (Some(peers), Route::Cluster) = (&self.sources.peers, route) {
            for peer in peers.owner_sources(&meta.owner_key(key)) {
                // Measured for the window; each owner caps its own upstream fetches.
                let peer = Arc::new(peer) as Arc<dyn ChunkSource>;
                let metrics = self.metrics.clone();
                walk.push(Arc::new(Metered::new(
                    peer,
                    self.links.clone(),
                    metrics,
                    None,
                )));
            }
        }
        let mut feed = self.feed_source.clone();
        for source in &self.sources.local {
            if source.kind() == SourceKind::Upstream {
                walk.extend(feed.take());
            }
            walk.push(source.clone());
        }
        walk.extend(feed);
        walk
    }

    fn count_lookup(&self, tier: &str) {
        self.metrics.lookups.with_label_values(&[tier]).inc();
    }

    /// Like `open` for a chunk ahead of the one its reader waits for: a chunk now in memory is
    /// only looked up again when it is read, and a new fetch starts only if memory for it is
    /// free now (`None` otherwise: the reader opens the chunk when it gets there).
    pub fn open_ahead(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        version: &Arc<str>,
        index: u64,
        route: Route,
    ) -> Option<ChunkReader> {
        if self
            .sources
            .memory
            .contains(&meta.chunk_key(version, index))
        {
            return Some(ChunkReader::deferred());
        }
        self.open_now(meta, version, index, route)
    }

    /// Like `open`, but a new fetch starts only if memory for it is free now (`None`
    /// otherwise).
    pub fn open_now(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        version: &Arc<str>,
        index: u64,
        route: Route,
    ) -> Option<ChunkReader> {
        let key = meta.chunk_key(version, index);
        let bytes = meta.chunk_len(index).min(u32::MAX as u64) as u32;
        let claimed = self.flights.claim_ahead(&key, bytes)?;
        Some(self.reader_of(meta, &key, route, claimed))
    }

    /// Starts (or joins) getting chunk `index` of `meta`; never waits (a new fetch waits for
    /// its memory in its own task).
    pub fn open(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        version: &Arc<str>,
        index: u64,
        route: Route,
    ) -> ChunkReader {
        let key = meta.chunk_key(version, index);
        let claimed = self.flights.claim(&key);
        self.reader_of(meta, &key, route, claimed)
    }

    fn reader_of(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        key: &ChunkKey,
        route: Route,
        claimed: Claimed,
    ) -> ChunkReader {
        match claimed {
            Claimed::Hit(chunk) => {
                self.count_lookup(SourceKind::Memory.label());
                ChunkReader::ready(chunk)
            }
            Claimed::Joined(reader) => {
                self.count_lookup("collapsed");
                reader
            }
            Claimed::Led(claim) => {
                let reader = claim.follow();
                let seat = self.feed_seat(meta, key, route);
                tokio::spawn(self.clone().fly(meta.clone(), claim, route, seat));
                reader
            }
        }
    }

    /// Takes over the body of the probe that looked `meta` up: the chunk it carries becomes
    /// that chunk's flight, a whole body becomes the object's whole-object stream. Returns the
    /// request's own reader of that chunk, which reports it as fetched for this request (its
    /// lookup did fetch it), even when the chunk was had or being fetched already and the body
    /// is dropped; `None` when the body cannot be used and nobody has the chunk.
    pub fn adopt_probe(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        body: ProbeBody,
    ) -> Option<LeadingChunk> {
        let start = match &body {
            ProbeBody::Range { start, .. } => *start,
            ProbeBody::Whole { .. } => 0,
            _ => return None,
        };
        if start >= meta.length {
            return None;
        }
        let version: Arc<str> = Arc::from(meta.version.as_str());
        let key = meta.chunk_key(&version, start / meta.chunk_size);
        let reader = match self.flights.claim(&key) {
            Claimed::Hit(chunk) => ChunkReader::ready(chunk),
            Claimed::Joined(reader) => reader,
            Claimed::Led(claim) => self.fly_probe_body(meta, claim, body)?,
        };
        Some(LeadingChunk {
            index: key.index,
            reader: reader.fetched_by_probe(),
        })
    }

    /// Runs the claimed chunk's fetch with the probe's body as its first source (a range), or
    /// starts the object's whole-object stream with it (a whole body); the claim is dropped,
    /// before anyone follows it, when the body cannot be used.
    fn fly_probe_body(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        claim: Claim,
        body: ProbeBody,
    ) -> Option<ChunkReader> {
        match body {
            ProbeBody::Range { start, len, stream }
                if start % meta.chunk_size == 0
                    && len <= meta.chunk_len(start / meta.chunk_size)
                    // A probe too short to be continued within the bound is not kept, so the
                    // chunk's own fetch refuses the upstream before a byte is handed out.
                    && len * MAX_RANGE_PARTS as u64 >= meta.chunk_len(start / meta.chunk_size)
                    // Without a validator, only a probe that carries the whole object is kept:
                    // the rest could not be proven to belong with it.
                    && (meta.validator.validates_ranges() || (start == 0 && len == meta.length)) =>
            {
                // An upstream that answered less than the chunk (it caps range answers) is
                // asked for the rest right behind the probe's bytes, within this one source:
                // the walk would resume there too, but only after handing out what the probe
                // carried, and a refusal of the rest must come before the first byte.
                let rest = (len < meta.chunk_len(start / meta.chunk_size))
                    .then(|| {
                        self.sources
                            .local
                            .iter()
                            .find(|s| s.kind() == SourceKind::Upstream)
                            .cloned()
                    })
                    .flatten();
                let first = Arc::new(Prefetched {
                    stream: Mutex::new(Some(crate::source::from_upstream(stream))),
                    len,
                    rest,
                });
                let reader = claim.follow();
                let flight = self
                    .clone()
                    .fly(meta.clone(), claim, Route::LocalOnly, Some(first));
                tokio::spawn(flight);
                Some(reader)
            }
            ProbeBody::Whole { len, stream } if len == meta.length && meta.whole_only => {
                let stream = crate::source::from_upstream(stream);
                self.start_feed(meta.clone(), claim, stream)
            }
            _ => None,
        }
    }

    /// A purge removed `version`: fetches of it still running finish for their readers but no
    /// store keeps their chunks, and its whole-object stream stops once nobody reads it, so no
    /// chunk of the version lands after the purge. Call before dropping the version's chunks.
    pub async fn forget_version(&self, version: &str) {
        self.flights.forget(version).await;
        let feed = self.feeds.lock().expect("feeds lock").remove(version);
        if let Some(feed) = feed {
            feed.forget();
        }
    }

    /// The bytes of `range` (inclusive) of `meta`, in order, with read-ahead.
    pub fn stream_range(
        self: &Arc<Self>,
        meta: Arc<ObjectMeta>,
        range: RangeInclusive<u64>,
        route: Route,
    ) -> RangeReader {
        RangeReader::new(self.clone(), meta, range, route)
    }
}

/// The chunk a request's own lookup fetched with its probe, and the request's reader of it: its
/// bytes count as fetched for this request (never as a hit, nor as collapsed onto another
/// request's fetch), however early they arrived.
pub struct LeadingChunk {
    index: u64,
    reader: ChunkReader,
}

/// The body of the probe that looked the object up: the first source of its first chunk.
struct Prefetched {
    stream: Mutex<Option<ChunkStream>>,
    /// How many bytes of the chunk the probe carries.
    len: u64,
    /// Where the rest of the chunk comes from when the probe carried less than all of it.
    rest: Option<Arc<dyn ChunkSource>>,
}

impl ChunkSource for Prefetched {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        let stream = self.stream.lock().expect("probe body lock").take();
        let Some(stream) = stream else {
            return Box::pin(async { Ok(None) });
        };
        let stream = match self.rest.clone() {
            Some(rest) => {
                let (meta, key, len) = (request.meta.clone(), request.key.clone(), self.len);
                let tail = futures::stream::once(async move {
                    let request = ChunkRequest {
                        meta: &meta,
                        key: &key,
                        offset: len,
                    };
                    match rest.open(request).await? {
                        Some(opened) if opened.starts_at == len => Ok(opened.stream),
                        _ => Err(FetchError::Short {
                            from: SourceKind::Upstream,
                            expected: meta.chunk_len(key.index),
                            got: len,
                        }),
                    }
                })
                .try_flatten();
                Box::pin(stream.chain(tail)) as ChunkStream
            }
            None => stream,
        };
        Box::pin(async move {
            Ok(Some(Opened {
                stream,
                starts_at: 0,
                origin: SourceKind::Upstream,
            }))
        })
    }
}

/// This node's chunks for the peer API: its own tiers only.
pub struct PeerChunks(pub Arc<ChunkFetcher>);

impl LocalChunks for PeerChunks {
    fn open_local(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> BoxFuture<'static, Result<(SourceKind, ChunkStream), FetchError>> {
        let range = meta.chunk_range(index);
        let mut reader = self.0.stream_range(meta, range, Route::LocalOnly);
        Box::pin(async move {
            // The first bytes decide the status: a failure before them is a clean error answer.
            let first = reader.next().await.transpose()?.unwrap_or_default();
            let origin = reader.origin().map_or(SourceKind::Upstream, |(s, _)| s);
            let rest = reader.into_stream();
            let stream = futures::stream::once(async move { Ok(first) }).chain(rest);
            Ok((origin, Box::pin(stream) as ChunkStream))
        })
    }
}
