//! Lock-free single-producer single-consumer byte ring: how an event leaves
//! the request path. A worker copies each encoded record into its own ring
//! (no allocation, no lock, no syscall); one consumer thread drains it.
//!
//! This is the only module with `unsafe`. The model is rtrb: head and tail on
//! their own cache lines; the producer caches the consumer's position and
//! touches the shared line only when its cached view says "full", and the
//! consumer reads the producer's once per drain.
//!
//! # Invariants
//! - `tail` is written only by the producer, `head` only by the consumer;
//!   both only grow. `tail - head <= capacity` at all times.
//! - Bytes in `[head, tail)` belong to the consumer, all others to the
//!   producer. The producer publishes bytes with a Release store of `tail`
//!   after writing them; the consumer returns them with a Release store of
//!   `head` after reading them. Each side Acquire-loads the other's position
//!   before touching bytes it hands over.
//! - A record is a little-endian `u32` length, then the bytes, padded to a
//!   multiple of 4. All positions are multiples of 4, so at least 4 bytes
//!   remain before the end of the buffer whenever any do; a length of
//!   `u32::MAX` there means "skip to the start".
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::cell::UnsafeCell;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

const WRAP: u32 = u32::MAX;

struct Shared {
    buf: Box<[UnsafeCell<u8>]>,
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
}

// SAFETY: the bytes behind the UnsafeCells are shared between exactly one
// Producer and one Consumer, which by the module invariants never access the
// same byte at the same time; head and tail are atomics.
unsafe impl Sync for Shared {}

impl Shared {
    fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn base(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.buf.as_ptr())
    }
}

/// A record that can never fit: longer than a quarter of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Not enough free space now; the consumer is behind.
    #[error("ring full")]
    Full,
    /// The record is larger than the ring accepts at all.
    #[error("record too large for the ring")]
    TooLarge,
}

/// Bytes a draining consumer reads before it hands them back mid-pass.
const RETURN_EVERY: usize = 64 << 10;

/// The writing end, owned by one worker.
pub struct Producer {
    shared: Arc<Shared>,
    tail: usize,
    cached_head: usize,
}

/// The reading end, owned by the consumer thread.
pub struct Consumer {
    shared: Arc<Shared>,
    head: usize,
}

/// A read-only view of a ring's fill level, for metrics.
#[derive(Clone)]
pub struct RingGauge {
    shared: Arc<Shared>,
}

impl RingGauge {
    /// Bytes published and not yet drained (a snapshot).
    pub fn used_bytes(&self) -> usize {
        // Head is loaded second and may have passed the tail loaded first.
        let tail = self.shared.tail.load(Ordering::Acquire);
        tail.saturating_sub(self.shared.head.load(Ordering::Acquire))
    }

    /// Total capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
}

/// A ring of `capacity` bytes, a power of two of at least 64.
pub fn ring(capacity: usize) -> (Producer, Consumer) {
    assert!(
        capacity.is_power_of_two() && capacity >= 64,
        "ring capacity {capacity}"
    );
    let shared = Arc::new(Shared {
        buf: (0..capacity).map(|_| UnsafeCell::new(0)).collect(),
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
    });
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            cached_head: 0,
        },
        Consumer { shared, head: 0 },
    )
}

#[inline]
fn padded(len: usize) -> usize {
    4 + ((len + 3) & !3)
}

impl Producer {
    /// Largest record the ring accepts.
    pub fn max_record(&self) -> usize {
        self.shared.capacity() / 4 - 4
    }

    /// Bytes the producer can still write without waiting for the consumer
    /// (as of the consumer's last published position).
    pub fn free_bytes(&mut self) -> usize {
        self.cached_head = self.shared.head.load(Ordering::Acquire);
        self.shared.capacity() - (self.tail - self.cached_head)
    }

    /// Whether more than a quarter of the ring waits for the consumer: the
    /// point where the consumer should stop napping and be lifted. Touches
    /// the shared line only when the cached view says so.
    #[inline]
    pub fn past_quarter(&mut self) -> bool {
        let quarter = self.shared.capacity() / 4;
        if self.tail - self.cached_head <= quarter {
            return false;
        }
        self.cached_head = self.shared.head.load(Ordering::Acquire);
        self.tail - self.cached_head > quarter
    }

