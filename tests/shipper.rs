//! The shipper against a real Kafka-protocol broker (tansu on loopback):
//! every event arrives exactly once after dedupe by id with its bytes
//! unchanged, through kill -9 of the shipper and a broker outage;
//! watermarks reach every partition, never go back, and never pass an
//! event a server still holds while its segment writes fail; a record
//! Kafka refuses is kept in the dead-letter file; a producer that failed
//! for good is replaced; retention deletes only shipped segments.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::kafka::{consume, free_port, Broker, Msg, Proxy};
use common::{limit_file_size, wait_for};
use trackplane::config::{Config, Driver};
use trackplane::segment::{list, SegmentReader};
use trackplane::shipper::{Shipper, ShipperMetrics};

const TOPICS: &str = "[shipper]\nwatermark_interval_ms = 200\ncheckpoint_interval_ms = 100\n[shipper.topics]\npurchase = \"trackplane.purchases\"\n";

/// A shipper config; `shipper_keys` go into `[shipper]`.
fn config(data_dir: &Path, brokers: &str, shipper_keys: &str) -> Config {
    let topics = TOPICS.replacen("[shipper]\n", &format!("[shipper]\n{shipper_keys}"), 1);
    let text = format!(
        "node_id = \"t1\"\ndata_dir = \"{}\"\n{topics}",
        data_dir.display()
    );
    let mut c = Config::from_toml_str(&text, "test").unwrap();
    c.shipper.brokers = brokers.to_owned();
    c
}

/// A shipper running in this process until dropped.
struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<ShipperMetrics>,
}

fn ship(config: Config) -> Running {
    run(Shipper::new(config).unwrap())
}

fn run(mut shipper: Shipper) -> Running {
    let metrics = shipper.metrics.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || shipper.run(&s));
    Running {
        stop,
        thread: Some(thread),
        metrics,
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every record on disk: id -> raw bytes.
fn on_disk(data_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for seg in list(&data_dir.join("segments")).unwrap() {
        let mut r = SegmentReader::open(&seg.path).unwrap();
        while let Some(b) = r.next_block().unwrap() {
            for (_, rec) in b.records() {
                let v: serde_json::Value = serde_json::from_slice(rec).unwrap();
                out.insert(v["id"].as_str().unwrap().to_owned(), rec.to_vec());
            }
        }
    }
    out
}

/// The receive time of the newest of `records`.
fn newest(records: &BTreeMap<String, Vec<u8>>) -> u64 {
    records
        .values()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(r).unwrap()["ts_ms"]
                .as_u64()
                .unwrap()
        })
        .max()
        .unwrap()
}

/// Storage that writes many small segments.
const SMALL_SEGMENTS: &str =
    "[storage]\nflush_interval_ms = 5\nblock_max_bytes = 1024\nsegment_max_bytes = 2048\n";

