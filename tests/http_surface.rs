//! The public HTTP surface over real sockets: answers, keep-alive,
//! pipelining, every limit's status, and a worker that keeps serving others
//! while one client misbehaves.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{closed, read_responses, start};
use trackplane::config::Driver;
use trackplane::http::response::EMPTY_GIF;

on_every_driver!(
    pixel_answers_the_exact_gif,
    head_answers_without_body,
    routes_and_methods,
    pipelined_requests_are_answered_in_order,
    requests_split_across_reads,
    keep_alive_rules,
    limits_answer_with_their_status,
    bad_clients_do_not_disturb_others,
    a_client_still_sending_past_a_limit_reads_its_status,
    slow_header_gets_408_and_idle_connection_closes,
    a_busy_connection_outlives_its_first_deadline,
    a_stalled_body_gets_408_and_a_slow_one_is_read,
    connection_cap_per_worker,
    a_client_that_never_reads_is_let_go,
    click_redirects_only_where_allowed,
    post_beacon_with_form_body_and_expect_continue,
);

fn pixel_answers_the_exact_gif(d: Driver) {
    let s = start(d, "");
    let r = s.get("/i?adv=demo");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert_eq!(r.header("content-length"), Some("43"));
    assert_eq!(
        r.header("cache-control"),
        Some("no-cache, no-store, must-revalidate")
    );
    assert_eq!(r.header("pragma"), Some("no-cache"));
    assert_eq!(r.header("expires"), Some("Thu, 01 Jan 1970 00:00:00 GMT"));
    assert!(r
        .header("date")
        .is_some_and(|d| d.ends_with(" GMT") && d.len() == 29));
    assert_eq!(r.body, EMPTY_GIF);
    assert_eq!(&r.body[..6], b"GIF89a");
}

fn head_answers_without_body(d: Driver) {
    let s = start(d, "");
    let mut c = s.connect();
    c.write_all(
        b"HEAD /i?adv=demo HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    // The HEAD answer announces 43 bytes but sends none; the next answer
    // follows directly.
    let mut all = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&all).contains("Content-Length: 0\r\n\r\n") {
        assert!(std::time::Instant::now() < deadline);
        let mut b = [0u8; 4096];
        let n = std::io::Read::read(&mut c, &mut b).unwrap();
        all.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2);
    assert!(text.contains("Content-Length: 43\r\n\r\nHTTP/1.1 200 OK"));
}

fn routes_and_methods(d: Driver) {
    let s = start(d, "");
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(s.get("/e?adv=demo").status, 204);
    assert_eq!(s.get("/nope").status, 404);
    assert_eq!(s.get("/i/extra").status, 404);
    let r = s
        .exchange(b"DELETE /i HTTP/1.1\r\nHost: t\r\n\r\n", 1)
        .remove(0);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let r = s
        .exchange(b"GET /batch HTTP/1.1\r\nHost: t\r\n\r\n", 1)
        .remove(0);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = s
        .exchange(
            b"POST /i HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            1,
        )
        .remove(0);
    assert_eq!(r.status, 405);
    // A target in absolute form is its path and query (RFC 9112 §3.2.2);
    // HTTP/1.0 may leave out Host.
    let r = s
        .exchange(b"GET http://x/e?adv=demo HTTP/1.1\r\nHost: t\r\n\r\n", 1)
        .remove(0);
    assert_eq!(r.status, 204);
    let r = s.exchange(b"GET /e?adv=demo HTTP/1.0\r\n\r\n", 1).remove(0);
    assert_eq!(r.status, 204);
}

