//! The admin listener (never the public port): `/metrics`, `/healthz`,
//! `/readyz`. Low traffic, so a plain blocking thread serves it, one short
//! request at a time, and the data path never shares a runtime with it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::server::Shared;

/// Renders the metrics page.
pub type MetricsFn = Box<dyn Fn() -> String + Send>;

/// Starts the admin thread on an already-bound listener.
pub fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    metrics: MetricsFn,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("trackplane-admin".into())
        .spawn(move || {
            while !shared.shutdown.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &shared, &metrics) {
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

fn answer(mut stream: TcpStream, shared: &Shared, metrics: &MetricsFn) -> std::io::Result<()> {
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
                    "400 Bad Request",
                    "text/plain",
                    "bad request\n",
                )
            }
        }
    };
    let path = path.split('?').next().unwrap_or("/");
    match path {
        "/metrics" => reply(
            &mut stream,
            "200 OK",
            "text/plain; version=0.0.4",
            &metrics(),
        ),
        "/healthz" => reply(&mut stream, "200 OK", "text/plain", "ok\n"),
        "/readyz"
            if shared.ready.load(Ordering::Relaxed)
                && !shared.shutdown.load(Ordering::Relaxed)
                && !shared.store_status.refusing.load(Ordering::Relaxed) =>
        {
            reply(&mut stream, "200 OK", "text/plain", "ready\n")
        }
        "/readyz" => reply(
            &mut stream,
            "503 Service Unavailable",
            "text/plain",
            "not ready\n",
        ),
        _ => reply(&mut stream, "404 Not Found", "text/plain", "not found\n"),
    }
}

fn reply(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
