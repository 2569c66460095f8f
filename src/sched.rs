//! How background threads share the workers' cores: the scheduling class
//! of the store's thread (below); the catalog reloader's, which enters the
//! idle class for good ([`enter_idle`], `server::background`); and
//! [`Breather`], the reloader's yields, for when it runs normal-class.
//!
//! The store's thread. (The live view had a thread like it; workers now
//! fold its records in themselves while idle, `view::fold`, and pack their
//! own records into compressed blocks, `store::pack`, so that a store's
//! pass only writes blocks. What follows was measured when passes
//! compressed.) In the normal class a
//! pass (a zstd block) that runs when a request arrives delays it, because
//! the scheduler lets the pass run on in its slice (so passes breathe,
//! below). In the idle class
//! (SCHED_IDLE) a worker's wake-up takes the core at once; on a busy core,
//! though, an idle-class thread hardly runs, its ring fills and events are
//! refused. So a pass runs in the idle class only while no ring is past a
//! quarter, and a worker that finds the store's ring of its blocks past a
//! quarter lifts the thread back to the normal class mid-pass. (A lower bar for the idle
//! class, a sixteenth, sent passes with a small backlog to the normal
//! class, where they ran for milliseconds while the worker waited: at 50k
//! requests/s unbatched, one 8 s run each by hand, p99 was 11.7 ms against
//! 99 µs with a quarter.)
//!
//! Entering the idle class does not make the kernel reschedule, so the
//! thread yields once right after: without that, at 20k requests/s
//! unbatched, p99 was 281 µs against 47 µs with it (medians of five 10 s
//! windows each, `bench/results/tails-20261129-1052.md`).
//!
//! In the normal class (after a lift, or always with `background_class =
//! "normal"`), the scheduler lets a pass run on to the end of its slice
//! while a woken worker waits: at 50k requests/s unbatched, `perf sched`
//! showed waits of 0.3-0.45 ms behind such passes. So a pass breathes: it drains [`PASS_CHUNK`] records
//! at a time, and the store compresses a block a piece at a time, with a
//! yield in between (`breathe`), which in the normal class hands the core
//! to a waiting worker. In interleaved pairs of 10 s windows, with both
//! changes p99 in the normal class was lower in 4 pairs of 4 (807-1099
//! against 114-245 µs), in the default class (whose passes go normal after
//! a lift) in 3 of 4 (medians 666 against 232 µs). CPU per request: the
//! same in the default class; in the normal class the same in two runs
//! and 9% and 15% more in two noisier ones, a switch to the worker and
//! back per breath that finds it waiting
//! (`bench/results/ab-breathe-20261129-1410.md`).
//!
//! A pass with a backlog does not breathe: once a ring is past a quarter
//! (at the pass's start, at a pause, or by a worker's lift) it runs
//! through to its end. Breathing through a backlog gave a busy worker the
//! core every 32 records, and on a saturated core the store then fell
//! behind without end: at 160k requests/s offered to one core, 0.8-1.06
//! million of about 1.2 million events per 10 s window were refused, in
//! either class (`bench/results/saturate-20261129-2351.md`; none with
//! this rule, `-2356.md`).
//!
//! A pass that stays in the idle class longer than half the flush
//! interval (25 ms by default) is starved: a pass's work takes well under a
//! millisecond, but on a core that other work keeps busy (another process
//! at normal priority, say) an idle-class thread gets next to no time, and
//! what the workers answered would wait in the ring, past the flush
//! interval, until a ring filled to a quarter. Every worker's heartbeat
//! (20 ms) lifts such a pass (`lift_if_starved`), for that pass only: the
//! workers' own load at 50k requests/s unbatched starves a pass that long
//! now and then (0 to 9 lifts in a 7 s window), and a second in the normal
//! class after each would undo the idle class there. With a loop pinned
//! to the server's one core, 1,000 answered events of about 500 bytes
//! reached segments 0.06-1.8 s after the last answer without this (over
//! 1.2 s in two runs of six; later 0.07-0.93 s, over 0.1 s in five of
//! six), 0.09-0.17 s with it in thirteen (`tests/background_class.rs`).
//! Now and then the kernel gives the idle-class pass its moment within a
//! flush interval, and nothing needs lifting.
//!
//! After a lift, the thread's passes stay in the normal class for a second
//! (`NORMAL_AFTER_LIFT_MS`): on a saturated core it would otherwise go
//! back to the idle class at its next calm pass, be preempted by every
//! request there and be lifted again.
//!
//! The thread sleeps in the normal class (`rest` before each nap). When it
//! slept in the idle class, a lifted thread still waited hundreds of
//! milliseconds for the core while the ring filled (likely the lag it was
//! given at idle weight; not traced into the kernel): at 160k requests/s
//! offered to one core, every one of twelve 10 s windows refused events,
//! 35,000 to 822,000 of 1.0-1.5 million. Resting normal, none of seven
//! did (`bench/saturate.sh`, and by hand).
//!
//! Leaving SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE of at least 20
//! (sched(7)); the systemd unit sets `LimitNICE=20`. Whether the kernel
//! allows the way back is tried once, on a throwaway thread: without it the
//! threads stay in the normal class, as they would with
//! `server.background_class = "normal"`.
//!
//! # Invariants
//! - Only the thread itself enters the idle class, only from `NORMAL`;
//!   lifts and `rest` leave it. A lift that finds the thread mid-way
//!   (`SETTLING`) does nothing and is tried again by the next pressed push.
//! - The thread is in the idle class exactly while `state` is `IDLE`, or
//!   `SETTLING`/`LIFTING` during the one system call that changes it.
//! - The thread's kernel id names it while `state` is `IDLE` or `LIFTING`:
//!   the thread calls [`Class::end`] as it ends (by a panic too, from the
//!   store's and the view's `Watch`), which waits out a lift in flight and
//!   leaves `ENDED`, from which nothing changes a class. Without it a lift
//!   after the thread's end would re-class whichever thread the kernel
//!   gave its id to next.
//! - Within a pass, `backlog` only goes from false to true; only the next
//!   `start_pass` clears it, so a pass that met a backlog never breathes
//!   again.

