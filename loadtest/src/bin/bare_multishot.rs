//! A second floor: the same bare responder as `bare-responder`, written on
//! io_uring directly instead of monoio: multishot accept, multishot receive
//! into kernel-provided buffers (one receive request per connection, not
//! one per read), sends batched per completion round, and DEFER_TASKRUN so
//! that completion work runs only when the loop asks for it. It answers
//! every request with nginx's empty GIF and does nothing else.
//! `bench/compare.sh` races it against the monoio floor: the difference is
//! what a custom event loop could save trackplane per request.
//!
//! A second argument changes two things: `send-now` sends answers by one
//! nonblocking send(2) first, as trackplane's workers do; `bufring` gives
//! buffers back through a ring-mapped buffer ring instead of a
//! `ProvideBuffers` request each (bench/results/floors-together-20261201-0130.md).
//!
//! `fused` sends answers through the ring and waits in the same
//! `io_uring_enter` for one completion more than the sends it submitted:
//! a send that completes at once posts its completion before the wait
//! begins, so counting it in the wait's minimum keeps the wait from ending
//! on it, and one call per round does what send(2) and a wait do in two.
//!
//! `bare-multishot 127.0.0.1:8083 [send-now|fused][,bufring]`

use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nServer: bare\r\nContent-Type: image/gif\r\nContent-Length: 43\r\nConnection: keep-alive\r\n\r\nGIF89a\x01\x00\x01\x00\x80\x01\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x01\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x4c\x01\x00\x3b";

const BUF_SIZE: usize = 4096;
const BUFS: u16 = 1024;
const GROUP: u16 = 7;

const ACCEPT: u64 = 1 << 60;
const RECV: u64 = 2 << 60;
const SEND: u64 = 3 << 60;
const PROVIDE: u64 = 4 << 60;
const CLOSE: u64 = 5 << 60;
const TAG: u64 = 0xF << 60;

#[derive(Default)]
struct Conn {
    /// Bytes of a request not complete yet.
    partial: Vec<u8>,
    /// Answers being sent (kernel holds a pointer into it).
    sending: Vec<u8>,
    /// Offset already sent.
    sent: usize,
    /// Answers waiting for the send in flight.
    queued: Vec<u8>,
    in_flight: bool,
    /// A multishot receive is armed.
    recv_armed: bool,
    closing: bool,
}

struct Loop {
    ring: IoUring,
    bufs: Vec<u8>,
    /// Answers go out by one nonblocking send(2) first, as trackplane's
    /// workers send them; only what the socket does not take goes through
    /// the ring.
    send_now: bool,
    /// Sends wait in the ring's next call for one completion beyond
    /// themselves (`fused`); `sends` counts those pushed since that call.
    fused: bool,
    sends: u32,
    /// Buffers are given back through a ring-mapped buffer ring (Linux
    /// 5.19) instead of one `ProvideBuffers` request each.
    buf_ring: Option<BufRing>,
    conns: Vec<Option<Conn>>,
    backlog: VecDeque<squeue::Entry>,
}

impl Loop {
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every pointer in the entries stays valid until their
        // completion: buffers live in `self.bufs` or in a `Conn` whose
        // `sending` vector is not touched while `in_flight`.
        let full = unsafe { self.ring.submission().push(&e).is_err() };
        if full {
            self.backlog.push_back(e);
        }
    }

    fn provide(&mut self, bid: u16, count: u16) {
        if let Some(br) = &mut self.buf_ring {
            for b in bid..bid + count {
                let ptr = self.bufs[usize::from(b) * BUF_SIZE..].as_mut_ptr();
                br.give(ptr, b);
            }
            br.publish();
            return;
        }
        let ptr = self.bufs[usize::from(bid) * BUF_SIZE..].as_mut_ptr();
        let e = opcode::ProvideBuffers::new(ptr, BUF_SIZE as i32, count, GROUP, bid)
            .build()
            .user_data(PROVIDE);
        self.push(e);
    }

    fn recv(&mut self, fd: i32) {
        if let Some(Some(c)) = self.conns.get_mut(fd as usize) {
            c.recv_armed = true;
        }
        let e = opcode::RecvMulti::new(types::Fd(fd), GROUP)
            .build()
            .user_data(RECV | fd as u64);
        self.push(e);
    }

    fn flush(&mut self, fd: i32) {
        let Some(Some(c)) = self.conns.get_mut(fd as usize) else {
            return;
        };
        if c.in_flight {
            return;
        }
        if c.sent == c.sending.len() {
            c.sending.clear();
            c.sent = 0;
            std::mem::swap(&mut c.sending, &mut c.queued);
        }
        if c.sending.is_empty() {
            return;
        }
        if self.send_now {
            let rest = &c.sending[c.sent..];
            // SAFETY: a valid buffer and length; the call does not wait.
            let n = unsafe {
                libc::send(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                c.sent += n as usize;
                if c.sent == c.sending.len() {
                    c.sending.clear();
                    c.sent = 0;
                    return;
                }
            }
        }
        c.in_flight = true;
        let e = opcode::Send::new(
            types::Fd(fd),
            c.sending[c.sent..].as_ptr(),
            (c.sending.len() - c.sent) as u32,
        )
        .build()
        .user_data(SEND | fd as u64);
        self.sends += 1;
        self.push(e);
    }

    /// Ends a connection: shut it down (which ends its receive), and free
    /// its descriptor once no request of ours refers to it, so that a
    /// reused descriptor number never meets a stale completion.
    fn close(&mut self, fd: i32) {
        let Some(Some(c)) = self.conns.get_mut(fd as usize) else {
            return;
        };
        if !c.closing {
            c.closing = true;
            // SAFETY: shutting down a socket descriptor we own.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        if !c.in_flight && !c.recv_armed {
            self.conns[fd as usize] = None;
            self.push(opcode::Close::new(types::Fd(fd)).build().user_data(CLOSE));
        }
    }

    fn on_recv(&mut self, fd: i32, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(Some(c)) = self.conns.get_mut(fd as usize) else {
            if let Some(bid) = bid {
                self.provide(bid, 1);
            }
            return;
        };
        if !more {
            c.recv_armed = false;
        }
        let (Some(bid), true) = (bid, res > 0) else {
            let rearm = res == -libc::ENOBUFS && !c.closing;
            if let Some(bid) = bid {
                self.provide(bid, 1);
            }
            if rearm {
                self.recv(fd);
            } else {
                self.close(fd);
            }
            return;
        };
        if c.closing {
            self.provide(bid, 1);
            self.close(fd);
            return;
        }
        let start = usize::from(bid) * BUF_SIZE;
        let data = &self.bufs[start..start + res as usize];
        let input: &[u8] = if c.partial.is_empty() {
            data
        } else {
            c.partial.extend_from_slice(data);
            &c.partial
        };
        let mut pos = 0;
        let mut answers = 0;
        let mut bad = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&input[pos..]) {
                Ok(httparse::Status::Complete(n)) => {
                    pos += n;
                    answers += 1;
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => {
                    bad = true;
                    break;
                }
            }
        }
        let rest = input[pos..].to_vec();
        c.partial = rest;
        for _ in 0..answers {
            c.queued.extend_from_slice(ANSWER);
        }
        self.provide(bid, 1);
        if bad {
            self.close(fd);
            return;
        }
        self.flush(fd);
        if !more {
            self.recv(fd);
        }
    }

    fn on_send(&mut self, fd: i32, res: i32) {
        let Some(Some(c)) = self.conns.get_mut(fd as usize) else {
            return;
        };
        c.in_flight = false;
        if res < 0 || c.closing {
            self.close(fd);
            return;
        }
        c.sent += res as usize;
        self.flush(fd);
    }
}

