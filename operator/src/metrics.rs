//! Prometheus metrics of the operator, served on `/metrics`.

use std::time::Instant;

use prometheus::{
    histogram_opts, opts, Encoder, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry,
    TextEncoder,
};

/// The operator's metrics, registered in their own registry (no process-global state, so
/// tests can create as many as they like).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounter,
    pub failures: IntCounterVec,
    pub invalid_specs: IntCounter,
    pub duration: HistogramVec,
    pub leader: IntGauge,
    /// 1 when the installed CRD is this release's (or newer), 0 when not.
    pub crd_current: IntGauge,
    pub crd_apply_failures: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounter::with_opts(opts!(
            "casserole_operator_reconciles_total",
            "Reconciliations started"
        ))
        .unwrap();
        let failures = IntCounterVec::new(
            opts!(
                "casserole_operator_reconcile_errors_total",
                "Reconciliations that failed, by error kind"
            ),
            &["error"],
        )
        .unwrap();
        let invalid_specs = IntCounter::with_opts(opts!(
            "casserole_operator_invalid_specs_total",
            "Reconciliations that stopped at an invalid spec"
        ))
        .unwrap();
        let duration = HistogramVec::new(
            histogram_opts!(
                "casserole_operator_reconcile_duration_seconds",
                "Duration of reconciliations",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
            ),
            &["result"],
        )
        .unwrap();
        let leader = IntGauge::with_opts(opts!(
            "casserole_operator_leader",
            "1 while this replica holds the leader Lease"
        ))
        .unwrap();
        let crd_current = IntGauge::with_opts(opts!(
            "casserole_operator_crd_current",
            "1 when the installed CasseroleCache CRD is this release's or newer, 0 when it is older or unreadable"
        ))
        .unwrap();
        let crd_apply_failures = IntCounter::with_opts(opts!(
            "casserole_operator_crd_apply_failures_total",
            "Failed attempts to apply the CRD at start"
        ))
        .unwrap();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(invalid_specs.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
            Box::new(crd_current.clone()),
            Box::new(crd_apply_failures.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            failures,
            invalid_specs,
            duration,
            leader,
            crd_current,
            crd_apply_failures,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn start_reconcile(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self.clone(),
            start: Instant::now(),
            result: "error",
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}

/// Records the duration of one reconcile, labelled with how it ended (`error` unless told
/// otherwise, so an early `?` return is counted as one).
pub struct ReconcileTimer {
    metrics: Metrics,
    start: Instant,
    result: &'static str,
}

impl ReconcileTimer {
    pub fn set_result(&mut self, result: &'static str) {
        self.result = result;
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .duration
            .with_label_values(&[self.result])
            .observe(self.start.elapsed().as_secs_f64());
    }
}
