//! SIGHUP (systemctl reload) on the real binary: new advertisers, event
//! types and catalogs take effect at once; an invalid file is rejected with
//! its reason and the running rules stay; listener changes are reported as
//! needing a restart.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server process, killed if the test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

fn wait_log(log: &Mutex<Vec<String>>, needle: &str, from: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = log.lock().unwrap()[from..]
            .iter()
            .find(|l| l.contains(needle))
        {
            return l.clone();
        }
        assert!(Instant::now() < deadline, "no log line with {needle:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pixel(addr: SocketAddr, query: &str) -> u16 {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(format!("GET /i?{query} HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    common::read_responses(&mut c, 1)[0].status
}

#[test]
fn sighup_reloads_rules_and_catalogs_and_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("trackplane.toml");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("catalogs")).unwrap();
    let base = "node_id = \"t1\"\n[catalogs]\nreload_interval_ms = 60000\n";
    std::fs::write(&config, format!("{base}[advertisers.demo]\n")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_trackplane"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let log = Arc::new(Mutex::new(Vec::new()));
    {
        let log = log.clone();
        let stderr = child.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    let line = wait_log(&log, "trackplane serving", 0);
    let addr: SocketAddr = line
        .split("listen=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // Before: shop is unknown.
    assert_eq!(pixel(addr, "adv=shop&pid=p1&n=before"), 200);

    // A new advertiser and its catalog, picked up at once by SIGHUP (the
    // catalog poll interval is a minute).
    std::fs::write(data.join("catalogs/shop.txt"), "p1\n").unwrap();
    std::fs::write(
        &config,
        format!("{base}[advertisers.shop]\nredirect_hosts = [\"shop.com\"]\n"),
    )
    .unwrap();
    let mark = log.lock().unwrap().len();
    signal(child.0.id(), "-HUP");
    wait_log(&log, "configuration reloaded", mark);
    wait_log(&log, "catalogs reloaded", mark);
    assert_eq!(pixel(addr, "adv=shop&pid=p1&n=after"), 200);

    // An invalid file: rejected, reason logged, the running rules stay.
    std::fs::write(
        &config,
        format!("{base}[server]\nmax_body_bytez = 1\n[advertisers.shop]\n"),
    )
    .unwrap();
    let mark = log.lock().unwrap().len();
    signal(child.0.id(), "-HUP");
    let rejected = wait_log(&log, "reload rejected", mark);
    assert!(rejected.contains("server.max_body_bytez"), "{rejected}");
    assert_eq!(pixel(addr, "adv=shop&pid=p1&n=still"), 200);

    // A server setting is reported as waiting for a restart, not applied.
    // (Command-line overrides are applied again on every reload.)
    std::fs::write(
        &config,
        format!("{base}[server]\nmax_body_bytes = 2048\n[advertisers.shop]\n"),
    )
    .unwrap();
    let mark = log.lock().unwrap().len();
    signal(child.0.id(), "-HUP");
    let pending = wait_log(&log, "next restart", mark);
    assert!(pending.contains("server"), "{pending}");
    assert_eq!(pixel(addr, "adv=shop&pid=p1&n=last"), 200);

    signal(child.0.id(), "-TERM");
    assert!(child.0.wait().unwrap().success());
    let records = common::records(&data);
    let by_n = |n: &str| {
        records
            .iter()
            .find(|r| r["params"]["n"] == n)
            .unwrap_or_else(|| panic!("no record {n}"))
            .clone()
    };
    assert_eq!(by_n("before")["issues"][0]["code"], "unknown_advertiser");
    for n in ["after", "still", "last"] {
        assert_eq!(by_n(n)["status"], "ok", "{n}: {}", by_n(n));
    }
}
