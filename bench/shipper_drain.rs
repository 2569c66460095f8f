//! Backlog drain: segments on disk → Kafka, in events/s and MB/s with the
//! CPU it costs, against a minimal rdkafka producer sending the same
//! records from memory with the same producer settings, in the same run,
//! to the same broker (tansu on loopback, pinned to core 0; this process to
//! core 1). Writes bench/results/shipper-drain-<date>.md.
//!
//! `cargo bench --bench shipper_drain` (needs the test broker: run
//! ./scripts/test once, or set TRACKPLANE_TANSU)

#[path = "calls.rs"]
mod calls;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use trackplane::audit::{Auditor, Catalogs};
use trackplane::config::Config;
use trackplane::segment::{StreamWriter, WriterConfig};

const EVENTS: u64 = 400_000;
/// Rounds of each contender, alternating: the drain varies by a third
/// from round to round on this VM, so the median needs more than three.
const ROUNDS: usize = 7;

// As in the trackplane-shipper binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn tansu() -> String {
    std::env::var("TRACKPLANE_TANSU").unwrap_or_else(|_| {
        let dir =
            std::path::Path::new(&std::env::var("HOME").unwrap_or_default()).join(".calfkit/bin");
        std::fs::read_dir(&dir)
            .ok()
            .and_then(|mut e| {
                e.find_map(|x| {
                    x.ok()
                        .filter(|x| x.file_name().to_string_lossy().starts_with("tansu"))
                })
            })
            .map(|x| x.path().display().to_string())
            .expect("no tansu: run ./scripts/test first or set TRACKPLANE_TANSU")
    })
}

