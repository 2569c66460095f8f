//! The last events of one advertiser, kept for a page that just opens, and
//! how many of them are kept. Copying every record into its advertiser's
//! buffers was about 40% of the view's work (the buffers are cold by the
//! time they come round again), while a page shows only the last
//! [`RECENT`]. So the buffers take an advertiser's events at a bounded
//! rate: every one while it sends a few a second (an integration team
//! firing test tags sees all of them), and an even sample of a busy one,
//! whose every event the live stream still carries.
//!
//! # Invariants
//! - At most [`RECENT`] buffers, oldest first; a buffer grows only by what
//!   the budget gives and is reused as the events rotate.
//! - Events are kept by the rate rule (GCRA, a token bucket in one number)
//!   on their receive time: a burst of `BURST`, then one per
//!   `INTERVAL_MS`.

use std::collections::VecDeque;

use super::Budget;

/// Recent events kept per advertiser for a page that just opened.
pub const RECENT: usize = 50;
/// Records longer than this are counted and streamed, not kept as recent.
const RECORD_MAX: usize = 16 << 10;
/// The least a buffer is given.
const BUF_MIN: usize = 1 << 10;
/// Events kept at once after a quiet spell.
const BURST: u64 = 10;
/// Then one event kept per this many milliseconds: ten a second.
const INTERVAL_MS: u64 = 100;

/// How long a busy advertiser's recent events take to fill all
/// [`RECENT`] buffers, after which keeping them allocates nothing.
pub const FILL_MS: u64 = (RECENT as u64 - BURST) * INTERVAL_MS;

/// One advertiser's recent events.
#[derive(Default)]
pub struct Recent {
    /// The last events kept, oldest first, in buffers reused as they rotate.
    bufs: VecDeque<Vec<u8>>,
    /// When the next event would be kept with no burst left (ms, receive
    /// time): the rate rule's whole state.
    next_ms: u64,
}

impl Recent {
    /// What a new advertiser's recent events cost before any is kept.
    pub const COST: usize = RECENT.next_power_of_two() * size_of::<Vec<u8>>();

    /// Offers the event `rec`, received at `ts_ms`. Returns false when the
    /// rate rule took it but it was not kept: too long, or a buffer would
    /// have to grow past the budget.
    pub fn offer(&mut self, ts_ms: u64, rec: &[u8], budget: &mut Budget) -> bool {
        let due = self.next_ms.max(ts_ms);
        if due > ts_ms.saturating_add((BURST - 1) * INTERVAL_MS) {
            return true;
        }
        self.next_ms = due.saturating_add(INTERVAL_MS);
        if rec.len() > RECORD_MAX {
            return true;
        }
        let full = self.bufs.len() >= RECENT;
        let mut buf = if full {
            self.bufs.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        // Whole powers of two, and a kibibyte at least (most records are
        // shorter), so that buffers stop growing once they have held the
        // longest of the records that pass through them: kept at the rate
        // above, a buffer sees a new record only every few seconds.
        let cap = rec.len().next_power_of_two().max(BUF_MIN);
        let grows = buf.capacity() < rec.len();
        if grows && !budget.take(cap - buf.capacity()) {
            if full {
                self.bufs.push_front(buf);
            }
            return false;
        }
        buf.clear();
        if grows {
            buf.reserve_exact(cap);
        }
        buf.extend_from_slice(rec);
        self.bufs.push_back(buf);
        true
    }

    /// The events kept, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Vec<u8>> {
        self.bufs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(r: &Recent) -> Vec<String> {
        r.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn a_few_events_a_second_are_all_kept() {
        let mut r = Recent::default();
        let mut budget = Budget::new(1 << 20);
        // A burst of ten test tags at once, then one every 200 ms.
        for i in 0..BURST {
            assert!(r.offer(1_000_000, format!("b{i}").as_bytes(), &mut budget));
        }
        for i in 0..20u64 {
            r.offer(1_001_000 + i * 200, format!("s{i}").as_bytes(), &mut budget);
        }
        let got = kept(&r);
        assert_eq!(got.len(), 30);
        assert_eq!(got[..2], ["b0", "b1"]);
        assert_eq!(got[29], "s19");
    }

    #[test]
    fn a_busy_advertiser_is_sampled_evenly_and_the_newest_are_kept() {
        let mut r = Recent::default();
        let mut budget = Budget::new(1 << 20);
        // 1,000 events a second for ten seconds.
        for i in 0..10_000u64 {
            r.offer(5_000_000 + i, format!("e{i}").as_bytes(), &mut budget);
        }
        let got: Vec<u64> = kept(&r).iter().map(|s| s[1..].parse().unwrap()).collect();
        assert_eq!(got.len(), RECENT);
        // The newest kept is within one interval of the last event, and
        // after the first burst they are one interval apart.
        assert!(9_999 - got[RECENT - 1] < INTERVAL_MS);
        assert!(got.windows(2).all(|w| w[1] - w[0] == INTERVAL_MS));
    }

    #[test]
    fn a_long_record_is_streamed_not_kept() {
        let mut r = Recent::default();
        let mut budget = Budget::new(1 << 20);
        assert!(r.offer(1, &vec![b'x'; RECORD_MAX + 1], &mut budget));
        assert_eq!(r.iter().count(), 0);
    }
}
