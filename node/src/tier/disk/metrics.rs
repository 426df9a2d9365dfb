//! The disk tier's Prometheus metrics.

use prometheus::{IntCounter, IntGauge};

#[derive(Clone)]
pub struct DiskMetrics {
    pub used_bytes: IntGauge,
    pub chunks: IntGauge,
    pub meta_files: IntGauge,
    pub evictions: IntCounter,
    pub checksum_failures: IntCounter,
    pub write_errors: IntCounter,
    pub read_errors: IntCounter,
    pub disk_full: IntCounter,
}

impl DiskMetrics {
    pub fn new(r: &crate::metrics::Registrar) -> Self {
        DiskMetrics {
            used_bytes: r.gauge(
                "casserole_disk_bytes",
                "Bytes of chunk and metadata files held by the disk tier",
            ),
            chunks: r.gauge("casserole_disk_chunks", "Chunks held by the disk tier"),
            meta_files: r.gauge(
                "casserole_disk_metadata_files",
                "Metadata records held by the disk tier",
            ),
            evictions: r.counter(
                "casserole_disk_evictions_total",
                "Chunk and metadata files evicted from the disk tier",
            ),
            disk_full: r.counter(
                "casserole_disk_full_total",
                "Writes that found the file system full (ENOSPC) and evicted to make room",
            ),
            checksum_failures: r.counter(
                "casserole_disk_checksum_failures_total",
                "Chunk or metadata files that failed verification and were deleted",
            ),
            write_errors: r.counter(
                "casserole_disk_write_errors_total",
                "Failed disk tier writes (e.g. disk full)",
            ),
            read_errors: r.counter("casserole_disk_read_errors_total", "Failed disk tier reads"),
        }
    }

    pub fn unregistered() -> Self {
        let g = |n: &str| IntGauge::new(n, n).expect("valid metric name");
        let c = |n: &str| IntCounter::new(n, n).expect("valid metric name");
        Self {
            used_bytes: g("disk_used_bytes"),
            chunks: g("disk_chunks"),
            meta_files: g("disk_meta_files"),
            evictions: c("disk_evictions_total"),
            checksum_failures: c("disk_checksum_failures_total"),
            write_errors: c("disk_write_errors_total"),
            read_errors: c("disk_read_errors_total"),
            disk_full: c("disk_full_total"),
        }
    }
}
