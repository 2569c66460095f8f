//! The catalog reloader's scan of an unchanged directory, which it repeats
//! every `catalogs.reload_interval_ms` (1 s by default) on a thread that
//! shares the workers' cores: what a node with many advertisers pays for
//! noticing changes. One small file per advertiser; the scan stats each.
//!
//! `cargo bench --bench catalog_scan`

use criterion::{criterion_group, criterion_main, Criterion};
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
