//! What each cache node itself sees of its cluster: the `casserole_cluster_members` gauge on
//! its admin port's `/metrics`. `MembersReady` needs every ready node to count every ready
//! pod, not only the pods to be ready (a node can be ready with a stale or split view).

use futures::future::BoxFuture;

use crate::resources::cache::METRICS_PORT;

/// Reads a node's own member count.
pub trait NodeProbe: Send + Sync {
    fn cluster_members(&self, pod_ip: &str) -> BoxFuture<'_, Result<i64, String>>;
}

/// The gauge's name in the node's metrics.
pub const MEMBERS_GAUGE: &str = "casserole_cluster_members";

/// The gauge's value in a Prometheus text exposition.
pub fn parse_members(metrics: &str) -> Option<i64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(MEMBERS_GAUGE)?;
        let value = rest
            .strip_prefix(' ')
            .or_else(|| rest.split_once("} ").map(|(_, v)| v))?;
        value.trim().parse::<f64>().ok().map(|v| v as i64)
    })
}

/// The real probe: `GET http://<pod IP>:9090/metrics` (the cache NetworkPolicy admits the
/// metrics port from anywhere).
pub struct MetricsProbe;

impl NodeProbe for MetricsProbe {
    fn cluster_members(&self, pod_ip: &str) -> BoxFuture<'_, Result<i64, String>> {
        let host = if pod_ip.contains(':') {
            format!("[{pod_ip}]")
        } else {
            pod_ip.to_string()
        };
        let url = format!("http://{host}:{METRICS_PORT}/metrics");
        Box::pin(async move {
            let (status, body) = crate::http_client::request(&url, None).await?;
            if status != 200 {
                return Err(format!("/metrics answered {status}"));
            }
            parse_members(&String::from_utf8_lossy(&body))
                .ok_or_else(|| format!("no {MEMBERS_GAUGE} in /metrics"))
        })
    }
}

/// Each ready pod's own member count, by pod name (pods without an address are skipped).
pub async fn views(
    probe: &dyn NodeProbe,
    pods: &[(String, Option<String>)],
) -> Vec<(String, Result<i64, String>)> {
    let asks = pods.iter().filter_map(|(name, ip)| {
        let ip = ip.as_ref()?;
        Some(async move { (name.clone(), probe.cluster_members(ip).await) })
    });
    futures::future::join_all(asks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_is_read_from_the_exposition() {
        let text = "# HELP casserole_cluster_members live cluster members\n# TYPE casserole_cluster_members gauge\ncasserole_cluster_members 3\ncasserole_cluster_members_x 9\n";
        assert_eq!(parse_members(text), Some(3));
        assert_eq!(
            parse_members("casserole_cluster_members{node=\"a\"} 2\n"),
            Some(2)
        );
        assert_eq!(parse_members("other 1\n"), None);
    }
}
