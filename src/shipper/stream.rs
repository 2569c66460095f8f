//! A stream's shipping state, and how a failure moves it: a rewind reads
//! the stream again from its last contiguous acknowledgement after a
//! growing backoff, a restart (a new producer) does so at once.
//!
//! # Invariants
//! - `window.acked_through()` never moves back; a rewind or a restart
//!   reads again from exactly there, so every record past it is produced
//!   again and none before it.
//! - `blocks` holds, oldest first, every block read and not fully
//!   acknowledged: its front bounds the checkpoint and the watermark.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::checkpoint::{AckWindow, Position};
use super::ShipperMetrics;
use crate::segment::{Follower, Located};

/// A block read and not yet fully acknowledged.
pub(super) struct BlockInfo {
    /// One past its last record's sequence number.
    pub(super) end_seq: u64,
    /// Where it is: its segment's base sequence and its byte offset there.
    pub(super) segment_base: u64,
    pub(super) offset: u64,
    /// Its records' event times, Unix ms.
    pub(super) min_ts: u64,
    pub(super) max_ts: u64,
}

/// One stream (one worker's segments) being shipped.
pub(super) struct StreamState {
    pub(super) follower: Follower,
    /// The block being produced and the index of its next record.
    pub(super) current: Option<(Located, usize)>,
    /// A block read past a gap in the sequence, waiting until everything
    /// before the gap is acknowledged.
    pub(super) past_gap: Option<Located>,
    /// Which records Kafka acknowledged, and up to where contiguously.
    pub(super) window: AckWindow,
    /// Blocks read and not fully acknowledged, oldest first.
    pub(super) blocks: VecDeque<BlockInfo>,
    /// Records produced and not yet reported on.
    pub(super) in_flight: usize,
    /// The latest event time of the contiguously acknowledged blocks.
    pub(super) acked_ts: u64,
    /// The sequence number the checkpoint file holds.
    pub(super) checkpointed: u64,
    /// One past the last record read.
    pub(super) read_through: u64,
    /// Read to the end of what is on disk, with nothing waiting past a gap.
    pub(super) caught_up: bool,
    /// Nothing is produced before this (a backoff).
    pub(super) retry_at: Option<Instant>,
    /// A rewind waits out its backoff: it will send again everything from
    /// the last contiguous acknowledgement, so a failure reported meanwhile
    /// needs no rewind of its own. (A backoff after a read error is no
    /// rewind: a failure reported during one must still rewind.)
    pub(super) rewinding: bool,
    /// The next backoff's length.
    pub(super) backoff: Duration,
    /// The last watermark sent; the next is never lower.
    pub(super) last_watermark: u64,
}

impl StreamState {
    /// A stream that `follower` reads from `from`, its checkpoint.
    pub(super) fn new(follower: Follower, from: &Position) -> StreamState {
        StreamState {
            follower,
            current: None,
            past_gap: None,
            window: AckWindow::new(from.next_seq),
            blocks: VecDeque::new(),
            in_flight: 0,
            acked_ts: from.acked_ts_ms,
            checkpointed: from.next_seq,
            read_through: from.next_seq,
            caught_up: false,
            retry_at: None,
            rewinding: false,
            backoff: FIRST_BACKOFF,
            last_watermark: from.acked_ts_ms,
        }
    }
}

/// A stream's first wait after a failure, doubling up to 30 s.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Moves a stream's contiguous point past `seq` if it can, dropping the
/// blocks that are now fully acknowledged.
pub(super) fn advance(st: &mut StreamState, seq: u64) {
    if st.window.ack(seq).is_some() {
        let through = st.window.acked_through();
        while st.blocks.front().is_some_and(|b| b.end_seq <= through) {
            if let Some(b) = st.blocks.pop_front() {
                st.acked_ts = st.acked_ts.max(b.max_ts);
            }
        }
        st.backoff = FIRST_BACKOFF;
    }
}

/// After a record's delivery failed: rewinds, unless a rewind that will
/// send it again already waits.
pub(super) fn resend_from_acked(st: &mut StreamState, metrics: &ShipperMetrics) {
    if !st.rewinding {
        rewind(st, metrics);
    }
}

