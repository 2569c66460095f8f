//! The store's counters and its fsync latency histogram.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::segment::writer::BlockStats;

/// Upper bounds of the fsync histogram buckets, in seconds.
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Counters written by the store thread, read by the admin port.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Blocks written.
    pub blocks: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Uncompressed record bytes written.
    pub raw_bytes: AtomicU64,
    /// Bytes written to segment files.
    pub written_bytes: AtomicU64,
    /// fdatasync calls, by bucket of [`FSYNC_BUCKETS`] (last: +Inf).
    pub fsync_buckets: [AtomicU64; 13],
    /// Sum of fdatasync time, ns.
    pub fsync_ns: AtomicU64,
    /// Records made durable by fdatasync calls (group commit size = this /
    /// count).
    pub fsync_records: AtomicU64,
    /// Segments sealed.
    pub segments_sealed: AtomicU64,
    /// Segments deleted by the drop_oldest policy.
    pub segments_dropped: AtomicU64,
    /// Bytes of segments on disk at the last measurement.
    pub segment_bytes: AtomicU64,
    /// Write errors.
    pub errors: AtomicU64,
}

impl StoreMetrics {
    /// Counts a written block.
    pub fn block(&self, s: &BlockStats) {
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(s.records, Ordering::Relaxed);
        self.raw_bytes.fetch_add(s.raw_bytes, Ordering::Relaxed);
        self.written_bytes
            .fetch_add(s.written_bytes, Ordering::Relaxed);
    }

    /// Counts an fdatasync that made `records` records durable.
    pub fn fsync(&self, took: Duration, records: u64) {
        let secs = took.as_secs_f64();
        let bucket = FSYNC_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(FSYNC_BUCKETS.len());
        self.fsync_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.fsync_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.fsync_records.fetch_add(records, Ordering::Relaxed);
    }

    /// Renders the store's metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            (
                "trackplane_store_blocks_total",
                "Blocks written to segments.",
                g(&self.blocks),
            ),
            (
                "trackplane_store_records_total",
                "Records written to segments.",
                g(&self.records),
            ),
            (
                "trackplane_store_raw_bytes_total",
                "Uncompressed record bytes written.",
                g(&self.raw_bytes),
            ),
            (
                "trackplane_store_written_bytes_total",
                "Bytes written to segment files (compressed, with headers).",
                g(&self.written_bytes),
            ),
            (
                "trackplane_store_segments_sealed_total",
                "Segments sealed.",
                g(&self.segments_sealed),
            ),
            (
                "trackplane_store_segments_dropped_total",
                "Segments deleted at the disk budget (policy drop_oldest).",
                g(&self.segments_dropped),
            ),
            (
                "trackplane_store_errors_total",
                "Segment write errors.",
                g(&self.errors),
            ),
            (
                "trackplane_store_fsync_records_total",
                "Records made durable by fdatasync calls.",
                g(&self.fsync_records),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let raw = g(&self.raw_bytes) as f64;
        let written = g(&self.written_bytes) as f64;
        let ratio = if written > 0.0 { raw / written } else { 0.0 };
        let _ = writeln!(out, "# HELP trackplane_store_compression_ratio Uncompressed over written bytes since start.\n# TYPE trackplane_store_compression_ratio gauge\ntrackplane_store_compression_ratio {ratio:.3}");
        let _ = writeln!(out, "# HELP trackplane_store_segment_bytes Bytes of segments on disk.\n# TYPE trackplane_store_segment_bytes gauge\ntrackplane_store_segment_bytes {}", g(&self.segment_bytes));
        let _ = writeln!(out, "# HELP trackplane_store_fsync_seconds fdatasync latency.\n# TYPE trackplane_store_fsync_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in FSYNC_BUCKETS.iter().enumerate() {
            cumulative += g(&self.fsync_buckets[i]);
            let _ = writeln!(
                out,
                "trackplane_store_fsync_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += g(&self.fsync_buckets[FSYNC_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "trackplane_store_fsync_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "trackplane_store_fsync_seconds_sum {:.6}",
            g(&self.fsync_ns) as f64 / 1e9
        );
        let _ = writeln!(out, "trackplane_store_fsync_seconds_count {cumulative}");
    }
}
