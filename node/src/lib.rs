//! Casserole cache node: a chunked, tiered, streaming HTTP cache for large objects.
//!
//! Module map (dependencies point down; nothing below calls back up):
//! `lib` (wiring) → `http` (front, admin) → `purge`, `preheat` (the admin's preheats) → `cache`
//! (opens an object for a request: the lookup, and its probe's body handed to the fetcher) →
//! `fetch` (the walk over chunk sources) → `metadata` → `peer` (protocol: wire, client, server) /
//! `tier` (memory, disk, upstream source) → `source` (the `ChunkSource` seam) → `upstream`,
//! `policy` → `cluster`, `object`, `body`, `target`, `config`, `metrics`.

pub mod bearer;
pub mod body;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod fetch;
pub mod http;
pub mod malloc;
pub mod metadata;
pub mod metrics;
pub mod object;
pub mod peer;
pub mod policy;
pub mod preheat;
pub mod purge;
pub mod source;
pub mod target;
pub mod tier;
pub mod upstream;

#[cfg(test)]
mod test_support;

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    cache::Cache,
    cluster::membership::{ClusterMetrics, EtcdConfig, Member, Membership},
    config::Config,
    fetch::{ChunkFetcher, FetchConfig, FetchMetrics, MemoryBudget, PeerChunks, Sources},
    http::{admin::Admin, serve::Front, serve::RequestMetrics, ServerLimits},
    metadata::{MetadataConfig, MetadataMetrics, MetadataStore},
    metrics::Registrar,
    peer::{
        client::{PeerClient, PeerConfig},
        server::PeerApi,
        PeerMetrics,
    },
    preheat::{PreheatMetrics, Preheater},
    purge::{LocalStores, PurgeEtcdConfig, PurgeMetrics, Purger},
    source::ChunkSource,
    tier::{
        disk::{DiskConfig, DiskMetrics, DiskTier},
        memory::{MemoryMetrics, MemoryTier},
        upstream::UpstreamSource,
    },
    upstream::{Upstream, UpstreamConfig, UpstreamMetrics},
};

/// How long a new chunk fetch waits for memory before its request fails with 503.
const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Every metric name a node exports (for checking dashboards and alerts against them).
pub fn metric_names() -> Vec<String> {
    let r = Registrar::new();
    UpstreamMetrics::new(&r);
    RequestMetrics::new(&r);
    FetchMetrics::new(&r);
    MetadataMetrics::new(&r);
    MemoryMetrics::new(&r);
    PeerMetrics::new(&r);
    DiskMetrics::new(&r);
    ClusterMetrics::new(&r);
    PurgeMetrics::new(&r);
    PreheatMetrics::new(&r);
    r.names()
}

/// A started node: its listeners run until [`RunningNode::shutdown`].
pub struct RunningNode {
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub peer_addr: Option<SocketAddr>,
    membership: Membership,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    client: JoinHandle<bool>,
    peer: Option<JoinHandle<bool>>,
    /// Stopped after the client and peer listeners drained: until then `/readyz` answers 503
    /// and `/metrics` can still be scraped.
    admin_stop: watch::Sender<bool>,
    admin: JoinHandle<bool>,
}

fn membership(cfg: &Config, registrar: &Registrar) -> Membership {
    let metrics = ClusterMetrics::new(registrar);
    let me = Member {
        id: cfg.node_id(),
        url: cfg.peering_address.clone(),
    };
    if !cfg.etcd.is_empty() {
        return Membership::etcd(
            EtcdConfig {
                endpoints: cfg.etcd.clone(),
                cluster_name: cfg.cluster_name.clone(),
                node_id: me.id,
                peering_url: me.url,
                ttl: cfg.member_ttl,
            },
            metrics,
        );
    }
    if !cfg.peers.is_empty() {
        // A static list names members by URL, so URLs are their ids on every node alike.
        let me = Member {
            id: me.url.clone(),
            url: me.url,
        };
        let peers = cfg
            .peers
            .iter()
            .map(|url| Member {
                id: url.clone(),
                url: url.clone(),
            })
            .collect();
        return Membership::fixed(me, peers, metrics);
    }
    Membership::fixed(me, Vec::new(), metrics)
}

async fn open_disk(cfg: &Config, registrar: &Registrar) -> anyhow::Result<Option<Arc<DiskTier>>> {
    if !cfg.disk_cache_enabled {
        return Ok(None);
    }
    let disk_cfg = DiskConfig {
        dir: cfg.disk_cache_dir.clone(),
        max_bytes: cfg.max_disk_usage.0,
        cleaned_bytes: cfg.cleaned_disk_usage.0,
    };
    let tier = DiskTier::open(disk_cfg, DiskMetrics::new(registrar))
        .await
        .with_context(|| format!("opening the disk tier in {}", cfg.disk_cache_dir.display()))?;
    tracing::info!(dir = %cfg.disk_cache_dir.display(), chunks = tier.chunk_count(),
        bytes = tier.used_bytes(), "disk tier ready");
    Ok(Some(tier))
}

