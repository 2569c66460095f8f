//! The live tag-validation view on the admin port: the audit JSON, the
//! event stream filtered on the server, a slow viewer that must not slow
//! ingestion, and the page in headless Chromium.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{metric, start_with};
use trackplane::config::Driver;

const SHOP: &str = "[advertisers.shop]\nredirect_hosts = [\"shop.com\"]\n";

fn shop(d: Driver) -> common::TestServer {
    start_with(d, SHOP, |dir| {
        std::fs::create_dir_all(dir.join("catalogs")).unwrap();
        std::fs::write(dir.join("catalogs/shop.txt"), "p1\np2\n").unwrap();
    })
}

fn audit(s: &common::TestServer, adv: &str) -> Option<serde_json::Value> {
    let r = s.admin_get(&format!("/api/advertisers/{adv}/audit"));
    (r.status == 200).then(|| serde_json::from_slice(&r.body).unwrap())
}

#[test]
fn audit_api_counts_types_issues_params_and_products() {
    let s = shop(Driver::Uring);
    for i in 0..5 {
        s.get(&format!("/i?adv=shop&pid=p1&n={i}"));
    }
    s.get("/e?adv=shop&ev=purchase&order_id=o1&value=9,99&currency=EUR&pid=p1");
    s.get("/e?adv=shop&ev=view_item&pid=gone-7");
    s.get("/e?adv=shop&ev=view_item&pid=gone-7");
    s.get("/i?adv=other");
    let deadline = Instant::now() + Duration::from_secs(5);
    let a = loop {
        if let Some(a) =
            audit(&s, "shop").filter(|a| a["last_minute"]["events_by_type"]["view_item"] == 2)
        {
            break a;
        }
        assert!(Instant::now() < deadline, "the view never caught up");
        std::thread::sleep(Duration::from_millis(20));
    };
    for window in ["last_minute", "last_hour"] {
        let w = &a[window];
        assert_eq!(w["events_by_type"]["impression"], 5, "{window}");
        assert_eq!(w["events_by_type"]["purchase"], 1);
        assert_eq!(w["events_by_status"]["invalid"], 3);
        assert_eq!(w["issues_by_code"]["unknown_product"], 2);
        assert_eq!(w["issues_by_code"]["bad_format"], 1);
        assert_eq!(w["failing_params"]["value"], 1);
    }
    assert_eq!(a["unknown_products"][0]["id"], "gone-7");
    assert_eq!(a["unknown_products"][0]["count"], 2);
    assert_eq!(a["recent"].as_array().unwrap().len(), 8);
    assert!(audit(&s, "nobody").is_none());
    assert_eq!(s.admin_get("/api/advertisers/bad%20id/audit").status, 400);
    let list: Vec<String> = serde_json::from_slice(&s.admin_get("/api/advertisers").body).unwrap();
    assert_eq!(list, ["other", "shop"]);
    let page = s.admin_get("/");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(String::from_utf8_lossy(&page.body).contains("live tag validation"));
}

/// Opens an event stream and returns the connection after the head.
fn subscribe(s: &common::TestServer, target: &str) -> BufReader<TcpStream> {
    let mut c = TcpStream::connect(s.admin).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            return r;
        }
        if line.to_ascii_lowercase().starts_with("content-type:") {
            assert!(line.contains("text/event-stream"), "{line}");
        }
    }
}

fn next_event(r: &mut BufReader<TcpStream>) -> serde_json::Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream closed");
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str(data.trim_end()).unwrap();
        }
    }
}

#[test]
fn event_stream_is_filtered_on_the_server() {
    let s = shop(Driver::Epoll);
    let mut all = subscribe(&s, "/api/advertisers/shop/events");
    let mut invalid = subscribe(&s, "/api/advertisers/shop/events?invalid=1");
    s.get("/i?adv=other&n=0");
    s.get("/i?adv=shop&pid=p1&n=1");
    s.get("/i?adv=other&n=2");
    s.get("/i?adv=shop&pid=nope&n=3");
    s.get("/i?adv=shop&pid=p2&n=4");
    let ns: Vec<String> = (0..3)
        .map(|_| {
            next_event(&mut all)["params"]["n"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ns, ["1", "3", "4"], "only shop's events, in order");
    let bad = next_event(&mut invalid);
    assert_eq!(
        (bad["params"]["n"].as_str(), bad["status"].as_str()),
        (Some("3"), Some("invalid"))
    );
    // A viewer that opens later first gets the recent events.
    let mut late = subscribe(&s, "/api/advertisers/shop/events");
    assert_eq!(next_event(&mut late)["params"]["n"], "1");
    assert_eq!(metric(&s.metrics(), "trackplane_view_viewers"), 3.0);
}

#[test]
fn a_slow_viewer_never_slows_ingestion() {
    let mut s = shop(Driver::Uring);
    // Subscribes and never reads.
    let _stuck = subscribe(&s, "/api/advertisers/shop/events");
    let pad = "x".repeat(3000);
    let mut c = s.connect();
    let started = Instant::now();
    let batch: String = (0..50)
        .map(|i| format!("GET /i?adv=shop&pid=p1&i={i}&pad={pad} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    for _ in 0..200 {
        c.write_all(batch.as_bytes()).unwrap();
        let answers = common::read_responses(&mut c, 50);
        assert!(answers.iter().all(|r| r.status == 200));
    }
    let took = started.elapsed();
    // The viewer's queue and socket buffers are full by now: its events
    // are dropped, counted, and nothing waited for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &s.metrics(),
        "trackplane_view_dropped_total{where=\"viewer\"}",
    ) == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the stuck viewer never lost an event"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let records = s.stop();
    assert_eq!(records.len(), 10_000, "every event recorded");
    assert!(took < Duration::from_secs(60), "{took:?}");
}

#[test]
fn the_page_shows_events_arriving_in_headless_chromium() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/view.mjs");
    let modules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/node_modules/playwright-core"
    );
    assert!(
        std::path::Path::new(modules).exists(),
        "playwright-core is missing: run ./scripts/test (npm install in tests/browser)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run ./scripts/test (apt-get install chromium)"
    );
    let s = shop(Driver::Uring);
    for i in 0..3 {
        s.get(&format!(
            "/e?adv=shop&ev=view_item&pid=p{}&n={i}",
            i % 2 + 1
        ));
    }
    let shot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/view-screenshot.png");
    let _ = std::fs::remove_file(shot);
    let mut node = Command::new("node")
        .args([
            script,
            &format!("http://{}/?advertiser=shop", s.admin),
            shot,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node");
    let mut out = BufReader::new(node.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("READY "), "page did not go live: {line:?}");
    let shown_before: u32 = line["READY ".len()..].trim().parse().unwrap();
    assert_eq!(shown_before, 3, "the recent events showed first");
    for i in 0..10 {
        s.get(&format!(
            "/e?adv=shop&ev=add_to_cart&pid=gone-{i}&n=live{i}"
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(
        node.wait().unwrap().success(),
        "browser script failed: {rest}"
    );
    assert!(rest.starts_with("OK "), "{rest}");
    let shown: u32 = rest[3..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(shown >= 8, "live events arrived in the page: {rest}");
    assert!(
        std::fs::metadata(shot).unwrap().len() > 20_000,
        "a real screenshot"
    );
}
