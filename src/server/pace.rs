//! Whether a worker batches its wake-ups now. A batched wait holds a
//! completion up to `server.wake_linger_us` for company: one wake-up per
//! batch instead of one per request, which is most of what a request costs
//! a worker on a virtual machine, but every request waits. That trade is
//! worth making when the core is busy and CPU is what runs out; on a quiet
//! worker it buys nothing anyone needs and costs every answer the linger.
//! So a worker batches only while its thread used more than
//! `server.wake_batch_busy_percent` of its core over the last
//! [`ON_AFTER`] looks of [`WINDOW`] each, and stops once the requests of
//! one look would have used less than seven eighths of that unbatched
//! (as adaptive interrupt moderation does on a network card, by packet
//! rate). One busy look is not enough:
//! on a noisy VM a worker at 20k/s, about 40% of its core, started
//! batching in 4 of 6 runs of 10 s when one look sufficed and in 1 of 6
//! with two (`bench/results/pace-20261202-1636.md`), and the four were
//! still batching at the end, every answer waiting up to a linger.
//!
//! A batched worker cannot see what it would use unbatched: batching
//! lowers the share by a fifth to a quarter on the reference VM (the
//! worker thread at 20k and 50k requests/s, 17.3 and 16.0 µs per request
//! unbatched, 14.5 and 12.5 batched; `bench/threads.sh`), and by a few
//! percent on the AMD VMs since (61-62% of the core batched at 50k/s,
//! 63-64% unbatched; `pace-20261204-1900.md`, `-1436.md`). So it prices
//! its requests at what one cost in its last unbatched look, and stops
//! when they would have used less than 7/8 of the bar. The stop once was
//! three fifths of the bar in the share used batched, a gap wide enough
//! for the reference VM's saving; on the AMD VM a worker that 2 s at
//! 100k/s had put into batching then stayed batched at 50k/s, every
//! answer waiting the linger (p50 127 µs). Priced, it stopped there in 3
//! of 3 runs (p50 26-28 µs), and in 19 runs from 20k to 100k/s none
//! switched more than its start and stop (`pace-20261204-2100.md`). A
//! price taken with the core full is low (a request costs less the busier
//! the worker): after 100k/s a worker stopped even at 70k/s, where it
//! uses 75-77% unbatched, under the bar. Had it been over, two looks at
//! the new price would have started it again.
//!
//! On the reference VM a worker at 20k/s used 35% of its core and at
//! 50k/s 80% (62% batched). On the AMD VMs since, 20k/s takes 45-55%,
//! and a bar of 50% started batching there in 4 of 9 runs, each answer
//! then waiting up to the linger (p99 at 20k/s 1.04x nginx's in the race
//! where that happened most, 0.50x unbatched); at 60% in none of 9, while
//! 40k/s and up still batch (`bench/results/pace-20261204-1121.md`).
//!
//! The default bar is 90%: where a worker's own queue adds less to an
//! answer's wait than the linger would, batching buys CPU with latency,
//! and the CPU was not short. It was 80% until the Intel VM of session
//! 56 ran a worker between the two: unbatched at 81-82% of its core
//! (130k and 145k requests/s, impressions), a bar of 90 spent 0.954x and
//! 0.949x nginx's CPU with p99 0.46x and 0.27x nginx's, where the bar of
//! 80 batched, spent 0.856x and 0.777x, and had p99 at its linger, 1.53x
//! and 1.45x nginx's (`bench/results/tails-20261206-0714.md`, `-0717.md`).
//! At 81-82% the worker kept up unbatched, its p99 under nginx's, so
//! batching is left to a busier one. The bar had moved from 60 to 80 for
//! the same reason, at 50k/s on an AMD VM:
//!
//! A batched worker's p99 cannot fall under its linger. At 50k/s (an
//! unbatched worker at 63-64% of its core on the AMD VM), over the
//! answers due outside the VM's kdamond runs, no batched window's p99
//! came under 289 µs in 20, where unbatched windows came down to 77-87
//! µs and nginx's to 109-120
//! (`bench/results/tails-20261204-1715.md`, `-1727.md`); in the quiet
//! hours of earlier sessions the batched p99 was 2.0-2.8x nginx's
//! (`tails-20261201-0816.md`, `tails-20261202-0729.md`, `-0732.md`).
//! Unbatched, its CPU there is still under nginx's: 0.90-0.97x
//! (`-1631.md`, `-1715.md`, `-1727.md`). Near a full core, batching is
//! what keeps a worker up: at 100k/s it spent 0.79-0.87x nginx's CPU
//! while nginx fell seconds behind (`-1432.md`, `-1735.md`). In between,
//! at 70k/s, a worker sat on the bar of 80 (77-86%), and p99 was in
//! milliseconds in a noisy hour whichever it chose
//! (`pace-20261204-1740.md`).
//!
//! The share is the thread's CPU time (its own system calls and the kernel
//! work done on its behalf included) over the wall time between two looks,
//! half a second apart, taken at the worker's 20 ms heartbeat: one clock
//! read per look, nothing per request. Over 100 ms the share is too noisy
//! on a VM: at 30k/s it moved between 24% and 56% from one look to the
//! next, and a worker switched 13 times in 12 s; over 500 ms, 26-51% and
//! twice.

