//! Answers that do not say how long they are (chunked, or ending with the connection): a
//! storable one is read to its end to learn its length, up to one chunk, and then stored like
//! any other; a longer one, or one that may not be stored, is relayed as it comes.

use std::time::Duration;

use casserole_tests::{
    client::{client, get_sha256, head, header},
    harness::{NodeBuilder, NodeProcess},
    origin::{Fault, FaultScope, ObjectInfo, ObjectSpec, Origin},
};
use futures::StreamExt;

const MIB: u64 = 1 << 20;

/// A `200` without `Content-Length` to the probe's range request: chunked, ranges ignored.
fn put_unsized(origin: &Origin, path: &str, spec: ObjectSpec) -> ObjectInfo {
    let obj = origin.put(path, spec.chunked());
    origin.set_fault(path, Fault::IgnoreRange, None);
    obj
}

/// Two `GET`s of `url`: the first stores `obj` (a miss), the second is a hit; each answer is
/// `obj` whole. Their headers, for further checks.
async fn stored_then_hit(url: &str, obj: &ObjectInfo) -> Vec<reqwest::header::HeaderMap> {
    let mut answers = Vec::new();
    for expected in ["casserole; fwd=miss", "casserole; hit; detail=memory"] {
        let got = get_sha256(url, &[]).await.unwrap();
        assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
        assert_eq!(header(&got.headers, "cache-status"), expected);
        answers.push(got.headers);
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storable_answer_without_a_length_is_stored_once_its_end_is_read() {
    let origin = Origin::start().await;
    let obj = put_unsized(
        &origin,
        "/index.json",
        ObjectSpec::new(100_000).seed(1).max_age(600),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/index.json", node.url());
    for headers in stored_then_hit(&url, &obj).await {
        assert_eq!(header(&headers, "content-length"), "100000");
    }
    let (status, headers) = head(&url, &[]).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        header(&headers, "cache-status").contains("hit"),
        "{headers:?}"
    );
    let part = get_sha256(&url, &[("range", "bytes=1000-1999")])
        .await
        .unwrap();
    assert_eq!(part.status.as_u16(), 206);
    assert_eq!(part.sha256, obj.range_sha256(1000, 1999));
    assert_eq!(
        origin.path_stats("/index.json").requests,
        1,
        "one upstream request in all"
    );
}

/// A `HEAD` without a length says nothing a `GET` cannot: the `GET` right after it still reads
/// its answer to the end and stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_without_a_length_does_not_keep_the_get_after_it_from_storing() {
    let origin = Origin::start().await;
    let obj = put_unsized(&origin, "/dyn", ObjectSpec::new(5000).seed(4).max_age(600));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/dyn", node.url());
    let (status, headers) = head(&url, &[]).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        header(&headers, "cache-status").contains("no-length"),
        "{headers:?}"
    );
    stored_then_hit(&url, &obj).await;
    let stats = origin.path_stats("/dyn");
    assert_eq!((stats.head_requests, stats.get_requests), (1, 1));
}

/// A `HEAD` of an answer without a length, held 800 ms by the origin, and a `GET` with
/// `headers` sent while it is under way: the `GET`'s `Cache-Status`, then the node's URL.
async fn get_during_a_slow_head(
    origin: &Origin,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, NodeProcess, ObjectInfo) {
    let obj = put_unsized(origin, path, ObjectSpec::new(5000).seed(5).max_age(600));
    let slow_head = Duration::from_millis(800);
    origin.set_fault_scoped(path, Fault::Delay(slow_head), FaultScope::Heads, Some(1));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}{path}", node.url());
    let head_url = url.clone();
    let first = tokio::spawn(async move { head(&head_url, &[]).await.unwrap() });
    tokio::time::sleep(slow_head / 4).await;
    let during = get_sha256(&url, headers).await.unwrap();
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!((during.status.as_u16(), during.sha256), (200, obj.sha256()));
    (
        header(&during.headers, "cache-status").to_string(),
        node,
        obj,
    )
}

/// A `GET` arriving while a `HEAD`'s lookup is under way waits its turn, then learns the
/// length itself: the `HEAD`'s answer is no verdict on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_arriving_during_a_head_without_a_length_stores_the_answer() {
    let origin = Origin::start().await;
    let (status, node, obj) = get_during_a_slow_head(&origin, "/later", &[]).await;
    assert_eq!(status, "casserole; fwd=miss");
    let got = get_sha256(&format!("{}/later", node.url()), &[])
        .await
        .unwrap();
    assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
    assert_eq!(
        header(&got.headers, "cache-status"),
        "casserole; hit; detail=memory"
    );
    let stats = origin.path_stats("/later");
    assert_eq!((stats.head_requests, stats.get_requests), (1, 1));
}

/// A `GET` that asks for confirmation (`no-cache`) does not wait its turn: it joins the
/// `HEAD`'s lookup and is relayed on its answer (which has no length). That answer is still
/// no verdict on the object: the next `GET` learns it and stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_that_joined_a_head_without_a_length_does_not_keep_the_next_from_storing() {
    let origin = Origin::start().await;
    let no_cache = [("cache-control", "no-cache")];
    let (status, node, obj) = get_during_a_slow_head(&origin, "/joined", &no_cache).await;
    assert_eq!(
        status, "casserole; fwd=uri-miss; detail=no-length",
        "the GET joined the HEAD's lookup"
    );
    let url = format!("{}/joined", node.url());
    stored_then_hit(&url, &obj).await;
    let stats = origin.path_stats("/joined");
    assert_eq!((stats.head_requests, stats.get_requests), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_without_a_length_longer_than_a_chunk_is_relayed_whole() {
    let origin = Origin::start().await;
    let obj = put_unsized(
        &origin,
        "/long.bin",
        ObjectSpec::new(3 * MIB + 5).seed(2).max_age(600),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/long.bin", node.url());
    for round in 1..=2u64 {
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
        assert_eq!(
            header(&got.headers, "cache-status"),
            "casserole; fwd=uri-miss; detail=no-length"
        );
        assert_eq!(
            origin.path_stats("/long.bin").requests,
            round,
            "one upstream request per client request"
        );
    }
}

/// An answer that may not be stored is not read ahead of the client: its first bytes reach the
/// client while the origin still holds the rest back (a stream of events, a long poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uncacheable_answer_without_a_length_is_relayed_as_it_comes() {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/events",
        ObjectSpec::new(MIB)
            .seed(3)
            .cache_control("no-store")
            .chunked(),
    );
    origin.set_fault("/events", Fault::IgnoreRange, None);
    let node = NodeBuilder::new(origin.url()).spawn().await;
    // The origin sends 1000 bytes, then holds the rest for minutes.
    origin.set_fault("/events", Fault::StallAfter(1000), None);
    let res = client()
        .get(format!("{}/events", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut got = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < 1000 {
            got.extend_from_slice(&body.next().await.expect("more body").unwrap());
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "the bytes the origin sent reach the client before the rest ({} so far)",
        got.len()
    );
    assert_eq!(got[..1000], obj.bytes(0, 999)[..]);
}