/// A ring-mapped buffer ring: entries the kernel takes buffers from, and
/// a tail this loop moves as it gives them back.
struct BufRing {
    entries: *mut types::BufRingEntry,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> BufRing {
        let layout =
            std::alloc::Layout::from_size_align(usize::from(BUFS) * 16, 4096).expect("layout");
        // SAFETY: a nonzero size; the memory lives for the process.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        // SAFETY: page-aligned memory of BUFS entries that outlives the ring.
        unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, BUFS, GROUP)
        }
        .expect("register_buf_ring");
        BufRing { entries, tail: 0 }
    }

    fn give(&mut self, ptr: *mut u8, bid: u16) {
        // SAFETY: the index is masked to the ring's size.
        let e = unsafe { &mut *self.entries.add(usize::from(self.tail & (BUFS - 1))) };
        e.set_addr(ptr as u64);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field of the ring's first entry, shared with the
        // kernel, which reads it with acquire ordering.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut();
            (*(tail as *const std::sync::atomic::AtomicU16))
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8083".into());
    let modes = std::env::args().nth(2).unwrap_or_default();
    let listener = TcpListener::bind(&addr).expect("bind");
    eprintln!("listening on {}", listener.local_addr().expect("bound"));
    let ring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)
        .expect("io_uring");
    let buf_ring = modes.contains("bufring").then(|| BufRing::new(&ring));
    let mut lp = Loop {
        ring,
        bufs: vec![0u8; BUF_SIZE * usize::from(BUFS)],
        send_now: modes.contains("send-now"),
        fused: modes.contains("fused"),
        sends: 0,
        buf_ring,
        conns: Vec::new(),
        backlog: VecDeque::new(),
    };
    lp.provide(0, BUFS);
    let lfd = listener.as_raw_fd();
    lp.push(
        opcode::AcceptMulti::new(types::Fd(lfd))
            .build()
            .user_data(ACCEPT),
    );
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
    loop {
        let want = if lp.fused { 1 + lp.sends as usize } else { 1 };
        lp.sends = 0;
        if let Err(e) = lp.ring.submit_and_wait(want) {
            if e.raw_os_error() != Some(libc::EINTR) {
                panic!("io_uring_enter: {e}");
            }
        }
        done.clear();
        done.extend(
            lp.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(ud, res, flags) in &done {
            let fd = (ud & !TAG) as i32;
            match ud & TAG {
                ACCEPT => {
                    if res >= 0 {
                        let one: libc::c_int = 1;
                        // SAFETY: a valid option pointer and length.
                        unsafe {
                            libc::setsockopt(
                                res,
                                libc::IPPROTO_TCP,
                                libc::TCP_NODELAY,
                                (&one as *const libc::c_int).cast(),
                                std::mem::size_of::<libc::c_int>() as u32,
                            );
                        }
                        let slot = res as usize;
                        if lp.conns.len() <= slot {
                            lp.conns.resize_with(slot + 1, || None);
                        }
                        lp.conns[slot] = Some(Conn::default());
                        lp.recv(res);
                    }
                    if !cqueue::more(flags) {
                        lp.push(
                            opcode::AcceptMulti::new(types::Fd(lfd))
                                .build()
                                .user_data(ACCEPT),
                        );
                    }
                }
                RECV => lp.on_recv(fd, res, flags),
                SEND => lp.on_send(fd, res),
                _ => {}
            }
        }
        while let Some(e) = lp.backlog.pop_front() {
            // SAFETY: as in `push`.
            if unsafe { lp.ring.submission().push(&e).is_err() } {
                lp.backlog.push_front(e);
                break;
            }
        }
    }
}
