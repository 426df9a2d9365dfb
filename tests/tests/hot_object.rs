//! One hot object requested through every node at once: how the bytes spread over the owners
//! and the hot copies. Prints bytes per node (`--nocapture`) and asserts that no node serves far
//! more than its share and that hot copies serve later requests locally.

use casserole_tests::{
    client::get_sha256,
    harness::{cluster::wait_members, EtcdProcess, NodeBuilder, NodeProcess},
    origin::{ObjectSpec, Origin},
};

const MIB: u64 = 1 << 20;
const NODES: usize = 4;
const CLIENTS_PER_NODE: usize = 2;

#[derive(Debug, Default, Clone, Copy)]
struct Bytes {
    /// `casserole_bytes_served_total`: bodies to clients and chunks to peers.
    served: f64,
    peer_sent: f64,
    peer_received: f64,
    upstream: f64,
}

async fn bytes(node: &NodeProcess) -> Bytes {
    Bytes {
        served: node.metric("casserole_bytes_served_total").await,
        peer_sent: node
            .metric(r#"casserole_peer_bytes_total{direction="sent"}"#)
            .await,
        peer_received: node
            .metric(r#"casserole_peer_bytes_total{direction="received"}"#)
            .await,
        upstream: node.metric("casserole_upstream_bytes_total").await,
    }
}

/// Every node's clients at once; returns each node's byte counters afterwards.
async fn round(nodes: &[NodeProcess], sha: &str) -> Vec<Bytes> {
    let downloads: Vec<_> = (0..NODES * CLIENTS_PER_NODE)
        .map(|i| {
            tokio::spawn(get_sha256(
                &format!("{}/hot.bin", nodes[i % NODES].url()),
                &[],
            ))
        })
        .collect();
    for d in downloads {
        assert_eq!(d.await.unwrap().unwrap().sha256, sha);
    }
    let mut out = vec![];
    for node in nodes {
        out.push(bytes(node).await);
    }
    out
}

fn print(title: &str, rows: &[Bytes]) {
    println!("{title}\n| node | served (clients and peers) | sent to peers | from peers | from upstream |\n|---|---:|---:|---:|---:|");
    for (i, b) in rows.iter().enumerate() {
        println!(
            "| {i} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.0} MiB |",
            b.served / MIB as f64,
            b.peer_sent / MIB as f64,
            b.peer_received / MIB as f64,
            b.upstream / MIB as f64
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_object_spreads_over_its_owners_and_hot_copies() {
    let etcd = EtcdProcess::start().await;
    let origin = Origin::start().await;
    let obj = origin.put("/hot.bin", ObjectSpec::new(64 * MIB).seed(71));
    let mut nodes = vec![];
    for _ in 0..NODES {
        nodes.push(
            NodeBuilder::new(origin.url())
                .etcd(etcd.endpoint())
                .args([
                    "--peer-token",
                    "hot-peer-token-0123456789",
                    "--cluster-name=hot",
                ])
                .args(["--chunk-size=1Mi", "--max-memory-usage=512Mi"])
                .spawn()
                .await,
        );
    }
    wait_members(&nodes.iter().collect::<Vec<_>>(), NODES).await;

    let first = round(&nodes, &obj.sha256()).await;
    print("first round (cold, every node at once)", &first);
    assert_eq!(
        origin.path_stats("/hot.bin").body_bytes_sent,
        obj.len,
        "upstream once"
    );
    // Each owner serves its share of the chunks to the other nodes: about (N-1)/N of the object
    // each. No node may serve more than twice the mean.
    let mean = first.iter().map(|b| b.peer_sent).sum::<f64>() / NODES as f64;
    for (i, b) in first.iter().enumerate() {
        assert!(
            b.peer_sent <= 2.0 * mean,
            "node {i} sent {:.0} MiB to peers, mean {:.0} MiB",
            b.peer_sent / MIB as f64,
            mean / MIB as f64
        );
        assert!(b.peer_sent > 0.0, "node {i} owns part of the object");
    }

    // Later requests: every node now holds the whole object (its own chunks plus hot copies)
    // and serves it locally; peers send nothing more.
    let second = round(&nodes, &obj.sha256()).await;
    print("second round (warm)", &second);
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert_eq!(b.peer_sent, a.peer_sent, "node {i} served peers again");
        assert!(b.served >= a.served + (CLIENTS_PER_NODE as u64 * obj.len) as f64);
    }
    assert_eq!(origin.path_stats("/hot.bin").body_bytes_sent, obj.len);
}
