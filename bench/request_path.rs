//! Everything a worker does per pixel call between reading bytes and
//! writing its answer, without sockets: parse the head, decode parameters,
//! audit against schema and catalog, encode the record, write the response.
//! Raced against the obvious implementation (a HashMap of owned strings and
//! serde_json building a Value per event). Then the same call timed one at
//! a time, warm and with the core's private caches emptied before each
//! (`request_path_each`: what a worker woken for one request pays). Also
//! the record's JSON strings alone, against the byte-at-a-time escape loop
//! they replaced.
//!
//! `cargo bench --bench request_path`

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use trackplane::audit::{Auditor, Catalogs, ProductSet, Route};
use trackplane::config::Config;
use trackplane::http::date::HttpDate;
use trackplane::http::{parse_head, response, Limits, Params};
use trackplane::record::{self, Envelope};

const REQUEST: &[u8] = b"GET /e?adv=shop&ev=purchase&order_id=o-81723&value=129.90&currency=EUR&pid=sku-1-17%2Csku-1-99&uid=u829173 HTTP/1.1\r\nHost: edge.example\r\nUser-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\nReferer: https://www.shop.example/cart\r\nAccept: */*\r\n\r\n";

const LIMITS: Limits = Limits {
    max_request_line_bytes: 8192,
    max_header_bytes: 16384,
    max_headers: 64,
    max_body_bytes: 1 << 20,
};