    /// Whether `records` records totalling `bytes` bytes would all fit now.
    /// Only the producer adds bytes, so a `true` stays true until it pushes.
    pub fn fits(&mut self, records: usize, bytes: usize) -> bool {
        // Each record may waste up to its own padded size at the wrap point.
        let worst = 2 * (bytes + records * 8);
        worst <= self.free_bytes()
    }

    /// Appends one record, or says why not. Never blocks.
    pub fn push(&mut self, record: &[u8]) -> Result<(), PushError> {
        self.push_parts(&[], record)
    }

    /// Appends one record made of `head` then `body`, as [`Producer::push`]
    /// would their concatenation, without concatenating them first.
    pub fn push_parts(&mut self, head: &[u8], body: &[u8]) -> Result<(), PushError> {
        let len = head.len() + body.len();
        if len > self.max_record() {
            return Err(PushError::TooLarge);
        }
        let cap = self.shared.capacity();
        let need = padded(len);
        let mut idx = self.tail & (cap - 1);
        let skip = if cap - idx < need { cap - idx } else { 0 };
        if self.tail + skip + need - self.cached_head > cap {
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            if self.tail + skip + need - self.cached_head > cap {
                return Err(PushError::Full);
            }
        }
        let base = self.shared.base();
        if skip > 0 {
            // SAFETY: [tail, tail + skip) is free (checked against head
            // above), idx + 4 <= cap because positions are multiples of 4
            // and skip > 0, and only this producer writes free bytes.
            unsafe {
                base.add(idx)
                    .cast::<[u8; 4]>()
                    .write_unaligned(WRAP.to_le_bytes())
            };
            self.tail += skip;
            idx = 0;
        }
        // SAFETY: [idx, idx + need) lies inside the buffer (need <= cap - idx
        // after the wrap), holds the length word and both parts (4 + len <=
        // need), and is free by the head check; the consumer reads it only
        // after the Release store of tail below.
        unsafe {
            base.add(idx)
                .cast::<[u8; 4]>()
                .write_unaligned((len as u32).to_le_bytes());
            std::ptr::copy_nonoverlapping(head.as_ptr(), base.add(idx + 4), head.len());
            std::ptr::copy_nonoverlapping(
                body.as_ptr(),
                base.add(idx + 4 + head.len()),
                body.len(),
            );
        }
        self.tail += need;
        self.shared.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Total capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
}

impl Consumer {
    /// Calls `f` with every record published so far, in order, then returns
    /// their space to the producer. Returns how many records it read.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        self.drain_at_most(usize::MAX, &mut f)
    }

    /// Like [`Consumer::drain`], reading at most `max` records.
    pub fn drain_at_most(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let tail = self.shared.tail.load(Ordering::Acquire);
        self.drain_to(tail, max, &mut |rec: &[u8]| {
            f(rec);
            ControlFlow::Continue(())
        })
        .0
    }

    /// Like [`Consumer::drain`] (what was published when it began, no
    /// more, so a producer that keeps up cannot make it endless), calling
    /// `pause` after every `every` records while more wait, with whether
    /// more than a quarter of the ring still waits ([`Consumer::past_quarter`]).
    /// Space goes back to the producer before each pause. A record `f`
    /// answers `Break` to is not taken: it and every later one stay in the
    /// ring, and the drain ends there.
    pub fn drain_pausing(
        &mut self,
        every: usize,
        mut f: impl FnMut(&[u8]) -> ControlFlow<()>,
        mut pause: impl FnMut(bool),
    ) -> usize {
        let tail = self.shared.tail.load(Ordering::Acquire);
        let mut n = 0;
        loop {
            let (got, flow) = self.drain_to(tail, every.max(1), &mut f);
            n += got;
            if self.head >= tail || flow.is_break() {
                return n;
            }
            pause(self.past_quarter());
        }
    }

