//! The view's thread: drains the workers' view rings into the view, a
//! pass per nap, in the idle class while no ring fills (see `sched`), and
//! marks the view stopped if it ends by a panic.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Batch, View};
use crate::bell::Bell;
use crate::clock::unix_ms;
use crate::ring::Consumer;
use crate::sched::PASS_CHUNK;

/// The view thread's nap between passes, its nap after a pass that found
/// a ring busy, and after one that found nothing (a quiet node's first
/// event shows a quarter of a second later at most).
const NAP: Duration = Duration::from_millis(50);
const NAP_BUSY: Duration = Duration::from_millis(10);
const NAP_QUIET: Duration = Duration::from_millis(250);

/// Starts the thread that drains the workers' view rings into `view`.
pub fn spawn(
    view: Arc<View>,
    rings: Vec<Consumer>,
    stop: Arc<Bell>,
) -> std::io::Result<JoinHandle<()>> {
    spawn_folding(view, rings, stop, |batch, rec| batch.add(rec))
}

/// Marks the view stopped if its thread ends by a panic, and ends the
/// viewers' streams, which would otherwise wait for events that never come.
/// Ends the thread's scheduling class however it ends (`sched::Class::end`).
struct Watch(Arc<View>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.class.end();
        if std::thread::panicking() {
            tracing::error!(
                "the live view's thread ended by a panic: the view answers 503 until trackplane is restarted; ingestion goes on"
            );
            self.0.stopped.store(true, Ordering::Release);
            self.0
                .subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }
}

/// `spawn`, with what folds a record in given (a test makes it panic).
pub(super) fn spawn_folding(
    view: Arc<View>,
    mut rings: Vec<Consumer>,
    stop: Arc<Bell>,
    mut fold: impl FnMut(&mut Batch<'_>, &[u8]) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("trackplane-view".into())
        .spawn(move || {
            let _watch = Watch(view.clone());
            let mut last_forget = std::time::Instant::now();
            while !stop.is_rung() {
                if last_forget.elapsed() >= Duration::from_secs(60) {
                    view.forget_idle(unix_ms());
                    last_forget = std::time::Instant::now();
                }
                // Passes run in the idle class, and breathe, while no ring
                // is past a quarter, where a worker lifts the thread; it
                // sleeps in the normal class (see `sched`).
                let calm = !rings.iter().any(Consumer::past_quarter);
                let busy = rings.iter().any(|r| r.backlog() > r.capacity() / 16);
                view.class.start_pass(!calm);
                view.class.settle(calm);
                let mut drained = 0;
                for ring in &mut rings {
                    let mut batch = view.batch();
                    drained += ring.drain_pausing(
                        PASS_CHUNK,
                        |rec| {
                            fold(&mut batch, rec);
                            ControlFlow::Continue(())
                        },
                        |backlog| view.class.breathe(backlog),
                    );
                }
                // Nap between passes, busy or not: this thread shares the
                // workers' cores, and each pass costs them a context switch
                // and some of their cache. 50 ms rather than 10: about
                // 1.5% less CPU per request at 20k/s unbatched, no
                // difference batched
                // (bench/results/together-viewnap-20261130-1035.md). A
                // pass that found more than a sixteenth of a ring waiting
                // naps 10 ms, so that at high rates the rings stay short
                // of the quarter where a worker lifts this thread; one that
                // found nothing naps 250 ms. No nap while a ring fills past
                // a quarter.
                if !rings.iter().any(Consumer::past_quarter) {
                    view.class.rest();
                    let nap = if busy {
                        NAP_BUSY
                    } else if drained == 0 {
                        NAP_QUIET
                    } else {
                        NAP
                    };
                    // Cut short when the server stops.
                    let _ = stop.nap(nap);
                }
            }
        })
}