fn bench(c: &mut Criterion) {
    let config = Config::from_toml_str("[advertisers.shop]\n", "bench").unwrap();
    let auditor = Auditor::new(&config);
    let ids: Vec<String> = (0..100_000).map(|i| format!("sku-1-{i}")).collect();
    let catalogs =
        Catalogs::default().with("shop", ProductSet::build(ids.iter().map(|s| s.as_bytes())));
    let mut params = Params::with_capacity(64);
    let mut rec = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1024);
    let date = HttpDate::default();

    // The call, cut after its `stages`-th step (1 parse, 2 parameters,
    // 3 audit, 4 record, 5 answer) so the cold bench can tell which step
    // pays for the caches.
    let mut call = |stages: u8| {
        let head = parse_head(REQUEST, &LIMITS).unwrap().unwrap();
        if stages == 1 {
            return head.query.of(REQUEST).len();
        }
        params.clear();
        params.parse_urlencoded(head.query.of(REQUEST), 64).unwrap();
        if stages == 2 {
            return params.len();
        }
        let verdict = auditor.audit(&params, Route::Beacon, &catalogs);
        if stages == 3 {
            return verdict.products.len();
        }
        rec.clear();
        let env = Envelope {
            node: "edge-1",
            stream: 0,
            seq: 1,
            ts_ms: 1_700_000_000_000,
            ip: Some("203.0.113.0".parse().unwrap()),
            user_agent: head.user_agent.of(REQUEST),
            referer: head.referer.of(REQUEST),
            withheld_param: b"",
        };
        record::encode(&mut rec, &env, &verdict, &params);
        if stages == 4 {
            return rec.len();
        }
        out.clear();
        response::empty(&mut out, trackplane::http::Status::NoContent, &date, true);
        rec.len() + out.len()
    };

    let mut g = c.benchmark_group("request_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("trackplane", |b| b.iter(|| call(5)));
    let naive_catalog: std::collections::HashSet<String> = ids.iter().cloned().collect();
    g.bench_function("naive_hashmap_serde_json", |b| {
        b.iter(|| {
            let text = String::from_utf8(REQUEST.to_vec()).unwrap();
            let line = text.lines().next().unwrap();
            let target = line.split(' ').nth(1).unwrap();
            let query = target.split_once('?').map_or("", |(_, q)| q);
            let mut map: HashMap<String, String> = HashMap::new();
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = v.replace("%2C", ",");
                map.entry(k.to_owned()).or_insert(v);
            }
            let mut headers: HashMap<String, String> = HashMap::new();
            for h in text.lines().skip(1).take_while(|l| !l.is_empty()) {
                if let Some((k, v)) = h.split_once(": ") {
                    headers.insert(k.to_ascii_lowercase(), v.to_owned());
                }
            }
            let mut issues = Vec::new();
            for req in ["order_id", "value", "currency", "pid"] {
                if !map.contains_key(req) {
                    issues.push(serde_json::json!({"code": "missing_param", "param": req}));
                }
            }
            let products: Vec<String> = map.get("pid").map(|p| p.split(',').map(str::to_owned).collect()).unwrap_or_default();
            for p in &products {
                if !naive_catalog.contains(p) {
                    issues.push(serde_json::json!({"code": "unknown_product", "param": "pid", "value": p}));
                }
            }
            let record = serde_json::json!({
                "id": "edge-1-0-1", "ts_ms": 1_700_000_000_000u64, "type": map.get("ev"), "advertiser": map.get("adv"),
                "status": if issues.is_empty() { "ok" } else { "invalid" }, "issues": issues, "params": map,
                "products": products, "ip": "203.0.113.0", "user_agent": headers.get("user-agent"),
                "referer": headers.get("referer"), "node": "edge-1",
            });
            let bytes = serde_json::to_vec(&record).unwrap();
            let resp = format!("HTTP/1.1 204 No Content\r\nDate: {}\r\n\r\n", "Thu, 01 Jan 1970 00:00:00 GMT");
            bytes.len() + resp.len()
        })
    });
    g.finish();

    // The same call with its caches cold, as a worker meets it when it
    // wakes for one request: between two requests the kernel's network
    // path (and whatever else shares the core) runs through the core's
    // private caches. Before each call, `evict` reads and writes a byte of
    // every line of 2 MiB (past L2 on the reference VMs, inside L3); `warm`
    // times each call alone the same way, so the two differ by the caches
    // only.
    let mut scratch = vec![0u8; 2 << 20];
    let mut evict = || {
        let mut sum = 0u8;
        for line in scratch.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
            sum = sum.wrapping_add(line[0]);
        }
        std::hint::black_box(sum);
    };
    let mut g = c.benchmark_group("request_path_each");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(std::time::Duration::from_secs(2));
    g.bench_function("warm", |b| {
        b.iter_batched(|| (), |()| call(5), BatchSize::PerIteration)
    });
    g.bench_function("cold", |b| {
        b.iter_batched(&mut evict, |()| call(5), BatchSize::PerIteration)
    });
    // The call cut after each step, warm and cold: what a step costs is
    // its difference from the step before, and what the caches cost it is
    // that difference cold less the same difference warm.
    for (stages, name) in [(1, "parse"), (2, "params"), (3, "audit"), (4, "record")] {
        g.bench_function(format!("warm_through_{name}"), |b| {
            b.iter_batched(|| (), |()| call(stages), BatchSize::PerIteration)
        });
        g.bench_function(format!("cold_through_{name}"), |b| {
            b.iter_batched(&mut evict, |()| call(stages), BatchSize::PerIteration)
        });
    }
    g.finish();

    // The strings of a typical record: user agent, referer, parameters.
    let strings: [&[u8]; 5] = [
        b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
        b"https://www.shop.example/cart",
        b"sku-1-17,sku-1-99",
        b"u829173",
        b"purchase",
    ];
    let bytes: usize = strings.iter().map(|s| s.len()).sum();
    let mut g = c.benchmark_group("json_strings");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("word_at_a_time", |b| {
        b.iter(|| {
            rec.clear();
            for s in strings {
                record::json::write_str(&mut rec, std::hint::black_box(s));
            }
            rec.len()
        })
    });
    g.bench_function("byte_at_a_time", |b| {
        b.iter(|| {
            rec.clear();
            for s in strings {
                byte_at_a_time(&mut rec, std::hint::black_box(s));
            }
            rec.len()
        })
    });
    g.finish();
}

/// The writer before the word-at-a-time scan: UTF-8 checked first, then
/// each byte matched for escaping.
fn byte_at_a_time(out: &mut Vec<u8>, s: &[u8]) {
    let text = String::from_utf8_lossy(s);
    let s = text.as_bytes();
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

criterion_group!(benches, bench);
criterion_main!(benches);
