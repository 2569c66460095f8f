//! How a worker's records become blocks: the worker packs its own ring into
//! compressed, framed blocks in the moments its runtime would otherwise
//! sleep (monoio's idle work, as the live view's fold does), and hands each
//! block to the store through a second ring; the store only writes them.
//!
//! The store's thread did the compression before, sharing the workers'
//! cores in the idle class: about 5,000 instructions a record, run in the
//! workers' gaps, where every request that came meanwhile preempted it (a
//! rescheduling interrupt and two context switches charged to the process,
//! which a worker waking on an idle core does not pay). The worker, between
//! its own I/O, reads its ring's task-run flag between turns and goes back
//! to its connections without having slept.
//!
//! # Invariants
//! - A record leaves the worker's ring only into the block being built,
//!   and that block leaves it only whole, into the store's ring; a block
//!   the store's ring cannot take stays and is offered again (the worker's
//!   ring then fills and new events are refused, as they were when the
//!   store fell behind). A packer dropped with records left (a worker's
//!   panic) packs them into the store's ring as far as it has room.
//! - A block is cut at `block_max_bytes`, once its oldest record has waited
//!   half of `flush_interval_ms` (looked at in every turn; an idle worker's
//!   heartbeat gives one at least every 20 ms), at once when a worker waits
//!   for a `sync` event's durability, and when the worker stops; a block
//!   handed over ends the store's nap if the nap would end after the block
//!   is due (its oldest record's receive time plus the flush interval; at
//!   once for a sync), so that records reach their segment within the
//!   flush interval (or 20 ms past half of it, when it is shorter than
//!   40 ms).
//! - With I/O waiting, a turn works only when something is due (a sync
//!   wanted, records that have waited three quarters of the flush
//!   interval, the worker's ring past a quarter), so a busy worker packs
//!   only what cannot wait. (Due at half the interval, as the cut is, a
//!   block cut by age was due at once: at 20k requests/s, where 256 KiB
//!   take longer than that to gather, a block was cut every 25 ms and
//!   each of its pieces went ahead of requests already waiting; p99 1.55x
//!   nginx's against 1.12x with three quarters, lower in 8 of 8 rounds,
//!   `bench/results/tails-20261204-0740.md`.)
//! - A cut block is compressed a piece per turn; until it is whole and in
//!   the store's ring, records wait in the worker's ring.
//! - A turn that leaves the worker's ring past a quarter, having made it
//!   smaller, says the packer is behind (`IdleTurn::Behind`), and the
//!   runtime gives it turns, whatever I/O waits, until it is not. At a
//!   turn a park, a worker that always had I/O waiting packed less than it
//!   took in: one client pipelining 3 KB requests had thousands of its
//!   10,000 answered events refused (`tests/store.rs`). Behind, a worker
//!   packs a block (about 300 µs) before it answers again; it is behind
//!   only where the rate of records outruns a piece a park.
//! - A worker answering a client that keeps its socket full may not park
//!   for thousands of requests (on epoll a read finds bytes at once), so
//!   its emitter, finding the ring past a quarter, has the packer catch up
//!   then and there (`monoio::catch_up_idle_work`: turns while behind).
//! - `StreamShared::unpacked_ts` holds the receive time of the oldest record
//!   not yet in the store's ring (or `u64::MAX`): the emitter sets it when
//!   a record goes into an empty pipeline, the packer after each block. The
//!   store marks its lease with it (`lease`).

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::IdleTurn;

use super::{StoreMetrics, StoreStatus, StreamShared, RING_PREFIX};
use crate::clock::unix_ms;
use crate::ring::{Consumer, Producer};
use crate::segment::format::BLOCK_HEADER_LEN;
use crate::segment::writer::{
    out_bound, BlockBuilder, Framed, COMPRESS_PIECE, COMPRESS_PIECE_BATCHED,
};

/// Records moved into the block per turn: a few microseconds of copying.
/// A cut block is compressed one `COMPRESS_PIECE` (8 KiB) a turn, about
/// 13 µs (32 KiB while the worker batches its wake-ups), and no record is
/// moved in meanwhile: whole, a 256 KiB block of the loadtest's records
/// took 300-400 µs, which every request arriving meanwhile waited for
/// (the pieces' sizes and what they cost: `segment::writer`).
pub const TURN_RECORDS: usize = 64;

/// Bytes the store's ring needs for a worker whose own ring holds
/// `ring_bytes`: room for four of the largest blocks the packer cuts (the
/// block limit plus the largest record the worker's ring takes), and never
/// less than the worker's ring.
pub fn blocks_ring_bytes(ring_bytes: usize, block_max_bytes: usize) -> usize {
    let largest_record = ring_bytes / 4;
    let largest_block = BLOCK_HEADER_LEN + out_bound(block_max_bytes + largest_record + 4);
    (4 * (largest_block + 8))
        .next_power_of_two()
        .max(ring_bytes)
}

