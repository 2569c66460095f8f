//! The server's background threads: the catalog reloader (re-reads changed
//! catalog files and swaps them in) and the systemd watchdog (pings only
//! while every worker's event loop turns). Neither is on the request path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::audit::{CatalogDir, ScanReport};
use crate::bell;
use crate::server::{notify, Shared};

/// Pings systemd's watchdog while every worker's event loop turns; a stuck
/// worker stops the pings and systemd restarts the service.
pub fn spawn_watchdog(shared: Arc<Shared>, every: Duration) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("trackplane-watchdog".into())
        .spawn(move || {
            let notifier = notify::Notifier::from_env();
            let beats = |s: &Shared| {
                s.heartbeats
                    .iter()
                    .map(|h| h.load(Ordering::Relaxed))
                    .collect::<Vec<_>>()
            };
            let mut last = beats(&shared);
            let step = Duration::from_millis(50);
            let mut waited = Duration::ZERO;
            while !shared.shutdown.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                waited += step;
                if waited < every {
                    continue;
                }
                waited = Duration::ZERO;
                let now = beats(&shared);
                match now.iter().zip(&last).position(|(a, b)| a == b) {
                    None => notifier.notify("WATCHDOG=1"),
                    Some(worker) => tracing::error!(
                        worker,
                        "worker event loop stalled; withholding the watchdog ping"
                    ),
                }
                last = now;
            }
        })
}

/// Re-reads changed catalog files every `reload_interval_ms` (at once
/// after a reload) and swaps the new snapshot in; workers keep serving from
/// the old one meanwhile. Sleeps in between, until its bells ring.
///
/// With `idle` (`server.background_class = "idle"`) the thread lives in
/// the idle class, where a worker's wake-up takes the core from it at once:
/// in the normal class a worker waited behind it for up to 4.5-5.2 ms while
/// it read and built a catalog of 1M ids, though it yields every 1,024
/// lines, because what it does between yields (growing and freeing
/// buffers of megabytes: page faults, the allocator's `madvise`) ran for
/// milliseconds; in the idle class 101-374 µs at most
/// (bench/results/catalog-idle-*.md). At 20k requests/s with such a
/// catalog replaced every second, p99 was 987-1,118 µs in the normal class
/// and 73-85 µs in the idle class, as with no catalog changing
/// (bench/results/reload-tail-*.md). A changed catalog loads later on a
/// core the workers keep busy: 2.1-3.6 s after its rename there, against
/// 1.5-2.4 s.
pub fn spawn_reloader(
    shared: Arc<Shared>,
    mut dir: CatalogDir,
    idle: bool,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("trackplane-catalogs".into()).spawn(move || {
        if idle {
            if let Err(e) = crate::sched::enter_idle() {
                tracing::warn!(error = %e, "catalog reloader cannot enter the idle class; it runs in the normal class");
            }
        }
        let mut last_scan = Instant::now();
        loop {
            // Read each time: a reload may change it.
            let interval =
                Duration::from_millis(shared.rules.load().config.catalogs.reload_interval_ms);
            let timeout = interval.saturating_sub(last_scan.elapsed());
            match bell::wait([shared.stopping.fd(), shared.rescan_catalogs.fd()], Some(timeout)) {
                Ok([true, _]) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "catalog reloader's wait failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let asked = shared.rescan_catalogs.clear();
            if !asked && last_scan.elapsed() < interval {
                continue;
            }
            last_scan = Instant::now();
            let rules = shared.rules.load();
            // A reload may have pointed catalogs elsewhere.
            let want = rules.config.catalog_dir();
            let moved = want != dir.path();
            if moved {
                tracing::info!(dir = %want.display(), "catalog directory changed");
                dir = CatalogDir::new(&want);
            }
            match dir.scan() {
                Ok(report) => {
                    let report = report.unwrap_or_default();
                    log_unreadable(&report);
                    if report.changed() || moved {
                        shared.catalogs.store(Arc::new(dir.catalogs().clone()));
                    }
                    if report.changed() {
                        tracing::info!(loaded = ?report.loaded, removed = ?report.removed, "catalogs reloaded");
                    }
                }
                Err(e) => tracing::warn!(
                    dir = %dir.path().display(),
                    error = %e,
                    "catalog scan failed; keeping the current catalogs"
                ),
            }
        }
    })
}

/// Names each catalog file a scan could not read (once per change of the
/// file: the scan reports it only then).
pub fn log_unreadable(report: &ScanReport) {
    for (file, error) in &report.unreadable {
        tracing::warn!(
            file = %file.display(),
            %error,
            "catalog file unreadable; its advertiser keeps the catalog it had"
        );
    }
}