#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

const NORMAL: u8 = 0;
const SETTLING: u8 = 1;
const IDLE: u8 = 2;
const LIFTING: u8 = 3;
const ENDED: u8 = 4;

/// One background thread's class and the means to lift it.
#[derive(Debug)]
pub struct Class {
    /// Whether this thread may enter the idle class at all.
    enabled: bool,
    /// The thread's kernel id, from its first `settle` (0 before).
    tid: AtomicI32,
    state: AtomicU8,
    /// Times the thread was lifted back to the normal class: for a
    /// backlog (a worker's ring past a quarter, or a pass that began with
    /// one), or for a pass starved in the idle class.
    pub lifts: AtomicU64,
    /// Passes the thread began in the idle class.
    pub idle_passes: AtomicU64,
    /// Until when (ms on `clock_ms`) passes stay normal after a lift.
    normal_until_ms: AtomicU64,
    /// How long that is: `NORMAL_AFTER_LIFT_MS` but in tests.
    hold_ms: u64,
    /// Whether the pass under way has met a backlog (a ring past a
    /// quarter) and so runs through without breathing.
    backlog: AtomicBool,
    /// When (ms on `clock_ms`) the thread last entered the idle class.
    idle_since_ms: AtomicU64,
}

/// How long passes stay in the normal class after a lift. A busy core
/// would otherwise send the thread back into the idle class at the next
/// calm pass, have it preempted at every request there and lifted again:
/// saturated, without the hold (and with a sixteenth as the bar for an idle
/// pass) it served 11-15% less than the normal class in 3 windows of 4
/// (`bench/results/saturate-20261129-1117.md`).
const NORMAL_AFTER_LIFT_MS: u64 = 1000;

/// Records a background pass handles between two [`Class::breathe`]s:
/// tens of microseconds of work at the store's and the view's per-record
/// cost, against a system call's fraction of a microsecond.
pub const PASS_CHUNK: usize = 32;

impl Default for Class {
    /// A class that stays normal.
    fn default() -> Class {
        Class::new(false)
    }
}

impl Class {
    /// A class that goes idle when `wanted` and the kernel allows the way
    /// back; otherwise one that stays normal.
    pub fn new(wanted: bool) -> Class {
        Class::holding(wanted, NORMAL_AFTER_LIFT_MS)
    }