/// When waiting records are due for a cut by age (`aged`) and for one
/// that goes ahead of waiting requests (`late`).
#[derive(Clone, Copy)]
struct Due {
    aged: Instant,
    late: Instant,
}

impl Due {
    /// For records waiting since `since`, flushed every `flush_every`.
    fn after(since: Instant, flush_every: Duration) -> Due {
        Due {
            aged: since + flush_every / 2,
            late: since + flush_every * 3 / 4,
        }
    }
}

/// One worker's packer.
pub struct Packer {
    records: Consumer,
    blocks: Producer,
    block: BlockBuilder,
    /// When the records now waiting (in its ring or in `block`) will have
    /// waited half the flush interval and three quarters of it, counted
    /// from when the packer first found them there or, after a cut, from
    /// the oldest one's receive time. Each turn compares these with its
    /// reading, cheaper than taking the span since a start time (an
    /// `Instant`'s difference is a normalized `Duration`).
    due: Option<Due>,
    /// Bytes compressed per turn: `COMPRESS_PIECE`, or
    /// `COMPRESS_PIECE_BATCHED` while the worker batches its wake-ups.
    piece: usize,
    flush_every: Duration,
    /// `storage.discard_for_benchmarks`: records are dropped, not packed,
    /// so that storage's whole cost shows as the difference.
    discard: bool,
    shared: Arc<StreamShared>,
    status: Arc<StoreStatus>,
    metrics: Arc<StoreMetrics>,
}

impl Packer {
    /// Packs `records` (the worker's ring, whose next record is `next_seq`)
    /// into blocks of `block_max_bytes` at `zstd_level` for `blocks` (the
    /// store's ring).
    pub fn new(
        records: Consumer,
        blocks: Producer,
        next_seq: u64,
        cfg: &crate::config::StorageConfig,
        shared: Arc<StreamShared>,
        status: Arc<StoreStatus>,
        metrics: Arc<StoreMetrics>,
    ) -> std::io::Result<Packer> {
        Ok(Packer {
            records,
            blocks,
            block: BlockBuilder::new(next_seq, cfg.block_max_bytes, cfg.zstd_level)?,
            due: None,
            piece: COMPRESS_PIECE,
            flush_every: Duration::from_millis(cfg.flush_interval_ms),
            discard: cfg.discard_for_benchmarks,
            shared,
            status,
            metrics,
        })
    }

    /// Follows the worker's pace (`server::pace`): pieces of
    /// `COMPRESS_PIECE_BATCHED` while it batches its wake-ups, whose
    /// answers wait the linger anyway, and of `COMPRESS_PIECE` otherwise.
    pub fn set_batching(&mut self, batching: bool) {
        self.piece = if batching {
            COMPRESS_PIECE_BATCHED
        } else {
            COMPRESS_PIECE
        };
    }

    /// One turn of idle work (module header) at `now` (in a worker, the
    /// runtime's reading from just before it would sleep, which its 20 ms
    /// heartbeat's timer makes it take: `monoio::time::recent`); says
    /// whether work is left, and whether the packer is behind: its ring
    /// still past a quarter after a turn that made it smaller.
    pub fn turn(&mut self, io_waiting: bool, now: Instant) -> IdleTurn {
        if self.discard {
            self.discard_all();
            return IdleTurn::Done;
        }
        let due = match self.due {
            Some(d) => d,
            None if self.records.backlog() == 0 => return IdleTurn::Done,
            None => *self.due.insert(Due::after(now, self.flush_every)),
        };
        // Below the block's first record, every record is in the store's ring.
        let sync_wanted = self.shared.sync_wanted.load(Ordering::Acquire) > self.block.first_seq();
        let aged = now >= due.aged;
        // A block cut by age has half the interval left, which idle turns
        // nearly always find; only in its last quarter does it go ahead of
        // waiting requests (each piece would hold them up about 13 µs).
        let late = now >= due.late;
        if io_waiting && !(sync_wanted || late || self.records.past_quarter()) {
            return self.left();
        }
        let progressed = if self.block.framing() {
            // A block cut in an earlier turn: its next piece.
            self.cut(self.piece) != Cut::Stuck
        } else {
            let took = self.take(TURN_RECORDS);
            let cut = (self.block.full() || aged || (sync_wanted && self.records.backlog() == 0))
                .then(|| self.cut(self.piece));
            took > 0 || cut.is_some_and(|c| c != Cut::Stuck)
        };
        if progressed && self.records.past_quarter() {
            IdleTurn::Behind
        } else {
            self.left()
        }
    }

    /// Whether records wait, in the ring or in a block being cut.
    fn left(&self) -> IdleTurn {
        if self.block.framing() || self.records.backlog() > 0 {
            IdleTurn::More
        } else {
            IdleTurn::Done
        }
    }

    /// Packs every record left, at a stop; whether all reached the store's
    /// ring (a full one, behind failing writes, takes no more).
    pub fn finish(&mut self) -> bool {
        if self.discard {
            self.discard_all();
            return true;
        }
        loop {
            if !self.block.framing() {
                self.take(usize::MAX);
            }
            if self.cut(usize::MAX) != Cut::Handed {
                return false;
            }
            if self.records.backlog() == 0 {
                return true;
            }
        }
    }

