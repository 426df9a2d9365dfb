//! Prometheus metrics of one node, all prefixed `casserole_`, registered in one registry that the
//! admin listener renders.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Request-path metrics shared by the front, the fetcher, the upstream client and the peer
/// protocol. Subsystems with a state of their own (disk tier, cluster membership) register theirs
/// through the same [`Registrar`].
pub struct Metrics {
    pub registrar: Registrar,
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
    /// Requests this node sent to peers, by kind (chunk, meta) and result (ok, refused, unreachable).
    pub peer_requests: IntCounterVec,
    /// Requests this node's peer API answered, by kind and result.
    pub peer_api_requests: IntCounterVec,
    /// Chunk bytes exchanged with peers (direction = received, sent).
    pub peer_bytes: IntCounterVec,
    pub peer_failovers: IntCounter,
}

/// The registry every subsystem registers its own metrics in, remembering their names (a vec
/// metric with no series yet is invisible in a scrape, but dashboards and alerts must still be
/// checkable against it). Cheap to clone: clones share the registry and the name list.
#[derive(Clone, Default)]
pub struct Registrar {
    registry: Registry,
    names: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Registrar {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, name: &str, c: &C) {
        self.registry
            .register(Box::new(c.clone()))
            .expect("unique metric");
        self.names
            .lock()
            .expect("names lock")
            .push(name.to_string());
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.register(name, &c);
        c
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::new(name, help).expect("valid metric");
        self.register(name, &c);
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("valid metric");
        self.register(name, &g);
        g
    }

    pub fn histogram_vec(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let h = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(latency_buckets()),
            labels,
        )
        .expect("valid metric");
        self.register(name, &h);
        h
    }

    pub fn histogram(&self, name: &str, help: &str) -> Histogram {
        let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets()))
            .expect("valid metric");
        self.register(name, &h);
        h
    }

    /// Every metric name registered so far.
    pub fn names(&self) -> Vec<String> {
        self.names.lock().expect("names lock").clone()
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

/// Buckets from 1 ms to ~30 s: a 2 MiB chunk takes milliseconds from memory and seconds from a slow upstream.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets")
}

impl Metrics {
    pub fn new(r: &Registrar) -> Self {
        Metrics {
            peer_requests: r.counter_vec(
                "casserole_peer_requests_total",
                "Requests sent to peers by kind and result",
                &["kind", "result"],
            ),
            peer_api_requests: r.counter_vec(
                "casserole_peer_api_requests_total",
                "Peer API requests answered by kind and result",
                &["kind", "result"],
            ),
            peer_bytes: r.counter_vec(
                "casserole_peer_bytes_total",
                "Chunk bytes exchanged with peers",
                &["direction"],
            ),
            peer_failovers: r.counter(
                "casserole_peer_failovers_total",
                "Peer requests that failed and went to the next owner or the upstream",
            ),
            requests: r.counter_vec(
                "casserole_requests_total",
                "Client requests by result and serving tier",
                &["result", "tier"],
            ),
            bytes_served: r.counter_vec(
                "casserole_bytes_served_total",
                "Body bytes sent to clients, by source",
                &["source"],
            ),
            inflight_requests: r.gauge(
                "casserole_inflight_requests",
                "Client requests being served",
            ),
            chunk_sources: r.counter_vec(
                "casserole_chunk_lookups_total",
                "Chunk lookups by the tier that answered",
                &["tier"],
            ),
            chunk_fetch_seconds: r.histogram_vec(
                "casserole_chunk_fetch_seconds",
                "Time to obtain one whole chunk, by source",
                &["source"],
            ),
            upstream_requests: r.counter_vec(
                "casserole_upstream_requests_total",
                "Requests sent to the upstream",
                &["kind"],
            ),
            upstream_errors: r.counter_vec(
                "casserole_upstream_errors_total",
                "Failed upstream requests by reason",
                &["reason"],
            ),
            upstream_bytes: r.counter(
                "casserole_upstream_bytes_total",
                "Body bytes received from the upstream",
            ),
            objects_changed: r.counter(
                "casserole_objects_changed_total",
                "Objects found changed upstream while being fetched (response aborted, metadata dropped)",
            ),
            memory_bytes: r.gauge(
                "casserole_memory_bytes",
                "Bytes of chunks held by the memory tier",
            ),
            memory_chunks: r.gauge("casserole_memory_chunks", "Chunks held by the memory tier"),
            memory_evictions: r.counter(
                "casserole_memory_evictions_total",
                "Chunks evicted from the memory tier",
            ),
            metadata_lookups: r.counter_vec(
                "casserole_metadata_lookups_total",
                "Object metadata lookups by the tier that answered",
                &["tier"],
            ),
            response_first_byte_seconds: r.histogram(
                "casserole_response_first_byte_seconds",
                "Time from a cacheable request to its first body byte being ready",
            ),
            registrar: r.clone(),
        }
    }

    /// Metrics in a registry of their own (tests).
    pub fn unregistered() -> Self {
        Self::new(&Registrar::new())
    }
}
