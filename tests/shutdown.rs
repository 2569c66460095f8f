//! SIGTERM on the real binary under load: every call that got an answer is
//! in the event log after exit, and the process exits 0. And what the
//! process sets up for itself around serving: systemd's notifications,
//! transparent huge pages off, workers pinned one a core.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `signal` (`-TERM`, `-INT`) under load on `driver`.
fn a_stop_loses_nothing_answered(driver: &str, signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server =
        common::process::serve(dir.path(), &["--workers", "2", "--driver", driver], &[]);
    let addr = server.addr;
    let answered = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let answered = answered.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut n = 0u64;
                'outer: while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        break;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    for _ in 0..50 {
                        let id = c * 1_000_000 + n;
                        n += 1;
                        let req = format!("GET /i?adv=demo&n={id} HTTP/1.1\r\nHost: t\r\n\r\n");
                        if s.write_all(req.as_bytes()).is_err() {
                            continue 'outer;
                        }
                        match read_one(&mut s) {
                            Some(200) => {
                                answered.lock().unwrap().insert(id);
                            }
                            _ => continue 'outer,
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    server.signal(signal);
    let status = server.wait_exit(Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(status.success(), "exit status {status:?}");
    let answered = answered.lock().unwrap();
    assert!(
        answered.len() > 100,
        "load too light to mean anything: {}",
        answered.len()
    );
    let records = common::records(dir.path());
    let stored: HashSet<u64> = records
        .iter()
        .map(|r| r["params"]["n"].as_str().unwrap().parse().unwrap())
        .collect();
    let missing: Vec<_> = answered.iter().filter(|n| !stored.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} answered calls missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let ids: HashSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), records.len(), "ids are unique");
}

fn read_one(s: &mut std::net::TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            if buf.len() >= head + len {
                return resp.code;
            }
        }
        let n = std::io::Read::read(s, &mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn sigterm_loses_nothing_answered_uring() {
    a_stop_loses_nothing_answered("uring", "-TERM");
}

#[test]
fn sigterm_loses_nothing_answered_epoll() {
    a_stop_loses_nothing_answered("epoll", "-TERM");
}

/// Ctrl-C in a terminal stops the server as SIGTERM does.
#[test]
fn sigint_loses_nothing_answered() {
    a_stop_loses_nothing_answered("uring", "-INT");
}

/// SIGTERM stops accepting, but a request already begun is read to its
/// end, answered and stored before the process exits 0; an idle
/// keep-alive connection is closed by then.
#[test]
fn sigterm_stops_accepting_and_finishes_a_request_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::process::serve(dir.path(), &["--workers", "1"], &[]);
    let addr = server.addr;
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /i?adv=demo HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(common::read_responses(&mut idle, 1)[0].status, 200);
    let body = b"adv=demo&ev=page_view&pid=in-flight";
    let mut begun = std::net::TcpStream::connect(addr).unwrap();
    write!(
        begun,
        "POST /e HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    begun.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    server.signal("-TERM");
    // New connections find nobody accepting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The begun request is still read and answered.
    begun.write_all(&body[10..]).unwrap();
    assert_eq!(common::read_responses(&mut begun, 1)[0].status, 204);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(common::closed(&mut idle));
    let records = common::records(dir.path());
    assert_eq!(
        common::products_of(&records, "page_view"),
        [serde_json::json!(["in-flight"])],
        "{records:?}"
    );
}

/// A connection that has sent nothing (as browsers open them ahead of
/// need) holds a stop for a moment, not for its header timeout; one that
/// sends its request within that moment is still answered.
#[test]
fn a_silent_connection_holds_a_stop_for_a_moment_not_its_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::process::serve(dir.path(), &["--workers", "1"], &[]);
    let mut silent = std::net::TcpStream::connect(server.addr).unwrap();
    let mut late = std::net::TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let began = Instant::now();
    server.signal("-TERM");
    std::thread::sleep(Duration::from_millis(100));
    late.write_all(b"GET /i?adv=demo&pid=late HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(common::read_responses(&mut late, 1)[0].status, 200);
    let status = server.wait_exit(Duration::from_secs(20));
    let took = began.elapsed();
    assert!(status.success(), "{status:?}");
    // The header timeout is 10 s; the moment is 1 s.
    assert!(took < Duration::from_secs(5), "the stop took {took:?}");
    assert!(common::closed(&mut silent));
    let records = common::records(dir.path());
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["products"], serde_json::json!(["late"]));
}

/// A first write to fresh memory must not fault in a whole huge page while
/// requests wait (`forgo_huge_pages` in the server).
#[test]
fn serves_with_transparent_huge_pages_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::serve(dir.path(), &["--workers", "1"], &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
}

/// The cores in a `Cpus_allowed_list` ("0-2,5").
fn cores(list: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in list.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    out
}

/// The cores each worker thread of `pid` may run on, in worker order.
fn worker_cores(pid: u32) -> Vec<Vec<usize>> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap();
        if let Some(index) = comm.trim().strip_prefix("trackplane-w") {
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap();
            workers.push((index.parse::<usize>().unwrap(), cores(list)));
        }
    }
    workers.sort();
    workers.into_iter().map(|(_, c)| c).collect()
}

