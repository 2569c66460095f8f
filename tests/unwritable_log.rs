//! A server whose log cannot be written goes on serving, reloading and
//! storing: a log line that fails is dropped. The failure is real: stderr
//! is a pipe whose reader went away (EPIPE), as a log file on a full disk
//! fails with ENOSPC.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pixel(addr: SocketAddr, n: usize) -> u16 {
    let mut c = TcpStream::connect(addr).unwrap();
    let req = format!("GET /i?adv=demo&n={n} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    common::read_responses(&mut c, 1)[0].status
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn a_server_whose_log_reader_is_gone_serves_on_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackplane"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("trackplane serving") {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "no start line");
    }
    let addr: SocketAddr = common::process::log_field(&line, " listen");
    // Every log line from here on fails.
    drop(log);

    for n in 0..3 {
        assert_eq!(pixel(addr, n), 200);
    }
    // A reload logs a line (it used to end the process: the failed write's
    // report panicked).
    signal(child.id(), "-HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the server ended");
    for n in 3..6 {
        assert_eq!(pixel(addr, n), 200);
    }
    signal(child.id(), "-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert_eq!(
        common::records(dir.path()).len(),
        6,
        "every answered pixel stored"
    );
}
