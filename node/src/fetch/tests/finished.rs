//! A finished chunk: the memory it holds, and where the next request finds it (the memory
//! tier, or its flight until every store has it).

use super::*;
use crate::source::Chunk;

/// A store like the disk tier: it serves what it kept, and keeping takes until `gate` opens.
struct SlowStore {
    kept: Mutex<Option<Chunk>>,
    gate: Arc<Notify>,
}

impl ChunkSource for SlowStore {
    fn kind(&self) -> SourceKind {
        SourceKind::Disk
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        let kept = self.kept.lock().unwrap().clone();
        Box::pin(async move {
            Ok(kept.map(|chunk| Opened {
                stream: Box::pin(futures::stream::iter(
                    chunk
                        .parts_from(request.offset as usize)
                        .into_iter()
                        .map(Ok),
                )),
                starts_at: request.offset,
                origin: SourceKind::Disk,
            }))
        })
    }

    fn keep<'a>(
        &'a self,
        _key: &'a ChunkKey,
        chunk: &'a Chunk,
        _origin: SourceKind,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.gate.notified().await;
            *self.kept.lock().unwrap() = Some(chunk.clone());
        })
    }
}

async fn read_chunk(mut reader: ChunkReader) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(piece) = reader.next().await {
        body.extend_from_slice(&piece.unwrap());
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_memory_turns_away_is_found_while_the_disk_writes_it() {
    let upstream = Fake::new(SourceKind::Upstream, Behaviour::Serves);
    let gate = Arc::new(Notify::new());
    let disk = Arc::new(SlowStore {
        kept: Mutex::new(None),
        gate: gate.clone(),
    });
    let registrar = Registrar::new();
    // A memory tier smaller than a chunk: it keeps none (as a full tier's admission refuses a
    // new object's chunks).
    let memory = Arc::new(MemoryTier::new(
        CHUNK / 2,
        true,
        crate::tier::memory::MemoryMetrics::new(&registrar),
    ));
    let f = ChunkFetcher::new(
        Sources {
            memory,
            peers: None,
            local: vec![disk.clone(), upstream.clone()],
            whole_objects: None,
        },
        None,
        FetchConfig {
            readahead: Some(0),
            max_upstream_fetches: 4,
            flight_bytes: 4 * CHUNK,
            tier_bytes: CHUNK / 2,
            budget_timeout: Duration::from_secs(5),
        },
        FetchMetrics::new(&registrar),
    );
    let m = meta(3 * CHUNK);
    let version: Arc<str> = Arc::from(m.version.as_str());
    let whole = object_bytes(CHUNK..2 * CHUNK);
    let first = read_chunk(f.open(&m, &version, 1, Route::LocalOnly)).await;
    assert_eq!(first, whole);
    assert!(!f.memory().contains(&m.chunk_key(&version, 1)));

    // Every byte handed out, the disk still writing: asking again is a hit, not a second fetch.
    let again = f.open(&m, &version, 1, Route::LocalOnly);
    assert!(!again.collapsed);
    assert_eq!(again.origin(), SourceKind::Memory);
    assert_eq!(read_chunk(again).await, whole);
    assert_eq!(upstream.opens(), 1);

    // Once the disk has it, the flight is gone and the disk serves it.
    gate.notify_one();
    for _ in 0..200 {
        if f.flights.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(f.flights.is_empty(), "the flight left the map");
    let later = f.open(&m, &version, 1, Route::LocalOnly);
    assert_eq!(read_chunk(later).await, whole);
    assert_eq!(upstream.opens(), 1, "the chunk came from the upstream once");
}

#[tokio::test]
async fn chunks_held_by_readers_count_against_the_memory_bound() {
    let upstream = Fake::new(SourceKind::Upstream, Behaviour::Serves);
    let f = without_readahead(upstream.clone(), 2, 2, Duration::from_millis(300));
    let m = meta(8 * CHUNK);
    let version: Arc<str> = Arc::from(m.version.as_str());
    // Four readers each take a chunk and hold on to it, as stalled clients would: between the
    // memory tier and them, they hold all four chunks' worth of the account.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut reader = f.open(&m, &version, i, Route::LocalOnly);
        let first = reader.next().await.unwrap().unwrap();
        held.push((reader, first));
    }
    // A fifth chunk finds no memory left: a clear 503, not a process past its bound.
    let err = read_all(&f, &m, 4 * CHUNK..=5 * CHUNK - 1)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Busy(_)), "{err}");
    assert_eq!(err.client_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    // Once they let go, what the tier does not keep is released and the fetch goes ahead.
    drop(held);
    assert_eq!(
        read_all(&f, &m, 4 * CHUNK..=5 * CHUNK - 1).await.unwrap(),
        object_bytes(4 * CHUNK..5 * CHUNK)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_holding_every_byte_finds_the_chunk_in_memory() {
    // The last bytes reach readers only after the chunk is in memory (the tier, or its finished
    // flight), so a client that got the whole body and asks again is a hit, not a collapsed miss.
    let upstream = Fake::new(SourceKind::Upstream, Behaviour::Serves);
    // Room in memory for every round's chunk: admission never turns one away.
    let f = without_readahead(upstream.clone(), 4, 400, Duration::from_secs(5));
    for i in 0..200 {
        let m = Arc::new(crate::test_support::object_meta(
            &format!("/obj{i}"),
            CHUNK,
            CHUNK,
        ));
        let version: Arc<str> = Arc::from(m.version.as_str());
        let mut reader = f.open(&m, &version, 0, Route::LocalOnly);
        let mut received = 0;
        while let Some(piece) = reader.next().await {
            received += piece.unwrap().len() as u64;
            if received == CHUNK {
                let again = f.open(&m, &version, 0, Route::LocalOnly);
                assert!(!again.collapsed, "round {i}: joined a finished flight");
                assert_eq!(again.origin(), SourceKind::Memory, "round {i}");
            }
        }
    }
    assert_eq!(upstream.opens(), 200);
}
