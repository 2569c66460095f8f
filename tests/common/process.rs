//! The real `trackplane serve` binary as a child process: started on
//! loopback with port 0, its data address read from its start-up log line,
//! its log kept for assertions (and errors echoed), killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Served {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin port's address.
    pub admin: SocketAddr,
    /// Every log line so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Starts `trackplane serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
/// --data-dir DIR` plus `args`, with `env`.
pub fn serve(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
    serve_via(&[env!("CARGO_BIN_EXE_trackplane")], data_dir, args, env)
}

/// As `serve`, with `command` (a program and its leading arguments, ending
/// with the trackplane binary) in place of the built binary: run through
/// `prlimit` or `setpriv`, say.
pub fn serve_via(command: &[&str], data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut c = Command::new(command[0]);
    c.args(&command[1..]);
    serve_command(c, data_dir, args, env)
}

/// As `serve`, from a `command` already made (its program the trackplane
/// binary, or a wrapper ending with it): one set up before it runs, say.
pub fn serve_command(
    mut command: Command,
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Served {
    serving_args(&mut command, data_dir, args);
    run(command, env)
}

/// Runs `command` as it is (a server that reads its ports from a file, or
/// the embedded default's), with `env`, until its start-up log line.
pub fn run(mut command: Command, env: &[(&str, &str)]) -> Served {
    let mut child = command
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ERROR") {
                    eprintln!("server: {line}");
                }
                let word = |key: &str| {
                    line.split(key)
                        .nth(1)
                        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
                };
                if let (Some(data), Some(admin)) = (word(" listen="), word(" admin=")) {
                    let _ = tx.send((data, admin));
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    let (addr, admin) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server did not start");
    Served {
        child,
        addr: addr.parse().unwrap(),
        admin: admin.parse().unwrap(),
        log,
    }
}

/// `command` with `serve`'s arguments here: loopback, port 0 for both
/// ports, `data_dir`, then `args`.
pub fn serving_args<'a>(
    command: &'a mut Command,
    data_dir: &Path,
    args: &[&str],
) -> &'a mut Command {
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
}

/// The value of `key=value` in a log line, parsed.
pub fn log_field<T: std::str::FromStr>(line: &str, key: &str) -> T {
    line.split(&format!("{key}="))
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

impl Served {
    /// Waits for a log line containing `needle` among the lines after
    /// the first `from`.
    pub fn wait_log(&self, needle: &str, from: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.log.lock().unwrap()[from..]
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin port's metrics page.
    pub fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let page = super::read_responses(&mut s, 1).remove(0);
        String::from_utf8_lossy(&page.body).into_owned()
    }

    /// Lines logged so far.
    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Sends a signal by name (`-TERM`, `-HUP`).
    pub fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
