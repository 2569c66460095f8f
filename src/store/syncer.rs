//! The syncer thread: fdatasync runs beside the store's thread, so that a
//! slow disk delays durability, never the writing of blocks (and so never
//! the flush window). Requests queued while one sync runs are coalesced per
//! stream (group commit).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::status::{confirm, StreamShared, Watch};
use super::{Ctx, StoreMetrics, StoreStatus, Stream};
use crate::segment::writer::SyncFile;

/// An fdatasync for the syncer: once `file` is synced, every record of
/// `stream` below `through` is durable.
pub(super) struct SyncJob {
    pub(super) stream: usize,
    pub(super) file: Arc<std::fs::File>,
    pub(super) through: u64,
}

/// The syncer thread: fdatasyncs what the store asks, coalescing queued
/// requests per stream (group commit), and publishes durable sequences,
/// until an fdatasync fails (module header).
pub(super) fn syncer(
    rx: std::sync::mpsc::Receiver<SyncJob>,
    streams: Vec<Arc<StreamShared>>,
    metrics: Arc<StoreMetrics>,
    status: Arc<StoreStatus>,
    sync_file: SyncFile,
) {
    let mut latest: Vec<Option<SyncJob>> = (0..streams.len()).map(|_| None).collect();
    while let Ok(job) = rx.recv() {
        let i = job.stream;
        latest[i] = Some(job);
        while let Ok(job) = rx.try_recv() {
            let i = job.stream;
            latest[i] = Some(job);
        }
        for (i, slot) in latest.iter_mut().enumerate() {
            let Some(job) = slot.take() else {
                continue;
            };
            let before = streams[i].durable_seq.load(Ordering::Acquire);
            let began = Instant::now();
            match sync_file(&job.file) {
                Ok(()) => {
                    if confirm(&status, &streams[i], job.through) {
                        metrics.fsync(began.elapsed(), job.through.saturating_sub(before));
                    }
                }
                Err(e) => {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    status.fail_sync(&file_name(&job.file), &e);
                }
            }
        }
    }
}

/// The syncer thread and its queue.
pub(super) struct Syncer {
    pub(super) tx: std::sync::mpsc::SyncSender<SyncJob>,
    pub(super) thread: JoinHandle<()>,
}

impl Ctx {
    /// Starts the syncer: fdatasync runs on its own thread, so a slow disk
    /// stalls durability, never the writing of blocks (and so never the
    /// flush window). Started before the store's thread, so that a failure
    /// to start it fails the start instead of ending the store unseen.
    pub(super) fn start_syncer(&self, streams: &[Stream]) -> std::io::Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SyncJob>(64);
        let shared: Vec<Arc<StreamShared>> = streams.iter().map(|s| s.shared.clone()).collect();
        let (metrics, status, sync_file) =
            (self.metrics.clone(), self.status.clone(), self.sync_file);
        let thread = std::thread::Builder::new()
            .name("trackplane-sync".into())
            .spawn(move || {
                let _watch = Watch {
                    status: status.clone(),
                    syncer: true,
                };
                syncer(rx, shared, metrics, status, sync_file)
            })?;
        Ok(Syncer { tx, thread })
    }
}

/// The name of an open file, for a log line (read back from the kernel
/// only then, so that a sync job carries none).
fn file_name(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap_or_default()
}
