//! The live view's cost per record: folding real records (encoded by the
//! request path from a mix of 50 advertisers, six event types and one in
//! ten calls broken) into the minute and hour counts and the recent
//! buffers, as a worker does for every event while idle (`view::fold`). Compare runs with
//! `--save-baseline` / `--baseline`.
//!
//! `cargo bench --bench view`

#[path = "calls.rs"]
mod calls;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use trackplane::audit::{Auditor, Catalogs, ProductSet};
use trackplane::config::Config;
use trackplane::view::View;

const ADVERTISERS: u64 = 50;
const RECORDS: usize = 4096;

/// One call of the mix: mostly valid, every tenth one broken.
fn query(i: u64) -> String {
    // A small LCG: the same mix every run, advertisers in no order.
    let r = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 33;
    let a = r % ADVERTISERS;
    let p = (r >> 8) % 1000;
    match (r >> 20) % 10 {
        0 => format!("adv=adv-{a}&ev=purchase&order_id=o-{i}&value=9,99&currency=EUR&pid=sku-{p}"),
        1..=3 => format!("adv=adv-{a}&ev=page_view&uid=u{i}"),
        4..=6 => format!("adv=adv-{a}&ev=view_item&pid=sku-{p}&uid=u{i}"),
        7 => format!("adv=adv-{a}&ev=add_to_cart&pid=sku-{p}&value=19.90&currency=EUR&uid=u{i}"),
        8 => format!(
            "adv=adv-{a}&ev=purchase&order_id=o-{i}&value=19.90&currency=EUR&pid=sku-{p}&uid=u{i}"
        ),
        _ => format!("adv=adv-{a}&uid=u{i}"),
    }
}

fn records() -> Vec<Vec<u8>> {
    let toml: String = (0..ADVERTISERS)
        .map(|a| format!("[advertisers.adv-{a}]\n"))
        .collect();
    let config = Config::from_toml_str(&toml, "bench").unwrap();
    let auditor = Auditor::new(&config);
    let ids: Vec<String> = (0..1000).map(|i| format!("sku-{i}")).collect();
    let catalogs = (0..ADVERTISERS).fold(Catalogs::default(), |c, a| {
        c.with(
            &format!("adv-{a}"),
            ProductSet::build(ids.iter().map(|s| s.as_bytes())),
        )
    });
    let mut enc = calls::Encoder::new(&auditor, &catalogs);
    (0..RECORDS as u64)
        .map(|i| {
            enc.encode(
                i,
                &query(i),
                b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
                b"https://www.shop.example/cart",
            )
            .0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let recs = records();
    let is_invalid = |r: &&Vec<u8>| r.windows(18).any(|w| w == b"\"status\":\"invalid\"");
    let invalid = recs.iter().filter(is_invalid).count();
    assert!(invalid > RECORDS / 20 && invalid < RECORDS / 2, "{invalid}");
    let view = View::default();
    let mut g = c.benchmark_group("view");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("add", |b| {
        b.iter(|| {
            let mut batch = view.batch();
            for r in &recs {
                batch.add(r);
            }
        })
    });
    g.finish();
    // Valid records are read by scan, invalid ones parsed for their
    // issues: each path alone, per record.
    for (name, want_invalid) in [("add_valid", false), ("add_invalid", true)] {
        let subset: Vec<&Vec<u8>> = recs
            .iter()
            .filter(|r| is_invalid(r) == want_invalid)
            .collect();
        let mut g = c.benchmark_group("view");
        g.throughput(Throughput::Elements(subset.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut batch = view.batch();
                for r in &subset {
                    batch.add(r);
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
