//! The registry of a node's Prometheus metrics. Every metric is prefixed `casserole_`; each
//! subsystem defines and registers its own (`UpstreamMetrics`, `FetchMetrics`, `DiskMetrics`, …)
//! and the admin listener renders them all.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

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
