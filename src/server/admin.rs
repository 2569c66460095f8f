//! The admin listener (never the public port): `/metrics`, `/healthz`,
//! `/readyz`. Low traffic, so a plain blocking thread serves it, one short
//! request at a time, and the data path never shares a runtime with it. The
//! server and the shipper each give it their own routes.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::bell::{self, Bell};

/// A long-lived answer (Server-Sent Events): given the connection after
/// the response head, on a thread of its own.
pub type Stream = Box<dyn FnOnce(TcpStream) + Send>;

/// One answer of the admin port.
pub struct Reply {
    /// Status line after `HTTP/1.1 `.
    pub status: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
    /// Set for an event stream: the body is written by this instead.
    pub stream: Option<Stream>,
}

impl Reply {
    /// A plain-text answer.
    pub fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: body.into(),
            stream: None,
        }
    }

    /// The Prometheus text format.
    pub fn metrics(body: String) -> Reply {
        Reply {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4",
            body,
            stream: None,
        }
    }

    /// 404.
    pub fn not_found() -> Reply {
        Reply::text("404 Not Found", "not found\n")
    }

    /// A JSON body.
    pub fn json(body: String) -> Reply {
        Reply {
            status: "200 OK",
            content_type: "application/json",
            body,
            stream: None,
        }
    }

    /// An HTML page.
    pub fn html(body: &str) -> Reply {
        Reply {
            status: "200 OK",
            content_type: "text/html; charset=utf-8",
            body: body.to_owned(),
            stream: None,
        }
    }

    /// A Server-Sent Events stream written by `stream`.
    pub fn event_stream(stream: Stream) -> Reply {
        Reply {
            status: "200 OK",
            content_type: "text/event-stream",
            body: String::new(),
            stream: Some(stream),
        }
    }
}

/// The path and query of an admin request target.
pub fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// Answers a request target (path and query), from any thread.
pub type Router = Box<dyn Fn(&str) -> Reply + Send + Sync>;

