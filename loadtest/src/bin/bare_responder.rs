//! The floor: a bare monoio + httparse responder that answers every request
//! with nginx's empty GIF and does nothing else. `bench/compare.sh` races
//! trackplane and nginx against it, and the loadtest measures its own floor
//! on it.
//!
//! `bare-responder 127.0.0.1:8082 [uring|uring-coop|uring-defer|uring-worker|uring-batched|epoll]`
//!
//! `uring-worker` drives the kernel the way trackplane's unbatched workers
//! do: a deferred ring, receives that arm poll first, answers sent by one
//! nonblocking send(2) before the ring's send. It is the floor of
//! trackplane's own I/O path (`bench/floors-together.sh`). `uring-batched`
//! adds the batched wake-ups of trackplane's default config (`wake_batch =
//! 32`, `wake_linger_us = 200`): the floor of its latency.

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nServer: bare\r\nContent-Type: image/gif\r\nContent-Length: 43\r\nConnection: keep-alive\r\n\r\nGIF89a\x01\x00\x01\x00\x80\x01\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x01\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x4c\x01\x00\x3b";

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".into());
    let driver = std::env::args().nth(2).unwrap_or_else(|| "uring".into());
    if driver == "epoll" {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        rt.block_on(accept_loop(addr, false));
        return;
    }
    let mut urb = io_uring::IoUring::builder();
    match driver.as_str() {
        "uring-coop" => {
            urb.setup_coop_taskrun().setup_single_issuer();
        }
        "uring-defer" => {
            urb.setup_coop_taskrun()
                .setup_single_issuer()
                .setup_defer_taskrun();
        }
        "uring-worker" | "uring-batched" => {
            // As trackplane's workers build their rings (server/worker.rs).
            urb.setup_coop_taskrun()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        }
        _ => {}
    }
    // As trackplane's workers: receives that arm poll first, answers by
    // one nonblocking send(2) first.
    let worker = driver == "uring-worker" || driver == "uring-batched";
    monoio::set_recv_poll_first(worker);
    let wait = match driver.as_str() {
        "uring-batched" => monoio::WaitBatch {
            events: 32,
            min_wait: std::time::Duration::from_micros(200),
        },
        _ => monoio::WaitBatch::default(),
    };
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(urb)
        .wait_batch(wait)
        .build()
        .expect("runtime");
    rt.block_on(accept_loop(addr, worker));
}

async fn accept_loop(addr: String, send_first: bool) {
    let listener = TcpListener::bind(&addr).expect("bind");
    if let Ok(bound) = listener.local_addr() {
        eprintln!("listening on {bound}");
    }
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            monoio::spawn(serve(stream, send_first));
        }
    }
}

async fn serve(mut stream: TcpStream, send_first: bool) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let mut pos = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[pos..]) {
                Ok(httparse::Status::Complete(n)) => {
                    pos += n;
                    out.extend_from_slice(ANSWER);
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            }
        }
        buf.drain(..pos);
        if send_first && !out.is_empty() {
            let sent = send_now(&stream, &out);
            out.drain(..sent);
        }
        if !out.is_empty() {
            let (res, o) = stream.write_all(out).await;
            out = o;
            out.clear();
            if res.is_err() {
                return;
            }
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        let len = buf.len();
        let cap = buf.capacity();
        let (res, slice) = stream
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
            .await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// What one nonblocking send(2) took of `buf` (0 when it took nothing or
/// failed; the ring's send then reports the failure).
#[allow(unsafe_code)]
fn send_now(stream: &TcpStream, buf: &[u8]) -> usize {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the descriptor is `stream`'s, open for this call, and `buf`
    // is valid for `buf.len()` bytes.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).unwrap_or(0)
}
