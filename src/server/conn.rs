//! The connection loop: read into one buffer, answer every complete request
//! in it (pipelining), write all answers with one send, repeat. Buffers are
//! reused for the life of the connection: handed to the kernel and back
//! (monoio's owned-buffer I/O), or traded with the connection's multishot
//! receive, which fills its own from the worker's buffer ring.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use monoio::buf::IoBufMut as _;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::{Instant, Sleep};

use crate::http::{chunked, parse_head, response};
use crate::server::worker::Worker;

const INITIAL_READ: usize = 4096;
const INITIAL_WRITE: usize = 2048;
/// Answers are sent once this many bytes of them wait, before the rest of
/// the requests already read are answered: a client that pipelines much
/// and reads little holds this much of ours, not answers to all it sent.
const FLUSH_AT: usize = 16 * 1024;
/// A connection whose buffer grew past this for a large body gives the
/// memory back once the body is answered.
const KEEP_READ: usize = 64 * 1024;

/// Serves one client connection until it closes, errs, idles out or the
/// worker shuts down.
pub async fn serve(worker: Rc<Worker>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    // One receive request for the connection's life where the worker's
    // ring has them (`server.multishot_recv`); else one per read.
    let mut multi = monoio::MultiRecv::new(stream.as_raw_fd());
    let cfg = &worker.shared.config.server;
    let limits = worker.limits;
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let header_timeout = Duration::from_millis(cfg.header_timeout_ms);
    let body_timeout = Duration::from_millis(cfg.body_timeout_ms);
    let send_timeout = Duration::from_millis(cfg.send_timeout_ms);
    let lingering = Duration::from_millis(cfg.lingering_close_ms);
    let mut rbuf: Vec<u8> = Vec::with_capacity(INITIAL_READ);
    let mut wbuf: Vec<u8> = Vec::with_capacity(INITIAL_WRITE);
    // Fresh until its first bytes arrive: shutdown waits for it a moment
    // (`worker::FRESH_GRACE`), then for what it began.
    let mut busy = Busy::new(&worker);
    // When the bytes last read arrived, for deadlines and event times
    // alike: the runtime's reading from when it reaped them
    // (`monoio::time::recent`), so that a request costs no clock read of
    // its own.
    let mut arrived = monoio::time::recent();
    // When the request now in the buffer began.
    let mut started = arrived;
    // Every read's deadline, one timer for the connection's life: moved
    // later, it stays where the runtime's timer wheel has it and is only
    // moved there when that time comes (`read_more`).
    let mut timer = std::pin::pin!(monoio::time::sleep_until(started + header_timeout));
    let mut sent_continue = false;
    // How far the chunked body now arriving has been checked.
    let mut progress = chunked::Progress::default();
    loop {
        let mut pos = 0;
        let mut close = false;
        let mut awaiting_body = false;
        // Requests left in the buffer to answer after this round's send.
        let mut more = false;
        while pos < rbuf.len() {
            if wbuf.len() >= FLUSH_AT {
                more = true;
                break;
            }
            match parse_head(&rbuf[pos..], &limits) {
                Ok(None) => break,
                Ok(Some(mut head)) => {
                    // Bytes this request takes in the buffer; `None` while a
                    // chunked body is still arriving (its length unknown).
                    let total = if head.chunked {
                        let body = pos + head.head_len;
                        match chunked::scan(&rbuf[body..], limits.max_body_bytes, &mut progress) {
                            Ok(Some(sc)) => {
                                progress = chunked::Progress::default();
                                head.content_length =
                                    chunked::decode(&mut rbuf[body..body + sc.encoded_len]);
                                Some(head.head_len + sc.encoded_len)
                            }
                            Ok(None) => None,
                            Err(e) => {
                                worker.handler.borrow_mut().reject(e.into(), &mut wbuf);
                                close = true;
                                break;
                            }
                        }
                    } else {
                        Some(head.head_len + head.content_length)
                    };
                    let have = rbuf.len() - pos;
                    let Some(total) = total.filter(|&t| have >= t) else {
                        awaiting_body = true;
                        if head.expect_continue && !sent_continue {
                            wbuf.extend_from_slice(response::CONTINUE);
                            sent_continue = true;
                        }
                        // Room for the rest: the declared length, or (chunked)
                        // one more byte, which doubles a full buffer.
                        let need = total.unwrap_or(have + 1);
                        if rbuf.capacity() - pos < need {
                            rbuf.reserve(need - have);
                        }
                        break;
                    };
                    sent_continue = false;
                    let keep = worker.handler.borrow_mut().handle(
                        &mut rbuf[pos..pos + head.head_len + head.content_length],
                        &head,
                        peer.ip(),
                        arrived.into_std(),
                        &mut wbuf,
                    );
                    pos += total;
                    // What follows in the buffer arrived with this read.
                    started = arrived;
                    if !keep {
                        close = true;
                        break;
                    }
                }
                Err(e) => {
                    worker.handler.borrow_mut().reject(e, &mut wbuf);
                    close = true;
                    break;
                }
            }
        }
        // The send timeout counts from the read, or from the end of a wait
        // for durability (which may be longer than the timeout).
        let mut answered = arrived;
        let sync_wait = worker.handler.borrow_mut().take_sync_wait();
        if let Some(seq) = sync_wait {
            wait_durable(&worker, seq).await;
            answered = Instant::now();
        }
        if !wbuf.is_empty() {
            match send_now(&stream, &wbuf) {
                Ok(n) => drop(wbuf.drain(..n)),
                Err(_) => break,
            }
        }
        if !wbuf.is_empty() {
            // A client that does not read its answers keeps this write
            // pending, and the connection with it, unless it times out.
            let write = stream.write_all(wbuf);
            let Ok((res, buf)) = monoio::time::timeout_at(answered + send_timeout, write).await
            else {
                worker.metrics.send_timeouts.inc();
                break;
            };
            wbuf = buf;
            wbuf.clear();
            if res.is_err() {
                break;
            }
        }
        if close {
            // Bytes past the last answered request: the client may still
            // be sending (the rest of an oversized head or a refused body).
            if pos < rbuf.len() && !lingering.is_zero() {
                busy.set(false);
                let until = Instant::now() + lingering;
                linger(&mut stream, &mut multi, rbuf, timer.as_mut(), until).await;
            }
            break;
        }
        rbuf.drain(..pos);
        if more {
            continue;
        }
        if rbuf.is_empty() && !busy.fresh {
            busy.set(false);
            if rbuf.capacity() > KEEP_READ {
                rbuf = Vec::with_capacity(INITIAL_READ);
            }
            if worker.shutting_down() {
                break;
            }
        }
        // Room for the rest of a head up to the limit (one byte past it, so
        // that an oversized head is seen as such).
        if rbuf.len() == rbuf.capacity() {
            let cap = rbuf.capacity();
            rbuf.reserve(
                (cap * 2)
                    .min(limits.max_header_bytes + 1)
                    .saturating_sub(cap)
                    .max(1),
            );
        }
        // Idle and body deadlines count from the last read, not from when
        // its answer went out: the answers are small, and a client that
        // does not read them keeps the write, not the idle wait, pending
        // (until the send timeout).
        let deadline = if busy.fresh {
            started + header_timeout
        } else if rbuf.is_empty() {
            arrived + idle
        } else if awaiting_body {
            arrived + body_timeout
        } else {
            started + header_timeout
        };
        let len = rbuf.len();
        let read = read_more(&mut stream, &mut multi, &mut rbuf, timer.as_mut(), deadline);
        let Some(res) = read.await else {
            if len > 0 {
                worker.handler.borrow_mut().timeout(&mut wbuf);
                // The deadline just passed: it stands for now.
                let write = stream.write_all(wbuf);
                let _ = monoio::time::timeout_at(deadline + send_timeout, write).await;
            }
            break;
        };
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                // From the first byte of a request until its answer is
                // written, shutdown waits for this connection.
                busy.set(true);
                arrived = monoio::time::recent();
                if len == 0 {
                    started = arrived;
                }
            }
        }
    }
}

