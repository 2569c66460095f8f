//! Zero-downtime restart of the real binary under load: SIGUSR2 starts a new
//! process that takes over the listening sockets while the old one drains.
//! Clients on keep-alive connections (reconnecting on `Connection: close`,
//! and retrying a request a server closed before answering, as browsers
//! do) see no refused connection and no failed request, every answered
//! event is on disk, both processes served, and systemd hears the new main
//! pid and never STOPPING until the new process itself stops.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    answered: Mutex<HashSet<String>>,
    refused: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    reconnects: AtomicU64,
}

/// How one request went.
enum Outcome {
    /// 200; whether the server closes the connection after it.
    Answered { close: bool },
    /// The connection ended before any byte of an answer.
    Dropped,
    /// Anything else: a partial or wrong answer.
    Broken(String),
}

fn request(s: &mut TcpStream, uid: &str) -> Outcome {
    let req = format!("GET /i?adv=acme&ev=impression&uid={uid} HTTP/1.1\r\nHost: t\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return Outcome::Dropped;
    }
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if buf.len() >= end + 4 + 43 {
                if !head.starts_with("http/1.1 200") {
                    return Outcome::Broken(head);
                }
                return Outcome::Answered {
                    close: head.contains("connection: close"),
                };
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) if buf.is_empty() => return Outcome::Dropped,
            Ok(0) => return Outcome::Broken("connection closed mid-answer".into()),
            Err(e) => return Outcome::Broken(e.to_string()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn client(addr: SocketAddr, c: usize, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn: Option<TcpStream> = None;
    let mut reused = false;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                    tally.reconnects.fetch_add(1, Ordering::Relaxed);
                    reused = false;
                    conn.insert(s)
                }
                Err(_) => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        let uid = format!("c{c}n{n}");
        n += 1;
        match request(s, &uid) {
            Outcome::Answered { close } => {
                tally.answered.lock().unwrap().insert(uid);
                reused = true;
                if close {
                    conn = None;
                }
            }
            // A kept-alive connection the server closed as this request
            // left: the request was not read; send it again.
            Outcome::Dropped if reused => {
                tally.retried.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Outcome::Dropped => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            Outcome::Broken(why) => {
                eprintln!("client {c}: {why}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// Kills the new process if the test ends early.
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        if !ended(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

fn restart_under_load(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let listening = Arc::new(AtomicBool::new(true));
    let collector = {
        let messages = messages.clone();
        let listening = listening.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while listening.load(Ordering::Relaxed) {
                if let Ok(n) = notify.recv(&mut buf) {
                    let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                    messages.lock().unwrap().push(m);
                }
            }
        })
    };
    let data = dir.path().join("data");
    let mut old = common::process::serve(
        &data,
        &["--workers", "2", "--driver", driver],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let addr = old.addr;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (tally, stop) = (tally.clone(), stop.clone());
            std::thread::spawn(move || client(addr, c, tally, stop))
        })
        .collect();
    // A keep-alive connection left idle on the old process: it must end
    // when the old process does, not live on in the new one.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(
        request(&mut idle, "idle"),
        Outcome::Answered { close: false }
    ));
    std::thread::sleep(Duration::from_millis(700));
    let before = tally.answered.lock().unwrap().len();
    let from = old.log_len();
    let signalled = Instant::now();
    old.signal("-USR2");
    let line = old.wait_log("new_pid=", from);
    let new_pid: u32 = common::process::log_field(&line, "new_pid");
    let _reaper = Reaper(new_pid);
    let status = old.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "old process exit status {status:?}");
    let handover_took = signalled.elapsed();
    let mut rest = Vec::new();
    assert!(
        matches!(idle.read_to_end(&mut rest), Ok(0)),
        "an idle connection of the old process outlived it"
    );
    // Keep the load on the new process alone for a while.
    let handed = tally.answered.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let stopping_before_term = messages
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains("STOPPING=1"))
        .count();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ended(new_pid) {
        assert!(Instant::now() < deadline, "new process did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    listening.store(false, Ordering::Relaxed);
    collector.join().unwrap();

    let answered = tally.answered.lock().unwrap();
    let refused = tally.refused.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let retried = tally.retried.load(Ordering::Relaxed);
    eprintln!(
        "{driver}: answered {} ({before} before the signal, {} after the old exited \
         {handover_took:?} after it), retried {retried}, reconnects {}, refused {refused}, \
         failed {failed}",
        answered.len(),
        answered.len() - handed,
        tally.reconnects.load(Ordering::Relaxed)
    );
    assert_eq!(refused, 0, "connections refused across the restart");
    assert_eq!(failed, 0, "requests failed across the restart");
    assert!(before > 100, "load too light to mean anything: {before}");
    assert!(
        answered.len() > handed + 100,
        "the new process served too little"
    );

    let records = common::records(&data);
    let stored: HashSet<&str> = records
        .iter()
        .filter_map(|r| r["params"]["uid"].as_str())
        .collect();
    let missing: Vec<_> = answered
        .iter()
        .filter(|u| !stored.contains(u.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} answered events missing, e.g. {:?}; refusals logged: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        old.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("not stored"))
            .collect::<Vec<_>>()
    );
    let ids: HashSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), records.len(), "ids are unique across processes");
    // Each process wrote its own streams: two of the old, two of the new.
    let streams: HashSet<u32> = trackplane::segment::list(&data.join("segments"))
        .unwrap()
        .iter()
        .map(|s| s.stream)
        .collect();
    assert!(
        streams.iter().any(|&s| s < 2) && streams.iter().any(|&s| s >= 2),
        "streams {streams:?}"
    );
    assert!(
        trackplane::segment::list(&data.join("segments"))
            .unwrap()
            .iter()
            .all(|s| !s.open),
        "every segment sealed"
    );

    let messages = messages.lock().unwrap();
    assert_eq!(
        stopping_before_term, 0,
        "the old process told systemd it stops: {messages:?}"
    );
    let main_pid = format!("MAINPID={new_pid}\nREADY=1");
    assert!(
        messages.iter().any(|m| m.starts_with(&main_pid)),
        "no {main_pid:?} in {messages:?}"
    );
    assert!(
        messages.last().is_some_and(|m| m == "STOPPING=1"),
        "{messages:?}"
    );
}