/// The node's parts, wired together; no listener is bound yet.
struct Parts {
    membership: Membership,
    front: Arc<Front>,
    admin: Arc<Admin>,
    peer_api: Option<Arc<PeerApi>>,
}

/// The memory tier and the fetcher that walks memory, owner peers, disk and the upstream.
fn fetcher(
    cfg: &Config,
    registrar: &Registrar,
    upstream: &Arc<Upstream>,
    disk: Option<Arc<DiskTier>>,
    peers: Option<Arc<PeerClient>>,
    metadata: &Arc<MetadataStore>,
) -> (Arc<ChunkFetcher>, Arc<MemoryTier>) {
    let budget = MemoryBudget::split(cfg.max_memory_usage.0, cfg.chunk_size.0, cfg.readahead);
    let working_set = budget.tier_bytes + budget.flight_bytes;
    if working_set > cfg.max_memory_usage.0 {
        // Refusing would break the contract that every size the operator's schema admits
        // starts a node; say plainly what the node will really use instead.
        tracing::warn!(
            max_memory_usage = cfg.max_memory_usage.0,
            uses = working_set,
            "--max-memory-usage is below the smallest working set (one read-ahead window and one \
             cached chunk of --chunk-size); chunk memory will reach the larger figure"
        );
    }
    let memory = Arc::new(MemoryTier::new(
        budget.tier_bytes,
        cfg.peer_hot_copy,
        MemoryMetrics::new(registrar),
    ));
    let mut local: Vec<Arc<dyn ChunkSource>> = Vec::new();
    if let Some(disk) = disk {
        local.push(disk);
    }
    local.push(Arc::new(UpstreamSource(upstream.clone())));
    let fetcher = ChunkFetcher::new(
        Sources {
            memory: memory.clone(),
            peers,
            local,
            whole_objects: Some(upstream.clone()),
        },
        Some(metadata.clone()),
        FetchConfig {
            readahead: cfg.readahead,
            max_upstream_fetches: cfg.max_upstream_fetches,
            flight_bytes: budget.flight_bytes,
            tier_bytes: budget.tier_bytes,
            budget_timeout: MEMORY_WAIT,
        },
        FetchMetrics::new(registrar),
    );
    (fetcher, memory)
}

/// Purges; with etcd, waits (bounded) until purges recorded while this node was away are applied,
/// before any listener is bound, so nothing purged meanwhile is served to clients or peers.
async fn purger(
    cfg: &Config,
    registrar: &Registrar,
    membership: &Membership,
    stopped: &watch::Receiver<bool>,
    stores: LocalStores,
) -> Arc<Purger> {
    let etcd = (!cfg.etcd.is_empty()).then(|| PurgeEtcdConfig {
        endpoints: cfg.etcd.clone(),
        cluster_name: cfg.cluster_name.clone(),
        node_id: membership.self_member().id.clone(),
        ttl: cfg.purge_ttl,
    });
    let clustered = etcd.is_some();
    let purger = Purger::start(
        stores,
        membership.clone(),
        etcd,
        PurgeMetrics::new(registrar),
        stopped.clone(),
    )
    .await;
    if clustered && !purger.wait_caught_up(PURGE_CATCH_UP).await {
        tracing::warn!(
            "purge records not read from etcd within {PURGE_CATCH_UP:?}; serving, and applying them once etcd answers"
        );
    }
    Arc::new(purger)
}

/// How long a starting node waits to apply the purges recorded in etcd.
const PURGE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