    /// Reads at most `max` records of those published up to `tail`, up to
    /// the first one `f` answers `Break` to, which stays unread.
    fn drain_to(
        &mut self,
        tail: usize,
        max: usize,
        f: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> (usize, ControlFlow<()>) {
        let mut n = 0;
        let mut published = self.head;
        let mut flow = ControlFlow::Continue(());
        while n < max {
            let Some(record) = self.first_before(tail) else {
                break;
            };
            let len = record.len();
            flow = f(record);
            if flow.is_break() {
                break;
            }
            self.head += padded(len);
            n += 1;
            // A long pass hands space back as it goes, so that the
            // producer does not see a full ring while the consumer works.
            if self.head - published >= RETURN_EVERY {
                self.shared.head.store(self.head, Ordering::Release);
                published = self.head;
            }
        }
        self.shared.head.store(self.head, Ordering::Release);
        (n, flow)
    }

    /// The oldest record not yet drained, left in the ring.
    pub fn peek(&mut self) -> Option<&[u8]> {
        let tail = self.shared.tail.load(Ordering::Acquire);
        self.first_before(tail)
    }

    /// The record at `head`, if one was published before `tail` (which the
    /// caller Acquire-loaded), left in the ring. A wrap marker on the way
    /// is passed: nothing lies between it and the end of the buffer, and
    /// its space goes back with the next store of head.
    fn first_before(&mut self, tail: usize) -> Option<&[u8]> {
        let cap = self.shared.capacity();
        let base = self.shared.base();
        while self.head < tail {
            let idx = self.head & (cap - 1);
            // SAFETY: [head, tail) was published by the producer and stays
            // untouched until head moves past it; idx + 4 <= cap since
            // positions are multiples of 4.
            let len =
                u32::from_le_bytes(unsafe { base.add(idx).cast::<[u8; 4]>().read_unaligned() });
            if len == WRAP {
                self.head += cap - idx;
                continue;
            }
            // SAFETY: the producer wrote len bytes after the header within
            // the buffer and published them before tail; they stay ours
            // while self is borrowed, since only a drain moves head past
            // them (with the Release store that hands them back).
            return Some(unsafe { std::slice::from_raw_parts(base.add(idx + 4), len as usize) });
        }
        None
    }

    /// Bytes waiting to be drained.
    pub fn backlog(&self) -> usize {
        self.shared.tail.load(Ordering::Acquire) - self.head
    }

    /// Whether more than a quarter of the ring waits to be drained: the
    /// producer's [`Producer::past_quarter`], seen from this end.
    pub fn past_quarter(&self) -> bool {
        self.backlog() > self.shared.capacity() / 4
    }

    /// A view of the fill level that any thread may read (metrics).
    pub fn gauge(&self) -> RingGauge {
        RingGauge {
            shared: self.shared.clone(),
        }
    }

    /// Total capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_all(c: &mut Consumer) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        c.drain(|r| v.push(r.to_vec()));
        v
    }

