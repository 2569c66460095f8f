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

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Public routes, as metric labels.
pub const ROUTES: [&str; 6] = ["pixel", "click", "beacon", "batch", "healthz", "other"];

/// Statuses counted, as metric labels.
pub const STATUSES: [u16; 13] = [
    200, 204, 302, 400, 404, 405, 408, 411, 413, 414, 431, 500, 503,
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
    /// Answers to `sync` events sent after `storage.sync_timeout_ms`
    /// without confirmed durability.
    pub sync_timeouts: Counter,
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

/// Renders all workers' counters in the Prometheus text format.
pub fn render(out: &mut String, workers: &[std::sync::Arc<WorkerMetrics>]) {
    let sum = |f: &dyn Fn(&WorkerMetrics) -> u64| workers.iter().map(|w| f(w)).sum::<u64>();
    let _ = writeln!(
        out,
        "# HELP trackplane_http_requests_total Requests by route."
    );
    let _ = writeln!(out, "# TYPE trackplane_http_requests_total counter");
    for (i, route) in ROUTES.iter().enumerate() {
        let _ = writeln!(
            out,
            "trackplane_http_requests_total{{route=\"{route}\"}} {}",
            sum(&|w| w.requests[i].get())
        );
    }
    let _ = writeln!(
        out,
        "# HELP trackplane_http_responses_total Responses by status code."
    );
    let _ = writeln!(out, "# TYPE trackplane_http_responses_total counter");
    for (i, code) in STATUSES.iter().enumerate() {
        let _ = writeln!(
            out,
            "trackplane_http_responses_total{{code=\"{code}\"}} {}",
            sum(&|w| w.responses[i].get())
        );
    }
    let _ = writeln!(out, "# HELP trackplane_events_audited_total Events audited, by status (recorded unless refused or dropped by policy).");
    let _ = writeln!(out, "# TYPE trackplane_events_audited_total counter");
    let _ = writeln!(
        out,
        "trackplane_events_audited_total{{status=\"ok\"}} {}",
        sum(&|w| w.events_ok.get())
    );
    let _ = writeln!(
        out,
        "trackplane_events_audited_total{{status=\"invalid\"}} {}",
        sum(&|w| w.events_invalid.get())
    );
    let _ = writeln!(out, "# HELP trackplane_events_refused_total Events answered but not recorded because the hand-off ring was full.");
    let _ = writeln!(out, "# TYPE trackplane_events_refused_total counter");
    let _ = writeln!(
        out,
        "trackplane_events_refused_total {}",
        sum(&|w| w.events_refused.get())
    );
    let _ = writeln!(out, "# HELP trackplane_events_dnt_dropped_total Events answered but not recorded by the do-not-track policy.");
    let _ = writeln!(out, "# TYPE trackplane_events_dnt_dropped_total counter");
    let _ = writeln!(
        out,
        "trackplane_events_dnt_dropped_total {}",
        sum(&|w| w.events_dnt_dropped.get())
    );
    let _ = writeln!(
        out,
        "# HELP trackplane_audit_issues_total Audit findings by issue code."
    );
    let _ = writeln!(out, "# TYPE trackplane_audit_issues_total counter");
    for code in IssueCode::ALL {
        let _ = writeln!(
            out,
            "trackplane_audit_issues_total{{code=\"{}\"}} {}",
            code.as_str(),
            sum(&|w| w.issues[code.index()].get())
        );
    }
    let _ = writeln!(
        out,
        "# HELP trackplane_record_bytes_total Encoded record bytes handed to storage."
    );
    let _ = writeln!(out, "# TYPE trackplane_record_bytes_total counter");
    let _ = writeln!(
        out,
        "trackplane_record_bytes_total {}",
        sum(&|w| w.record_bytes.get())
    );
    let _ = writeln!(
        out,
        "# HELP trackplane_connections_accepted_total Connections accepted."
    );
    let _ = writeln!(out, "# TYPE trackplane_connections_accepted_total counter");
    let _ = writeln!(
        out,
        "trackplane_connections_accepted_total {}",
        sum(&|w| w.connections_accepted.get())
    );
    let _ = writeln!(out, "# HELP trackplane_connections_refused_total Connections closed at once because a worker was at its cap.");
    let _ = writeln!(out, "# TYPE trackplane_connections_refused_total counter");
    let _ = writeln!(
        out,
        "trackplane_connections_refused_total {}",
        sum(&|w| w.connections_refused.get())
    );
    let _ = writeln!(
        out,
        "# HELP trackplane_connections_open Connections open now."
    );
    let _ = writeln!(out, "# TYPE trackplane_connections_open gauge");
    let _ = writeln!(
        out,
        "trackplane_connections_open {}",
        sum(&|w| w.connections_open.get())
    );
    let _ = writeln!(
        out,
        "# HELP trackplane_store_sync_timeouts_total Answers to sync events sent without confirmed durability after storage.sync_timeout_ms.\n# TYPE trackplane_store_sync_timeouts_total counter\ntrackplane_store_sync_timeouts_total {}",
        sum(&|w| w.sync_timeouts.get())
    );
}
