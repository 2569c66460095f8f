//! Work a runtime's thread does while it would otherwise sleep.
//!
//! A thread may hand its runtime one piece of idle work (a thread-local
//! hook). When the runtime has no task to run and would park, it first
//! gives the hook turns: each turn does a bounded slice of work and says
//! whether more is left. The io_uring driver first submits what its tasks
//! queued, then between turns reads the ring's task-run flag
//! (`IORING_SQ_TASKRUN`, kept by a ring built with `setup_taskrun_flag`
//! and `DEFER_TASKRUN`) and whether completions are already posted:
//! completion work that arrived meanwhile ends the idle work, and the
//! thread goes back to its I/O without having slept. So work done this way
//! costs the thread no wake-up and no other thread a preemption, where a
//! helper thread on the same core is preempted by each wake-up of the
//! runtime's thread.
//!
//! A runtime gives at most [`TURNS`] turns per park; if work is left it
//! does not sleep, so its timers are looked at between runs of turns. The
//! epoll driver has nothing to read without a system call: it gives one
//! turn, then polls without waiting while work is left, so that what
//! arrived during a turn waits for that turn only. (Given sixteen turns, a
//! request at 20k requests/s waited behind up to sixteen compression
//! pieces: p99 4.3-4.7x nginx's, against 0.90x and 1.01x with one,
//! `bench/results/tails-20261206-0006.md`, `-0016.md`.)
//!
//! Work that is behind ([`IdleTurn::Behind`]: a backlog that must not
//! grow) gets turns until it is not, whatever I/O waits and past the
//! limit. At a turn a park, a thread that always had I/O waiting gave a
//! worker's packer less time than its records needed, and the worker
//! refused thousands of the events it answered (`tests/store.rs`). A
//! thread that does not park (a task always ready) gives no turns at all;
//! the task feeding the backlog calls [`catch_up_idle_work`] instead.

use std::cell::RefCell;

/// Turns per park at most, so that timers are not held up by a long run.
pub(crate) const TURNS: usize = 16;

/// A turn of idle work: given whether I/O is already waiting (do only what
/// cannot wait), it does a bounded slice and says what is left.
pub type IdleWork = Box<dyn FnMut(bool) -> IdleTurn>;

/// What a turn of idle work leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleTurn {
    /// Nothing: the thread may sleep.
    Done,
    /// More, which can wait: turns end at waiting I/O or the turn limit.
    More,
    /// A backlog that cannot wait, which this turn made smaller: turns go
    /// on, whatever waits and past the limit, until it is no longer one.
    /// Work that falls behind a busy thread must say so, or it would get
    /// a turn a park however far behind it was. A turn that could not make
    /// the backlog smaller must not say it, or the thread would spin.
    Behind,
}

thread_local! {
    static IDLE_WORK: RefCell<Option<IdleWork>> = const { RefCell::new(None) };
}

/// Sets (or with `None` removes) this thread's idle work.
pub fn set_idle_work(work: Option<IdleWork>) {
    IDLE_WORK.with(|w| *w.borrow_mut() = work);
}

/// Gives this thread's idle work turns, told I/O is waiting, for as long
/// as it says it is behind. For a task that feeds the work's backlog
/// without the runtime parking in between: a connection whose client
/// keeps its socket full is answered read after read without a park, and
/// the work never got a turn to catch up. Does nothing without idle work
/// or from inside it.
pub fn catch_up_idle_work() {
    with_work((), |work| while work(true) == IdleTurn::Behind {})
}

/// Whether this thread has idle work (false from inside it).
pub(crate) fn is_set() -> bool {
    with_work(false, |_| true)
}

/// `f` of this thread's idle work; `none` without any, or from inside it.
fn with_work<R>(none: R, f: impl FnOnce(&mut IdleWork) -> R) -> R {
    IDLE_WORK.with(|w| match w.try_borrow_mut().as_deref_mut() {
        Ok(Some(work)) => f(work),
        _ => none,
    })
}

/// Gives the idle work up to [`TURNS`] turns, stopping after a turn that
/// found I/O waiting (`io_waiting`) or that left nothing to do, and going
/// on while it is behind ([`IdleTurn::Behind`]). Returns whether work is
/// left. Without idle work (or from inside it), false.
pub(crate) fn run(io_waiting: impl FnMut() -> bool) -> bool {
    run_turns(TURNS, io_waiting)
}

/// [`run`] with at most `turns` turns that are not behind.
pub(crate) fn run_turns(turns: usize, mut io_waiting: impl FnMut() -> bool) -> bool {
    with_work(false, |work| {
        let mut left = turns;
        while left > 0 {
            let waiting = io_waiting();
            match work(waiting) {
                IdleTurn::Done => return false,
                IdleTurn::Behind => {}
                IdleTurn::More if waiting => return true,
                IdleTurn::More => left -= 1,
            }
        }
        true
    })
}
