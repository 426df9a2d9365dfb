//! Upstream faults: the client gets a clear 502/504 or an aborted stream (never a short body that
//! looks complete), nothing wrong is cached, and the next request retries.

use casserole_tests::{
    client::{get_bytes, get_sha256, header},
    harness::{free_port, NodeBuilder, NodeProcess},
    origin::{Fault, FaultScope, ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;

async fn setup(size: u64) -> (Origin, NodeProcess, String) {
    let origin = Origin::start().await;
    origin.put("/f.bin", ObjectSpec::new(size).seed(21));
    let node = NodeBuilder::new(origin.url())
        .arg("--upstream-read-timeout=1s")
        .spawn()
        .await;
    let url = format!("{}/f.bin", node.url());
    (origin, node, url)
}

/// The object is served completely and correctly once the fault is gone.
async fn recovers(origin: &Origin, url: &str) {
    let got = get_sha256(url, &[])
        .await
        .expect("the next request succeeds");
    assert_eq!(got.status, 200);
    assert_eq!(got.sha256, origin.info("/f.bin").sha256());
    // And again from the cache: what was cached is right.
    let again = get_sha256(url, &[]).await.unwrap();
    assert_eq!(again.sha256, origin.info("/f.bin").sha256());
}

/// A range in the object's first chunk: afterwards its metadata is stored (fresh) and that chunk
/// held, the others not.
async fn hold_the_first_chunk(url: &str) {
    let (status, _, _) = get_bytes(url, &[("range", "bytes=0-99")]).await.unwrap();
    assert_eq!(status, 206);
}

/// A range in the object's third chunk (not held after `hold_the_first_chunk`).
async fn get_in_the_third_chunk(url: &str) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    get_bytes(url, &[("range", "bytes=4194304-4194399")])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_5xx_is_relayed_then_retried() {
    let (origin, node, url) = setup(6 * MIB).await;
    origin.set_fault("/f.bin", Fault::Status(503), Some(5));
    // The lookup's answer is the origin's 503, relayed as it came (RFC 9110 §15.6.4).
    let (status, _, body) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(String::from_utf8_lossy(&body), "injected fault\n");
    origin.clear_faults("/f.bin");
    recovers(&origin, &url).await;
    assert!(
        node.metric(r#"casserole_upstream_errors_total{reason="status"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_and_unreachable_upstreams_are_502() {
    let (origin, _node, url) = setup(4 * MIB).await;
    origin.set_fault("/f.bin", Fault::Refuse, None);
    let (status, _, _) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(status, 502);
    origin.clear_faults("/f.bin");
    recovers(&origin, &url).await;

    // Nothing listens on the upstream port at all.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let node = NodeBuilder::new(dead).spawn().await;
    let (status, _, body) = get_bytes(&format!("{}/x", node.url()), &[]).await.unwrap();
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("unreachable"),
        "{body:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stall_mid_chunk_aborts_the_response() {
    let (origin, node, url) = setup(6 * MIB).await;
    // Twice: the first stall (the probe's first chunk) is resumed from the byte where it
    // stopped; a stall of the upstream range request itself has no source left to go to.
    origin.set_fault_scoped(
        "/f.bin",
        Fault::StallAfter(100_000),
        FaultScope::RangeGets,
        Some(2),
    );
    let err = get_sha256(&url, &[])
        .await
        .expect_err("a stalled upstream must not look complete");
    assert!(format!("{err:#}").contains("aborted"), "{err:#}");
    assert!(
        node.metric(r#"casserole_upstream_errors_total{reason="timeout"}"#)
            .await
            >= 1.0
    );
    recovers(&origin, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stall_before_the_first_byte_is_a_504() {
    let (origin, _node, url) = setup(4 * MIB).await;
    origin.set_fault_scoped("/f.bin", Fault::StallAfter(0), FaultScope::RangeGets, None);
    let (status, _, _) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(status, 504);
    origin.clear_faults("/f.bin");
    recovers(&origin, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_chunk_aborts_the_response() {
    let (origin, _node, url) = setup(6 * MIB).await;
    origin.set_fault_scoped(
        "/f.bin",
        Fault::TruncateAfter(500_000),
        FaultScope::RangeGets,
        Some(2),
    );
    assert!(
        get_sha256(&url, &[]).await.is_err(),
        "truncated upstream body must abort"
    );
    recovers(&origin, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_content_range_is_refused() {
    let (origin, node, url) = setup(6 * MIB).await;
    origin.set_fault("/f.bin", Fault::WrongContentRange, None);
    let (status, _, body) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("Content-Range"),
        "{body:?}"
    );
    assert!(
        node.metric(r#"casserole_upstream_errors_total{reason="bad_range"}"#)
            .await
            >= 1.0
    );
    origin.clear_faults("/f.bin");
    recovers(&origin, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_probe_stalling_mid_chunk_is_resumed_where_it_stopped() {
    let (origin, node, url) = setup(6 * MIB).await;
    origin.set_fault_scoped(
        "/f.bin",
        Fault::StallAfter(100_000),
        FaultScope::RangeGets,
        Some(1),
    );
    let got = get_sha256(&url, &[]).await.expect("resumed, not aborted");
    assert_eq!(got.sha256, origin.info("/f.bin").sha256());
    assert!(
        node.metric(r#"casserole_upstream_errors_total{reason="timeout"}"#)
            .await
            >= 1.0
    );
    assert_eq!(
        origin
            .path_stats("/f.bin")
            .range_count(100_000, 2 * MIB - 1),
        1,
        "the rest of the first chunk, from the byte where the probe stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_changed_between_chunks_is_never_served_mixed() {
    let (origin, node, url) = setup(20 * MIB).await;
    let old = origin.info("/f.bin");
    origin.set_fault("/f.bin", Fault::ChangeVersionAfter(2), None);
    // Chunks are fetched in parallel, so the change hits the first chunk the response reads
    // (nothing sent yet: the object is looked up again, and the response is the new version,
    // whole) or a later one (the stream is aborted); a body mixing the versions never is.
    match get_sha256(&url, &[]).await {
        Ok(got) => assert_eq!(
            (got.status.as_u16(), got.sha256),
            (200, origin.info("/f.bin").sha256()),
            "a complete body is one version, the new one"
        ),
        Err(e) => assert!(format!("{e:#}").contains("aborted"), "{e:#}"),
    }
    assert!(node.metric("casserole_objects_changed_total").await >= 1.0);
    origin.clear_faults("/f.bin");
    let new = origin.info("/f.bin");
    assert_ne!(new.etag, old.etag);
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(got.sha256, new.sha256(), "the new version, whole");
    assert_eq!(header(&got.headers, "etag"), new.etag.clone().unwrap());
    assert!(
        origin.path_stats("/f.bin").range_count(0, 2 * MIB - 1) >= 2,
        "metadata was looked up again (a new probe)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_found_changed_before_the_first_byte_is_looked_up_again() {
    let (origin, node, url) = setup(8 * MIB).await;
    // Stored metadata, and the first chunk only.
    hold_the_first_chunk(&url).await;
    let old = origin.info("/f.bin");
    let new = origin.bump_version("/f.bin");
    // The stored copy is fresh, but the chunk this range needs comes from a new version upstream.
    let (status, headers, body) = get_in_the_third_chunk(&url).await;
    assert_eq!(status, 206, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], &new.bytes(4194304, 4194399)[..]);
    assert_eq!(header(&headers, "etag"), new.etag.clone().unwrap());
    assert_ne!(old.etag, new.etag);
    assert_eq!(node.metric("casserole_objects_changed_total").await, 1.0);
    recovers(&origin, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_the_upstream_refuses_is_answered_with_the_upstream_s_status() {
    let (origin, _node, url) = setup(8 * MIB).await;
    hold_the_first_chunk(&url).await;
    // The stored copy is fresh; the chunk this range needs is not held, and the upstream is
    // overloaded: the client hears so (and backs off), not of a gateway failure.
    for refusal in [503, 429] {
        origin.set_fault_scoped(
            "/f.bin",
            Fault::Status(refusal),
            FaultScope::RangeGets,
            Some(1),
        );
        let (status, _, _) = get_in_the_third_chunk(&url).await;
        assert_eq!(status.as_u16(), refusal);
    }
    origin.clear_faults("/f.bin");
    recovers(&origin, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_removed_upstream_is_answered_as_the_upstream_answers_now() {
    let (origin, node, url) = setup(8 * MIB).await;
    hold_the_first_chunk(&url).await;
    origin.remove("/f.bin");
    // A chunk not held, of an object that is gone: looked up again, and the upstream's 404 is
    // the answer (before: a 502 for as long as the stored copy stayed fresh).
    let (status, _, _) = get_in_the_third_chunk(&url).await;
    assert_eq!(status, 404);
    // The stored copy is forgotten: the held chunk is not served as the object either.
    let (status, _, _) = get_bytes(&url, &[("range", "bytes=0-99")]).await.unwrap();
    assert_eq!(status, 404);
    assert_eq!(node.metric("casserole_objects_changed_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lying_content_length_never_completes() {
    let (origin, _node, url) = setup(3 * MIB).await;
    origin.set_fault("/f.bin", Fault::ContentLengthLie, None);
    for _ in 0..2 {
        // Either a 502 before any byte, or a stream aborted mid-body: never a complete 200.
        if let Ok(got) = get_sha256(&url, &[]).await {
            assert_eq!(got.status, 502, "a body shorter than announced is an error");
        }
    }
    origin.clear_faults("/f.bin");
    recovers(&origin, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_head_is_relayed_as_the_upstream_answered() {
    let (origin, _node, url) = setup(MIB).await;
    origin.set_fault("/f.bin", Fault::HeadStatus(500), Some(1));
    // A client HEAD is looked up with a HEAD upstream; the failing answer is the response (one
    // upstream request), not a second HEAD.
    let res = casserole_tests::client::client()
        .head(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(origin.path_stats("/f.bin").requests, 1);
    assert_eq!(
        header(res.headers(), "cache-status"),
        "casserole; fwd=uri-miss; detail=status"
    );
    recovers(&origin, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_tls_handshake_with_the_upstream_is_a_502() {
    // An https upstream that speaks plain HTTP: the TLS client (rustls, verifying) must fail
    // cleanly, never fall back to cleartext.
    let origin = Origin::start().await;
    origin.put("/t.bin", ObjectSpec::new(MIB).seed(22));
    let https = origin.url().replace("http://", "https://");
    let node = NodeBuilder::new(https).spawn().await;
    let (status, _, body) = get_bytes(&format!("{}/t.bin", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(status, 502, "{body:?}");
    assert_eq!(
        origin.stats().get_requests,
        0,
        "nothing was sent in cleartext"
    );
}
