//! Source of time abstraction.
//!
//! By default, `std::time::Instant::now()` is used. However, when the
//! `test-util` feature flag is enabled, the values returned for `now()` are
//! configurable.
//!
//! The time driver's readings are kept per thread ([`recent`]): it reads
//! the clock before each wait with a timer pending and whenever it comes
//! back from the kernel (after a wait, or a submission that reaped
//! completions), and what the
//! runtime then runs can take that reading as its time instead of reading
//! the clock again. On a VM a reading costs tens of nanoseconds, and a
//! runtime that woke for one request read the clock about six times for it.

use std::cell::Cell;

use crate::time::Instant;

thread_local! {
    /// The time driver's last reading on this thread; none without one.
    static LAST: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

#[derive(Default, Debug, Clone)]
pub(crate) struct Clock {}

pub(crate) fn now() -> Instant {
    let now = std::time::Instant::now();
    LAST.with(|l| l.set(Some(now)));
    Instant::from_std(now)
}

/// The time driver's last reading of the clock on this thread: taken when
/// the runtime last came back from the kernel with completions, or, in
/// its idle work, just before it waits with a timer pending. What a task
/// finds ready came in by then. Read fresh where no time driver runs on
/// this thread.
pub fn recent() -> Instant {
    Instant::from_std(recent_std())
}

/// [`recent`] as the standard library's instant.
pub(crate) fn recent_std() -> std::time::Instant {
    LAST.with(Cell::get).unwrap_or_else(std::time::Instant::now)
}

/// Forgets this thread's reading, when its time driver goes.
pub(crate) fn forget() {
    LAST.with(|l| l.set(None));
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {}
    }

    pub(crate) fn now(&self) -> Instant {
        now()
    }
}
