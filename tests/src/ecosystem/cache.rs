//! The cache the clients go through: one node on defaults, or three members of a cluster
//! around a real etcd. Both keep a disk tier in a temporary directory, as a node's defaults do.

use crate::harness::cluster::{member, wait_members};
use crate::harness::{EtcdProcess, NodeBuilder, NodePorts, NodeProcess};

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
        let disk = super::temp_dir("node-disk");
        let node = NodeBuilder::new(upstream)
            .ports(ports)
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
        let etcd = EtcdProcess::start().await;
        let mut nodes = Vec::new();
        let mut disks = Vec::new();
        for _ in 0..3 {
            let disk = super::temp_dir("node-disk");
            nodes.push(
                member(upstream, &etcd, "clients")
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
        if clustered {
            Self::cluster(upstream).await
        } else {
            Self::single(upstream).await
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
