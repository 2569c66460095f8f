//! The vendored runtime's multishot receive (`monoio::MultiRecv`), driven
//! directly on real sockets: what the connection loop relies on and the
//! server tests cannot force: a receive that pauses when its owner takes
//! nothing and resumes in order, a buffer ring that runs dry, and a
//! dropped receive that lets its socket close.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// A ring as the workers build it, with multishot receives.
fn runtime() -> Runtime {
    let mut b = io_uring::IoUring::builder();
    b.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    runtime_on(b)
}

fn runtime_on(b: io_uring::Builder) -> Runtime {
    monoio::set_multishot_recv(true);
    let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .uring_builder(b)
        .enable_timer()
        .build()
        .unwrap();
    assert!(
        monoio::multishot_recv_active(),
        "the buffer ring was refused"
    );
    rt
}

/// The bytes a client sends: a pattern no reordering or loss survives.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

#[test]
fn a_receive_pauses_while_its_owner_takes_nothing_then_resumes_in_order() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    const LEN: usize = 4 << 20;
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        wait.recv().unwrap();
        c.write_all(&pattern(LEN)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
    });
    let (server_side, _) = listener.accept().unwrap();
    let (held, got) = runtime().block_on(async move {
        let stream = monoio::net::TcpStream::from_std(server_side).unwrap();
        let mut multi = monoio::MultiRecv::new(stream.as_raw_fd()).expect("multishot");
        let mut buf = Vec::new();
        // A first receive, with nothing sent yet, arms the request; then
        // the client sends and the owner takes nothing for a while.
        let first = monoio::time::timeout(Duration::from_millis(20), multi.recv(&mut buf)).await;
        assert!(first.is_err() && buf.is_empty());
        go.send(()).unwrap();
        monoio::time::sleep(Duration::from_millis(300)).await;
        let held = multi.pending();
        loop {
            match multi.recv(&mut buf).await.unwrap() {
                0 => break,
                _ => continue,
            }
        }
        drop(multi);
        drop(stream);
        (held, buf)
    });
    sender.join().unwrap();
    // Paused past 8 KiB, with what the kernel had received in the same
    // pass (its multishot receive loops up to 32 times, 32 KiB of 1 KiB
    // buffers), not megabytes.
    assert!(held >= 8 * 1024, "held {held} bytes");
    assert!(held <= 48 * 1024, "held {held} bytes");
    assert_eq!(got.len(), LEN);
    assert!(got == pattern(LEN), "bytes lost or out of order");
}

#[test]
fn more_receives_at_once_than_the_ring_has_buffers_all_complete() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    const CONNS: usize = 600;
    // One at a time: the listener's backlog is shorter than CONNS.
    let (clients, accepted): (Vec<TcpStream>, Vec<TcpStream>) = (0..CONNS)
        .map(|_| {
            (
                TcpStream::connect(addr).unwrap(),
                listener.accept().unwrap().0,
            )
        })
        .unzip();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (sent, all_sent) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let mut clients = clients;
        wait.recv().unwrap();
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(format!("connection {i:04}\n").as_bytes())
                .unwrap();
        }
        sent.send(()).unwrap();
        clients
    });
    // A ring without deferred completion work: the kernel runs each
    // receive as its bytes arrive, whatever this thread does (a deferred
    // one runs a few at a time when the thread waits, and gives the
    // buffers time to come back).
    let got = runtime_on(io_uring::IoUring::builder()).block_on(async move {
        let mut tasks = Vec::new();
        for s in accepted {
            tasks.push(monoio::spawn(async move {
                let stream = monoio::net::TcpStream::from_std(s).unwrap();
                let mut multi = monoio::MultiRecv::new(stream.as_raw_fd()).unwrap();
                let mut buf = Vec::new();
                while !buf.ends_with(b"\n") {
                    if multi.recv(&mut buf).await.unwrap() == 0 {
                        break;
                    }
                }
                buf
            }));
        }
        // Every receive armed and in the kernel...
        monoio::time::sleep(Duration::from_millis(50)).await;
        // ...then all the bytes arrive while this thread is away and gives
        // no buffer back: more receives than the ring has buffers.
        go.send(()).unwrap();
        all_sent.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut got = Vec::new();
        for t in tasks {
            got.push(t.await);
        }
        got
    });
    let _clients = writer.join().unwrap();
    for (i, buf) in got.iter().enumerate() {
        assert_eq!(buf, format!("connection {i:04}\n").as_bytes());
    }
}

#[test]
fn a_dropped_receive_lets_its_socket_close() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (server_side, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let (closed, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = closed.send(client.read_to_end(&mut rest).map_err(|e| e.kind()));
    });
    let eof = runtime().block_on(async move {
        let stream = monoio::net::TcpStream::from_std(server_side).unwrap();
        let mut multi = monoio::MultiRecv::new(stream.as_raw_fd()).unwrap();
        let mut buf = Vec::new();
        multi.recv(&mut buf).await.unwrap();
        assert_eq!(buf, b"hello");
        // Armed again and waiting: dropping both must close the socket
        // while the ring lives on, not leave the kernel's request holding
        // it open (closing the ring would close it anyway).
        drop(multi);
        drop(stream);
        for _ in 0..200 {
            if let Ok(r) = seen.try_recv() {
                return Some(r);
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    });
    reader.join().unwrap();
    assert_eq!(
        eof,
        Some(Ok(0)),
        "the client saw no end of file while the ring lived"
    );
}
