//! The store: one thread that drains every worker's ring, batches records
//! into zstd blocks and appends them to each stream's open segment, rotates
//! segments and enforces the disk budget; and a syncer thread that
//! fdatasyncs (per interval, or at once for `sync` event types: group
//! commit) while the store keeps writing. Workers never wait for either
//! except, by choice, for `sync` events.
//!
//! # Invariants
//! - Ring record = `seq: u64 LE`, `ts_ms: u64 LE`, then the record bytes;
//!   a stream's sequence numbers arrive consecutively.
//! - `durable_seq` of a stream only grows, and every record below it is in a
//!   block that was written and fdatasync'ed.
//! - On stop, every record drained is written, synced and its segment
//!   sealed before `finish` returns.
//! - A failed write (a full disk, a file-size limit, an I/O error) loses
//!   nothing: the writer cuts off any part of a block it wrote and keeps
//!   the records pending, the rest stays in the ring (a drain stops at the
//!   failure), and `StoreStatus::failing` makes workers refuse new events
//!   and `/readyz` fail until a write, tried every second, succeeds. The
//!   thread ends only at a stop.
//! - A failed fdatasync is not tried again: the kernel may have dropped
//!   what it held of the file and reports that once, so a later fdatasync
//!   that succeeds proves nothing. `StoreStatus::sync_failed` is set for
//!   the rest of the process: no record is called durable again, and
//!   workers refuse new events and `/readyz` fails until a restart (as
//!   PostgreSQL and Kafka stop trusting a disk after a failed fsync).
//! - A store or sync thread that ends by a panic leaves new events refused
//!   for good (`Watch`), as a failed fdatasync does.

pub mod lease;
pub mod metrics;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::bell::Bell;
use crate::config::{FullPolicy, StorageConfig};
use crate::ring::Consumer;
use crate::sched::{Class, PASS_CHUNK};
use crate::segment::writer::{BlockStats, SyncFile};
use crate::segment::{StreamWriter, WriterConfig};
pub use metrics::StoreMetrics;

/// Bytes before each record in a ring: sequence and event time.
pub const RING_PREFIX: usize = 16;

/// What a worker and the store share about one stream.
#[derive(Debug, Default)]
pub struct StreamShared {
    /// One past the last sequence number known durable.
    pub durable_seq: CachePadded<AtomicU64>,
    /// The highest sequence number a worker waits to see durable, plus one
    /// (0: nobody waits).
    pub sync_wanted: CachePadded<AtomicU64>,
}

impl StreamShared {
    /// Asks the store to make everything up to `seq` durable soon.
    #[inline]
    pub fn want_sync(&self, seq: u64) {
        self.sync_wanted.fetch_max(seq + 1, Ordering::AcqRel);
    }

    /// Whether `seq` is durable.
    #[inline]
    pub fn is_durable(&self, seq: u64) -> bool {
        self.durable_seq.load(Ordering::Acquire) > seq
    }
}

/// State every worker checks: whether the disk budget refuses new events.
#[derive(Debug, Default)]
pub struct StoreStatus {
    /// Set while segments are at the budget and the policy is to refuse.
    pub refusing: AtomicBool,
    /// Set while the store cannot write segments (a full disk, an I/O
    /// error): new events are refused until a write succeeds again.
    pub failing: AtomicBool,
    /// Set, for good, once an fdatasync of a segment failed: `failing`
    /// stays set and nothing is called durable any more (module header).
    pub sync_failed: AtomicBool,
    /// Whether any event type is `sync` (the store then naps shorter and
    /// stays in the normal class).
    pub sync_types: AtomicBool,
    /// The store thread's scheduling class; workers lift it mid-pass when
    /// their ring fills past a quarter.
    pub class: crate::sched::Class,
    /// Whether the store naps (or is about to): a worker whose ring fills
    /// past a quarter then rings `bell`.
    napping: AtomicBool,
    /// The store's bell, from its start.
    bell: OnceLock<Arc<Bell>>,
}

impl StoreStatus {
    /// A status for a store whose event types include `sync` ones or not,
    /// in `class`.
    pub fn new(sync_types: bool, class: crate::sched::Class) -> StoreStatus {
        StoreStatus {
            sync_types: AtomicBool::new(sync_types),
            class,
            ..StoreStatus::default()
        }
    }

    /// Whether new events are refused: at the disk budget, or while
    /// segment writes fail.
    #[inline]
    pub fn refuses(&self) -> bool {
        self.refusing.load(Ordering::Relaxed) || self.failing.load(Ordering::Relaxed)
    }

    /// Records a failed fdatasync (module header): logs it the first time,
    /// and from now on refuses new events.
    fn fail_sync(&self, file: &Path, error: &std::io::Error) {
        self.failing.store(true, Ordering::Relaxed);
        if !self.sync_failed.swap(true, Ordering::AcqRel) {
            tracing::error!(
                file = %file.display(),
                error = %error,
                "fdatasync failed: what the kernel held of the segment may never reach the disk; \
                 refusing new events until trackplane is restarted"
            );
        }
    }

