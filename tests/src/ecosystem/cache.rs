//! The cache the clients go through: one node on defaults, or three members of a cluster
//! around a real etcd. Both keep a disk tier in a temporary directory, as a node's defaults do.

use crate::harness::cluster::{member, wait_members};
use crate::harness::{EtcdProcess, NodeBuilder, NodePorts, NodeProcess};

/// Further arguments of a node, given its ports.
pub type NodeArgs<'a> = &'a dyn Fn(&NodePorts) -> Vec<String>;

#[derive(Debug)]
pub struct Cache {
    nodes: Vec<NodeProcess>,
    _etcd: Option<EtcdProcess>,
    _disks: Vec<tempfile::TempDir>,
}

impl Cache {
    /// One node in front of `upstream`, on defaults but for loopback listeners and a
    /// temporary disk tier.
    pub async fn single(upstream: &str) -> Cache {
        Self::single_on(upstream, NodePorts::pick()).await
    }

    /// Like [`Cache::single`] on ports picked beforehand (for an origin that must know the
    /// node's URL).
    pub async fn single_on(upstream: &str, ports: NodePorts) -> Cache {
        Self::single_with(upstream, ports, &|_| Vec::new()).await
    }

    /// Like [`Cache::single_on`] with further node arguments (`--route …`), given the node's
    /// ports.
    pub async fn single_with(upstream: &str, ports: NodePorts, args: NodeArgs<'_>) -> Cache {
        let disk = super::temp_dir("node-disk");
        let node = NodeBuilder::new(upstream)
            .ports(ports)
            .args(args(&ports))
            .disk_dir(disk.path())
            .spawn()
            .await;
        Cache {
            nodes: vec![node],
            _etcd: None,
            _disks: vec![disk],
        }
    }

    /// Three members of one cluster (a real etcd) in front of `upstream`.
    pub async fn cluster(upstream: &str) -> Cache {
        Self::cluster_with(upstream, &|_| Vec::new()).await
    }

    /// Like [`Cache::cluster`] with further arguments for each member (`--route …`), given its
    /// ports.
    pub async fn cluster_with(upstream: &str, args: NodeArgs<'_>) -> Cache {
        let etcd = EtcdProcess::start().await;
        let mut nodes = Vec::new();
        let mut disks = Vec::new();
        for _ in 0..3 {
            let disk = super::temp_dir("node-disk");
            let ports = NodePorts::pick();
            nodes.push(
                member(upstream, &etcd, "clients")
                    .ports(ports)
                    .args(args(&ports))
                    .disk_dir(disk.path())
                    .spawn()
                    .await,
            );
            disks.push(disk);
        }
        wait_members(&nodes.iter().collect::<Vec<_>>(), 3).await;
        Cache {
            nodes,
            _etcd: Some(etcd),
            _disks: disks,
        }
    }

    /// `single` or `cluster`, as a test parameter.
    pub async fn start(clustered: bool, upstream: &str) -> Cache {
        Self::start_with(clustered, upstream, &|_| Vec::new()).await
    }

    /// [`Cache::start`] with further arguments for each node (`--route …`), given its ports.
    pub async fn start_with(clustered: bool, upstream: &str, args: NodeArgs<'_>) -> Cache {
        if clustered {
            Self::cluster_with(upstream, args).await
        } else {
            Self::single_with(upstream, NodePorts::pick(), args).await
        }
    }

    /// The URL the `i`-th client uses: in a cluster, consecutive clients go through
    /// different members, so the second one is served what the first one's member fetched.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i % self.nodes.len()].url()
    }

    /// `host:port` of [`Cache::url`].
    pub fn authority(&self, i: usize) -> String {
        self.url(i).trim_start_matches("http://").to_string()
    }

    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// The tail of every node's log, for assertion messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                node.url(),
                node.log_tail(lines)
            ));
        }
        out
    }
}
