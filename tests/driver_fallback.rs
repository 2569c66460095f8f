//! A kernel that refuses io_uring: a container under a seccomp profile
//! that blocks it (Docker's default does), `kernel.io_uring_disabled`, or
//! a kernel built without it. The default driver falls back to epoll,
//! says why, and serves; `--driver uring` refuses to start and says why.
//! The refusal is real: a seccomp filter on the server's process alone
//! fails its io_uring system calls.

mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// `command`, with a seccomp filter installed in the child before it runs
/// the binary: `io_uring_setup`, `io_uring_enter` and
/// `io_uring_register` fail with `errno`, every other call is allowed.
/// (Their numbers, 425-427, are the same on every architecture.)
fn refusing_io_uring(mut command: Command, errno: i32) -> Command {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf: 0,
        k,
    };
    let mut filter = vec![
        // The system call's number, at offset 0 of `seccomp_data`.
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jeq(425, 3),
        jeq(426, 2),
        jeq(427, 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | errno as u32,
        ),
    ];
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec and makes
    // two prctl(2) calls, which are async-signal-safe; the program they
    // read is the child's copy of `filter`, alive until exec.
    unsafe {
        command.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_mut_ptr(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// EPERM is what a seccomp profile and `kernel.io_uring_disabled` answer;
/// ENOSYS what a kernel without io_uring does.
const REFUSALS: [(i32, &str); 2] = [
    (libc::EPERM, "Operation not permitted"),
    (libc::ENOSYS, "Function not implemented"),
];

#[test]
fn the_default_driver_falls_back_to_epoll_says_why_and_serves() {
    for (errno, words) in REFUSALS {
        let dir = tempfile::tempdir().unwrap();
        let command = refusing_io_uring(Command::new(env!("CARGO_BIN_EXE_trackplane")), errno);
        let mut served =
            common::process::serve_command(command, dir.path(), &["--workers", "2"], &[]);
        let started = served.wait_log("trackplane serving", 0);
        assert!(started.contains("driver=\"epoll\""), "{errno}: {started}");
        let why = served.wait_log("io_uring unavailable", 0);
        assert!(why.contains(words), "{errno}: {why}");

        let mut s = std::net::TcpStream::connect(served.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /i?adv=demo&pid=p1 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let answer = common::read_responses(&mut s, 1).remove(0);
        let metrics = served.metrics();
        let workers = |driver: &str| {
            common::metric(
                &metrics,
                &format!("trackplane_workers{{driver=\"{driver}\"}}"),
            )
        };
        assert_eq!(
            (workers("epoll"), workers("io_uring")),
            (2.0, 0.0),
            "{errno}"
        );
        assert_eq!(answer.status, 200, "{errno}");
        assert_eq!(answer.body.len(), 43, "{errno}");
        drop(s);

        served.signal("-TERM");
        let status = served.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "{errno}: {status}");
        let records = common::records(dir.path());
        assert_eq!(records.len(), 1, "{errno}: {records:?}");
        assert_eq!(records[0]["products"], serde_json::json!(["p1"]), "{errno}");
    }
}

#[test]
fn a_forced_io_uring_driver_refuses_to_start_and_says_why() {
    for (errno, words) in REFUSALS {
        let dir = tempfile::tempdir().unwrap();
        let mut command = refusing_io_uring(Command::new(env!("CARGO_BIN_EXE_trackplane")), errno);
        let out = common::process::serving_args(&mut command, dir.path(), &["--driver", "uring"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{errno}: {err}");
        assert!(
            err.contains("cannot start the io_uring runtime"),
            "{errno}: {err}"
        );
        assert!(err.contains(words), "{errno}: {err}");
        assert!(!err.contains("trackplane serving"), "{errno}: {err}");
    }
}