/// Enough requests in one write that their answers are sent in several
/// rounds (the connection sends every 16 KiB of answers before answering
/// the rest of what it has read).
fn pipelined_requests_are_answered_in_order(d: Driver) {
    const N: u64 = 1000;
    let s = start(d, "");
    let mut raw = Vec::new();
    for i in 0..N {
        let target = match i % 4 {
            0 => format!("/i?adv=demo&n={i}"),
            1 => format!("/e?adv=demo&n={i}"),
            2 => format!("/c?adv=demo&n={i}&url=https://example.com/{i}"),
            _ => "/nope".to_owned(),
        };
        raw.extend_from_slice(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    let mut c = s.connect();
    c.write_all(&raw).unwrap();
    let answers = read_responses(&mut c, N as usize);
    for (i, r) in answers.iter().enumerate() {
        let want = [200, 204, 302, 404][i % 4];
        assert_eq!(r.status, want, "answer {i}");
        if i % 4 == 2 {
            assert_eq!(
                r.header("location"),
                Some(format!("https://example.com/{i}").as_str())
            );
        }
    }
    let mut s = s;
    let records = s.stop();
    let ns: Vec<u64> = records
        .iter()
        .map(|r| r["params"]["n"].as_str().unwrap().parse().unwrap())
        .collect();
    let want: Vec<u64> = (0..N).filter(|i| i % 4 != 3).collect();
    assert_eq!(ns, want, "records follow request order");
}

fn requests_split_across_reads(d: Driver) {
    let s = start(d, "");
    let raw = b"GET /i?adv=demo&x=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: split\r\n\r\nGET /e?adv=demo HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut c = s.connect();
    for chunk in raw.chunks(7) {
        c.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = read_responses(&mut c, 2);
    assert_eq!((r[0].status, r[1].status), (200, 204));
}

fn keep_alive_rules(d: Driver) {
    let s = start(d, "");
    // HTTP/1.1: open until asked to close.
    let mut c = s.connect();
    for _ in 0..3 {
        c.write_all(b"GET /i?adv=demo HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let r = read_responses(&mut c, 1).remove(0);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    c.write_all(b"GET /i?adv=demo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_responses(&mut c, 1)[0].header("connection"),
        Some("close")
    );
    assert!(closed(&mut c));
    // HTTP/1.0: closed unless asked to keep alive.
    let mut c = s.connect();
    c.write_all(b"GET /i?adv=demo HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        read_responses(&mut c, 1)[0].header("connection"),
        Some("close")
    );
    assert!(closed(&mut c));
    let mut c = s.connect();
    c.write_all(b"GET /i?adv=demo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_responses(&mut c, 1)[0].header("connection"),
        Some("keep-alive")
    );
    c.write_all(b"GET /i?adv=demo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(read_responses(&mut c, 1)[0].status, 200);
}

/// Each bad request gets its precise status and a closed connection.
fn limits_answer_with_their_status(d: Driver) {
    let s = start(
        d,
        "[server]\nmax_request_line_bytes = 1024\nmax_header_bytes = 2048\nmax_headers = 8\nmax_body_bytes = 256\nmax_params = 4\n",
    );
    let long_uri = format!(
        "GET /i?adv=demo&x={} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(2000)
    );
    let huge_uri = format!(
        "GET /i?x={} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let many: String = (0..9).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /i HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    let big_header = format!(
        "GET /i HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(2100)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("long uri", long_uri.into_bytes(), 414),
        ("100 KB uri", huge_uri.into_bytes(), 414),
        ("too many headers", many_headers.into_bytes(), 431),
        ("header bytes", big_header.into_bytes(), 431),
        (
            "body",
            b"POST /batch HTTP/1.1\r\nHost: t\r\nContent-Length: 257\r\n\r\n".to_vec(),
            413,
        ),
        (
            "gzip coding",
            b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
            501,
        ),
        (
            "chunked not last",
            b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(),
            400,
        ),
        (
            "chunked twice",
            b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "chunked and length",
            b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "chunked over the body limit",
            b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n101\r\n".to_vec(),
            413,
        ),
        (
            "bad chunk size",
            b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            400,
        ),
        ("garbage line", b"HELLO\r\n\r\n".to_vec(), 400),
        ("no version", b"GET /i\r\n\r\n".to_vec(), 400),
        ("bad version", b"GET /i HTTP/9.9\r\n\r\n".to_vec(), 400),
        (
            "NUL in target",
            b"GET /i?adv=de\0mo HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
        (
            "NUL in header",
            b"GET /i HTTP/1.1\r\nHost: t\r\nX: a\0b\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space in target",
            b"GET /i?a=b c HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
        ("no host", b"GET /i HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            "two hosts",
            b"GET /i HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n".to_vec(),
            400,
        ),
        (
            "asterisk form",
            b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bad length",
            b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "tls hello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (what, raw, status) in cases {
        let mut c = s.connect();
        c.write_all(&raw).unwrap();
        let r = read_responses(&mut c, 1).remove(0);
        assert_eq!(r.status, status, "{what}");
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        assert!(closed(&mut c), "{what}: connection left open");
    }
    // Bad percent-encoding and too many parameters are 400 answers on a
    // connection that stays usable: the framing was fine.
    for target in ["/i?adv=demo&x=%zz", "/i?adv=demo&x=%4", "/e?a&b&c&d&e"] {
        assert_eq!(s.get(target).status, 400, "{target}");
    }
}

fn bad_clients_do_not_disturb_others(d: Driver) {
    let s = start(d, "[server]\nmax_request_line_bytes = 1024\n");
    let mut good = s.connect();
    let bad_inputs: Vec<Vec<u8>> = vec![
        b"\0\0\0\0\r\n\r\n".to_vec(),
        format!(
            "GET /{} HTTP/1.1\r\nHost: t\r\n\r\n",
            "x".repeat(100 * 1024)
        )
        .into_bytes(),
        b"GET /i?%%%% HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        vec![0xff; 4096],
    ];
    for (i, bad) in bad_inputs.iter().enumerate() {
        let mut b = s.connect();
        let _ = b.write_all(bad);
        // The well-behaved client on the same worker is answered meanwhile.
        good.write_all(format!("GET /i?adv=demo&n={i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_responses(&mut good, 1)[0].status, 200);
        assert!(
            closed(&mut b) || i == 2,
            "bad input {i} left its connection open"
        );
    }
}

/// Sends `head` then `tail_bytes` more from its own thread, as a client
/// that writes its whole request before it reads does; reads the one
/// answer meanwhile. Returns its status (`None` when a reset took it) and
/// whether every byte was sent (a reset fails the write).
fn send_all_then_read(
    s: &common::TestServer,
    head: &[u8],
    tail_bytes: usize,
) -> (Option<u16>, bool) {
    let mut c = s.connect();
    let mut w = c.try_clone().unwrap();
    let head = head.to_vec();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        w.write_all(&head)?;
        while sent < tail_bytes {
            w.write_all(&chunk)?;
            sent += chunk.len();
        }
        std::io::Result::Ok(())
    });
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match std::io::Read::read(&mut c, &mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let status = std::str::from_utf8(&got)
        .ok()
        .and_then(|t| t.strip_prefix("HTTP/1.1 "))
        .and_then(|t| t.get(..3))
        .and_then(|t| t.parse().ok());
    let sent = writer.join().unwrap().is_ok();
    if sent {
        // The answer is followed by an end of file.
        assert!(closed(&mut c), "connection left open");
    }
    (status, sent)
}

/// A client that sends far past a limit before it reads (32 MB of target,
/// or of a body over the limit) gets the status, not a reset: the server
/// reads and drops what follows its answer for `lingering_close_ms`
/// (RFC 9112 §9.6). With 0 it closes at once, and the client's writes fail.
fn a_client_still_sending_past_a_limit_reads_its_status(d: Driver) {
    const MORE: usize = 32 << 20;
    // Time to take 32 MB on a loaded machine, the deadline not under test.
    let s = start(
        d,
        "[server]\nmax_body_bytes = 256\nlingering_close_ms = 30000\n",
    );
    let long_target = b"GET /i?adv=demo&x=";
    let big_body = format!("POST /batch HTTP/1.1\r\nHost: t\r\nContent-Length: {MORE}\r\n\r\n");
    assert_eq!(send_all_then_read(&s, long_target, MORE), (Some(414), true));
    assert_eq!(
        send_all_then_read(&s, big_body.as_bytes(), MORE),
        (Some(413), true)
    );
    assert_eq!(s.get("/healthz").status, 200);

    // A client that stops sending but keeps the connection is let go when
    // the lingering time is up.
    let s = start(d, "[server]\nlingering_close_ms = 300\n");
    let mut c = s.connect();
    c.write_all(b"GET /i?adv=demo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /i")
        .unwrap();
    assert_eq!(read_responses(&mut c, 1)[0].status, 200);
    let open = || common::metric(&s.metrics(), "trackplane_connections_open");
    let began = std::time::Instant::now();
    while open() > 0.0 {
        assert!(began.elapsed() < Duration::from_secs(5), "never let go");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(closed(&mut c));

    let s = start(d, "[server]\nlingering_close_ms = 0\n");
    let (_, sent) = send_all_then_read(&s, long_target, MORE);
    assert!(!sent, "closed at once, the connection is reset");
}

fn slow_header_gets_408_and_idle_connection_closes(d: Driver) {
    let s = start(
        d,
        "[server]\nheader_timeout_ms = 300\nidle_timeout_ms = 400\n",
    );
    let mut slow = s.connect();
    slow.write_all(b"GET /i?adv=demo HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .unwrap();
    let began = std::time::Instant::now();
    // Another client is served while the slow one dawdles.
    assert_eq!(s.get("/i?adv=demo").status, 200);
    let r = read_responses(&mut slow, 1).remove(0);
    assert_eq!(r.status, 408);
    assert!(began.elapsed() >= Duration::from_millis(250));
    assert!(closed(&mut slow));
    // Dripping one byte at a time does not extend the header deadline.
    let mut drip = s.connect();
    let began = std::time::Instant::now();
    drip.write_all(b"GET /i HTTP/1.1\r\nHost: t\r\n").unwrap();
    let mut got_408 = false;
    for _ in 0..40 {
        if drip.write_all(b"X").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        if began.elapsed() > Duration::from_millis(600) {
            break;
        }
    }
    drip.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 256];
    if let Ok(n) = std::io::Read::read(&mut drip, &mut b) {
        got_408 = String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 408");
    }
    assert!(got_408, "a dripping header must time out");
    // An idle keep-alive connection is closed without an answer.
    let mut idle = s.connect();
    idle.write_all(b"GET /i?adv=demo HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_responses(&mut idle, 1)[0].status, 200);
    let began = std::time::Instant::now();
    assert!(closed(&mut idle));
    assert!(began.elapsed() >= Duration::from_millis(300));
}

/// A keep-alive connection's deadline moves with each request (later,
/// and earlier when a request's head arrives in part), and the connection
/// is timed by its latest one, not by one a request before.
fn a_busy_connection_outlives_its_first_deadline(d: Driver) {
    let s = start(
        d,
        "[server]\nheader_timeout_ms = 200\nidle_timeout_ms = 600\n",
    );
    let mut c = s.connect();
    let began = std::time::Instant::now();
    // Requests 200 ms apart for three idle timeouts: each one's answer
    // comes on the same connection.
    for i in 0..9 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        c.write_all(b"GET /i?adv=demo HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_responses(&mut c, 1)[0].status, 200, "request {i}");
    }
    assert!(began.elapsed() >= Duration::from_millis(1600));
    // A head that stops halfway is timed by the header timeout from when
    // it began, sooner than the idle deadline the last answer set.
    std::thread::sleep(Duration::from_millis(100));
    c.write_all(b"GET /i?adv=demo HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let began = std::time::Instant::now();
    let r = read_responses(&mut c, 1).remove(0);
    assert_eq!(r.status, 408);
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(450),
        "408 after {waited:?}"
    );
    assert!(closed(&mut c));
}

/// A body that stops arriving gets 408 once the body timeout passes
/// from its last read, as nginx's `client_body_timeout` does; one that
/// keeps coming, however slowly, is read to its end and answered.
fn a_stalled_body_gets_408_and_a_slow_one_is_read(d: Driver) {
    let mut s = start(
        d,
        "[server]\nheader_timeout_ms = 5000\nbody_timeout_ms = 300\n",
    );
    let body = b"adv=demo&ev=page_view&pid=slow-body";
    let head = format!(
        "POST /e HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stalled = s.connect();
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&body[..5]).unwrap();
    let began = std::time::Instant::now();
    // Another client is served while the body waits.
    assert_eq!(s.get("/i?adv=demo").status, 200);
    let r = read_responses(&mut stalled, 1).remove(0);
    let waited = began.elapsed();
    assert_eq!(r.status, 408);
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(2500),
        "408 after {waited:?}: the body timeout's, not the header timeout's"
    );
    assert!(closed(&mut stalled));

    // Seven pieces 150 ms apart: over three body timeouts in all, never
    // one between two reads.
    let mut slow = s.connect();
    slow.write_all(head.as_bytes()).unwrap();
    let began = std::time::Instant::now();
    for piece in body.chunks(body.len().div_ceil(7)) {
        std::thread::sleep(Duration::from_millis(150));
        slow.write_all(piece).unwrap();
    }
    assert!(began.elapsed() >= Duration::from_millis(900));
    assert_eq!(read_responses(&mut slow, 1)[0].status, 204);
    let records = s.stop();
    assert_eq!(
        common::products_of(&records, "page_view"),
        [serde_json::json!(["slow-body"])],
        "{records:?}"
    );
}

fn connection_cap_per_worker(d: Driver) {
    let s = start(d, "[server]\nmax_connections_per_worker = 2\n");
    let mut a = s.connect();
    let mut b = s.connect();
    a.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    b.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    read_responses(&mut a, 1);
    read_responses(&mut b, 1);
    let mut c = s.connect();
    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(closed(&mut c), "third connection must be refused");
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.get("/healthz").status, 200);
    let m = s.admin_get("/metrics");
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("trackplane_connections_refused_total 1"),
        "{text}"
    );
}

/// Pipelined requests from a client that never reads its answers: once both
/// ends' buffers are full the server's write waits, and after the send
/// timeout the server closes the connection (the client's writes then fail)
/// while it goes on serving others.
fn a_client_that_never_reads_is_let_go(d: Driver) {
    let s = start(d, "[server]\nsend_timeout_ms = 300\n");
    let hog = s.connect();
    let mut w = hog.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let writer = std::thread::spawn(move || {
        let requests = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
        let began = std::time::Instant::now();
        while began.elapsed() < Duration::from_secs(30) {
            match w.write_all(&requests) {
                Ok(()) => {}
                // Blocked: the server is not reading; keep trying.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    });
    assert!(
        writer.join().unwrap(),
        "the server kept a connection whose client never reads"
    );
    assert_eq!(s.get("/healthz").status, 200);
    let m = s.metrics();
    assert_eq!(
        common::metric(&m, "trackplane_send_timeouts_total"),
        1.0,
        "{m}"
    );
    drop(hog);
}

fn click_redirects_only_where_allowed(d: Driver) {
    let s = start(d, "");
    let r = s.get("/c?adv=demo&url=https%3A%2F%2Fshop.example.com%2Fp%3Fa%3D1");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://shop.example.com/p?a=1"));
    for bad in [
        "/c?adv=demo&url=https://evil.com/",
        "/c?adv=demo&url=//evil.com",
        "/c?adv=demo&url=https://example.com%0d%0aSet-Cookie:%20a=b",
        "/c?adv=demo&url=https://example.com@evil.com",
        "/c?adv=demo&url=javascript:alert(1)",
        "/c?adv=demo",
        "/c?adv=nobody&url=https://example.com/",
    ] {
        let r = s.get(bad);
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.header("location"), None, "{bad}");
        assert_eq!(r.header("set-cookie"), None, "{bad}");
    }
    let mut s = s;
    let records = s.stop();
    assert_eq!(records.len(), 8, "every click is recorded, allowed or not");
    assert_eq!(records[0]["status"], "ok");
    assert!(records[1..].iter().all(|r| r["status"] == "invalid"));
}

fn post_beacon_with_form_body_and_expect_continue(d: Driver) {
    let mut s = start(d, "");
    let body = "adv=demo&ev=purchase&order_id=o1&value=12.50&currency=EUR&pid=a";
    let raw = format!("POST /e HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n", body.len());
    let mut c = s.connect();
    c.write_all(raw.as_bytes()).unwrap();
    let mut b = [0u8; 64];
    let n = std::io::Read::read(&mut c, &mut b).unwrap();
    assert!(b[..n].starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"));
    c.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_responses(&mut c, 1)[0].status, 204);
    let json = r#"{"adv":"demo","ev":"add_to_cart","pid":["a","b"],"value":3.5,"currency":"USD"}"#;
    let raw = format!(
        "POST /e HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    c.write_all(raw.as_bytes()).unwrap();
    assert_eq!(read_responses(&mut c, 1)[0].status, 204);
    let records = s.stop();
    assert_eq!(records[0]["type"], "purchase");
    assert_eq!(records[0]["params"]["value"], "12.50");
    assert_eq!(records[1]["type"], "add_to_cart");
    assert_eq!(records[1]["products"], serde_json::json!(["a", "b"]));
    assert_eq!(records[1]["params"]["value"], "3.5");
}
