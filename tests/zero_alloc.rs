//! Zero heap allocations per request in steady state, proven with a
//! counting allocator: after warm-up, thousands of pixel, beacon and click
//! calls (pipelined and one by one) must not allocate at all on the worker
//! threads (the request path, and the live view, which the workers fold a
//! copy of each record into while idle: valid and invalid events, issues
//! and unknown products included), nor in the store thread that writes
//! their segments.
//!
//! One test function, so no other test runs in this process meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use trackplane::config::Driver;

struct Counting;

/// Allocations on the workers (request path and view) and in the store.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Every allocation ever made on a worker thread: proves the
/// classification by thread name still finds the workers.
static WORKER_EVER: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Unknown,
    Classifying,
    Worker,
    RequestPath,
    Other,
}

thread_local! {
    static KIND: Cell<Kind> = const { Cell::new(Kind::Unknown) };
}

/// Which counter this thread's allocations go to; decided once per thread
/// by its name (workers and the store are what the claim is about).
fn count_one() {
    let kind = KIND.try_with(Cell::get).unwrap_or(Kind::Other);
    let kind = if kind == Kind::Unknown {
        // Looking up the name may allocate: that allocation re-enters here
        // and sees Classifying, so it is not counted and does not recurse.
        let _ = KIND.try_with(|k| k.set(Kind::Classifying));
        let k = match std::thread::current().name() {
            Some(n) if n.starts_with("trackplane-w") => Kind::Worker,
            Some("trackplane-store" | "trackplane-sync") => Kind::RequestPath,
            _ => Kind::Other,
        };
        let _ = KIND.try_with(|c| c.set(k));
        k
    } else {
        kind
    };
    match kind {
        Kind::Worker => {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            WORKER_EVER.fetch_add(1, Ordering::Relaxed);
        }
        Kind::RequestPath => {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

// SAFETY: forwards to the system allocator unchanged, only counting calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `rounds` rounds of `batch` pipelined copies of `request` and reads
/// exactly `answer_len` bytes per copy, using only stack buffers.
fn drive(
    stream: &mut std::net::TcpStream,
    request: &[u8],
    batch: usize,
    rounds: usize,
    answer_len: usize,
) {
    let mut out = [0u8; 16384];
    let mut n = 0;
    for _ in 0..batch {
        out[n..n + request.len()].copy_from_slice(request);
        n += request.len();
    }
    let mut sink = [0u8; 65536];
    for _ in 0..rounds {
        stream.write_all(&out[..n]).unwrap();
        let mut want = answer_len * batch;
        while want > 0 {
            let got = stream.read(&mut sink[..want.min(65536)]).unwrap();
            assert!(got > 0, "server closed the connection");
            want -= got;
        }
    }
}

fn answer_len(s: &common::TestServer, request: &[u8]) -> usize {
    let mut c = s.connect();
    c.write_all(request).unwrap();
    let r = common::read_responses(&mut c, 1).remove(0);
    let head: usize = r
        .headers
        .iter()
        .map(|(k, v)| k.len() + 2 + v.len() + 2)
        .sum();
    "HTTP/1.1 200 OK\r\n".len() + head + 2 + r.body.len() + status_line_delta(r.status)
}

fn status_line_delta(status: u16) -> usize {
    match status {
        200 => 0,
        204 => "HTTP/1.1 204 No Content\r\n".len() - "HTTP/1.1 200 OK\r\n".len(),
        302 => "HTTP/1.1 302 Found\r\n".len() - "HTTP/1.1 200 OK\r\n".len(),
        s => panic!("unexpected status {s}"),
    }
}

/// Allocations in steady state: on the workers (the request path, and the
/// view they fold records into) and in the store.
fn steady_state_allocations(driver: Driver, extra: &str) -> u64 {
    // shop's catalog knows `p`, so the beacon's `p,1` has an unknown
    // product; the pixel's advertiser is unknown.
    let config = format!("[catalogs]\nreload_interval_ms = 3600000\n[advertisers.shop]\nredirect_hosts = [\"shop.com\"]\n{extra}");
    let s = common::start_with(driver, &config, |dir| {
        std::fs::create_dir_all(dir.join("catalogs")).unwrap();
        std::fs::write(dir.join("catalogs/shop.txt"), "p\n").unwrap();
    });
    let requests: [&[u8]; 3] = [
        b"GET /i?adv=demo&ev=purchase&order_id=o-1&value=9.99&currency=EUR&pid=a,b,c&uid=u1 HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nReferer: https://shop.com/p/1\r\n\r\n",
        b"GET /e?adv=shop&ev=view_item&pid=p%2C1 HTTP/1.1\r\nHost: t\r\nUser-Agent: test\r\n\r\n",
        b"GET /c?adv=shop&url=https%3A%2F%2Fshop.com%2Fx HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    let lens: Vec<usize> = requests.iter().map(|r| answer_len(&s, r)).collect();
    let mut conns: Vec<std::net::TcpStream> = (0..4).map(|_| s.connect()).collect();
    // Beacons (`view_item` events) sent, which the view counts: one so far,
    // by `answer_len`.
    let mut beacons = 1u64;
    // Warm-up: every buffer reaches its working size.
    for (i, c) in conns.iter_mut().enumerate() {
        for (r, &len) in requests.iter().zip(&lens) {
            drive(c, r, 1 + i * 10, 50, len);
        }
        beacons += ((1 + i * 10) * 50) as u64;
    }
    // The view keeps an advertiser's recent events at a bounded rate, so
    // its recent buffers are all there only after seconds of traffic.
    let filled = std::time::Instant::now()
        + std::time::Duration::from_millis(trackplane::view::recent::FILL_MS + 500);
    while std::time::Instant::now() < filled {
        for (r, &len) in requests.iter().zip(&lens) {
            drive(&mut conns[0], r, 1, 1, len);
        }
        beacons += 1;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Workers fold while idle: wait until the view has every beacon, so
    // that no warm-up fold lands in the count.
    let view_counted = || {
        let audit = s.admin_get("/api/advertisers/shop/audit");
        let audit: serde_json::Value = serde_json::from_slice(&audit.body).unwrap();
        audit["last_hour"]["events_by_type"]["view_item"]
            .as_u64()
            .unwrap_or(0)
    };
    let wait_for_view = |want: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while view_counted() < want && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(view_counted(), want, "{driver:?}: beacons the view counted");
    };
    wait_for_view(beacons);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut calls = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        for (r, &len) in requests.iter().zip(&lens) {
            drive(c, r, 1 + i * 10, 120, len);
            calls += (1 + i * 10) * 120;
        }
        beacons += ((1 + i * 10) * 120) as u64;
    }
    // Every measured beacon folded in (the view's ring had room for all),
    // so the count covers the view's work too.
    wait_for_view(beacons);
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    eprintln!(
        "{driver:?}: {calls} calls; workers (request path and view) and store {} allocations",
        after - before
    );
    // The view saw the unknown product too.
    let audit = s.admin_get("/api/advertisers/shop/audit");
    let audit: serde_json::Value = serde_json::from_slice(&audit.body).unwrap();
    assert_eq!(audit["unknown_products"][0]["id"], "1", "{audit}");
    assert!(calls >= 20_000);
    drop(conns);
    let mut s = s;
    let records = s.stop();
    assert!(records.len() >= calls, "every call was recorded");
    after - before
}

#[test]
fn no_allocation_per_request_on_either_driver() {
    let counted_before = WORKER_EVER.load(Ordering::SeqCst);
    // Pixels and beacons answered before their audit on one, audited
    // before their answer on the others; receives multishot on the first,
    // one per read on the second (kernels before 6.0).
    for (driver, extra) in [
        (Driver::Uring, "[server]\naudit_batch = 16\n"),
        (Driver::Uring, "[server]\nmultishot_recv = false\n"),
        (Driver::Epoll, ""),
    ] {
        let n = steady_state_allocations(driver, extra);
        assert_eq!(n, 0, "{driver:?}: {n} allocations in steady state");
    }
    // Workers allocate their buffers at start-up: if none of that was
    // counted, the thread names no longer match and the zeros above would
    // prove nothing.
    assert!(
        WORKER_EVER.load(Ordering::SeqCst) > counted_before,
        "no allocation was attributed to a worker thread at all"
    );
}
