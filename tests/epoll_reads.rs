//! How the vendored runtime's epoll driver reads a stream, on real
//! sockets: as nginx does, a read that fills less than its buffer ends the
//! socket's readiness, so the next read waits for new data instead of
//! first making a `recv` that finds none (one system call a request on a
//! keep-alive connection). What that must not lose: data that comes after
//! such a read, and a close that came with the last data, which epoll
//! reports only once.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use monoio::io::AsyncReadRent;

type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

fn runtime() -> Runtime {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

/// One read of at most 4 KiB, or `None` if nothing came within 2 s.
async fn read(stream: &mut monoio::net::TcpStream) -> Option<Vec<u8>> {
    let read = stream.read(Vec::with_capacity(4096));
    let (res, buf) = monoio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()?;
    res.unwrap();
    Some(buf)
}

/// A client and the server's side of its connection, registered with the
/// runtime that `f` runs on.
fn connected(f: impl AsyncFnOnce(monoio::net::TcpStream, TcpStream)) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server_side, _) = listener.accept().unwrap();
    runtime().block_on(async move {
        let stream = monoio::net::TcpStream::from_std(server_side).unwrap();
        f(stream, client).await;
    });
}

#[test]
fn data_that_comes_after_a_short_read_is_read() {
    connected(async |mut stream, mut client| {
        for round in 0..20u8 {
            let sent = vec![b'a' + round; 100 + usize::from(round)];
            client.write_all(&sent).unwrap();
            // Late enough that the read before found the socket empty.
            if round % 2 == 1 {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            let got = read(&mut stream).await.expect("data after a short read");
            assert_eq!(got, sent, "round {round}");
        }
    });
}

#[test]
fn a_close_that_came_with_the_last_data_is_read_as_the_end() {
    connected(async |mut stream, mut client| {
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        // Both are in before the first read: epoll says so in one event.
        monoio::time::sleep(Duration::from_millis(50)).await;
        let got = read(&mut stream).await.expect("the data");
        assert_eq!(got, b"GET / HTTP/1.0\r\n\r\n");
        let end = read(&mut stream).await.expect("the end, not a wait");
        assert!(end.is_empty(), "read {end:?} after the close");
    });
}

#[test]
fn a_close_after_a_short_read_is_read_as_the_end() {
    connected(async |mut stream, mut client| {
        client.write_all(b"abc").unwrap();
        assert_eq!(read(&mut stream).await.expect("the data"), b"abc");
        client.shutdown(Shutdown::Write).unwrap();
        let end = read(&mut stream).await.expect("the end, not a wait");
        assert!(end.is_empty());
        let mut rest = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        drop(stream);
        client.read_to_end(&mut rest).unwrap();
    });
}