/// Starts the stream again at its last contiguous acknowledgement with a
/// new producer: what the old one held is gone, and the failures that
/// grew the stream's backoff (or left a wait pending) were the old one's,
/// so it produces at once.
pub(super) fn restart(st: &mut StreamState, metrics: &ShipperMetrics) {
    st.in_flight = 0;
    read_again_from_acked(st, metrics);
    st.caught_up = false;
    st.retry_at = None;
    st.rewinding = false;
    st.backoff = FIRST_BACKOFF;
}

/// Starts the stream again at its last contiguous acknowledgement, after a
/// growing backoff.
pub(super) fn rewind(st: &mut StreamState, metrics: &ShipperMetrics) {
    read_again_from_acked(st, metrics);
    backoff(st);
    st.rewinding = true;
}

/// What a rewind and a restart share: counted as a retry, the stream is
/// read again from its last contiguous acknowledgement.
fn read_again_from_acked(st: &mut StreamState, metrics: &ShipperMetrics) {
    metrics.retries.fetch_add(1, Ordering::Relaxed);
    let from = st.window.acked_through();
    st.follower.rewind(from);
    st.window.reset();
    st.current = None;
    st.past_gap = None;
    st.blocks.clear();
    st.read_through = from;
}

/// Holds a stream back after a failure; until it reads to the end again it
/// is not caught up (its watermark then waits at what is acknowledged).
pub(super) fn backoff(st: &mut StreamState) {
    st.caught_up = false;
    st.retry_at = Some(Instant::now() + st.backoff);
    st.backoff = doubled(st.backoff);
}

/// The wait after one of `wait` failed again: twice as long, up to 30 s.
pub(super) fn doubled(wait: Duration) -> Duration {
    (wait * 2).min(Duration::from_secs(30))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A stream read to its end with every record acknowledged, the last
    /// one received at `acked_ts`.
    pub(in crate::shipper) fn caught_up(acked_ts: u64) -> StreamState {
        let from = Position {
            acked_ts_ms: acked_ts,
            ..Position::default()
        };
        let follower = Follower::new(std::path::Path::new("/nonexistent"), 0, 0, None);
        let mut st = StreamState::new(follower, &from);
        st.caught_up = true;
        st
    }

    /// A stream read through record 8 with records 0 to 4 acknowledged.
    fn read_to_9_acked_to_5() -> StreamState {
        let mut st = caught_up(0);
        st.window = AckWindow::new(5);
        st.read_through = 9;
        st
    }

    /// A delivery failure reported while a stream waits out a read error's
    /// backoff still rewinds it: the failed record is sent again. It used
    /// not to (the check was "no backoff pending"), which left a hole in
    /// the acknowledgements that held the checkpoint below it for good.
    /// A failure reported while a rewind waits adds no second rewind.
    #[test]
    fn a_failure_during_a_read_backoff_still_rewinds() {
        let metrics = ShipperMetrics::default();
        let mut st = read_to_9_acked_to_5();
        backoff(&mut st);
        resend_from_acked(&mut st, &metrics);
        assert_eq!(metrics.retries.load(Ordering::Relaxed), 1);
        assert!(st.rewinding);
        assert_eq!(st.read_through, 5, "read again from the failed record");
        resend_from_acked(&mut st, &metrics);
        assert_eq!(metrics.retries.load(Ordering::Relaxed), 1);
    }

    /// A new producer starts a stream at its last contiguous
    /// acknowledgement at once: the backoff that the old producer's
    /// failures grew (to 30 s, with a producer that could not be replaced
    /// for minutes) is not waited out again.
    #[test]
    fn a_new_producer_starts_a_stream_at_once() {
        let metrics = ShipperMetrics::default();
        let mut st = read_to_9_acked_to_5();
        st.in_flight = 4;
        for _ in 0..12 {
            resend_from_acked(&mut st, &metrics);
            st.rewinding = false;
        }
        assert_eq!(st.backoff, Duration::from_secs(30));
        restart(&mut st, &metrics);
        assert_eq!(
            st.read_through, 5,
            "read again from the first unacknowledged"
        );
        assert_eq!((st.in_flight, st.retry_at), (0, None));
        assert_eq!(st.backoff, FIRST_BACKOFF);
    }
}