fn id_of(m: &Msg) -> String {
    let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

/// Consumes until every id in `want` arrived; returns the event messages
/// and the watermark messages.
fn read_back(
    bootstrap: &str,
    want: &BTreeMap<String, Vec<u8>>,
    limit: Duration,
) -> (Vec<Msg>, Vec<Msg>) {
    let all = consume(
        bootstrap,
        &[("trackplane.events", 3), ("trackplane.purchases", 3)],
        limit,
        |msgs| {
            let got: HashSet<String> = msgs
                .iter()
                .filter(|m| !m.is_watermark())
                .map(id_of)
                .collect();
            let marked: HashSet<(&str, i32)> = msgs
                .iter()
                .filter(|m| m.is_watermark())
                .map(|m| (m.topic.as_str(), m.partition))
                .collect();
            want.keys().all(|id| got.contains(id)) && marked.len() == 6
        },
    );
    all.into_iter().partition(|m| !m.is_watermark())
}

/// Checks exactly-once after dedupe by id, unchanged bytes, keys, headers
/// and topics. Returns the number of duplicates.
fn check_delivery(events: &[Msg], want: &BTreeMap<String, Vec<u8>>) -> usize {
    let mut seen: HashMap<String, &Msg> = HashMap::new();
    let mut duplicates = 0;
    for m in events {
        let id = id_of(m);
        let original = want
            .get(&id)
            .unwrap_or_else(|| panic!("message {id} is not on disk"));
        assert_eq!(&m.value, original, "{id}: bytes changed on the way");
        let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
        assert_eq!(
            m.key,
            v["advertiser"].as_str().unwrap().as_bytes(),
            "{id}: keyed by advertiser"
        );
        assert_eq!(
            m.header("trackplane-type"),
            Some(v["type"].as_str().unwrap().as_bytes())
        );
        assert_eq!(m.header("trackplane-node"), Some(&b"t1"[..]));
        assert_eq!(m.header("trackplane-format"), Some(&b"1"[..]));
        let want_topic = if v["type"] == "purchase" {
            "trackplane.purchases"
        } else {
            "trackplane.events"
        };
        assert_eq!(m.topic, want_topic, "{id}");
        if seen.insert(id, m).is_some() {
            duplicates += 1;
        }
    }
    let missing: Vec<&String> = want.keys().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} events never arrived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    duplicates
}

fn send_events(s: &common::TestServer, from: usize, n: usize) {
    for i in from..from + n {
        let target = if i % 5 == 0 {
            format!("/e?adv=demo&ev=purchase&order_id=o{i}&value=1.5&currency=EUR&pid=p{i}&n={i}")
        } else {
            format!("/i?adv=demo&n={i}")
        };
        assert!(s.get(&target).status < 300);
    }
}

/// A stopped server's data dir with `n` events written by `workers`
/// workers, and every record on it.
fn written(workers: usize, n: usize) -> (common::TestServer, BTreeMap<String, Vec<u8>>) {
    let mut s = common::start(Driver::Epoll, &format!("[server]\nworkers = {workers}\n"));
    send_events(&s, 0, n);
    s.stop();
    let want = on_disk(s.dir.path());
    assert_eq!(want.len(), n);
    (s, want)
}

fn broker_with_topics(advertise: Option<u16>) -> Broker {
    let b = Broker::start_advertising(advertise);
    b.create_topic("trackplane.events", 3);
    b.create_topic("trackplane.purchases", 3);
    b
}

#[test]
fn every_event_arrives_once_unchanged_with_watermarks_everywhere() {
    let broker = broker_with_topics(None);
    let (s, want) = written(2, 300);
    let shipper = ship(config(s.dir.path(), &broker.bootstrap(), ""));
    wait_for("acks", Duration::from_secs(30), || {
        shipper.metrics.acked.load(Ordering::Relaxed) >= 300
    });
    std::thread::sleep(Duration::from_millis(800)); // a few watermark rounds
    let (events, watermarks) = read_back(&broker.bootstrap(), &want, Duration::from_secs(30));
    let dups = check_delivery(&events, &want);
    assert_eq!(dups, 0, "no duplicates without failures");
    // Watermarks: on every partition of both topics, monotonic per
    // (topic, partition, stream) in offset order.
    let mut per: BTreeMap<(String, i32, u64), Vec<(i64, u64)>> = BTreeMap::new();
    for w in &watermarks {
        let v: serde_json::Value = serde_json::from_slice(&w.value).unwrap();
        assert_eq!(v["node"], "t1");
        per.entry((w.topic.clone(), w.partition, v["stream"].as_u64().unwrap()))
            .or_default()
            .push((w.offset, v["event_time_ms"].as_u64().unwrap()));
    }
    for topic in ["trackplane.events", "trackplane.purchases"] {
        for p in 0..3 {
            assert!(
                per.keys().any(|(t, q, _)| t == topic && *q == p),
                "no watermark on {topic}/{p}"
            );
        }
    }
    let newest_event = newest(&want);
    for (key, mut marks) in per {
        marks.sort();
        assert!(
            marks.windows(2).all(|w| w[0].1 <= w[1].1),
            "watermark went back on {key:?}"
        );
        // The stream is fully shipped and idle: its watermark passed every event.
        assert!(
            marks.last().unwrap().1 >= newest_event,
            "{key:?} stuck below the last event"
        );
    }
    drop(shipper);
    // Checkpoints point past everything.
    for stream in [0, 1] {
        if let Some(p) = trackplane::shipper::checkpoint::load(s.dir.path(), stream).unwrap() {
            assert!(p.next_seq > 0);
        }
    }
}