use std::time::{Duration, Instant};

/// How much time one look covers at least.
pub const WINDOW: Duration = Duration::from_millis(500);

/// Looks in a row over the bar before a worker starts batching.
pub const ON_AFTER: u32 = 2;

/// What a look reads of its worker: the thread's CPU time and the
/// requests it has read, both since it started.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    /// The worker thread's CPU time ([`thread_cpu`]).
    pub cpu: Duration,
    /// Requests it has read, counted by route (`metrics::ROUTES`).
    pub requests: u64,
}

/// The batching decision of one worker.
#[derive(Debug)]
pub struct Pace {
    /// Percent of a core above which batching starts; 0 batches always.
    on_above: u32,
    batching: bool,
    /// Looks in a row over the bar while not batching.
    busy_looks: u32,
    /// CPU time per request, in nanoseconds, over the last look that was
    /// not batched and answered any.
    unbatched_ns: Option<u128>,
    last: Reading,
    last_wall: Instant,
}

impl Pace {
    /// A worker that starts quiet (not batching unless `busy_percent` is 0).
    pub fn new(busy_percent: u32, now: Reading, wall: Instant) -> Pace {
        Pace {
            on_above: busy_percent,
            batching: busy_percent == 0,
            busy_looks: 0,
            unbatched_ns: None,
            last: now,
            last_wall: wall,
        }
    }

    /// Whether the worker batches now.
    pub fn batching(&self) -> bool {
        self.batching
    }

    /// Once a [`WINDOW`] has passed since the last look, reads the worker
    /// (`read`), decides again, and returns the new decision when it
    /// changed.
    pub fn look(&mut self, wall: Instant, read: impl FnOnce() -> Reading) -> Option<bool> {
        let span = wall.saturating_duration_since(self.last_wall);
        if self.on_above == 0 || span < WINDOW {
            return None;
        }
        let now = read();
        let used = now.cpu.saturating_sub(self.last.cpu).as_nanos();
        let served = u128::from(now.requests.saturating_sub(self.last.requests));
        self.last = now;
        self.last_wall = wall;
        // Percent of the look, in hundredths, to compare in integers.
        let span = span.as_nanos().max(1);
        let bar = u128::from(self.on_above) * 100;
        let next = if self.batching {
            // Its share unbatched, as the requests of this look would
            // have cost at the last unbatched look's price.
            let cost = self.unbatched_ns.map_or(used, |ns| served * ns);
            cost.saturating_mul(10_000) / span * 8 >= bar * 7
        } else {
            self.unbatched_ns = used.checked_div(served).or(self.unbatched_ns);
            let share = used.saturating_mul(10_000) / span;
            self.busy_looks = if share > bar { self.busy_looks + 1 } else { 0 };
            self.busy_looks >= ON_AFTER
        };
        (next != self.batching).then(|| {
            self.batching = next;
            self.busy_looks = 0;
            next
        })
    }
}