/// CPU time of a process (all threads), seconds: `/proc/self` or `/proc/PID`.
fn cpu_seconds(proc_dir: &str) -> f64 {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("{proc_dir}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

fn pin_to(core: usize) {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(id) = ids.into_iter().find(|c| c.id == core) {
        core_affinity::set_for_current(id);
    }
}

fn records() -> Vec<(u64, Vec<u8>, String, String)> {
    let config = Config::embedded();
    let auditor = Auditor::new(&config);
    let catalogs = Catalogs::default();
    let mut enc = calls::Encoder::new(&auditor, &catalogs);
    (0..EVENTS)
        .map(|i| {
            let q = match i % 5 {
                0..=2 => format!(
                    "adv=adv-{}&uid=u{}&pid=sku-{}-{}",
                    i % 50,
                    i * 7919 % 1_000_000,
                    i % 50,
                    i * 31 % 20000
                ),
                3 => format!(
                    "adv=adv-{}&ev=add_to_cart&pid=sku-{}-{}&value={}.{:02}&currency=EUR",
                    i % 50,
                    i % 50,
                    i % 20000,
                    i % 300,
                    i % 100
                ),
                _ => format!(
                    "adv=adv-{}&ev=purchase&order_id=o-{i}&value={}.99&currency=EUR&pid=sku-{}-{}",
                    i % 50,
                    i % 900,
                    i % 50,
                    i % 20000
                ),
            };
            let (out, event_type) = enc.encode(
                i,
                &q,
                b"Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
                b"https://www.shop.example/",
            );
            (i, out, format!("adv-{}", i % 50), event_type)
        })
        .collect()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful: only run when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    pin_to(1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = Command::new("taskset")
        .args([
            "-c",
            "0",
            &tansu(),
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // A fresh topic per round for each contender, all alike (3 partitions):
    // neither writes into a log the other has grown.
    let topics: Vec<String> = (0..ROUNDS)
        .flat_map(|r| [format!("baseline-{r}"), format!("shipped-{r}")])
        .collect();
    for topic in &topics {
        let ok = Command::new(tansu())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{port}"),
                "--partitions",
                "3",
                topic.as_str(),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let brokers = format!("127.0.0.1:{port}");
    let broker_proc = format!("/proc/{}", broker.id());
    let recs = records();
    let bytes: usize = recs.iter().map(|r| r.1.len()).sum();

    let mut rounds = Vec::new();
    for r in 0..ROUNDS {
        rounds.push(round(&brokers, &broker_proc, &recs, r));
    }
    let _ = broker.kill();
    let _ = broker.wait();

    let mb = bytes as f64 / 1e6;
    let rate = |s: f64| EVENTS as f64 / s;
    let cpu = |c: f64| c * 1e6 / EVENTS as f64;
    let mut table = String::new();
    let mut ratios = Vec::new();
    for (i, (base, ship)) in rounds.iter().enumerate() {
        for (who, d) in [
            ("minimal rdkafka producer, records in memory", base),
            ("trackplane-shipper, segments on disk (2 streams)", ship),
        ] {
            table += &format!(
                "| {} | {who} | {:.0} | {:.1} | {:.2} | {:.2} | {:.0}% |\n",
                i + 1,
                rate(d.secs),
                mb / d.secs,
                cpu(d.cpu),
                cpu(d.broker_cpu),
                100.0 * d.broker_cpu / d.secs
            );
        }
        ratios.push(base.secs / ship.secs);
    }
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    let report = format!(
        "# Backlog drain to Kafka — {}\n\nCommand: `cargo bench --bench shipper_drain`\nMachine: {cores} cores, {}; kernel {}. Broker: tansu 0.6.0 (in memory) on loopback, pinned to core 0; this process to core 1.\n{EVENTS} records, {:.0} bytes each on average ({mb:.0} MB), idempotent producer, acks=all, zstd, linger 5 ms, batch 1 MB; both send identical messages (key = advertiser, value = record, the three trackplane headers). {ROUNDS} rounds, alternating.\n\n| round | | events/s | MB/s | CPU µs/event (all threads) | broker CPU µs/event | broker core busy |\n|---|---|---|---|---|---|---|\n{table}\nShipper / minimal producer throughput by round: {}; median {:.2}x.\n",
        chrono_free_now(),
        std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())).unwrap_or_default(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        bytes as f64 / EVENTS as f64,
        shown.join(", "),
        ratios[ratios.len() / 2],
    );
    print!("{report}");
    let path = format!(
        "bench/results/shipper-drain-{}.md",
        chrono_free_now().replace([' ', ':'], "-")
    );
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&path),
        &report,
    );
    eprintln!("wrote {path}");
}

fn chrono_free_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (y, m, d) = trackplane::http::date::civil_from_days((secs / 86400) as i64);
    format!(
        "{y}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs % 86400 / 3600,
        secs % 3600 / 60
    )
}

/// One round: the minimal producer, then the shipper. Returns
/// Wall time, this process's CPU and the broker's CPU of one drain.
#[derive(Clone, Copy)]
struct Drain {
    secs: f64,
    cpu: f64,
    broker_cpu: f64,
}

/// One round: (minimal producer, shipper).
fn round(
    brokers: &str,
    broker_proc: &str,
    recs: &[(u64, Vec<u8>, String, String)],
    round: usize,
) -> (Drain, Drain) {
    let baseline_topic = format!("baseline-{round}");
    // Baseline: the minimal producer, records already in memory.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap();
    let (cpu0, bcpu0, t0) = (
        cpu_seconds("/proc/self"),
        cpu_seconds(broker_proc),
        Instant::now(),
    );
    for (_, value, key, event_type) in recs {
        // The same message the shipper sends: key, value and headers.
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trackplane-type",
                value: Some(event_type.as_str()),
            })
            .insert(Header {
                key: "trackplane-node",
                value: Some("edge-1"),
            })
            .insert(Header {
                key: "trackplane-format",
                value: Some("1"),
            });
        let mut rec = BaseRecord::to(baseline_topic.as_str())
            .key(key.as_str())
            .payload(value.as_slice())
            .headers(headers);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let baseline = Drain {
        secs: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds("/proc/self") - cpu0,
        broker_cpu: cpu_seconds(broker_proc) - bcpu0,
    };
    drop(producer);

    // trackplane-shipper: the same records as segments on disk, two streams.
    let dir = tempfile::tempdir().unwrap();
    let seg_dir = dir.path().join("segments");
    std::fs::create_dir_all(&seg_dir).unwrap();
    let cfg = WriterConfig {
        block_max_bytes: 262_144,
        segment_max_bytes: 128 << 20,
        segment_max_age: Duration::from_secs(3600),
        zstd_level: 3,
    };
    let mut writers = [
        StreamWriter::create(&seg_dir, 0, "edge-1", 0, cfg).unwrap(),
        StreamWriter::create(&seg_dir, 1, "edge-1", 0, cfg).unwrap(),
    ];
    let mut next = [0u64, 0];
    for (i, (_, value, _, _)) in recs.iter().enumerate() {
        let s = i % 2;
        writers[s]
            .append(next[s], 1_700_000_000_000 + i as u64, value)
            .unwrap();
        next[s] += 1;
        if writers[s].block_full() {
            writers[s].write_block().unwrap();
        }
    }
    for w in writers {
        w.close().unwrap();
    }
    let mut config = Config::from_toml_str(
        &format!(
            "node_id = \"edge-1\"\ndata_dir = \"{}\"\n[shipper]\nwatermark_interval_ms = 1000\ndefault_topic = \"shipped-{round}\"\n",
            dir.path().display()
        ),
        "bench",
    )
    .unwrap();
    config.shipper.brokers = brokers.to_owned();
    let mut shipper = trackplane::shipper::Shipper::new(config).unwrap();
    let metrics = shipper.metrics.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (cpu0, bcpu0, t0) = (
        cpu_seconds("/proc/self"),
        cpu_seconds(broker_proc),
        Instant::now(),
    );
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("shipper-loop".into())
            .spawn(move || {
                pin_to(1);
                shipper.run(&stop)
            })
            .unwrap()
    };
    while metrics.acked.load(Ordering::Relaxed) < EVENTS {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "drain did not finish"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let shipped = Drain {
        secs: t0.elapsed().as_secs_f64(),
        cpu: cpu_seconds("/proc/self") - cpu0,
        broker_cpu: cpu_seconds(broker_proc) - bcpu0,
    };
    stop.store(true, Ordering::Release);
    thread.join().unwrap();
    (baseline, shipped)
}
