//! Whether a worker batches its wake-ups now. A batched wait holds a
//! completion up to `server.wake_linger_us` for company: one wake-up per
//! batch instead of one per request, which is most of what a request costs
//! a worker on a virtual machine, but every request waits. That trade is
//! worth making when the core is busy and CPU is what runs out; on a quiet
//! worker it buys nothing anyone needs and costs every answer the linger.
//! So a worker batches only while its thread used more than
//! `server.wake_batch_busy_percent` of its core over the last
//! [`ON_AFTER`] looks of [`WINDOW`] each, and stops once it uses less
//! than three fifths of that in one (as adaptive interrupt moderation
//! does on a network card, by packet rate). One busy look is not enough:
//! on a noisy VM a worker at 20k/s, about 40% of its core, started
//! batching in 4 of 6 runs of 10 s when one look sufficed and in 1 of 6
//! with two (`bench/results/pace-20261202-1636.md`), and the four were
//! still batching at the end, every answer waiting up to a linger.
//! Batching itself lowers the share, by a fifth to a quarter on the
//! reference VM (the worker thread at 20k and 50k requests/s, 17.3 and
//! 16.0 µs per request unbatched, 14.5 and 12.5 batched; `bench/
//! threads.sh`): the gap has to be wider than that, or a worker that
//! starts batching would stop at its next look. On that VM a worker at
//! 20k/s used 35% of its core and at 50k/s 80% (62% batched). On the AMD
//! VMs since, 20k/s takes 45-55%, and a bar of 50% started batching there
//! in 4 of 9 runs, each answer then waiting up to the linger (p99 at
//! 20k/s 1.04x nginx's in the race where that happened most, 0.50x
//! unbatched); at 60% in none of 9, while 40k/s and up still batch
//! (`bench/results/pace-20261204-1121.md`).
//!
//! The default bar is 80%: where a worker's own queue adds less to an
//! answer's wait than the linger would, batching buys CPU with latency,
//! and the CPU was not short. A batched worker's p99 cannot fall under
//! its linger. At 50k/s (an unbatched worker at 63-64% of its core on
//! the AMD VM), over the answers due outside the VM's kdamond runs, no
//! batched window's p99 came under 289 µs in 20, where unbatched windows
//! came down to 77-87 µs and nginx's to 109-120
//! (`bench/results/tails-20261204-1715.md`, `-1727.md`); in the quiet
//! hours of earlier sessions the batched p99 was 2.0-2.8x nginx's
//! (`tails-20261201-0816.md`, `tails-20261202-0729.md`, `-0732.md`).
//! Unbatched, its CPU there is still under nginx's: 0.90-0.97x
//! (`-1631.md`, `-1715.md`, `-1727.md`). Near a full core, batching is
//! what keeps a worker up: at 100k/s it spent 0.79-0.87x nginx's CPU
//! while nginx fell seconds behind (`-1432.md`, `-1735.md`). In between,
//! at 70k/s, a worker sits on the bar (77-86%), and p99 was in
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

/// The batching decision of one worker.
#[derive(Debug)]
pub struct Pace {
    /// Percent of a core above which batching starts; 0 batches always.
    on_above: u32,
    batching: bool,
    /// Looks in a row over the bar while not batching.
    busy_looks: u32,
    last_cpu: Duration,
    last_wall: Instant,
}

impl Pace {
    /// A worker that starts quiet (not batching unless `busy_percent` is 0).
    pub fn new(busy_percent: u32, cpu: Duration, now: Instant) -> Pace {
        Pace {
            on_above: busy_percent,
            batching: busy_percent == 0,
            busy_looks: 0,
            last_cpu: cpu,
            last_wall: now,
        }
    }

    /// Whether the worker batches now.
    pub fn batching(&self) -> bool {
        self.batching
    }

