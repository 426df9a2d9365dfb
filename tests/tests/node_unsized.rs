//! Answers that do not say how long they are (chunked, or ending with the connection): a
//! storable one is read to its end to learn its length, up to one chunk, and then stored like
//! any other; a longer one, or one that may not be stored, is relayed as it comes.

use std::time::Duration;

use casserole_tests::{
    client::{client, get_sha256, head, header},
    harness::NodeBuilder,
    origin::{Fault, ObjectSpec, Origin},
};
use futures::StreamExt;

const MIB: u64 = 1 << 20;

/// A `200` without `Content-Length` to the probe's range request: chunked, ranges ignored.
fn put_unsized(
    origin: &Origin,
    path: &str,
    spec: ObjectSpec,
) -> casserole_tests::origin::ObjectInfo {
    let obj = origin.put(path, spec.chunked());
    origin.set_fault(path, Fault::IgnoreRange, None);
    obj
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
    for expected in ["casserole; fwd=miss", "casserole; hit; detail=memory"] {
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
        assert_eq!(header(&got.headers, "cache-status"), expected);
        assert_eq!(header(&got.headers, "content-length"), "100000");
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
    for expected in ["casserole; fwd=miss", "casserole; hit; detail=memory"] {
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
        assert_eq!(header(&got.headers, "cache-status"), expected);
    }
    let stats = origin.path_stats("/dyn");
    assert_eq!((stats.head_requests, stats.get_requests), (1, 1));
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
