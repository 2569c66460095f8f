//! The store when the kernel refuses a write while its ring holds far more
//! than a block: the drain stops at the failure, so every block waits in
//! the ring, and every record reaches its segment, in order, once writes
//! work again. The
//! refusal is real: a file-size limit (RLIMIT_FSIZE) makes the kernel
//! answer the store's writes with EFBIG, as a full file system answers
//! ENOSPC. Meanwhile the stream's lease says how far it is written, so
//! that the shipper's watermark waits for what is held. The limit is the
//! whole process's, so this file holds one test.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{limit_file_size, wait_for};
use trackplane::config::Config;
use trackplane::ring::ring;
use trackplane::sched::Class;
use trackplane::segment::{list, SegmentReader};
use trackplane::store::lease::{written_through, HeldLocks, StreamLeases};
use trackplane::store::pack::Packer;
use trackplane::store::{segments_dir, Store, StoreStatus, StreamShared, StreamSpec};

/// Records of 1 KiB that zstd cannot shrink much, so that every block is
/// far larger than the file-size limit.
const RECORD_BYTES: usize = 1024;

/// When every record was received.
const RECEIVED_MS: u64 = 1_700_000_000_000;

/// 72 MiB of records: more than the 64 MiB that one block may hold at all
/// (`segment::format::MAX_BLOCK_BYTES`), which is what a store that kept
/// draining after a failed write once gathered, losing the rest.
const RECORDS: u64 = 72 * 1024;

#[test]
fn records_behind_a_failed_write_wait_in_the_ring_and_are_all_stored() {
    // The server does the same at start: the signal would end the process
    // at the first refused write.
    signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::from_toml_str("[storage]\nflush_interval_ms = 20\n", "test")
        .unwrap()
        .storage;

    // Records into a worker's ring, packed into blocks for the store's, as
    // a worker does while idle.
    let (mut producer, records) = ring(128 << 20);
    let (blocks, consumer) = ring(128 << 20);
    let waiting = consumer.gauge();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rec = Vec::with_capacity(16 + RECORD_BYTES);
    for seq in 0..RECORDS {
        rec.clear();
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(&RECEIVED_MS.to_le_bytes());
        rec.extend_from_slice(format!(r#"{{"id":"t-0-{seq}","noise":""#).as_bytes());
        while rec.len() < 16 + RECORD_BYTES - 2 - 8 {
            // xorshift64: letters no block compresses to a few KiB.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            rec.extend(state.to_le_bytes().map(|b| b'a' + (b & 15)));
        }
        rec.extend_from_slice(b"\"}");
        producer.push(&rec).unwrap();
    }
    let status = Arc::new(StoreStatus::new(false, Class::new(false)));
    let shared = Arc::new(StreamShared::default());
    shared.unpacked_ts.store(RECEIVED_MS, Ordering::Release);
    let mut packer = Packer::new(
        records,
        blocks,
        0,
        &cfg,
        shared.clone(),
        status.clone(),
        Default::default(),
    )
    .unwrap();
    assert!(packer.finish(), "the store's ring took every block");
    let packed = waiting.used_bytes();

    // The server's lease on the stream, as the shipper looks at it.
    let _lease = StreamLeases::acquire(dir.path(), 1).unwrap();
    let marked = || written_through(dir.path(), 0, &HeldLocks::read());
    // Room for the segment's header, not for one block.
    limit_file_size(None, Some(4096));
    let spec = StreamSpec {
        stream: 0,
        consumer,
        next_seq: 0,
        shared,
    };
    let store = Store::start(
        dir.path(),
        "t",
        &cfg,
        vec![spec],
        status.clone(),
        Default::default(),
    )
    .unwrap();
    wait_for(
        "the store to report failing writes",
        Duration::from_secs(60),
        || status.failing.load(Ordering::Relaxed),
    );
    // Past its first retry (every second): none may take more either.
    std::thread::sleep(Duration::from_millis(1500));
    let left = waiting.used_bytes();
    assert_eq!(
        left, packed,
        "bytes left in the ring: the store went on draining after its write failed"
    );
    assert!(store.metrics.errors.load(Ordering::Relaxed) >= 1);
    assert_eq!(store.metrics.records.load(Ordering::Relaxed), 0);
    assert_eq!(
        marked(),
        Some(RECEIVED_MS),
        "the lease says nothing received since is written"
    );

    limit_file_size(None, None);
    wait_for("the ring to be drained", Duration::from_secs(60), || {
        waiting.used_bytes() == 0
    });
    wait_for("writes to work again", Duration::from_secs(60), || {
        !status.failing.load(Ordering::Relaxed)
    });
    let resumed_ms = trackplane::clock::unix_ms();
    wait_for(
        "the lease to say everything is written",
        Duration::from_secs(60),
        || marked().is_some_and(|t| t >= resumed_ms),
    );
    store.finish().unwrap();

    let mut seqs = Vec::new();
    for seg in list(&segments_dir(dir.path())).unwrap() {
        let mut reader = SegmentReader::open(&seg.path).unwrap();
        while let Some(block) = reader.next_block().unwrap() {
            seqs.extend(block.records().map(|(seq, _)| seq));
        }
    }
    assert_eq!(seqs.len() as u64, RECORDS, "every record stored once");
    assert!(
        seqs.iter().copied().eq(0..RECORDS),
        "in order, without a gap"
    );
}
