//! Catalog lookups at 10 million products, against the obvious
//! `HashSet<String>`. Prints bytes per product for both.
//!
//! `cargo bench --bench catalog`

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use trackplane::audit::ProductSet;

const N: usize = 10_000_000;

fn ids() -> Vec<String> {
    (0..N).map(|i| format!("sku-{}-{i}", i % 977)).collect()
}

fn bench(c: &mut Criterion) {
    let ids = ids();
    let set = ProductSet::build(ids.iter().map(|s| s.as_bytes()));
    let naive: HashSet<String> = ids.iter().cloned().collect();
    let naive_bytes = naive.capacity() * (std::mem::size_of::<String>() + 1)
        + naive.iter().map(String::capacity).sum::<usize>();
    eprintln!(
        "catalog of {N} products: fingerprint table {:.1} bytes/product, HashSet<String> {:.1} bytes/product",
        set.heap_bytes() as f64 / N as f64,
        naive_bytes as f64 / N as f64
    );
    // Probe in a scattered order so that lookups miss the cache as they do
    // in production.
    let probes: Vec<&str> = (0..4096)
        .map(|i| ids[(i * 2_654_435_761usize) % N].as_str())
        .collect();
    let misses: Vec<String> = (0..4096).map(|i| format!("gone-{i}")).collect();
    let mut g = c.benchmark_group("catalog_10M_lookup");
    g.throughput(criterion::Throughput::Elements(probes.len() as u64));
    g.bench_function("fingerprint_table_hit", |b| {
        b.iter(|| probes.iter().filter(|p| set.contains(p.as_bytes())).count())
    });
    g.bench_function("hashset_string_hit", |b| {
        b.iter(|| probes.iter().filter(|p| naive.contains(**p)).count())
    });
    g.bench_function("fingerprint_table_miss", |b| {
        b.iter(|| misses.iter().filter(|p| set.contains(p.as_bytes())).count())
    });
    g.bench_function("hashset_string_miss", |b| {
        b.iter(|| misses.iter().filter(|p| naive.contains(p.as_str())).count())
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
