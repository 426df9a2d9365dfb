//! The cluster memory tier: asking a chunk's (or an object's metadata's) owner peer for it.
//!
//! The owner answers from its own memory, disk or upstream with single flight, so across the
//! cluster a chunk is fetched from the upstream once while its owner lives. A peer that refuses,
//! times out or breaks is marked suspect for a while and the next owner in rendezvous order is
//! tried; the fetcher's last resorts are its own disk and the upstream. An owner that relays its
//! upstream's failure worked: it is not suspect (the next source is still tried).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{future::BoxFuture, StreamExt};
use http::{header, StatusCode};

use super::{
    wire::{
        MetaAnswer, CHUNK_PREFIX, META_PATH, PATH_HEADER, RELAYED_HEADER, SOURCE_HEADER,
        UPSTREAM_TARGET_HEADER,
    },
    PeerMetrics,
};
use crate::{
    cluster::{membership::Member, membership::Membership, ring},
    object::ObjectMeta,
    source::{ChunkRequest, ChunkSource, ChunkStream, FetchError, Opened, SourceKind},
    upstream::UpstreamError,
};

/// How long a failed peer is skipped before it is tried again.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

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
    /// The peer answered with its upstream's failure ([`RELAYED_HEADER`]).
    #[error("peer {peer} relayed its upstream's failure ({status}): {message}")]
    Relayed {
        peer: String,
        status: u16,
        message: String,
    },
}

impl From<PeerError> for FetchError {
    fn from(e: PeerError) -> Self {
        let peer = match &e {
            // The upstream failed, not the peer: blamed on the upstream, as if asked directly.
            PeerError::Relayed { status, .. } => {
                return FetchError::Upstream(UpstreamError::Status(*status))
            }
            PeerError::Unreachable { peer, .. } | PeerError::Refused { peer, .. } => peer.clone(),
        };
        FetchError::Peer {
            peer,
            message: e.to_string(),
        }
    }
}

pub struct PeerConfig {
    pub token: String,
    pub timeout: Duration,
}

pub struct PeerClient {
    membership: Membership,
    client: reqwest::Client,
    cfg: PeerConfig,
    suspects: Mutex<HashMap<String, Instant>>,
    metrics: PeerMetrics,
}

