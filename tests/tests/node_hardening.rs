//! What an anonymous client cannot make a node do (issue 19): store a cookie from a `304`,
//! switch the cluster tier off through an upstream's errors, fan one request out over the
//! whole object, overflow range arithmetic, hold a slot with half a preface, or make a write
//! that changed nothing forget what is cached.

use std::time::Duration;

use casserole_node::{
    cluster::{ring, Member},
    object::ObjectMeta,
};
use casserole_tests::{
    client::{get_bytes, get_sha256, header},
    harness::{
        cluster::{member, static_peers},
        EtcdProcess, NodeBuilder,
    },
    origin::{EtagMode, Fault, FaultScope, ObjectSpec, Origin},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 2 * MIB;
const TOKEN: &str = "test-peer-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_304_that_sets_a_cookie_or_varies_on_star_is_never_replayed() {
    let origin = Origin::start().await;
    let spec = |seed| ObjectSpec::new(1000).seed(seed).max_age(1);
    origin.put("/cookie", spec(1));
    origin.put("/vary", spec(2));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for path in ["/cookie", "/vary"] {
        let url = format!("{}{path}", node.url());
        get_sha256(&url, &[]).await.unwrap();
        let warm = get_sha256(&url, &[]).await.unwrap();
        assert!(
            header(&warm.headers, "cache-status").contains("hit"),
            "{path}"
        );
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Same bytes and validator: the revalidations get `304`s, carrying the new headers.
    origin.put("/cookie", spec(1).set_cookie());
    origin.put("/vary", spec(2).vary("*"));
    for (path, detail) in [("/cookie", "set-cookie"), ("/vary", "vary")] {
        let url = format!("{}{path}", node.url());
        for round in 0..3 {
            let got = get_sha256(&url, &[]).await.unwrap();
            assert_eq!(got.status, 200, "{path}");
            assert_eq!(got.sha256, origin.info(path).sha256(), "{path}");
            let status = header(&got.headers, "cache-status");
            assert!(!status.contains("hit"), "{path} #{round}: {status}");
            assert!(status.contains(detail), "{path} #{round}: {status}");
        }
        assert!(origin.path_stats(path).not_modified >= 1, "{path}");
    }
}

/// A path whose metadata `owner` owns first among `members`.
fn path_owned_by(members: &[Member], owner: &str, prefix: &str) -> String {
    (0..1000)
        .map(|i| format!("/{prefix}-{i}.bin"))
        .find(|p| ring::owners(&ObjectMeta::meta_key(p), members)[0].id == owner)
        .expect("some path hashes to each member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_relaying_its_upstream_s_5xx_is_not_suspect() {
    let origin = Origin::start().await;
    let (nodes, urls) = static_peers(&origin.url(), 3, &["--peer-token", TOKEN]).await;
    let members: Vec<Member> = urls.iter().map(|u| Member::new(u, u)).collect();
    // Asked through node 0; the object's metadata owner is node 1.
    let failing = path_owned_by(&members, &urls[1], "failing");
    origin.put(&failing, ObjectSpec::new(3 * MIB).seed(5));
    origin.set_fault(&failing, Fault::Status(503), None);
    for _ in 0..3 {
        let (status, _, _) = get_bytes(&format!("{}{failing}", nodes[0].url()), &[])
            .await
            .unwrap();
        assert_eq!(status, 503, "the upstream's answer reaches the client");
    }
    let asker = &nodes[0];
    assert_eq!(
        asker.metric("casserole_peer_failovers_total").await,
        0.0,
        "the owner was never marked suspect"
    );
    assert!(asker.metric("casserole_peer_relayed_errors_total").await >= 3.0);
    // The owner still serves other objects to node 0.
    let fine = path_owned_by(&members, &urls[1], "fine");
    let obj = origin.put(&fine, ObjectSpec::new(3 * MIB).seed(6));
    let got = get_sha256(&format!("{}{fine}", asker.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.sha256());
    assert!(
        asker
            .metric(r#"casserole_peer_requests_total{kind="meta",result="ok"}"#)
            .await
            >= 1.0
    );
}

/// The chunk path: metadata is known, and the owners of the object's chunks get `503`s from the
/// upstream for them. The asker's clients see a failure, but no owner becomes suspect: the
/// owners answered, with their upstream's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owners_relaying_their_upstream_s_5xx_for_chunks_are_not_suspect() {
    let origin = Origin::start().await;
    let (nodes, _) = static_peers(
        &origin.url(),
        3,
        &["--peer-token", TOKEN, "--readahead", "1"],
    )
    .await;
    let asker = &nodes[0];
    let url = format!("{}/chunks.bin", asker.url());
    // Eight chunks: with three members, the chance that this node owns all of chunks 1..7 is
    // (1/3)^7; the peer-request metric below proves owners were asked.
    origin.put("/chunks.bin", ObjectSpec::new(8 * CHUNK).seed(9));
    let (status, _, _) = get_bytes(&url, &[("range", "bytes=0-0")]).await.unwrap();
    assert_eq!(status, 206, "the lookup and chunk 0 succeed");
    origin.set_fault_scoped(
        "/chunks.bin",
        Fault::Status(503),
        FaultScope::RangeGets,
        None,
    );
    for index in 1..8 {
        let range = format!("bytes={0}-{0}", index * CHUNK + 1);
        let (status, _, _) = get_bytes(&url, &[("range", &range)]).await.unwrap();
        assert!(status.is_server_error(), "chunk {index}: status {status}");
    }
    let asked_owners = asker
        .metric(r#"casserole_peer_requests_total{kind="chunk"}"#)
        .await;
    assert!(asked_owners >= 1.0, "some chunk had a remote owner");
    assert_eq!(
        asker.metric("casserole_peer_failovers_total").await,
        0.0,
        "no owner was marked suspect"
    );
    assert!(asker.metric("casserole_peer_relayed_errors_total").await >= 1.0);
    // Once the upstream recovers, the same owners serve the chunks.
    origin.clear_faults("/chunks.bin");
    let got = get_sha256(&url, &[]).await.unwrap();
    assert_eq!(got.sha256, origin.info("/chunks.bin").sha256());
}

fn one_byte_per_chunk(chunks: u64) -> String {
    let ranges: Vec<String> = (0..chunks)
        .map(|i| format!("{0}-{0}", i * CHUNK + 7))
        .collect();
    format!("bytes={}", ranges.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_ranges_in_many_chunks_cost_at_most_16_chunks_upstream() {
    let origin = Origin::start().await;
    let obj = origin.put("/scatter.bin", ObjectSpec::new(64 * CHUNK).seed(7));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let url = format!("{}/scatter.bin", node.url());
    let (status, headers, _) = get_bytes(&url, &[("range", &one_byte_per_chunk(64))])
        .await
        .unwrap();
    assert_eq!(status, 416);
    assert_eq!(
        header(&headers, "content-range"),
        format!("bytes */{}", obj.len)
    );
    assert!(origin.path_stats("/scatter.bin").range_requests <= 16);
    // Eight ranges in eight chunks are served, as multipart.
    let (status, headers, body) = get_bytes(&url, &[("range", &one_byte_per_chunk(8))])
        .await
        .unwrap();
    assert_eq!(status, 206);
    assert!(header(&headers, "content-type").starts_with("multipart/byteranges"));
    for i in 0..8 {
        let at = i * CHUNK + 7;
        let part = format!("content-range: bytes {at}-{at}/{}", obj.len);
        assert!(String::from_utf8_lossy(&body).contains(&part), "{part}");
    }
    assert!(origin.path_stats("/scatter.bin").range_requests <= 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_at_the_limits_of_u64_get_a_clean_answer() {
    let origin = Origin::start().await;
    let max = u64::MAX;
    let node = NodeBuilder::new(origin.url()).spawn().await;
    for (i, warm) in [false, true].into_iter().enumerate() {
        let path = format!("/edge-{i}.bin");
        let obj = origin.put(&path, ObjectSpec::new(3 * MIB).seed(8 + i as u64));
        let url = format!("{}{path}", node.url());
        if warm {
            get_sha256(&url, &[]).await.unwrap();
        }
        for (range, want) in [
            (format!("bytes={max}-"), 416),
            (format!("bytes={max}-{max}"), 416),
            ("bytes=18446744073709551616-".to_string(), 416),
            (format!("bytes=0-{max}"), 206),
            (format!("bytes=-{max}"), 206),
            (format!("bytes=5-9,{max}-"), 206),
        ] {
            let (status, _, _) = get_bytes(&url, &[("range", &range)]).await.unwrap();
            assert_eq!(status, want, "{path} {range}");
        }
        let got = get_sha256(&url, &[]).await.unwrap();
        assert_eq!(got.sha256, obj.sha256(), "the node keeps serving");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_an_http2_preface_does_not_hold_a_slot_for_the_first_byte_timeout() {
    let origin = Origin::start().await;
    let node = NodeBuilder::new(origin.url())
        .args(["--first-byte-timeout", "30s"])
        .spawn()
        .await;
    let addr = node.url().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed well before the first-byte timeout: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_2xx_write_invalidates_and_the_flag_turns_it_off() {
    let origin = Origin::start().await;
    let obj = origin.put(
        "/login",
        ObjectSpec::new(MIB)
            .seed(9)
            .write_status(303)
            .write_header("location", "/login"),
    );
    let kept = origin.put("/kept", ObjectSpec::new(MIB).seed(10));
    let node = NodeBuilder::new(origin.url()).spawn().await;
    let quiet = NodeBuilder::new(origin.url())
        .arg("--no-write-invalidation")
        .spawn()
        .await;
    let no_redirects = casserole_tests::client::not_following();
    for (node, path, obj) in [(&node, "/login", &obj), (&quiet, "/kept", &kept)] {
        let url = format!("{}{path}", node.url());
        assert_eq!(get_sha256(&url, &[]).await.unwrap().sha256, obj.sha256());
        let res = no_redirects.post(&url).body("x").send().await.unwrap();
        let want = if path == "/login" { 303 } else { 204 };
        assert_eq!(res.status(), want, "{path}");
        let after = get_sha256(&url, &[]).await.unwrap();
        let status = header(&after.headers, "cache-status");
        assert!(status.contains("hit"), "{path}: still cached: {status}");
        assert_eq!(origin.path_stats(path).get_requests, 1, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_of_an_object_without_a_validator_purges_nothing_cluster_wide() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let plain = origin.put(
        "/plain",
        ObjectSpec::new(1000)
            .seed(11)
            .etag(EtagMode::None)
            .no_last_modified(),
    );
    origin.put("/tagged", ObjectSpec::new(1000).seed(12));
    let node = member(&origin.url(), &etcd, "reloads").spawn().await;
    casserole_tests::harness::cluster::wait_members(&[&node], 1).await;
    let reload = [("cache-control", "no-cache")];
    for _ in 0..5 {
        let got = get_sha256(&format!("{}/plain", node.url()), &reload)
            .await
            .unwrap();
        assert_eq!(got.sha256, plain.sha256());
    }
    // A validated object that really changed is announced (the metric is the one that counts).
    get_sha256(&format!("{}/tagged", node.url()), &[])
        .await
        .unwrap();
    origin.bump_version("/tagged");
    get_sha256(&format!("{}/tagged", node.url()), &reload)
        .await
        .unwrap();
    let purges = r#"casserole_purges_total{kind="path"}"#;
    for _ in 0..50 {
        if node.try_metric(purges).await.unwrap_or(0.0) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node.try_metric(purges).await.unwrap_or(0.0),
        1.0,
        "only the changed, validated object was purged"
    );
}
