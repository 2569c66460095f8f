//! Timers on a ring built as a worker's (vendored monoio): a wait for
//! completions arms no kernel timer of its own. One timeout request stands
//! in the ring until the soonest timer's deadline and is armed again only
//! when a sooner timer comes or it has ended. What can go wrong: a sooner
//! timer waiting for the standing timeout (the first test), a timer ending
//! early, or a thread woken over and over by timeouts that never stop
//! coming (the second).

mod common;

use common::worker_runtime;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use monoio::io::AsyncReadRent;

/// This thread's voluntary context switches so far: its sleeps.
fn sleeps_so_far() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// A thread parks with only a 5 s timer ahead (the standing timeout ends
/// then) and wakes for a socket; a 20 ms timer set after that ends in about
/// 20 ms, not at the standing timeout.
#[test]
fn a_sooner_timer_is_not_held_until_the_standing_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        c.write_all(b"x").unwrap();
        let mut end = [0u8; 1];
        let _ = c.read(&mut end);
    });
    let took = worker_runtime().block_on(async move {
        let far = monoio::spawn(monoio::time::sleep(Duration::from_secs(5)));
        let mut conn = monoio::net::TcpStream::connect(addr).await.unwrap();
        // Parks here with the 5 s timer alone.
        let (r, _) = conn.read(vec![0u8; 1]).await;
        assert_eq!(r.unwrap(), 1);
        let start = Instant::now();
        monoio::time::sleep(Duration::from_millis(20)).await;
        let took = start.elapsed();
        drop(far);
        drop(conn);
        took
    });
    peer.join().unwrap();
    assert!(took >= Duration::from_millis(20), "ended early: {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "a 20 ms timer took {took:?}: it waited for the standing timeout"
    );
}

/// Twenty 20 ms timers one after another, with a 1 s timer standing
/// behind them all along: each ends no sooner than it is due, all of them
/// in about 400 ms, and the thread sleeps about once for each, not over
/// and over for timeouts armed earlier.
#[test]
fn timers_in_a_row_end_on_time_and_the_thread_sleeps_between() {
    let (took, sleeps) = worker_runtime().block_on(async {
        let behind = monoio::spawn(async {
            loop {
                monoio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        monoio::time::sleep(Duration::from_millis(1)).await;
        let before = sleeps_so_far();
        let start = Instant::now();
        for _ in 0..20 {
            let t = Instant::now();
            monoio::time::sleep(Duration::from_millis(20)).await;
            let took = t.elapsed();
            assert!(took >= Duration::from_millis(20), "ended early: {took:?}");
        }
        let took = start.elapsed();
        drop(behind);
        (took, sleeps_so_far() - before)
    });
    assert!(
        took < Duration::from_secs(2),
        "twenty 20 ms timers took {took:?}"
    );
    assert!(
        (10..=100).contains(&sleeps),
        "{sleeps} sleeps for twenty timers"
    );
}