    /// `new`, with passes held normal for `hold_ms` after a lift.
    fn holding(wanted: bool, hold_ms: u64) -> Class {
        Class {
            enabled: wanted && way_back_allowed(),
            tid: AtomicI32::new(0),
            state: AtomicU8::new(NORMAL),
            lifts: AtomicU64::new(0),
            idle_passes: AtomicU64::new(0),
            normal_until_ms: AtomicU64::new(0),
            hold_ms,
            backlog: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// Whether the thread runs in the idle class while calm.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the thread is in the idle class now.
    pub fn is_idle(&self) -> bool {
        self.state.load(Ordering::Acquire) == IDLE
    }

    /// Called by the thread itself at the start of each pass, with whether
    /// a ring is past a quarter (or a worker waits on the pass): such a
    /// pass runs through without breathing.
    pub fn start_pass(&self, backlog: bool) {
        self.backlog.store(backlog, Ordering::Relaxed);
    }

    /// Called by the thread itself at the start of each pass, after
    /// [`Class::start_pass`]: into the idle class when `calm`, back to the
    /// normal class when not.
    pub fn settle(&self, calm: bool) {
        if !self.enabled {
            return;
        }
        if !calm {
            self.lift();
            return;
        }
        if clock_ms() < self.normal_until_ms.load(Ordering::Relaxed) {
            return;
        }
        if self
            .state
            .compare_exchange(NORMAL, SETTLING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if self.tid.load(Ordering::Relaxed) == 0 {
                self.tid.store(gettid(), Ordering::Release);
            }
            self.idle_since_ms.store(clock_ms(), Ordering::Relaxed);
            let entered = set_policy(0, libc::SCHED_IDLE).is_ok();
            self.state
                .store(if entered { IDLE } else { NORMAL }, Ordering::Release);
            if entered {
                // The kernel does not reschedule on this change (the
                // priority it compares stays the same), so a worker woken
                // while this thread was still normal would wait for the
                // next tick (4 ms at HZ=250) or the pass's end. Yield once
                // to let it run now; alone on the core this returns at once.
                yield_now();
            }
        }
        if self.is_idle() {
            self.idle_passes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Called by the thread itself between chunks of a pass
    /// ([`PASS_CHUNK`] records), with whether the ring it drains is past a
    /// quarter now: in the normal class, gives the core to a worker that
    /// woke meanwhile, unless the pass has met a backlog. The scheduler
    /// would let a normal-class pass run on to the end of its slice
    /// (milliseconds) while the worker waited; in the idle class the
    /// worker's wake-up takes the core at once, so there is nothing to do.
    /// Alone on the core the yield returns at once.
    #[inline]
    pub fn breathe(&self, backlog: bool) {
        if backlog {
            self.backlog.store(true, Ordering::Relaxed);
        }
        if self.breathes() {
            yield_now();
        }
    }

    /// Whether [`Class::breathe`] yields now: in the normal class, in a
    /// pass that has met no backlog.
    pub fn breathes(&self) -> bool {
        !self.backlog.load(Ordering::Relaxed) && self.state.load(Ordering::Acquire) != IDLE
    }

    /// From any thread, for a ring past a quarter: back to the normal
    /// class if idle, and the pass under way runs through. Cheap when
    /// already normal.
    #[inline]
    pub fn lift(&self) {
        self.backlog.store(true, Ordering::Relaxed);
        if self.state.load(Ordering::Acquire) != IDLE {
            return;
        }
        if self.to_normal() {
            self.lifts.fetch_add(1, Ordering::Relaxed);
            // A max, so that a lift never shortens `stay_normal`'s hold.
            self.normal_until_ms
                .fetch_max(clock_ms() + self.hold_ms, Ordering::Relaxed);
        }
    }

    /// From any thread, periodically: lifts a pass that has been in the
    /// idle class longer than `max_ms`, starved by other work on its core,
    /// for the rest of this pass only. Not a backlog: no hold follows, and
    /// the pass still breathes. Cheap when the thread is not idle-class.
    pub fn lift_if_starved(&self, max_ms: u64) {
        // `idle_since_ms` is written before the state becomes IDLE.
        if self.state.load(Ordering::Acquire) == IDLE
            && clock_ms()
                >= self
                    .idle_since_ms
                    .load(Ordering::Relaxed)
                    .saturating_add(max_ms)
            && self.to_normal()
        {
            self.lifts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// From any thread, when the server stops: back to the normal class
    /// now and for good. The last passes write, sync and seal what was
    /// answered; in the idle class, on a core busy with other work (a new
    /// process taking over, say), they could wait for it indefinitely. (A
    /// pass entering the idle class at that very moment finishes there.)
    pub fn stay_normal(&self) {
        self.normal_until_ms.store(u64::MAX, Ordering::Relaxed);
        self.lift();
    }

    /// Called by the thread itself before it sleeps: back to the normal
    /// class, not counted as a lift.
    pub fn rest(&self) {
        if self.state.load(Ordering::Acquire) == IDLE {
            self.to_normal();
        }
    }

    /// Called by the thread itself as it ends, however it ends: waits for
    /// a lift in flight (whose system call names this thread's id, still
    /// its own until it returns), then leaves the class ended, so that no
    /// later call acts on the id, which the kernel may give to another
    /// thread.
    pub fn end(&self) {
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state == LIFTING {
                // A few microseconds; the lifter may need this core.
                yield_now();
                continue;
            }
            if self
                .state
                .compare_exchange(state, ENDED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Whether the thread has ended (see [`Class::end`]).
    pub fn ended(&self) -> bool {
        self.state.load(Ordering::Acquire) == ENDED
    }

    /// Idle to normal; whether this call did it.
    #[cold]
    fn to_normal(&self) -> bool {
        if self
            .state
            .compare_exchange(IDLE, LIFTING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let tid = self.tid.load(Ordering::Acquire);
        match set_policy(tid, libc::SCHED_OTHER) {
            Ok(()) => {
                self.state.store(NORMAL, Ordering::Release);
                true
            }
            Err(e) => {
                // Cannot happen once the probe passed; stay IDLE so the
                // next lift tries again.
                tracing::warn!(tid, error = %e, "cannot lift a background thread to the normal class");
                self.state.store(IDLE, Ordering::Release);
                false
            }
        }
    }
}

/// What a normal-class background thread that does long runs of small
/// steps (the catalog reloader's scan and reads) uses to breathe: a yield
/// every `every` steps. The kernel runs with `preempt=none` here, and in
/// the normal class the scheduler lets a thread run on to the end of its
/// slice while a woken worker waits; so without breaths a scan of 2,000
/// catalog files held a worker's core for up to 4.9 ms at a time, once a
/// second, and one of 50 files for 190 µs (perf on the server's core at
/// 20k requests/s, bench/results/catalog-breath-*.md). Alone on its core a
/// yield returns at once. Breaths only bound the steps: what runs between
/// two of them unbroken (a buffer of megabytes grown, the allocator
/// returning one to the kernel) still held the core for milliseconds while
/// a catalog of 1M ids loaded (bench/results/catalog-idle-*.md), which is
/// why the reloader runs in the idle class unless told otherwise; there a
/// worker's wake-up preempts it anyway, and a yield is a system call that
/// finds nothing waiting.
#[derive(Debug)]
pub struct Breather {
    every: u32,
    left: u32,
    breaths: u64,
}

impl Breather {
    /// A yield every `every` steps (at least 1).
    pub fn new(every: u32) -> Breather {
        let every = every.max(1);
        Breather {
            every,
            left: every,
            breaths: 0,
        }
    }

    /// One step done; yields if it ends a stretch.
    #[inline]
    pub fn step(&mut self) {
        self.left -= 1;
        if self.left == 0 {
            self.left = self.every;
            self.breaths += 1;
            yield_now();
        }
    }

    /// Yields taken so far.
    pub fn breaths(&self) -> u64 {
        self.breaths
    }
}

/// Whether a thread of this process can enter SCHED_IDLE and leave it
/// again: tried once, on a throwaway thread.
pub fn way_back_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::thread::Builder::new()
            .name("trackplane-probe".into())
            .spawn(|| {
                set_policy(0, libc::SCHED_IDLE).is_ok() && set_policy(0, libc::SCHED_OTHER).is_ok()
            })
            .ok()
            .and_then(|t| t.join().ok())
            .unwrap_or(false)
    })
}

/// Milliseconds on a monotonic clock (the coarse one: a tick's precision
/// is plenty, and it costs no more than a memory read).
fn clock_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes; the clock exists on
    // every Linux since 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Puts the calling thread in the idle class for good (a thread that
/// never needs the way back, so no privilege is needed), and yields once,
/// since entering it does not make the kernel reschedule.
pub fn enter_idle() -> std::io::Result<()> {
    set_policy(0, libc::SCHED_IDLE)?;
    yield_now();
    Ok(())
}

/// Gives the core to any thread the scheduler prefers now.
fn yield_now() {
    // SAFETY: sched_yield(2) takes nothing and cannot fail on Linux.
    unsafe { libc::sched_yield() };
}

/// The calling thread's kernel id.
pub fn gettid() -> i32 {
    // SAFETY: gettid(2) takes nothing and cannot fail.
    unsafe { libc::gettid() }
}

/// The scheduling policy of thread `tid` (0: the calling thread).
pub fn policy(tid: i32) -> std::io::Result<i32> {
    // SAFETY: sched_getscheduler(2) only reads the thread's policy.
    let r = unsafe { libc::sched_getscheduler(tid) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Sets thread `tid`'s policy (0: the calling thread); priority 0, the
/// only one the normal and idle classes have.
fn set_policy(tid: i32, policy: i32) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, which
    // only reads it.
    let r = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this process cannot leave SCHED_IDLE, said once per test.
    fn skipped() -> bool {
        let no = !way_back_allowed();
        if no {
            eprintln!("skipped: this process may not leave SCHED_IDLE (no CAP_SYS_NICE, RLIMIT_NICE < 20)");
        }
        no
    }

    /// Runs `f` on a thread of its own (the harness's threads are shared,
    /// and `f` changes its thread's class), unless `skipped`.
    fn on_own_thread(f: impl FnOnce() + Send + 'static) {
        if !skipped() {
            std::thread::spawn(f).join().unwrap();
        }
    }

    #[test]
    fn a_calm_thread_goes_idle_and_a_lift_brings_it_back() {
        if skipped() {
            return;
        }
        let class = std::sync::Arc::new(Class::holding(true, 0));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        // Some(calm): begin a pass; None: rest before a nap.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<Option<bool>>();
        let t = {
            let class = class.clone();
            std::thread::spawn(move || {
                while let Ok(step) = go_rx.recv() {
                    match step {
                        Some(calm) => class.settle(calm),
                        None => class.rest(),
                    }
                    tid_tx.send(gettid()).unwrap();
                }
            })
        };
        let step = |s: Option<bool>| {
            go_tx.send(s).unwrap();
            tid_rx.recv().unwrap()
        };
        let tid = step(Some(true));
        assert!(class.is_idle());
        assert_eq!(policy(tid).unwrap(), libc::SCHED_IDLE);
        // A second calm pass changes nothing; both count.
        step(Some(true));
        assert_eq!(policy(tid).unwrap(), libc::SCHED_IDLE);
        assert_eq!(class.idle_passes.load(Ordering::Relaxed), 2);

        // Resting before a nap: normal, and no lift.
        step(None);
        assert_eq!(policy(tid).unwrap(), libc::SCHED_OTHER);
        assert_eq!(class.lifts.load(Ordering::Relaxed), 0);
        step(Some(true));
        assert_eq!(policy(tid).unwrap(), libc::SCHED_IDLE);

        // Lifted from this thread, as a worker does.
        class.lift();
        assert!(!class.is_idle());
        assert_eq!(policy(tid).unwrap(), libc::SCHED_OTHER);
        assert_eq!(class.lifts.load(Ordering::Relaxed), 1);
        class.lift();
        assert_eq!(
            class.lifts.load(Ordering::Relaxed),
            1,
            "a lift of a normal thread is none"
        );

        // Idle again, then a pass that is not calm: the thread lifts itself.
        step(Some(true));
        assert_eq!(policy(tid).unwrap(), libc::SCHED_IDLE);
        step(Some(false));
        assert_eq!(policy(tid).unwrap(), libc::SCHED_OTHER);
        assert_eq!(class.lifts.load(Ordering::Relaxed), 2);
        assert_eq!(class.idle_passes.load(Ordering::Relaxed), 4);
        drop(go_tx);
        t.join().unwrap();
    }

    /// A thread that ended idle (by a panic, in the store or view) is not
    /// lifted after its end: its id may name another thread by then.
    #[test]
    fn a_thread_that_ended_idle_is_not_lifted_again() {
        if skipped() {
            return;
        }
        let class = std::sync::Arc::new(Class::holding(true, 0));
        let c = class.clone();
        std::thread::spawn(move || {
            c.settle(true);
            c.end();
        })
        .join()
        .unwrap();
        assert!(class.ended());
        class.lift();
        class.lift_if_starved(0);
        class.rest();
        assert!(class.ended(), "nothing changes an ended class");
        assert_eq!(class.lifts.load(Ordering::Relaxed), 0, "nothing was lifted");
    }

    /// `end` waits while a lift's system call names the thread.
    #[test]
    fn an_end_waits_for_a_lift_in_flight() {
        let class = std::sync::Arc::new(Class::holding(false, 0));
        class.state.store(LIFTING, Ordering::Release);
        let c = class.clone();
        let ending = std::thread::spawn(move || c.end());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!ending.is_finished(), "ended while a lift was in flight");
        assert!(!class.ended());
        class.state.store(NORMAL, Ordering::Release);
        ending.join().unwrap();
        assert!(class.ended());
    }

    #[test]
    fn passes_stay_normal_for_the_hold_after_a_lift() {
        on_own_thread(|| {
            let class = Class::holding(true, 300);
            class.settle(true);
            assert_eq!(policy(0).unwrap(), libc::SCHED_IDLE);
            class.lift();
            assert_eq!(policy(0).unwrap(), libc::SCHED_OTHER);
            // Calm passes within the hold stay normal and are not counted.
            class.settle(true);
            assert!(!class.is_idle());
            assert_eq!(policy(0).unwrap(), libc::SCHED_OTHER);
            assert_eq!(class.idle_passes.load(Ordering::Relaxed), 1);
            // After it, the next calm pass is idle again.
            std::thread::sleep(std::time::Duration::from_millis(350));
            class.settle(true);
            assert_eq!(policy(0).unwrap(), libc::SCHED_IDLE);
            assert_eq!(class.idle_passes.load(Ordering::Relaxed), 2);
            class.rest();
        });
    }

    #[test]
    fn a_pass_idle_class_too_long_is_lifted_as_starved() {
        on_own_thread(|| {
            // A long hold, which a lift for a backlog would start.
            let class = Class::holding(true, 60_000);
            let before = clock_ms();
            class.settle(true);
            let entered = class.idle_since_ms.load(Ordering::Relaxed);
            assert!((before..=clock_ms()).contains(&entered));
            // Entered less than the bound ago (set ahead, so that a loaded
            // machine cannot starve this very thread past it): stays idle.
            class
                .idle_since_ms
                .store(clock_ms() + 60_000, Ordering::Relaxed);
            class.lift_if_starved(25);
            assert!(class.is_idle());
            assert_eq!(class.lifts.load(Ordering::Relaxed), 0);
            // Entered longer ago than the bound: lifted.
            class
                .idle_since_ms
                .store(clock_ms() - 26, Ordering::Relaxed);
            class.lift_if_starved(25);
            assert!(!class.is_idle());
            assert_eq!(policy(0).unwrap(), libc::SCHED_OTHER);
            assert_eq!(class.lifts.load(Ordering::Relaxed), 1);
            // A normal thread is left alone, however long ago it was idle.
            class.lift_if_starved(25);
            assert_eq!(class.lifts.load(Ordering::Relaxed), 1);
            // For that pass only: the next calm pass goes idle again.
            class.settle(true);
            assert!(class.is_idle());
            class.rest();
        });
    }

    #[test]
    fn after_stay_normal_no_pass_goes_idle() {
        on_own_thread(|| {
            let class = Class::holding(true, 0);
            class.settle(true);
            assert_eq!(policy(0).unwrap(), libc::SCHED_IDLE);
            class.stay_normal();
            assert_eq!(policy(0).unwrap(), libc::SCHED_OTHER);
            assert_eq!(class.lifts.load(Ordering::Relaxed), 1);
            class.settle(true);
            assert!(!class.is_idle());
            assert_eq!(policy(0).unwrap(), libc::SCHED_OTHER);
        });
    }

    /// A pass breathes until it meets a backlog, from its start, a pause
    /// or a worker's lift; then it runs through to its end.
    #[test]
    fn a_pass_with_a_backlog_runs_through_without_breathing() {
        let class = Class::new(false);
        class.start_pass(false);
        assert!(class.breathes());
        class.breathe(false);
        assert!(class.breathes());
        class.breathe(true);
        assert!(!class.breathes(), "a ring past a quarter at a pause");
        class.breathe(false);
        assert!(!class.breathes(), "the rest of the pass runs through");
        class.start_pass(false);
        assert!(class.breathes(), "the next calm pass breathes again");
        class.lift();
        assert!(!class.breathes(), "a worker's lift");
        class.start_pass(true);
        assert!(!class.breathes(), "a backlog at the start");
    }

    #[test]
    fn a_pass_in_the_idle_class_never_breathes() {
        if skipped() {
            return;
        }
        on_own_thread(|| {
            let class = Class::holding(true, 0);
            class.start_pass(false);
            class.settle(true);
            assert!(class.is_idle());
            assert!(!class.breathes());
        });
    }

    #[test]
    fn a_class_not_wanted_never_goes_idle() {
        let class = Class::new(false);
        assert!(!class.enabled());
        class.settle(true);
        assert!(!class.is_idle());
        assert_eq!(policy(0).unwrap(), libc::SCHED_OTHER);
    }
}
