//! Casserole cache node: a chunked, tiered, streaming HTTP cache for large objects.
//!
//! Module map (dependencies point down): `http` → `purge` → `fetch` →
//! `metadata`/`tier`/`policy`/`upstream` → `cluster`/`object`/`config`/`metrics`.

pub mod cluster;
pub mod config;
pub mod fetch;
pub mod http;
pub mod metadata;
pub mod metrics;
pub mod object;
pub mod policy;
pub mod purge;
pub mod tier;
pub mod upstream;

#[cfg(test)]
mod test_support;

use std::sync::{atomic::AtomicBool, Arc};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    cluster::membership::{ClusterMetrics, EtcdConfig, Member, Membership},
    config::Config,
    fetch::{ChunkFetcher, MemoryBudget, Tiers},
    http::{admin::Admin, peer_api::PeerApi, serve::Front, ServerLimits},
    metadata::{MetadataConfig, MetadataStore},
    metrics::{Metrics, Registrar},
    purge::{LocalStores, PurgeEtcdConfig, PurgeMetrics, Purger},
    tier::{
        disk::{DiskConfig, DiskMetrics, DiskTier},
        memory::MemoryTier,
        peer::{PeerConfig, PeerTier},
    },
    upstream::{Upstream, UpstreamConfig},
};

/// Every metric name a node exports (for checking dashboards and alerts against them).
pub fn metric_names() -> Vec<String> {
    let registrar = Registrar::new();
    Metrics::new(&registrar);
    DiskMetrics::new(&registrar);
    ClusterMetrics::new(&registrar);
    PurgeMetrics::new(&registrar);
    registrar.names()
}

/// A started node: its listeners run until [`RunningNode::shutdown`].
pub struct RunningNode {
    pub client_addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub peer_addr: Option<std::net::SocketAddr>,
    pub metrics: Arc<Metrics>,
    membership: Membership,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    client: JoinHandle<bool>,
    others: Vec<JoinHandle<bool>>,
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

impl RunningNode {
    /// Builds the tiers, binds the listeners and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Self> {
        let registrar = Registrar::new();
        let metrics = Arc::new(Metrics::new(&registrar));
        let upstream = Arc::new(Upstream::new(
            UpstreamConfig {
                base: cfg.upstream().clone(),
                connect_timeout: cfg.upstream_connect_timeout,
                read_timeout: cfg.upstream_read_timeout,
                insecure: cfg.upstream_insecure,
            },
            metrics.clone(),
        )?);
        let disk = if cfg.disk_cache_enabled {
            let disk_cfg = DiskConfig {
                dir: cfg.disk_cache_dir.clone(),
                max_bytes: cfg.max_disk_usage.0,
                cleaned_bytes: cfg.cleaned_disk_usage.0,
            };
            let tier = DiskTier::open(disk_cfg, DiskMetrics::new(&registrar))
                .await
                .with_context(|| {
                    format!("opening the disk tier in {}", cfg.disk_cache_dir.display())
                })?;
            tracing::info!(dir = %cfg.disk_cache_dir.display(), chunks = tier.chunk_count(),
                bytes = tier.used_bytes(), "disk tier ready");
            Some(tier)
        } else {
            None
        };
        let membership = membership(&cfg, &registrar);
        let peer_token = cfg.peer_token()?;
        let peers = match (&peer_token, cfg.clustered()) {
            (Some(token), true) => Some(Arc::new(PeerTier::new(
                membership.clone(),
                PeerConfig {
                    token: token.clone(),
                    timeout: cfg.peer_timeout,
                    hot_copy: cfg.peer_hot_copy,
                },
                metrics.clone(),
            )?)),
            _ => None,
        };
        let metadata = Arc::new(MetadataStore::new(
            MetadataConfig {
                min_ttl: cfg.min_ttl,
                chunk_size: cfg.chunk_size.0,
                max_entries: 100_000,
            },
            upstream.clone(),
            disk.clone(),
            peers.clone(),
            metrics.clone(),
        ));
        let budget = MemoryBudget::split(cfg.max_memory_usage.0, cfg.chunk_size.0, cfg.readahead);
        let fetcher = ChunkFetcher::new(
            Tiers {
                memory: MemoryTier::new(budget.tier_bytes, metrics.clone()),
                peers: peers.clone(),
                disk: disk.clone(),
                upstream: upstream.clone(),
            },
            metadata.clone(),
            metrics.clone(),
            cfg.readahead,
            budget.flight_bytes,
        );
        let front = Arc::new(Front {
            upstream,
            metadata: metadata.clone(),
            fetcher: fetcher.clone(),
            pass_through: cfg.pass_through_set()?,
            metrics: metrics.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let purger = purger(
            &cfg,
            &registrar,
            &membership,
            &stopped,
            LocalStores {
                metadata: metadata.clone(),
                fetcher: fetcher.clone(),
                disk,
            },
        )
        .await;
        let ready = Arc::new(AtomicBool::new(false));
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            fetcher: fetcher.clone(),
            ready: ready.clone(),
            membership: membership.clone(),
            purger,
            token: cfg.admin_token()?,
        });

        let bind = |addr: std::net::SocketAddr, flag: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {flag} {addr}"))
        };
        let client_listener = bind(cfg.address, "--address").await?;
        let admin_listener = bind(cfg.admin_address, "--admin-address").await?;
        let peer_listener = match &peers {
            Some(_) => Some(bind(cfg.peer_address, "--peer-address").await?),
            None => None,
        };
        let client_addr = client_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let peer_addr = peer_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let limits = || ServerLimits {
            max_header_size: cfg.max_header_size.0 as usize,
        };
        let client = tokio::spawn(http::serve(
            "client",
            client_listener,
            limits(),
            front,
            |front, req| front.handle(req),
            stopped.clone(),
            cfg.shutdown_grace,
        ));
        // The admin listener outlives the drain a little so probes and scrapes keep answering.
        let mut others = vec![tokio::spawn(http::serve(
            "admin",
            admin_listener,
            limits(),
            admin,
            |admin, req| admin.handle(req),
            stopped.clone(),
            std::time::Duration::from_secs(1),
        ))];
        if let (Some(listener), Some(token)) = (peer_listener, peer_token) {
            let api = Arc::new(PeerApi {
                token,
                fetcher,
                metadata,
                metrics: metrics.clone(),
            });
            others.push(tokio::spawn(http::serve(
                "peer",
                listener,
                limits(),
                api,
                |api, req| api.handle(req),
                stopped,
                cfg.shutdown_grace,
            )));
        }
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%client_addr, %admin_addr, ?peer_addr, node = %membership.self_member().id,
            upstream = %cfg.upstream(), "casserole node serving");
        Ok(RunningNode {
            client_addr,
            admin_addr,
            peer_addr,
            metrics,
            membership,
            ready,
            stop,
            client,
            others,
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
        for task in self.others {
            let _ = task.await;
        }
        drained
    }
}
