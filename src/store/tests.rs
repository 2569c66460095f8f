//! The store thread and its syncer against real files: naps, nudges,
//! rotation within a pass, failed fdatasyncs and a panicking syncer. Each
//! store is fed as a worker feeds it: records into a ring, packed into
//! blocks for the store's ring (`pack`).

use super::pack::Packer;
use super::*;
use crate::ring::{Producer, PushError};

/// A worker's side of one stream: its ring and its packer.
struct Feed {
    producer: Producer,
    packer: Packer,
}

impl Feed {
    /// A feed of stream 0 through rings of `bytes`, and the store's end.
    fn new(
        bytes: usize,
        cfg: &StorageConfig,
        shared: Arc<StreamShared>,
        status: Arc<StoreStatus>,
    ) -> (Feed, Consumer) {
        let (producer, records) = crate::ring::ring(bytes);
        let (blocks, consumer) =
            crate::ring::ring(pack::blocks_ring_bytes(bytes, cfg.block_max_bytes));
        let packer = Packer::new(records, blocks, 0, cfg, shared, status, Arc::default()).unwrap();
        (Feed { producer, packer }, consumer)
    }

    /// Pushes one ring record and gives the packer a turn, as an idle
    /// worker does.
    fn push_one(&mut self, rec: &[u8]) -> Result<(), PushError> {
        let pushed = self.producer.push(rec);
        self.packer.turn(false, Instant::now());
        pushed
    }

    /// Pushes records `seqs` of stream 0 and packs them all.
    fn push(&mut self, seqs: std::ops::Range<u64>) {
        let mut rec = Vec::new();
        for seq in seqs {
            rec.clear();
            rec.extend_from_slice(&seq.to_le_bytes());
            rec.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
            rec.extend_from_slice(format!(r#"{{"id":"t-0-{seq}"}}"#).as_bytes());
            self.producer.push(&rec).unwrap();
            if self.producer.past_quarter() {
                assert!(self.packer.finish(), "the store's ring took the blocks");
            }
        }
        assert!(self.packer.finish(), "the store's ring took the blocks");
    }
}

/// A store of one stream, 0, draining `consumer`, with `status`, napping
/// at most `max_nap`.
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
    Store::start_with(
        data_dir,
        "t",
        cfg,
        vec![spec],
        status,
        Arc::default(),
        Knobs { max_nap, sync_file },
    )
    .unwrap()
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
/// and, saturated, a full ring). The producer packs its own blocks
/// between records, as a worker does.
#[test]
fn the_store_keeps_up_on_a_core_its_producer_keeps_busy() {
    let refused = std::thread::spawn(|| {
        // The store's threads inherit this thread's core.
        if let Some(core) = core_affinity::get_core_ids().and_then(|c| c.first().copied()) {
            core_affinity::set_for_current(core);
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = storage("");
        let status = Arc::new(StoreStatus::default());
        let (mut feed, consumer) = Feed::new(1 << 20, &cfg, Arc::default(), status.clone());
        let store = start_napping(dir.path(), &cfg, consumer, status, MAX_NAP);
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
            match feed.push_one(&rec) {
                Ok(()) => seq += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(feed.packer.finish());
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

/// Each block a packer hands over ends the store's nap: the store naps
/// until its next flush is due (here a minute away), and the block's
/// records are to reach their segment within the flush interval.
#[test]
fn a_block_handed_over_ends_the_stores_nap() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = storage("[storage]\nflush_interval_ms = 60000\nsync_interval_ms = 60000\n");
    let status = Arc::new(StoreStatus::default());
    let (mut feed, consumer) = Feed::new(1 << 16, &cfg, Arc::default(), status.clone());
    let nap = Duration::from_secs(60);
    let store = start_napping(dir.path(), &cfg, consumer, status.clone(), nap);
    // Its first pass finds nothing; then it naps.
    let until = Instant::now() + Duration::from_secs(10);
    while !status.napping.load(Ordering::Relaxed) {
        assert!(Instant::now() < until, "the store never napped");
        std::thread::sleep(Duration::from_millis(1));
    }
    feed.push(0..10);
    wait_for("the block written", || {
        store.metrics.records.load(Ordering::Relaxed) == 10
    });
    store.finish().unwrap();
    assert_eq!(stored(dir.path()), (0..10).collect::<Vec<_>>());
}

/// A pass that drains far more than a segment holds still ends each
/// segment at its size, not at the end of the pass.
#[test]
fn a_long_pass_still_rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = storage("[storage]\nblock_max_bytes = 1024\nsegment_max_bytes = 4096\n");
    let status = Arc::new(StoreStatus::default());
    let (mut feed, consumer) = Feed::new(1 << 20, &cfg, Arc::default(), status.clone());
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
        feed.producer.push(&rec).unwrap();
    }
    assert!(feed.packer.finish());
    let store = start_napping(dir.path(), &cfg, consumer, status, MAX_NAP);
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
    feed: Feed,
    status: Arc<StoreStatus>,
    shared: Arc<StreamShared>,
    store: Store,
}

impl Faulty {
    fn start(toml: &str, before: std::ops::Range<u64>, sync_file: SyncFile) -> Faulty {
        let dir = tempfile::tempdir().unwrap();
        let cfg = storage(toml);
        let (status, shared) = (
            Arc::<StoreStatus>::default(),
            Arc::<StreamShared>::default(),
        );
        let (mut feed, consumer) = Feed::new(1 << 20, &cfg, shared.clone(), status.clone());
        feed.push(before);
        let store = start_syncing(
            dir.path(),
            &cfg,
            consumer,
            status.clone(),
            Duration::from_millis(10),
            shared.clone(),
            sync_file,
        );
        Faulty {
            dir,
            feed,
            status,
            shared,
            store,
        }
    }

    /// Stops the store; checks that nothing was called durable and
    /// that the segments hold records `0..n`.
    fn finish_with(self, n: u64) {
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
    f.feed.push(10..20);
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
