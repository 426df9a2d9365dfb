//! The cluster memory tier: asking a chunk's (or an object's metadata's) owner peer for it.
//!
//! The owner answers from its own memory, disk or upstream with single flight, so across the
//! cluster a chunk is fetched from the upstream once while its owner lives. A peer that refuses,
//! times out or breaks is marked suspect for a while and the next owner in rendezvous order is
//! tried; the caller's last resort is its own disk and the upstream.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use http::{header, StatusCode};

use crate::{
    cluster::{membership::Member, membership::Membership, ring},
    metrics::Metrics,
    object::ObjectMeta,
    policy::Uncacheable,
    tier::Source,
    upstream::{ByteStream, UpstreamError},
};

/// How long a failed peer is skipped before it is tried again.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

pub const SOURCE_HEADER: &str = "x-casserole-source";
pub const PATH_HEADER: &str = "x-casserole-path";

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {peer} unreachable: {message}")]
    Unreachable { peer: String, message: String },
    #[error("peer {peer} answered {status}: {message}")]
    Refused {
        peer: String,
        status: u16,
        message: String,
    },
}

/// A metadata answer from an owner peer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum MetaAnswer {
    Cacheable(ObjectMeta),
    Uncacheable(Uncacheable),
}

pub struct PeerConfig {
    pub token: String,
    pub timeout: Duration,
    /// Keep a copy of chunks fetched from peers in the local memory tier.
    pub hot_copy: bool,
}

pub struct PeerTier {
    membership: Membership,
    client: reqwest::Client,
    cfg: PeerConfig,
    suspects: Mutex<HashMap<String, Instant>>,
    metrics: Arc<Metrics>,
}

impl PeerTier {
    pub fn new(
        membership: Membership,
        cfg: PeerConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .read_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .build()?;
        Ok(PeerTier {
            membership,
            client,
            cfg,
            suspects: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    pub fn hot_copy(&self) -> bool {
        self.cfg.hot_copy
    }

    /// Remote members to ask for `key`, in rendezvous order, up to this node itself: past that
    /// point this node is the best live owner and serves from its own tiers.
    pub fn remote_owners(&self, key: &str) -> Vec<Member> {
        let members = self.membership.members();
        let me = self.membership.self_member();
        let now = Instant::now();
        let mut suspects = self.suspects.lock().expect("suspects lock");
        suspects.retain(|_, since| now.duration_since(*since) < SUSPECT_FOR);
        ring::owners(key, &members)
            .into_iter()
            .take_while(|m| m.id != me.id)
            .filter(|m| !suspects.contains_key(&m.id))
            .cloned()
            .collect()
    }

    pub fn mark_suspect(&self, peer: &Member, why: &dyn std::fmt::Display) {
        self.metrics.peer_failovers.inc();
        let newly = self
            .suspects
            .lock()
            .expect("suspects lock")
            .insert(peer.id.clone(), Instant::now())
            .is_none();
        if newly {
            tracing::warn!(peer = %peer.id, url = %peer.url, error = %why, "peer failed; failing over for {SUSPECT_FOR:?}");
        }
    }

    fn unreachable(&self, peer: &Member, e: reqwest::Error) -> PeerError {
        PeerError::Unreachable {
            peer: peer.id.clone(),
            message: e.to_string(),
        }
    }

    async fn refused(peer: &Member, res: reqwest::Response) -> PeerError {
        let status = res.status().as_u16();
        let message = res
            .text()
            .await
            .unwrap_or_default()
            .trim()
            .chars()
            .take(200)
            .collect();
        PeerError::Refused {
            peer: peer.id.clone(),
            status,
            message,
        }
    }

    /// Sends a peer request with the token; a non-200 answer or no answer is a `PeerError`.
    async fn send(
        &self,
        kind: &str,
        peer: &Member,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PeerError> {
        let count = |result| {
            self.metrics
                .peer_requests
                .with_label_values(&[kind, result])
                .inc()
        };
        match request.bearer_auth(&self.cfg.token).send().await {
            Ok(res) if res.status() == StatusCode::OK => {
                count("ok");
                Ok(res)
            }
            Ok(res) => {
                count("refused");
                Err(Self::refused(peer, res).await)
            }
            Err(e) => {
                count("unreachable");
                Err(self.unreachable(peer, e))
            }
        }
    }

    /// Asks `peer` for chunk `index` of `meta`. Returns its bytes as they arrive and where the
    /// owner found them.
    pub async fn fetch_chunk(
        &self,
        peer: &Member,
        meta: &ObjectMeta,
        index: u64,
    ) -> Result<(ByteStream, Source), PeerError> {
        let url = format!("{}/v1/chunk/{index}", peer.url.trim_end_matches('/'));
        let request = self
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(meta).expect("metadata serializes"));
        let res = self.send("chunk", peer, request).await?;
        let source = match res
            .headers()
            .get(SOURCE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some("upstream") => Source::Upstream,
            _ => Source::Peer,
        };
        let received = self.metrics.peer_bytes.with_label_values(&["received"]);
        let stream = res.bytes_stream().map(move |piece| match piece {
            Ok(p) => {
                received.inc_by(p.len() as u64);
                Ok(p)
            }
            Err(e) if e.is_timeout() => Err(UpstreamError::Timeout),
            Err(e) => Err(UpstreamError::Transfer(format!("from peer: {e}"))),
        });
        Ok((Box::pin(stream), source))
    }

    /// Asks `peer`, the owner of `path`'s metadata, for it.
    pub async fn fetch_meta(&self, peer: &Member, path: &str) -> Result<MetaAnswer, PeerError> {
        let url = format!("{}/v1/meta", peer.url.trim_end_matches('/'));
        let request = self.client.get(url).header(PATH_HEADER, path);
        let res = self.send("meta", peer, request).await?;
        let body = res.bytes().await.map_err(|e| self.unreachable(peer, e))?;
        let answer = serde_json::from_slice(&body).map_err(|e| PeerError::Refused {
            peer: peer.id.clone(),
            status: 200,
            message: format!("unreadable metadata: {e}"),
        })?;
        Ok(answer)
    }
}
