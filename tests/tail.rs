//! `trackplane tail` on segments a real server wrote: JSON lines, last N,
//! filters, stats, verify, and following across rotation while the server
//! writes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trackplane::config::Driver;

fn tail(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trackplane"))
        .arg("tail")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first line of `out` that holds `what`; fails the test without one.
fn line_with<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in:\n{out}"))
}

fn lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A stopped server's data directory with 30 events: 10 clean impressions,
/// 10 purchases with a bad currency from `shop`, 10 page views from `ghost`.
fn written() -> tempfile::TempDir {
    let mut s = common::start(Driver::Epoll, "[advertisers.shop]\n[advertisers.demo]\n");
    for i in 0..10 {
        s.get(&format!("/i?adv=demo&n={i}"));
        s.get(&format!(
            "/e?adv=shop&ev=purchase&order_id=o{i}&value=1&currency=XXX&pid=p&n={i}"
        ));
        s.get(&format!("/e?adv=ghost&n={i}"));
    }
    s.stop();
    let dir = tempfile::tempdir().unwrap();
    let from = s.data_dir().join("segments");
    std::fs::create_dir_all(dir.path().join("segments")).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("segments").join(e.file_name())).unwrap();
    }
    dir
}

#[test]
fn prints_filters_and_counts() {
    let dir = written();
    let d = dir.path().to_str().unwrap();
    let (ok, out, _) = tail(&[d]);
    assert!(ok);
    let last = lines(&out);
    assert_eq!(last.len(), 10, "last 10 by default");
    assert_eq!(last[9]["params"]["n"], "9");
    let (_, out, _) = tail(&[d, "--from-beginning"]);
    assert_eq!(lines(&out).len(), 30);
    let (_, out, _) = tail(&[d, "-n", "4"]);
    assert_eq!(lines(&out).len(), 4);
    let (_, out, _) = tail(&[d, "--from-beginning", "--advertiser", "shop"]);
    assert!(lines(&out).iter().all(|r| r["advertiser"] == "shop") && lines(&out).len() == 10);
    let (_, out, _) = tail(&[d, "--from-beginning", "--type", "impression"]);
    assert_eq!(lines(&out).len(), 10);
    let (_, out, _) = tail(&[d, "--from-beginning", "--invalid"]);
    assert_eq!(lines(&out).len(), 20);
    let (_, out, _) = tail(&[d, "--from-beginning", "--issue", "bad_format"]);
    assert_eq!(lines(&out).len(), 10);
    let (_, out, _) = tail(&[d, "--since", "1h"]);
    assert_eq!(
        lines(&out).len(),
        30,
        "--since prints everything since then"
    );
    let (_, out, _) = tail(&[d, "--since", "4102444800"]);
    assert!(out.is_empty(), "nothing after 2100");
    let (ok, _, err) = tail(&[d, "--since", "yesterday"]);
    assert!(!ok && err.contains("`yesterday` is not a time"), "{err}");
    let (_, out, _) = tail(&[d, "--stats"]);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["records"], 30);
    assert_eq!(stats["invalid"], 20);
    assert_eq!(stats["by_type"]["purchase"], 10);
    assert_eq!(stats["by_advertiser"]["ghost"], 10);
    assert_eq!(stats["by_issue"]["unknown_advertiser"], 10);
}

#[test]
fn verify_finds_a_flipped_bit_and_names_file_and_offset() {
    let dir = written();
    let d = dir.path().to_str().unwrap();
    let (ok, out, _) = tail(&[d, "--verify"]);
    assert!(ok, "{out}");
    assert!(out.contains("all intact"));
    let seg = trackplane::segment::list(&dir.path().join("segments"))
        .unwrap()
        .remove(0);
    let mut bytes = std::fs::read(&seg.path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    std::fs::write(&seg.path, &bytes).unwrap();
    let (ok, out, _) = tail(&[d, "--verify"]);
    assert!(!ok, "corruption must fail the exit status");
    let line = line_with(&out, "CORRUPT");
    let path = seg.path.display().to_string();
    assert!(
        line.matches(&path).count() == 1 && line.contains("offset ") && line.contains("CRC"),
        "{line}"
    );
    // Printing reports the damage on stderr, prints the rest, and fails.
    let (ok, _, err) = tail(&[d, "--from-beginning"]);
    assert!(!ok);
    assert!(err.contains("offset"), "{err}");
    // A file that cannot be read is said to be that, not corrupt.
    let odd = seg.path.with_file_name("0009-00000000000000000000.seg");
    std::fs::create_dir(&odd).unwrap();
    let (ok, out, _) = tail(&[d, "--verify"]);
    assert!(!ok, "{out}");
    let line = line_with(&out, "0009-");
    assert!(
        line.contains("UNREADABLE") && line.contains("directory"),
        "{line}"
    );
    assert!(out.contains("CORRUPTION FOUND in 1, 1 UNREADABLE"), "{out}");
}

#[test]
fn follows_across_rotation_while_the_server_writes() {
    let mut s = common::start(
        Driver::Uring,
        "[storage]\nflush_interval_ms = 10\nblock_max_bytes = 1024\nsegment_max_bytes = 2048\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackplane"))
        .args(["tail", "-f", "--from-beginning"])
        .arg(s.data_dir())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let pad = "z".repeat(200);
    for i in 0..200 {
        assert_eq!(s.get(&format!("/i?adv=demo&n={i}&pad={pad}")).status, 200);
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 200 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            seen.push(v["params"]["n"].as_str().unwrap().parse::<u32>().unwrap());
        }
    }
    let sealed = trackplane::segment::list(&s.data_dir().join("segments"))
        .unwrap()
        .iter()
        .filter(|f| !f.open)
        .count();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        sealed >= 3,
        "rotation happened while following ({sealed} sealed)"
    );
    assert_eq!(
        seen,
        (0..200).collect::<Vec<_>>(),
        "every record once, in order, across rotations"
    );
    // Tail never wrote: the server's own read-back still agrees.
    assert_eq!(s.stop().len(), 200);
}
