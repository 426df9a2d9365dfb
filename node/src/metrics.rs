//! Prometheus metrics of one node, all prefixed `casserole_`, registered in one registry that the
//! admin listener renders.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::{cluster::membership::ClusterMetrics, tier::disk::DiskMetrics};

pub struct Metrics {
    pub registry: Registry,
    /// Every metric name this node exports.
    pub names: Vec<String>,
    /// Client requests by result (hit, miss, pass, not_modified, error) and the tier that served the first byte.
    pub requests: IntCounterVec,
    pub bytes_served: IntCounterVec,
    pub inflight_requests: IntGauge,
    /// Chunk lookups answered by each tier (memory, disk, peer, upstream, collapsed).
    pub chunk_sources: IntCounterVec,
    pub chunk_fetch_seconds: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_bytes: IntCounter,
    pub objects_changed: IntCounter,
    pub memory_bytes: IntGauge,
    pub memory_chunks: IntGauge,
    pub memory_evictions: IntCounter,
    pub metadata_lookups: IntCounterVec,
    pub response_first_byte_seconds: Histogram,
    pub disk: DiskMetrics,
    pub cluster: ClusterMetrics,
    /// Requests this node sent to peers, by kind (chunk, meta) and result (ok, refused, unreachable).
    pub peer_requests: IntCounterVec,
    /// Requests this node's peer API answered, by kind and result.
    pub peer_api_requests: IntCounterVec,
    /// Chunk bytes exchanged with peers (direction = received, sent).
    pub peer_bytes: IntCounterVec,
    pub peer_failovers: IntCounter,
}

/// Registers metrics and remembers their names (a vec metric with no series yet is invisible in
/// a scrape, but dashboards and alerts must still be checkable against it).
struct Registrar {
    registry: Registry,
    names: std::cell::RefCell<Vec<String>>,
}

impl Registrar {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, name: &str, c: &C) {
        self.registry
            .register(Box::new(c.clone()))
            .expect("unique metric");
        self.names.borrow_mut().push(name.to_string());
    }
}

fn counter_vec(registry: &Registrar, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(name, &c);
    c
}

fn counter(registry: &Registrar, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(name, &c);
    c
}

fn gauge(registry: &Registrar, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(name, &g);
    g
}

/// Buckets from 1 ms to ~30 s: a 2 MiB chunk takes milliseconds from memory and seconds from a slow upstream.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets")
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registrar {
            registry: Registry::new(),
            names: Default::default(),
        };
        let fetch = HistogramVec::new(
            HistogramOpts::new(
                "casserole_chunk_fetch_seconds",
                "Time to obtain one whole chunk, by source",
            )
            .buckets(latency_buckets()),
            &["source"],
        )
        .expect("valid metric");
        r.register("casserole_chunk_fetch_seconds", &fetch);
        let ttfb = Histogram::with_opts(
            HistogramOpts::new(
                "casserole_response_first_byte_seconds",
                "Time from a cacheable request to its first body byte being ready",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid metric");
        r.register("casserole_response_first_byte_seconds", &ttfb);
        let disk = DiskMetrics {
            used_bytes: gauge(
                &r,
                "casserole_disk_bytes",
                "Bytes of chunks held by the disk tier",
            ),
            chunks: gauge(&r, "casserole_disk_chunks", "Chunks held by the disk tier"),
            evictions: counter(
                &r,
                "casserole_disk_evictions_total",
                "Chunks evicted from the disk tier",
            ),
            checksum_failures: counter(
                &r,
                "casserole_disk_checksum_failures_total",
                "Chunk or metadata files that failed verification and were deleted",
            ),
            write_errors: counter(
                &r,
                "casserole_disk_write_errors_total",
                "Failed disk tier writes (e.g. disk full)",
            ),
            read_errors: counter(
                &r,
                "casserole_disk_read_errors_total",
                "Failed disk tier reads",
            ),
        };
        let cluster = ClusterMetrics {
            members: gauge(
                &r,
                "casserole_cluster_members",
                "Live cluster members known to this node, itself included",
            ),
            etcd_errors: counter(&r, "casserole_etcd_errors_total", "Failed etcd operations"),
            lease_registrations: counter(
                &r,
                "casserole_lease_registrations_total",
                "Membership re-registrations after a lost etcd lease",
            ),
        };
        Metrics {
            cluster,
            peer_requests: counter_vec(&r, "casserole_peer_requests_total", "Requests sent to peers by kind and result", &[
                "kind", "result",
            ]),
            peer_api_requests: counter_vec(
                &r,
                "casserole_peer_api_requests_total",
                "Peer API requests answered by kind and result",
                &["kind", "result"],
            ),
            peer_bytes: counter_vec(&r, "casserole_peer_bytes_total", "Chunk bytes exchanged with peers", &["direction"]),
            peer_failovers: counter(
                &r,
                "casserole_peer_failovers_total",
                "Peer requests that failed and went to the next owner or the upstream",
            ),
            requests: counter_vec(&r, "casserole_requests_total", "Client requests by result and serving tier", &[
                "result", "tier",
            ]),
            bytes_served: counter_vec(&r, "casserole_bytes_served_total", "Body bytes sent to clients, by source", &[
                "source",
            ]),
            inflight_requests: gauge(&r, "casserole_inflight_requests", "Client requests being served"),
            chunk_sources: counter_vec(&r, "casserole_chunk_lookups_total", "Chunk lookups by the tier that answered", &[
                "tier",
            ]),
            chunk_fetch_seconds: fetch,
            upstream_requests: counter_vec(&r, "casserole_upstream_requests_total", "Requests sent to the upstream", &[
                "kind",
            ]),
            upstream_errors: counter_vec(&r, "casserole_upstream_errors_total", "Failed upstream requests by reason", &[
                "reason",
            ]),
            upstream_bytes: counter(&r, "casserole_upstream_bytes_total", "Body bytes received from the upstream"),
            objects_changed: counter(
                &r,
                "casserole_objects_changed_total",
                "Objects found changed upstream while being fetched (response aborted, metadata dropped)",
            ),
            memory_bytes: gauge(&r, "casserole_memory_bytes", "Bytes of chunks held by the memory tier"),
            memory_chunks: gauge(&r, "casserole_memory_chunks", "Chunks held by the memory tier"),
            memory_evictions: counter(&r, "casserole_memory_evictions_total", "Chunks evicted from the memory tier"),
            metadata_lookups: counter_vec(
                &r,
                "casserole_metadata_lookups_total",
                "Object metadata lookups by the tier that answered",
                &["tier"],
            ),
            response_first_byte_seconds: ttfb,
            disk,
            names: r.names.into_inner(),
            registry: r.registry,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