/// Pixels to a server running as its own process, pipelined in one write
/// on one connection (so that they reach its worker together): their
/// answers' statuses.
fn pixels(addr: std::net::SocketAddr, names: &[String]) -> Vec<u16> {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let reqs: String = names
        .iter()
        .map(|n| format!("GET /i?adv=demo&n={n} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    std::io::Write::write_all(&mut c, reqs.as_bytes()).unwrap();
    common::read_responses(&mut c, names.len())
        .iter()
        .map(|r| r.status)
        .collect()
}

/// While its server cannot write segments (here a file-size limit on the
/// server's process, as a full disk), an idle stream's watermark stops
/// below the events the server accepted and holds in memory. They reach
/// Kafka once writes work again, with the time they were received, and
/// no watermark before them in their partition is past that time: a
/// consumer would have dropped them as late.
#[test]
fn watermarks_wait_for_events_a_server_holds_while_its_writes_fail() {
    let broker = broker_with_topics(None);
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::serve(dir.path(), &["--workers", "1"], &[]);
    let shipper = ship(config(dir.path(), &broker.bootstrap(), ""));
    let before: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    assert_eq!(pixels(server.addr, &before), [200; 10]);
    wait_for("the first acks", Duration::from_secs(30), || {
        shipper.metrics.acked.load(Ordering::Relaxed) >= 10
    });
    let open = list(&dir.path().join("segments"))
        .unwrap()
        .into_iter()
        .find(|s| s.open)
        .unwrap();
    let size = std::fs::metadata(&open.path).unwrap().len();
    limit_file_size(Some(server.child.id()), Some(size + 10));
    // Taken in one go: once a write fails (at the next flush, 50 ms on),
    // new events are refused, so pixels sent one by one on a loaded
    // machine could straddle it (and did, in CI).
    let held: Vec<String> = (0..5).map(|i| format!("held-{i}")).collect();
    assert_eq!(pixels(server.addr, &held), [200; 5]);
    wait_for(
        "the server's writes to fail",
        Duration::from_secs(10),
        || common::metric(&server.metrics(), "trackplane_store_failing") == 1.0,
    );
    assert_eq!(
        common::metric(&server.metrics(), "trackplane_events_refused_total"),
        0.0,
        "a held pixel came after the write failed, and was refused"
    );
    // Watermarks every 200 ms: by the wall clock alone they would pass the
    // held events after the flush window and a second.
    std::thread::sleep(Duration::from_millis(2500));
    limit_file_size(Some(server.child.id()), None);
    wait_for("the held events' acks", Duration::from_secs(30), || {
        shipper.metrics.acked.load(Ordering::Relaxed) >= 15
    });
    std::thread::sleep(Duration::from_millis(600)); // watermarks after them
    let want = on_disk(dir.path());
    assert_eq!(want.len(), 15);
    let (events, watermarks) = read_back(&broker.bootstrap(), &want, Duration::from_secs(30));
    assert_eq!(check_delivery(&events, &want), 0);
    let mut all: Vec<&common::kafka::Msg> = events.iter().chain(&watermarks).collect();
    all.sort_by_key(|m| (m.topic.clone(), m.partition, m.offset));
    // Per partition, in offset order: the highest watermark so far of
    // each stream, and every event at or past it.
    let mut highest: HashMap<(String, i32, u64), u64> = HashMap::new();
    let mut held_seen = 0;
    for m in all {
        let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
        if m.is_watermark() {
            let key = (m.topic.clone(), m.partition, v["stream"].as_u64().unwrap());
            let wm = v["event_time_ms"].as_u64().unwrap();
            let e = highest.entry(key).or_default();
            *e = (*e).max(wm);
            continue;
        }
        let id = v["id"].as_str().unwrap();
        let stream: u64 = id.rsplit('-').nth(1).unwrap().parse().unwrap();
        let ts = v["ts_ms"].as_u64().unwrap();
        let wm = highest
            .get(&(m.topic.clone(), m.partition, stream))
            .copied()
            .unwrap_or(0);
        assert!(
            ts >= wm,
            "{id} (received at {ts}) arrived after a watermark of {wm}, {} ms past it",
            wm - ts
        );
        held_seen += usize::from(v["params"]["n"].as_str().unwrap().starts_with("held-"));
    }
    assert_eq!(held_seen, 5);
}

/// Records gone from disk before they were shipped (sealed segments that
/// the server's `drop_oldest` policy deleted through a long Kafka outage,
/// or a file that recovery quarantined) leave a gap in a stream's
/// sequence. The shipper goes on past it: its checkpoint and watermark
/// move beyond the gap instead of waiting for records that never come.
#[test]
fn a_deleted_segment_is_passed_over() {
    passes_over_a_spoiled_segment(|path| std::fs::remove_file(path).unwrap());
}

/// A sealed segment with a corrupt block (a bit flipped on disk) is read
/// up to that block, and the shipper goes on with the next segment, as
/// `trackplane tail` does; it used to retry that block forever, with the
/// stream's shipping stopped behind it.
#[test]
fn a_corrupt_sealed_segment_is_passed_over() {
    passes_over_a_spoiled_segment(|path| {
        let mut bytes = std::fs::read(path).unwrap();
        // Past the segment header (128 bytes) and the first block's (48):
        // a byte of its zstd frame, which its CRC covers.
        bytes[128 + 48 + 8] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
    });
}

/// A record Kafka will never take (here larger than the producer's
/// `message.max.bytes`) goes to the dead-letter file, but counts as handled
/// only once that file holds it. While the file cannot be written (a link
/// to /dev/full, where every write fails with ENOSPC, as on a full disk)
/// the stream waits at the record, its checkpoint below it; the shipper
/// used to pass it, and its only copy went with its segment at retention.
#[test]
fn a_refused_record_waits_for_the_dead_letter_file() {
    let broker = broker_with_topics(None);
    let mut s = common::start(Driver::Epoll, "[server]\nworkers = 1\n");
    send_events(&s, 0, 10);
    let pad = "x".repeat(3000);
    assert_eq!(s.get(&format!("/i?adv=demo&n=big&pad={pad}")).status, 200);
    send_events(&s, 11, 10);
    s.stop();
    let mut want = on_disk(s.dir.path());
    assert_eq!(want.len(), 21);
    let big = want
        .iter()
        .find(|(_, r)| r.len() > 3000)
        .map(|(id, _)| id.clone())
        .unwrap();
    assert!(big.ends_with("-10"), "{big}");
    want.remove(&big);

    let dead = s.dir.path().join("shipper/dead-letter.jsonl");
    std::fs::create_dir_all(dead.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/dev/full", &dead).unwrap();
    let mut c = config(s.dir.path(), &broker.bootstrap(), "");
    c.shipper
        .kafka
        .insert("message.max.bytes".into(), "2000".into());
    let shipper = ship(c);
    let m = shipper.metrics.clone();
    wait_for("failed dead-letter writes", Duration::from_secs(30), || {
        m.dead_letter_errors.load(Ordering::Relaxed) >= 2
    });
    let checkpoint = || {
        trackplane::shipper::checkpoint::load(s.dir.path(), 0)
            .unwrap()
            .map(|p| p.next_seq)
    };
    wait_for(
        "the checkpoint at the record",
        Duration::from_secs(10),
        || checkpoint() == Some(10),
    );
    assert_eq!(m.dead_letters.load(Ordering::Relaxed), 0);
    assert_eq!(
        m.acked.load(Ordering::Relaxed),
        10,
        "nothing after it shipped"
    );

    std::fs::remove_file(&dead).unwrap();
    wait_for(
        "the checkpoint past the record",
        Duration::from_secs(60),
        || checkpoint() == Some(21),
    );
    assert_eq!(m.dead_letters.load(Ordering::Relaxed), 1);
    let text = std::fs::read_to_string(&dead).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["record"]["id"].as_str(), Some(big.as_str()));
    assert_eq!(lines[0]["seq"].as_u64(), Some(10));
    let (events, _) = read_back(&broker.bootstrap(), &want, Duration::from_secs(30));
    assert_eq!(check_delivery(&events, &want), 0);
    drop(shipper);
}

/// An idempotent producer fails for good when it can no longer keep its
/// ordering promise (a broker lost messages it had acknowledged), and
/// every message fails from then on. The shipper starts a new producer
/// and goes on from the last contiguous acknowledgement; it used to retry
/// for ever, shipping nothing until someone restarted it.
#[test]
fn a_producer_that_fails_for_good_is_replaced() {
    let broker = broker_with_topics(None);
    let (s, want) = written(1, 50);
    let shipper = Shipper::new(config(s.dir.path(), &broker.bootstrap(), "")).unwrap();
    shipper.fail_producer_for_tests();
    let shipper = run(shipper);
    let m = shipper.metrics.clone();
    wait_for("acks", Duration::from_secs(30), || {
        m.acked.load(Ordering::Relaxed) >= 50
    });
    assert_eq!(m.producer_restarts.load(Ordering::Relaxed), 1);
    let (events, _) = read_back(&broker.bootstrap(), &want, Duration::from_secs(30));
    assert_eq!(check_delivery(&events, &want), 0);
    drop(shipper);
}

/// A producer that failed for good and cannot be started again at once
/// (here its TLS CA file is gone, as in a botched rotation) is tried again
/// after 1 s, then 2, 4..., not at every pass of the loop, and starts once
/// it can. No broker is needed: creating a producer reads the CA file.
#[test]
fn a_producer_that_cannot_be_restarted_is_tried_again_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test-ca.pem");
    std::fs::copy(&fixture, &ca).unwrap();
    let mut cfg = config(dir.path(), &format!("127.0.0.1:{}", free_port()), "");
    cfg.shipper
        .kafka
        .insert("security.protocol".into(), "ssl".into());
    cfg.shipper
        .kafka
        .insert("ssl.ca.location".into(), ca.display().to_string());
    let shipper = Shipper::new(cfg).unwrap();
    std::fs::remove_file(&ca).unwrap();
    shipper.fail_producer_for_tests();
    let shipper = run(shipper);
    let m = shipper.metrics.clone();
    let failed = || m.producer_restart_errors.load(Ordering::Relaxed);
    wait_for("a failed restart", Duration::from_secs(10), || {
        failed() >= 1
    });
    // Tries at 0 and 1 s, the next at 3 s.
    std::thread::sleep(Duration::from_millis(2500));
    let tries = failed();
    assert!(
        (1..=2).contains(&tries),
        "{tries} tries to start a producer in 2.5 s"
    );
    assert_eq!(m.producer_restarts.load(Ordering::Relaxed), 0);
    std::fs::copy(&fixture, &ca).unwrap();
    wait_for("the new producer", Duration::from_secs(10), || {
        m.producer_restarts.load(Ordering::Relaxed) == 1
    });
    drop(shipper);
}

/// With no broker answering, the wait for a topic's partitions (for
/// watermarks) does not hold the loop up: a stop is prompt (0.36 s in
/// three runs). It took 6.8 s when each round waited 2 s for each of the
/// two topics.
#[test]
fn a_stop_while_no_broker_answers_is_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("127.0.0.1:{}", free_port()), "");
    let shipper = ship(cfg);
    // Several watermark rounds (every 200 ms), each asking for partitions.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(shipper.metrics.broker_up.load(Ordering::Relaxed), 0);
    let asked = Instant::now();
    drop(shipper);
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "stopped {took:?} after asked"
    );
}

