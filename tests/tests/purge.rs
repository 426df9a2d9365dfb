//! Purges through the admin API: one path or a prefix, cluster-wide through etcd (a real etcd),
//! memory and disk, a member that is down at the time, and authentication.

use std::time::Duration;

use casserole_tests::{
    client::{client, get_sha256},
    harness::{cluster::wait_members, EtcdProcess, NodeBuilder, NodeProcess},
    origin::{ObjectInfo, ObjectSpec, Origin},
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const PEER_TOKEN: &str = "test-peer-token-0123456789";
const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

fn member(
    origin: &Origin,
    etcd: &EtcdProcess,
    cluster: &str,
    disk: &tempfile::TempDir,
) -> NodeBuilder {
    NodeBuilder::new(origin.url())
        .etcd(etcd.endpoint())
        .disk_dir(disk.path())
        .args([
            "--peer-token",
            PEER_TOKEN,
            "--member-ttl",
            "2s",
            "--cluster-name",
            cluster,
        ])
        .args(["--admin-token", ADMIN_TOKEN, "--chunk-size=1Mi"])
}

struct Cluster {
    nodes: Vec<NodeProcess>,
    _disks: Vec<tempfile::TempDir>,
}

async fn three(origin: &Origin, etcd: &EtcdProcess, cluster: &str) -> Cluster {
    let disks: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = vec![];
    for d in &disks {
        nodes.push(member(origin, etcd, cluster, d).spawn().await);
    }
    wait_members(&nodes.iter().collect::<Vec<_>>(), 3).await;
    Cluster {
        nodes,
        _disks: disks,
    }
}

/// POST /purge; the status and the JSON answer (Null when the answer is not JSON).
async fn purge(node: &NodeProcess, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}/purge", node.admin_url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn fetch_ok(node: &NodeProcess, path: &str, obj: &ObjectInfo) {
    let got = get_sha256(&format!("{}{path}", node.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{path} through {}", node.url());
    assert_eq!(got.sha256, obj.sha256(), "{path} through {}", node.url());
}

/// Chunks held by a node: memory tier and disk tier.
async fn chunks_held(node: &NodeProcess) -> (f64, f64) {
    (
        node.metric("casserole_memory_chunks").await,
        node.metric("casserole_disk_chunks").await,
    )
}

/// Waits (bounded) until the nodes' disk tiers hold `n` chunks together: chunks are written to
/// disk off the response path.
async fn wait_disk_chunks(nodes: &[NodeProcess], n: f64) {
    let mut total = 0.0;
    for _ in 0..100 {
        total = 0.0;
        for node in nodes {
            total += chunks_held(node).await.1;
        }
        if total == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("disk tiers hold {total} chunks, expected {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_through_one_node_empties_every_node_and_the_next_request_fetches_once() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/leak.bin", ObjectSpec::new(16 * MIB).seed(61));
    let c = three(&origin, &etcd, "purge1").await;
    for node in &c.nodes {
        fetch_ok(node, "/leak.bin", &obj).await;
    }
    assert_eq!(origin.path_stats("/leak.bin").body_bytes_sent, obj.len);
    wait_disk_chunks(&c.nodes, 16.0).await; // every chunk on its owner's disk

    let (status, answer) = purge(&c.nodes[0], r#"{"path": "/leak.bin"}"#, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["members"], 3, "{answer}");
    assert_eq!(answer["confirmed"], 3, "{answer}");
    assert_eq!(answer["kind"], "path");
    for node in &c.nodes {
        assert_eq!(
            chunks_held(node).await,
            (0.0, 0.0),
            "{} still holds chunks",
            node.url()
        );
        assert_eq!(
            node.metric(r#"casserole_purges_total{kind="path"}"#).await,
            1.0,
            "applied once on {}",
            node.url()
        );
    }
    assert_eq!(
        c.nodes[0]
            .metric(r#"casserole_purges_total{via="api"}"#)
            .await,
        1.0
    );

    // The next requests, through every node, cost the upstream the object once.
    origin.reset_stats();
    for node in c.nodes.iter().rev() {
        fetch_ok(node, "/leak.bin", &obj).await;
    }
    let stats = origin.path_stats("/leak.bin");
    assert_eq!(
        stats.body_bytes_sent, obj.len,
        "fetched afresh exactly once"
    );
    assert!(stats.range_counts().values().all(|&n| n == 1));
    assert_eq!(
        stats.head_requests, 0,
        "looked up by the first chunk's own request"
    );

    // Chunk owners need not hold the metadata of the objects whose chunks they store: an object
    // fetched through one node only, purged through another, leaves no chunk anywhere.
    let solo = origin.put("/solo.bin", ObjectSpec::new(8 * MIB).seed(67));
    fetch_ok(&c.nodes[0], "/solo.bin", &solo).await;
    wait_disk_chunks(&c.nodes, 24.0).await;
    let (status, answer) = purge(&c.nodes[1], r#"{"path": "/solo.bin"}"#, Some(ADMIN_TOKEN)).await;
    assert_eq!(
        (status, &answer["confirmed"]),
        (200, &Value::from(3)),
        "{answer}"
    );
    wait_disk_chunks(&c.nodes, 16.0).await;
    origin.reset_stats();
    fetch_ok(&c.nodes[2], "/solo.bin", &solo).await;
    fetch_ok(&c.nodes[0], "/solo.bin", &solo).await;
    assert_eq!(origin.path_stats("/solo.bin").body_bytes_sent, solo.len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_purge_removes_only_what_is_under_the_prefix() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let x = origin.put("/p/x.bin", ObjectSpec::new(4 * MIB).seed(62));
    let y = origin.put("/p/y.bin", ObjectSpec::new(3 * MIB).seed(63));
    let z = origin.put("/q/z.bin", ObjectSpec::new(5 * MIB).seed(64));
    let c = three(&origin, &etcd, "purge2").await;
    for node in &c.nodes {
        fetch_ok(node, "/p/x.bin", &x).await;
        fetch_ok(node, "/p/y.bin", &y).await;
        fetch_ok(node, "/q/z.bin", &z).await;
    }
    wait_disk_chunks(&c.nodes, 12.0).await;
    let (status, answer) = purge(&c.nodes[1], r#"{"prefix": "/p/"}"#, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["confirmed"], 3, "{answer}");
    let mut on_disk = 0.0;
    for node in &c.nodes {
        on_disk += chunks_held(node).await.1;
        assert_eq!(
            node.metric(r#"casserole_purges_total{kind="prefix"}"#)
                .await,
            1.0
        );
    }
    assert_eq!(on_disk, 5.0, "only /q/z.bin's chunks are left");
    // However many objects: per round one scan of the chunks in memory and one of the disk
    // index, and one of the metadata in each store (round 1 only).
    for node in &c.nodes {
        let scans = node.metric("casserole_purge_scans_total").await;
        assert!(scans <= 6.0, "{} made {scans} scans", node.url());
    }

    origin.reset_stats();
    for node in &c.nodes {
        fetch_ok(node, "/p/x.bin", &x).await;
        fetch_ok(node, "/p/y.bin", &y).await;
        fetch_ok(node, "/q/z.bin", &z).await;
    }
    assert_eq!(origin.path_stats("/p/x.bin").body_bytes_sent, x.len);
    assert_eq!(origin.path_stats("/p/y.bin").body_bytes_sent, y.len);
    assert_eq!(
        origin.path_stats("/q/z.bin").requests,
        0,
        "outside the prefix: still cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_down_during_the_purge_applies_it_when_it_returns() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/old.iso", ObjectSpec::new(12 * MIB).seed(65));
    let mut c = three(&origin, &etcd, "purge3").await;
    for node in &c.nodes {
        fetch_ok(node, "/old.iso", &obj).await;
    }
    wait_disk_chunks(&c.nodes, 12.0).await;
    let away_chunks = chunks_held(&c.nodes[2]).await.1;
    assert!(
        away_chunks > 0.0,
        "the node to be stopped owns chunks on its disk"
    );
    c.nodes[2].kill_9().await;

    let (status, answer) = purge(&c.nodes[0], r#"{"path": "/old.iso"}"#, Some(ADMIN_TOKEN)).await;
    assert!(status == 200 || status == 202, "{status} {answer}");
    assert!(answer["confirmed"].as_u64().unwrap() >= 2, "{answer}");
    if status == 202 {
        assert_eq!(answer["pending"].as_array().unwrap().len(), 1, "{answer}");
    }

    // It comes back with the same disk: the purge is applied before it serves anything.
    c.nodes[2].restart().await;
    assert_eq!(chunks_held(&c.nodes[2]).await, (0.0, 0.0));
    assert_eq!(
        c.nodes[2]
            .metric(r#"casserole_purges_total{via="cluster"}"#)
            .await,
        1.0
    );
    wait_members(&c.nodes.iter().collect::<Vec<_>>(), 3).await;
    origin.reset_stats();
    for node in &c.nodes {
        fetch_ok(node, "/old.iso", &obj).await;
    }
    assert_eq!(
        origin.path_stats("/old.iso").body_bytes_sent,
        obj.len,
        "fetched afresh once"
    );

    // A second restart does not apply it again: what was fetched since stays.
    c.nodes[2].restart().await;
    assert!(chunks_held(&c.nodes[2]).await.1 > 0.0);
    assert_eq!(
        c.nodes[2]
            .metric(r#"casserole_purges_total{via="cluster"}"#)
            .await,
        0.0
    );
}

/// `kill -<signal> <pid>`: freezing (STOP) and thawing (CONT) a node stands in for a partition.
fn signal(node: &NodeProcess, sig: &str) {
    let pid = node.pid().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_during_the_purge_applies_it_when_it_is_back() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/cut.bin", ObjectSpec::new(12 * MIB).seed(68));
    let c = three(&origin, &etcd, "purge5").await;
    for node in &c.nodes {
        fetch_ok(node, "/cut.bin", &obj).await;
    }
    wait_disk_chunks(&c.nodes, 12.0).await;
    let held_before = chunks_held(&c.nodes[2]).await;
    assert!(held_before.0 > 0.0);
    signal(&c.nodes[2], "-STOP");
    let (status, answer) = purge(&c.nodes[0], r#"{"path": "/cut.bin"}"#, Some(ADMIN_TOKEN)).await;
    signal(&c.nodes[2], "-CONT");
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["confirmed"], 2, "{answer}");
    assert_eq!(answer["pending"].as_array().unwrap().len(), 1, "{answer}");
    // Back: its watch (or, if the connection was lost, its re-read of the records) applies it.
    let cluster_purges = r#"casserole_purges_total{via="cluster"}"#;
    for _ in 0..100 {
        if chunks_held(&c.nodes[2]).await == (0.0, 0.0)
            && c.nodes[2].metric(cluster_purges).await == 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(chunks_held(&c.nodes[2]).await, (0.0, 0.0));
    assert_eq!(
        c.nodes[2]
            .metric(r#"casserole_purges_total{via="cluster"}"#)
            .await,
        1.0
    );
    wait_members(&c.nodes.iter().collect::<Vec<_>>(), 3).await;
    origin.reset_stats();
    for node in &c.nodes {
        fetch_ok(node, "/cut.bin", &obj).await;
    }
    assert_eq!(origin.path_stats("/cut.bin").body_bytes_sent, obj.len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purging_needs_the_admin_token_and_bad_requests_remove_nothing() {
    let origin = Origin::start().await;
    let obj = origin.put("/kept.bin", ObjectSpec::new(3 * MIB).seed(66));
    let disk = tempfile::tempdir().unwrap();
    let node = NodeBuilder::new(origin.url())
        .disk_dir(disk.path())
        .args(["--admin-token", ADMIN_TOKEN, "--chunk-size=1Mi"])
        .spawn()
        .await;
    fetch_ok(&node, "/kept.bin", &obj).await;
    wait_disk_chunks(std::slice::from_ref(&node), 3.0).await;
    let held = chunks_held(&node).await;
    assert_eq!(held, (3.0, 3.0));
    let body = r#"{"path": "/kept.bin"}"#;
    for token in [None, Some("wrong-admin-token-0123456789"), Some("")] {
        let (status, _) = purge(&node, body, token).await;
        assert_eq!(status, 401, "{token:?}");
    }
    let (status, _) = purge(&node, "not json", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400);
    let (status, _) = purge(&node, r#"{"path": "kept.bin"}"#, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400, "a path must start with /");
    let res = client()
        .get(format!("{}/purge", node.admin_url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(chunks_held(&node).await, held, "nothing removed");
    assert_eq!(node.metric("casserole_purges_total").await, 0.0);
    fetch_ok(&node, "/kept.bin", &obj).await;
    assert_eq!(
        origin.path_stats("/kept.bin").body_bytes_sent,
        obj.len,
        "still cached"
    );

    // With the token, a standalone node purges itself.
    let (status, answer) = purge(&node, body, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["members"].as_u64(), answer["confirmed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(chunks_held(&node).await, (0.0, 0.0));

    // Without a token configured the purge API is off.
    let off = NodeBuilder::new(origin.url()).spawn().await;
    let (status, _) = purge(&off, body, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_etcd_down_a_purge_applies_here_and_says_so() {
    let mut etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/here.bin", ObjectSpec::new(3 * MIB).seed(69));
    let disk = tempfile::tempdir().unwrap();
    let node = member(&origin, &etcd, "purge6", &disk).spawn().await;
    fetch_ok(&node, "/here.bin", &obj).await;
    wait_disk_chunks(std::slice::from_ref(&node), 3.0).await;
    etcd.kill_9().await;
    let (status, answer) = purge(&node, r#"{"path": "/here.bin"}"#, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 202, "{answer}");
    assert!(
        answer["warning"]
            .as_str()
            .unwrap_or("")
            .contains("this node only"),
        "{answer}"
    );
    assert_eq!(chunks_held(&node).await, (0.0, 0.0));
    assert!(node.metric("casserole_purge_errors_total").await >= 1.0);
}