/// Sends what the socket takes now, with one send(2) that does not wait.
/// Answers are small and a socket's buffer almost always takes them whole,
/// which spares a ring operation, its completion, a timer and a second wake
/// of this task (5.6% of the process's CPU per request at 20k/s unbatched,
/// 3-3.5% batched, `bench/results/together-20261130-0625.md`); what is left
/// goes through the runtime's send, under the send timeout.
///
/// The call is made through syscall(2), not libc's `send`: that one is a
/// thread-cancellation point, which in a process with threads turns
/// asynchronous cancellation on and off around every call (two atomic
/// updates of the thread's state and two calls). Side by side the worker
/// spent 0.990 of its CPU a request without them, lower in 12 of 12
/// windows (`bench/results/together-send-20261206-1550.md`).
#[allow(unsafe_code)]
fn send_now(stream: &impl std::os::fd::AsRawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `stream` owns the descriptor; `buf` is valid for its length.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            stream.as_raw_fd(),
            buf.as_ptr(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => Ok(0),
        _ => Err(e),
    }
}

/// Ends a connection closed after an answer while the client may still be
/// sending, as nginx's `lingering_close` does: closing with the client's
/// bytes unread would send a reset, and the client, still writing, could
/// lose the answer with it (RFC 9112 §9.6). So the answer is followed by
/// an end of file, and what the client sends meanwhile is read and dropped
/// until it closes or `until` passes.
async fn linger(
    stream: &mut TcpStream,
    multi: &mut Option<monoio::MultiRecv>,
    mut buf: Vec<u8>,
    mut timer: Pin<&mut Sleep>,
    until: Instant,
) {
    // SHUT_WR: the answer, then the end of file.
    if stream.shutdown().await.is_err() {
        return;
    }
    loop {
        buf.clear();
        buf.reserve(INITIAL_READ);
        let read = read_more(stream, multi, &mut buf, timer.as_mut(), until);
        if !matches!(read.await, Some(Ok(n)) if n > 0) {
            return;
        }
    }
}