    /// Pushes one record by `push`, draining into `got` while the ring is
    /// full.
    fn push_draining(
        p: &mut Producer,
        c: &mut Consumer,
        got: &mut Vec<Vec<u8>>,
        push: impl Fn(&mut Producer) -> Result<(), PushError>,
    ) {
        loop {
            match push(p) {
                Ok(()) => return,
                Err(PushError::Full) => got.extend(drain_all(c)),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn records_come_out_in_order_across_wraps() {
        let (mut p, mut c) = ring(256);
        let mut expect = Vec::new();
        let mut got = Vec::new();
        for i in 0..1000u32 {
            let rec = vec![i as u8; (i % 37) as usize];
            push_draining(&mut p, &mut c, &mut got, |p| p.push(&rec));
            expect.push(rec);
        }
        got.extend(drain_all(&mut c));
        assert_eq!(got, expect);
    }

    #[test]
    fn a_record_pushed_in_two_parts_comes_out_whole() {
        let (mut p, mut c) = ring(256);
        let mut expect = Vec::new();
        let mut got = Vec::new();
        for i in 0..1000u32 {
            let (head, body) = (
                vec![0xAA; (i % 5) as usize],
                vec![i as u8; (i % 37) as usize],
            );
            push_draining(&mut p, &mut c, &mut got, |p| p.push_parts(&head, &body));
            expect.push([head, body].concat());
        }
        got.extend(drain_all(&mut c));
        assert_eq!(got, expect);
        // Both parts count toward the largest record.
        assert_eq!(p.push_parts(&[0; 6], &[0; 57]), Err(PushError::TooLarge));
        p.push_parts(&[0; 6], &[0; 54]).unwrap();
    }

    #[test]
    fn full_and_too_large_are_reported() {
        let (mut p, mut c) = ring(64);
        assert_eq!(p.max_record(), 12);
        assert_eq!(p.push(&[0; 13]), Err(PushError::TooLarge));
        for _ in 0..4 {
            p.push(&[1; 12]).unwrap();
        }
        assert_eq!(p.push(&[]), Err(PushError::Full));
        assert_eq!(c.gauge().used_bytes(), 64);
        assert_eq!(c.drain_at_most(1, |_| {}), 1);
        p.push(&[2; 12]).unwrap();
        assert_eq!(drain_all(&mut c).len(), 4);
        assert_eq!(c.gauge().used_bytes(), 0);
    }

    #[test]
    fn drain_pausing_pauses_between_chunks_and_stops_at_what_was_published() {
        let (p, mut c) = ring(4096);
        let p = std::cell::RefCell::new(p);
        for i in 0..10u8 {
            p.borrow_mut().push(&[i; 20]).unwrap();
        }
        let gauge = c.gauge();
        let mut seen = Vec::new();
        let mut used_at_pauses = Vec::new();
        let n = c.drain_pausing(
            4,
            |rec| {
                seen.push(rec[0]);
                ControlFlow::Continue(())
            },
            |pressed| {
                used_at_pauses.push((gauge.used_bytes(), pressed));
                // Published during the drain: left for the next one.
                p.borrow_mut().push(&[99; 20]).unwrap();
            },
        );
        assert_eq!(n, 10);
        assert_eq!(seen, (0..10).collect::<Vec<u8>>());
        // After 4 and 8 records, none after the last; space handed back
        // before each pause (24 bytes a record, and the pushes meanwhile),
        // all of it below a quarter of the ring.
        assert_eq!(used_at_pauses, [(6 * 24, false), (3 * 24, false)]);
        let mut rest = Vec::new();
        assert_eq!(c.drain_pausing(4, |rec| keep(&mut rest, rec), |_| {}), 2);
        assert_eq!(rest, [99, 99]);
        assert_eq!(
            c.drain_pausing(
                4,
                |_| ControlFlow::Continue(()),
                |_| panic!("nothing to pause for")
            ),
            0
        );
    }

    fn keep(seen: &mut Vec<u8>, rec: &[u8]) -> ControlFlow<()> {
        seen.push(rec[0]);
        ControlFlow::Continue(())
    }

    #[test]
    fn peek_shows_the_oldest_record_and_leaves_it() {
        let (mut p, mut c) = ring(1024);
        assert_eq!(c.peek(), None);
        for i in 0..4u8 {
            p.push(&[i; 200]).unwrap();
        }
        assert_eq!(c.peek().map(|r| r[0]), Some(0));
        assert_eq!(c.drain_at_most(4, |_| {}), 4);
        // 816 bytes used so far: this one wraps to the start, past the
        // marker peek must skip.
        p.push(&[4; 250]).unwrap();
        assert_eq!(c.peek().map(|r| (r[0], r.len())), Some((4, 250)));
        assert_eq!(c.peek().map(|r| r[0]), Some(4), "still there");
        assert_eq!(drain_all(&mut c), vec![vec![4; 250]]);
        assert_eq!(c.peek(), None);
        assert_eq!(p.free_bytes(), 1024);
    }

    /// A record the consumer cannot take yet (its store's write failed)
    /// stays in the ring with every one after it, for the next drain.
    #[test]
    fn a_record_refused_by_break_stays_for_the_next_drain() {
        let (mut p, mut c) = ring(1024);
        for i in 0..10u8 {
            p.push(&[i; 20]).unwrap();
        }
        let mut seen = Vec::new();
        let mut pauses = 0;
        let n = c.drain_pausing(
            4,
            |rec| {
                if rec[0] == 6 {
                    return ControlFlow::Break(());
                }
                keep(&mut seen, rec)
            },
            |_| pauses += 1,
        );
        assert_eq!(n, 6);
        assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
        assert_eq!(pauses, 1, "after 4 records; none after the break");
        assert_eq!(c.backlog(), 4 * 24, "records 6 to 9 still wait");
        assert_eq!(
            p.free_bytes(),
            1024 - 4 * 24,
            "the 6 taken were handed back"
        );
        let mut rest = Vec::new();
        assert_eq!(c.drain_pausing(4, |rec| keep(&mut rest, rec), |_| {}), 4);
        assert_eq!(rest, [6, 7, 8, 9]);
    }

    /// Pauses say whether more than a quarter of the ring still waits: a
    /// backlog past it is what a pass must not yield its way through.
    #[test]
    fn drain_pausing_tells_each_pause_whether_a_quarter_still_waits() {
        let (mut p, mut c) = ring(1024);
        // 20 records of 24 bytes: 480 bytes waiting, a quarter is 256.
        for i in 0..20u8 {
            p.push(&[i; 20]).unwrap();
        }
        let mut pressed_at = Vec::new();
        c.drain_pausing(
            4,
            |_| ControlFlow::Continue(()),
            |pressed| pressed_at.push(pressed),
        );
        // Waiting at each pause: 384, 288, 192, 96 bytes.
        assert_eq!(pressed_at, [true, true, false, false]);
    }

    #[test]
    fn past_quarter_follows_what_the_consumer_drained() {
        let (mut p, mut c) = ring(1024);
        // 60 bytes of record take 64 of ring. Both ends agree throughout.
        for _ in 0..4 {
            p.push(&[7; 60]).unwrap();
        }
        assert!(!p.past_quarter(), "256 of 1024 is a quarter, not past it");
        assert!(!c.past_quarter());
        assert_eq!(c.backlog(), 256, "four records of 4 + 60 bytes");
        p.push(&[7; 60]).unwrap();
        assert!(p.past_quarter());
        assert!(c.past_quarter());
        assert_eq!(c.backlog(), 320);
        assert_eq!(c.drain_at_most(2, |_| {}), 2);
        assert!(!p.past_quarter(), "drained back to 192 bytes");
        assert!(!c.past_quarter());
        assert_eq!(c.backlog(), 192);
        for _ in 0..3 {
            p.push(&[7; 60]).unwrap();
        }
        assert!(p.past_quarter());
        assert!(c.past_quarter());
        drain_all(&mut c);
        assert!(!p.past_quarter());
        assert!(!c.past_quarter());
    }

    #[test]
    fn a_long_drain_hands_space_back_as_it_goes() {
        let (mut p, mut c) = ring(1 << 20);
        for _ in 0..512 {
            p.push(&[3; 1020]).unwrap();
        }
        let full = p.free_bytes();
        let mut seen = Vec::new();
        c.drain(|_| seen.push(p.free_bytes()));
        assert_eq!(seen.len(), 512);
        // 1 KiB per record: space comes back every 64 records, not at the end.
        assert_eq!(seen[63], full);
        assert_eq!(seen[64], full + RETURN_EVERY);
        assert_eq!(seen[511], full + 7 * RETURN_EVERY);
        assert_eq!(p.free_bytes(), 1 << 20);
    }

    #[test]
    fn fits_is_conservative() {
        let (mut p, _c) = ring(1024);
        assert!(p.fits(10, 100));
        assert!(!p.fits(10, 500));
    }

    #[test]
    fn two_threads_pass_a_million_records() {
        let (mut p, mut c) = ring(4096);
        const N: u64 = 1_000_000;
        let writer = std::thread::spawn(move || {
            let mut i = 0u64;
            while i < N {
                let len = (i % 50) as usize + 8;
                let mut rec = [0u8; 64];
                rec[..8].copy_from_slice(&i.to_le_bytes());
                rec[8..len].fill(i as u8);
                match p.push(&rec[..len]) {
                    Ok(()) => i += 1,
                    Err(PushError::Full) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let mut next = 0u64;
        while next < N {
            c.drain(|r| {
                let i = u64::from_le_bytes(r[..8].try_into().unwrap());
                assert_eq!(i, next);
                assert_eq!(r.len(), (i % 50) as usize + 8);
                assert!(r[8..].iter().all(|&b| b == i as u8));
                next += 1;
            });
        }
        writer.join().unwrap();
    }
}
