//! The runtime's idle work (`monoio::set_idle_work`, vendored), on a ring
//! built as a worker's is and on the epoll driver: work that is never done
//! starves neither a socket nor a timer, a turn learns when I/O is waiting
//! (io_uring's task-run flag), bytes that arrive during the work wait for
//! the turn under way and no more, and work that is done lets the thread
//! sleep. (Work that is behind, `IdleTurn::Behind`, is the packer's:
//! `store::pack`'s tests and `tests/store.rs`.)

mod common;

use common::worker_runtime;
use std::cell::Cell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

fn epoll_runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

/// Turns given, and how many of them were told I/O was waiting.
#[derive(Default)]
struct Turns {
    all: Cell<u64>,
    io_waiting: Cell<u64>,
}

/// Idle work that always has more: counts its turns.
fn endless(turns: &Rc<Turns>) -> monoio::IdleWork {
    let turns = turns.clone();
    Box::new(move |io_waiting| {
        turns.all.set(turns.all.get() + 1);
        if io_waiting {
            turns.io_waiting.set(turns.io_waiting.get() + 1);
        }
        monoio::IdleTurn::More
    })
}

/// A client thread that connects to `addr` and, twenty times, waits
/// `gap`, sends `len` bytes of the round's number and checks they come
/// back.
fn echo_client(
    addr: std::net::SocketAddr,
    len: usize,
    gap: Duration,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for round in 0..20u8 {
            std::thread::sleep(gap);
            c.write_all(&vec![round; len]).unwrap();
            let mut back = vec![0u8; len];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, vec![round; len]);
        }
    })
}

/// With idle work that never ends, an echo over a real socket still
/// answers and a timer still fires; returns the turns given.
async fn echo_and_sleep_under_endless_work() -> Rc<Turns> {
    let turns = Rc::new(Turns::default());
    monoio::set_idle_work(Some(endless(&turns)));
    let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The client is another thread: its bytes arrive while this one works.
    let client = echo_client(addr, 64, Duration::from_millis(2));
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut echoed = 0;
    while echoed < 20 * 64 {
        let (r, buf) = conn.read(Vec::with_capacity(64)).await;
        let n = r.unwrap();
        assert!(n > 0, "the client closed early");
        let (w, _) = conn.write_all(buf).await;
        w.unwrap();
        echoed += n;
    }
    client.join().unwrap();
    let slept = Instant::now();
    monoio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        slept.elapsed() < Duration::from_secs(2),
        "a 10 ms timer took {:?}",
        slept.elapsed()
    );
    monoio::set_idle_work(None);
    turns
}

#[test]
fn endless_idle_work_starves_no_io_and_learns_when_io_waits_on_io_uring() {
    let turns = worker_runtime().block_on(echo_and_sleep_under_endless_work());
    assert!(turns.all.get() > 0, "the idle work never ran");
    // Twenty requests came while the thread worked; the flag told the work
    // so at least once (without reading it, never).
    assert!(
        turns.io_waiting.get() > 0,
        "no turn was told I/O was waiting, in {} turns",
        turns.all.get()
    );
}

#[test]
fn endless_idle_work_starves_no_io_on_epoll() {
    let turns = epoll_runtime().block_on(echo_and_sleep_under_endless_work());
    assert!(turns.all.get() > 0, "the idle work never ran");
}

/// Idle work that always has more and keeps its thread 1 ms a turn (a
/// compression piece is a few µs, but a turn's length is not what is
/// tested), except a turn told I/O is waiting, which does nothing. A turn
/// that kept the thread and ended with bytes waiting on `socket` counts in
/// `late`.
fn endless_and_slow(socket: std::net::TcpStream, late: &Rc<Cell<u64>>) -> monoio::IdleWork {
    let late = late.clone();
    Box::new(move |io_waiting| {
        if !io_waiting {
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(1) {}
            if socket.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
                late.set(late.get() + 1);
            }
        }
        monoio::IdleTurn::More
    })
}

/// Over twenty one-byte echoes, the most turns of idle work that ended
/// with a round's byte already waiting to be read. Counted by the server's
/// own thread in turns, not time, so that a loaded machine does not change
/// the answer.
async fn most_turns_a_byte_waits() -> u64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = echo_client(addr, 1, Duration::from_millis(3));
    let (accepted, _) = listener.accept().unwrap();
    // The work peeks through a second handle on the same socket; peeking
    // must not block, and the runtime's own handle does not mind.
    let peek = accepted.try_clone().unwrap();
    peek.set_nonblocking(true).unwrap();
    let mut conn = monoio::net::TcpStream::from_std(accepted).unwrap();
    let late = Rc::new(Cell::new(0));
    monoio::set_idle_work(Some(endless_and_slow(peek, &late)));
    let mut most = 0;
    for _ in 0..20 {
        let (r, buf) = conn.read(Vec::with_capacity(1)).await;
        assert_eq!(r.unwrap(), 1, "one byte a round");
        most = most.max(late.replace(0));
        let (w, _) = conn.write_all(buf).await;
        w.unwrap();
    }
    client.join().unwrap();
    monoio::set_idle_work(None);
    most
}

#[test]
fn bytes_arriving_during_idle_work_wait_for_one_turn_on_either_driver() {
    for (driver, most) in [
        (
            "io_uring",
            worker_runtime().block_on(most_turns_a_byte_waits()),
        ),
        ("epoll", epoll_runtime().block_on(most_turns_a_byte_waits())),
    ] {
        // The turn under way when the byte came, and no other (a second
        // only when the byte lands in the µs between the socket taking it
        // and the kernel telling the ring, or the poll after the turn).
        assert!(
            most <= 2,
            "{driver}: a byte waited through up to {most} turns of idle work"
        );
    }
}

/// Work that is done gets one turn per park and lets the thread sleep: a
/// 100 ms timer costs a few turns, not a busy loop's thousands.
async fn finished_work_lets_the_thread_sleep() -> u64 {
    let turns = Rc::new(Cell::new(0u64));
    let t = turns.clone();
    monoio::set_idle_work(Some(Box::new(move |_| {
        t.set(t.get() + 1);
        monoio::IdleTurn::Done
    })));
    monoio::time::sleep(Duration::from_millis(100)).await;
    monoio::set_idle_work(None);
    turns.get()
}

#[test]
fn finished_idle_work_lets_the_thread_sleep_on_either_driver() {
    for (driver, turns) in [
        (
            "io_uring",
            worker_runtime().block_on(finished_work_lets_the_thread_sleep()),
        ),
        (
            "epoll",
            epoll_runtime().block_on(finished_work_lets_the_thread_sleep()),
        ),
    ] {
        assert!(
            (1..=10).contains(&turns),
            "{driver}: {turns} turns in a 100 ms sleep"
        );
    }
}
