//! The storage path per event: encode the record, hand it through the ring,
//! batch it into a zstd block and append the block to a segment, against
//! the obvious way (an owned record through a `Mutex<Vec>` queue, one
//! `write` per event). Reports events/s and bytes/s of record data, and the
//! compression ratio. Run on the loadtest's realistic records.
//!
//! `block_compress`: one 256 KiB block of those records compressed in one
//! go against in the pieces the store uses when it may pause between them
//! (`COMPRESS_PIECE`), each with its ratio.
//!
//! `cargo bench --bench store`

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use trackplane::audit::{Auditor, Catalogs, Route};
use trackplane::config::Config;
use trackplane::http::Params;
use trackplane::record::{self, Envelope};
use trackplane::segment::{StreamWriter, WriterConfig};

const EVENTS: usize = 50_000;

/// One event's query, referer and user agent.
struct Event {
    query: String,
    referer: String,
    agent: &'static [u8],
}

const AGENTS: [&[u8]; 3] = [
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    b"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    b"Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
];

/// Realistic events, one per event of a run and none repeated: the
/// loadtest's mix (`loadtest/src/mix.rs`: 50 advertisers with 20,000
/// products each, user ids out of a million, three user agents, a referer
/// per shop page), drawn from a fixed seed. Records that repeat compress
/// far better than real ones (28:1 against about 14:1) and faster.
fn events(n: usize) -> Vec<Event> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut below = |m: u64| {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % m
    };
    (0..n)
        .map(|i| {
            let a = below(50);
            let sku = |p: u64| format!("sku-{a}-{p}");
            let uid = below(1_000_000);
            let query = match below(100) {
                0..=59 if below(2) == 0 => format!("adv=adv-{a}&uid=u{uid}"),
                0..=59 => format!("adv=adv-{a}&uid=u{uid}&pid={}", sku(below(20_000))),
                60..=74 => format!("adv=adv-{a}&ev=view_item&pid={}&uid=u{uid}", sku(below(20_000))),
                75..=82 => format!("adv=adv-{a}&ev=add_to_cart&pid={}&value={}.{:02}&currency=EUR&uid=u{uid}", sku(below(20_000)), below(300), below(100)),
                83..=87 => format!("adv=adv-{a}&ev=purchase&order_id=o-{i}&value={}.{:02}&currency=EUR&pid={}%2C{}&uid=u{uid}", below(900), below(100), sku(below(20_000)), sku(below(20_000))),
                _ => format!("adv=adv-{a}&url=https%3A%2F%2Fwww.shop{a}.example%2Fp%2F{}&uid=u{uid}", below(100_000)),
            };
            Event {
                query,
                referer: format!("https://www.shop{a}.example/cat/{}", below(1000)),
                agent: AGENTS[below(3) as usize],
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let config = Config::from_toml_str("", "bench").unwrap();
    let auditor = Auditor::new(&config);
    let catalogs = Catalogs::default();
    let events = events(EVENTS);
    let mut params = Params::with_capacity(64);
    let mut encode = |i: usize, out: &mut Vec<u8>| {
        params.clear();
        params
            .parse_urlencoded(events[i % events.len()].query.as_bytes(), 64)
            .unwrap();
        let verdict = auditor.audit(&params, Route::Beacon, &catalogs);
        let env = Envelope {
            node: "edge-1",
            stream: 0,
            seq: i as u64,
            ts_ms: 1_700_000_000_000 + i as u64,
            ip: Some("203.0.113.0".parse().unwrap()),
            user_agent: events[i % events.len()].agent,
            referer: events[i % events.len()].referer.as_bytes(),
            withheld_param: b"",
        };
        record::encode(out, &env, &verdict, &params);
    };
    // Record bytes per event, for the throughput figure.
    let mut sample = Vec::new();
    for i in 0..1000 {
        encode(i, &mut sample);
    }
    let record_bytes = sample.len() / 1000;

    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("store_path");
    g.sample_size(10);
    g.throughput(Throughput::Elements(EVENTS as u64));
    let mut ratio = (0u64, 0u64);
    g.bench_function("ring_zstd_block_segment", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for it in 0..iters {
                let (mut p, mut cons) = trackplane::ring::ring(1 << 23);
                let sub = dir
                    .path()
                    .join(format!("s{it}-{}", Instant::now().elapsed().as_nanos()));
                std::fs::create_dir_all(&sub).unwrap();
                let cfg = WriterConfig {
                    block_max_bytes: 262_144,
                    segment_max_bytes: 1 << 30,
                    segment_max_age: Duration::from_secs(3600),
                    zstd_level: 1,
                };
                let mut w = StreamWriter::create(&sub, 0, "edge-1", 0, cfg).unwrap();
                let mut rec = Vec::with_capacity(1024);
                let start = Instant::now();
                for i in 0..EVENTS {
                    rec.clear();
                    rec.extend_from_slice(&(i as u64).to_le_bytes());
                    rec.extend_from_slice(&(i as u64).to_le_bytes());
                    encode(i, &mut rec);
                    p.push(&rec).unwrap();
                    if i % 256 == 255 || i == EVENTS - 1 {
                        cons.drain(|r| {
                            let seq = u64::from_le_bytes(r[..8].try_into().unwrap());
                            w.append(seq, seq, &r[16..]).unwrap();
                            if w.block_full() {
                                if let Some(s) = w.write_block().unwrap() {
                                    ratio.0 += s.raw_bytes;
                                    ratio.1 += s.written_bytes;
                                }
                            }
                        });
                    }
                }
                if let Some(s) = w.write_block().unwrap() {
                    ratio.0 += s.raw_bytes;
                    ratio.1 += s.written_bytes;
                }
                total += start.elapsed();
                w.close().unwrap();
            }
            total
        })
    });
    g.bench_function("naive_mutex_vec_write_per_event", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for it in 0..iters {
                let queue: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
                let mut file =
                    std::fs::File::create(dir.path().join(format!("naive-{it}.jsonl"))).unwrap();
                let start = Instant::now();
                for i in 0..EVENTS {
                    let mut rec = Vec::new();
                    encode(i, &mut rec);
                    rec.push(b'\n');
                    queue.lock().unwrap().push(rec);
                    if i % 256 == 255 || i == EVENTS - 1 {
                        for r in queue.lock().unwrap().drain(..) {
                            file.write_all(&r).unwrap();
                        }
                    }
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
    eprintln!(
        "record bytes/event {record_bytes}; compression ratio (raw / written, with headers) {:.2}",
        ratio.0 as f64 / ratio.1.max(1) as f64
    );

    let records: Vec<Vec<u8>> = (0..4000)
        .map(|i| {
            let mut r = Vec::new();
            encode(i, &mut r);
            r
        })
        .collect();
    block_compress(c, &records, dir.path());
}

/// Writes one full block per iteration, whole or in pieces; only the
/// block's compression and write are timed.
fn block_compress(c: &mut Criterion, records: &[Vec<u8>], dir: &std::path::Path) {
    let cfg = WriterConfig {
        block_max_bytes: 262_144,
        segment_max_bytes: 1 << 30,
        segment_max_age: Duration::from_secs(3600),
        zstd_level: 1,
    };
    let mut g = c.benchmark_group("block_compress");
    g.sample_size(20);
    for in_pieces in [false, true] {
        let name = if in_pieces { "in_pieces" } else { "whole" };
        let mut ratio = (0u64, 0u64);
        let mut per_block = 0;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let sub = dir.join(name);
                std::fs::create_dir_all(&sub).unwrap();
                let mut w = StreamWriter::create(&sub, 0, "edge-1", 0, cfg).unwrap();
                let mut total = Duration::ZERO;
                let mut seq = 0u64;
                for _ in 0..iters {
                    let mut n = 0;
                    while !w.block_full() {
                        w.append(seq, seq, &records[seq as usize % records.len()])
                            .unwrap();
                        seq += 1;
                        n += 1;
                    }
                    per_block = n;
                    let start = Instant::now();
                    let stats = if in_pieces {
                        w.write_block_pausing(&mut || {}).unwrap()
                    } else {
                        w.write_block().unwrap()
                    }
                    .unwrap();
                    total += start.elapsed();
                    ratio.0 += stats.raw_bytes;
                    ratio.1 += stats.written_bytes;
                }
                w.close().unwrap();
                std::fs::remove_dir_all(&sub).unwrap();
                total
            })
        });
        eprintln!(
            "block_compress/{name}: {per_block} records per block; ratio (raw / written, with headers) {:.2}",
            ratio.0 as f64 / ratio.1.max(1) as f64
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