/// The calling thread's CPU time so far.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A reading of `cpu` time and `requests` answered.
    fn at(cpu: Duration, requests: u64) -> Reading {
        Reading { cpu, requests }
    }

    /// A worker with the bar at `bar` percent, fed looks, each busy for a
    /// percent of its time and answering a number of requests: the
    /// decision after each.
    fn run(bar: u32, looks: &[(u32, u64)]) -> Vec<bool> {
        let mut wall = Instant::now();
        let mut pace = Pace::new(bar, Reading::default(), wall);
        let mut now = Reading::default();
        looks
            .iter()
            .map(|&(percent, requests)| {
                wall += WINDOW;
                now.cpu += WINDOW * percent / 100;
                now.requests += requests;
                pace.look(wall, || now);
                pace.batching()
            })
            .collect()
    }

    #[test]
    fn batches_above_the_bar_and_stops_below_seven_eighths_of_it_unbatched() {
        let quiet = Pace::new(50, Reading::default(), Instant::now());
        assert!(!quiet.batching(), "a worker starts quiet");
        // 50% is not above the bar; 51% twice in a row is, at 0.5 ms of
        // CPU a request (510 requests in 255 ms). Batched, what it uses
        // does not decide but what its requests would have cost unbatched:
        // 440 of them 44% of a look, which keeps it, 430 43%, under 7/8 of
        // 50, which ends it. Starting again takes two looks.
        assert_eq!(
            run(
                50,
                &[
                    (10, 100),
                    (50, 500),
                    (51, 510),
                    (51, 510),
                    (30, 510),
                    (30, 440),
                    (30, 430),
                    (49, 490),
                    (51, 510),
                    (60, 600)
                ]
            ),
            [false, false, false, true, true, true, false, false, false, true]
        );
    }

    #[test]
    fn a_worker_that_batching_saved_little_stops_when_its_load_falls() {
        // A burst fills the core at 1000 requests a look (0.5 ms each).
        // Down to 600 a look it would use 60% unbatched, under 70: it
        // stops, though batched it still uses 62%, more than the 48% that
        // three fifths of the bar, a share of batched use, would need.
        assert_eq!(
            run(80, &[(100, 1000), (100, 1000), (62, 600)]),
            [false, true, false]
        );
    }

    #[test]
    fn a_worker_that_batching_saved_much_keeps_batching() {
        // At 85% unbatched for 850 requests a look, batching takes a
        // quarter off: 64%, under 70, but its requests would still cost
        // 85% unbatched, so it stays.
        assert_eq!(
            run(80, &[(85, 850), (85, 850), (64, 850), (64, 850)]),
            [false, true, true, true]
        );
    }

    #[test]
    fn without_a_price_a_batched_worker_goes_by_what_it_uses() {
        // Busy with no request answered, no look priced one: 44% batched
        // keeps it, 43% ends it.
        assert_eq!(
            run(50, &[(60, 0), (60, 0), (44, 0), (43, 0)]),
            [false, true, true, false]
        );
    }

    #[test]
    fn one_busy_look_among_quiet_ones_does_not_start_batching() {
        // Each busy look follows a quiet one, which starts the count again;
        // the last two are in a row.
        let looks = [40, 90, 40, 90, 45, 100, 100].map(|p| (p, u64::from(p) * 10));
        assert_eq!(
            run(50, &looks),
            [false, false, false, false, false, false, true]
        );
    }

    #[test]
    fn looks_closer_than_a_window_decide_nothing() {
        let t0 = Instant::now();
        let mut pace = Pace::new(50, Reading::default(), t0);
        // 20 ms at full use is not a window: no decision, and the next
        // look measures from the start (20 ms of a window is under 50%).
        let busy = |percent: u32| 20 * MS + WINDOW * percent / 100;
        let early = pace.look(t0 + 20 * MS, || panic!("the worker read early"));
        assert_eq!(early, None);
        assert_eq!(pace.look(t0 + WINDOW, || at(busy(0), 10)), None);
        assert_eq!(pace.look(t0 + 2 * WINDOW, || at(busy(60), 70)), None);
        assert_eq!(
            pace.look(t0 + 3 * WINDOW, || at(busy(120), 130)),
            Some(true)
        );
        assert_eq!(
            pace.look(t0 + 4 * WINDOW, || at(busy(125), 135)),
            Some(false)
        );
        assert_eq!(pace.look(t0 + 5 * WINDOW, || at(busy(125), 135)), None);
    }

    #[test]
    fn zero_batches_always() {
        assert!(Pace::new(0, Reading::default(), Instant::now()).batching());
        assert_eq!(run(0, &[(0, 0), (100, 1000), (0, 0)]), [true; 3]);
    }

    #[test]
    fn counters_that_go_back_are_no_use() {
        let t0 = Instant::now();
        let mut pace = Pace::new(50, at(5 * WINDOW, 1000), t0);
        // CPU time or a count read lower than before (neither can, but
        // nothing here may panic on it) counts as none.
        assert_eq!(pace.look(t0 + WINDOW, || at(WINDOW, 10)), None);
        assert!(!pace.batching());
    }

    #[test]
    fn the_thread_clock_advances_with_work() {
        let (before, wall) = (thread_cpu(), Instant::now());
        let mut x = 0u64;
        while thread_cpu() < before + MS {
            x = std::hint::black_box(x.wrapping_add(1));
            assert!(
                wall.elapsed() < Duration::from_secs(10),
                "no CPU time in 10 s"
            );
        }
        assert!(x > 0);
    }
}
