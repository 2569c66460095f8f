//! The admin port's `/metrics` page: every worker's, the store's, the
//! view's and start-up recovery's counters in Prometheus text format.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::server::{metrics, Shared};

/// Everything the metrics page reads, behind one `render`.
pub(super) struct MetricsPage {
    pub workers: Vec<Arc<metrics::WorkerMetrics>>,
    /// The driver each worker reported when its runtime was up.
    pub drivers: Vec<crate::server::DriverKind>,
    pub store: Arc<crate::store::StoreMetrics>,
    pub shared: Arc<Shared>,
    pub recovery: RecoveryCounts,
    /// Each stream's id and ring.
    pub rings: Vec<(u32, crate::ring::RingGauge)>,
}

impl MetricsPage {
    pub fn render(&self) -> String {
        use metrics::family;
        let mut out = String::with_capacity(8192);
        metrics::render(&mut out, &self.workers);
        self.store.render(&mut out);
        let one = |v: u64| [(String::new(), v)];
        let on = |uring: bool| {
            self.drivers
                .iter()
                .filter(|d| d.is_uring() == uring)
                .count() as u64
        };
        family(
            &mut out,
            "trackplane_workers",
            "gauge",
            "Workers serving, by I/O driver: epoll where the kernel refused io_uring, or where --driver epoll chose it.",
            [
                ("driver=\"io_uring\"".to_owned(), on(true)),
                ("driver=\"epoll\"".to_owned(), on(false)),
            ],
        );
        let (shared, view) = (&self.shared, &self.shared.view);
        family(
            &mut out,
            "trackplane_segment_cut_blocks_total",
            "counter",
            "Torn or corrupt segment tails cut by recovery at start.",
            one(self.recovery.cut),
        );
        family(
            &mut out,
            "trackplane_segments_quarantined_total",
            "counter",
            "Unreadable segments moved to quarantine/ at start.",
            one(self.recovery.quarantined),
        );
        family(
            &mut out,
            "trackplane_store_refusing",
            "gauge",
            "Whether the disk budget refuses new events (1) or not (0).",
            one(u64::from(
                shared.store_status.refusing.load(Ordering::Relaxed),
            )),
        );
        family(
            &mut out,
            "trackplane_store_failing",
            "gauge",
            "Whether segment writes fail and new events are refused until one succeeds (1) or not (0).",
            one(u64::from(
                shared.store_status.failing.load(Ordering::Relaxed),
            )),
        );
        family(
            &mut out,
            "trackplane_store_sync_failed",
            "gauge",
            "Whether an fdatasync of a segment failed (1): nothing is confirmed durable and new events are refused until a restart.",
            one(u64::from(
                shared.store_status.sync_failed.load(Ordering::Relaxed),
            )),
        );
        let classes = [("thread=\"store\"", &shared.store_status.class)];
        family(
            &mut out,
            "trackplane_background_idle_passes_total",
            "counter",
            "Passes a background thread began in the idle scheduling class (server.background_class).",
            classes.iter().map(|(l, c)| {
                ((*l).to_owned(), c.idle_passes.load(Ordering::Relaxed))
            }),
        );
        family(
            &mut out,
            "trackplane_background_lifts_total",
            "counter",
            "Times a background thread was lifted from the idle to the normal class mid-pass: a ring filled past a quarter, or other work on its core starved the pass.",
            classes.iter().map(|(l, c)| {
                ((*l).to_owned(), c.lifts.load(Ordering::Relaxed))
            }),
        );
        let catalogs = shared.catalogs.load();
        let products: usize = catalogs
            .advertisers()
            .filter_map(|a| catalogs.get(a))
            .map(|s| s.len())
            .sum();
        family(
            &mut out,
            "trackplane_catalogs",
            "gauge",
            "Advertisers with a loaded catalog.",
            one(catalogs.len() as u64),
        );
        family(
            &mut out,
            "trackplane_catalog_products",
            "gauge",
            "Product ids in all loaded catalogs.",
            one(products as u64),
        );
        family(
            &mut out,
            "trackplane_ring_used_bytes",
            "gauge",
            "Bytes waiting in a worker's hand-off ring.",
            self.rings
                .iter()
                .map(|(id, r)| (format!("stream=\"{id}\""), r.used_bytes() as u64)),
        );
        let capacity: usize = self.rings.iter().map(|(_, r)| r.capacity()).sum();
        family(
            &mut out,
            "trackplane_ring_capacity_bytes",
            "gauge",
            "Bytes of all hand-off rings.",
            one(capacity as u64),
        );
        family(
            &mut out,
            "trackplane_view_dropped_total",
            "counter",
            "Record copies the live view lost (full view ring or a slow viewer).",
            [
                (
                    "where=\"ring\"".to_owned(),
                    view.ring_dropped.load(Ordering::Relaxed),
                ),
                (
                    "where=\"viewer\"".to_owned(),
                    view.viewer_dropped.load(Ordering::Relaxed),
                ),
            ],
        );
        family(
            &mut out,
            "trackplane_view_over_budget_total",
            "counter",
            "Names, unknown products and recent events the live view did not keep: server.view_memory_bytes was spent.",
            one(view.over_budget.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "trackplane_view_untracked_total",
            "counter",
            "Events of advertisers the live view does not track (too many advertisers, or no memory left).",
            one(view.untracked.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "trackplane_view_streamed_total",
            "counter",
            "Events written to live view streams.",
            one(view.streamed.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "trackplane_view_stopped",
            "gauge",
            "1 once folding an event into the live view panicked; the view answers 503 until a restart.",
            one(u64::from(view.stopped())),
        );
        family(
            &mut out,
            "trackplane_view_viewers",
            "gauge",
            "Live view streams open.",
            one(view.subscribers() as u64),
        );
        out
    }
}

/// What start-up recovery did, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RecoveryCounts {
    pub cut: u64,
    pub quarantined: u64,
}