/// The same failure in the middle of shipping, right after the shipper
/// produced: 200 records acknowledged, up to 30 produced and not yet, the
/// rest still to read. The new producer goes on from the last contiguous
/// acknowledgement: nothing is lost, and at most what was in flight
/// arrives twice (the old producer's id, which let the broker drop a
/// resend, went with it).
#[test]
fn a_producer_that_fails_mid_flight_is_replaced_and_loses_nothing() {
    let broker = broker_with_topics(None);
    let (s, want) = written(1, 600);
    let mut shipper = Shipper::new(config(
        s.dir.path(),
        &broker.bootstrap(),
        "max_in_flight = 30\n",
    ))
    .unwrap();
    shipper.fail_producer_once_acked_for_tests(200);
    let shipper = run(shipper);
    let m = shipper.metrics.clone();
    wait_for("the new producer", Duration::from_secs(30), || {
        m.producer_restarts.load(Ordering::Relaxed) == 1
    });
    wait_for("the checkpoint at the end", Duration::from_secs(30), || {
        trackplane::shipper::checkpoint::load(s.dir.path(), 0)
            .unwrap()
            .is_some_and(|p| p.next_seq == 600)
    });
    let (events, _) = read_back(&broker.bootstrap(), &want, Duration::from_secs(30));
    let duplicates = check_delivery(&events, &want);
    eprintln!(
        "{duplicates} arrived twice; {} acknowledgements, {} rewinds, {} delivery errors",
        m.acked.load(Ordering::Relaxed),
        m.retries.load(Ordering::Relaxed),
        m.delivery_errors.load(Ordering::Relaxed)
    );
    assert!(
        m.delivery_errors.load(Ordering::Relaxed) > 0,
        "the failure met no record in flight"
    );
    assert!(duplicates <= 30, "{duplicates} records arrived twice");
    assert_eq!(m.producer_restarts.load(Ordering::Relaxed), 1);
    drop(shipper);
}

