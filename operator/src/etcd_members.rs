//! Replacing a managed etcd member whose data is gone (its volume was lost or deleted).
//!
//! Such a member crash-loops for ever: started `new` it finds itself "already bootstrapped",
//! started `existing` its empty log is behind what the leader committed. The operator
//! recognises either in the crashed container's last words (`FallbackToLogsOnError`), removes
//! the member from the cluster and adds it again under the same peer URL through etcd's
//! HTTP/JSON gateway (`/v3/cluster/member/*`), then deletes the pod so it restarts at once and
//! joins as a new member (the template says `existing` once the cluster has formed).

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

/// What a crashed member says when its data is gone.
pub const LOST_DATA_MARKERS: [&str; 2] = [
    "has already been bootstrapped",
    "raft log corrupted, truncated, or lost",
];

/// Names of the etcd pods whose last crash says their data is gone.
pub fn lost_members(pods: &[Pod]) -> Vec<String> {
    let said = |pod: &Pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        let etcd = statuses.iter().find(|c| c.name == "etcd")?;
        let terminated = [etcd.last_state.as_ref(), etcd.state.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.terminated.as_ref()?.message.clone())
            .collect::<Vec<_>>()
            .join("\n");
        Some(terminated)
    };
    let mut names: Vec<String> = pods
        .iter()
        .filter(|p| {
            said(p).is_some_and(|m| LOST_DATA_MARKERS.iter().any(|marker| m.contains(marker)))
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    names
}

/// One etcd member, as the membership API lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member ID (a uint64, kept as the gateway spells it).
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// etcd's membership API.
pub trait Members: Send + Sync {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Member>, String>>;
    fn remove(&self, id: &str) -> BoxFuture<'_, Result<(), String>>;
    fn add(&self, peer_url: &str) -> BoxFuture<'_, Result<(), String>>;
}

/// Opens the membership API of the etcd at a client URL.
pub trait Connect: Send + Sync {
    fn connect(&self, client_url: &str) -> Box<dyn Members>;
}

/// Removes the member of `name` (or of `peer_url`, for a re-added member that never started)
/// and adds it again under `peer_url`.
pub async fn replace(members: &dyn Members, name: &str, peer_url: &str) -> Result<(), String> {
    let listed = members.list().await?;
    let found = listed
        .iter()
        .find(|m| m.name == name || m.peer_urls.iter().any(|u| u == peer_url));
    if let Some(old) = found {
        if old.name.is_empty() {
            return Ok(()); // already re-added, not started yet: nothing to do
        }
        members.remove(&old.id).await?;
    }
    // etcd refuses a new voting member until every remaining member has been connected for
    // its health interval (5 s), which a removal just reset ("unhealthy cluster").
    let mut tries = 0;
    loop {
        match members.add(peer_url).await {
            Err(e) if e.contains("unhealthy cluster") && tries < ADD_RETRIES => {
                tries += 1;
                tokio::time::sleep(ADD_RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// How often, and how far apart, an add refused as "unhealthy cluster" is retried (the next
/// reconcile retries again: the member is found by neither name nor URL, so it is only added).
const ADD_RETRIES: u32 = 8;
const ADD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The real membership API: etcd's gRPC gateway, JSON over plain HTTP (the managed etcd has
/// no TLS).
pub struct Gateway;

impl Connect for Gateway {
    fn connect(&self, client_url: &str) -> Box<dyn Members> {
        Box::new(GatewayClient {
            base: client_url.trim_end_matches('/').to_string(),
        })
    }
}

struct GatewayClient {
    base: String,
}

impl GatewayClient {
    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let (status, bytes) = crate::http_client::request(&url, Some(body.to_string())).await?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "{path}: {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

impl Members for GatewayClient {
    fn list(&self) -> BoxFuture<'_, Result<Vec<Member>, String>> {
        Box::pin(async move {
            let answer = self.post("/v3/cluster/member/list", json!({})).await?;
            Ok(answer["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| Member {
                    id: match &m["ID"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                    name: m["name"].as_str().unwrap_or_default().into(),
                    peer_urls: strings(&m["peerURLs"]),
                })
                .collect())
        })
    }

    fn remove(&self, id: &str) -> BoxFuture<'_, Result<(), String>> {
        let body = json!({ "ID": id });
        Box::pin(async move { self.post("/v3/cluster/member/remove", body).await.map(drop) })
    }

    fn add(&self, peer_url: &str) -> BoxFuture<'_, Result<(), String>> {
        let body = json!({ "peerURLs": [peer_url] });
        Box::pin(async move { self.post("/v3/cluster/member/add", body).await.map(drop) })
    }
}

#[cfg(test)]
#[path = "etcd_members_tests.rs"]
mod tests;
