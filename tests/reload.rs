//! SIGHUP (systemctl reload) on the real binary: new advertisers, event
//! types and catalogs take effect at once; an invalid file is rejected with
//! its reason and the running rules stay; listener changes are reported as
//! needing a restart.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use std::time::Duration;

fn pixel(addr: SocketAddr, query: &str) -> u16 {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(format!("GET /i?{query} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    common::read_responses(&mut c, 1)[0].status
}

/// Writes `body` as the config file, sends SIGHUP, and returns the first
/// log line after it that contains `needle`.
fn reload(
    server: &common::process::Served,
    config: &std::path::Path,
    body: &str,
    needle: &str,
) -> String {
    std::fs::write(config, body).unwrap();
    let mark = server.log_len();
    server.signal("-HUP");
    server.wait_log(needle, mark)
}

#[test]
fn sighup_reloads_rules_and_catalogs_and_rejects_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("trackplane.toml");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("catalogs")).unwrap();
    // Pixels answered before their audit (`server.audit_batch`) are
    // audited under the rules they came under, not the reloaded ones.
    let base =
        "node_id = \"t1\"\n[catalogs]\nreload_interval_ms = 60000\n[server]\naudit_batch = 16\n";
    std::fs::write(&config, format!("{base}[advertisers.demo]\n")).unwrap();
    std::os::unix::fs::symlink(data.join("nowhere"), data.join("catalogs/early.txt")).unwrap();
    let mut server = common::process::serve(
        &data,
        &["--workers", "1", "--config", config.to_str().unwrap()],
        &[],
    );
    let addr = server.addr;
    let early = server.wait_log("catalog file unreadable", 0);
    assert!(early.contains("catalogs/early.txt"), "{early}");

    // Before: shop is unknown.
    assert_eq!(pixel(addr, "adv=shop&pid=p1&n=before"), 200);

    // A new advertiser and its catalog, picked up at once by SIGHUP (the
    // catalog poll interval is a minute). A catalog that cannot be read
    // beside it is named in the log and keeps nothing else from loading.
    std::fs::write(data.join("catalogs/shop.txt"), "p1\n").unwrap();
    std::os::unix::fs::symlink(data.join("nowhere"), data.join("catalogs/broken.txt")).unwrap();
    let mark = server.log_len();
    reload(
        &server,
        &config,
        &format!("{base}[advertisers.shop]\nredirect_hosts = [\"shop.com\"]\n"),
        "configuration reloaded",
    );
    let loaded = server.wait_log("catalogs reloaded", mark);
    assert!(loaded.contains("shop"), "{loaded}");
    // Said once: the file already named at the start is not named again.
    let unreadable = server.wait_log("catalog file unreadable", mark);
    assert!(unreadable.contains("catalogs/broken.txt"), "{unreadable}");
    let said = server.log.lock().unwrap()[mark..]
        .iter()
        .filter(|l| l.contains("early.txt"))
        .count();
    assert_eq!(said, 0);
    assert_eq!(pixel(addr, "adv=shop&pid=p1&n=after"), 200);

    // An invalid file: rejected, reason logged, the running rules stay.
    let rejected = reload(
        &server,
        &config,
        &format!("{base}max_body_bytez = 1\n[advertisers.shop]\n"),
        "reload rejected",
    );
    assert!(rejected.contains("server.max_body_bytez"), "{rejected}");
    assert_eq!(pixel(addr, "adv=shop&pid=p1&n=still"), 200);

    // A server setting is reported as waiting for a restart, not applied.
    // (Command-line overrides are applied again on every reload.)
    let pending = reload(
        &server,
        &config,
        &format!("{base}max_body_bytes = 2048\n[advertisers.shop]\n"),
        "next restart",
    );
    assert!(pending.contains("server"), "{pending}");
    assert_eq!(pixel(addr, "adv=shop&pid=p1&n=last"), 200);

    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).success());
    let records = common::records(&data);
    let by_n = |n: &str| {
        records
            .iter()
            .find(|r| r["params"]["n"] == n)
            .unwrap_or_else(|| panic!("no record {n}"))
            .clone()
    };
    assert_eq!(by_n("before")["issues"][0]["code"], "unknown_advertiser");
    for n in ["after", "still", "last"] {
        assert_eq!(by_n(n)["status"], "ok", "{n}: {}", by_n(n));
    }
}
