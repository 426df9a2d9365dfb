//! Casserole cache node: a chunked, tiered, streaming HTTP cache for large objects.
//!
//! Module map (dependencies point down): `http` → `fetch` → `metadata`/`tier`/`policy`/`upstream`
//! → `object`/`config`/`metrics`.

pub mod config;
pub mod fetch;
pub mod http;
pub mod metadata;
pub mod metrics;
pub mod object;
pub mod policy;
pub mod tier;
pub mod upstream;

use std::sync::{atomic::AtomicBool, Arc};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    config::Config,
    fetch::ChunkFetcher,
    http::{admin::Admin, serve::Front, ServerLimits},
    metadata::{MetadataConfig, MetadataStore},
    metrics::Metrics,
    tier::{
        disk::{DiskConfig, DiskTier},
        memory::MemoryTier,
    },
    upstream::{Upstream, UpstreamConfig},
};

/// A started node: its listeners run until [`RunningNode::shutdown`].
pub struct RunningNode {
    pub client_addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    client: JoinHandle<bool>,
    admin: JoinHandle<bool>,
}

impl RunningNode {
    /// Builds the tiers, binds the listeners and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
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
            let tier = DiskTier::open(disk_cfg, metrics.disk.clone())
                .await
                .with_context(|| {
                    format!("opening the disk tier in {}", cfg.disk_cache_dir.display())
                })?;
            tracing::info!(dir = %cfg.disk_cache_dir.display(), chunks = tier.chunk_count(), bytes = tier.used_bytes(),
                "disk tier ready");
            Some(tier)
        } else {
            None
        };
        let metadata = Arc::new(MetadataStore::new(
            MetadataConfig {
                min_ttl: cfg.min_ttl,
                chunk_size: cfg.chunk_size.0,
                max_entries: 100_000,
            },
            upstream.clone(),
            disk.clone(),
            metrics.clone(),
        ));
        let memory = MemoryTier::new(cfg.max_memory_usage.0, metrics.clone());
        let fetcher = ChunkFetcher::new(
            memory,
            disk,
            upstream.clone(),
            metadata.clone(),
            metrics.clone(),
            cfg.readahead,
        );
        let front = Arc::new(Front {
            upstream,
            metadata,
            fetcher: fetcher.clone(),
            pass_through: cfg.pass_through_set()?,
            metrics: metrics.clone(),
        });
        let ready = Arc::new(AtomicBool::new(false));
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            fetcher,
            ready: ready.clone(),
        });

        let client_listener = TcpListener::bind(cfg.address)
            .await
            .with_context(|| format!("binding --address {}", cfg.address))?;
        let admin_listener = TcpListener::bind(cfg.admin_address)
            .await
            .with_context(|| format!("binding --admin-address {}", cfg.admin_address))?;
        let client_addr = client_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
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
        let admin = tokio::spawn(http::serve(
            "admin",
            admin_listener,
            limits(),
            admin,
            |admin, req| admin.handle(req),
            stopped,
            std::time::Duration::from_secs(1),
        ));
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%client_addr, %admin_addr, upstream = %cfg.upstream(), "casserole node serving");
        Ok(RunningNode {
            client_addr,
            admin_addr,
            metrics,
            ready,
            stop,
            client,
            admin,
        })
    }

    /// Stops accepting, waits for in-flight responses (bounded by the grace period), and returns
    /// whether they all finished.
    pub async fn shutdown(self) -> bool {
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = self.stop.send(true);
        let drained = self.client.await.unwrap_or(false);
        let _ = self.admin.await;
        drained
    }
}
