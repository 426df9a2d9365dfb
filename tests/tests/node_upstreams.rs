//! Real upstreams are messy: they ignore `Range`, send no validator, add headers of their own,
//! or serve objects that may not be cached. Each is served well, with the origin's request and
//! byte counts as the proof.

use casserole_tests::{
    client::{client, get_bytes, get_sha256, header},
    harness::NodeBuilder,
    origin::{EtagMode, Fault, ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_ignores_range_is_fetched_once_whole_and_cached() {
    let origin = Origin::start().await;
    let obj = origin.put("/norange.bin", ObjectSpec::new(8 * MIB + 77).seed(51));
    origin.set_fault("/norange.bin", Fault::IgnoreRange, None);
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/norange.bin", node.url());

    // 20 concurrent clients join one whole-object stream.
    let downloads: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get_sha256(&url, &[])))
        .collect();
    for d in downloads {
        let got = d.await.unwrap().unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.sha256, obj.sha256());
    }
    let stats = origin.path_stats("/norange.bin");
    assert_eq!(stats.full_gets, 1, "one whole-object response: {stats:?}");
    assert_eq!(stats.body_bytes_sent, obj.len, "its size once");

    // Cached: whole and ranged requests cost nothing upstream.
    origin.reset_stats();
    let again = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(again.sha256, obj.sha256());
    assert!(header(&again.headers, "cache-status").contains("hit"));
    let (start, end) = (3 * MIB - 10, 5 * MIB + 3);
    let range = format!("bytes={start}-{end}");
    let (status, headers, body) = get_bytes(&url, &[("range", &range)]).await.unwrap();
    assert_eq!(status, 206);
    assert_eq!(
        header(&headers, "content-range"),
        format!("bytes {start}-{end}/{}", obj.len)
    );
    assert_eq!(body, obj.bytes(start, end));
    assert_eq!(origin.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_without_a_validator_are_cached_from_one_response() {
    let origin = Origin::start().await;
    let small = origin.put(
        "/small.txt",
        ObjectSpec::new(12)
            .seed(52)
            .etag(EtagMode::None)
            .no_last_modified(),
    );
    let large = origin.put(
        "/large.bin",
        ObjectSpec::new(6 * MIB + 1)
            .seed(53)
            .etag(EtagMode::None)
            .no_last_modified(),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for obj in [&small, &large] {
        let url = format!("{}{}", node.url(), obj.path);
        let cold = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(cold.sha256, obj.sha256(), "{}", obj.path);
        assert_eq!(header(&cold.headers, "cache-status"), "casserole; fwd=miss");
        let before = origin.path_stats(&obj.path).requests;
        let warm = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(warm.sha256, obj.sha256());
        assert!(header(&warm.headers, "cache-status").contains("hit"));
        assert_eq!(
            origin.path_stats(&obj.path).requests,
            before,
            "{}",
            obj.path
        );
    }
    // The small one took one request; the large one a probe plus one stream for the rest: no
    // two range responses of an unvalidated object were ever stitched together.
    assert_eq!(origin.path_stats("/small.txt").requests, 1);
    let stats = origin.path_stats("/large.bin");
    assert_eq!(stats.requests, 2, "{stats:?}");
    assert_eq!(stats.body_bytes_sent, large.len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_origin_s_own_headers_are_served_on_miss_and_hit() {
    let origin = Origin::start().await;
    origin.put(
        "/h.bin",
        ObjectSpec::new(3 * MIB)
            .seed(54)
            .header("X-Checksum-Sha256", "5f2b")
            .header("Docker-Content-Digest", "sha256:5f2b")
            .header("Link", "<https://a.example/>; rel=\"a\"")
            .header("Link", "<https://b.example/>; rel=\"b\"")
            .header("x-amz-meta-owner", "build-team")
            .header("Connection", "x-hop")
            .header("x-hop", "must not be stored"),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/h.bin", node.url());
    for round in ["miss", "hit"] {
        let res = client().get(&url).send().await.unwrap();
        let h = res.headers();
        assert!(header(h, "cache-status").contains(if round == "miss" {
            "fwd=miss"
        } else {
            "hit"
        }));
        assert_eq!(header(h, "x-checksum-sha256"), "5f2b", "{round}");
        assert_eq!(header(h, "docker-content-digest"), "sha256:5f2b", "{round}");
        assert_eq!(header(h, "x-amz-meta-owner"), "build-team", "{round}");
        let links: Vec<_> = h.get_all("link").iter().collect();
        assert_eq!(
            links,
            vec![
                "<https://a.example/>; rel=\"a\"",
                "<https://b.example/>; rel=\"b\""
            ],
            "{round}: both values, in order"
        );
        assert!(h.get("x-hop").is_none(), "{round}: named in Connection");
        let _ = res.bytes().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_miss_costs_one_round_trip_and_an_uncacheable_object_one_request() {
    let origin = Origin::start().await;
    let obj = origin.put("/one.bin", ObjectSpec::new(MIB).seed(55));
    origin.put(
        "/nostore.bin",
        ObjectSpec::new(MIB).seed(56).cache_control("no-store"),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;

    // No HEAD before the first byte: the first chunk's range request is the lookup.
    let got = get_sha256(&format!("{}/one.bin", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.sha256());
    let stats = origin.path_stats("/one.bin");
    assert_eq!((stats.requests, stats.head_requests), (1, 0), "{stats:?}");

    // Uncacheable: after the first lookup, one upstream request per client request.
    let url = format!("{}/nostore.bin", node.url());
    for _ in 0..4 {
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(
            header(&got.headers, "cache-status"),
            "casserole; fwd=uri-miss; detail=not-storable"
        );
    }
    assert_eq!(origin.path_stats("/nostore.bin").requests, 1 + 4);
}
