//! The tier walk, single flight, read-ahead and failover, in process with fake sources: no
//! processes, no sockets.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{future::BoxFuture, StreamExt as _};
use tokio::sync::Notify;

use super::*;
use crate::{
    source::{ChunkRequest, Opened},
    upstream::UpstreamError,
};

mod assembly;
mod budget;
mod finished;
mod single_flight;

const CHUNK: u64 = 64 * 1024;

/// Byte `i` of the test object.
fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

fn object_bytes(range: std::ops::Range<u64>) -> Vec<u8> {
    range.map(byte_at).collect()
}

fn meta(length: u64) -> Arc<ObjectMeta> {
    Arc::new(crate::test_support::object_meta("/obj", length, CHUNK))
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Does not have the chunk.
    Absent,
    Serves,
    FailsBeforeFirstByte,
    /// Sends this many bytes of the chunk, then breaks.
    BreaksAfter(usize),
    /// Sends the chunk and this many bytes more.
    SendsExtra(usize),
    Panics,
    ObjectChanged,
}

struct Fake {
    kind: SourceKind,
    behaviour: Behaviour,
    opens: AtomicUsize,
    offsets: Mutex<Vec<u64>>,
    failures: AtomicUsize,
    /// When set, the bytes are sent only once it is notified.
    gate: Option<Arc<Notify>>,
    /// Wait before answering, like a distant upstream.
    latency: Duration,
    /// Chunk fetches open right now (from `open` to the end of the bytes), and the most seen.
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
}

