//! The disk budget: the segments directory is measured once a second, and
//! at the budget the store either refuses new events or deletes the oldest
//! sealed segments (`storage.full_policy`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{Ctx, Stream};
use crate::config::FullPolicy;

impl Ctx {
    /// Measures the segments directory; at the budget either refuses new
    /// events or deletes the oldest sealed segments, as configured. Without
    /// a budget nothing is measured (the steady state allocates nothing).
    pub(super) fn enforce_budget(&self, streams: &[Stream]) -> std::io::Result<()> {
        if self.cfg.disk_budget_bytes == 0 {
            return Ok(());
        }
        let segments = crate::segment::list(&self.dir)?;
        // Each segment's size, when it was last written (the oldest go first
        // under drop_oldest) and whether it is still open: one metadata read.
        let mut files: Vec<(u64, Option<SystemTime>, PathBuf, bool)> =
            Vec::with_capacity(segments.len());
        for seg in segments {
            if let Ok(meta) = std::fs::metadata(&seg.path) {
                files.push((meta.len(), meta.modified().ok(), seg.path, seg.open));
            }
        }
        let mut total: u64 = files.iter().map(|(len, ..)| len).sum();
        self.metrics.segment_bytes.store(total, Ordering::Relaxed);
        let budget = self.cfg.disk_budget_bytes;
        if total >= budget && self.cfg.full_policy == FullPolicy::DropOldest {
            // Oldest first: by creation order, approximated by mtime.
            let mut sealed: Vec<(SystemTime, u64, PathBuf)> = files
                .into_iter()
                .filter_map(|(len, modified, path, open)| {
                    Some((modified.filter(|_| !open)?, len, path))
                })
                .collect();
            sealed.sort();
            for (_, len, path) in sealed {
                if total < budget * 9 / 10 {
                    break;
                }
                match std::fs::remove_file(&path) {
                    // The shipper deleted it (shipped) since it was listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    r => r?,
                }
                total -= len;
                self.metrics
                    .segments_dropped
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(segment = %path.display(), "disk budget reached: deleted oldest segment (policy drop_oldest)");
            }
            self.metrics.segment_bytes.store(total, Ordering::Relaxed);
        }
        let refuse = total >= budget && self.cfg.full_policy == FullPolicy::Refuse;
        if refuse != self.status.refusing.swap(refuse, Ordering::AcqRel) {
            if refuse {
                tracing::error!(
                    bytes = total,
                    budget,
                    streams = streams.len(),
                    "disk budget reached: refusing new events"
                );
            } else {
                tracing::info!(
                    bytes = total,
                    budget,
                    "below the disk budget again: accepting events"
                );
            }
        }
        Ok(())
    }
}
