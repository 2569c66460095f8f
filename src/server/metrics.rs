//! Per-worker counters. Each worker owns its block, so increments are plain
//! load+store on a cache line no other core writes (no `lock` prefix); the
//! admin port sums the blocks when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::audit::IssueCode;

/// One counter, written by one thread, read by any.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one (gauges).
    #[inline]
    pub fn dec(&self) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(1),
            Ordering::Relaxed,
        );
    }

    /// Sets the value (gauges). Only the owning worker may call this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Public routes, as metric labels.
pub const ROUTES: [&str; 6] = ["pixel", "click", "beacon", "batch", "healthz", "other"];

/// Statuses counted, as metric labels.
pub const STATUSES: [u16; 13] = [
    200, 204, 302, 400, 404, 405, 408, 413, 414, 431, 500, 501, 503,
];

/// Counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Requests by route (index into [`ROUTES`]).
    pub requests: [Counter; 6],
    /// Responses by status (index into [`STATUSES`]).
    pub responses: [Counter; 13],
    /// Events audited with status ok.
    pub events_ok: Counter,
    /// Events audited with status invalid.
    pub events_invalid: Counter,
    /// Events refused because the ring was full.
    pub events_refused: Counter,
    /// Events not recorded because of the do-not-track policy.
    pub events_dnt_dropped: Counter,
    /// Issues found, by code (index of [`IssueCode::ALL`]).
    pub issues: [Counter; 8],
    /// Record bytes handed to the ring.
    pub record_bytes: Counter,
    /// Connections accepted.
    pub connections_accepted: Counter,
    /// Connections refused at the per-worker cap.
    pub connections_refused: Counter,
    /// Connections open now.
    pub connections_open: Counter,
    /// Connections closed because the client did not take its answers
    /// within `server.send_timeout_ms`.
    pub send_timeouts: Counter,
    /// Answers to `sync` events sent without confirmed durability: after
    /// `storage.sync_timeout_ms`, or once an fdatasync failed.
    pub sync_timeouts: Counter,
    /// 1 while the worker batches its wake-ups (`pace`), else 0.
    pub wake_batching: Counter,
    /// Times the worker started or stopped batching its wake-ups.
    pub wake_batch_changes: Counter,
}

impl WorkerMetrics {
    /// Counts a response.
    #[inline]
    pub fn response(&self, code: u16) {
        if let Some(i) = STATUSES.iter().position(|&s| s == code) {
            self.responses[i].inc();
        }
    }

    /// Counts an issue.
    #[inline]
    pub fn issue(&self, code: IssueCode) {
        self.issues[code.index()].inc();
    }
}

/// Writes one metric family: HELP, TYPE, then one line per sample. A
/// sample's labels are written as given (`route="pixel"`), or none when
/// empty.
pub fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Renders all workers' counters in the Prometheus text format.
pub fn render(out: &mut String, workers: &[std::sync::Arc<WorkerMetrics>]) {
    let sum = |f: &dyn Fn(&WorkerMetrics) -> u64| workers.iter().map(|w| f(w)).sum::<u64>();
    let one = |f: &dyn Fn(&WorkerMetrics) -> u64| [(String::new(), sum(f))];
    family(
        out,
        "trackplane_http_requests_total",
        "counter",
        "Requests by route.",
        ROUTES
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("route=\"{r}\""), sum(&|w| w.requests[i].get()))),
    );
    family(
        out,
        "trackplane_http_responses_total",
        "counter",
        "Responses by status code.",
        STATUSES
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("code=\"{c}\""), sum(&|w| w.responses[i].get()))),
    );
    family(
        out,
        "trackplane_events_audited_total",
        "counter",
        "Events audited, by status (recorded unless refused or dropped by policy).",
        [
            ("status=\"ok\"".to_owned(), sum(&|w| w.events_ok.get())),
            (
                "status=\"invalid\"".to_owned(),
                sum(&|w| w.events_invalid.get()),
            ),
        ],
    );
    family(out, "trackplane_events_refused_total", "counter",
        "Events answered but not recorded: the hand-off ring was full, or the disk budget or failing segment writes refused them.",
        one(&|w| w.events_refused.get()));
    family(
        out,
        "trackplane_events_dnt_dropped_total",
        "counter",
        "Events answered but not recorded by the do-not-track policy.",
        one(&|w| w.events_dnt_dropped.get()),
    );
    family(
        out,
        "trackplane_audit_issues_total",
        "counter",
        "Audit findings by issue code.",
        IssueCode::ALL.iter().map(|c| {
            (
                format!("code=\"{}\"", c.as_str()),
                sum(&|w| w.issues[c.index()].get()),
            )
        }),
    );
    family(
        out,
        "trackplane_record_bytes_total",
        "counter",
        "Encoded record bytes handed to storage.",
        one(&|w| w.record_bytes.get()),
    );
    family(
        out,
        "trackplane_connections_accepted_total",
        "counter",
        "Connections accepted.",
        one(&|w| w.connections_accepted.get()),
    );
    family(
        out,
        "trackplane_connections_refused_total",
        "counter",
        "Connections closed at once because a worker was at its cap.",
        one(&|w| w.connections_refused.get()),
    );
    family(
        out,
        "trackplane_connections_open",
        "gauge",
        "Connections open now.",
        one(&|w| w.connections_open.get()),
    );
    family(
        out,
        "trackplane_send_timeouts_total",
        "counter",
        "Connections closed because the client did not take its answers within server.send_timeout_ms.",
        one(&|w| w.send_timeouts.get()),
    );
    family(
        out,
        "trackplane_store_sync_timeouts_total",
        "counter",
        "Answers to sync events sent without confirmed durability: after storage.sync_timeout_ms, or once an fdatasync failed.",
        one(&|w| w.sync_timeouts.get()),
    );
    family(
        out,
        "trackplane_workers_batching_wakeups",
        "gauge",
        "Workers batching their wake-ups now (busier than server.wake_batch_busy_percent).",
        one(&|w| w.wake_batching.get()),
    );
    family(
        out,
        "trackplane_wake_batch_changes_total",
        "counter",
        "Times a worker started or stopped batching its wake-ups.",
        one(&|w| w.wake_batch_changes.get()),
    );
}