    /// Called by a worker whose ring is past a quarter: ends the store's
    /// nap. The store naps until its next flush is due, which at a high
    /// rate, or with a small ring, is longer than a ring takes to fill; a
    /// nap cut short costs one write(2) here, at most once per nap.
    #[inline]
    pub fn nudge(&self) {
        // Pairs with the fence in the store's `nap`: either the store sees
        // the records just pushed, or this sees it napping.
        fence(Ordering::SeqCst);
        if self.napping.load(Ordering::Relaxed) && self.napping.swap(false, Ordering::Relaxed) {
            if let Some(bell) = self.bell.get() {
                bell.ring();
            }
        }
    }
}

/// The segments directory under a data directory.
pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("segments")
}

/// A running store thread.
pub struct Store {
    stop: Arc<AtomicBool>,
    /// The status's bell, rung with `stop` (and by workers' nudges): ends
    /// the thread's nap at once.
    wake: Arc<Bell>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    /// Its counters.
    pub metrics: Arc<StoreMetrics>,
    /// Budget state workers check.
    pub status: Arc<StoreStatus>,
}

/// What the store needs to take over one stream.
pub struct StreamSpec {
    /// The stream's id (its lease; in file names and record ids).
    pub stream: u32,
    /// The reading end of the worker's ring.
    pub consumer: Consumer,
    /// Sequence number of the stream's next record.
    pub next_seq: u64,
    /// State shared with the worker.
    pub shared: Arc<StreamShared>,
}

/// One stream as the store thread holds it.
struct Stream {
    consumer: Consumer,
    writer: StreamWriter,
    shared: Arc<StreamShared>,
    /// Highest sequence (exclusive) handed to the syncer.
    requested: u64,
    /// The stream's lease file, when it has one, and the time last marked
    /// on it (`lease::mark`).
    lease: Option<(std::fs::File, u64)>,
}

impl Stream {
    /// Marks the lease with the receive time before which every record of
    /// the stream is written: the oldest one still in memory (pending, or
    /// first in the ring), or else when the pass began.
    fn mark_lease(&mut self, pass_began_ms: u64) {
        let Some((file, marked)) = &mut self.lease else {
            return;
        };
        let in_ring = self
            .consumer
            .peek()
            .and_then(|rec| rec.get(8..RING_PREFIX))
            .and_then(|ts| ts.try_into().ok())
            .map(u64::from_le_bytes);
        let through = [self.writer.pending_min_ts(), in_ring]
            .into_iter()
            .flatten()
            .fold(pass_began_ms, u64::min);
        // A failure leaves the old mark, which is only ever older: the
        // shipper's watermark waits longer.
        if through != *marked && lease::mark(file, through).is_ok() {
            *marked = through;
        }
    }
}

/// An fdatasync for the syncer: once `file` is synced, every record of
/// `stream` below `through` is durable.
struct SyncJob {
    stream: usize,
    file: Arc<std::fs::File>,
    through: u64,
}

/// The syncer thread: fdatasyncs what the store asks, coalescing queued
/// requests per stream (group commit), and publishes durable sequences,
/// until an fdatasync fails (module header).
fn syncer(
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

/// Held by the store's threads: one that ends by a panic leaves new events
/// refused for good (and, the syncer, nothing called durable again), where
/// they would otherwise fill the rings, or wait on syncs, unseen. The store
/// thread's ends its scheduling class however it ends (`sched::Class::end`).
struct Watch {
    status: Arc<StoreStatus>,
    /// The syncer's: what it was syncing may or may not be on disk.
    syncer: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.syncer {
            self.status.class.end();
        }
        if std::thread::panicking() {
            tracing::error!(
                thread = if self.syncer { "sync" } else { "store" },
                "a store thread ended by a panic: refusing new events until trackplane is restarted"
            );
            if self.syncer {
                self.status.sync_failed.store(true, Ordering::Release);
            }
            self.status.failing.store(true, Ordering::Relaxed);
        }
    }
}

/// The name of an open file, for a log line (read back from the kernel
/// only then, so that a sync job carries none).
fn file_name(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap_or_default()
}

impl Store {
    /// Starts the store for `specs`, each stream with a new open segment.
    pub fn start(
        data_dir: &Path,
        node: &str,
        cfg: &StorageConfig,
        specs: Vec<StreamSpec>,
        status: Arc<StoreStatus>,
    ) -> std::io::Result<Store> {
        Store::start_with(
            data_dir,
            node,
            cfg,
            specs,
            status,
            MAX_NAP,
            std::fs::File::sync_data,
        )
    }

