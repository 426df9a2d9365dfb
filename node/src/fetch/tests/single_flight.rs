//! The claim / join / complete / fail protocol, whoever claims: a whole-object stream's claims
//! hold memory in `casserole_fetch_flight_bytes` like a range fetch's, and a claim dropped
//! mid-fetch (a panic, a cancelled task) never leaves readers waiting.

use super::*;
use crate::fetch::single_flight::Claimed;

fn key_of(m: &ObjectMeta, index: u64) -> ChunkKey {
    m.chunk_key(&Arc::from(m.version.as_str()), index)
}

#[tokio::test]
async fn a_chunk_a_stream_claims_counts_in_the_flight_gauge_until_it_is_kept() {
    let f = fetcher(vec![], 0);
    let m = meta(2 * CHUNK);
    let key = key_of(&m, 0);
    let claim = f
        .flights
        .claim_now(&key, CHUNK as u32)
        .expect("free memory");
    assert_eq!(f.metrics.flight_bytes.get(), CHUNK as i64);
    assert!(
        f.flights.claim_now(&key, CHUNK as u32).is_none(),
        "one fetch per chunk"
    );
    let Claimed::Joined(mut joined) = f.flights.claim(&key) else {
        panic!("a reader arriving meanwhile joins the stream's fetch");
    };
    // Nothing was handed out before: the whole chunk is its held-back last bytes.
    let whole = Bytes::from(object_bytes(0..CHUNK));
    let completing = claim
        .complete(whole.clone().into(), whole.clone(), SourceKind::Upstream)
        .await;
    assert_eq!(f.metrics.flight_bytes.get(), 0, "the fetch is over");
    completing.store(&[]).await;
    assert!(f.flights.is_empty());
    let mut got = Vec::new();
    while let Some(piece) = joined.next().await {
        got.extend_from_slice(&piece.unwrap());
    }
    assert!(got == whole, "the joined reader got the chunk");
    assert!(matches!(f.flights.claim(&key), Claimed::Hit(_)));
}

#[tokio::test]
async fn a_claim_dropped_mid_fetch_fails_its_readers_and_frees_the_chunk() {
    let f = fetcher(vec![], 0);
    let m = meta(2 * CHUNK);
    let key = key_of(&m, 1);
    let claim = f
        .flights
        .claim_now(&key, CHUNK as u32)
        .expect("free memory");
    let mut leader = claim.follow();
    assert!(!leader.collapsed);
    drop(claim);
    assert!(matches!(
        leader.next().await,
        Some(Err(FetchError::Abandoned))
    ));
    assert_eq!(f.metrics.flight_bytes.get(), 0);
    assert!(f.flights.is_empty());
    assert!(
        matches!(f.flights.claim(&key), Claimed::Led(_)),
        "fetched afresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_of_a_version_purged_mid_fetch_reaches_its_reader_but_no_store() {
    let gate = Arc::new(Notify::new());
    let upstream = Fake::gated(SourceKind::Upstream, gate.clone());
    let f = fetcher(vec![upstream.clone()], 0);
    let m = meta(CHUNK);
    let version: Arc<str> = Arc::from(m.version.as_str());
    let mut reader = f.open(&m, &version, 0, Route::LocalOnly);
    // The purge comes while the chunk is on its way.
    f.forget_version(&m.version).await;
    gate.notify_one();
    let mut got = Vec::new();
    while let Some(piece) = reader.next().await {
        got.extend_from_slice(&piece.unwrap());
    }
    assert!(
        got == object_bytes(0..CHUNK),
        "the reader still gets its bytes"
    );
    for _ in 0..200 {
        if f.flights.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(f.flights.is_empty());
    assert!(
        !f.memory().contains(&key_of(&m, 0)),
        "no chunk of the purged version landed"
    );
    // Looked up again after the purge (unchanged upstream: the same version), it is kept.
    let mut again = f.open(&m, &version, 0, Route::LocalOnly);
    gate.notify_one();
    while let Some(piece) = again.next().await {
        piece.unwrap();
    }
    assert_eq!(upstream.opens(), 2);
    for _ in 0..200 {
        if f.memory().contains(&key_of(&m, 0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(f.memory().contains(&key_of(&m, 0)));
}

/// Read-ahead never waits for memory: with none free it starts no fetch (and leaves nothing in
/// the map), and it joins a fetch already running whatever memory is free.
#[tokio::test]
async fn read_ahead_starts_a_fetch_only_with_memory_free_now() {
    let f = without_readahead(
        Fake::new(SourceKind::Upstream, Behaviour::Serves),
        1,
        1,
        Duration::from_secs(5),
    );
    let m = meta(8 * CHUNK);
    let held: Vec<_> = (0..2)
        .map(|i| {
            f.flights
                .claim_now(&key_of(&m, i), CHUNK as u32)
                .expect("free memory")
        })
        .collect();
    let ahead = key_of(&m, 2);
    assert!(
        f.flights.claim_ahead(&ahead, CHUNK as u32).is_none(),
        "no memory free"
    );
    let Claimed::Led(mut waiting) = f.flights.claim(&ahead) else {
        panic!("nothing had the chunk, so the first claim did not start a fetch");
    };
    assert!(
        matches!(
            f.flights.claim_ahead(&ahead, CHUNK as u32),
            Some(Claimed::Joined(_))
        ),
        "a running fetch is joined"
    );
    drop(held);
    waiting.reserve(CHUNK as u32).await.expect("memory freed");
    assert_eq!(f.metrics.flight_bytes.get(), CHUNK as i64);
    let Some(Claimed::Led(_next)) = f.flights.claim_ahead(&key_of(&m, 3), CHUNK as u32) else {
        panic!("memory is free for one more");
    };
    assert_eq!(
        f.metrics.flight_bytes.get(),
        2 * CHUNK as i64,
        "its memory is held"
    );
}