/// Starts the admin thread on an already-bound listener; it sleeps until a
/// client connects and stops once `stop` rings.
pub fn spawn(
    listener: TcpListener,
    stop: Arc<Bell>,
    router: Router,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let router: std::sync::Arc<dyn Fn(&str) -> Reply + Send + Sync> = std::sync::Arc::from(router);
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("trackplane-admin".into())
        .spawn(move || {
            loop {
                match bell::wait([listener.as_fd(), stop.fd()], None) {
                    Ok([_, true]) => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "admin wait failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                match listener.accept() {
                    // Each request on its own short-lived thread (at most
                    // MAX_BUSY at once): a browser's idle pre-connection
                    // must not hold up the next request.
                    Ok((stream, _)) if busy.load(Ordering::Relaxed) < MAX_BUSY => {
                        let slot = Slot::take(&busy);
                        let router = router.clone();
                        // The slot is given back when the closure is dropped:
                        // after the answer, in a panic's unwinding, or at
                        // once if the thread cannot start.
                        let spawned = std::thread::Builder::new()
                            .name("trackplane-admin-req".into())
                            .spawn(move || {
                                let _slot = slot;
                                if let Err(e) = answer(stream, &*router) {
                                    tracing::debug!(error = %e, "admin request failed");
                                }
                            });
                        if spawned.is_err() {
                            tracing::warn!("cannot start an admin request thread");
                        }
                    }
                    Ok(_) => tracing::warn!("admin port busy; connection closed"),
                    // A client gone before its accept.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}

/// Admin requests served at once.
const MAX_BUSY: usize = 32;

/// One of the `MAX_BUSY` places, held while a request is answered.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>) -> Slot {
        busy.fetch_add(1, Ordering::Relaxed);
        Slot(busy.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The largest request head, and the most header fields, an admin request
/// may have.
const HEAD_BYTES: usize = 8192;
const HEAD_FIELDS: usize = 32;

/// How long a client has to send its request head, and each answer to be
/// written.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Ends a request whose head did not come in time: 408 once it had begun
/// (as the data port answers), silence for a connection that never sent a
/// byte (a browser's pre-connection).
fn timed_out(stream: &mut TcpStream, received: usize) -> std::io::Result<()> {
    if received == 0 {
        return Ok(());
    }
    let r = Reply::text("408 Request Timeout", "request head not received in time\n");
    reply(stream, &r)
}

fn answer(
    mut stream: TcpStream,
    router: &(dyn Fn(&str) -> Reply + Send + Sync),
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(HEAD_TIMEOUT))?;
    // The whole head within the timeout, not each read: a client that
    // sends a byte now and then would otherwise hold one of the
    // `MAX_BUSY` slots for as long as it likes.
    let deadline = std::time::Instant::now() + HEAD_TIMEOUT;
    let mut buf = [0u8; HEAD_BYTES];
    let mut len = 0;
    let (path, want) = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return timed_out(&mut stream, len);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return timed_out(&mut stream, len);
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; HEAD_FIELDS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let want = match req.method {
                    Some("GET") => Want::Body,
                    Some("HEAD") => Want::Head,
                    // Every route only reads: a client that means to change
                    // something is told it cannot, not answered as a read.
                    _ => {
                        let r = Reply::text("405 Method Not Allowed", "GET or HEAD only\n");
                        return write_reply(&mut stream, &r, Want::Body, "Allow: GET, HEAD\r\n");
                    }
                };
                break (req.path.unwrap_or("/").to_owned(), want);
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            // A head past the buffer or with more headers than it takes.
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                let why =
                    format!("request head over {HEAD_BYTES} bytes or {HEAD_FIELDS} headers\n");
                return reply(
                    &mut stream,
                    &Reply::text("431 Request Header Fields Too Large", why),
                );
            }
            Err(_) => {
                return reply(
                    &mut stream,
                    &Reply::text("400 Bad Request", "bad request\n"),
                )
            }
        }
    };
    let r = router(&path);
    match r.stream {
        None => write_reply(&mut stream, &r, want, ""),
        // The head of a stream: no stream starts.
        Some(_) if want == Want::Head => write_reply(&mut stream, &r, want, ""),
        Some(body) => {
            let head = format!(
                "HTTP/1.1 {}\r\nContent-Type: {}\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n",
                r.status, r.content_type
            );
            stream.write_all(head.as_bytes())?;
            stream.set_read_timeout(None)?;
            // A viewer that stops reading is dropped, not waited for.
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            std::thread::Builder::new()
                .name("trackplane-sse".into())
                .spawn(move || body(stream))?;
            Ok(())
        }
    }
}

/// What a request asked for: the answer, or (HEAD) only its head.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Body,
    Head,
}

fn reply(stream: &mut TcpStream, r: &Reply) -> std::io::Result<()> {
    write_reply(stream, r, Want::Body, "")
}

/// Writes `r` with `headers` (whole lines) added; for a HEAD, the head
/// alone, with the length the body would have. Then lingers (`linger`).
fn write_reply(
    stream: &mut TcpStream,
    r: &Reply,
    want: Want,
    headers: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes())?;
    if want == Want::Body {
        stream.write_all(r.body.as_bytes())?;
    }
    linger(stream);
    Ok(())
}

