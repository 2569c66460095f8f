//! The bare responders that `bench/compare.sh` measures as floors answer
//! like a server: one GIF per request, pipelined requests in order,
//! requests split across packets, and a closed connection on garbage.
//! And `loadtest run` loads two of them at once, as `bench/together.sh`
//! does, with a report for each.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ANSWER_LEN: usize = 145;

struct Floor(Child);

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a floor on port 0 and reads the address it bound from its log.
fn start(bin: &str, args: &[&str]) -> (Floor, SocketAddr) {
    let mut child = Command::new(bin)
        .arg("127.0.0.1:0")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let floor = Floor(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{bin} did not listen"))
        .parse()
        .unwrap();
    (floor, addr)
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    s.read_exact(&mut out).unwrap();
    out
}

fn answers_like_a_server(bin: &str, args: &[&str]) {
    let (_floor, addr) = start(bin, args);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = b"GET /i?adv=a HTTP/1.1\r\nHost: t\r\n\r\n";
    // Three pipelined, then one split in two writes.
    s.write_all(&req.repeat(3)).unwrap();
    let three = read_n(&mut s, 3 * ANSWER_LEN);
    assert!(three.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(three.windows(6).filter(|w| w == b"GIF89a").count(), 3);
    s.write_all(&req[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&req[10..]).unwrap();
    let one = read_n(&mut s, ANSWER_LEN);
    assert!(one.ends_with(b"\x3b"));
    // Garbage closes the connection.
    s.write_all(b"\x00\x01 not http\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).expect("closed, not timed out"), 0);
    // Many connections at once are each served.
    let mut conns: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(req).unwrap();
    }
    for c in &mut conns {
        assert_eq!(read_n(c, ANSWER_LEN).len(), ANSWER_LEN);
    }
}

#[test]
fn monoio_floor_answers_like_a_server() {
    answers_like_a_server(env!("CARGO_BIN_EXE_bare-responder"), &["uring-coop"]);
}

/// The floors of trackplane's own I/O path, unbatched and batched (the
/// batched one needs Linux 6.12's `min_wait_usec`, as trackplane's batched
/// workers do).
#[test]
fn worker_floors_answer_like_a_server() {
    for mode in ["uring-worker", "uring-batched"] {
        answers_like_a_server(env!("CARGO_BIN_EXE_bare-responder"), &[mode]);
    }
}

#[test]
fn multishot_floor_answers_like_a_server() {
    for modes in [&[][..], &["send-now"], &["send-now,bufring"]] {
        answers_like_a_server(env!("CARGO_BIN_EXE_bare-multishot"), modes);
    }
}

#[test]
fn one_run_loads_two_servers_at_once_and_reports_each() {
    let bin = env!("CARGO_BIN_EXE_bare-responder");
    let (_a, a) = start(bin, &["uring-coop"]);
    let (_b, b) = start(bin, &["uring-coop"]);
    let run = |addrs: &[String]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
        cmd.args([
            "run",
            "--rate",
            "2000",
            "--connections",
            "8",
            "--duration",
            "1",
        ]);
        cmd.args(["--warmup", "0", "--json"]);
        for addr in addrs {
            cmd.args(["--addr", addr]);
        }
        cmd.output().unwrap()
    };
    let out = run(&[a.to_string(), b.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let reports: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2, "{text}");
    for r in &reports {
        // 2,000 a second to each, for one second.
        let completed = r["completed"].as_u64().unwrap();
        assert!((1800..=2200).contains(&completed), "{r}");
        assert_eq!(r["ok"], r["completed"], "{r}");
        assert_eq!(r["errors"], 0, "{r}");
    }
    // A server that is not there fails the run, named.
    let out = run(&[a.to_string(), "127.0.0.1:1".into()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

/// Now on `CLOCK_MONOTONIC`, in ns, the clock a trace's due times are on.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn a_trace_holds_each_measured_answer_with_its_server_due_time_and_latency() {
    let bin = env!("CARGO_BIN_EXE_bare-responder");
    let (_a, a) = start(bin, &["uring-coop"]);
    let (_b, b) = start(bin, &["uring-coop"]);
    let trace = std::env::temp_dir().join(format!("loadtest-trace-{}", std::process::id()));
    let before = monotonic_ns();
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "--rate", "2000", "--connections", "8"])
        .args(["--duration", "1", "--warmup", "1", "--json"])
        .args(["--addr", &a.to_string(), "--addr", &b.to_string()])
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    let after = monotonic_ns();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text = std::fs::read_to_string(&trace).unwrap();
    std::fs::remove_file(&trace).unwrap();
    let mut dues: [Vec<u64>; 2] = [vec![], vec![]];
    for line in text.lines() {
        let f: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        let [server, due, latency] = f[..] else {
            panic!("{line}")
        };
        assert!(
            (before..after).contains(&due),
            "{line}: not between {before} and {after}"
        );
        assert!(latency > 0 && latency < 1_000_000_000, "{line}");
        dues[server as usize].push(due);
    }
    for (r, d) in reports.iter().zip(&dues) {
        // Every measured answer, and only those: due in the second after
        // the warm-up, not in the warm-up.
        assert_eq!(d.len() as u64, r["completed"].as_u64().unwrap(), "{r}");
        let span = d.iter().max().unwrap() - d.iter().min().unwrap();
        assert!((900_000_000..1_000_000_000).contains(&span), "{span} ns");
        assert!(d.iter().min().unwrap() - before > 1_000_000_000);
    }
}