    /// `start`, with naps of at most `max_nap` and segments fdatasync'ed
    /// by `sync_file`.
    fn start_with(
        data_dir: &Path,
        node: &str,
        cfg: &StorageConfig,
        specs: Vec<StreamSpec>,
        status: Arc<StoreStatus>,
        max_nap: Duration,
        sync_file: SyncFile,
    ) -> std::io::Result<Store> {
        let dir = segments_dir(data_dir);
        std::fs::create_dir_all(&dir)?;
        let wcfg = WriterConfig {
            block_max_bytes: cfg.block_max_bytes,
            segment_max_bytes: cfg.segment_max_bytes,
            segment_max_age: Duration::from_secs(cfg.segment_max_age_s),
            zstd_level: cfg.zstd_level,
        };
        let mut streams = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut writer = StreamWriter::create(&dir, spec.stream, node, spec.next_seq, wcfg)?;
            writer.sync_with(sync_file);
            spec.shared
                .durable_seq
                .store(spec.next_seq, Ordering::Release);
            // Held by the server for this stream; absent in a bare store.
            let lease = std::fs::OpenOptions::new()
                .write(true)
                .open(lease::path(data_dir, spec.stream))
                .ok()
                .map(|file| (file, 0));
            streams.push(Stream {
                consumer: spec.consumer,
                writer,
                shared: spec.shared,
                requested: spec.next_seq,
                lease,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        // The bell workers ring through the status is the one this store
        // waits on, even if the status served a store before.
        let wake = match status.bell.get() {
            Some(bell) => bell.clone(),
            None => {
                let bell = Arc::new(Bell::new()?);
                status.bell.get_or_init(|| bell).clone()
            }
        };
        let metrics = Arc::new(StoreMetrics::default());
        let ctx = Ctx {
            dir,
            cfg: cfg.clone(),
            stop: stop.clone(),
            wake: wake.clone(),
            max_nap,
            sync_file,
            metrics: metrics.clone(),
            status: status.clone(),
        };
        let syncer = ctx.start_syncer(&streams)?;
        let thread = std::thread::Builder::new()
            .name("trackplane-store".into())
            .spawn(move || {
                let _watch = Watch {
                    status: ctx.status.clone(),
                    syncer: false,
                };
                ctx.run(streams, syncer)
            })?;
        Ok(Store {
            stop,
            wake,
            thread: Some(thread),
            metrics,
            status,
        })
    }

    /// Writes everything drained, syncs, seals and stops. Call after every
    /// producer has stopped.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Release);
        self.wake.ring();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("store thread panicked")),
            None => Ok(()),
        }
    }
}

/// Calls every record of a stream below `through` durable, unless an
/// fdatasync ever failed (module header); whether it did.
fn confirm(status: &StoreStatus, shared: &StreamShared, through: u64) -> bool {
    let trusted = !status.sync_failed.load(Ordering::Acquire);
    if trusted {
        shared.durable_seq.fetch_max(through, Ordering::AcqRel);
    }
    trusted
}

/// Seals a stream's segment when it is due (by size or age) and opens the
/// next one. Sealing syncs it, so everything in it is durable.
fn rotate_if_due(
    writer: &mut StreamWriter,
    shared: &StreamShared,
    requested: &mut u64,
    metrics: &StoreMetrics,
    status: &StoreStatus,
) -> std::io::Result<()> {
    if writer.should_rotate() {
        if let Err(e) = writer.rotate() {
            if writer.sync_failed() {
                status.fail_sync(writer.path(), &e);
            }
            return Err(e);
        }
        metrics.segments_sealed.fetch_add(1, Ordering::Relaxed);
        // Everything in the sealed segment is synced; records still
        // pending (a rotation tried again) are not.
        let sealed_through = writer.next_seq() - u64::from(writer.pending());
        confirm(status, shared, sealed_through);
        *requested = (*requested).max(sealed_through);
    }
    Ok(())
}

/// The syncer thread and its queue.
struct Syncer {
    tx: std::sync::mpsc::SyncSender<SyncJob>,
    thread: JoinHandle<()>,
}

struct Ctx {
    dir: PathBuf,
    cfg: StorageConfig,
    stop: Arc<AtomicBool>,
    wake: Arc<Bell>,
    /// `MAX_NAP` but in tests.
    max_nap: Duration,
    /// `File::sync_data` but in tests.
    sync_file: SyncFile,
    metrics: Arc<StoreMetrics>,
    status: Arc<StoreStatus>,
}

/// Writes the block being built, in pieces with a breath between them only
/// when a breath would yield: pieces cost zstd time and ratio (see
/// `COMPRESS_PIECE`), and an idle-class pass, or one running through a
/// backlog, never yields. (A pass lifted mid-block finishes that block
/// whole: about 250 µs at most.)
fn write_block(writer: &mut StreamWriter, class: &Class) -> std::io::Result<Option<BlockStats>> {
    if class.breathes() {
        writer.write_block_pausing(&mut || class.breathe(false))
    } else {
        writer.write_block()
    }
}

/// How often a store whose writes fail tries them again.
const RETRY_WRITES: Duration = Duration::from_secs(1);

/// Failed passes between two log lines about them (one a minute).
const RETRY_LOG: u64 = 60;

/// Keeps the first error of a pass.
fn note(failed: &mut Option<std::io::Error>, e: std::io::Error) {
    failed.get_or_insert(e);
}

/// When the store's timed duties come due, for the length of its nap.
struct Timers {
    last_flush: Instant,
    flush_every: Duration,
    last_sync: Instant,
    sync_every: Duration,
}

/// The longest nap: budget checks and segment ages are looked at between
/// naps.
const MAX_NAP: Duration = Duration::from_secs(1);

