//! Several origins by path prefix (`--route`), and redirects into the cache: a hub whose resolve
//! endpoint redirects to its CDN on another host sends clients through the node to that CDN, so
//! the file leaves the CDN once for every client.

use casserole_tests::{
    client::{get_sha256, header, not_following},
    harness::NodeBuilder,
    origin::{ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hubs_redirect_to_its_cdn_goes_through_the_cache() {
    let hub = Origin::start().await;
    let cdn = Origin::start().await;
    // The CDN is named by another host name than the hub, as a real hub's is.
    let cdn_base = cdn.url().replace("127.0.0.1", "localhost");
    let weights = cdn.put("/lfs/weights.bin", ObjectSpec::new(8 * MIB).seed(1));
    hub.put(
        "/m/resolve/main/weights.bin",
        ObjectSpec::new(0)
            .status(302)
            .no_cache_control()
            .header("location", format!("{cdn_base}/lfs/weights.bin"))
            .header("x-linked-etag", "\"abc\""),
    );
    let node = NodeBuilder::new(hub.url())
        .arg(format!("--route=/_cdn/={cdn_base}/"))
        .spawn()
        .await;

    // The redirect itself: absolute, to the route on this node; its other headers unchanged.
    let res = not_following()
        .get(format!("{}/m/resolve/main/weights.bin", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(
        header(res.headers(), "location"),
        format!("{}/_cdn/lfs/weights.bin", node.url())
    );
    assert_eq!(header(res.headers(), "x-linked-etag"), "\"abc\"");

    // Two clients that follow it: the CDN sends the file once.
    for _ in 0..2 {
        let got = get_sha256(&format!("{}/m/resolve/main/weights.bin", node.url()), &[])
            .await
            .unwrap();
        assert_eq!((got.status.as_u16(), got.sha256), (200, weights.sha256()));
    }
    assert_eq!(cdn.path_stats("/lfs/weights.bin").body_bytes_sent, 8 * MIB);
    // A route is its own origin: the same path on the hub is another object.
    assert_eq!(hub.path_stats("/_cdn/lfs/weights.bin").requests, 0);
    // And its own label on the upstream metrics.
    let cdn_bytes = node
        .metric(r#"casserole_upstream_bytes_total{route="/_cdn/"}"#)
        .await;
    assert_eq!(cdn_bytes, (8 * MIB) as f64);
    assert_eq!(
        node.metric(r#"casserole_upstream_bytes_total{route="/"}"#)
            .await,
        0.0,
        "the hub sent redirects, no body"
    );
    assert!(
        node.metric(r#"casserole_upstream_requests_total{route="/"}"#)
            .await
            >= 1.0
    );
    assert!(
        node.metric(r#"casserole_upstream_requests_total{kind="range",route="/_cdn/"}"#)
            .await
            >= 3.0,
        "the CDN's chunks after the probe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_keep_their_own_path_checks() {
    let hub = Origin::start().await;
    let cdn = Origin::start().await;
    cdn.put("/base/x", ObjectSpec::new(1000).seed(2));
    let node = NodeBuilder::new(hub.url())
        .arg(format!("--route=/_cdn/={}/base/", cdn.url()))
        .spawn()
        .await;
    let got = get_sha256(&format!("{}/_cdn/x", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.status.as_u16(), 200);
    // The path checks hold per route (the test client resolves "%2e%2e" itself; a double
    // encoding reaches the node).
    let (status, _, _) =
        casserole_tests::client::get_bytes(&format!("{}/_cdn/%252e%252e/base/x", node.url()), &[])
            .await
            .unwrap();
    assert_eq!(status, 400);
    assert_eq!(cdn.stats().requests, 1);
    // A bad route is refused at start, naming it.
    let out = std::process::Command::new(casserole_tests::harness::node_binary())
        .args([
            "--upstream",
            "http://127.0.0.1:1",
            "--route",
            "nope=http://x/",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("route"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_are_followed_only_into_the_nodes_origins_and_a_few_hops() {
    let hub = Origin::start().await;
    let elsewhere = Origin::start().await;
    elsewhere.put("/secret", ObjectSpec::new(1000).seed(4));
    let away = format!("{}/secret", elsewhere.url());
    hub.put(
        "/away",
        ObjectSpec::new(0)
            .status(302)
            .no_cache_control()
            .header("location", away.clone()),
    );
    // A loop on the upstream itself: /loop/a → /loop/b → /loop/a …
    for (from, to) in [("/loop/a", "/loop/b"), ("/loop/b", "/loop/a")] {
        hub.put(
            from,
            ObjectSpec::new(0)
                .status(302)
                .no_cache_control()
                .header("location", to),
        );
    }
    let node = NodeBuilder::new(hub.url())
        .arg("--follow-redirects=/")
        .spawn()
        .await;

    let res = not_following()
        .get(format!("{}/away", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        302,
        "a redirect to another host is answered as it came"
    );
    assert_eq!(header(res.headers(), "location"), away);
    assert_eq!(
        elsewhere.stats().requests,
        0,
        "the node never asked that host"
    );

    let res = not_following()
        .get(format!("{}/loop/a", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        302,
        "the last redirect, once the hops are used up"
    );
    let hops = hub.path_stats("/loop/a").requests + hub.path_stats("/loop/b").requests;
    assert_eq!(hops, 6, "one request and 5 redirects followed");

    // A prefix that names no route is refused at start.
    let out = std::process::Command::new(casserole_tests::harness::node_binary())
        .args([
            "--upstream",
            "http://127.0.0.1:1",
            "--follow-redirects",
            "/nope/",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("names no route"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
