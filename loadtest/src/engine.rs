//! The open-loop engine. wrk2's semantics: each connection has a constant
//! request rate and one request outstanding; a request's latency runs from
//! the time it was *due*, not from when it was sent, so a slow server cannot
//! hide its stalls by slowing the generator (coordinated omission).
//!
//! Sharper than wrk2 on a small VM: one thread busy-polls nonblocking
//! sockets (epoll with a zero timeout) and sends each request at its due
//! time to the microsecond, instead of on a millisecond timer tick.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What one run measured.
pub struct Report {
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    pub status_2xx_3xx: u64,
    pub status_other: u64,
    pub elapsed: Duration,
    /// Latency in nanoseconds from due time to the last byte of the answer.
    pub latency: Histogram<u64>,
}

struct Conn {
    stream: TcpStream,
    next_due: Instant,
    outstanding: Option<Instant>,
    pending_write: usize,
    write_from: usize,
    buf: Vec<u8>,
    request: usize,
}

/// Runs `rate` requests/s over `connections` connections for `duration`,
/// cycling through `requests`. `rate` 0 means as fast as answers come.
pub fn run(
    addr: SocketAddr,
    connections: usize,
    rate: u64,
    duration: Duration,
    requests: &[Vec<u8>],
    warmup: Duration,
) -> io::Result<Report> {
    let epoll = Epoll::new()?;
    let mut conns = Vec::with_capacity(connections);
    let start = Instant::now() + Duration::from_millis(50);
    // Rate 0 means closed loop: every connection is always due.
    let interval = Duration::from_nanos(
        (connections as u64 * 1_000_000_000)
            .checked_div(rate)
            .unwrap_or(0),
    );
    for i in 0..connections {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        epoll.add(stream.as_raw_fd(), i as u64)?;
        // Spread the connections' schedules evenly over one interval.
        let offset = if connections == 0 {
            Duration::ZERO
        } else {
            interval * i as u32 / connections as u32
        };
        conns.push(Conn {
            stream,
            next_due: start + offset,
            outstanding: None,
            pending_write: 0,
            write_from: 0,
            buf: Vec::with_capacity(4096),
            request: (i * 7919) % requests.len(),
        });
    }
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut report = Report {
        sent: 0,
        completed: 0,
        errors: 0,
        status_2xx_3xx: 0,
        status_other: 0,
        elapsed: duration,
        latency: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds"),
    };
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut chunk = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        for conn in conns.iter_mut() {
            if conn.outstanding.is_none() && conn.next_due <= now {
                let due = conn.next_due;
                conn.outstanding = Some(due);
                conn.next_due = if rate == 0 { now } else { due + interval };
                conn.write_from = conn.request;
                conn.pending_write = requests[conn.request].len();
                conn.request = (conn.request + 1) % requests.len();
                if due >= measure_from {
                    report.sent += 1;
                }
            }
            if conn.pending_write > 0 {
                let req = &requests[conn.write_from];
                let from = req.len() - conn.pending_write;
                match conn.stream.write(&req[from..]) {
                    Ok(n) => conn.pending_write -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let n = epoll.wait(&mut events)?;
        let now = Instant::now();
        for ev in &events[..n] {
            let conn = &mut conns[ev.u64 as usize];
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "server closed a connection",
                        ))
                    }
                    Ok(k) => conn.buf.extend_from_slice(&chunk[..k]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            while let Some((len, status)) = complete_response(&conn.buf) {
                conn.buf.drain(..len);
                let Some(due) = conn.outstanding.take() else {
                    report.errors += 1;
                    continue;
                };
                if due >= measure_from && now <= end {
                    report.completed += 1;
                    if (200..400).contains(&status) {
                        report.status_2xx_3xx += 1;
                    } else {
                        report.status_other += 1;
                    }
                    let ns = now.saturating_duration_since(due).as_nanos() as u64;
                    let _ = report.latency.record(ns.max(1_000));
                }
            }
        }
    }
    Ok(report)
}

/// Length and status of the first complete answer in `buf`.
fn complete_response(buf: &[u8]) -> Option<(usize, u16)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let status = resp.code?;
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0);
    let body = if status == 204 || status == 304 {
        0
    } else {
        len
    };
    (buf.len() >= head + body).then_some((head + body, status))
}

struct Epoll(i32);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll(fd))
    }

    fn add(&self, fd: i32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open; ev outlives the call.
        if unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ready events, without blocking.
    fn wait(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        // SAFETY: events is a valid buffer of the length passed.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), events.len() as i32, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}
