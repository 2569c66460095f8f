//! The store thread's scheduling class, with the real binary run
//! as the systemd unit runs it: an unprivileged user (prlimit and setpriv
//! stand in for systemd), the whole process on one core. With a way back
//! from SCHED_IDLE (CAP_SYS_NICE, or the unit's `LimitNICE=20`) the
//! thread's passes run idle-class, and a batch that fills the ring past a
//! quarter is all stored, nothing refused; with other work holding the
//! core, what was answered still reaches segments promptly. With neither,
//! the server says so and no pass runs idle-class. (`sched`'s own tests
//! cover the lifts.) The catalog reloader needs no way back: it lives in
//! the idle class with `background_class = "idle"`, whatever the
//! privileges, and in the normal class with `"normal"`.
//!
//! Needs root to drop to the unprivileged user, and for the `LimitNICE`
//! case the right to raise RLIMIT_NICE (CAP_SYS_RESOURCE, which some
//! containers withhold); each is skipped with a message otherwise.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{serve_via, Served};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn request(addr: SocketAddr, raw: &[u8]) -> common::Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(raw).unwrap();
    common::read_responses(&mut s, 1).remove(0)
}

/// A `/batch` request of `n` events of about 500 bytes each.
fn batch_of(n: usize) -> String {
    let item = format!(
        r#"{{"adv":"demo","ev":"page_view","note":"{}"}}"#,
        "x".repeat(300)
    );
    let body = format!("[{}]", vec![item.as_str(); n].join(","));
    format!(
        "POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Waits until `name` reads more than `floor` on the metrics page.
fn wait_above(served: &Served, name: &str, floor: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = common::metric(&served.metrics(), name);
        if got > floor {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {got}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const STORE_IDLE: &str = "trackplane_background_idle_passes_total{thread=\"store\"}";

/// One test at a time: a binary being copied for one test is open for
/// writing, and the other's fork could inherit that and make exec fail
/// with ETXTBSY.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What lets the unprivileged server leave SCHED_IDLE, if anything.
#[derive(Clone, Copy)]
enum WayBack {
    /// RLIMIT_NICE 20, as the unit's `LimitNICE=20` sets it.
    NiceLimit,
    /// CAP_SYS_NICE as an ambient capability.
    Capability,
    /// Neither: RLIMIT_NICE 0, no capability.
    Neither,
}

/// Whether this process may raise RLIMIT_NICE to 20 for a child (root
/// without CAP_SYS_RESOURCE, as in some containers, may not).
fn can_raise_nice_limit() -> bool {
    std::process::Command::new("prlimit")
        .args(["--nice=20:20", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The binary, a config with a ring of `ring_bytes` and the idle class,
/// and a data dir, all usable by user nobody; then the server started as
/// nobody, on core 0, with `way`.
fn serve_as_nobody(dir: &Path, way: WayBack, ring_bytes: usize) -> Served {
    let bin = dir.join("trackplane");
    std::fs::copy(env!("CARGO_BIN_EXE_trackplane"), &bin).unwrap();
    let config = dir.join("trackplane.toml");
    std::fs::write(
        &config,
        format!("[server]\nring_bytes = {ring_bytes}\nbackground_class = \"idle\"\n"),
    )
    .unwrap();
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    for p in [dir, &data] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let (nice, caps) = match way {
        WayBack::NiceLimit => ("--nice=20:20", "-all"),
        WayBack::Capability => ("--nice=0:0", "-all,+sys_nice"),
        WayBack::Neither => ("--nice=0:0", "-all"),
    };
    let ambient = if matches!(way, WayBack::Capability) {
        "+sys_nice"
    } else {
        "-all"
    };
    let inh = format!("--inh-caps={caps}");
    let bounding = format!("--bounding-set={caps}");
    let ambient = format!("--ambient-caps={ambient}");
    serve_via(
        &[
            "prlimit",
            nice,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &inh,
            &ambient,
            &bounding,
            "taskset",
            "-c",
            "0",
            bin.to_str().unwrap(),
        ],
        &data,
        &["--config", config.to_str().unwrap(), "--workers", "1"],
        &[],
    )
}

/// As root: one test at a time, a scratch dir, and the server started as
/// nobody with `way`. Not as root: None, and a message.
fn start(
    way: WayBack,
    ring_bytes: usize,
) -> Option<(
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    Served,
)> {
    if !is_root() {
        eprintln!("skipped: dropping to an unprivileged user needs root");
        return None;
    }
    let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let served = serve_as_nobody(dir.path(), way, ring_bytes);
    Some((one, dir, served))
}

fn stop(served: &mut Served) {
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn with_cap_sys_nice_passes_run_idle_and_a_ring_past_a_quarter_is_all_stored() {
    let Some((_one, dir, mut served)) = start(WayBack::Capability, 65536) else {
        return;
    };
    served.wait_log("background=\"idle\"", 0);
    wait_above(&served, STORE_IDLE, 0.0);

    // 40 events of about 500 bytes: past a quarter of the 64 KiB ring, and
    // within what one batch may take.
    let r = request(served.addr, batch_of(40).as_bytes());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The store drains the backlog and goes back to idle-class passes.
    let passes = common::metric(&served.metrics(), STORE_IDLE);
    wait_above(&served, STORE_IDLE, passes);
    let page = served.metrics();
    assert_eq!(
        common::metric(&page, "trackplane_events_refused_total"),
        0.0
    );
    assert_eq!(
        common::metric(&page, "trackplane_ring_used_bytes{stream=\"0\"}"),
        0.0
    );

    stop(&mut served);
    assert_eq!(common::records(&dir.path().join("data")).len(), 40);
}

/// A loop on core 0 at normal priority, until dropped (or 60 s).
struct Hog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hog {
    fn on_core_0() -> Hog {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            pin_to_core_0();
            let end = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                std::hint::spin_loop();
            }
        });
        Hog {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(unsafe_code)]
fn pin_to_core_0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// Other work keeping the server's core busy (a loop pinned to it, at
/// normal priority) leaves an idle-class pass next to no time. What was
/// answered must still reach the store within about the flush interval,
/// not wait in the ring until it fills to a quarter: a worker lifts a
/// pass that has been idle-class too long.
#[test]
fn on_a_core_other_work_keeps_busy_idle_passes_still_store_what_was_answered() {
    // A ring of 8 MiB, whose quarter the events below stay well under.
    let Some((_one, dir, mut served)) = start(WayBack::Capability, 8 << 20) else {
        return;
    };
    served.wait_log("background=\"idle\"", 0);
    wait_above(&served, STORE_IDLE, 0.0);
    let written = "trackplane_store_records_total";
    let lifts = "trackplane_background_lifts_total{thread=\"store\"}";
    let page = served.metrics();
    let (written_before, lifts_before) =
        (common::metric(&page, written), common::metric(&page, lifts));
    let hog = Hog::on_core_0();
    std::thread::sleep(Duration::from_millis(200));
    // 1,000 events of about 500 bytes in five batches.
    let raw = batch_of(200);
    for _ in 0..5 {
        let r = request(served.addr, raw.as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let answered = Instant::now();
    let took = loop {
        let n = common::metric(&served.metrics(), written) - written_before;
        if n >= 1000.0 || answered.elapsed() > Duration::from_secs(30) {
            break answered.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(hog);
    let lifted = common::metric(&served.metrics(), lifts) - lifts_before;
    eprintln!("written to segments {took:?} after the last answer; {lifted} lifts");
    // How it got there. No ring came near a quarter, so a pass that left
    // what was answered unstored for two flush intervals (50 ms each) was
    // starved, and only a lift can have ended that: without the lift the
    // time above ranged from 55 ms to 1.8 s in six runs. A pass the kernel
    // happened to give its moment sooner needed none.
    assert!(
        lifted > 0.0 || took < Duration::from_millis(100),
        "answered events waited {took:?} for a starved idle-class pass of the store, and none was lifted"
    );
    // The bound leaves room for a loaded machine.
    assert!(
        took < Duration::from_secs(4),
        "answered events reached segments only {took:?} later"
    );
    stop(&mut served);
    assert_eq!(common::records(&dir.path().join("data")).len(), 1000);
}

#[test]
fn without_a_way_back_no_pass_runs_idle() {
    let Some((_one, _dir, mut served)) = start(WayBack::Neither, 65536) else {
        return;
    };
    served.wait_log("needs CAP_SYS_NICE or RLIMIT_NICE", 0);
    served.wait_log("background=\"normal\"", 0);
    // Give the thread a few passes in which they could have gone idle.
    std::thread::sleep(Duration::from_millis(200));
    let page = served.metrics();
    assert_eq!(common::metric(&page, STORE_IDLE), 0.0);
    assert_eq!(reloader_policy(&served, libc::SCHED_IDLE), libc::SCHED_IDLE);
    stop(&mut served);
}

/// The scheduling policy of the server's catalog reloader, once it is
/// `want` or after 5 s.
fn reloader_policy(served: &Served, want: i32) -> i32 {
    let tasks = format!("/proc/{}/task", served.child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Field 41 of a thread's stat is its policy; fields from the third
        // follow the name's closing parenthesis.
        let policy = std::fs::read_dir(&tasks)
            .unwrap()
            .map(|t| t.unwrap().path())
            .find(|t| {
                std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "trackplane-cata")
            })
            .and_then(|t| std::fs::read_to_string(t.join("stat")).ok())
            .and_then(|stat| {
                let after = &stat[stat.rfind(')')? + 1..];
                after.split_whitespace().nth(41 - 3)?.parse().ok()
            })
            .unwrap_or(-1);
        if policy == want || Instant::now() > deadline {
            return policy;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_catalog_reloader_runs_in_the_configured_class() {
    // Its fork must not inherit another test's binary copy open for
    // writing.
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for (class, policy) in [("idle", libc::SCHED_IDLE), ("normal", libc::SCHED_OTHER)] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("trackplane.toml");
        std::fs::write(
            &config,
            format!("[server]\nbackground_class = \"{class}\"\n"),
        )
        .unwrap();
        let data = dir.path().join("data");
        let mut served = common::process::serve(
            &data,
            &["--config", config.to_str().unwrap(), "--workers", "1"],
            &[],
        );
        // The normal class is where it starts, so give it the time it
        // would take to leave.
        if class == "normal" {
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(reloader_policy(&served, policy), policy, "{class}");
        stop(&mut served);
    }
}

#[test]
fn with_the_units_nice_limit_passes_run_idle() {
    if !can_raise_nice_limit() {
        eprintln!("skipped: this root may not raise RLIMIT_NICE (no CAP_SYS_RESOURCE); the capability test covers the lift");
        return;
    }
    let Some((_one, _dir, mut served)) = start(WayBack::NiceLimit, 65536) else {
        return;
    };
    served.wait_log("background=\"idle\"", 0);
    wait_above(&served, STORE_IDLE, 0.0);
    stop(&mut served);
}
