//! The open-loop engine. wrk2's semantics: each connection has a constant
//! request rate and one request outstanding; a request's latency runs from
//! the time it was *due*, not from when it was sent, so a slow server cannot
//! hide its stalls by slowing the generator (coordinated omission).
//!
//! Sharper than wrk2 on a small VM: one thread busy-polls nonblocking
//! sockets (epoll with a zero timeout) and sends each request at its due
//! time to the microsecond, instead of on a millisecond timer tick.
//!
//! One run may load several servers at once, each with its own connections,
//! rate and report, their schedules interleaved: servers that take turns
//! meet different hours of a shared VM, servers loaded together meet the
//! same one, which is what an A/B of two builds needs.

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
    /// With tracing on, each measured answer as (due time, latency), both
    /// in nanoseconds, the due time on `CLOCK_MONOTONIC`; empty otherwise.
    pub trace: Vec<(u64, u64)>,
}

struct Conn {
    /// Which server (index into the addresses, and the reports).
    server: usize,
    stream: TcpStream,
    next_due: Instant,
    outstanding: Option<Instant>,
    pending_write: usize,
    write_from: usize,
    buf: Vec<u8>,
    request: usize,
}

/// An empty histogram of latencies in ns: 1 µs to 60 s, three digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("histogram bounds")
}

/// Runs `rate` requests/s over `connections` connections for `duration`
/// against each of `addrs`, cycling through `requests`; one report per
/// address, in their order. `rate` 0 means as fast as answers come. With
/// `trace`, every report also keeps each measured answer's due time and
/// latency, to be read against what else ran on the machine meanwhile.
pub fn run(
    addrs: &[SocketAddr],
    connections: usize,
    rate: u64,
    duration: Duration,
    requests: &[Vec<u8>],
    warmup: Duration,
    trace: bool,
) -> io::Result<Vec<Report>> {
    let epoll = Epoll::new()?;
    let total = connections * addrs.len();
    let mut conns = Vec::with_capacity(total);
    let start = Instant::now() + Duration::from_millis(50);
    // Rate 0 means closed loop: every connection is always due.
    let interval = Duration::from_nanos(
        (connections as u64 * 1_000_000_000)
            .checked_div(rate)
            .unwrap_or(0),
    );
    // Connection j serves server j % addrs.len(): the servers alternate,
    // in the order of sending as in the order of schedules.
    for j in 0..total {
        let server = j % addrs.len();
        let addr = addrs[server];
        let stream = TcpStream::connect(addr).map_err(|e| at(addr, e))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        epoll.add(stream.as_raw_fd(), j as u64)?;
        // Spread all connections' schedules evenly over one interval.
        let offset = interval * j as u32 / total as u32;
        let i = j / addrs.len();
        conns.push(Conn {
            server,
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
    let mut reports: Vec<Report> = addrs
        .iter()
        .map(|_| Report {
            sent: 0,
            completed: 0,
            errors: 0,
            status_2xx_3xx: 0,
            status_other: 0,
            elapsed: duration,
            latency: latency_histogram(),
            // Room for every answer due in the window, so that tracing
            // does not allocate while measuring.
            trace: Vec::with_capacity(if trace {
                (rate.max(1) * duration.as_secs().max(1)) as usize * 11 / 10
            } else {
                0
            }),
        })
        .collect();
    let mono = Monotonic::now();
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
                    reports[conn.server].sent += 1;
                }
            }
            if conn.pending_write > 0 {
                let req = &requests[conn.write_from];
                let from = req.len() - conn.pending_write;
                match conn.stream.write(&req[from..]) {
                    Ok(n) => conn.pending_write -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(at(addrs[conn.server], e)),
                }
            }
        }
        let n = epoll.wait(&mut events)?;
        let now = Instant::now();
        for ev in &events[..n] {
            let conn = &mut conns[ev.u64 as usize];
            let report = &mut reports[conn.server];
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        return Err(at(
                            addrs[conn.server],
                            io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "server closed a connection",
                            ),
                        ))
                    }
                    Ok(k) => conn.buf.extend_from_slice(&chunk[..k]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(at(addrs[conn.server], e)),
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
                    if trace {
                        report.trace.push((mono.ns(due), ns));
                    }
                }
            }
        }
    }
    Ok(reports)
}

/// `Instant`s as nanoseconds on `CLOCK_MONOTONIC`, the clock `perf record
/// -k CLOCK_MONOTONIC` stamps kernel events with (and `Instant`'s own on
/// Linux, which std does not expose).
struct Monotonic {
    base: Instant,
    base_ns: u64,
}

impl Monotonic {
    fn now() -> Monotonic {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let base = Instant::now();
        // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let base_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        Monotonic { base, base_ns }
    }

    fn ns(&self, t: Instant) -> u64 {
        if t >= self.base {
            self.base_ns + (t - self.base).as_nanos() as u64
        } else {
            self.base_ns - (self.base - t).as_nanos() as u64
        }
    }
}

/// The error, naming the server it came from.
fn at(addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{addr}: {e}"))
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
