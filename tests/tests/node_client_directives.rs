//! A client's own `Cache-Control` (RFC 9111 §5.2.1), on a node with default flags: `no-cache`,
//! `max-age` and `min-fresh` confirm the stored copy with the upstream first (a `304` keeps
//! every chunk), `only-if-cached` never goes upstream, `no-store` keeps the exchange out.

use casserole_tests::{
    client::{client, get_sha256, header},
    harness::NodeBuilder,
    origin::{ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_asks_for_confirmation_gets_a_revalidated_copy() {
    let origin = Origin::start().await;
    let obj = origin.put("/d.bin", ObjectSpec::new(3 * MIB).seed(91).max_age(3600));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/d.bin", node.url());
    let first = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(
        header(&first.headers, "cache-status"),
        "casserole; fwd=miss"
    );
    // The stored copy is then at least a second old.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    origin.reset_stats();

    // max-age=0 first: each revalidation makes the copy new again (age 0).
    let asks: [&[(&str, &str)]; 4] = [
        &[("cache-control", "max-age=0")],
        &[("cache-control", "no-cache")],
        &[("pragma", "no-cache")],
        &[("cache-control", "min-fresh=7200")],
    ];
    for (n, ask) in asks.iter().enumerate() {
        let got = get_sha256(&url, ask).await.unwrap();
        assert_eq!(got.status, 200, "{ask:?}");
        assert_eq!(got.sha256, obj.sha256(), "{ask:?}");
        assert_eq!(
            header(&got.headers, "cache-status"),
            "casserole; fwd=request; fwd-status=304",
            "{ask:?}"
        );
        let stats = origin.path_stats("/d.bin");
        assert_eq!(
            (stats.conditional_requests, stats.not_modified),
            (n as u64 + 1, n as u64 + 1),
            "{ask:?}: one conditional request each"
        );
    }
    assert_eq!(
        origin.path_stats("/d.bin").body_bytes_sent,
        0,
        "a 304 keeps every chunk"
    );

    // What the stored copy satisfies is served without asking.
    for ask in [
        &[][..],
        &[("cache-control", "max-age=600")][..],
        &[("cache-control", "max-stale=60, no-transform")][..],
        &[("pragma", "no-cache"), ("cache-control", "max-age=600")][..],
    ] {
        let got = get_sha256(&url, ask).await.unwrap();
        assert_eq!(got.sha256, obj.sha256(), "{ask:?}");
        assert_eq!(
            header(&got.headers, "cache-status"),
            "casserole; hit; detail=memory",
            "{ask:?}"
        );
    }
    assert_eq!(origin.path_stats("/d.bin").requests, 4);

    // A changed object is fetched as the new version, and later requests get it from the cache.
    let new = origin.bump_version("/d.bin");
    let changed = get_sha256(&url, &[("cache-control", "no-cache")])
        .await
        .unwrap();
    assert_eq!(changed.sha256, new.sha256());
    assert_eq!(
        header(&changed.headers, "cache-status"),
        "casserole; fwd=miss"
    );
    let after = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(after.sha256, new.sha256());
    assert_eq!(
        header(&after.headers, "cache-status"),
        "casserole; hit; detail=memory"
    );

    // An upstream that cannot confirm: the fresh stored copy is served, not an error.
    origin.shutdown().await;
    let got = get_sha256(&url, &[("cache-control", "no-cache")])
        .await
        .unwrap();
    assert_eq!((got.status.as_u16(), got.sha256), (200, new.sha256()));
    assert_eq!(
        header(&got.headers, "cache-status"),
        "casserole; hit; detail=memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_if_cached_never_goes_upstream_and_no_store_stores_nothing() {
    let origin = Origin::start().await;
    let stored = origin.put("/s.bin", ObjectSpec::new(MIB).seed(92).max_age(3600));
    let kept_out = origin.put("/n.bin", ObjectSpec::new(MIB).seed(93).max_age(3600));
    origin.put("/cold.bin", ObjectSpec::new(MIB).seed(94).max_age(3600));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let only = [("cache-control", "only-if-cached")];

    let url = format!("{}/s.bin", node.url());
    get_sha256(&url, &[]).await.unwrap();
    let got = get_sha256(&url, &only).await.unwrap();
    assert_eq!((got.status.as_u16(), got.sha256), (200, stored.sha256()));
    assert_eq!(
        header(&got.headers, "cache-status"),
        "casserole; hit; detail=memory"
    );
    let head = client()
        .head(&url)
        .header("cache-control", "only-if-cached");
    assert_eq!(head.send().await.unwrap().status(), 200);
    assert_eq!(origin.path_stats("/s.bin").requests, 1);

    // Not stored: 504 with a reason, and the upstream never asked.
    let cold = format!("{}/cold.bin", node.url());
    let res = client()
        .get(&cold)
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert!(res.text().await.unwrap().contains("only-if-cached"));
    let head = client()
        .head(&cold)
        .header("cache-control", "only-if-cached");
    assert_eq!(head.send().await.unwrap().status(), 504);
    // With credentials: a stored response that was public answers them (RFC 9111 §3.5), still
    // without going upstream.
    let res = client()
        .get(&url)
        .header("cache-control", "only-if-cached")
        .header("authorization", "Bearer t")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(origin.path_stats("/cold.bin").requests, 0);
    assert_eq!(origin.path_stats("/s.bin").requests, 1);

    // no-store: relayed, and nothing of it kept.
    let url = format!("{}/n.bin", node.url());
    for _ in 0..2 {
        let got = get_sha256(&url, &[("cache-control", "no-store")])
            .await
            .unwrap();
        assert_eq!((got.status.as_u16(), got.sha256), (200, kept_out.sha256()));
        assert_eq!(
            header(&got.headers, "cache-status"),
            "casserole; fwd=request; detail=no-store"
        );
    }
    assert_eq!(origin.path_stats("/n.bin").full_gets, 2);
    let res = client()
        .get(&url)
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504, "no-store left nothing behind");
}

/// `max-stale` (RFC 9111 §5.2.1.1): a stale copy is served as it is when the client accepts it
/// that stale, unless the response forbids serving it stale (`must-revalidate`, §4.2.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_stale_accepts_a_stale_copy_the_response_allows() {
    let origin = Origin::start().await;
    let loose = origin.put("/loose.bin", ObjectSpec::new(5000).seed(95).max_age(1));
    origin.put(
        "/strict.bin",
        ObjectSpec::new(5000)
            .seed(96)
            .cache_control("max-age=1, must-revalidate"),
    );
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for path in ["/loose.bin", "/strict.bin"] {
        get_sha256(&format!("{}{path}", node.url()), &[])
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let url = format!("{}/loose.bin", node.url());
    for ask in ["max-stale", "max-stale=60"] {
        let got = get_sha256(&url, &[("cache-control", ask)]).await.unwrap();
        assert_eq!(got.sha256, loose.sha256());
        assert_eq!(
            header(&got.headers, "cache-status"),
            "casserole; hit; detail=max-stale",
            "{ask}"
        );
    }
    assert_eq!(
        origin.path_stats("/loose.bin").requests,
        1,
        "served stale, as asked"
    );
    // Not that stale: confirmed with the upstream first.
    get_sha256(&url, &[("cache-control", "max-stale=0")])
        .await
        .unwrap();
    assert_eq!(origin.path_stats("/loose.bin").requests, 2);
    // must-revalidate: never served stale, whatever the client accepts.
    let strict = format!("{}/strict.bin", node.url());
    let got = get_sha256(&strict, &[("cache-control", "max-stale")])
        .await
        .unwrap();
    assert!(!header(&got.headers, "cache-status").contains("max-stale"));
    assert_eq!(origin.path_stats("/strict.bin").requests, 2);
}
