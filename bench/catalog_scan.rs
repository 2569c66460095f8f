//! The catalog reloader's scan of an unchanged directory, which it repeats
//! every `catalogs.reload_interval_ms` (1 s by default) on a thread that
//! shares the workers' cores: what a node with many advertisers pays for
//! noticing changes. One small file per advertiser; the scan stats each.
//!
//! Also the pace at which it reads a changed catalog, line by line: what
//! sets how many lines it reads between two yields
//! (`audit::catalog::LINES_PER_BREATH`).
//!
//! `cargo bench --bench catalog_scan`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use trackplane::audit::CatalogDir;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("catalog_dir_scan_unchanged");
    g.sample_size(20);
    for advertisers in [1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..advertisers {
            std::fs::write(
                dir.path().join(format!("adv{i}.txt")),
                "sku-1\nsku-2\nsku-3\n",
            )
            .unwrap();
        }
        let mut catalogs = CatalogDir::new(dir.path());
        assert_eq!(catalogs.scan().unwrap().unwrap().loaded.len(), advertisers);
        g.bench_function(format!("{advertisers}_advertisers"), |b| {
            b.iter(|| assert!(catalogs.scan().unwrap().is_none()))
        });
    }
    g.finish();

    // From memory, so that this is the parse's pace, not the disk's; the
    // breather as the reloader's (its yields cost a system call each).
    let lines = 1_000_000u32;
    let text: String = (0..lines).map(|i| format!("sku-{i:08}\n")).collect();
    let mut g = c.benchmark_group("catalog_read");
    g.sample_size(10);
    g.throughput(Throughput::Elements(u64::from(lines)));
    g.bench_function("1M_lines", |b| {
        let mut breather =
            trackplane::sched::Breather::new(trackplane::audit::catalog::LINES_PER_BREATH);
        b.iter(|| {
            let set =
                trackplane::audit::catalog::read_catalog(text.as_bytes(), &mut breather).unwrap();
            assert_eq!(set.len(), lines as usize);
        })
    });
    // The part of a read that does not breathe: the fingerprints' table,
    // built at the end (hashed here too, which the read does line by line).
    let ids: Vec<&[u8]> = text.lines().map(str::as_bytes).collect();
    g.bench_function("1M_build", |b| {
        b.iter(|| {
            let set = trackplane::audit::ProductSet::build(ids.iter().copied());
            assert_eq!(set.len(), lines as usize);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