    /// Once a [`WINDOW`] has passed since the last look, reads the
    /// thread's CPU time (`cpu`), decides again, and returns the new
    /// decision when it changed.
    pub fn look(&mut self, now: Instant, cpu: impl FnOnce() -> Duration) -> Option<bool> {
        let wall = now.saturating_duration_since(self.last_wall);
        if self.on_above == 0 || wall < WINDOW {
            return None;
        }
        let cpu = cpu();
        let used = cpu.saturating_sub(self.last_cpu);
        self.last_cpu = cpu;
        self.last_wall = now;
        // Percent of the window, in hundredths, to compare in integers.
        let share = used.as_micros().saturating_mul(10_000) / wall.as_micros().max(1);
        let bar = u128::from(self.on_above) * 100;
        let next = if self.batching {
            share * 5 >= bar * 3
        } else {
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

    /// Feeds windows busy for the given percents of their time and
    /// returns the decision after each.
    fn run(pace: &mut Pace, t0: Instant, cpu0: Duration, windows: &[u32]) -> Vec<bool> {
        let (mut now, mut cpu) = (t0, cpu0);
        windows
            .iter()
            .map(|&percent| {
                now += WINDOW;
                cpu += WINDOW * percent / 100;
                pace.look(now, || cpu);
                pace.batching()
            })
            .collect()
    }

    #[test]
    fn batches_above_the_bar_and_stops_below_three_fifths_of_it() {
        let t0 = Instant::now();
        let mut pace = Pace::new(50, Duration::ZERO, t0);
        assert!(!pace.batching(), "a worker starts quiet");
        // 50% is not above the bar; 51% twice in a row is. Once batching,
        // 30% keeps it and 29% ends it; starting again takes two looks.
        assert_eq!(
            run(
                &mut pace,
                t0,
                Duration::ZERO,
                &[10, 50, 51, 51, 40, 30, 29, 49, 51, 60]
            ),
            [false, false, false, true, true, true, false, false, false, true]
        );
    }

    #[test]
    fn one_busy_look_among_quiet_ones_does_not_start_batching() {
        let t0 = Instant::now();
        let mut pace = Pace::new(50, Duration::ZERO, t0);
        // Each busy look follows a quiet one, which starts the count again;
        // the last two are in a row.
        assert_eq!(
            run(
                &mut pace,
                t0,
                Duration::ZERO,
                &[40, 90, 40, 90, 45, 100, 100]
            ),
            [false, false, false, false, false, false, true]
        );
    }

    #[test]
    fn looks_closer_than_a_window_decide_nothing() {
        let t0 = Instant::now();
        let mut pace = Pace::new(50, Duration::ZERO, t0);
        // 20 ms at full use is not a window: no decision, and the next
        // look measures from the start (20 ms of a window is under 50%).
        let at = |percent: u32| WINDOW * percent / 100;
        let early = pace.look(t0 + 20 * MS, || panic!("the clock read early"));
        assert_eq!(early, None);
        assert_eq!(pace.look(t0 + WINDOW, || 20 * MS), None);
        assert_eq!(pace.look(t0 + 2 * WINDOW, || 20 * MS + at(60)), None);
        assert_eq!(pace.look(t0 + 3 * WINDOW, || 20 * MS + at(120)), Some(true));
        assert_eq!(
            pace.look(t0 + 4 * WINDOW, || 20 * MS + at(125)),
            Some(false)
        );
        assert_eq!(pace.look(t0 + 5 * WINDOW, || 20 * MS + at(125)), None);
    }

    #[test]
    fn zero_batches_always() {
        let t0 = Instant::now();
        let mut pace = Pace::new(0, Duration::ZERO, t0);
        assert!(pace.batching());
        assert_eq!(run(&mut pace, t0, Duration::ZERO, &[0, 100, 0]), [true; 3]);
    }

    #[test]
    fn a_clock_that_goes_back_is_no_use() {
        let t0 = Instant::now();
        let mut pace = Pace::new(50, 5 * WINDOW, t0);
        // CPU time read lower than before (it cannot, but nothing here may
        // panic on it) counts as none used.
        assert_eq!(pace.look(t0 + WINDOW, || WINDOW), None);
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
