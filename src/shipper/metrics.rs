//! The shipper's counters and per-stream lag, for its admin port.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Lag and position of one stream, refreshed every second.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamGauges {
    /// Records read from disk and not yet acknowledged.
    pub lag_events: u64,
    /// Bytes of segments from the one being read on.
    pub lag_bytes: u64,
    /// Age of the oldest unacknowledged event read, seconds.
    pub lag_seconds: f64,
    /// Next sequence number after the last checkpoint.
    pub checkpoint: u64,
    /// Records produced and not yet reported.
    pub in_flight: u64,
}

/// The shipper's metrics.
#[derive(Debug, Default)]
pub struct ShipperMetrics {
    /// Records handed to the producer.
    pub produced: AtomicU64,
    /// Records acknowledged by Kafka.
    pub acked: AtomicU64,
    /// Failed deliveries and produce calls (retried).
    pub delivery_errors: AtomicU64,
    /// Rewinds to the last acknowledged record.
    pub retries: AtomicU64,
    /// Producers replaced after a fatal error.
    pub producer_restarts: AtomicU64,
    /// Failed tries to start a producer in place of one that failed for
    /// good (each tried again with backoff).
    pub producer_restart_errors: AtomicU64,
    /// Records written to the dead-letter file.
    pub dead_letters: AtomicU64,
    /// Failed writes to the dead-letter file (each retried).
    pub dead_letter_errors: AtomicU64,
    /// Segment read errors.
    pub read_errors: AtomicU64,
    /// Records of a stream's sequence found missing from disk (deleted or
    /// quarantined before they were shipped) and passed over.
    pub missing: AtomicU64,
    /// Watermark messages sent.
    pub watermarks: AtomicU64,
    /// Watermark messages not delivered.
    pub watermark_errors: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Shipped segments deleted.
    pub segments_deleted: AtomicU64,
    /// 1 while Kafka answers (a delivery or metadata since librdkafka last
    /// lost every broker).
    pub broker_up: AtomicU64,
    /// Per stream.
    pub streams: Mutex<BTreeMap<u32, StreamGauges>>,
}

impl ShipperMetrics {
    /// The Prometheus text page.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, v) in [
            (
                "trackplane_shipper_produced_total",
                "Records handed to the Kafka producer.",
                g(&self.produced),
            ),
            (
                "trackplane_shipper_acked_total",
                "Records acknowledged by Kafka.",
                g(&self.acked),
            ),
            (
                "trackplane_shipper_errors_total",
                "Failed produce calls and deliveries (retried).",
                g(&self.delivery_errors),
            ),
            (
                "trackplane_shipper_retries_total",
                "Rewinds to the last acknowledged record.",
                g(&self.retries),
            ),
            (
                "trackplane_shipper_producer_restarts_total",
                "Kafka producers replaced after a fatal error (an idempotent producer that can no longer keep its ordering).",
                g(&self.producer_restarts),
            ),
            (
                "trackplane_shipper_producer_restart_errors_total",
                "Failed tries to start a Kafka producer in place of one that failed for good (each tried again after 1 s, doubling up to 30 s).",
                g(&self.producer_restart_errors),
            ),
            (
                "trackplane_shipper_dead_letters_total",
                "Records Kafka will never accept, written to the dead-letter file.",
                g(&self.dead_letters),
            ),
            (
                "trackplane_shipper_dead_letter_errors_total",
                "Failed writes to the dead-letter file; the stream waits at the record and tries again.",
                g(&self.dead_letter_errors),
            ),
            (
                "trackplane_shipper_read_errors_total",
                "Segment read errors.",
                g(&self.read_errors),
            ),
            (
                "trackplane_shipper_records_missing_total",
                "Records missing from a stream's segments (deleted or quarantined before they were shipped), passed over.",
                g(&self.missing),
            ),
            (
                "trackplane_shipper_watermarks_total",
                "Watermark messages sent.",
                g(&self.watermarks),
            ),
            (
                "trackplane_shipper_watermark_errors_total",
                "Watermark messages not delivered.",
                g(&self.watermark_errors),
            ),
            (
                "trackplane_shipper_checkpoints_total",
                "Checkpoints written.",
                g(&self.checkpoints),
            ),
            (
                "trackplane_shipper_segments_deleted_total",
                "Fully shipped segments deleted after retention.",
                g(&self.segments_deleted),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let _ = writeln!(out, "# HELP trackplane_shipper_broker_up 1 while Kafka answers: set by a delivery or a metadata answer, cleared when librdkafka loses every broker or a metadata request fails.\n# TYPE trackplane_shipper_broker_up gauge\ntrackplane_shipper_broker_up {}", g(&self.broker_up));
        let streams = self.streams.lock().map(|s| s.clone()).unwrap_or_default();
        type Field = fn(&StreamGauges) -> f64;
        let gauges: [(&str, &str, Field); 5] = [
            (
                "trackplane_shipper_lag_events",
                "Records read and not yet acknowledged.",
                |v| v.lag_events as f64,
            ),
            (
                "trackplane_shipper_lag_bytes",
                "Bytes of segments not yet fully shipped.",
                |v| v.lag_bytes as f64,
            ),
            (
                "trackplane_shipper_lag_seconds",
                "Age of the oldest unacknowledged event read.",
                |v| v.lag_seconds,
            ),
            (
                "trackplane_shipper_checkpoint_seq",
                "Next sequence number after the last checkpoint.",
                |v| v.checkpoint as f64,
            ),
            (
                "trackplane_shipper_in_flight",
                "Records produced and awaiting acknowledgement.",
                |v| v.in_flight as f64,
            ),
        ];
        for (name, help, field) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (s, v) in &streams {
                let _ = writeln!(out, "{name}{{stream=\"{s}\"}} {}", field(v));
            }
        }
        out
    }
}