/// Counts a fetch as active until dropped.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fake {
    fn new(kind: SourceKind, behaviour: Behaviour) -> Arc<Self> {
        Arc::new(Fake {
            kind,
            behaviour,
            opens: AtomicUsize::new(0),
            offsets: Mutex::new(Vec::new()),
            failures: AtomicUsize::new(0),
            gate: None,
            latency: Duration::ZERO,
            active: Arc::new(AtomicUsize::new(0)),
            max_active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// An upstream that serves everything after `latency`.
    fn far(latency: Duration) -> Arc<Self> {
        Arc::new(Fake {
            latency,
            ..Arc::into_inner(Fake::new(SourceKind::Upstream, Behaviour::Serves)).unwrap()
        })
    }

    fn max_active(&self) -> usize {
        self.max_active.load(Ordering::SeqCst)
    }

    fn gated(kind: SourceKind, gate: Arc<Notify>) -> Arc<Self> {
        Arc::new(Fake {
            gate: Some(gate),
            ..Arc::into_inner(Fake::new(kind, Behaviour::Serves)).unwrap()
        })
    }

    fn opens(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }
}

/// Splits `bytes` into small pieces, as a network source would deliver them.
fn pieces(bytes: Vec<u8>) -> Vec<Result<Bytes, FetchError>> {
    bytes
        .chunks(4096)
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect()
}

impl ChunkSource for Fake {
    fn kind(&self) -> SourceKind {
        self.kind
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        Box::pin(async move {
            self.opens.fetch_add(1, Ordering::SeqCst);
            self.offsets.lock().unwrap().push(request.offset);
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_active.fetch_max(now, Ordering::SeqCst);
            let active = Active(self.active.clone());
            tokio::time::sleep(self.latency).await;
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            let range = request.meta.chunk_range(request.key.index);
            let start = range.start() + request.offset;
            let end = range.end() + 1;
            let items = match self.behaviour {
                Behaviour::Absent => return Ok(None),
                Behaviour::FailsBeforeFirstByte => {
                    return Err(FetchError::Peer {
                        peer: "fake".into(),
                        message: "refused".into(),
                    })
                }
                Behaviour::ObjectChanged => {
                    return Err(UpstreamError::Changed("etag".into()).into())
                }
                Behaviour::Panics => panic!("a source bug"),
                Behaviour::Serves => pieces(object_bytes(start..end)),
                Behaviour::BreaksAfter(n) => {
                    let mut items = pieces(object_bytes(start..start + n as u64));
                    items.push(Err(FetchError::Peer {
                        peer: "fake".into(),
                        message: "connection reset".into(),
                    }));
                    items
                }
                Behaviour::SendsExtra(n) => pieces(object_bytes(start..end + n as u64)),
            };
            // The fetch stays active until its bytes are consumed (or dropped).
            let stream = futures::stream::iter(items).map(move |item| {
                let _ = &active;
                item
            });
            Ok(Some(Opened {
                stream: Box::pin(stream),
                starts_at: request.offset,
                origin: self.kind,
            }))
        })
    }

    fn failed(&self, _error: &FetchError) {
        self.failures.fetch_add(1, Ordering::SeqCst);
    }
}

fn fetcher(sources: Vec<Arc<Fake>>, readahead: usize) -> Arc<ChunkFetcher> {
    fetcher_with(
        sources,
        FetchConfig {
            readahead: Some(readahead),
            max_upstream_fetches: 32,
            flight_bytes: 64 * CHUNK,
            tier_bytes: 64 * CHUNK,
            budget_timeout: Duration::from_secs(5),
        },
    )
}

/// An adaptive window, at most `cap` upstream fetches, a budget of `budget_chunks` chunks.
fn adaptive(sources: Vec<Arc<Fake>>, cap: usize, budget_chunks: u64) -> Arc<ChunkFetcher> {
    fetcher_with(
        sources,
        FetchConfig {
            readahead: None,
            max_upstream_fetches: cap,
            flight_bytes: budget_chunks * CHUNK,
            tier_bytes: 64 * CHUNK,
            budget_timeout: Duration::from_secs(5),
        },
    )
}

fn fetcher_with(sources: Vec<Arc<Fake>>, cfg: FetchConfig) -> Arc<ChunkFetcher> {
    let registrar = Registrar::new();
    let memory = Arc::new(MemoryTier::new(
        cfg.tier_bytes,
        true,
        crate::tier::memory::MemoryMetrics::new(&registrar),
    ));
    ChunkFetcher::new(
        Sources {
            memory,
            peers: None,
            local: sources
                .into_iter()
                .map(|s| s as Arc<dyn ChunkSource>)
                .collect(),
            whole_objects: None,
        },
        None,
        cfg,
        FetchMetrics::new(&registrar),
    )
}

/// No read-ahead; memory for `flight_chunks` chunks in flight and `tier_chunks` in the tier.
fn without_readahead(
    upstream: Arc<Fake>,
    flight_chunks: u64,
    tier_chunks: u64,
    budget_timeout: Duration,
) -> Arc<ChunkFetcher> {
    fetcher_with(
        vec![upstream],
        FetchConfig {
            readahead: Some(0),
            max_upstream_fetches: 32,
            flight_bytes: flight_chunks * CHUNK,
            tier_bytes: tier_chunks * CHUNK,
            budget_timeout,
        },
    )
}

async fn read_all(
    fetcher: &Arc<ChunkFetcher>,
    meta: &Arc<ObjectMeta>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Vec<u8>, FetchError> {
    let mut reader = fetcher.stream_range(meta.clone(), range, Route::LocalOnly);
    let mut body = Vec::new();
    while let Some(piece) = reader.next().await {
        body.extend_from_slice(&piece?);
    }
    Ok(body)
}

#[tokio::test]
async fn the_walk_skips_sources_without_the_chunk_and_keeps_it_in_memory() {
    let absent = Fake::new(SourceKind::Disk, Behaviour::Absent);
    let upstream = Fake::new(SourceKind::Upstream, Behaviour::Serves);
    let f = fetcher(vec![absent.clone(), upstream.clone()], 2);
    let m = meta(3 * CHUNK + 100);
    let body = read_all(&f, &m, 0..=m.length - 1).await.unwrap();
    assert_eq!(body, object_bytes(0..m.length));
    assert_eq!((absent.opens(), upstream.opens()), (4, 4));
    assert_eq!(absent.failures.load(Ordering::SeqCst), 0);
    // Warm: every chunk from memory, no source asked again.
    let body = read_all(&f, &m, 10..=2 * CHUNK).await.unwrap();
    assert_eq!(body, object_bytes(10..2 * CHUNK + 1));
    assert_eq!(upstream.opens(), 4);
}

#[tokio::test]
async fn a_source_failing_before_the_first_byte_fails_over() {
    let peer = Fake::new(SourceKind::Peer, Behaviour::FailsBeforeFirstByte);
    let upstream = Fake::new(SourceKind::Upstream, Behaviour::Serves);
    let f = fetcher(vec![peer.clone(), upstream.clone()], 0);
    let m = meta(CHUNK);
    assert_eq!(
        read_all(&f, &m, 0..=CHUNK - 1).await.unwrap(),
        object_bytes(0..CHUNK)
    );
    assert_eq!(peer.failures.load(Ordering::SeqCst), 1);
    assert_eq!(upstream.opens(), 1);
}

#[tokio::test]
async fn a_source_breaking_mid_chunk_is_continued_where_it_stopped() {
    let peer = Fake::new(SourceKind::Peer, Behaviour::BreaksAfter(10_000));
    let upstream = Fake::new(SourceKind::Upstream, Behaviour::Serves);
    let f = fetcher(vec![peer.clone(), upstream.clone()], 0);
    let m = meta(CHUNK);
    assert_eq!(
        read_all(&f, &m, 0..=CHUNK - 1).await.unwrap(),
        object_bytes(0..CHUNK)
    );
    assert_eq!(*upstream.offsets.lock().unwrap(), vec![10_000]);
}

#[tokio::test]
async fn a_source_sending_too_much_fails_and_nothing_past_the_chunk_is_served() {
    let peer = Fake::new(SourceKind::Peer, Behaviour::SendsExtra(5));
    let upstream = Fake::new(SourceKind::Upstream, Behaviour::Serves);
    let f = fetcher(vec![peer.clone(), upstream.clone()], 1);
    let m = meta(2 * CHUNK);
    let body = read_all(&f, &m, 0..=m.length - 1).await.unwrap();
    assert_eq!(body, object_bytes(0..2 * CHUNK));
    assert_eq!(peer.failures.load(Ordering::SeqCst), 2);
    // The tail the overrunning source still held back was fetched again from the next one.
    assert_eq!(upstream.opens(), 2);
}

#[tokio::test]
async fn a_panicking_source_fails_over_and_never_wedges_the_chunk() {
    let buggy = Fake::new(SourceKind::Disk, Behaviour::Panics);
    let upstream = Fake::new(SourceKind::Upstream, Behaviour::Serves);
    let f = fetcher(vec![buggy.clone(), upstream.clone()], 0);
    let m = meta(CHUNK);
    assert_eq!(
        read_all(&f, &m, 0..=CHUNK - 1).await.unwrap(),
        object_bytes(0..CHUNK)
    );
    assert_eq!(buggy.failures.load(Ordering::SeqCst), 1);

    // Only a panicking source: the request fails cleanly, and the next one tries again.
    let only = Fake::new(SourceKind::Disk, Behaviour::Panics);
    let f = fetcher(vec![only.clone()], 0);
    let err = read_all(&f, &m, 0..=CHUNK - 1).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Panicked(SourceKind::Disk)),
        "{err}"
    );
    assert_eq!(err.client_status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    assert!(read_all(&f, &m, 0..=CHUNK - 1).await.is_err());
    assert_eq!(only.opens(), 2, "the failed flight must have left the map");
}

#[tokio::test]
async fn a_changed_object_stops_the_walk() {
    let upstream = Fake::new(SourceKind::Upstream, Behaviour::ObjectChanged);
    let after = Fake::new(SourceKind::Upstream, Behaviour::Serves);
    let f = fetcher(vec![upstream.clone(), after.clone()], 0);
    let m = meta(CHUNK);
    let err = read_all(&f, &m, 0..=CHUNK - 1).await.unwrap_err();
    assert!(matches!(
        err,
        FetchError::Upstream(UpstreamError::Changed(_))
    ));
    assert_eq!(after.opens(), 0);
}

#[tokio::test]
async fn no_source_at_all_is_an_error_that_does_not_blame_the_upstream() {
    let f = fetcher(vec![Fake::new(SourceKind::Disk, Behaviour::Absent)], 0);
    let m = meta(CHUNK);
    let err = read_all(&f, &m, 0..=CHUNK - 1).await.unwrap_err();
    assert!(matches!(err, FetchError::NoSource));
    assert!(!err.to_string().contains("upstream"));
}

#[tokio::test]
async fn concurrent_readers_join_one_fetch() {
    let gate = Arc::new(Notify::new());
    let upstream = Fake::gated(SourceKind::Upstream, gate.clone());
    let f = fetcher(vec![upstream.clone()], 0);
    let m = meta(CHUNK);
    let version: Arc<str> = Arc::from(m.version.as_str());
    let mut readers: Vec<_> = (0..3)
        .map(|_| f.open(&m, &version, 0, Route::LocalOnly))
        .collect();
    assert_eq!(
        readers.iter().map(|r| r.collapsed).collect::<Vec<_>>(),
        vec![false, true, true]
    );
    // Let the single fetch reach the gate, then release it.
    while upstream.opens() == 0 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    for reader in &mut readers {
        let mut body = Vec::new();
        while let Some(piece) = reader.next().await {
            body.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(body, object_bytes(0..CHUNK));
    }
    assert_eq!(upstream.opens(), 1);
}

#[tokio::test]
async fn a_reader_that_goes_away_does_not_cancel_the_fetch() {
    let gate = Arc::new(Notify::new());
    let upstream = Fake::gated(SourceKind::Upstream, gate.clone());
    let f = fetcher(vec![upstream.clone()], 0);
    let m = meta(CHUNK);
    let version: Arc<str> = Arc::from(m.version.as_str());
    drop(f.open(&m, &version, 0, Route::LocalOnly));
    while upstream.opens() == 0 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    let key = m.chunk_key(&version, 0);
    for _ in 0..1000 {
        if f.memory().contains(&key) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(f.memory().contains(&key), "the abandoned fetch must finish");
    assert_eq!(
        read_all(&f, &m, 0..=CHUNK - 1).await.unwrap(),
        object_bytes(0..CHUNK)
    );
    assert_eq!(upstream.opens(), 1);
}

#[tokio::test]
async fn read_ahead_keeps_the_window_in_flight() {
    let gate = Arc::new(Notify::new());
    let upstream = Fake::gated(SourceKind::Upstream, gate.clone());
    let f = fetcher(vec![upstream.clone()], 3);
    let m = meta(10 * CHUNK);
    let mut reader = f.stream_range(m.clone(), 0..=m.length - 1, Route::LocalOnly);
    let first = tokio::spawn(async move {
        let piece = reader.next().await;
        (piece, reader)
    });
    // Only the first chunk is fetched before the first bytes arrive.
    while upstream.opens() == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(upstream.opens(), 1);
    gate.notify_one();
    let (piece, mut reader) = first.await.unwrap();
    assert!(piece.unwrap().is_ok());
    // Then the window: the chunk being read plus three ahead.
    let _ = reader.next().await;
    for _ in 0..500 {
        if upstream.opens() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(upstream.opens(), 4);
    drop(reader);
    for _ in 0..4 {
        gate.notify_one();
    }
}

#[tokio::test]
async fn the_window_grows_past_the_old_fixed_size_for_a_distant_upstream() {
    let upstream = Fake::far(Duration::from_millis(20));
    let f = adaptive(vec![upstream.clone()], 12, 64);
    let m = meta(40 * CHUNK);
    let body = read_all(&f, &m, 0..=m.length - 1).await.unwrap();
    assert_eq!(body, object_bytes(0..m.length));
    // The old fixed window was 5 chunks; the cap is 12.
    assert!(upstream.max_active() > 5, "{}", upstream.max_active());
    assert!(upstream.max_active() <= 12, "{}", upstream.max_active());
    let link = f.links.get(SourceKind::Upstream);
    assert!(link.latency.unwrap() >= 0.02, "{link:?}");
}

#[tokio::test]
async fn the_upstream_fetch_cap_holds_across_responses() {
    let upstream = Fake::far(Duration::from_millis(20));
    let f = adaptive(vec![upstream.clone()], 6, 64);
    let (a, b) = (meta(24 * CHUNK), meta(24 * CHUNK));
    let b = Arc::new(ObjectMeta {
        path: "/other".into(),
        version: "other-version".into(),
        ..(*b).clone()
    });
    let (ra, rb) = tokio::join!(
        read_all(&f, &a, 0..=a.length - 1),
        read_all(&f, &b, 0..=b.length - 1)
    );
    assert_eq!(ra.unwrap().len() as u64, a.length);
    assert_eq!(rb.unwrap().len() as u64, b.length);
    let max = upstream.max_active();
    assert!((4..=6).contains(&max), "{max} fetches at once, cap 6");
}

#[tokio::test]
async fn the_window_stays_within_the_fetch_memory_budget() {
    let upstream = Fake::far(Duration::from_millis(20));
    let f = adaptive(vec![upstream.clone()], 32, 4);
    let m = meta(24 * CHUNK);
    let body = read_all(&f, &m, 0..=m.length - 1).await.unwrap();
    assert_eq!(body, object_bytes(0..m.length));
    assert!(upstream.max_active() <= 4, "{}", upstream.max_active());
    assert_eq!(
        f.metrics.flight_bytes.get(),
        0,
        "every budget share given back"
    );
}

#[tokio::test]
async fn a_slow_reader_shrinks_the_window_to_a_few_chunks_ahead() {
    let upstream = Fake::far(Duration::from_millis(10));
    let f = adaptive(vec![upstream.clone()], 32, 64);
    let m = meta(40 * CHUNK);
    let mut reader = f.stream_range(m.clone(), 0..=m.length - 1, Route::LocalOnly);
    // About a chunk per 50 ms: far slower than the upstream delivers.
    let mut got = 0u64;
    while got < 12 * CHUNK {
        got += reader.next().await.unwrap().unwrap().len() as u64;
        tokio::time::sleep(Duration::from_millis(16)).await;
    }
    // The client pauses: what is in flight now is all that gets fetched.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read_chunks = got.div_ceil(CHUNK) as usize;
    let opened = upstream.opens();
    assert!(
        opened <= read_chunks + 3,
        "{opened} chunks fetched for a reader at chunk {read_chunks}"
    );
    assert!(f.metrics.window_chunks.get() <= 3);
    // Still correct to the end.
    let mut rest = Vec::new();
    while let Some(piece) = reader.next().await {
        rest.extend_from_slice(&piece.unwrap());
    }
    assert_eq!(rest, object_bytes(got..m.length));
}

#[tokio::test]
async fn from_a_known_distant_upstream_the_read_ahead_starts_before_the_first_bytes() {
    let upstream = Fake::far(Duration::from_millis(40));
    let f = adaptive(vec![upstream.clone()], 8, 64);
    // The first object teaches the fetcher the link: 40 ms away, fast once bytes flow.
    let first = meta(8 * CHUNK);
    read_all(&f, &first, 0..=first.length - 1).await.unwrap();
    let opened_before = upstream.opens();
    assert_eq!(opened_before, 8);

    let second = Arc::new(ObjectMeta {
        path: "/second".into(),
        version: "second-version".into(),
        ..(*meta(16 * CHUNK)).clone()
    });
    let reader_meta = second.clone();
    let f2 = f.clone();
    let read =
        tokio::spawn(async move { read_all(&f2, &reader_meta, 0..=reader_meta.length - 1).await });
    // Well before the first chunk's 40 ms are up, the rest of the window is on its way.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let early = upstream.opens() - opened_before;
    assert!(
        early >= 8,
        "{early} chunks asked for before the first bytes"
    );
    let body = read.await.unwrap().unwrap();
    assert_eq!(body, object_bytes(0..second.length));
    assert_eq!(
        upstream.opens() - opened_before,
        16,
        "every chunk fetched once"
    );
}
