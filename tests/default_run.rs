//! The README's run command as a newcomer types it: the binary with no
//! argument and no file, in an empty directory, serves on 127.0.0.1:8080
//! with its admin port on 127.0.0.1:9100, answers the README's pixel and
//! click, writes under `./data`, and `trackplane tail` there prints what
//! it answered. The only test on fixed ports: the README names them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server if the test fails before it stops it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(port: u16, target: &str) -> common::Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    common::read_responses(&mut s, 1).remove(0)
}

#[test]
fn with_no_argument_it_serves_on_the_readme_ports_and_writes_under_data() {
    for port in [8080, 9100] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "127.0.0.1:{port} is in use; this test runs the README's command, which listens there"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackplane"))
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut server = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("trackplane serving") {
                let _ = tx.send(line);
            }
        }
    });
    let started = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server did not start");
    assert!(
        started.contains("listen=127.0.0.1:8080 admin=127.0.0.1:9100"),
        "{started}"
    );

    let pixel = get(8080, "/i?adv=demo&pid=sku-1");
    assert_eq!(pixel.status, 200);
    assert_eq!(pixel.body.len(), 43);
    let click = get(8080, "/c?adv=demo&url=https%3A%2F%2Fexample.com%2Fsale");
    assert_eq!(click.status, 302);
    assert_eq!(click.header("location"), Some("https://example.com/sale"));
    let health = get(9100, "/healthz");
    assert_eq!(health.status, 200);

    Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    assert!(dir.path().join("data/segments").is_dir());
    let out = Command::new(env!("CARGO_BIN_EXE_trackplane"))
        .arg("tail")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut types: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(types, ["click", "impression"]);
    assert!(records.iter().all(|r| r["advertiser"] == "demo"));
}
