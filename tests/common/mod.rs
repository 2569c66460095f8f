//! Test harness: a real server on loopback with its own data directory, and
//! a raw-bytes HTTP client that parses answers strictly.
#![allow(dead_code)]

pub mod kafka;
pub mod process;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use trackplane::config::{Config, Driver};
use trackplane::server::{DriverKind, Server};

pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// The io_uring setting `on_every_driver!` runs a test's servers under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// As configured by default.
    Default,
    /// As configured by default, but batching every wait, as a busy
    /// worker does (`server.wake_batch_busy_percent = 0`): a test's load
    /// keeps a worker too quiet to batch by default.
    BatchAlways,
    /// Without wake-up batching (`server.wake_batch = 0`): the ring kernels
    /// before 6.12 get.
    Unbatched,
    /// Unbatched, with one receive request per read
    /// (`server.multishot_recv = false`): the ring kernels before 6.0 get.
    OneRecvPerRead,
}

thread_local! {
    static RING: Cell<Ring> = const { Cell::new(Ring::Default) };
}

/// Runs `f` with the servers it starts on `ring`; tests that share a
/// thread (`--test-threads 1`) get the default back afterwards.
pub fn on_ring(ring: Ring, f: impl FnOnce()) {
    RING.set(ring);
    f();
    RING.set(Ring::Default);
}

/// Starts a one-worker server on `driver` with `extra` TOML merged over a
/// test base config.
pub fn start(driver: Driver, extra: &str) -> TestServer {
    start_with(driver, extra, |_| {})
}

pub fn start_with(driver: Driver, extra: &str, prepare: impl FnOnce(&Path)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    let base = format!(
        "node_id = \"t1\"\ndata_dir = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n",
        dir.path().display()
    );
    let config = Config::from_toml_str(&merge_toml(&base, extra), "test").unwrap();
    let mut config = config;
    config.server.driver = driver;
    let ring = RING.get();
    let unbatched = matches!(ring, Ring::Unbatched | Ring::OneRecvPerRead);
    if unbatched {
        config.server.wake_batch = 0;
    }
    if ring == Ring::OneRecvPerRead {
        config.server.multishot_recv = false;
    }
    if ring == Ring::BatchAlways {
        config.server.wake_batch_busy_percent = 0;
    }
    let multishot = config.server.multishot_recv;
    let server = Server::start(config).unwrap();
    if driver == Driver::Uring {
        // Batched wherever the kernel can (Linux 6.12) unless turned off;
        // multishot receives (Linux 6.0) unless turned off.
        let batched = !unbatched && kernel_batches_wakeups();
        assert_eq!(server.drivers, [DriverKind::Uring { batched, multishot }]);
    }
    TestServer {
        addr: server.data_addr,
        admin: server.admin_addr,
        server: Some(server),
        dir,
    }
}

/// Whether this kernel has io_uring's `min_wait_usec` (Linux 6.12).
pub fn kernel_batches_wakeups() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    (major, minor) >= (6, 12)
}

/// Appends `extra` to `base`, moving keys of a `[server]` table in `extra`
/// into the base's `[server]` table (TOML forbids defining it twice).
fn merge_toml(base: &str, extra: &str) -> String {
    let mut base: toml::Table = toml::from_str(base).unwrap();
    let extra: toml::Table = toml::from_str(extra).unwrap();
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => b.extend(e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    toml::to_string(&base).unwrap()
}

impl TestServer {
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Sends `raw` on a new connection and reads `n` answers.
    pub fn exchange(&self, raw: &[u8], n: usize) -> Vec<Response> {
        let mut s = self.connect();
        s.write_all(raw).unwrap();
        read_responses(&mut s, n)
    }

    pub fn get(&self, target: &str) -> Response {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\nUser-Agent: test-agent\r\n\r\n");
        self.exchange(raw.as_bytes(), 1).remove(0)
    }

    pub fn admin_get(&self, path: &str) -> Response {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        read_responses(&mut s, 1).remove(0)
    }

    /// Stops the server (drain, flush, fsync) and returns every record.
    pub fn stop(&mut self) -> Vec<serde_json::Value> {
        if let Some(server) = self.server.take() {
            server.shutdown();
            server.wait().unwrap();
        }
        records(self.dir.path())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
            let _ = server.wait();
        }
    }
}

