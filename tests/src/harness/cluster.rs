//! Clusters of real nodes around a real etcd, started the way a user would (no `--node-id`).

use std::time::Duration;

use super::{EtcdProcess, NodeBuilder, NodePorts, NodeProcess};

pub const PEER_TOKEN: &str = "test-peer-token-0123456789";

/// A member of cluster `cluster` in front of `origin_url`: etcd membership, the peer token, a
/// short lease so departures show quickly.
pub fn member(origin_url: &str, etcd: &EtcdProcess, cluster: &str) -> NodeBuilder {
    NodeBuilder::new(origin_url).etcd(etcd.endpoint()).args([
        "--peer-token",
        PEER_TOKEN,
        "--member-ttl",
        "2s",
        "--cluster-name",
        cluster,
    ])
}

/// `n` nodes in front of `origin_url` that know each other from a static `--peers` list (no
/// etcd), each also given `args`; with their peer URLs, in the nodes' order.
pub async fn static_peers(
    origin_url: &str,
    n: usize,
    args: &[&str],
) -> (Vec<NodeProcess>, Vec<String>) {
    let ports: Vec<NodePorts> = (0..n).map(|_| NodePorts::pick()).collect();
    let urls: Vec<String> = ports.iter().map(NodePorts::peer_url).collect();
    let mut nodes = Vec::with_capacity(n);
    for p in ports {
        let node = NodeBuilder::new(origin_url)
            .ports(p)
            .args(args.iter().copied())
            .arg(format!("--peers={}", urls.join(",")))
            .spawn()
            .await;
        nodes.push(node);
    }
    (nodes, urls)
}

/// Waits (bounded) until every node reports `n` members, each having found itself in the list.
pub async fn wait_members(nodes: &[&NodeProcess], n: usize) {
    for _ in 0..100 {
        let mut all = true;
        for node in nodes {
            all &= node.metric("casserole_cluster_members").await == n as f64;
        }
        if all {
            for node in nodes {
                assert_eq!(
                    node.metric("casserole_cluster_self_missing_total").await,
                    0.0,
                    "{} found itself in the member list",
                    node.url()
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in nodes {
        eprintln!(
            "{} sees {} members",
            node.url(),
            node.metric("casserole_cluster_members").await
        );
    }
    panic!("membership did not converge to {n}");
}