async fn build(cfg: &Config, stopped: &watch::Receiver<bool>) -> anyhow::Result<Parts> {
    let registrar = Registrar::new();
    let upstream = Arc::new(Upstream::new(
        UpstreamConfig {
            base: cfg.upstream().clone(),
            routes: cfg.routes.clone(),
            follow_redirects: cfg.follow_redirects.clone(),
            ignore_query_params: cfg.ignore_query_params.clone(),
            connect_timeout: cfg.upstream_connect_timeout,
            read_timeout: cfg.upstream_read_timeout,
            insecure: cfg.upstream_insecure,
            surrogate_id: cfg.surrogate_id(),
        },
        UpstreamMetrics::new(&registrar),
    )?);
    let disk = open_disk(cfg, &registrar).await?;
    let membership = membership(cfg, &registrar);
    let peer_token = cfg.peer_token()?.filter(|_| cfg.clustered());
    let peer_metrics = PeerMetrics::new(&registrar);
    let peers = match &peer_token {
        Some(token) => Some(Arc::new(PeerClient::new(
            membership.clone(),
            PeerConfig {
                token: token.clone(),
                timeout: cfg.peer_timeout,
            },
            peer_metrics.clone(),
        )?)),
        None => None,
    };
    let metadata = MetadataStore::new(
        MetadataConfig {
            rules: cfg.freshness_rules(),
            chunk_size: cfg.chunk_size.0,
            max_bytes: cfg.max_metadata_memory.0,
        },
        upstream.clone(),
        disk.clone(),
        peers.clone(),
        MetadataMetrics::new(&registrar),
    );
    let (fetcher, memory) = fetcher(cfg, &registrar, &upstream, disk.clone(), peers, &metadata);
    let stores = LocalStores {
        metadata: metadata.clone(),
        fetcher: fetcher.clone(),
        disk,
    };
    let purger = purger(cfg, &registrar, &membership, stopped, stores).await;
    let cache = Cache::new(metadata.clone(), fetcher.clone());
    let peer_api = peer_token.map(|token| {
        Arc::new(PeerApi {
            token,
            previous_token: cfg.peer_token_previous.clone(),
            chunks: Arc::new(PeerChunks(fetcher.clone())),
            metadata: cache.clone(),
            path_is_valid: target::is_valid,
            metrics: peer_metrics,
        })
    });
    let preheater = Preheater::new(
        cache.clone(),
        fetcher,
        cfg.pass_through_set()?,
        PreheatMetrics::new(&registrar),
    );
    let front = Arc::new(Front {
        upstream,
        cache,
        metadata,
        pass_through: cfg.pass_through_set()?,
        metrics: RequestMetrics::new(&registrar),
        invalidator: Some(purger.clone()),
        write_invalidation: !cfg.no_write_invalidation,
        public_url: cfg.public_url.clone(),
    });
    let admin = Arc::new(Admin {
        registrar: registrar.clone(),
        memory,
        ready: Arc::new(AtomicBool::new(false)),
        membership: membership.clone(),
        purger,
        preheater,
        token: cfg.admin_token()?,
    });
    Ok(Parts {
        membership,
        front,
        admin,
        peer_api,
    })
}

async fn bind(addr: SocketAddr, flag: &'static str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {flag} {addr}"))
}

impl RunningNode {
    /// Builds the tiers, binds the listeners and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let parts = build(&cfg, &stopped).await?;
        let client_listener = bind(cfg.address, "--address").await?;
        let admin_listener = bind(cfg.admin_address, "--admin-address").await?;
        let peer_listener = match &parts.peer_api {
            Some(_) => Some(bind(cfg.peer_address, "--peer-address").await?),
            None => None,
        };
        let client_addr = client_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let peer_addr = peer_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let limits = || ServerLimits {
            max_header_size: cfg.max_header_size.0 as usize,
            max_connections: cfg.max_connections,
            max_connections_per_client: cfg.max_connections_per_client,
            first_byte_timeout: cfg.first_byte_timeout,
            request_head_timeout: cfg.request_head_timeout,
            idle_timeout: cfg.idle_timeout,
            client_idle_timeout: cfg.client_idle_timeout,
            http2_keepalive_interval: cfg.http2_keepalive_interval,
        };
        let client = tokio::spawn(http::serve(
            "client",
            client_listener,
            limits(),
            parts.front,
            |front, req| front.handle(req),
            stopped.clone(),
            cfg.shutdown_grace,
        ));
        let ready = parts.admin.ready.clone();
        let (admin_stop, admin_stopped) = watch::channel(false);
        let admin = tokio::spawn(http::serve(
            "admin",
            admin_listener,
            limits(),
            parts.admin,
            |admin, req| admin.handle(req),
            admin_stopped,
            std::time::Duration::from_secs(1),
        ));
        let peer = match (peer_listener, parts.peer_api) {
            (Some(listener), Some(api)) => Some(tokio::spawn(http::serve(
                "peer",
                listener,
                limits(),
                api,
                |api, req| api.handle(req),
                stopped,
                cfg.shutdown_grace,
            ))),
            _ => None,
        };
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%client_addr, %admin_addr, ?peer_addr, node = %parts.membership.self_member().id,
            upstream = %cfg.upstream(), "casserole node serving");
        Ok(RunningNode {
            client_addr,
            admin_addr,
            peer_addr,
            membership: parts.membership,
            ready,
            stop,
            client,
            peer,
            admin_stop,
            admin,
        })
    }

    /// Leaves the cluster (peers stop routing here), stops accepting, waits for in-flight
    /// responses (bounded by the grace period), and returns whether they all finished.
    pub async fn shutdown(self) -> bool {
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.membership.leave().await;
        let _ = self.stop.send(true);
        let drained = self.client.await.unwrap_or(false);
        if let Some(peer) = self.peer {
            let _ = peer.await;
        }
        let _ = self.admin_stop.send(true);
        let _ = self.admin.await;
        drained
    }
}
