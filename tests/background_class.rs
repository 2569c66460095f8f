//! The store and view threads' scheduling class, with the real binary run
//! as the systemd unit runs it: an unprivileged user (prlimit and setpriv
//! stand in for systemd), the whole process on one core. With a way back
//! from SCHED_IDLE (CAP_SYS_NICE, or the unit's `LimitNICE=20`) the
//! threads' passes run idle-class, and a batch that fills the ring past a
//! quarter is all stored, nothing refused. With neither, the server says
//! so and no pass runs idle-class. (`sched`'s own tests cover the lift.)
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
const VIEW_IDLE: &str = "trackplane_background_idle_passes_total{thread=\"view\"}";

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

/// The binary, a config with a 64 KiB ring and the idle class, and a data dir, all usable by
/// user nobody; then the server started as nobody, on core 0, with `way`.
fn serve_as_nobody(dir: &Path, way: WayBack) -> Served {
    let bin = dir.join("trackplane");
    std::fs::copy(env!("CARGO_BIN_EXE_trackplane"), &bin).unwrap();
    let config = dir.join("trackplane.toml");
    std::fs::write(
        &config,
        "[server]\nring_bytes = 65536\nbackground_class = \"idle\"\n",
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
    let served = serve_as_nobody(dir.path(), way);
    Some((one, dir, served))
}

fn stop(served: &mut Served) {
    served.signal("-TERM");
    assert!(served.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn with_cap_sys_nice_passes_run_idle_and_a_ring_past_a_quarter_is_all_stored() {
    let Some((_one, dir, mut served)) = start(WayBack::Capability) else {
        return;
    };
    served.wait_log("background=\"idle\"", 0);
    wait_above(&served, STORE_IDLE, 0.0);
    wait_above(&served, VIEW_IDLE, 0.0);

    // 40 events of about 500 bytes: past a quarter of the 64 KiB ring, and
    // within what one batch may take.
    let item = format!(
        r#"{{"adv":"demo","ev":"page_view","note":"{}"}}"#,
        "x".repeat(300)
    );
    let body = format!("[{}]", vec![item.as_str(); 40].join(","));
    let raw = format!(
        "POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = request(served.addr, raw.as_bytes());
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

#[test]
fn without_a_way_back_no_pass_runs_idle() {
    let Some((_one, _dir, mut served)) = start(WayBack::Neither) else {
        return;
    };
    served.wait_log("needs CAP_SYS_NICE or RLIMIT_NICE", 0);
    served.wait_log("background=\"normal\"", 0);
    // Give both threads a few passes in which they could have gone idle.
    std::thread::sleep(Duration::from_millis(200));
    let page = served.metrics();
    assert_eq!(common::metric(&page, STORE_IDLE), 0.0);
    assert_eq!(common::metric(&page, VIEW_IDLE), 0.0);
    stop(&mut served);
}

#[test]
fn with_the_units_nice_limit_passes_run_idle() {
    if !can_raise_nice_limit() {
        eprintln!("skipped: this root may not raise RLIMIT_NICE (no CAP_SYS_RESOURCE); the capability test covers the lift");
        return;
    }
    let Some((_one, _dir, mut served)) = start(WayBack::NiceLimit) else {
        return;
    };
    served.wait_log("background=\"idle\"", 0);
    wait_above(&served, STORE_IDLE, 0.0);
    wait_above(&served, VIEW_IDLE, 0.0);
    stop(&mut served);
}
