//! The runtime's own reading of the clock (`monoio::time::recent`, vendored
//! monoio), which a worker takes as the time of what it just received
//! instead of reading the clock per request: it must be the time the
//! runtime came back from the kernel, not the time it went to sleep, and it
//! must keep moving on a thread too busy to sleep at all. Event times,
//! deadlines and the packer's block ages all come from it.

mod common;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::worker_runtime;
use monoio::io::AsyncReadRent;

/// Gives the runtime back once, already woken: a busy task that never
/// waits for I/O.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Runs `f`'s future on a worker's io_uring runtime, then on the epoll
/// fallback's.
fn on_both_drivers<F: Future>(f: impl Fn() -> F) -> [F::Output; 2] {
    let epoll = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f());
    [worker_runtime().block_on(f()), epoll]
}

/// A read that completes 100 ms into a wait: the reading is from after the
/// bytes were sent, not from before the runtime went to sleep.
#[test]
fn after_a_wait_the_reading_is_from_the_wake_up() {
    for (sent, read_at, after) in on_both_drivers(|| async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent_tx, sent_rx) = mpsc::channel();
        let peer = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            sent_tx.send(Instant::now()).unwrap();
            c.write_all(b"x").unwrap();
        });
        let mut conn = monoio::net::TcpStream::connect(addr).await.unwrap();
        let (r, _) = conn.read(vec![0u8; 1]).await;
        assert_eq!(r.unwrap(), 1);
        let read_at = monoio::time::recent().into_std();
        let after = Instant::now();
        drop(conn);
        peer.join().unwrap();
        (sent_rx.recv().unwrap(), read_at, after)
    }) {
        assert!(
            read_at >= sent,
            "the reading is {:?} older than the send",
            sent - read_at
        );
        assert!(read_at <= after);
    }
}

/// A task that yields for 300 ms and never waits: the runtime never sleeps,
/// and its reading stays within a few milliseconds of the clock.
#[test]
fn a_runtime_too_busy_to_wait_keeps_its_reading_current() {
    // A spawned task, as a connection's is (the future given to `block_on`
    // is polled apart from the tasks).
    for worst in on_both_drivers(|| async {
        monoio::spawn(async {
            let start = Instant::now();
            let mut worst = Duration::ZERO;
            while start.elapsed() < Duration::from_millis(300) {
                YieldOnce(false).await;
                let behind =
                    Instant::now().saturating_duration_since(monoio::time::recent().into_std());
                worst = worst.max(behind);
            }
            worst
        })
        .await
    }) {
        assert!(
            worst < Duration::from_millis(50),
            "the reading fell {worst:?} behind the clock"
        );
    }
}
