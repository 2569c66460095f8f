//! What reaches the event log: audited records, `/batch` semantics,
//! privacy policies, catalog hot reload under load, and metrics.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{read_responses, start, start_with};
use trackplane::config::Driver;

on_every_driver!(
    records_carry_the_audit,
    batch_answers_per_item,
    batch_accepts_chunked_bodies,
    batch_refuses_whole_under_back_pressure,
    do_not_track_policies,
    catalog_hot_reload_under_load,
    metrics_count_what_happened,
    records_keep_the_order_requests_came_in,
);

const SHOP: &str =
    "[advertisers.shop]\nredirect_hosts = [\"shop.com\"]\n[catalogs]\nreload_interval_ms = 50\n";

fn with_catalog(dir: &std::path::Path, ids: &str) {
    std::fs::create_dir_all(dir.join("catalogs")).unwrap();
    std::fs::write(dir.join("catalogs/shop.txt"), ids).unwrap();
}

fn records_carry_the_audit(d: Driver) {
    let mut s = start_with(d, SHOP, |dir| with_catalog(dir, "p1\np2\n"));
    let targets = [
        "/i?adv=shop&pid=p1",
        "/i?adv=shop&pid=p1,p9",
        "/e?adv=shop&ev=purchase&order_id=o1&value=9,99&currency=EUR&pid=p2",
        "/e?adv=ghost",
        "/e?adv=shop&ev=signup",
        "/c?adv=shop&url=https://evil.com/",
    ];
    for t in targets {
        let r = s.get(t);
        assert!(r.status < 500, "{t}: {}", r.status);
    }
    let records = s.stop();
    assert_eq!(records.len(), targets.len());
    let codes: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            r["issues"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    format!(
                        "{}:{}",
                        i["code"].as_str().unwrap(),
                        i["param"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .collect();
    assert_eq!(codes[0], Vec::<String>::new());
    assert_eq!(codes[1], ["unknown_product:pid"]);
    assert_eq!(codes[2], ["bad_format:value"]);
    assert_eq!(codes[3], ["unknown_advertiser:adv"]);
    assert_eq!(codes[4], ["unknown_event_type:ev"]);
    assert_eq!(codes[5], ["disallowed_redirect:url"]);
    let first = &records[0];
    for key in [
        "id",
        "ts_ms",
        "type",
        "advertiser",
        "status",
        "issues",
        "params",
        "products",
        "ip",
        "user_agent",
        "referer",
        "node",
    ] {
        assert!(first.get(key).is_some(), "missing key {key}");
    }
    assert_eq!(first["id"], "t1-0-0");
    assert_eq!(records[5]["id"], "t1-0-5");
    assert_eq!(
        first["ip"], "127.0.0.0",
        "IPv4 is truncated to /24 by default"
    );
    assert_eq!(first["user_agent"], "test-agent");
    assert_eq!(first["node"], "t1");
}

/// Pixels and beacons are answered before their audit and recorded in
/// groups (`server.audit_batch`); a click, a `sync` purchase, a full group
/// and a stop each record what waits first, so the records keep the order
/// the requests came in, with or without the groups.
fn records_keep_the_order_requests_came_in(d: Driver) {
    for batch in [4, 0] {
        let config = format!(
            "{SHOP}[server]\naudit_batch = {batch}\n[event_types.purchase]\ndurability = \"sync\"\n"
        );
        let mut s = start_with(d, &config, |dir| with_catalog(dir, "p1\n"));
        let targets = [
            "/i?adv=shop&n=0",
            "/e?adv=shop&ev=view_item&pid=p1&n=1",
            "/i?adv=shop&n=2",
            "/c?adv=shop&url=https://shop.com/&n=3",
            "/i?adv=shop&n=4",
            "/e?adv=shop&ev=purchase&order_id=o1&value=9.99&currency=EUR&pid=p1&n=5",
            "/i?adv=shop&n=6",
            "/i?adv=shop&n=7",
            "/i?adv=shop&n=8",
            "/i?adv=shop&n=9",
            "/i?adv=shop&pid=p9&n=10",
        ];
        for t in targets {
            let r = s.get(t);
            assert!(r.status < 400, "{t}: {}", r.status);
        }
        let records = s.stop();
        let seen: Vec<(String, String)> = records
            .iter()
            .map(|r| {
                let id = r["id"].as_str().unwrap().to_owned();
                (id, r["params"]["n"].as_str().unwrap().to_owned())
            })
            .collect();
        let want: Vec<(String, String)> = (0..targets.len())
            .map(|n| (format!("t1-0-{n}"), n.to_string()))
            .collect();
        assert_eq!(seen, want, "audit_batch = {batch}");
        assert_eq!(records[10]["issues"][0]["code"], "unknown_product");
    }
}

fn post_batch(s: &common::TestServer, body: &str) -> common::Response {
    let raw = format!("POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.exchange(raw.as_bytes(), 1).remove(0)
}

fn batch_answers_per_item(d: Driver) {
    let mut s = start_with(d, SHOP, |dir| with_catalog(dir, "p1\n"));
    let body = r#"[
        {"adv":"shop","ev":"view_item","pid":"p1"},
        {"adv":"shop","ev":"purchase","order_id":"o9","value":19.9,"currency":"EUR","pid":["p1","zz"]},
        "not an object",
        {"adv":"shop","nested":{"no":1}}
    ]"#;
    let r = post_batch(&s, body);
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["invalid"], 1);
    assert_eq!(v["rejected"], 2);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "ok");
    assert_eq!(results[0]["id"], "t1-0-0");
    assert_eq!(results[1]["status"], "invalid");
    assert_eq!(results[1]["issues"][0]["code"], "unknown_product");
    assert_eq!(results[1]["issues"][0]["value"], "zz");
    assert_eq!(results[2]["status"], "rejected");
    assert_eq!(results[3]["status"], "rejected");
    for (body, status) in [("{\"a\":1}", 400), ("[1,", 400), ("", 400)] {
        assert_eq!(post_batch(&s, body).status, status, "{body:?}");
    }
    let records = s.stop();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["params"]["value"], "19.9");
    assert_eq!(records[1]["products"], serde_json::json!(["p1", "zz"]));
}