/// Ends a connection after its answer, the client perhaps still sending (a
/// body no route reads, the rest of a head past the limit): closing with
/// its bytes unread would reset the connection, and a client still writing
/// could lose the answer with it. So the answer is followed by an end of
/// file, and what comes is read and dropped until the client closes or
/// `HEAD_TIMEOUT` passes (the data port's `lingering_close_ms`).
fn linger(stream: &mut TcpStream) {
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + HEAD_TIMEOUT;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        if !matches!(stream.read(&mut buf), Ok(n) if n > 0) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{spawn, Reply, Router, HEAD_TIMEOUT};
    use crate::bell::Bell;

    /// An admin port on loopback answering through `router`.
    struct Port {
        addr: std::net::SocketAddr,
        stop: Arc<Bell>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Port {
        fn start(router: Router) -> Port {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(Bell::new().unwrap());
            let thread = spawn(listener, stop.clone(), router).unwrap();
            Port { addr, stop, thread }
        }

        fn stop(self) {
            self.stop.ring();
            self.thread.join().unwrap();
        }
    }

    #[test]
    fn heads_too_slow_too_large_or_malformed_get_their_status() {
        let port = Port::start(Box::new(|_| Reply::text("200 OK", "ok\n")));
        let addr = port.addr;

        let mut slow = TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let start = Instant::now();
        slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        // A header byte every 100 ms or so: each read comes well within
        // the timeout, the head never ends.
        let mut answer = Vec::new();
        while start.elapsed() < HEAD_TIMEOUT * 3 {
            let mut buf = [0u8; 256];
            match slow.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            let _ = slow.write_all(b"x");
        }
        let took = start.elapsed();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
        assert!(took >= HEAD_TIMEOUT && took < HEAD_TIMEOUT * 2, "{took:?}");

        // A client that never sends a byte is closed without an answer.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(HEAD_TIMEOUT * 3)).unwrap();
        let mut rest = Vec::new();
        assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0);

        // A head over the buffer, or with more headers than it takes, is
        // too large; one that is not HTTP is bad.
        for (raw, status) in [
            (
                format!("GET /x HTTP/1.1\r\nA: {}\r\n\r\n", "a".repeat(9000)),
                "431",
            ),
            (
                format!("GET /x HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(40)),
                "431",
            ),
            ("GET /x HTTP/1.1\r\nbad header\r\n\r\n".to_owned(), "400"),
        ] {
            let mut c = TcpStream::connect(addr).unwrap();
            // The answer may come before the rest of the head is taken.
            let _ = c.write_all(raw.as_bytes());
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            let got = String::from_utf8_lossy(&got);
            assert!(got.starts_with(&format!("HTTP/1.1 {status} ")), "{got:?}");
        }

        // The port still answers.
        let mut ok = TcpStream::connect(addr).unwrap();
        ok.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        let mut got = String::new();
        ok.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got:?}");

        port.stop();
    }

    /// Every route only reads: GET answers, HEAD answers the head alone,
    /// anything else is 405 with the methods that work.
    #[test]
    fn get_and_head_answer_other_methods_get_405() {
        let port = Port::start(Box::new(|_| Reply::text("200 OK", "ok\n")));
        let addr = port.addr;
        let ask = |method: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(format!("{method} /healthz HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
                .unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            got
        };
        let get = ask("GET");
        assert!(
            get.starts_with("HTTP/1.1 200 OK\r\n") && get.ends_with("\r\n\r\nok\n"),
            "{get:?}"
        );
        let head = ask("HEAD");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
        assert!(
            head.contains("Content-Length: 3\r\n") && head.ends_with("\r\n\r\n"),
            "{head:?}"
        );
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let got = ask(method);
            assert!(got.starts_with("HTTP/1.1 405 "), "{method}: {got:?}");
            assert!(got.contains("Allow: GET, HEAD\r\n"), "{method}: {got:?}");
        }

        // A client that sends its whole body before reading gets the 405,
        // not a reset: the port reads and drops the body after answering.
        let mut c = TcpStream::connect(addr).unwrap();
        let mut w = c.try_clone().unwrap();
        let body = 16 << 20;
        let writer = std::thread::spawn(move || {
            w.write_all(
                format!("POST /healthz HTTP/1.1\r\nContent-Length: {body}\r\n\r\n").as_bytes(),
            )?;
            w.write_all(&vec![b'a'; body])
        });
        let mut got = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.read_to_end(&mut got).unwrap();
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 405 "), "{got:?}");
        writer
            .join()
            .unwrap()
            .expect("the body was taken, not reset");
        port.stop();
    }

    #[test]
    fn a_request_whose_answer_panics_gives_its_place_back() {
        let port = Port::start(Box::new(|target: &str| {
            assert!(target != "/boom", "a router's bug");
            Reply::text("200 OK", "ok\n")
        }));
        let addr = port.addr;
        let get = |path: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                .unwrap();
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got);
            String::from_utf8_lossy(&got).into_owned()
        };
        // More panics than there are places, one after the other.
        for _ in 0..super::MAX_BUSY + 8 {
            assert_eq!(get("/boom"), "");
        }
        assert!(get("/ok").starts_with("HTTP/1.1 200 OK"));
        port.stop();
    }
}
