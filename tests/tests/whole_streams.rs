//! Whole-object streams (objects the upstream only sends whole: no validator, or `Range`
//! ignored) cannot be turned into detached, uncapped downloads (issue 19, item 2): reloads of a
//! path collapse into one upstream request, a stream nobody reads stops once it cannot keep
//! what it reads, and streams count against `--max-upstream-fetches`. A stream keeps pace with
//! its readers where the chunks it passed may not be kept (no disk), so a reader that lags never
//! finds part of an object without a validator gone; a stalled reader does not hold the others.

use std::time::Duration;

use casserole_tests::{
    client::{client, get_sha256, head},
    harness::NodeBuilder,
    origin::{EtagMode, ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;

/// Waits (bounded) until the origin sends nothing any more, so its counters are final.
async fn origin_settled(origin: &Origin) {
    for _ in 0..600 {
        if origin.stats().in_flight == 0 {
            let sent = origin.stats().body_bytes_sent;
            tokio::time::sleep(Duration::from_millis(200)).await;
            if origin.stats().in_flight == 0 && origin.stats().body_bytes_sent == sent {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the origin is still sending after 60 s: {:?}",
        origin.stats()
    );
}

/// GETs `url` with `headers` and hangs up as soon as the response head is here.
async fn get_and_hang_up(url: String, headers: &'static [(&'static str, &'static str)]) {
    let mut req = client().get(&url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await.expect("the node answers");
    assert!(res.status().is_success(), "{url}: {}", res.status());
    drop(res);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_that_hang_up_cost_the_origin_at_most_the_object_once() {
    let origin = Origin::start().await;
    // No validator, and Range ignored: every lookup is a new version, fetched whole. The
    // origin takes a moment to answer, as a real one does, so the reloads overlap.
    let size = 64 * MIB;
    let obj = origin.put(
        "/whole.iso",
        ObjectSpec::new(size)
            .seed(1)
            .etag(EtagMode::None)
            .no_last_modified()
            .accept_ranges_none()
            .max_age(3600)
            .latency(Duration::from_millis(300)),
    );
    // On the default memory (100M: a tier of 63.6 MiB, less than the object).
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/whole.iso", node.url());
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    origin_settled(&origin).await;
    origin.reset_stats();

    let reloads = (0..20).map(|_| get_and_hang_up(url.clone(), &[("cache-control", "no-cache")]));
    futures::future::join_all(reloads).await;
    origin_settled(&origin).await;

    let stats = origin.stats();
    eprintln!(
        "20 reloads that hung up: {} upstream GETs, {} body bytes (object {size})",
        stats.get_requests, stats.body_bytes_sent
    );
    assert_eq!(
        stats.get_requests, 1,
        "the reloads share one upstream request"
    );
    assert!(
        stats.body_bytes_sent <= size,
        "{} bytes from the origin for a {size}-byte object",
        stats.body_bytes_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_of_a_validated_object_share_one_revalidation() {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/tagged.bin",
        ObjectSpec::new(MIB)
            .seed(2)
            .max_age(3600)
            .latency(Duration::from_millis(300)),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/tagged.bin", node.url());
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    origin.reset_stats();
    let reloads = (0..10).map(|_| get_sha256(&url, &[("cache-control", "no-cache")]));
    for got in futures::future::join_all(reloads).await {
        assert_eq!(got.unwrap().sha256, obj.sha256());
    }
    let stats = origin.stats();
    assert_eq!(stats.requests, 1, "one conditional request: {stats:?}");
    assert_eq!(stats.not_modified, 1);
    // A reload after that one is answered asks again.
    get_sha256(&url, &[("cache-control", "no-cache")])
        .await
        .unwrap();
    assert_eq!(origin.stats().requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_nobody_reads_stops_once_it_cannot_keep_what_it_reads() {
    let origin = Origin::start().await;
    // Larger than the node's memory, no disk: what a stream reads with no reader would only
    // evict its own earlier chunks.
    let size = 64 * MIB;
    origin.put(
        "/large.iso",
        ObjectSpec::new(size)
            .seed(3)
            .accept_ranges_none()
            .max_age(3600)
            .throttle(16 * MIB),
    );
    let node = NodeBuilder::new(origin.url())
        .arg("--max-memory-usage=32Mi")
        .spawn()
        .await;
    get_and_hang_up(format!("{}/large.iso", node.url()), &[]).await;
    origin_settled(&origin).await;
    let sent = origin.stats().body_bytes_sent;
    eprintln!("a stream whose client hung up: {sent} of {size} bytes from the origin");
    assert!(
        sent < size / 2,
        "{sent} bytes read for a client that left at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_count_against_the_upstream_fetch_cap() {
    let origin = Origin::start().await;
    let spec = |seed| {
        ObjectSpec::new(4 * MIB)
            .seed(seed)
            .accept_ranges_none()
            .max_age(3600)
            .throttle(8 * MIB)
    };
    let a = origin.put("/a.bin", spec(4));
    let b = origin.put("/b.bin", spec(5));
    let node = NodeBuilder::new(origin.url())
        .arg("--max-upstream-fetches=1")
        .spawn()
        .await;
    // Looked up first (a HEAD has no body), so both GETs read through whole-object streams.
    for path in ["/a.bin", "/b.bin"] {
        let (status, _) = head(&format!("{}{path}", node.url()), &[]).await.unwrap();
        assert_eq!(status, 200);
    }
    origin.reset_stats();
    let (got_a, got_b) = tokio::join!(
        get_sha256(&format!("{}/a.bin", node.url()), &[]),
        get_sha256(&format!("{}/b.bin", node.url()), &[]),
    );
    assert_eq!(got_a.unwrap().sha256, a.sha256());
    assert_eq!(got_b.unwrap().sha256, b.sha256());
    let stats = origin.stats();
    assert_eq!(stats.full_gets, 2, "{stats:?}");
    assert_eq!(stats.max_in_flight, 1, "one upstream fetch at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_version_has_one_whole_object_stream_at_a_time() {
    let origin = Origin::start().await;
    let size = 64 * MIB;
    let obj = origin.put(
        "/paused.iso",
        ObjectSpec::new(size)
            .seed(6)
            .accept_ranges_none()
            .max_age(3600)
            .throttle(16 * MIB),
    );
    // Memory for a few chunks only: while the client pauses, the stream passes chunks it has no
    // room to keep, which the client then needs from a stream of their own.
    let node = NodeBuilder::new(origin.url())
        .arg("--max-memory-usage=16Mi")
        .spawn()
        .await;
    let mut res = client()
        .get(format!("{}/paused.iso", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = Vec::with_capacity(size as usize);
    while (body.len() as u64) < MIB {
        body.extend_from_slice(&res.chunk().await.unwrap().expect("more body"));
    }
    // Paused while the stream is still running (64 MiB take 4 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Some(piece) = res.chunk().await.unwrap() {
        body.extend_from_slice(&piece);
    }
    assert_eq!(body.len() as u64, size);
    assert_eq!(casserole_tests::client::sha256_hex(&body), obj.sha256());
    let stats = origin.stats();
    eprintln!(
        "a paused reader: {} whole GETs, at most {} at once, {} body bytes",
        stats.full_gets, stats.max_in_flight, stats.body_bytes_sent
    );
    assert_eq!(stats.max_in_flight, 1, "never two streams of one version");
    assert!(
        stats.body_bytes_sent < size * 3 / 2,
        "the stream nobody read on stopped: {} bytes",
        stats.body_bytes_sent
    );
}

/// An object without a validator whose upstream ignores `Range`, larger than the memory tier
/// on the defaults (100M: the tier holds 63.6 MiB), fast to fetch.
fn unvalidated_whole_object(origin: &Origin, path: &str, seed: u64) -> String {
    origin
        .put(
            path,
            ObjectSpec::new(64 * MIB)
                .seed(seed)
                .etag(EtagMode::None)
                .no_last_modified()
                .accept_ranges_none()
                .max_age(3600)
                .throttle(32 * MIB),
        )
        .sha256()
}

/// Reads `res` to its end, pausing for `pause` once the first MiB is here.
async fn read_with_a_pause(mut res: reqwest::Response, pause: Duration) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut paused = false;
    loop {
        match res.chunk().await {
            Ok(Some(piece)) => body.extend_from_slice(&piece),
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("cut short after {} bytes: {e}", body.len())),
        }
        if !paused && body.len() as u64 >= MIB {
            paused = true;
            tokio::time::sleep(pause).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_that_lags_behind_the_stream_gets_the_whole_unvalidated_object() {
    let origin = Origin::start().await;
    let sha256 = unvalidated_whole_object(&origin, "/lagging.iso", 7);
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let res = client()
        .get(format!("{}/lagging.iso", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Paused while the stream could run 48 MiB ahead: past what the memory tier keeps of it
    // once the rest arrives, with no other response that may supply a chunk it lets go.
    let body = read_with_a_pause(res, Duration::from_millis(1500))
        .await
        .expect("the lagging reader gets every byte");
    assert_eq!(body.len() as u64, 64 * MIB);
    assert_eq!(casserole_tests::client::sha256_hex(&body), sha256);
    origin_settled(&origin).await;
    let stats = origin.stats();
    assert_eq!(stats.get_requests, 1, "one upstream request: {stats:?}");
    assert_eq!(stats.body_bytes_sent, 64 * MIB, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_reader_does_not_hold_back_the_others() {
    let origin = Origin::start().await;
    let sha256 = unvalidated_whole_object(&origin, "/shared.iso", 8);
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/shared.iso", node.url());
    let stalled = client().get(&url).send().await.unwrap();
    assert_eq!(stalled.status(), 200);
    // The second reader joins the first one's stream, and reads on while the first stalls
    // far longer than the stream waits for a reader that does not move.
    let stall = Duration::from_secs(20);
    let stall_ends = std::time::Instant::now() + stall;
    let stalled = tokio::spawn(read_with_a_pause(stalled, stall));
    let reading = get_sha256(&url, &[])
        .await
        .expect("the other reader is served");
    assert_eq!(reading.sha256, sha256);
    assert!(
        std::time::Instant::now() < stall_ends,
        "the reader that moved was served while the other one still stalled"
    );
    stalled.abort();
    assert_eq!(origin.stats().get_requests, 1, "{:?}", origin.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_too_late_for_the_stream_gets_the_object_from_a_new_lookup() {
    let origin = Origin::start().await;
    let sha256 = unvalidated_whole_object(&origin, "/late.iso", 9);
    // Memory for a few chunks: the stream's first chunks are gone long before it ends.
    let node = NodeBuilder::new(origin.url())
        .arg("--max-memory-usage=16Mi")
        .spawn()
        .await;
    let url = format!("{}/late.iso", node.url());
    let mut first = client().get(&url).send().await.unwrap();
    let mut body = Vec::new();
    while (body.len() as u64) < 32 * MIB {
        body.extend_from_slice(&first.chunk().await.unwrap().expect("more body"));
    }
    // The object's first chunk is gone, and nothing but this version's one stream may supply
    // it: the late reader is answered from a new lookup (a version of its own), whole.
    let late = tokio::spawn(get_sha256(&url, &[]));
    while let Some(piece) = first.chunk().await.unwrap() {
        body.extend_from_slice(&piece);
    }
    assert_eq!(casserole_tests::client::sha256_hex(&body), sha256);
    let late = late.await.unwrap().expect("the late reader is served");
    assert_eq!((late.status.as_u16(), late.sha256), (200, sha256));
    let stats = origin.stats();
    assert_eq!(stats.get_requests, 2, "its own stream: {stats:?}");
}