impl PeerClient {
    pub fn new(
        membership: Membership,
        cfg: PeerConfig,
        metrics: PeerMetrics,
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
        Ok(PeerClient {
            membership,
            client,
            cfg,
            suspects: Mutex::new(HashMap::new()),
            metrics,
        })
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

    /// The chunk sources for `key` on the owner peers, in the order to try them.
    pub fn owner_sources(self: &Arc<Self>, key: &str) -> Vec<PeerSource> {
        self.remote_owners(key)
            .into_iter()
            .map(|member| PeerSource {
                client: self.clone(),
                member,
            })
            .collect()
    }

    /// `peer` failed to answer with `error`: suspect, unless it only relayed its upstream's
    /// failure (transport failures, timeouts and broken or refused answers are the peer's).
    pub fn failed(&self, peer: &Member, error: &PeerError) {
        match error {
            PeerError::Relayed { .. } => self.relayed(peer, error),
            _ => self.mark_suspect(peer, error),
        }
    }

    /// Counts an upstream failure `peer` relayed; the peer stays in use.
    fn relayed(&self, peer: &Member, why: &dyn std::fmt::Display) {
        self.metrics.relayed_errors.inc();
        tracing::debug!(peer = %peer.id, error = %why, "peer relayed its upstream's failure");
    }

    pub fn mark_suspect(&self, peer: &Member, why: &dyn std::fmt::Display) {
        self.metrics.failovers.inc();
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

    async fn refused(peer: &Member, res: reqwest::Response) -> PeerError {
        let status = res.status().as_u16();
        let relayed = res.headers().contains_key(RELAYED_HEADER);
        let message = res
            .text()
            .await
            .unwrap_or_default()
            .trim()
            .chars()
            .take(200)
            .collect();
        let peer = peer.id.clone();
        match relayed {
            true => PeerError::Relayed {
                peer,
                status,
                message,
            },
            false => PeerError::Refused {
                peer,
                status,
                message,
            },
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
                .requests
                .with_label_values(&[kind, result])
                .inc()
        };
        match request.bearer_auth(&self.cfg.token).send().await {
            Ok(res) if res.status() == StatusCode::OK => {
                count("ok");
                Ok(res)
            }
            Ok(res) => {
                let error = Self::refused(peer, res).await;
                count(match error {
                    PeerError::Relayed { .. } => "relayed",
                    _ => "refused",
                });
                Err(error)
            }
            Err(e) => {
                count("unreachable");
                Err(PeerError::Unreachable {
                    peer: peer.id.clone(),
                    message: e.to_string(),
                })
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
    ) -> Result<(ChunkStream, SourceKind), PeerError> {
        let url = format!("{}{CHUNK_PREFIX}{index}", peer.url.trim_end_matches('/'));
        let mut request = self
            .client
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(meta).expect("metadata serializes"));
        if let Some(target) = &meta.upstream_target {
            request = request.header(UPSTREAM_TARGET_HEADER, target.as_ref());
        }
        let res = self.send("chunk", peer, request).await?;
        let source = match res
            .headers()
            .get(SOURCE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some("upstream") => SourceKind::Upstream,
            _ => SourceKind::Peer,
        };
        let received = self.metrics.bytes.with_label_values(&["received"]);
        let peer_id = peer.id.clone();
        let stream = res.bytes_stream().map(move |piece| match piece {
            Ok(p) => {
                received.inc_by(p.len() as u64);
                Ok(p)
            }
            Err(e) => Err(FetchError::Peer {
                peer: peer_id.clone(),
                message: format!("transfer failed: {e}"),
            }),
        });
        Ok((Box::pin(stream), source))
    }

    /// Asks `peer`, the owner of `path`'s metadata, for it; `upstream_target`: what the owner
    /// asks its upstream for when it is not `path` (see `ObjectMeta::upstream_target`).
    pub async fn fetch_meta(
        &self,
        peer: &Member,
        path: &str,
        upstream_target: Option<&Arc<str>>,
    ) -> Result<MetaAnswer, PeerError> {
        let url = format!("{}{META_PATH}", peer.url.trim_end_matches('/'));
        let mut request = self.client.get(url).header(PATH_HEADER, path);
        if let Some(target) = upstream_target {
            request = request.header(UPSTREAM_TARGET_HEADER, target.as_ref());
        }
        let res = self.send("meta", peer, request).await?;
        let body = res.bytes().await.map_err(|e| PeerError::Unreachable {
            peer: peer.id.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_slice(&body).map_err(|e| PeerError::Refused {
            peer: peer.id.clone(),
            status: 200,
            message: format!("unreadable metadata: {e}"),
        })
    }
}

/// One owner peer as a chunk source.
pub struct PeerSource {
    client: Arc<PeerClient>,
    member: Member,
}

impl ChunkSource for PeerSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Peer
    }

    fn open<'a>(
        &'a self,
        request: ChunkRequest<'a>,
    ) -> BoxFuture<'a, Result<Option<Opened>, FetchError>> {
        Box::pin(async move {
            let (stream, origin) = self
                .client
                .fetch_chunk(&self.member, request.meta, request.key.index)
                .await?;
            // The peer protocol always sends the whole chunk; the fetcher skips what it has.
            Ok(Some(Opened {
                stream,
                starts_at: 0,
                origin,
            }))
        })
    }

    fn failed(&self, error: &FetchError) {
        match error {
            // Only a relayed answer makes an upstream error out of a peer's (`From<PeerError>`).
            FetchError::Upstream(_) => self.client.relayed(&self.member, error),
            _ => self.client.mark_suspect(&self.member, error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_upstream_failure_is_blamed_on_the_upstream() {
        let relayed = PeerError::Relayed {
            peer: "p".into(),
            status: 502,
            message: "upstream answered 503".into(),
        };
        assert!(matches!(
            FetchError::from(relayed),
            FetchError::Upstream(UpstreamError::Status(502))
        ));
        for own in [
            PeerError::Refused {
                peer: "p".into(),
                status: 409,
                message: String::new(),
            },
            PeerError::Unreachable {
                peer: "p".into(),
                message: String::new(),
            },
        ] {
            assert!(matches!(FetchError::from(own), FetchError::Peer { .. }));
        }
    }
}
