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
