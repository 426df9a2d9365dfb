//! Three nodes as one cache: etcd membership (a real etcd), owner-peer chunk sharing, failover,
//! and the peer API's authentication. Nodes start the way a user starts them: no `--node-id`,
//! so each one's id is its peering URL.

use std::time::Duration;

use casserole_tests::{
    client::{client, get_sha256, header},
    harness::{cluster::wait_members, EtcdProcess, NodeBuilder, NodePorts, NodeProcess},
    origin::{ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "test-peer-token-0123456789";

fn member(origin: &Origin, etcd: &EtcdProcess, cluster: &str) -> NodeBuilder {
    NodeBuilder::new(origin.url())
        .etcd(etcd.endpoint())
        .args([
            "--peer-token",
            TOKEN,
            "--member-ttl",
            "2s",
            "--cluster-name",
            cluster,
        ])
        .arg("--max-memory-usage=600Mi")
}

async fn three(origin: &Origin, etcd: &EtcdProcess, cluster: &str) -> Vec<NodeProcess> {
    let mut nodes = vec![];
    for _ in 0..3 {
        nodes.push(member(origin, etcd, cluster).spawn().await);
    }
    wait_members(&nodes.iter().collect::<Vec<_>>(), 3).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_fetches_each_chunk_from_the_upstream_once() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/model.bin", ObjectSpec::new(256 * MIB).seed(41));
    let nodes = three(&origin, &etcd, "once").await;

    // One client through each node in turn...
    for node in &nodes {
        let got = get_sha256(&format!("{}/model.bin", node.url()), &[])
            .await
            .unwrap();
        assert_eq!(got.sha256, obj.sha256());
    }
    // ...then 30 concurrent clients spread over the three.
    let downloads: Vec<_> = (0..30)
        .map(|i| {
            tokio::spawn(get_sha256(
                &format!("{}/model.bin", nodes[i % 3].url()),
                &[],
            ))
        })
        .collect();
    for d in downloads {
        assert_eq!(d.await.unwrap().unwrap().sha256, obj.sha256());
    }
    let stats = origin.path_stats("/model.bin");
    assert_eq!(
        stats.body_bytes_sent, obj.len,
        "upstream bytes == object size, cluster-wide"
    );
    assert!(
        stats.range_counts().values().all(|&n| n == 1),
        "every chunk fetched once"
    );
    assert_eq!(
        (stats.head_requests, stats.requests),
        (0, 128),
        "metadata went through its owner: one probe, which was also the first chunk"
    );
    let mut served_by_peers = 0.0;
    for node in &nodes {
        served_by_peers += node
            .metric(r#"casserole_peer_bytes_total{direction="sent"}"#)
            .await;
    }
    assert!(
        served_by_peers >= (256 * MIB) as f64,
        "owners served their chunks to the others"
    );
    // Bytes served counts what clients received, never what went to peers.
    let mut served_to_clients = 0.0;
    for node in &nodes {
        served_to_clients += node.metric("casserole_bytes_served_total").await;
    }
    assert_eq!(served_to_clients, (33 * obj.len) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_node_mid_download_fails_no_client() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    // Throttled so the downloads are still running when the node dies.
    let obj = origin.put(
        "/iso",
        ObjectSpec::new(96 * MIB).seed(42).throttle(48 * MIB),
    );
    // A small fixed window keeps the download running long after the kill: an adaptive one
    // could fetch the whole object before it.
    let mut nodes = vec![];
    for _ in 0..3 {
        let node = member(&origin, &etcd, "kill").arg("--readahead=1");
        nodes.push(node.spawn().await);
    }
    wait_members(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let downloads: Vec<_> = (0..30)
        .map(|i| tokio::spawn(get_sha256(&format!("{}/iso", nodes[i % 2].url()), &[])))
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    nodes[2].kill_9().await;
    for d in downloads {
        let got = d
            .await
            .unwrap()
            .expect("no download fails because a peer died");
        assert_eq!(got.sha256, obj.sha256());
    }
    // The dead node's lease expires and it leaves the member set.
    wait_members(&[&nodes[0], &nodes[1]], 2).await;
    let failovers = nodes[0].metric("casserole_peer_failovers_total").await
        + nodes[1].metric("casserole_peer_failovers_total").await;
    assert!(failovers >= 1.0, "requests to the dead owner failed over");
    // And the survivors keep serving.
    let got = get_sha256(&format!("{}/iso", nodes[1].url()), &[])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.sha256());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_serve_through_an_etcd_outage_and_membership_recovers() {
    let mut etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/pkg.deb", ObjectSpec::new(12 * MIB).seed(43));
    let nodes = three(&origin, &etcd, "outage").await;
    etcd.kill_9().await;
    tokio::time::sleep(Duration::from_secs(3)).await; // past the 2 s member TTL
    for node in &nodes {
        let got = get_sha256(&format!("{}/pkg.deb", node.url()), &[])
            .await
            .unwrap();
        assert_eq!(got.sha256, obj.sha256());
        assert_eq!(
            node.metric("casserole_cluster_members").await,
            3.0,
            "last membership kept"
        );
    }
    assert_eq!(
        origin.path_stats("/pkg.deb").body_bytes_sent,
        obj.len,
        "still one cache"
    );
    assert!(nodes[0].metric("casserole_etcd_errors_total").await >= 1.0);

    etcd.start_again().await;
    // A node joining after the outage is seen by everyone: membership works again.
    let fourth = member(&origin, &etcd, "outage").spawn().await;
    wait_members(&[&nodes[0], &nodes[1], &nodes[2], &fourth], 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_takes_its_share_and_a_leaving_one_fails_no_client() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let a = member(&origin, &etcd, "join").spawn().await;
    let b = member(&origin, &etcd, "join").spawn().await;
    wait_members(&[&a, &b], 2).await;
    let mut c = member(&origin, &etcd, "join").spawn().await;
    wait_members(&[&a, &b, &c], 3).await;

    // A new object after the join: the new member owns and serves about a third of it.
    let obj = origin.put("/new.tar", ObjectSpec::new(64 * MIB).seed(44));
    let got = get_sha256(&format!("{}/new.tar", a.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.sha256());
    let c_served = c
        .metric(r#"casserole_peer_api_requests_total{kind="chunk",result="ok"}"#)
        .await;
    assert!(
        c_served >= 3.0,
        "the new member owns chunks (served {c_served})"
    );
    let got = get_sha256(&format!("{}/new.tar", c.url()), &[])
        .await
        .unwrap();
    assert_eq!(got.sha256, obj.sha256());

    // c leaves gracefully while clients download a cold object through a and b.
    let big = origin.put(
        "/big.tar",
        ObjectSpec::new(64 * MIB).seed(45).throttle(32 * MIB),
    );
    let downloads: Vec<_> = (0..10)
        .map(|i| {
            let url = if i % 2 == 0 { a.url() } else { b.url() };
            tokio::spawn(get_sha256(&format!("{url}/big.tar"), &[]))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.sigterm();
    for d in downloads {
        assert_eq!(
            d.await.unwrap().expect("no client error").sha256,
            big.sha256()
        );
    }
    assert!(c.wait_exit(Duration::from_secs(30)).await.success());
    // The lease was revoked on the way out: a and b see two members well before the TTL.
    wait_members(&[&a, &b], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_api_wants_the_token() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    origin.put("/secret.bin", ObjectSpec::new(3 * MIB).seed(46));
    let node = member(&origin, &etcd, "auth").spawn().await;
    let meta_url = format!("{}/v1/meta", node.peer_url());
    let chunk_url = format!("{}/v1/chunk/0", node.peer_url());
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("Basic dGVzdA=="),
    ] {
        let mut meta = client()
            .get(&meta_url)
            .header("x-casserole-path", "/secret.bin");
        let mut chunk = client().post(&chunk_url).body("{}");
        if let Some(a) = auth {
            meta = meta.header("authorization", a);
            chunk = chunk.header("authorization", a);
        }
        assert_eq!(meta.send().await.unwrap().status(), 401, "{auth:?}");
        assert_eq!(chunk.send().await.unwrap().status(), 401, "{auth:?}");
    }
    assert_eq!(
        origin.stats().requests,
        0,
        "nothing was fetched for an unauthenticated peer"
    );
    // With the token the metadata is served.
    let res = client()
        .get(&meta_url)
        .header("x-casserole-path", "/secret.bin")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The client listener never serves the peer API: /v1/meta is just a path on the upstream.
    let res = client()
        .get(format!("{}/v1/meta", node.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(header(res.headers(), "cache-status").contains("fwd="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_static_peer_list_works_without_etcd() {
    let origin = Origin::start().await;
    let obj = origin.put("/static.bin", ObjectSpec::new(32 * MIB).seed(47));
    let ports: Vec<NodePorts> = (0..3).map(|_| NodePorts::pick()).collect();
    let peers = ports
        .iter()
        .map(|p| p.peer_url())
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = vec![];
    for p in ports {
        nodes.push(
            NodeBuilder::new(origin.url())
                .ports(p)
                .args(["--peers", &peers, "--peer-token", TOKEN])
                .spawn()
                .await,
        );
    }
    for node in &nodes {
        let got = get_sha256(&format!("{}/static.bin", node.url()), &[])
            .await
            .unwrap();
        assert_eq!(got.sha256, obj.sha256());
        assert_eq!(node.metric("casserole_cluster_members").await, 3.0);
    }
    assert_eq!(origin.path_stats("/static.bin").body_bytes_sent, obj.len);
}