/// A chunked body, arriving in pieces (one byte at a time for a while),
/// is decoded like a sized one; `100-continue` is honoured, and the
/// request pipelined after it is answered in order.
fn batch_accepts_chunked_bodies(d: Driver) {
    let mut s = start_with(d, SHOP, |dir| with_catalog(dir, "p1\n"));
    let body = r#"[{"adv":"shop","ev":"view_item","pid":"p1"},{"adv":"shop","ev":"view_item","pid":"zz"}]"#;
    let mut raw = b"POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        .to_vec();
    for (i, chunk) in body.as_bytes().chunks(7).enumerate() {
        let ext = if i % 3 == 0 { ";note=x" } else { "" };
        raw.extend_from_slice(format!("{:X}{ext}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut c = s.connect();
    let head_len = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    c.write_all(&raw[..head_len]).unwrap();
    let continued = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; continued.len()];
    std::io::Read::read_exact(&mut c, &mut got).unwrap();
    assert_eq!(got, continued);
    let (slow, rest) = raw[head_len..].split_at(40);
    for b in slow {
        c.write_all(std::slice::from_ref(b)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(rest).unwrap();
    let answers = read_responses(&mut c, 2);
    assert_eq!(
        answers[0].status,
        200,
        "{}",
        String::from_utf8_lossy(&answers[0].body)
    );
    let v: serde_json::Value = serde_json::from_slice(&answers[0].body).unwrap();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["invalid"], 1);
    assert_eq!(answers[1].status, 200);
    let records = s.stop();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["issues"][0]["code"], "unknown_product");
}

fn batch_refuses_whole_under_back_pressure(d: Driver) {
    // A 64 KiB ring cannot take a 300-event batch: the whole batch is
    // refused with 503 + Retry-After and nothing of it is recorded.
    let mut s = start(d, "[server]\nring_bytes = 65536\n");
    let item = r#"{"adv":"demo","ev":"page_view","filler":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let body = format!("[{}]", vec![item; 300].join(","));
    let r = post_batch(&s, &body);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    let small = format!("[{}]", [item; 3].join(","));
    assert_eq!(post_batch(&s, &small).status, 200);
    let m = s.admin_get("/metrics");
    assert!(String::from_utf8_lossy(&m.body).contains("trackplane_events_refused_total 300"));
    let records = s.stop();
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[0]["id"], "t1-0-0",
        "refused events leave no sequence gap"
    );
}

fn do_not_track_policies(d: Driver) {
    for (policy, want_records) in [("ignore", 1), ("anonymize", 1), ("drop", 0)] {
        let mut s = start(
            d,
            &format!("[privacy]\ndnt = \"{policy}\"\nip = \"truncate\"\n"),
        );
        let raw =
            b"GET /i?adv=demo&uid=user-7 HTTP/1.1\r\nHost: t\r\nUser-Agent: ua\r\nDNT: 1\r\n\r\n";
        assert_eq!(s.exchange(raw, 1)[0].status, 200, "{policy}");
        let records = s.stop();
        assert_eq!(records.len(), want_records, "{policy}");
        if policy == "anonymize" {
            assert!(records[0]["ip"].is_null());
            assert_eq!(records[0]["user_agent"], "");
            assert!(records[0]["params"].get("uid").is_none());
        }
        if policy == "ignore" {
            assert_eq!(records[0]["params"]["uid"], "user-7");
            assert_eq!(records[0]["ip"], "127.0.0.0");
        }
    }
    let mut s = start(d, "[privacy]\nip = \"drop\"\n");
    s.get("/i?adv=demo");
    assert!(s.stop()[0]["ip"].is_null());
}

fn catalog_hot_reload_under_load(d: Driver) {
    let mut s = start_with(d, SHOP, |dir| with_catalog(dir, "p1\n"));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let addr = s.addr;
    let load = {
        let stop = stop.clone();
        let answered = answered.clone();
        std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req =
                b"GET /i?adv=shop&pid=p2 HTTP/1.1\r\nHost: t\r\n\r\nGET /i?adv=shop&pid=p2 HTTP/1.1\r\nHost: t\r\n\r\n";
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                c.write_all(req).unwrap();
                for r in read_responses(&mut c, 2) {
                    assert_eq!(r.status, 200);
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let tmp = s.data_dir().join("catalogs/.shop.txt.tmp");
    std::fs::write(&tmp, "p1\np2\n").unwrap();
    std::fs::rename(&tmp, s.data_dir().join("catalogs/shop.txt")).unwrap();
    // The reloader runs in the idle class: on a busy machine the swap may
    // take a while. Then a little more load after it.
    common::wait_for("the new catalog", Duration::from_secs(10), || {
        common::metric(
            &s.metrics(),
            "trackplane_events_audited_total{status=\"ok\"}",
        ) > 0.0
    });
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let records = s.stop();
    assert_eq!(
        records.len() as u64,
        answered.load(Ordering::Relaxed),
        "every answered call recorded"
    );
    let statuses: Vec<&str> = records
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    let flip = statuses
        .iter()
        .position(|&st| st == "ok")
        .expect("the new catalog took effect");
    assert!(flip > 0, "the old catalog served first");
    assert!(statuses[..flip].iter().all(|&st| st == "invalid"));
    assert!(
        statuses[flip..].iter().all(|&st| st == "ok"),
        "no request saw the old catalog after the swap"
    );
}

fn metrics_count_what_happened(d: Driver) {
    for extra in ["", "[server]\naudit_batch = 16\n"] {
        metrics_count(d, extra);
    }
}

fn metrics_count(d: Driver, extra: &str) {
    let s = start(d, extra);
    s.get("/i?adv=demo");
    s.get("/i?adv=nobody");
    s.get("/nope");
    // With `server.audit_batch`, pixels are answered before their audit,
    // which follows within the worker's 20 ms heartbeat.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let m = s.admin_get("/metrics");
        assert_eq!(m.status, 200);
        let text = String::from_utf8_lossy(&m.body).into_owned();
        if text.contains("trackplane_events_audited_total{status=\"invalid\"} 1")
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    for line in [
        "trackplane_http_requests_total{route=\"pixel\"} 2",
        "trackplane_http_responses_total{code=\"200\"} 2",
        "trackplane_http_responses_total{code=\"404\"} 1",
        "trackplane_events_audited_total{status=\"ok\"} 1",
        "trackplane_events_audited_total{status=\"invalid\"} 1",
        "trackplane_audit_issues_total{code=\"unknown_advertiser\"} 1",
        "trackplane_ring_used_bytes{stream=\"0\"} ",
        "trackplane_ring_capacity_bytes 8388608",
        "trackplane_store_fsync_seconds_bucket{le=\"+Inf\"} ",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    // The one worker, by the driver it serves on.
    let (uring, epoll) = if d == Driver::Uring { (1, 0) } else { (0, 1) };
    assert_eq!(
        common::metric(&text, "trackplane_workers{driver=\"io_uring\"}"),
        uring as f64
    );
    assert_eq!(
        common::metric(&text, "trackplane_workers{driver=\"epoll\"}"),
        epoll as f64
    );
    assert_eq!(s.admin_get("/healthz").status, 200);
    assert_eq!(s.admin_get("/readyz").status, 200);
    assert_eq!(s.admin_get("/nope").status, 404);
}
