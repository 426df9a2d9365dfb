//! Answers the cache does not keep are relayed as the upstream sent them, and cost one upstream
//! request per client request: the lookup's own answer is the response (RFC 9111 §3), and an
//! origin's error status is the origin's, not the node's `502` (RFC 9110 §15.6: `502`/`504` are for
//! an upstream that did not answer).

use casserole_tests::{
    client::{get_bytes, head, header, sha256_hex},
    harness::NodeBuilder,
    origin::{EtagMode, ObjectSpec, Origin},
};

/// Uncacheable for several reasons, whole in the first answer: one upstream request for the
/// first client, one for each later one (hit-for-pass), the origin's bytes every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uncacheable_answer_is_the_response_one_upstream_request_each() {
    let origin = Origin::start().await;
    let specs = [
        (
            "/no-store",
            ObjectSpec::new(5000).seed(1).cache_control("no-store"),
        ),
        (
            "/private",
            ObjectSpec::new(5000)
                .seed(2)
                .cache_control("private, max-age=600"),
        ),
        (
            "/cookie",
            ObjectSpec::new(5000).seed(3).max_age(600).set_cookie(),
        ),
        (
            "/stale-no-validator",
            ObjectSpec::new(5000)
                .seed(4)
                .cache_control("max-age=0")
                .etag(EtagMode::None)
                .no_last_modified(),
        ),
        (
            "/vary-star",
            ObjectSpec::new(5000).seed(5).max_age(600).vary("*"),
        ),
        (
            "/chunked",
            ObjectSpec::new(5000)
                .seed(6)
                .cache_control("no-store")
                .chunked(),
        ),
    ];
    let objects: Vec<_> = specs
        .into_iter()
        .map(|(path, spec)| (path, origin.put(path, spec)))
        .collect();
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for (path, obj) in &objects {
        for round in 1..=2u64 {
            let (status, headers, body) = get_bytes(&format!("{}{path}", node.url()), &[])
                .await
                .unwrap();
            assert_eq!(status, 200, "{path}");
            assert_eq!(sha256_hex(&body), obj.sha256(), "{path}");
            assert!(
                header(&headers, "cache-status").contains("fwd="),
                "{path}: {headers:?}"
            );
            assert_eq!(
                origin.path_stats(path).requests,
                round,
                "{path}: one upstream request per client request"
            );
        }
    }
    // A HEAD of an uncacheable object: its answer is relayed too.
    let (status, headers) = head(&format!("{}/no-store-head", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(status, 404, "not there: the origin's own answer");
    assert!(!header(&headers, "cache-status").is_empty());
    assert_eq!(origin.path_stats("/no-store-head").requests, 1);
}

/// The origin's error statuses reach the client with their headers and body: `404`, `410`,
/// `500`, `503` with `Retry-After`, `504`, and an unregistered `599`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_errors_are_relayed_unchanged() {
    let origin = Origin::start().await;
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for code in [404u16, 410, 500, 503, 504, 599] {
        let path = format!("/status-{code}");
        let obj = origin.put(
            &path,
            ObjectSpec::new(700)
                .seed(u64::from(code))
                .status(code)
                .header("retry-after", "120"),
        );
        let (status, headers, body) = get_bytes(&format!("{}{path}", node.url()), &[])
            .await
            .unwrap();
        assert_eq!(
            status.as_u16(),
            code,
            "{path}: {:?}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(header(&headers, "retry-after"), "120", "{path}");
        assert_eq!(sha256_hex(&body), obj.sha256(), "{path}: the origin's body");
        assert_eq!(origin.path_stats(&path).requests, 1, "{path}: asked once");
    }
    // An upstream that does not answer at all is the node's own 502.
    origin.shutdown().await;
    let (status, _, body) = get_bytes(&format!("{}/gone", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
}
