//! The admin listener (never the public port): `/metrics`, `/healthz`,
//! `/readyz`. Low traffic, so a plain blocking thread serves it, one short
//! request at a time, and the data path never shares a runtime with it. The
//! server and the shipper each give it their own routes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

/// One answer of the admin port.
pub struct Reply {
    /// Status line after `HTTP/1.1 `.
    pub status: &'static str,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// A plain-text answer.
    pub fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }

    /// The Prometheus text format.
    pub fn metrics(body: String) -> Reply {
        Reply {
            status: "200 OK",
            content_type: "text/plain; version=0.0.4",
            body,
        }
    }

    /// 404.
    pub fn not_found() -> Reply {
        Reply::text("404 Not Found", "not found\n")
    }
}

/// Answers a path (without query).
pub type Router = Box<dyn Fn(&str) -> Reply + Send>;

/// Starts the admin thread on an already-bound listener; it stops once
/// `stopped` says so.
pub fn spawn(
    listener: TcpListener,
    stopped: Box<dyn Fn() -> bool + Send>,
    router: Router,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("trackplane-admin".into())
        .spawn(move || {
            while !stopped() {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &router) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}

fn answer(mut stream: TcpStream, router: &Router) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 8192];
    let mut len = 0;
    let path = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break req.path.unwrap_or("/").to_owned(),
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                return reply(
                    &mut stream,
                    &Reply::text("400 Bad Request", "bad request\n"),
                )
            }
        }
    };
    let path = path.split('?').next().unwrap_or("/");
    reply(&mut stream, &router(path))
}

fn reply(stream: &mut TcpStream, r: &Reply) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(r.body.as_bytes())
}