/// Ships a stream of many small segments whose second `spoil` makes
/// unreadable from its first block: every other record arrives, the
/// spoiled segment's are counted as missing, and the checkpoint and the
/// watermark pass them.
fn passes_over_a_spoiled_segment(spoil: impl FnOnce(&Path)) {
    let broker = broker_with_topics(None);
    let mut s = common::start(
        Driver::Epoll,
        &format!("[server]\nworkers = 1\n{SMALL_SEGMENTS}"),
    );
    send_events(&s, 0, 300);
    s.stop();
    let segments = list(&s.dir.path().join("segments")).unwrap();
    assert!(segments.len() >= 4, "{segments:?}");
    let (from, to) = (segments[1].base_seq, segments[2].base_seq);
    let want: BTreeMap<String, Vec<u8>> = on_disk(s.dir.path())
        .into_iter()
        .filter(|(id, _)| {
            let seq: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
            seq < from || seq >= to
        })
        .collect();
    assert_eq!(want.len() as u64, 300 - (to - from));
    spoil(&segments[1].path);
    let newest_event = newest(&want);
    let shipper = ship(config(s.dir.path(), &broker.bootstrap(), ""));
    wait_for("acks", Duration::from_secs(30), || {
        shipper.metrics.acked.load(Ordering::Relaxed) >= want.len() as u64
    });
    wait_for(
        "the checkpoint past the gap",
        Duration::from_secs(10),
        || {
            trackplane::shipper::checkpoint::load(s.dir.path(), 0)
                .unwrap()
                .is_some_and(|p| p.next_seq == 300)
        },
    );
    std::thread::sleep(Duration::from_millis(600)); // watermarks after it
    let (events, watermarks) = read_back(&broker.bootstrap(), &want, Duration::from_secs(30));
    assert_eq!(check_delivery(&events, &want), 0);
    let highest = watermarks
        .iter()
        .map(|w| {
            serde_json::from_slice::<serde_json::Value>(&w.value).unwrap()["event_time_ms"]
                .as_u64()
                .unwrap()
        })
        .max()
        .unwrap();
    assert!(
        highest >= newest_event,
        "the watermark stayed below the gap"
    );
    assert_eq!(
        shipper.metrics.missing.load(Ordering::Relaxed),
        to - from,
        "the spoiled segment's records are counted as missing"
    );
    drop(shipper);
}

