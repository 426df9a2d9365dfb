//! Real upstreams are messy: they ignore `Range`, send no validator, add headers of their own,
//! or serve objects that may not be cached. Each is served well, with the origin's request and
//! byte counts as the proof.

use casserole_tests::{
    client::{client, get_bytes, get_sha256, head, header},
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
    // The small one took one request; the large one a probe (whose partial body is not kept:
    // nothing proves it belongs with another response) plus one stream of the whole object.
    assert_eq!(origin.path_stats("/small.txt").requests, 1);
    let stats = origin.path_stats("/large.bin");
    assert_eq!(stats.requests, 2, "{stats:?}");
    assert!(
        stats.body_bytes_sent >= large.len && stats.body_bytes_sent <= large.len + 2 * MIB,
        "{stats:?}"
    );
    assert_eq!(stats.full_gets, 1, "the body is one response from byte 0");
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

    // Uncacheable: the first lookup's answer is the first response, then one upstream request
    // per client request.
    let url = format!("{}/nostore.bin", node.url());
    for _ in 0..4 {
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(
            header(&got.headers, "cache-status"),
            "casserole; fwd=uri-miss; detail=not-storable"
        );
    }
    assert_eq!(origin.path_stats("/nostore.bin").requests, 4);
}

/// A node that treats objects fresh for a second as worth caching, so staleness comes quickly.
fn short_lived_node(origin: &Origin) -> NodeBuilder {
    NodeBuilder::new(origin.url()).args(["--min-ttl", "1s", "--stale-if-error", "0s"])
}