impl Timers {
    /// How long the store may nap at `now` (the caller caps it at
    /// `MAX_NAP`): until its next flush is due (so records reach their
    /// segment within the flush interval), or, after a pass that found
    /// nothing and left no block waiting, for the whole interval (an event
    /// arriving meanwhile is then flushed at the next pass); sooner if a
    /// sync is due. Each pass costs the workers' core context switches, so
    /// one pass per flush interval: with naps of a quarter of it, the
    /// store cost 0.735 and 0.744 µs per request at 20k requests/s
    /// unbatched, 0.579 and 0.567 with naps until the flush
    /// (`bench/threads.sh`, bench/results/store-nap-20261130-1520.md).
    fn nap(&self, now: Instant, quiet: bool) -> Duration {
        let flush = if quiet {
            now + self.flush_every
        } else {
            self.last_flush + self.flush_every
        };
        let due = flush.min(self.last_sync + self.sync_every);
        due.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }
}

/// Whether a worker waits for a sync the store has not asked for yet.
fn sync_due(streams: &[Stream], wanted: &[u64]) -> bool {
    streams.iter().zip(wanted).any(|(s, &w)| w > s.requested)
}

impl Ctx {
    /// Starts the syncer: fdatasync runs on its own thread, so a slow disk
    /// stalls durability, never the writing of blocks (and so never the
    /// flush window). Started before the store's thread, so that a failure
    /// to start it fails the start instead of ending the store unseen.
    fn start_syncer(&self, streams: &[Stream]) -> std::io::Result<Syncer> {
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

    fn run(self, mut streams: Vec<Stream>, syncer: Syncer) -> std::io::Result<()> {
        let flush_every = Duration::from_millis(self.cfg.flush_interval_ms);
        let sync_every = Duration::from_millis(self.cfg.sync_interval_ms);
        let Syncer {
            tx: sync_tx,
            thread: syncer,
        } = syncer;
        let mut last_flush = Instant::now();
        let mut last_sync = Instant::now();
        let mut last_budget = Instant::now() - Duration::from_secs(10);
        let mut wanted: Vec<u64> = Vec::with_capacity(streams.len());
        loop {
            let began_ms = crate::clock::unix_ms();
            let stopping = self.stop.load(Ordering::Acquire);
            // While writes fail, workers refuse new events and nothing more
            // is drained (what was drained stays pending, in memory, until
            // a write takes it); each pass tries the writes again. At a stop
            // the rings are drained all the same, for one last try.
            let failing = self.status.failing.load(Ordering::Relaxed);
            let mut failed: Option<std::io::Error> = None;
            // Read what workers wait for before draining, so that every
            // record they wait on is drained in this round.
            wanted.clear();
            wanted.extend(
                streams
                    .iter()
                    .map(|s| s.shared.sync_wanted.load(Ordering::Acquire)),
            );
            // The pass runs in the idle class, and breathes, only while
            // nothing waits on it (a worker waiting for a sync would wait
            // for whatever else runs) and no ring is past a quarter, where
            // a worker lifts it.
            let waited_on = sync_due(&streams, &wanted);
            let calm = !streams.iter().any(|s| s.consumer.past_quarter());
            let sync_types = self.status.sync_types.load(Ordering::Relaxed);
            self.status.class.start_pass(!calm || waited_on);
            self.status.class.settle(calm && !waited_on && !sync_types);
            let mut drained = 0;
            if !failing || stopping {
                for s in streams.iter_mut() {
                    match self.drain(s) {
                        Ok(n) => drained += n,
                        Err(e) => note(&mut failed, e),
                    }
                }
            }
            let now = Instant::now();
            let sync_due = sync_due(&streams, &wanted);
            if stopping || sync_due || failing || now.duration_since(last_flush) >= flush_every {
                for s in streams.iter_mut() {
                    match write_block(&mut s.writer, &self.status.class) {
                        Ok(Some(stats)) => self.metrics.block(&stats),
                        Ok(None) => {}
                        Err(e) => note(&mut failed, e),
                    }
                }
                last_flush = now;
            }
            if sync_due || now.duration_since(last_sync) >= sync_every {
                for (i, s) in streams.iter_mut().enumerate() {
                    if !s.writer.has_unsynced() {
                        continue;
                    }
                    let (file, through) = s.writer.sync_point();
                    // A full queue means the syncer is behind; this round's
                    // request is folded into the next one.
                    if sync_tx
                        .try_send(SyncJob {
                            stream: i,
                            file,
                            through,
                        })
                        .is_ok()
                    {
                        s.requested = through;
                    } else {
                        s.writer.mark_unsynced();
                    }
                }
                last_sync = now;
            }
            for s in streams.iter_mut() {
                if let Err(e) = rotate_if_due(
                    &mut s.writer,
                    &s.shared,
                    &mut s.requested,
                    &self.metrics,
                    &self.status,
                ) {
                    note(&mut failed, e);
                }
            }
            if now.duration_since(last_budget) >= Duration::from_secs(1) {
                if let Err(e) = self.enforce_budget(&streams) {
                    note(&mut failed, e);
                }
                last_budget = now;
            }
            self.settle_failure(failed);
            for s in streams.iter_mut() {
                s.mark_lease(began_ms);
            }
            if stopping {
                drop(sync_tx);
                let _ = syncer.join();
                return self.close(streams);
            }
            // Nap between passes, busy or not: this thread shares the
            // workers' cores, and every pass costs them context switches
            // and this thread its system calls. Short naps while a `sync`
            // event type exists (a reload can add one); none while a worker
            // waits for a sync.
            if self.status.failing.load(Ordering::Relaxed) {
                // Workers refuse events meanwhile, so none nudges; a stop
                // rings, and its flag is read at the next pass.
                if self.wake.nap(RETRY_WRITES) {
                    self.wake.clear();
                }
            } else if !sync_due {
                let quiet = drained == 0 && streams.iter().all(|s| s.writer.pending() == 0);
                let nap = if sync_types {
                    Duration::from_micros(200)
                } else {
                    let timers = Timers {
                        last_flush,
                        flush_every,
                        last_sync,
                        sync_every,
                    };
                    timers.nap(Instant::now(), quiet).min(self.max_nap)
                };
                self.nap(&streams, nap);
            }
        }
    }

    /// Writes what is pending and seals every stream's segment, at the
    /// stop. A stream whose writes still fail loses what it held in memory,
    /// pending or left in its ring (said in the log, with how many); the
    /// others are sealed all the same, and the first error is returned.
    fn close(&self, streams: Vec<Stream>) -> std::io::Result<()> {
        let mut failed = None;
        for mut s in streams {
            // A write that failed in the last pass left the rest of the
            // ring undrained: one more try takes it.
            let last = self
                .drain(&mut s)
                .and_then(|_| s.writer.write_block().map(drop));
            if let Err(e) = last {
                let left = s.consumer.drain(|_| {});
                tracing::error!(
                    segment = %s.writer.path().display(),
                    records = u64::from(s.writer.pending()) + left as u64,
                    error = %e,
                    "records lost: the stop's last segment write failed"
                );
                note(&mut failed, e);
                continue;
            }
            let next = s.writer.next_seq();
            match s.writer.close() {
                Ok(()) => {
                    confirm(&self.status, &s.shared, next);
                    self.metrics.segments_sealed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => note(&mut failed, e),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Keeps `StoreStatus::failing` to whether this pass failed, counting
    /// and logging each failed pass's first error (once when writes start
    /// failing, then every `RETRY_LOG` passes) and the recovery.
    fn settle_failure(&self, failed: Option<std::io::Error>) {
        let was = self.status.failing.load(Ordering::Relaxed);
        match failed {
            Some(e) => {
                let n = self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                if !was || n.is_multiple_of(RETRY_LOG) {
                    tracing::error!(
                        dir = %self.dir.display(),
                        error = %e,
                        "segment write failed: refusing new events, retrying every second"
                    );
                }
                self.status.failing.store(true, Ordering::Relaxed);
            }
            // After a failed fdatasync, nothing but a restart ends the
            // refusal (module header).
            None if was && !self.status.sync_failed.load(Ordering::Acquire) => {
                tracing::warn!(dir = %self.dir.display(), "segment writes work again: accepting events");
                self.status.failing.store(false, Ordering::Relaxed);
            }
            None => {}
        }
    }

    /// Naps for `nap` in the normal class (see `sched`), unless a ring is
    /// past a quarter; cut short when a worker's ring gets there
    /// (`StoreStatus::nudge`) or `finish` rings.
    fn nap(&self, streams: &[Stream], nap: Duration) {
        let napping = &self.status.napping;
        napping.store(true, Ordering::Relaxed);
        // Pairs with the fence in `nudge`.
        fence(Ordering::SeqCst);
        if streams.iter().any(|s| s.consumer.past_quarter()) {
            napping.store(false, Ordering::Relaxed);
            return;
        }
        self.status.class.rest();
        let rung = self.wake.nap(nap);
        napping.store(false, Ordering::Relaxed);
        // A nudge's ring, left readable, would end every later nap at
        // once; a stop's is not needed past here (the next pass reads the
        // flag it was rung with). A ring that lands after a nap ended on
        // time ends the next one early, and is cleared then.
        if rung {
            self.wake.clear();
        }
    }

    fn drain(&self, s: &mut Stream) -> std::io::Result<usize> {
        let mut result = Ok(());
        if self.cfg.discard_for_benchmarks {
            // Nothing is stored, so nothing can become more durable: let
            // whoever waits go, and ask for nothing.
            let wanted = s.shared.sync_wanted.load(Ordering::Acquire);
            s.shared.durable_seq.fetch_max(wanted, Ordering::AcqRel);
            s.requested = s.requested.max(wanted);
            return Ok(s.consumer.drain(|_| {}));
        }
        let Stream {
            consumer,
            writer,
            shared,
            requested,
            ..
        } = s;
        let (metrics, status) = (&self.metrics, &*self.status);
        let class = &status.class;
        // Records the segment format cannot hold (none the workers encode).
        let mut unstorable = 0u64;
        let n = consumer.drain_pausing(
            PASS_CHUNK,
            |rec| {
                // After a failed write the rest stays in the ring, where
                // nothing is lost, until a write works again (module
                // header); the block that failed stays pending.
                if result.is_err() {
                    return ControlFlow::Break(());
                }
                if rec.len() < RING_PREFIX {
                    return ControlFlow::Continue(());
                }
                let seq = u64::from_le_bytes(rec[0..8].try_into().unwrap_or_default());
                let ts = u64::from_le_bytes(rec[8..16].try_into().unwrap_or_default());
                if let Err(e) = writer.append(seq, ts, &rec[RING_PREFIX..]) {
                    unstorable += 1;
                    tracing::error!(segment = %writer.path().display(), seq, error = %e, "record not stored");
                    return ControlFlow::Continue(());
                }
                if writer.block_full() {
                    // A segment ends at its size however much one pass drains.
                    result = write_block(writer, class).and_then(|stats| {
                        if let Some(stats) = stats {
                            metrics.block(&stats);
                        }
                        rotate_if_due(writer, shared, requested, metrics, status)
                    });
                }
                ControlFlow::Continue(())
            },
            |backlog| class.breathe(backlog),
        );
        if unstorable > 0 {
            metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
        result.map(|()| n)
    }

    /// Measures the segments directory; at the budget either refuses new
    /// events or deletes the oldest sealed segments, as configured. Without
    /// a budget nothing is measured (the steady state allocates nothing).
    fn enforce_budget(&self, streams: &[Stream]) -> std::io::Result<()> {
        if self.cfg.disk_budget_bytes == 0 {
            return Ok(());
        }
        let segments = crate::segment::list(&self.dir)?;
        let mut sizes: Vec<(u64, PathBuf, bool)> = Vec::with_capacity(segments.len());
        for seg in segments {
            if let Ok(meta) = std::fs::metadata(&seg.path) {
                sizes.push((meta.len(), seg.path, seg.open));
            }
        }
        let mut total: u64 = sizes.iter().map(|(len, _, _)| len).sum();
        self.metrics.segment_bytes.store(total, Ordering::Relaxed);
        let budget = self.cfg.disk_budget_bytes;
        if budget == 0 {
            return Ok(());
        }
        if total >= budget && self.cfg.full_policy == FullPolicy::DropOldest {
            // Oldest first: by creation order, approximated by mtime.
            let mut sealed: Vec<(std::time::SystemTime, u64, PathBuf)> = sizes
                .iter()
                .filter(|(_, _, open)| !open)
                .filter_map(|(len, p, _)| {
                    Some((std::fs::metadata(p).ok()?.modified().ok()?, *len, p.clone()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of one stream, 0, draining `consumer`.
    fn start_one(data_dir: &Path, cfg: &StorageConfig, consumer: Consumer) -> Store {
        start_napping(data_dir, cfg, consumer, Arc::default(), MAX_NAP)
    }

    /// `start_one` with `status`, napping at most `max_nap`.
    fn start_napping(
        data_dir: &Path,
        cfg: &StorageConfig,
        consumer: Consumer,
        status: Arc<StoreStatus>,
        max_nap: Duration,
    ) -> Store {
        start_syncing(
            data_dir,
            cfg,
            consumer,
            status,
            max_nap,
            Arc::default(),
            std::fs::File::sync_data,
        )
    }

    /// `start_napping` of the stream `shared`, whose segments `sync_file`
    /// fdatasyncs.
    fn start_syncing(
        data_dir: &Path,
        cfg: &StorageConfig,
        consumer: Consumer,
        status: Arc<StoreStatus>,
        max_nap: Duration,
        shared: Arc<StreamShared>,
        sync_file: SyncFile,
    ) -> Store {
        let spec = StreamSpec {
            stream: 0,
            consumer,
            next_seq: 0,
            shared,
        };
        Store::start_with(data_dir, "t", cfg, vec![spec], status, max_nap, sync_file).unwrap()
    }

    /// Pushes records `seqs` of stream 0.
    fn push(producer: &mut crate::ring::Producer, seqs: std::ops::Range<u64>) {
        let mut rec = Vec::new();
        for seq in seqs {
            rec.clear();
            rec.extend_from_slice(&seq.to_le_bytes());
            rec.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
            rec.extend_from_slice(format!(r#"{{"id":"t-0-{seq}"}}"#).as_bytes());
            producer.push(&rec).unwrap();
        }
    }

    /// Waits up to 10 s for `done`.
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < until, "10 s without {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The records of every segment under `data_dir`, sealed or open.
    fn stored(data_dir: &Path) -> Vec<u64> {
        let mut seqs = Vec::new();
        for seg in crate::segment::list(&segments_dir(data_dir)).unwrap() {
            let mut reader = crate::segment::SegmentReader::open(&seg.path).unwrap();
            while let Some(block) = reader.next_block().unwrap() {
                seqs.extend(block.records().map(|(seq, _)| seq));
            }
        }
        seqs
    }

    /// An fdatasync as a failing disk gives it: EIO, once, for whichever
    /// sync comes first; later ones succeed (what Linux does, having
    /// reported the error). Each test has its own `N`, so its own first.
    fn fails_first_sync<const N: usize>(file: &std::fs::File) -> std::io::Result<()> {
        static FAILED: [AtomicBool; 2] = [const { AtomicBool::new(false) }; 2];
        if FAILED[N].swap(true, Ordering::SeqCst) {
            file.sync_data()
        } else {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        }
    }

    /// The storage section of `toml`.
    fn storage(toml: &str) -> StorageConfig {
        crate::config::Config::from_toml_str(toml, "test")
            .unwrap()
            .storage
    }

    /// On a core its producer keeps busy, the store still keeps up: a pass
    /// that meets a backlog runs through instead of yielding the core back
    /// every few records (which gave it a few records per scheduler slice
    /// and, saturated, a full ring).
    #[test]
    fn the_store_keeps_up_on_a_core_its_producer_keeps_busy() {
        let refused = std::thread::spawn(|| {
            // The store's threads inherit this thread's core.
            if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.first().copied()) {
                core_affinity::set_for_current(core);
            }
            let dir = tempfile::tempdir().unwrap();
            let cfg = storage("");
            let (mut producer, consumer) = crate::ring::ring(1 << 20);
            let store = start_one(dir.path(), &cfg, consumer);
            let mut rec = Vec::new();
            let (mut seq, mut refused) = (0u64, 0u64);
            let end = Instant::now() + Duration::from_secs(2);
            while Instant::now() < end {
                // A request's worth of work, then its record.
                let work = Instant::now() + Duration::from_micros(20);
                while Instant::now() < work {
                    std::hint::spin_loop();
                }
                rec.clear();
                rec.extend_from_slice(&seq.to_le_bytes());
                rec.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
                rec.extend_from_slice(
                    format!(r#"{{"id":"t-0-{seq}","pad":"{:0>200}"}}"#, seq).as_bytes(),
                );
                match producer.push(&rec) {
                    Ok(()) => seq += 1,
                    Err(_) => refused += 1,
                }
            }
            drop(producer);
            store.finish().unwrap();
            eprintln!("{seq} records stored, {refused} refused");
            refused
        })
        .join()
        .unwrap();
        assert_eq!(refused, 0, "a full ring refused records");
    }

    #[test]
    fn the_store_naps_until_its_next_flush_or_sync_is_due() {
        let ms = Duration::from_millis;
        let now = Instant::now();
        let timers = Timers {
            last_flush: now - ms(20),
            flush_every: ms(50),
            last_sync: now - ms(100),
            sync_every: ms(1000),
        };
        assert_eq!(timers.nap(now, false), ms(30), "until the flush is due");
        assert_eq!(timers.nap(now, true), ms(50), "quiet: a whole interval");
        let sync_first = Timers {
            last_sync: now - ms(990),
            ..timers
        };
        assert_eq!(sync_first.nap(now, false), ms(10), "until the sync is due");
        let late = Timers {
            last_flush: now - ms(80),
            ..timers
        };
        assert_eq!(late.nap(now, false), ms(1), "overdue: a short nap");
    }

    /// A worker whose ring fills past a quarter ends the store's nap: the
    /// store naps until its next flush is due (here a minute away), which
    /// a ring can take less to fill.
    #[test]
    fn a_ring_past_a_quarter_ends_the_stores_nap() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = storage("[storage]\nflush_interval_ms = 60000\nsync_interval_ms = 60000\n");
        let (mut producer, consumer) = crate::ring::ring(1 << 16);
        let status = Arc::new(StoreStatus::default());
        let nap = Duration::from_secs(60);
        let store = start_napping(dir.path(), &cfg, consumer, status.clone(), nap);
        // Its first pass finds nothing; then it naps.
        let until = Instant::now() + Duration::from_secs(10);
        while !status.napping.load(Ordering::Relaxed) {
            assert!(Instant::now() < until, "the store never napped");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut rec = Vec::new();
        let mut seq = 0u64;
        while !producer.past_quarter() {
            rec.clear();
            rec.extend_from_slice(&seq.to_le_bytes());
            rec.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
            rec.extend_from_slice(format!(r#"{{"id":"t-0-{seq}"}}"#).as_bytes());
            producer.push(&rec).unwrap();
            seq += 1;
        }
        status.nudge();
        let until = Instant::now() + Duration::from_secs(10);
        while producer.free_bytes() < producer.capacity() {
            assert!(
                Instant::now() < until,
                "the ring was not drained 10 s after the nudge, with {} bytes free",
                producer.free_bytes()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(producer);
        store.finish().unwrap();
    }

    /// A pass that drains far more than a segment holds still ends each
    /// segment at its size, not at the end of the pass.
    #[test]
    fn a_long_pass_still_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = storage("[storage]\nblock_max_bytes = 1024\nsegment_max_bytes = 4096\n");
        let (mut producer, consumer) = crate::ring::ring(1 << 20);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rec = Vec::new();
        for seq in 0..2000u64 {
            // Poorly compressible, so that the records fill many segments.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            rec.clear();
            rec.extend_from_slice(&seq.to_le_bytes());
            rec.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
            rec.extend_from_slice(format!(r#"{{"id":"t-0-{seq}","v":"{x:016x}"}}"#).as_bytes());
            producer.push(&rec).unwrap();
        }
        let store = start_one(dir.path(), &cfg, consumer);
        store.finish().unwrap();
        let segments = crate::segment::list(&segments_dir(dir.path())).unwrap();
        assert!(segments.len() >= 8, "{} segments", segments.len());
        for seg in &segments {
            let len = std::fs::metadata(&seg.path).unwrap().len();
            // At most one block past the size.
            assert!(len < 4096 + 2048, "{}: {len} bytes", seg.path.display());
        }
        let mut next = 0;
        for seg in &segments {
            let mut reader = crate::segment::SegmentReader::open(&seg.path).unwrap();
            while let Some(block) = reader.next_block().unwrap() {
                for (seq, _) in block.records() {
                    assert_eq!(seq, next);
                    next += 1;
                }
            }
        }
        assert_eq!(next, 2000, "every record, in order");
    }

    /// A store of one stream with `before` records already in its ring,
    /// whose segments `sync_file` fdatasyncs.
    struct Faulty {
        dir: tempfile::TempDir,
        producer: crate::ring::Producer,
        status: Arc<StoreStatus>,
        shared: Arc<StreamShared>,
        store: Store,
    }

    impl Faulty {
        fn start(toml: &str, before: std::ops::Range<u64>, sync_file: SyncFile) -> Faulty {
            let dir = tempfile::tempdir().unwrap();
            let (mut producer, consumer) = crate::ring::ring(1 << 20);
            push(&mut producer, before);
            let (status, shared) = (
                Arc::<StoreStatus>::default(),
                Arc::<StreamShared>::default(),
            );
            let store = start_syncing(
                dir.path(),
                &storage(toml),
                consumer,
                status.clone(),
                Duration::from_millis(10),
                shared.clone(),
                sync_file,
            );
            Faulty {
                dir,
                producer,
                status,
                shared,
                store,
            }
        }

        /// Stops the store; checks that nothing was called durable and
        /// that the segments hold records `0..n`.
        fn finish_with(self, n: u64) {
            drop(self.producer);
            self.store.finish().unwrap();
            assert!(
                self.status.class.ended(),
                "the store thread ended its class"
            );
            let durable = self.shared.durable_seq.load(Ordering::Acquire);
            assert_eq!(durable, 0, "nothing called durable");
            assert_eq!(stored(self.dir.path()), (0..n).collect::<Vec<_>>());
        }
    }

    /// A failed fdatasync of the syncer's: the records it covered are not
    /// called durable, then or after a later fdatasync succeeds (which
    /// would say nothing about them); new events are refused from then on,
    /// and what was drained is still written at the stop.
    #[test]
    fn after_a_failed_fdatasync_nothing_is_called_durable() {
        let mut f = Faulty::start(
            "[storage]\nflush_interval_ms = 5\n",
            0..10,
            fails_first_sync::<0>,
        );
        f.shared.want_sync(9);
        wait_for("a failed sync", || {
            f.status.sync_failed.load(Ordering::Acquire)
        });
        assert!(f.status.refuses(), "new events are refused");
        assert_eq!(f.store.metrics.errors.load(Ordering::Relaxed), 1);
        // Records accepted before the refusal showed still reach the file,
        // and a stop syncs and seals it: that fdatasync succeeds.
        push(&mut f.producer, 10..20);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            f.status.failing.load(Ordering::Relaxed),
            "still refusing after passes"
        );
        f.finish_with(20);
    }

    /// A rotation whose seal fails to fdatasync is tried again and seals
    /// the segment; but what it holds is not called durable.
    #[test]
    fn a_seal_that_failed_to_sync_confirms_nothing() {
        let f = Faulty::start(
            "[storage]\nflush_interval_ms = 5\nsync_interval_ms = 60000\n\
             block_max_bytes = 1024\nsegment_max_bytes = 4096\n",
            0..2000,
            fails_first_sync::<1>,
        );
        wait_for("a failed seal", || {
            f.status.sync_failed.load(Ordering::Acquire)
        });
        let sealed = || f.store.metrics.segments_sealed.load(Ordering::Relaxed) > 0;
        wait_for("a sealed segment", sealed);
        assert!(f.status.refuses(), "new events are refused");
        f.finish_with(2000);
    }

    /// A syncer that ends by a panic leaves new events refused and nothing
    /// called durable, where the store used to keep accepting events whose
    /// syncs nobody ran.
    #[test]
    fn a_syncer_that_panics_leaves_new_events_refused() {
        fn panics_first(file: &std::fs::File) -> std::io::Result<()> {
            static PANICKED: AtomicBool = AtomicBool::new(false);
            if PANICKED.swap(true, Ordering::SeqCst) {
                file.sync_data()
            } else {
                panic!("a sync that panics, as the test asks")
            }
        }
        let f = Faulty::start("[storage]\nflush_interval_ms = 5\n", 0..10, panics_first);
        f.shared.want_sync(9);
        wait_for("refusal", || f.status.refuses());
        assert!(f.status.sync_failed.load(Ordering::Acquire));
        f.finish_with(10);
    }
}