#[test]
fn kill_9_the_shipper_ten_times_loses_nothing() {
    let broker = broker_with_topics(None);
    let s = common::start(Driver::Epoll, "[server]\nworkers = 2\n");
    let cfg_path = s.dir.path().join("shipper.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "node_id = \"t1\"\ndata_dir = \"{}\"\n{TOPICS}",
            s.dir.path().display()
        ),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (stop.clone(), s.addr);
        std::thread::spawn(move || {
            let mut i = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                let t = if i % 5 == 0 {
                    format!("/e?adv=demo&ev=purchase&order_id=o{i}&n={i}")
                } else {
                    format!("/i?adv=demo&n={i}")
                };
                std::io::Write::write_all(
                    &mut c,
                    format!("GET {t} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
                )
                .unwrap();
                let _ = std::io::Read::read_to_end(&mut c, &mut Vec::new());
                i += 1;
            }
        })
    };
    for round in 0..10u64 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trackplane-shipper"))
            .arg("--config")
            .arg(&cfg_path)
            .args([
                "--brokers",
                &broker.bootstrap(),
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(250 + round * 53 % 300));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let mut s = s;
    s.stop();
    let want = on_disk(s.dir.path());
    assert!(want.len() > 200, "load too light: {}", want.len());
    let last = ship(config(s.dir.path(), &broker.bootstrap(), ""));
    let (events, _) = read_back(&broker.bootstrap(), &want, Duration::from_secs(60));
    eprintln!(
        "final shipper: {}",
        last.metrics
            .render()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let dups = check_delivery(&events, &want);
    eprintln!(
        "{} events through 10 kills: {dups} duplicates (removed by id)",
        want.len()
    );
}

#[test]
fn a_broker_outage_delays_but_loses_nothing() {
    let proxy_port = free_port();
    let broker = broker_with_topics(Some(proxy_port));
    let proxy = Proxy::start(proxy_port, broker.port);
    let mut s = common::start(Driver::Epoll, "");
    let shipper = ship(config(s.dir.path(), &proxy.addr().to_string(), ""));
    let m = shipper.metrics.clone();
    let up = || m.broker_up.load(Ordering::Relaxed);
    send_events(&s, 0, 100);
    wait_for("first acks", Duration::from_secs(30), || {
        m.acked.load(Ordering::Relaxed) >= 100
    });
    assert_eq!(up(), 1);
    proxy.down();
    send_events(&s, 100, 150);
    wait_for("broker_up 0", Duration::from_secs(10), || up() == 0);
    let sent = m.watermarks.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        m.acked.load(Ordering::Relaxed),
        100,
        "nothing is acknowledged while the broker is unreachable"
    );
    assert_eq!(up(), 0, "the broker stays down");
    // Every 200 ms a round to 6 partitions per stream would queue 15
    // rounds in 3 s; one round waits, and the rest are not sent.
    let round = 6 * m.streams.lock().unwrap().len() as u64;
    let queued = m.watermarks.load(Ordering::Relaxed) - sent;
    assert!(
        queued <= round,
        "{queued} watermarks queued through the outage, a round is {round}"
    );
    proxy.up();
    wait_for("catch-up", Duration::from_secs(60), || {
        m.acked.load(Ordering::Relaxed) >= 250
    });
    wait_for("broker_up 1", Duration::from_secs(10), || up() == 1);
    let sent = m.watermarks.load(Ordering::Relaxed);
    wait_for("watermarks again", Duration::from_secs(10), || {
        m.watermarks.load(Ordering::Relaxed) > sent
    });
    s.stop();
    let want = on_disk(s.dir.path());
    let (events, _) = read_back(&proxy.addr().to_string(), &want, Duration::from_secs(30));
    let dups = check_delivery(&events, &want);
    eprintln!("250 events across a 3 s outage: {dups} duplicates");
}