#[test]
fn restart_hands_over_without_loss_uring() {
    restart_under_load("uring");
}

#[test]
fn restart_hands_over_without_loss_epoll() {
    restart_under_load("epoll");
}

/// A new process that cannot start (here: its config file turned invalid)
/// is reported, and the old process keeps serving on the same sockets.
#[test]
fn a_failed_restart_leaves_the_old_process_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("trackplane.toml");
    std::fs::write(&config, "node_id = \"t1\"\n").unwrap();
    let data = dir.path().join("data");
    let mut old = common::process::serve(
        &data,
        &["--workers", "1", "--config", config.to_str().unwrap()],
        &[],
    );
    let mut c = TcpStream::connect(old.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(
        request(&mut c, "before"),
        Outcome::Answered { close: false }
    ));
    std::fs::write(&config, "node_id = \"t1\"\n[server]\nworkerz = 2\n").unwrap();
    let mark = old.log_len();
    old.signal("-USR2");
    let failed = old.wait_log("restart failed", mark);
    assert!(failed.contains("exited before serving"), "{failed}");
    assert!(
        old.child.try_wait().unwrap().is_none(),
        "the old process stopped"
    );
    // The kept-alive connection and a new one are both still answered.
    assert!(matches!(
        request(&mut c, "after"),
        Outcome::Answered { close: false }
    ));
    let mut fresh = TcpStream::connect(old.addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(matches!(
        request(&mut fresh, "fresh"),
        Outcome::Answered { .. }
    ));
    old.signal("-TERM");
    assert!(old.wait_exit(Duration::from_secs(20)).success());
    let uids: HashSet<String> = common::records(&data)
        .iter()
        .filter_map(|r| r["params"]["uid"].as_str().map(str::to_owned))
        .collect();
    for uid in ["before", "after", "fresh"] {
        assert!(uids.contains(uid), "{uid} missing");
    }
}
