//! The request-path hand-off: the lock-free SPSC byte ring against the
//! obvious `Mutex<VecDeque<Vec<u8>>>` (an allocation and a lock per record),
//! one producer thread and one consumer thread, 330-byte records.
//!
//! `cargo bench --bench ring`

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use trackplane::ring::{ring, PushError};

const RECORDS: u64 = 200_000;
const RECORD: [u8; 330] = [b'x'; 330];

fn spsc(iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (mut p, mut c) = ring(1 << 22);
        let start = Instant::now();
        let consumer = std::thread::spawn(move || {
            let mut seen = 0u64;
            while seen < RECORDS {
                seen += c.drain(|r| {
                    std::hint::black_box(r);
                }) as u64;
            }
        });
        let mut sent = 0;
        while sent < RECORDS {
            match p.push(&RECORD) {
                Ok(()) => sent += 1,
                Err(PushError::Full) => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
        consumer.join().unwrap();
        total += start.elapsed();
    }
    total
}

fn mutex_queue(iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let q: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::new(Mutex::new(VecDeque::new()));
        let start = Instant::now();
        let qc = q.clone();
        let consumer = std::thread::spawn(move || {
            let mut seen = 0u64;
            while seen < RECORDS {
                let batch: Vec<Vec<u8>> = qc.lock().unwrap().drain(..).collect();
                for r in batch {
                    std::hint::black_box(&r);
                    seen += 1;
                }
            }
        });
        for _ in 0..RECORDS {
            q.lock().unwrap().push_back(RECORD.to_vec());
        }
        consumer.join().unwrap();
        total += start.elapsed();
    }
    total
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("handoff_330B_records");
    g.throughput(Throughput::Elements(RECORDS));
    g.sample_size(20);
    g.bench_function("spsc_byte_ring", |b| b.iter_custom(spsc));
    g.bench_function("mutex_vecdeque_vec", |b| b.iter_custom(mutex_queue));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
