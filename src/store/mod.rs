//! The store: one thread that drains every worker's ring of blocks (each
//! worker packs its own records into zstd blocks while idle, `pack`) and
//! appends them to each stream's open segment, rotates segments and
//! enforces the disk budget; and a syncer thread that fdatasyncs (per
//! interval, or at once for `sync` event types: group commit) while the
//! store keeps writing. Workers never wait for either except, by choice,
//! for `sync` events.
//!
//! # Layout
//! - `pack`: a worker's records into blocks, in its idle moments
//! - `status`: what workers and the store share (durable sequences, refusal)
//! - `syncer`: the fdatasync thread, group commit
//! - `budget`: the disk budget and its policies
//! - `lease`: stream leases, and how far a live server has written
//! - `metrics`: the store's counters
//!
//! # Invariants
//! - A worker's ring record = `seq: u64 LE`, `ts_ms: u64 LE`, then the
//!   record bytes; the store's ring holds whole framed blocks (header and
//!   payload, as written); a stream's sequence numbers arrive
//!   consecutively in both.
//! - `durable_seq` of a stream only grows, and every record below it is in a
//!   block that was written and fdatasync'ed.
//! - On stop, every record drained is written, synced and its segment
//!   sealed before `finish` returns.
//! - A failed write (a full disk, a file-size limit, an I/O error) loses
//!   nothing: the writer cuts off any part of a block it wrote, the block
//!   and the rest stay in the ring (a drain stops at the failure), and `StoreStatus::failing` makes workers refuse new events
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

mod budget;
pub mod lease;
pub mod metrics;
pub mod pack;
mod status;
mod syncer;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bell::Bell;
use crate::config::StorageConfig;
use crate::ring::Consumer;
use crate::sched::PASS_CHUNK;
use crate::segment::format::BlockHeader;
use crate::segment::writer::SyncFile;
use crate::segment::{StreamWriter, WriterConfig};
pub use metrics::StoreMetrics;
use status::{confirm, Watch};
pub use status::{StoreStatus, StreamShared};
use syncer::{SyncJob, Syncer};

/// Bytes before each record in a ring: sequence and event time.
pub const RING_PREFIX: usize = 16;

/// The segments directory under a data directory.
pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("segments")
}

/// What tests change about a store: its longest nap, and how its segments
/// are fdatasync'ed.
struct Knobs {
    max_nap: Duration,
    sync_file: SyncFile,
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
    /// The reading end of the ring of blocks the worker packs (`pack`).
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
    /// the stream is written: the oldest one still in memory (with its
    /// worker, or first in the ring), or else when the pass began.
    fn mark_lease(&mut self, pass_began_ms: u64) {
        let Some((file, marked)) = &mut self.lease else {
            return;
        };
        // Read before the ring: a block the packer hands over is in the
        // ring before the packer moves this past it.
        let unpacked = self.shared.unpacked_ts.load(Ordering::Acquire);
        let in_ring = self
            .consumer
            .peek()
            .and_then(|block| BlockHeader::decode(block).ok())
            .map(|h| h.min_ts);
        let through = in_ring.unwrap_or(u64::MAX).min(unpacked).min(pass_began_ms);
        // A failure leaves the old mark, which is only ever older: the
        // shipper's watermark waits longer.
        if through != *marked && lease::mark(file, through).is_ok() {
            *marked = through;
        }
    }
}

impl Store {
    /// Starts the store for `specs`, each stream with a new open segment,
    /// counting into `metrics` (which the workers' packers count into too).
    pub fn start(
        data_dir: &Path,
        node: &str,
        cfg: &StorageConfig,
        specs: Vec<StreamSpec>,
        status: Arc<StoreStatus>,
        metrics: Arc<StoreMetrics>,
    ) -> std::io::Result<Store> {
        Store::start_with(
            data_dir,
            node,
            cfg,
            specs,
            status,
            metrics,
            Knobs {
                max_nap: MAX_NAP,
                sync_file: std::fs::File::sync_data,
            },
        )
    }

    /// `start`, with what tests change.
    fn start_with(
        data_dir: &Path,
        node: &str,
        cfg: &StorageConfig,
        specs: Vec<StreamSpec>,
        status: Arc<StoreStatus>,
        metrics: Arc<StoreMetrics>,
        Knobs { max_nap, sync_file }: Knobs,
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
        let sealed_through = writer.written_through();
        confirm(status, shared, sealed_through);
        *requested = (*requested).max(sealed_through);
    }
    Ok(())
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
    /// `MAX_NAP`; a block handed over ends the nap): until its next pass
    /// on the flush interval is due (leases marked, segment ages looked
    /// at), or, after a pass that found nothing, for the whole interval;
    /// sooner if a sync is due. Each pass costs the workers' core context
    /// switches, so one pass per flush interval: with naps of a quarter of
    /// it, the store (then compressing) cost 0.735 and 0.744 µs per
    /// request at 20k requests/s unbatched, 0.579 and 0.567 with naps
    /// until the flush (`bench/threads.sh`,
    /// bench/results/store-nap-20261130-1520.md).
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
            // While writes fail, workers refuse new events, and each pass
            // tries the writes again: a block leaves its ring only once
            // written, so a drain that fails leaves it first in line.
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
            for s in streams.iter_mut() {
                match self.drain(s) {
                    Ok(n) => drained += n,
                    Err(e) => note(&mut failed, e),
                }
            }
            let now = Instant::now();
            let sync_due = sync_due(&streams, &wanted);
            // Blocks are written as they come (each ends the nap); the
            // flush interval paces the passes that only mark leases and
            // look at segments' ages.
            if stopping || sync_due || failing || now.duration_since(last_flush) >= flush_every {
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
                let quiet = drained == 0;
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

    /// Writes the blocks left and seals every stream's segment, at the
    /// stop. A stream whose writes still fail loses the blocks left in its
    /// ring (said in the log, with how many records); the others are
    /// sealed all the same, and the first error is returned.
    fn close(&self, streams: Vec<Stream>) -> std::io::Result<()> {
        let mut failed = None;
        for mut s in streams {
            // A write that failed in the last pass left the rest of the
            // ring undrained: one more try takes it.
            if let Err(e) = self.drain(&mut s) {
                let mut left = 0;
                s.consumer.drain(|block| {
                    left += BlockHeader::decode(block).map_or(0, |h| u64::from(h.count));
                });
                tracing::error!(
                    segment = %s.writer.path().display(),
                    records = left,
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
        let ends = crate::clock::unix_ms().saturating_add(nap.as_millis() as u64);
        self.status.nap_ends_ms.store(ends, Ordering::Relaxed);
        napping.store(true, Ordering::Release);
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
        let n = consumer.drain_pausing(
            PASS_CHUNK,
            |block| {
                // After a failed write the rest stays in the ring, where
                // nothing is lost, until a write works again (module
                // header); so does the block that failed.
                if result.is_err() {
                    return ControlFlow::Break(());
                }
                match writer.write_framed(block) {
                    Ok(stats) => {
                        metrics.block(&stats);
                        // A segment ends at its size however much one pass
                        // drains.
                        result = rotate_if_due(writer, shared, requested, metrics, status);
                        ControlFlow::Continue(())
                    }
                    Err(e) => {
                        result = Err(e);
                        ControlFlow::Break(())
                    }
                }
            },
            |backlog| class.breathe(backlog),
        );
        result.map(|()| n)
    }
}

#[cfg(test)]
mod tests;
