//! Catalog lookups at 10 million products, against the obvious
//! `HashSet<String>`: a million scattered ids per iteration, so that every
//! lookup pays the cache misses it pays in production. Prints bytes per
//! product for both.
//!
//! `cargo bench --bench catalog`

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use trackplane::audit::ProductSet;

const N: usize = 10_000_000;
/// Lookups per iteration: enough distinct slots to overflow every cache.
const PROBES: usize = 1 << 20;

/// Ids end to end in one buffer.
struct Keys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Keys {
    fn new<S: AsRef<str>>(ids: impl Iterator<Item = S>) -> Keys {
        let mut keys = Keys {
            bytes: Vec::new(),
            ends: Vec::new(),
        };
        for id in ids {
            keys.bytes.extend_from_slice(id.as_ref().as_bytes());
            keys.ends.push(keys.bytes.len());
        }
        keys
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }
}

fn ids() -> Vec<String> {
    (0..N).map(|i| format!("sku-{}-{i}", i % 977)).collect()
}

fn bench(c: &mut Criterion) {
    let ids = ids();
    let set = ProductSet::build(ids.iter().map(|s| s.as_bytes()));
    // A catalog file's lines give the build no size hint.
    let from_file = ProductSet::build(ids.iter().map(|s| s.as_bytes()).filter(|_| true));
    eprintln!(
        "built without a size hint (as from a catalog file): {:.1} bytes/product",
        from_file.heap_bytes() as f64 / N as f64
    );
    drop(from_file);
    let naive: HashSet<String> = ids.iter().cloned().collect();
    let naive_bytes = naive.capacity() * (std::mem::size_of::<String>() + 1)
        + naive.iter().map(String::capacity).sum::<usize>();
    eprintln!(
        "catalog of {N} products: fingerprint table {:.1} bytes/product, HashSet<String> {:.1} bytes/product",
        set.heap_bytes() as f64 / N as f64,
        naive_bytes as f64 / N as f64
    );
    // Probe a million ids in a scattered order, so that lookups miss the
    // caches and the TLB as they do in production (4096 probes repeated
    // would sit in L2 after the first pass). The probed ids lie end to end
    // in one buffer, read in order, as a request's bytes are at hand.
    let probes = Keys::new((0..PROBES).map(|i| ids[(i * 2_654_435_761usize) % N].as_str()));
    let misses = Keys::new((0..PROBES).map(|i| format!("gone-{i}")));
    let mut g = c.benchmark_group("catalog_10M_lookup");
    g.throughput(criterion::Throughput::Elements(PROBES as u64));
    g.sample_size(20);
    g.bench_function("fingerprint_table_hit", |b| {
        b.iter(|| probes.iter().filter(|p| set.contains(p)).count())
    });
    // One lookup at a time, as the request path makes them: a full fence
    // after each keeps the next one's loads from starting before its slot
    // has come, so the table's cache and TLB misses show in full instead of
    // overlapping.
    g.bench_function("fingerprint_table_hit_one_at_a_time", |b| {
        b.iter(|| {
            probes
                .iter()
                .filter(|p| {
                    let hit = set.contains(p);
                    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                    hit
                })
                .count()
        })
    });
    g.bench_function("hashset_string_hit", |b| {
        b.iter(|| {
            probes
                .iter()
                .filter(|p| naive.contains(std::str::from_utf8(p).unwrap()))
                .count()
        })
    });
    g.bench_function("fingerprint_table_miss", |b| {
        b.iter(|| misses.iter().filter(|p| set.contains(p)).count())
    });
    g.bench_function("hashset_string_miss", |b| {
        b.iter(|| {
            misses
                .iter()
                .filter(|p| naive.contains(std::str::from_utf8(p).unwrap()))
                .count()
        })
    });
    g.finish();
    let mut g = c.benchmark_group("catalog_10M_build");
    g.sample_size(10);
    g.bench_function("fingerprint_table", |b| {
        b.iter(|| black_box(ProductSet::build(ids.iter().map(|s| s.as_bytes()))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