#[test]
fn retention_deletes_only_shipped_segments() {
    let broker = broker_with_topics(None);
    let mut s = common::start(Driver::Epoll, SMALL_SEGMENTS);
    send_events(&s, 0, 600);
    s.stop();
    let before = list(&s.dir.path().join("segments")).unwrap();
    assert!(before.len() >= 3, "several segments: {}", before.len());
    let want = on_disk(s.dir.path());
    // Ship only part: a throttled shipper stopped partway.
    {
        let shipper = ship(config(
            s.dir.path(),
            &broker.bootstrap(),
            "retain_shipped_s = 0\nmax_in_flight = 2\nlinger_ms = 20\n",
        ));
        wait_for("some acks", Duration::from_secs(30), || {
            shipper.metrics.acked.load(Ordering::Relaxed) >= 60
        });
        std::thread::sleep(Duration::from_millis(1200)); // a retention round
    }
    assert!(
        trackplane::shipper::checkpoint::load(s.dir.path(), 0)
            .unwrap()
            .unwrap()
            .next_seq
            < 600,
        "stopped partway"
    );
    let checkpoint = trackplane::shipper::checkpoint::load(s.dir.path(), 0)
        .unwrap()
        .map_or(0, |p| p.next_seq);
    let after = list(&s.dir.path().join("segments")).unwrap();
    for seg in &after {
        assert!(seg.path.exists());
    }
    let deleted: Vec<_> = before
        .iter()
        .filter(|b| !after.iter().any(|a| a.path == b.path))
        .collect();
    assert!(
        !deleted.is_empty(),
        "shipped segments were deleted (checkpoint {checkpoint})"
    );
    for d in &deleted {
        let next = before
            .iter()
            .find(|b| b.stream == d.stream && b.base_seq > d.base_seq)
            .expect("a successor");
        assert!(
            next.base_seq <= checkpoint,
            "deleted {:?} holds records at or past the checkpoint {checkpoint}",
            d.path
        );
    }
    // Everything not yet shipped is still readable.
    let remaining = on_disk(s.dir.path());
    for (id, rec) in &want {
        let seq: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
        if seq >= checkpoint {
            assert_eq!(remaining.get(id), Some(rec), "unshipped {id} deleted");
        }
    }
    // With the missing topic created, everything ships and old segments go.
    let full = ship(config(
        s.dir.path(),
        &broker.bootstrap(),
        "retain_shipped_s = 0\n",
    ));
    wait_for("everything shipped", Duration::from_secs(30), || {
        full.metrics.acked.load(Ordering::Relaxed) >= 600 - checkpoint
    });
    wait_for("retention", Duration::from_secs(10), || {
        list(&s.dir.path().join("segments")).unwrap().len() < before.len()
    });
    assert!(
        !list(&s.dir.path().join("segments")).unwrap().is_empty(),
        "the newest segment stays"
    );
}
