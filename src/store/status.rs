//! What the store shares with the workers and the admin port: per stream,
//! how far records are durable and how far a worker waits for them to be;
//! for the whole store, whether new events are refused (the disk budget,
//! failing writes, a failed fdatasync, a store thread gone) and how a
//! worker ends the store's nap.

use std::path::Path;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_utils::CachePadded;

use crate::bell::Bell;

/// What a worker and the store share about one stream.
#[derive(Debug)]
pub struct StreamShared {
    /// One past the last sequence number known durable.
    pub durable_seq: CachePadded<AtomicU64>,
    /// The highest sequence number a worker waits to see durable, plus one
    /// (0: nobody waits).
    pub sync_wanted: CachePadded<AtomicU64>,
    /// The receive time of the oldest record the worker has not yet packed
    /// into the store's ring, `u64::MAX` when none (`pack`).
    pub unpacked_ts: CachePadded<AtomicU64>,
}

impl Default for StreamShared {
    fn default() -> StreamShared {
        StreamShared {
            durable_seq: CachePadded::default(),
            sync_wanted: CachePadded::default(),
            unpacked_ts: CachePadded::new(AtomicU64::new(u64::MAX)),
        }
    }
}

impl StreamShared {
    /// Asks the store to make everything up to `seq` durable soon.
    #[inline]
    pub fn want_sync(&self, seq: u64) {
        self.sync_wanted.fetch_max(seq + 1, Ordering::AcqRel);
    }

    /// Whether `seq` is durable.
    #[inline]
    pub fn is_durable(&self, seq: u64) -> bool {
        self.durable_seq.load(Ordering::Acquire) > seq
    }
}

/// State every worker checks: whether the disk budget refuses new events.
#[derive(Debug, Default)]
pub struct StoreStatus {
    /// Set while segments are at the budget and the policy is to refuse.
    pub refusing: AtomicBool,
    /// Set while the store cannot write segments (a full disk, an I/O
    /// error): new events are refused until a write succeeds again.
    pub failing: AtomicBool,
    /// Set, for good, once an fdatasync of a segment failed: `failing`
    /// stays set and nothing is called durable any more (module header).
    pub sync_failed: AtomicBool,
    /// Whether any event type is `sync` (the store then naps shorter and
    /// stays in the normal class).
    pub sync_types: AtomicBool,
    /// The store thread's scheduling class; workers lift it mid-pass when
    /// their ring fills past a quarter.
    pub class: crate::sched::Class,
    /// Whether the store naps (or is about to): a worker whose ring fills
    /// past a quarter then rings `bell`.
    pub(super) napping: AtomicBool,
    /// When the store's nap ends, in unix ms, stored before `napping`.
    pub(super) nap_ends_ms: AtomicU64,
    /// The store's bell, from its start.
    pub(super) bell: OnceLock<Arc<Bell>>,
}

impl StoreStatus {
    /// A status for a store whose event types include `sync` ones or not,
    /// in `class`.
    pub fn new(sync_types: bool, class: crate::sched::Class) -> StoreStatus {
        StoreStatus {
            sync_types: AtomicBool::new(sync_types),
            class,
            ..StoreStatus::default()
        }
    }

    /// Whether new events are refused: at the disk budget, or while
    /// segment writes fail.
    #[inline]
    pub fn refuses(&self) -> bool {
        self.refusing.load(Ordering::Relaxed) || self.failing.load(Ordering::Relaxed)
    }

    /// Records a failed fdatasync (module header): logs it the first time,
    /// and from now on refuses new events.
    pub(super) fn fail_sync(&self, file: &Path, error: &std::io::Error) {
        self.failing.store(true, Ordering::Relaxed);
        if !self.sync_failed.swap(true, Ordering::AcqRel) {
            tracing::error!(
                file = %file.display(),
                error = %error,
                "fdatasync failed: what the kernel held of the segment may never reach the disk; \
                 refusing new events until trackplane is restarted"
            );
        }
    }

    /// Called by a worker that handed the store a block due on disk by
    /// `due_ms` (unix ms): ends the store's nap only if it would end
    /// later. Each nap cut short costs the workers' core a pass of the
    /// store (a wake-up and a write(2)); blocks at 50k/s come several
    /// times per flush interval, most of them in time for the next pass.
    /// A wall clock stepped meanwhile makes this nudge when it need not or
    /// leave the block to the next pass, at most one flush interval later.
    #[inline]
    pub fn nudge_unless_awake_by(&self, due_ms: u64) {
        // Pairs with the fence in the store's `nap`, as in `nudge`.
        fence(Ordering::SeqCst);
        if self.napping.load(Ordering::Acquire) && self.nap_ends_ms.load(Ordering::Relaxed) > due_ms
        {
            self.nudge();
        }
    }

    /// Ends the store's nap: called by a worker whose ring, or the store's
    /// ring, is past a quarter, or that waits for a sync. The store naps
    /// until its next flush is due, which at a high rate, or with a small
    /// ring, is longer than a ring takes to fill; a nap cut short costs one
    /// write(2) here, at most once per nap.
    #[inline]
    pub fn nudge(&self) {
        // Pairs with the fence in the store's `nap`: either the store sees
        // the records just pushed, or this sees it napping.
        fence(Ordering::SeqCst);
        if self.napping.load(Ordering::Relaxed) && self.napping.swap(false, Ordering::Relaxed) {
            if let Some(bell) = self.bell.get() {
                bell.ring();
            }
        }
    }
}

/// Calls every record of a stream below `through` durable, unless an
/// fdatasync ever failed (module header); whether it did.
pub(super) fn confirm(status: &StoreStatus, shared: &StreamShared, through: u64) -> bool {
    let trusted = !status.sync_failed.load(Ordering::Acquire);
    if trusted {
        shared.durable_seq.fetch_max(through, Ordering::AcqRel);
    }
    trusted
}

/// Held by the store's threads: one that ends by a panic leaves new events
/// refused for good (and, the syncer, nothing called durable again), where
/// they would otherwise fill the rings, or wait on syncs, unseen. The store
/// thread's ends its scheduling class however it ends (`sched::Class::end`).
pub(super) struct Watch {
    pub(super) status: Arc<StoreStatus>,
    /// The syncer's: what it was syncing may or may not be on disk.
    pub(super) syncer: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.syncer {
            self.status.class.end();
        }
        if std::thread::panicking() {
            tracing::error!(
                thread = if self.syncer { "sync" } else { "store" },
                "a store thread ended by a panic: refusing new events until trackplane is restarted"
            );
            if self.syncer {
                self.status.sync_failed.store(true, Ordering::Release);
            }
            self.status.failing.store(true, Ordering::Relaxed);
        }
    }
}
