//! Batched io_uring wake-ups: a worker sleeps until a batch of completions
//! is ready or the linger has passed with one. The kernel ends such a wait
//! at the linger even with nothing to do unless a general timeout goes with
//! it, so an idle worker must still sleep, not wake every linger. A worker
//! always has a timer (its 20 ms heartbeat), so the first test sees the
//! timeout taken from timers; the second, a bare ring with none, the long
//! one the driver adds itself. The kernel also counts the linger from the
//! start of a wait, so completion work that came while the thread worked
//! must not be held for a whole linger after that: the third test.
//!
//! The server's other threads sleep on an idle server too: the fourth.
//!
//! A worker batches only while busy (`server::pace`): a ring told not to
//! batch answers at once, and batches again when told; a server's worker
//! starts batching under load and stops when it ends.

mod common;

use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use common::{kernel_batches_wakeups, read_responses, start};
use monoio::io::AsyncWriteRentExt;
use trackplane::config::Driver;

/// Context switches of this process's threads named `name` so far.
fn switches(name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// On an idle server the admin acceptor and the catalog reloader sleep
/// until they have work: a client, a scan due, a reload, a stop. (They
/// polled every 20 ms, 50 wake-ups a second each.) The store naps longer
/// after a pass that found nothing: 20 wake-ups a second (100 before). The
/// live view has no thread to wake: workers fold records in while idle.
#[test]
fn an_idle_servers_background_threads_sleep() {
    let _alone = ONE_SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    let srv = start(Driver::Uring, "[catalogs]\nreload_interval_ms = 60000\n");
    assert_eq!(srv.get("/healthz").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    // Thread names are cut to 15 bytes.
    for (name, most) in [
        ("trackplane-admi", 3),
        ("trackplane-cata", 3),
        ("trackplane-stor", 30),
    ] {
        let before = switches(name);
        std::thread::sleep(Duration::from_secs(1));
        let woke = switches(name) - before;
        assert!(
            woke <= most,
            "idle {name} thread switched {woke} times in 1 s"
        );
    }
    // Still serving after its long sleep.
    assert_eq!(srv.admin_get("/healthz").status, 200);
}

/// A bare ring built as a batched worker's is (`DEFER_TASKRUN` with the
/// task-run flag), waiting for 32 completions or `linger`, with no timer.
fn batched_runtime(linger: Duration) -> monoio::Runtime<monoio::IoUringDriver> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(common::worker_ring())
        .wait_batch(monoio::WaitBatch {
            events: 32,
            min_wait: linger,
        })
        .build()
        .unwrap()
}

/// Held by each test that runs a server, so that only one server's threads
/// carry the names counted.
static ONE_SERVER: Mutex<()> = Mutex::new(());

#[test]
fn an_idle_batched_worker_sleeps_and_a_lone_request_is_answered() {
    let _alone = ONE_SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    // A linger of 100 µs: a worker woken at every linger would switch
    // about 10,000 times a second.
    // Batching at every wait, as a busy worker does.
    let srv = start(
        Driver::Uring,
        "[server]\nwake_batch = 32\nwake_linger_us = 100\nwake_batch_busy_percent = 0\n",
    );
    assert_eq!(srv.get("/healthz").status, 200);
    // Idle with no connection (the heartbeat the only timer), then with an
    // idle keep-alive connection (its idle timer pending too).
    for keep_open in [false, true] {
        let mut conn = keep_open.then(|| srv.connect());
        if let Some(c) = conn.as_mut() {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(read_responses(c, 1)[0].status, 200);
        }
        std::thread::sleep(Duration::from_millis(200));
        let before = switches("trackplane-w0");
        std::thread::sleep(Duration::from_secs(1));
        let woke = switches("trackplane-w0") - before;
        assert!(
            woke < 100,
            "idle worker switched {woke} times in 1 s (connection open: {keep_open})"
        );
        // A lone request is answered, not held for a batch that never fills.
        if let Some(c) = conn.as_mut() {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            assert_eq!(read_responses(c, 1)[0].status, 200);
        }
    }
}

/// A bare batched ring whose thread is busy for a while in one task when a
/// request comes for another. The reply must follow the busy spell, not a
/// whole linger after it.
#[test]
fn work_that_came_while_the_thread_was_busy_is_not_held_for_a_batch() {
    if !kernel_batches_wakeups() {
        return;
    }
    const LINGER: Duration = Duration::from_millis(600);
    const BUSY: Duration = Duration::from_millis(300);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (busy_tx, busy_rx) = std::sync::mpsc::channel();
    let ring = std::thread::spawn(move || {
        let mut rt = batched_runtime(LINGER);
        rt.block_on(async move {
            let listener = monoio::net::TcpListener::from_std(listener).unwrap();
            let (mut echo, _) = listener.accept().await.unwrap();
            let (mut trigger, _) = listener.accept().await.unwrap();
            // The echo's read is in flight before the busy spell starts.
            let echoer = monoio::spawn(async move {
                let (res, buf) = monoio::io::AsyncReadRent::read(&mut echo, vec![0u8; 8]).await;
                let n = res.unwrap();
                let (res, _) = echo.write_all(buf[..n].to_vec()).await;
                res.unwrap();
            });
            let (res, _) = monoio::io::AsyncReadRent::read(&mut trigger, vec![0u8; 8]).await;
            res.unwrap();
            busy_tx.send(()).unwrap();
            std::thread::sleep(BUSY);
            echoer.await;
        });
    });
    let mut echo = std::net::TcpStream::connect(addr).unwrap();
    let mut trigger = std::net::TcpStream::connect(addr).unwrap();
    echo.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Both accepts take up to a linger each; then both reads are in flight
    // and the thread sleeps.
    std::thread::sleep(LINGER * 3);
    trigger.write_all(b"go").unwrap();
    busy_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    std::thread::sleep(BUSY / 3);
    let sent = std::time::Instant::now();
    echo.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    std::io::Read::read_exact(&mut echo, &mut got).unwrap();
    let took = sent.elapsed();
    assert_eq!(&got, b"ping");
    // The rest of the busy spell is about 200 ms; a held completion would
    // come about 600 ms after that.
    assert!(
        took < BUSY + LINGER / 2,
        "reply took {took:?} after a {BUSY:?} busy spell with a {LINGER:?} linger"
    );
    ring.join().unwrap();
}

/// The driver alone, with no timer at all: its wait then carries the long
/// general timeout, and the thread sleeps until the one connection comes.
#[test]
fn a_batched_ring_without_timers_sleeps_until_its_completion() {
    if !kernel_batches_wakeups() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ring = std::thread::Builder::new()
        .name("batched-ring".into())
        .spawn(move || {
            let mut rt = batched_runtime(Duration::from_micros(100));
            rt.block_on(async move {
                let listener = monoio::net::TcpListener::from_std(listener).unwrap();
                let (mut conn, _) = listener.accept().await.unwrap();
                let (res, _) = conn.write_all(b"hello".to_vec()).await;
                res.unwrap();
            });
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = switches("batched-ring");
    std::thread::sleep(Duration::from_secs(1));
    let woke = switches("batched-ring") - before;
    assert!(woke < 100, "idle ring thread switched {woke} times in 1 s");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = [0u8; 5];
    std::io::Read::read_exact(&mut conn, &mut got).unwrap();
    assert_eq!(&got, b"hello");
    ring.join().unwrap();
}

/// A bare batched ring whose thread is told not to batch answers a lone
/// request at once; told to batch again, it holds the next for the linger.
#[test]
fn a_ring_batches_only_while_told_to() {
    if !kernel_batches_wakeups() {
        return;
    }
    const LINGER: Duration = Duration::from_millis(600);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ring = std::thread::spawn(move || {
        let mut rt = batched_runtime(LINGER);
        rt.block_on(async move {
            monoio::set_wait_batch_active(false);
            let listener = monoio::net::TcpListener::from_std(listener).unwrap();
            let (mut echo, _) = listener.accept().await.unwrap();
            for batching in [false, true] {
                monoio::set_wait_batch_active(batching);
                let (res, buf) = monoio::io::AsyncReadRent::read(&mut echo, vec![0u8; 8]).await;
                let n = res.unwrap();
                let (res, _) = echo.write_all(buf[..n].to_vec()).await;
                res.unwrap();
            }
        });
    });
    let mut echo = std::net::TcpStream::connect(addr).unwrap();
    echo.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut took = Vec::new();
    for _ in 0..2 {
        // Sent well within a linger of the ring's wait starting.
        std::thread::sleep(Duration::from_millis(20));
        let sent = std::time::Instant::now();
        echo.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut echo, &mut got).unwrap();
        assert_eq!(&got, b"ping");
        took.push(sent.elapsed());
    }
    assert!(
        took[0] < LINGER / 2 && took[1] > LINGER / 2,
        "replies took {took:?} unbatched, then batched, with a {LINGER:?} linger"
    );
    ring.join().unwrap();
}

/// A server's worker batches while a load keeps it busy and stops when the
/// load ends (the bar set low so that a test's load passes it).
#[test]
fn a_worker_batches_while_busy_and_stops_when_quiet() {
    let _alone = ONE_SERVER.lock().unwrap_or_else(PoisonError::into_inner);
    let srv = start(
        Driver::Uring,
        "[server]\nwake_batch = 32\nwake_linger_us = 100\nwake_batch_busy_percent = 5\n",
    );
    let batching = || common::metric(&srv.metrics(), "trackplane_workers_batching_wakeups");
    let changes = || common::metric(&srv.metrics(), "trackplane_wake_batch_changes_total");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(batching(), 0.0, "an idle worker does not batch");
    if !kernel_batches_wakeups() {
        return;
    }
    // Pipelined health checks from two connections until the worker
    // batches, for at most 10 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, mut conn) = (stop.clone(), srv.connect());
            std::thread::spawn(move || {
                let burst = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    conn.write_all(&burst).unwrap();
                    assert!(read_responses(&mut conn, 32)
                        .iter()
                        .all(|r| r.status == 200));
                }
            })
        })
        .collect();
    let until = |want: f64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while batching() != want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        batching() == want
    };
    let busy = until(1.0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    assert!(busy, "the worker did not batch under load in 10 s");
    assert!(until(0.0), "the worker still batched 10 s after the load");
    assert!(changes() >= 2.0, "{} changes", changes());
}
