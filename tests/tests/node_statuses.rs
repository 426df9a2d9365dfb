//! Responses are stored with their status (RFC 9111 §3): a `404`, `410` or `301` with a lifetime
//! (stated, or heuristic for the statuses RFC 9110 §15.1 allows) answers later requests from the
//! cache, as it came; a status that is not heuristically cacheable needs a stated lifetime.

use casserole_tests::{
    client::{get_bytes, header, sha256_hex},
    harness::NodeBuilder,
    origin::{ObjectSpec, Origin},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_are_stored_with_their_status() {
    let origin = Origin::start().await;
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for (code, spec, stored) in [
        (404u16, ObjectSpec::new(900).max_age(600), true),
        (410, ObjectSpec::new(900).no_cache_control(), true),
        (
            301,
            ObjectSpec::new(300).max_age(600).header("x-moved", "/x"),
            true,
        ),
        (204, ObjectSpec::new(0).max_age(600), true),
        // Not heuristically cacheable: only a stated lifetime stores it.
        (302, ObjectSpec::new(300).no_cache_control(), false),
        (400, ObjectSpec::new(300).max_age(600), true),
    ] {
        let path = format!("/status-{code}");
        let obj = origin.put(&path, spec.seed(u64::from(code)).status(code));
        for round in 1..=2u64 {
            // A range is ignored: it selects from a 200's representation only.
            let (status, headers, body) =
                get_bytes(&format!("{}{path}", node.url()), &[("range", "bytes=0-9")])
                    .await
                    .unwrap();
            assert_eq!(status.as_u16(), code, "{path} round {round}");
            assert_eq!(sha256_hex(&body), obj.sha256(), "{path} round {round}");
            if code == 301 {
                assert_eq!(header(&headers, "x-moved"), "/x", "stored headers kept");
            }
            let asked = origin.path_stats(&path).requests;
            let want = if stored { 1 } else { round };
            assert_eq!(asked, want, "{path} round {round}: {headers:?}");
        }
    }
}

/// A client's `HEAD` of a stale stored object is confirmed with a conditional `HEAD`, not a `GET`
/// (RFC 9110 §9.3.2: no body is wanted); the `304` keeps the stored copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_of_a_stale_object_revalidates_with_a_head() {
    let origin = Origin::start().await;
    let obj = origin.put("/h.bin", ObjectSpec::new(5000).seed(7).max_age(1));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/h.bin", node.url());
    let (_, _, body) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(sha256_hex(&body), obj.sha256());
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let (status, headers) = casserole_tests::client::head(&url, &[]).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        header(&headers, "cache-status").contains("fwd-status=304"),
        "{headers:?}"
    );
    let stats = origin.path_stats("/h.bin");
    assert_eq!((stats.requests, stats.head_requests), (2, 1), "{stats:?}");
}

/// An upstream failure (`5xx` but `501`) that states a lifetime is kept, for `--max-error-ttl`
/// at most: the upstream is spared a storm while it fails, and asked again soon after. One that
/// states none is relayed every time, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_failure_that_states_a_lifetime_is_kept_briefly() {
    let origin = Origin::start().await;
    let node = NodeBuilder::new(origin.url())
        .args(["--max-error-ttl=1s"])
        .spawn()
        .await;
    let said = origin.put(
        "/said.json",
        ObjectSpec::new(120).seed(1).max_age(3600).status(503),
    );
    let silent = origin.put(
        "/silent.json",
        ObjectSpec::new(120).seed(2).no_cache_control().status(503),
    );
    for (path, obj, kept) in [
        ("/said.json", &said, true),
        ("/silent.json", &silent, false),
    ] {
        let url = format!("{}{path}", node.url());
        for round in 1..=2u64 {
            let (status, headers, body) = get_bytes(&url, &[]).await.unwrap();
            assert_eq!(status.as_u16(), 503, "{path}");
            assert_eq!(
                sha256_hex(&body),
                obj.sha256(),
                "{path}: the upstream's own body"
            );
            let want = if kept { 1 } else { round };
            assert_eq!(origin.path_stats(path).requests, want, "{path} {headers:?}");
        }
    }
    // Past --max-error-ttl the failure is asked again.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    get_bytes(&format!("{}/said.json", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(origin.path_stats("/said.json").requests, 2);
}

/// A copy held is never replaced by a failure, whatever lifetime the failure states: when it is
/// stale, the failure is relayed (or the copy served within its grace), and the next request
/// asks again; once the upstream recovers, the copy is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_does_not_replace_a_copy_held() {
    let origin = Origin::start().await;
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/pkg.tgz", node.url());
    let good = origin.put("/pkg.tgz", ObjectSpec::new(5000).seed(3).max_age(1));
    let (_, _, body) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(sha256_hex(&body), good.sha256());
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    origin.put(
        "/pkg.tgz",
        ObjectSpec::new(90).seed(4).max_age(3600).status(503),
    );
    for _ in 0..2 {
        let (status, _, _) = get_bytes(&url, &[]).await.unwrap();
        assert_eq!(status.as_u16(), 503);
    }
    assert_eq!(
        origin.path_stats("/pkg.tgz").requests,
        3,
        "the failure was not stored"
    );
    // Recovered, with the same validator: the copy held is confirmed, not fetched again.
    let sent = origin.path_stats("/pkg.tgz").body_bytes_sent;
    origin.put("/pkg.tgz", ObjectSpec::new(5000).seed(3).max_age(60));
    let (status, headers, body) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!((status.as_u16(), sha256_hex(&body)), (200, good.sha256()));
    assert!(
        header(&headers, "cache-status").contains("fwd-status=304"),
        "{headers:?}"
    );
    assert_eq!(origin.path_stats("/pkg.tgz").body_bytes_sent, sent);
}

/// A failure first looked up by a `HEAD` (no body) answers a later `GET` with its body, as a
/// stored `404` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_kept_from_a_head_answers_a_get_whole() {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/down.json",
        ObjectSpec::new(120).seed(5).max_age(3600).status(503),
    );
    let gone = origin.put(
        "/gone.json",
        ObjectSpec::new(120).seed(6).max_age(3600).status(404),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for (path, obj, code) in [("/down.json", &obj, 503u16), ("/gone.json", &gone, 404)] {
        let url = format!("{}{path}", node.url());
        let (status, _) = casserole_tests::client::head(&url, &[]).await.unwrap();
        assert_eq!(status, code, "{path}");
        let (status, headers, body) = get_bytes(&url, &[]).await.unwrap();
        assert_eq!(status.as_u16(), code, "{path} {headers:?}");
        assert_eq!(sha256_hex(&body), obj.sha256(), "{path}");
    }
}
