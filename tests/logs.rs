//! What the server logs carries no personal data (issue 2, privacy), at
//! every level down to `trace`: requests that carry a user id, a client
//! address, cookies, a user agent, a referer and a click target, accepted
//! and refused by every limit, reach the records and not one log line.
//! The records are read too, so that a sentinel missing from the log was
//! one the server had in hand.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::process::serve;

/// Strings that stand for personal data in the requests below; none may
/// appear in a log line. The client's address is `CLIENT`, whose /24
/// (`127.77.88`) reaches the records truncated and must not be logged
/// either.
const UID: &str = "uSentinelUid";
const SENTINELS: [&str; 8] = [
    UID,
    "127.77.88",
    "CookieSentinel",
    "AgentSentinel",
    "referer-sentinel.example",
    "target-sentinel.example",
    "forwarded-sentinel",
    "BodySentinel",
];
const CLIENT: [u8; 4] = [127, 77, 88, 99];

/// A connection from `CLIENT` to `addr`.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((CLIENT, 0)).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `request` on a fresh connection and returns the status of the
/// first answer (0 when the server closed without one).
fn status_of(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut s = connect(addr);
    // The server may answer and close before taking all of a request it
    // refuses; what it answered is still there to read.
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
        }
    }
    std::str::from_utf8(got.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A GET of `target` with every personal header.
fn get(target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: t\r\nCookie: sid=CookieSentinel\r\n\
         User-Agent: AgentSentinel/1.0\r\nReferer: https://referer-sentinel.example/page\r\n\
         X-Forwarded-For: forwarded-sentinel\r\n\r\n"
    )
    .into_bytes()
}

fn post(target: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nHost: t\r\nUser-Agent: AgentSentinel/1.0\r\n{extra}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn no_personal_data_in_the_log(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("catalogs")).unwrap();
    std::fs::write(data.join("catalogs/shop.txt"), "p1\np2\n").unwrap();
    let config = dir.path().join("trackplane.toml");
    std::fs::write(
        &config,
        "node_id = \"t1\"\n[server]\nheader_timeout_ms = 300\nmax_body_bytes = 4096\n\
         [catalogs]\nreload_interval_ms = 100\n[advertisers.shop]\nredirect_hosts = [\"shop.com\"]\n",
    )
    .unwrap();
    let mut server = serve(
        &data,
        &[
            "--workers",
            "1",
            "--driver",
            driver,
            "--config",
            config.to_str().unwrap(),
        ],
        &[("RUST_LOG", "trace")],
    );
    let addr = server.addr;
    let uid = format!("uid={UID}");
    let long = "a".repeat(20_000);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (get(&format!("/i?adv=shop&{uid}&pid=p1,p9")), 200),
        (
            get(&format!(
                "/c?adv=shop&{uid}&url=https://shop.com/target-sentinel.example"
            )),
            302,
        ),
        (
            get(&format!(
                "/c?adv=shop&{uid}&url=https://target-sentinel.example/"
            )),
            400,
        ),
        (get(&format!("/c?adv=shop&{uid}&url=javascript:alert(1)")), 400),
        (
            get(&format!(
                "/e?adv=shop&ev=purchase&{uid}&order_id=o1&value=x&currency=EUR&pid=p2"
            )),
            204,
        ),
        (get(&format!("/i?adv=shop&uid={UID}%zz")), 400),
        (get(&format!("/nowhere?{uid}")), 404),
        (get(&format!("/i?{uid}&{long}")), 414),
        (
            format!(
                "GET /i?{uid} HTTP/1.1\r\nHost: t\r\nCookie: {}CookieSentinel\r\n\r\n",
                "c".repeat(20_000)
            )
            .into_bytes(),
            431,
        ),
        (
            format!("GET /i?{uid} HTTP/1.1\r\nHost: t\r\nX-Bad: AgentSentinel\0\r\n\r\n")
                .into_bytes(),
            400,
        ),
        (
            format!("GET /i?{uid}\0 HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!("BREW /i?{uid} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes(),
            405,
        ),
        (
            format!("GET /i?{uid} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: BodySentinel, chunked\r\n\r\n")
                .into_bytes(),
            501,
        ),
        (
            post(
                "/e?adv=shop",
                "Content-Type: application/x-www-form-urlencoded\r\n",
                &format!("ev=page_view&page=https://referer-sentinel.example/&{uid}"),
            ),
            204,
        ),
        (
            post(
                "/batch",
                "Content-Type: application/json\r\n",
                &format!(r#"[{{"adv":"shop","ev":"view_item","pid":"p1","uid":"{UID}"}}]"#),
            ),
            200,
        ),
        (
            post(
                "/batch",
                "Content-Type: application/json\r\n",
                r#"[{"adv":"shop","uid":"BodySentinel""#,
            ),
            400,
        ),
        (
            post(
                "/batch",
                "",
                &format!(r#"["BodySentinel{}"]"#, "b".repeat(5000)),
            ),
            413,
        ),
        (
            b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nBodySentinel\r\n"
                .to_vec(),
            400,
        ),
        // Slow headers: the rest never comes.
        (
            format!("GET /i?{uid} HTTP/1.1\r\nCookie: CookieSentinel\r\n").into_bytes(),
            408,
        ),
    ];
    for (request, want) in &cases {
        let shown = String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned();
        assert_eq!(status_of(addr, request), *want, "{shown:?}");
    }
    // Admin requests carry what a curious operator might paste.
    assert_eq!(
        status_of(server.admin, &get(&format!("/metrics?{uid}"))),
        200
    );
    assert_eq!(status_of(server.admin, &get(&format!("/{UID}"))), 404);
    // A catalog reload and a configuration reload log their lines too.
    let mark = server.log_len();
    std::fs::write(data.join("catalogs/shop.txt"), "p1\np2\np3\n").unwrap();
    server.wait_log("catalogs reloaded", mark);
    server.signal("-HUP");
    server.wait_log("configuration reloaded", mark);

    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let log = server.log.lock().unwrap().clone();
    // The log said something: start, reloads, stop.
    assert!(
        log.iter().any(|l| l.contains("trackplane stopped")),
        "{log:#?}"
    );
    for line in &log {
        let lower = line.to_ascii_lowercase();
        for s in SENTINELS {
            assert!(
                !lower.contains(&s.to_ascii_lowercase()),
                "log line carries {s:?}: {line}"
            );
        }
    }

    // The server had the personal data in hand: the records carry it.
    let records = common::records(&data);
    // Every event above, refused clicks included (audited as
    // disallowed redirects), and nothing the limits refused.
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "impression",
            "click",
            "click",
            "click",
            "purchase",
            "page_view",
            "view_item"
        ]
    );
    let text = serde_json::to_string(&records).unwrap();
    for s in [
        UID,
        "127.77.88.0",
        "AgentSentinel",
        "referer-sentinel.example",
    ] {
        assert!(text.contains(s), "no record carries {s:?}: {text}");
    }
}

#[test]
fn no_personal_data_in_the_log_uring() {
    no_personal_data_in_the_log("uring");
}

#[test]
fn no_personal_data_in_the_log_epoll() {
    no_personal_data_in_the_log("epoll");
}