/// By default one worker a core the process may use, each pinned to its
/// own; under `taskset`, to the cores it allows.
#[test]
fn one_worker_a_core_each_pinned_to_its_own() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = cores(
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::serve(dir.path(), &[], &[]);
    let started = server.wait_log("trackplane serving", 0);
    assert!(
        started.contains(&format!(" workers={} ", allowed.len())),
        "{started}"
    );
    let pinned = worker_cores(server.child.id());
    assert_eq!(pinned, allowed.iter().map(|&c| vec![c]).collect::<Vec<_>>());
    drop(server);

    // Two workers on the last allowed core alone share it.
    let last = allowed[allowed.len() - 1].to_string();
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::serve_via(
        &["taskset", "-c", &last, env!("CARGO_BIN_EXE_trackplane")],
        dir.path(),
        &["--workers", "2"],
        &[],
    );
    let last = allowed[allowed.len() - 1];
    assert_eq!(worker_cores(server.child.id()), [vec![last], vec![last]]);
}

/// Under systemd (Type=notify, WatchdogSec): READY=1 once serving,
/// WATCHDOG=1 while the workers run, STOPPING=1 on SIGTERM.
#[test]
fn tells_systemd_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let data = dir.path().join("data");
    let sock_str = sock_path.to_str().unwrap();
    let mut server = common::process::serve(
        &data,
        &["--workers", "2"],
        &[("NOTIFY_SOCKET", sock_str), ("WATCHDOG_USEC", "200000")],
    );
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = recv();
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving on 127.0.0.1:"),
        "{ready}"
    );
    assert_eq!(recv(), "WATCHDOG=1");
    assert_eq!(recv(), "WATCHDOG=1");
    server.signal("-TERM");
    let mut stopping = false;
    for _ in 0..5 {
        if recv() == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
    assert!(server.wait_exit(Duration::from_secs(20)).success());
}

fn events_refused(server: &common::process::Served) -> f64 {
    common::metric(&server.metrics(), "trackplane_events_refused_total")
}

/// A process that answered events it could not store says so, with how
/// many, when it stops: here the disk budget refuses them.
#[test]
fn stopping_logs_how_many_answered_events_were_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("trackplane.toml");
    std::fs::write(
        &config,
        "[storage]\nflush_interval_ms = 5\nblock_max_bytes = 1024\n\
         segment_max_bytes = 4096\ndisk_budget_bytes = 8192\n",
    )
    .unwrap();
    let mut server = common::process::serve(
        &dir.path().join("data"),
        &["--workers", "1", "--config", config.to_str().unwrap()],
        &[],
    );
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pad = "x".repeat(300);
    let deadline = Instant::now() + Duration::from_secs(20);
    while events_refused(&server) < 3.0 {
        assert!(Instant::now() < deadline, "the budget never refused");
        write!(s, "GET /i?adv=demo&pad={pad} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_one(&mut s), Some(200), "pixels always answer");
        std::thread::sleep(Duration::from_millis(5));
    }
    let refused = events_refused(&server);
    let from = server.log_len();
    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let line = server.wait_log("not stored", from);
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&format!("refused={refused}")), "{line}");
}

/// A stop whose last writes fail too (the disk never came back) exits with
/// an error and accounts for every answered event: on disk, refused (said
/// first, as at any stop) or lost at the stop (said, with how many).
#[test]
fn a_stop_that_cannot_write_says_what_it_refused_and_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = common::process::serve(&data, &["--workers", "1"], &[]);
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sent = 0;
    let mut pixel = || {
        write!(s, "GET /i?adv=demo HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(read_one(&mut s), Some(200), "pixels always answer");
        sent += 1;
    };
    pixel();
    let open = trackplane::segment::list(&data.join("segments"))
        .unwrap()
        .into_iter()
        .find(|f| f.open)
        .unwrap()
        .path;
    // The kernel refuses the server's writes past a few bytes more than
    // the open segment holds now (EFBIG, as a full disk gives ENOSPC).
    let size = std::fs::metadata(&open).unwrap().len();
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).unwrap();
    let fsize = rustix::process::Rlimit {
        current: Some(size + 10),
        maximum: None,
    };
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Fsize, fsize).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while events_refused(&server) < 1.0 {
        assert!(Instant::now() < deadline, "failing writes never refused");
        pixel();
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = events_refused(&server) as usize;
    let from = server.log_len();
    server.signal("-TERM");
    assert!(!server.wait_exit(Duration::from_secs(20)).success());
    let line = server.wait_log("not stored", from);
    assert!(line.contains(&format!("refused={refused}")), "{line}");
    let line = server.wait_log("records lost", from);
    let lost: usize = common::process::log_field(&line, "records");
    assert!(lost >= 1, "{line}");
    server.wait_log("cannot write segments", from);
    let stored = common::records(&data).len();
    assert_eq!(
        stored + refused + lost,
        sent,
        "stored {stored}, refused {refused}, lost {lost}"
    );
}
