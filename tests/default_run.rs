//! The README's run command as a newcomer types it: the binary with no
//! argument and no file, in an empty directory, serves on 127.0.0.1:8080
//! with its admin port on 127.0.0.1:9100, answers the README's pixel and
//! click, writes under `./data`, and `trackplane tail` there prints what
//! it answered. The only test on fixed ports: the README names them.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

fn get(addr: SocketAddr, target: &str) -> common::Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    common::read_responses(&mut s, 1).remove(0)
}

#[test]
fn with_no_argument_it_serves_on_the_readme_ports_and_writes_under_data() {
    for port in [8080, 9100] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "127.0.0.1:{port} is in use; this test runs the README's command, which listens there"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_trackplane"));
    command.current_dir(dir.path());
    let mut server = common::process::run(command, &[]);
    assert_eq!(server.addr, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(server.admin, "127.0.0.1:9100".parse().unwrap());

    let pixel = get(server.addr, "/i?adv=demo&pid=sku-1");
    assert_eq!(pixel.status, 200);
    assert_eq!(pixel.body.len(), 43);
    let click = get(
        server.addr,
        "/c?adv=demo&url=https%3A%2F%2Fexample.com%2Fsale",
    );
    assert_eq!(click.status, 302);
    assert_eq!(click.header("location"), Some("https://example.com/sale"));
    assert_eq!(get(server.admin, "/healthz").status, 200);

    server.signal("-TERM");
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}");

    assert!(dir.path().join("data/segments").is_dir());
    let out = Command::new(env!("CARGO_BIN_EXE_trackplane"))
        .arg("tail")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut types: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(types, ["click", "impression"]);
    assert!(records.iter().all(|r| r["advertiser"] == "demo"));
}