async fn wait_stale() {
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_objects_are_revalidated_and_a_304_keeps_every_chunk() {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/r.bin",
        ObjectSpec::new(5 * MIB).seed(57).cache_control("max-age=2"),
    );
    origin.put(
        "/nc.bin",
        ObjectSpec::new(MIB)
            .seed(58)
            .cache_control("no-cache, max-age=3600"),
    );
    let node = short_lived_node(&origin).spawn().await;
    let url = format!("{}/r.bin", node.url());
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    wait_stale().await;
    origin.reset_stats();
    let again = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(again.sha256, obj.sha256());
    assert_eq!(
        header(&again.headers, "cache-status"),
        "casserole; fwd=stale; fwd-status=304"
    );
    let stats = origin.path_stats("/r.bin");
    assert_eq!(
        (stats.not_modified, stats.body_bytes_sent, stats.requests),
        (1, 0, 1),
        "a 304 refresh costs no body bytes: {stats:?}"
    );
    // Fresh again after the 304: no request at all.
    let fresh = get_sha256(&url, &[]).await.unwrap();
    assert!(header(&fresh.headers, "cache-status").contains("hit; detail=memory"));
    assert_eq!(origin.path_stats("/r.bin").requests, 1);

    // A changed object is a new version, fetched whole.
    wait_stale().await;
    let new = origin.bump_version("/r.bin");
    let changed = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(changed.sha256, new.sha256());
    assert_eq!(
        header(&changed.headers, "cache-status"),
        "casserole; fwd=miss"
    );

    // no-cache: stored, and revalidated on every use.
    let url = format!("{}/nc.bin", node.url());
    let first = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(
        header(&first.headers, "cache-status"),
        "casserole; fwd=miss"
    );
    for _ in 0..2 {
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(got.sha256, origin.info("/nc.bin").sha256());
        assert_eq!(
            header(&got.headers, "cache-status"),
            "casserole; fwd=stale; fwd-status=304"
        );
    }
    let stats = origin.path_stats("/nc.bin");
    assert_eq!(
        (stats.not_modified, stats.body_bytes_sent),
        (2, MIB),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_outage_serves_stale_within_grace_but_never_past_must_revalidate() {
    let origin = Origin::start().await;
    let grace = origin.put(
        "/grace.bin",
        ObjectSpec::new(3 * MIB)
            .seed(59)
            .cache_control("max-age=2, stale-if-error=600"),
    );
    origin.put(
        "/strict.bin",
        ObjectSpec::new(MIB)
            .seed(60)
            .cache_control("max-age=2, must-revalidate, stale-if-error=600"),
    );
    origin.put(
        "/swr.bin",
        ObjectSpec::new(MIB)
            .seed(61)
            .cache_control("max-age=2, stale-while-revalidate=600"),
    );
    let node = short_lived_node(&origin).spawn().await;
    for path in ["/grace.bin", "/strict.bin", "/swr.bin"] {
        let got = get_sha256(&format!("{}{path}", node.url()), &[])
            .await
            .unwrap();
        assert_eq!(got.status, 200, "{path}");
    }
    wait_stale().await;

    // stale-while-revalidate: the stale copy at once, the refresh in the background.
    let swr = get_sha256(&format!("{}/swr.bin", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(swr.sha256, origin.info("/swr.bin").sha256());
    assert_eq!(
        header(&swr.headers, "cache-status"),
        "casserole; hit; detail=stale-while-revalidate"
    );
    for _ in 0..100 {
        if origin.path_stats("/swr.bin").not_modified == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        origin.path_stats("/swr.bin").not_modified,
        1,
        "revalidated behind"
    );

    origin.shutdown().await;
    let got = get_sha256(&format!("{}/grace.bin", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.sha256, grace.sha256());
    assert_eq!(
        header(&got.headers, "cache-status"),
        "casserole; fwd=stale; detail=stale-if-error"
    );
    let (status, _, _) = get_bytes(&format!("{}/strict.bin", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(status, 502, "must-revalidate forbids serving stale");
    assert!(
        node.metric(r#"casserole_requests_total{result="stale"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_successful_unsafe_request_invalidates_the_cached_object() {
    let origin = Origin::start().await;
    let obj = origin.put("/w.bin", ObjectSpec::new(3 * MIB).seed(62));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/w.bin", node.url());
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    let warm = get_sha256(&url, &[]).await.unwrap();
    assert!(header(&warm.headers, "cache-status").contains("hit"));
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let res = client()
            .request(method.clone(), &url)
            .body("new")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "{method}");
        // The next GET looks the object up again (same version: its chunks still serve).
        let before = origin.path_stats("/w.bin").get_requests;
        let after = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(after.sha256, obj.sha256());
        assert_eq!(
            origin.path_stats("/w.bin").get_requests,
            before + 1,
            "{method}: one new lookup"
        );
        let again = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(again.sha256, obj.sha256());
        assert_eq!(origin.path_stats("/w.bin").get_requests, before + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_also_invalidates_its_location_and_content_location_on_this_upstream() {
    let origin = Origin::start().await;
    let a = origin.put("/a.bin", ObjectSpec::new(MIB).seed(64));
    let b = origin.put("/b.bin", ObjectSpec::new(MIB).seed(65));
    let kept = origin.put("/kept.bin", ObjectSpec::new(MIB).seed(66));
    origin.put(
        "/form",
        ObjectSpec::new(10)
            .seed(67)
            .write_header("location", "/a.bin")
            .write_header("content-location", "b.bin"),
    );
    origin.put(
        "/elsewhere",
        ObjectSpec::new(10)
            .seed(68)
            .write_header("location", "http://other.test/kept.bin"),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for (path, obj) in [("/a.bin", &a), ("/b.bin", &b), ("/kept.bin", &kept)] {
        let url = format!("{}{path}", node.url());
        assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    }
    for path in ["/form", "/elsewhere"] {
        let res = client()
            .post(format!("{}{path}", node.url()))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
    }
    for (path, looked_up_again) in [("/a.bin", true), ("/b.bin", true), ("/kept.bin", false)] {
        let got = get_sha256(&format!("{}{path}", node.url()), &[])
            .await
            .unwrap();
        let status = header(&got.headers, "cache-status");
        assert_eq!(
            status.contains("hit; detail=memory"),
            !looked_up_again,
            "{path}: {status}"
        );
        assert_eq!(
            origin.path_stats(path).get_requests,
            1 + u64::from(looked_up_again),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_is_served_for_a_disconnected_upstream_but_not_over_its_5xx() {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/plain.bin",
        ObjectSpec::new(2 * MIB).seed(63).cache_control("max-age=2"),
    );
    // Default --stale-if-error: it applies while the upstream cannot be reached.
    let node = NodeBuilder::new(origin.url())
        .args(["--min-ttl", "1s"])
        .spawn()
        .await;
    let url = format!("{}/plain.bin", node.url());
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    wait_stale().await;
    // Connected, answering 500: RFC 9111 §4.2.4 — no stale without the origin's permission.
    origin.set_fault("/plain.bin", Fault::Status(500), None);
    let (status, _, body) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(status, 500, "the origin's own answer, relayed");
    assert_eq!(String::from_utf8_lossy(&body), "injected fault\n");
    // Gone: a disconnected cache may serve what it holds.
    origin.shutdown().await;
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
    assert_eq!(
        header(&got.headers, "cache-status"),
        "casserole; fwd=stale; detail=stale-if-error"
    );
}

/// Some gateways answer a range request with fewer bytes than asked (a valid, shorter `206`):
/// the node asks for the rest, and refuses an upstream that cuts a chunk into too many parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_caps_range_answers_is_asked_for_the_rest() {
    let origin = Origin::start().await;
    let obj = origin.put("/capped.bin", ObjectSpec::new(5 * MIB + 123).seed(70));
    origin.set_fault("/capped.bin", Fault::CapRange(700_000), None);
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/capped.bin", node.url());
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
    let stats = origin.path_stats("/capped.bin");
    // 5 MiB in 700,000-byte answers: at least 8 of them, and no byte fetched twice (the
    // probe's short answer is the start of chunk 0, the rest is asked for behind it).
    assert!(stats.ranges.len() >= 8, "{:?}", stats.ranges);
    assert_eq!(stats.body_bytes_sent, obj.len, "{:?}", stats.ranges);
    let warm = get_sha256(&url, &[("range", "bytes=3000000-3999999")])
        .await
        .unwrap();
    assert_eq!(warm.sha256, obj.range_sha256(3_000_000, 3_999_999));
    assert!(header(&warm.headers, "cache-status").contains("hit"));

    // A chunk cut into thousands of answers is refused with a clear error, and nothing is kept.
    let tiny = origin.put("/tiny-parts.bin", ObjectSpec::new(3 * MIB).seed(71));
    origin.set_fault("/tiny-parts.bin", Fault::CapRange(1000), None);
    let url = format!("{}/tiny-parts.bin", node.url());
    let (status, _, body) = get_bytes(&url, &[]).await.unwrap();
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(origin.path_stats("/tiny-parts.bin").ranges.len() <= 40);
    origin.clear_faults("/tiny-parts.bin");
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!((got.status.as_u16(), got.sha256), (200, tiny.sha256()));
}

/// Without a validator nothing proves two responses carry the same bytes: an object that changes
/// between the lookup and the fetch of its body is served as one version or the other, never as
/// chunks of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_without_a_validator_is_never_assembled_from_two_responses() {
    let origin = Origin::start().await;
    let first = origin.put(
        "/nv.bin",
        ObjectSpec::new(5 * MIB + 9)
            .seed(72)
            .etag(EtagMode::None)
            .no_last_modified(),
    );
    // The lookup's ranged GET sees the first version; every later answer the second.
    origin.set_fault("/nv.bin", Fault::ChangeVersionAfter(1), None);
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/nv.bin", node.url());
    let got = get_sha256(&url, &[]).await.unwrap();
    let second = origin.info("/nv.bin").sha256();
    assert_ne!(first.sha256(), second, "the origin did change");
    assert_eq!(got.status, 200);
    assert_eq!(
        got.sha256, second,
        "all of it from the one response that carried the body"
    );
    let again = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(again.sha256, second);
    assert!(header(&again.headers, "cache-status").contains("hit"));
}

/// RFC 9111 §4.3.5: a `200` to the `HEAD` that revalidates a stale copy, showing the same
/// validators (here none) and length, updates the copy — its lifetime, its fields — and keeps
/// every chunk, as a `304` would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_head_200_that_shows_the_same_bytes_refreshes_the_stored_copy() {
    let origin = Origin::start().await;
    let spec = || {
        ObjectSpec::new(3 * MIB)
            .seed(90)
            .etag(EtagMode::None)
            .no_last_modified()
    };
    let obj = origin.put(
        "/h.bin",
        spec().cache_control("max-age=2").header("x-v", "1"),
    );
    let node = short_lived_node(&origin).spawn().await;
    let url = format!("{}/h.bin", node.url());
    assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
    wait_stale().await;
    origin.put(
        "/h.bin",
        spec().cache_control("max-age=600").header("x-v", "2"),
    );
    origin.reset_stats();
    let (status, headers) = head(&url, &[]).await.unwrap();
    assert_eq!((status.as_u16(), header(&headers, "x-v")), (200, "2"));
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(got.sha256, obj.sha256());
    assert!(
        header(&got.headers, "cache-status").contains("hit"),
        "{:?}",
        got.headers
    );
    assert_eq!(header(&got.headers, "x-v"), "2");
    let stats = origin.path_stats("/h.bin");
    assert_eq!(
        (stats.head_requests, stats.get_requests),
        (1, 0),
        "the HEAD alone: {stats:?}"
    );
}

/// A `Content-Range` on a whole (`200`) answer is the origin's own field: stored and replayed
/// with the whole object (RFC 9111 §3.1), never on a part, which carries the cache's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_s_content_range_on_a_whole_answer_stays_with_the_whole_answer() {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/cr.bin",
        ObjectSpec::new(1000)
            .seed(91)
            .header("content-range", "origin-value"),
    );
    origin.set_fault("/cr.bin", Fault::IgnoreRange, None);
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/cr.bin", node.url());
    for _ in 0..2 {
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!((got.status.as_u16(), got.sha256), (200, obj.sha256()));
        assert_eq!(header(&got.headers, "content-range"), "origin-value");
    }
    let part = get_sha256(&url, &[("range", "bytes=10-19")]).await.unwrap();
    assert_eq!(part.status.as_u16(), 206);
    let ranges: Vec<_> = part.headers.get_all("content-range").iter().collect();
    assert_eq!(ranges, ["bytes 10-19/1000"]);
    // Several parts: each names its range inside the body, the answer none.
    let parts = get_sha256(&url, &[("range", "bytes=0-1,10-19")])
        .await
        .unwrap();
    assert_eq!(parts.status.as_u16(), 206);
    assert!(
        parts.headers.get("content-range").is_none(),
        "{:?}",
        parts.headers
    );
    assert_eq!(origin.path_stats("/cr.bin").requests, 1);
}