/// Every record in the segments under `data_dir`, stream by stream, in
/// sequence order; checks that sequences are consecutive per stream.
pub fn records(data_dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut next: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    for seg in trackplane::segment::list(&data_dir.join("segments")).unwrap() {
        let mut r = trackplane::segment::SegmentReader::open(&seg.path).unwrap();
        while let Some(block) = r.next_block().unwrap() {
            for (seq, rec) in block.records() {
                let want = next.entry(seg.stream).or_insert(seq);
                assert_eq!(
                    seq, *want,
                    "stream {} skips from {} to {seq}",
                    seg.stream, *want
                );
                *want = seq + 1;
                out.push(
                    serde_json::from_slice(rec)
                        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(rec))),
                );
            }
        }
    }
    out
}

/// The products of each record of event type `kind`, in stored order.
pub fn products_of(records: &[serde_json::Value], kind: &str) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter(|r| r["type"] == kind)
        .map(|r| r["products"].clone())
        .collect()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads exactly `n` answers (Content-Length framed) from `s`.
pub fn read_responses(s: &mut TcpStream, n: usize) -> Vec<Response> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let status = resp.code.unwrap();
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            let body_len = if status == 100 || status == 204 {
                0
            } else {
                len
            };
            if buf.len() >= head + body_len {
                let body = buf[head..head + body_len].to_vec();
                buf.drain(..head + body_len);
                if status != 100 {
                    out.push(Response {
                        status,
                        headers,
                        body,
                    });
                }
                continue;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {} answers; have {:?}",
            out.len(),
            String::from_utf8_lossy(&buf)
        );
        let mut chunk = [0u8; 65536];
        let k = s
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("read failed after {} answers: {e}", out.len()));
        assert!(
            k > 0,
            "connection closed after {} answers; have {:?}",
            out.len(),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..k]);
    }
    assert!(
        buf.is_empty(),
        "unexpected bytes after answers: {:?}",
        String::from_utf8_lossy(&buf)
    );
    out
}

/// Whether the server closed `s` (EOF) within a few seconds.
pub fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Generates one test per driver from `fn name(driver: Driver)`: io_uring
/// as configured by default with every wait batched, as a busy worker's
/// are (wake-ups batched where the kernel can, multishot receives),
/// io_uring unbatched, io_uring unbatched with one receive per read, and
/// epoll.
#[macro_export]
macro_rules! on_every_driver {
    ($($name:ident),* $(,)?) => {
        mod uring { $( #[test] fn $name() {
            super::common::on_ring(super::common::Ring::BatchAlways, || super::$name(trackplane::config::Driver::Uring))
        } )* }
        mod uring_unbatched { $( #[test] fn $name() {
            super::common::on_ring(super::common::Ring::Unbatched, || super::$name(trackplane::config::Driver::Uring))
        } )* }
        mod uring_one_recv_per_read { $( #[test] fn $name() {
            super::common::on_ring(super::common::Ring::OneRecvPerRead, || super::$name(trackplane::config::Driver::Uring))
        } )* }
        mod epoll { $( #[test] fn $name() { super::$name(trackplane::config::Driver::Epoll) } )* }
    };
}

/// The value of an unlabelled metric in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

impl TestServer {
    pub fn metrics(&self) -> String {
        String::from_utf8_lossy(&self.admin_get("/metrics").body).into_owned()
    }
}

/// Waits up to `limit` for `done`, looking every 20 ms.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sets the soft file-size limit (RLIMIT_FSIZE) of process `pid`, or of
/// this one; `None` bytes lifts it back to the hard limit. The kernel then
/// answers writes past it with EFBIG, as a full file system answers
/// ENOSPC: a real refusal on demand.
pub fn limit_file_size(pid: Option<u32>, bytes: Option<u64>) {
    use rustix::process::{getrlimit, prlimit, Pid, Resource, Rlimit};
    let hard = getrlimit(Resource::Fsize).maximum;
    let pid = pid.and_then(|p| Pid::from_raw(p as i32));
    prlimit(
        pid,
        Resource::Fsize,
        Rlimit {
            current: bytes.or(hard),
            maximum: hard,
        },
    )
    .unwrap();
}

/// An io_uring builder with a worker's flags (`server::worker`): deferred
/// task work with the task-run flag.
pub fn worker_ring() -> io_uring::Builder {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag();
    urb
}

/// A runtime on a ring built as a worker's is, with timers, unbatched.
pub fn worker_runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(worker_ring())
        .enable_timer()
        .build()
        .unwrap()
}
