//! The packer on real rings: when it cuts a block, what a block holds, and
//! what it does when the store's ring is full.

use super::*;
use crate::config::StorageConfig;
use crate::ring::ring;
use crate::segment::format::BlockHeader;

fn storage(toml: &str) -> StorageConfig {
    crate::config::Config::from_toml_str(toml, "test")
        .unwrap()
        .storage
}

/// A packer of stream 0 between a ring of records and a ring of blocks of
/// `blocks_bytes`.
fn packer(
    cfg: &StorageConfig,
    blocks_bytes: usize,
) -> (Producer, Packer, Consumer, Arc<StreamShared>) {
    let (records, rx) = ring(1 << 20);
    let (tx, blocks) = ring(blocks_bytes);
    let shared = Arc::new(StreamShared::default());
    let packer = Packer::new(
        rx,
        tx,
        0,
        cfg,
        shared.clone(),
        Arc::default(),
        Arc::default(),
    )
    .unwrap();
    (records, packer, blocks, shared)
}

/// Whether a turn left work.
fn left(turn: IdleTurn) -> bool {
    turn != IdleTurn::Done
}

/// Pushes records `seqs` received at `ts + seq`.
fn push(records: &mut Producer, seqs: std::ops::Range<u64>, ts: u64) {
    for seq in seqs {
        let mut rec = Vec::new();
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(&(ts + seq).to_le_bytes());
        rec.extend_from_slice(format!(r#"{{"id":"t-0-{seq}"}}"#).as_bytes());
        records.push(&rec).unwrap();
    }
}

/// The blocks in the store's ring: each one's first sequence number, count
/// and records, decompressed.
fn blocks(ring: &mut Consumer) -> Vec<(u64, u32, Vec<String>)> {
    let mut out = Vec::new();
    ring.drain(|framed| {
        let header = BlockHeader::decode(framed).unwrap();
        let payload = &framed[BLOCK_HEADER_LEN..];
        header.verify(framed, payload).unwrap();
        let raw = zstd::bulk::decompress(payload, header.uncompressed_len as usize).unwrap();
        let mut records = Vec::new();
        let mut at = 0;
        while at < raw.len() {
            let len = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
            records.push(String::from_utf8(raw[at + 4..at + 4 + len].to_vec()).unwrap());
            at += 4 + len;
        }
        out.push((header.first_seq, header.count, records));
    });
    out
}

#[test]
fn records_wait_in_the_block_until_it_is_full() {
    let cfg = storage("[storage]\nblock_max_bytes = 1024\nflush_interval_ms = 60000\n");
    let (mut records, mut packer, mut ring, _) = packer(&cfg, 1 << 20);
    assert!(!left(packer.turn(false, Instant::now())), "nothing to pack");
    push(&mut records, 0..10, 1_000);
    assert!(!left(packer.turn(false, Instant::now())), "all taken in");
    assert!(
        blocks(&mut ring).is_empty(),
        "a block of 10 small records waits"
    );
    assert_eq!(packer.block.pending(), 10);
    // Past 1 KiB: blocks are cut, and the rest waits for the next.
    push(&mut records, 10..200, 1_000);
    while left(packer.turn(false, Instant::now())) {}
    let cut = blocks(&mut ring);
    assert!(!cut.is_empty());
    assert_eq!(cut[0].2[3], r#"{"id":"t-0-3"}"#);
    assert!(packer.finish());
    let mut next = 0;
    for (first, count, recs) in cut.into_iter().chain(blocks(&mut ring)) {
        assert_eq!(first, next, "blocks in sequence");
        assert_eq!(recs.len(), count as usize);
        assert!(
            recs.iter().map(|r| r.len() + 4).sum::<usize>() < 1024 + 24,
            "cut at 1 KiB"
        );
        next += u64::from(count);
    }
    assert_eq!(next, 200);
}

#[test]
fn a_block_is_cut_once_its_records_have_waited_the_flush_interval() {
    let cfg = storage("[storage]\nflush_interval_ms = 20\n");
    let (mut records, mut packer, mut ring, _) = packer(&cfg, 1 << 20);
    push(&mut records, 0..3, 1_000);
    packer.turn(false, Instant::now());
    assert!(blocks(&mut ring).is_empty());
    std::thread::sleep(Duration::from_millis(25));
    packer.turn(true, Instant::now());
    assert_eq!(blocks(&mut ring)[0].1, 3, "cut, even with I/O waiting");
}

#[test]
fn with_io_waiting_only_what_is_due_is_done() {
    let cfg = storage("[storage]\nflush_interval_ms = 60000\n");
    let (mut records, mut packer, mut ring, shared) = packer(&cfg, 1 << 20);
    push(&mut records, 0..5, 1_000);
    assert!(
        left(packer.turn(true, Instant::now())),
        "left for a quiet moment"
    );
    assert_eq!(packer.block.pending(), 0, "nothing taken");
    // A worker waits for record 4 to be durable: packed at once.
    shared.want_sync(4);
    packer.turn(true, Instant::now());
    assert_eq!(blocks(&mut ring)[0].1, 5);
}

#[test]
fn a_block_cut_by_age_goes_ahead_of_waiting_io_only_late() {
    let cfg = storage("[storage]\nflush_interval_ms = 1000\n");
    let (mut records, mut packer, mut ring, _) = packer(&cfg, 4 << 20);
    push(&mut records, 0..6000, 1_000);
    let first_seen = Instant::now();
    while packer.records.backlog() > 0 {
        packer.turn(false, Instant::now());
    }
    assert!(!packer.block.framing(), "not full, not yet aged");
    // Half the interval: cut, and its first piece compressed.
    std::thread::sleep(Duration::from_millis(520).saturating_sub(first_seen.elapsed()));
    packer.turn(false, Instant::now());
    assert!(packer.block.framing());
    let pieces = packer.block.pending_bytes().div_ceil(COMPRESS_PIECE);
    assert!(pieces >= 3, "{pieces}");
    for _ in 0..pieces {
        assert!(left(packer.turn(true, Instant::now())));
    }
    assert!(
        first_seen.elapsed() < Duration::from_millis(750),
        "the test was held up past three quarters; nothing shown"
    );
    assert!(blocks(&mut ring).is_empty(), "not ahead of waiting I/O");
    // Three quarters: the rest goes ahead, a piece a turn.
    std::thread::sleep(Duration::from_millis(760).saturating_sub(first_seen.elapsed()));
    for _ in 0..pieces - 1 {
        packer.turn(true, Instant::now());
    }
    let cut = blocks(&mut ring);
    assert_eq!((cut.len(), cut[0].1), (1, 6000));
}

#[test]
fn records_left_after_a_cut_keep_their_age() {
    let cfg = storage("[storage]\nblock_max_bytes = 4096\nflush_interval_ms = 1000\n");
    let (mut records, mut packer, mut ring, _) = packer(&cfg, 1 << 20);
    // Received 1.3 s to 0.9 s ago: past three quarters of the interval.
    push(&mut records, 0..400, unix_ms() - 1300);
    while blocks(&mut ring).is_empty() {
        assert!(left(packer.turn(false, Instant::now())), "records left");
    }
    assert!(packer.records.backlog() > 0);
    packer.turn(true, Instant::now());
    let next = blocks(&mut ring);
    assert_eq!(next.len(), 1, "late, so packed with I/O waiting");
    assert_eq!(next[0].1, TURN_RECORDS as u32);
}

#[test]
fn a_ring_past_a_quarter_is_packed_while_io_waits() {
    let cfg = storage("[storage]\nflush_interval_ms = 60000\n");
    let (mut records, mut packer, _ring, _) = packer(&cfg, 1 << 20);
    let mut seq = 0;
    while !records.past_quarter() {
        push(&mut records, seq..seq + 1, 1_000);
        seq += 1;
    }
    packer.turn(true, Instant::now());
    assert_eq!(
        packer.block.pending(),
        TURN_RECORDS as u32,
        "taken in with I/O waiting"
    );
}

#[test]
fn a_packer_is_behind_while_its_ring_stays_past_a_quarter_and_it_gains() {
    let cfg = storage("[storage]\nblock_max_bytes = 4096\nflush_interval_ms = 60000\n");
    // A store's ring that fills long before the backlog is packed.
    let (mut records, mut packer, mut ring, _) = packer(&cfg, 8192);
    let mut seq = 0;
    while !records.past_quarter() {
        push(&mut records, seq..seq + 1, 1_000);
        seq += 1;
    }
    // Well past: more than the two blocks the store's ring takes.
    push(&mut records, seq..seq + 10_000, 1_000);
    let mut behind = 0;
    loop {
        match packer.turn(true, Instant::now()) {
            IdleTurn::Behind => behind += 1,
            IdleTurn::More => break,
            IdleTurn::Done => panic!("records left"),
        }
        assert!(behind < 1_000, "the packer spins");
    }
    assert!(behind > 0, "behind at first");
    // The store's ring filled first: a turn that cannot make the backlog
    // smaller is not behind, or the worker would spin on it.
    assert!(
        packer.records.past_quarter(),
        "the store's ring filled first"
    );
    assert_eq!(packer.turn(true, Instant::now()), IdleTurn::More, "stuck");
    // Room again: behind until under a quarter, and then, with I/O waiting,
    // nothing more is due.
    loop {
        blocks(&mut ring);
        match packer.turn(true, Instant::now()) {
            IdleTurn::Behind => {}
            turn => {
                if !packer.records.past_quarter() {
                    assert_eq!(turn, IdleTurn::More);
                    break;
                }
            }
        }
    }
    let taken = packer.block.pending();
    assert_eq!(packer.turn(true, Instant::now()), IdleTurn::More);
    assert_eq!(packer.block.pending(), taken, "nothing due, nothing taken");
}

#[test]
fn a_block_is_compressed_a_piece_per_turn_while_records_wait_in_the_ring() {
    let cfg = storage("[storage]\nblock_max_bytes = 131072\nflush_interval_ms = 60000\n");
    let (mut records, mut packer, mut ring, _) = packer(&cfg, 4 << 20);
    push(&mut records, 0..8000, 1_000);
    while !packer.block.framing() {
        assert!(left(packer.turn(false, Instant::now())), "records left");
    }
    // The turn that cut the block compressed its first piece.
    let pieces = packer.block.pending_bytes().div_ceil(COMPRESS_PIECE);
    assert!(pieces >= 4, "{pieces}");
    let in_block = packer.block.pending();
    let mut turns = 1;
    let mut pushed = 8000;
    let mut cut = Vec::new();
    while cut.is_empty() {
        // Nothing due: with I/O waiting the compression does not go on.
        assert!(left(packer.turn(true, Instant::now())));
        push(&mut records, pushed..pushed + 1, 1_000);
        pushed += 1;
        assert_eq!(packer.block.pending(), in_block, "nothing appended");
        assert!(left(packer.turn(false, Instant::now())));
        turns += 1;
        cut = blocks(&mut ring);
        assert!(turns as usize <= pieces, "{turns} turns");
    }
    assert_eq!(turns as usize, pieces, "one piece a turn");
    assert_eq!((cut[0].0, cut[0].1), (0, in_block));
    assert!(packer.finish());
    let seqs: Vec<u64> = cut
        .into_iter()
        .chain(blocks(&mut ring))
        .flat_map(|(first, count, recs)| {
            for (i, r) in recs.iter().enumerate() {
                assert_eq!(*r, format!(r#"{{"id":"t-0-{}"}}"#, first + i as u64));
            }
            first..first + u64::from(count)
        })
        .collect();
    assert_eq!(
        seqs,
        (0..pushed).collect::<Vec<_>>(),
        "every record, once, in order"
    );
}

#[test]
fn a_batching_worker_compresses_in_larger_pieces() {
    let cfg = storage("[storage]\nblock_max_bytes = 131072\nflush_interval_ms = 60000\n");
    let turns_to_cut = |batching: bool| {
        let (mut records, mut packer, mut ring, _) = packer(&cfg, 4 << 20);
        packer.set_batching(batching);
        push(&mut records, 0..8000, 1_000);
        while !packer.block.framing() {
            assert!(left(packer.turn(false, Instant::now())), "records left");
        }
        // The turn that cut the block compressed its first piece.
        let raw = packer.block.pending_bytes();
        let mut turns = 1;
        while blocks(&mut ring).is_empty() {
            packer.turn(false, Instant::now());
            turns += 1;
        }
        (raw, turns)
    };
    let (raw, turns) = turns_to_cut(false);
    assert_eq!(turns, raw.div_ceil(COMPRESS_PIECE));
    let (raw, turns) = turns_to_cut(true);
    assert_eq!(turns, raw.div_ceil(COMPRESS_PIECE_BATCHED));
    assert!(turns >= 2, "{turns}");
}

#[test]
fn a_block_ends_the_stores_nap_only_when_the_nap_would_end_after_it_is_due() {
    let cfg = storage("[storage]\nflush_interval_ms = 1000\n");
    let (mut records, mut packer, mut ring, shared) = packer(&cfg, 1 << 20);
    let status = packer.status.clone();
    let nap = |ends_ms: u64| {
        status.nap_ends_ms.store(ends_ms, Ordering::Relaxed);
        status.napping.store(true, Ordering::Release);
    };
    // Records received at 10,000 ms are due on disk at 11,000.
    let mut seq = 0;
    for (nap_ends, nudged) in [(10_500, false), (11_000, false), (11_001, true)] {
        nap(nap_ends);
        push(&mut records, seq..seq + 3, 10_000 - seq);
        assert!(packer.finish());
        seq += 3;
        assert_eq!(blocks(&mut ring).len(), 1);
        assert_eq!(
            !status.napping.load(Ordering::Relaxed),
            nudged,
            "nap ending at {nap_ends}"
        );
    }
    // A worker waiting for a sync: at once, however soon the nap ends.
    nap(0);
    push(&mut records, seq..seq + 1, 10_000);
    shared.want_sync(seq);
    assert!(packer.finish());
    assert!(
        !status.napping.load(Ordering::Relaxed),
        "nudged for the sync"
    );
}

#[test]
fn a_block_the_store_cannot_take_stays_until_it_can() {
    let cfg = storage("[storage]\nblock_max_bytes = 1024\nflush_interval_ms = 60000\n");
    let (mut records, mut packer, mut ring, _) = packer(&cfg, 4096);
    push(&mut records, 0..2000, 1_000);
    assert!(!packer.finish(), "the store's ring filled");
    let mut got = blocks(&mut ring);
    assert!(!got.is_empty());
    while !packer.finish() {
        got.extend(blocks(&mut ring));
    }
    got.extend(blocks(&mut ring));
    let seqs: Vec<u64> = got
        .iter()
        .flat_map(|(first, count, _)| *first..first + u64::from(*count))
        .collect();
    assert_eq!(
        seqs,
        (0..2000).collect::<Vec<_>>(),
        "every record, once, in order"
    );
}

#[test]
fn the_oldest_record_not_yet_packed_is_published() {
    let cfg = storage("[storage]\nblock_max_bytes = 1024\nflush_interval_ms = 60000\n");
    let (mut records, mut packer, mut ring, shared) = packer(&cfg, 1 << 20);
    push(&mut records, 0..200, 5_000);
    // The emitter's part: the first record into an empty pipeline.
    shared.unpacked_ts.store(5_000, Ordering::Release);
    packer.turn(false, Instant::now());
    let cut = blocks(&mut ring);
    assert_eq!(cut.len(), 1, "one turn, one block");
    // The oldest left is the ring's first: the one after the block's last.
    let count = u64::from(cut[0].1);
    assert_eq!(shared.unpacked_ts.load(Ordering::Acquire), 5_000 + count);
    assert!(packer.finish());
    assert_eq!(
        shared.unpacked_ts.load(Ordering::Acquire),
        u64::MAX,
        "all packed"
    );
}

#[test]
fn the_stores_ring_holds_four_of_the_largest_blocks() {
    for (ring_bytes, block) in [(1 << 16, 1024), (8 << 20, 256 << 10), (1 << 20, 4 << 20)] {
        let bytes = blocks_ring_bytes(ring_bytes, block);
        let largest = BLOCK_HEADER_LEN + out_bound(block + ring_bytes / 4 + 4);
        assert!(bytes / 4 - 4 >= largest, "{ring_bytes} {block}: {bytes}");
        assert!(bytes >= ring_bytes && bytes.is_power_of_two());
    }
}

#[test]
fn a_packer_dropped_with_records_left_hands_them_to_the_store() {
    let cfg = storage("[storage]\nblock_max_bytes = 1024\nflush_interval_ms = 60000\n");
    let (mut records, mut packer, mut ring, _) = packer(&cfg, 1 << 20);
    push(&mut records, 0..5, 1_000);
    assert!(!left(packer.turn(false, Instant::now())));
    push(&mut records, 5..8, 1_000);
    // As a worker's panic drops its idle work: 5 in the block, 3 in the ring.
    drop(packer);
    let got = blocks(&mut ring);
    let seqs: Vec<(u64, u32)> = got.iter().map(|(first, n, _)| (*first, *n)).collect();
    assert_eq!(seqs, vec![(0, 8)], "every record, in one block");
    assert_eq!(got[0].2[7], r#"{"id":"t-0-7"}"#);
}

#[test]
fn records_are_dropped_unpacked_when_storage_discards_them() {
    let cfg = storage("[storage]\ndiscard_for_benchmarks = true\n");
    let (mut records, mut packer, mut ring, shared) = packer(&cfg, 1 << 20);
    push(&mut records, 0..10, 1_000);
    shared.unpacked_ts.store(1_000, Ordering::Release);
    assert!(!left(packer.turn(false, Instant::now())));
    assert_eq!(packer.records.backlog(), 0, "the worker's ring is emptied");
    assert!(blocks(&mut ring).is_empty(), "nothing is packed");
    assert_eq!(shared.unpacked_ts.load(Ordering::Acquire), u64::MAX);
}