    /// Gives up the records not yet in the store's ring, at a stop whose
    /// store takes no more: how many.
    pub fn lose_the_rest(&mut self) -> u64 {
        let lost = u64::from(self.block.pending()) + self.records.drain(|_| {}) as u64;
        self.block.clear();
        lost
    }

    /// Drops every record waiting (`discard`).
    fn discard_all(&mut self) {
        if self.records.drain(|_| {}) > 0 {
            self.shared.unpacked_ts.store(u64::MAX, Ordering::Release);
        }
    }

    /// Moves up to `max` records into the block, stopping at a full one;
    /// how many it moved.
    fn take(&mut self, max: usize) -> usize {
        let Packer {
            records,
            block,
            metrics,
            ..
        } = self;
        let mut taken = 0;
        records.drain_pausing(
            TURN_RECORDS,
            |rec| {
                if taken == max || block.full() {
                    return ControlFlow::Break(());
                }
                taken += 1;
                let Some((prefix, record)) = rec.split_first_chunk::<RING_PREFIX>() else {
                    return ControlFlow::Continue(());
                };
                let seq = u64::from_le_bytes(prefix[0..8].try_into().unwrap_or_default());
                let ts = u64::from_le_bytes(prefix[8..16].try_into().unwrap_or_default());
                if let Err(e) = block.append(seq, ts, record) {
                    // None the workers encode; counted and said.
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(seq, error = %e, "record not stored");
                }
                ControlFlow::Continue(())
            },
            |_| {},
        );
        taken
    }

    /// Compresses the next `piece` bytes of the block (`usize::MAX`: the
    /// rest) and, once it is whole, hands it to the store's ring. A block
    /// not yet whole, or whole but refused by a full ring, stays for the
    /// next call.
    fn cut(&mut self, piece: usize) -> Cut {
        let framed = match self.block.frame_piece(piece) {
            Ok(Framed::Whole(bytes, _)) => bytes,
            Ok(Framed::Empty) => return Cut::Handed,
            Ok(Framed::Partial) => return Cut::Piece,
            Err(e) => {
                tracing::error!(error = %e, "block not compressed; retrying");
                return Cut::Stuck;
            }
        };
        if self.blocks.push(framed).is_err() {
            return Cut::Stuck;
        }
        // When the block must be on disk by: its oldest record's receive
        // time plus the flush interval, or at once for a worker waiting
        // for a sync.
        let sync_wanted = self.shared.sync_wanted.load(Ordering::Acquire) > self.block.first_seq();
        let due_ms = self
            .block
            .pending_min_ts()
            .unwrap_or(0)
            .saturating_add(self.flush_every.as_millis() as u64);
        self.block.clear();
        // The oldest record still with the worker: first in its ring.
        let oldest = self
            .records
            .peek()
            .and_then(|rec| rec.get(8..RING_PREFIX))
            .and_then(|ts| ts.try_into().ok())
            .map_or(u64::MAX, u64::from_le_bytes);
        self.shared.unpacked_ts.store(oldest, Ordering::Release);
        // The records left have waited since they came, not since this cut:
        // on a worker that always has I/O waiting, counting from the cut
        // held each next block back another half interval.
        self.due = (self.records.backlog() > 0).then(|| {
            let now = Instant::now();
            let waited = Duration::from_millis(unix_ms().saturating_sub(oldest));
            Due::after(now.checked_sub(waited).unwrap_or(now), self.flush_every)
        });
        // The store's thread in the idle class barely runs on a busy core;
        // its ring filling up is the sign to lift it (nothing to lift in
        // the normal class).
        if self.blocks.past_quarter() && self.status.class.enabled() {
            self.status.class.lift();
        }
        // A block ends the store's nap when the nap would end after the
        // block is due, or the store's ring is past a quarter: otherwise
        // its next pass on the flush interval writes it in time.
        if sync_wanted || self.blocks.past_quarter() {
            self.status.nudge();
        } else {
            self.status.nudge_unless_awake_by(due_ms);
        }
        Cut::Handed
    }
}

/// What a [`Packer::cut`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The block went to the store's ring (or there was none).
    Handed,
    /// A piece of it was compressed; more are left.
    Piece,
    /// Nothing: the block is whole and the store's ring full, or its
    /// compression failed.
    Stuck,
}

impl Drop for Packer {
    /// A worker that ends without packing its records (a panic unwinding
    /// it drops its idle work) still hands them to the store, as far as
    /// the store's ring has room; the store writes them before it stops.
    fn drop(&mut self) {
        if self.block.pending() == 0 && self.records.backlog() == 0 {
            return;
        }
        if !self.finish() {
            tracing::error!(
                records = self.lose_the_rest(),
                "records lost: a worker ended and the store's ring was full"
            );
        }
    }
}

#[cfg(test)]
mod tests;