/// Reads what comes next onto the end of `buf`, by `deadline`: into its
/// spare capacity, or the connection's multishot receive's bytes. `None`
/// when the deadline passed first; `buf` is then empty: it went with the
/// read, and the connection ends.
///
/// The deadline is `timer`'s, the connection's one timer, not a timer of
/// the read's own: a read's timer went into the runtime's timer wheel when
/// the read waited and out of it when the read was done, once a request
/// (172 instructions a request, 0.9% of a worker's; not separable in CPU
/// time, `bench/results/together-timer-20261205-2058.md`).
/// Moved later, as a keep-alive connection's deadline moves with each
/// request, the timer stays where the wheel has it; when that time comes
/// the wheel finds the later deadline and moves it there, once an idle
/// timeout, without waking the connection. Moved earlier (a request's head
/// arrived in part), it is moved in the wheel at once.
async fn read_more(
    stream: &mut TcpStream,
    multi: &mut Option<monoio::MultiRecv>,
    buf: &mut Vec<u8>,
    mut timer: Pin<&mut Sleep>,
    deadline: Instant,
) -> Option<std::io::Result<usize>> {
    timer.as_mut().reset(deadline);
    match multi {
        Some(multi) => by_deadline(multi.recv(buf), timer).await,
        None => {
            let (len, cap) = (buf.len(), buf.capacity());
            let read = stream.read(std::mem::take(buf).slice_mut(len..cap));
            let (res, slice) = by_deadline(read, timer).await?;
            *buf = slice.into_inner();
            Some(res)
        }
    }
}

/// `work`'s output, or `None` if `timer` fires first.
async fn by_deadline<F: Future>(work: F, mut timer: Pin<&mut Sleep>) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Waits until the store has synced `seq` (group commit), or the sync
/// timeout passes, or an fdatasync failed and nothing will be synced for
/// sure any more (both counted).
async fn wait_durable(worker: &Worker, seq: u64) {
    let stream = &worker.shared.streams[worker.index];
    let deadline =
        Instant::now() + Duration::from_millis(worker.shared.config.storage.sync_timeout_ms);
    let sync_failed = &worker.shared.store_status.sync_failed;
    while !stream.is_durable(seq) {
        if Instant::now() >= deadline || sync_failed.load(Ordering::Relaxed) {
            worker.metrics.sync_timeouts.inc();
            return;
        }
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Counts the connection as fresh (accepted, nothing read) until it is
/// first set, and as in flight (holding part of a request) while set, so
/// that shutdown waits for it; clears itself when dropped.
struct Busy<'a> {
    worker: &'a Worker,
    on: bool,
    fresh: bool,
}

impl<'a> Busy<'a> {
    fn new(worker: &'a Worker) -> Busy<'a> {
        worker.metrics.connections_open.inc();
        worker.fresh.set(worker.fresh.get() + 1);
        Busy {
            worker,
            on: false,
            fresh: true,
        }
    }

    fn set(&mut self, on: bool) {
        if self.fresh {
            self.fresh = false;
            self.worker.fresh.set(self.worker.fresh.get() - 1);
        }
        if on != self.on {
            self.on = on;
            let n = self.worker.in_flight.get();
            self.worker.in_flight.set(if on { n + 1 } else { n - 1 });
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set(false);
        self.worker.metrics.connections_open.dec();
        self.worker
            .connections
            .set(self.worker.connections.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::{TcpListener, TcpStream};

    use super::send_now;

    #[test]
    fn send_now_sends_what_fits_then_nothing_then_fails_once_the_peer_is_gone() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server_side, _) = listener.accept().unwrap();
        let answer = [7u8; 145];
        assert_eq!(send_now(&client, &answer).unwrap(), answer.len());
        let mut got = [0u8; 145];
        server_side.read_exact(&mut got).unwrap();
        assert_eq!(got, answer);
        // A peer that does not read: the buffers fill, a send takes part of
        // what it is given, then nothing, and never waits.
        let big = vec![1u8; 1 << 20];
        let mut total = 0;
        let mut short = false;
        for _ in 0..1000 {
            let n = send_now(&client, &big).unwrap();
            total += n;
            short |= n < big.len();
            if n == 0 {
                break;
            }
        }
        assert!(short && total > 0);
        assert_eq!(send_now(&client, &answer).unwrap(), 0);
        // A peer that closed with data unread resets the connection: an
        // error, not a signal that kills the process.
        drop(server_side);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut failed = false;
        for _ in 0..10 {
            if send_now(&client, &answer).is_err() {
                failed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(failed);
    }
}
