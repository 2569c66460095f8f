//! Everything that parses untrusted bytes, fed arbitrary and mutated input
//! on every test run (proptest; the cargo-fuzz targets in `fuzz/` search
//! the same properties longer, guided by coverage): nothing panics, offsets
//! stay in bounds, records encoded from arbitrary parameters are always
//! valid JSON, and damaged segment files are reported, never crash a reader
//! or recovery.

mod common;

use proptest::prelude::*;
use trackplane::audit::{Auditor, Catalogs, Route};
use trackplane::config::Config;
use trackplane::http::{parse_head, Limits, Params};
use trackplane::record::{self, Envelope};

const LIMITS: Limits = Limits {
    max_request_line_bytes: 512,
    max_header_bytes: 2048,
    max_headers: 16,
    max_body_bytes: 4096,
};

const VALID: &[u8] = b"POST /e?adv=shop&ev=purchase&pid=a,b&value=9.99 HTTP/1.1\r\nHost: x\r\nUser-Agent: ua\r\nContent-Length: 5\r\nDNT: 1\r\n\r\nadv=x";

/// A valid request with a few bytes flipped, cut or inserted.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (proptest::collection::vec((0usize..VALID.len(), any::<u8>(), 0u8..3), 1..8)).prop_map(
        |edits| {
            let mut v = VALID.to_vec();
            for (at, byte, kind) in edits {
                if v.is_empty() {
                    break;
                }
                let at = at.min(v.len() - 1);
                match kind {
                    0 => v[at] = byte,
                    1 => v.insert(at, byte),
                    _ => v.truncate(at),
                }
            }
            v
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn request_heads_never_panic_and_offsets_stay_in_bounds(bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..600), mutated()]) {
        if let Ok(Some(h)) = parse_head(&bytes, &LIMITS) {
            prop_assert!(h.head_len <= bytes.len());
            for span in [h.path, h.query, h.user_agent, h.referer, h.content_type] {
                prop_assert!(span.start <= span.end && span.end as usize <= h.head_len);
            }
            prop_assert!(h.content_length <= LIMITS.max_body_bytes);
        }
    }

    #[test]
    fn any_parameters_encode_to_valid_json(query in proptest::collection::vec(any::<u8>(), 0..300), ua in proptest::collection::vec(any::<u8>(), 0..80)) {
        let auditor = Auditor::new(&Config::embedded());
        let catalogs = Catalogs::default();
        let mut params = Params::with_capacity(16);
        if params.parse_urlencoded(&query, 16).is_ok() {
            for route in [Route::Pixel, Route::Click, Route::Beacon] {
                let verdict = auditor.audit(&params, route, &catalogs);
                let env = Envelope { node: "n", stream: 0, seq: 1, ts_ms: 2, ip: None, user_agent: &ua, referer: &ua, withheld_param: b"uid" };
                let mut out = Vec::new();
                record::encode(&mut out, &env, &verdict, &params);
                let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
                prop_assert!(v["id"].is_string() && v["issues"].is_array());
            }
        }
    }

    #[test]
    fn redirect_targets_never_panic(target in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Some(host) = trackplane::audit::redirect::target_host(&target) {
            // Whatever is accepted is plain visible ASCII: safe in a header.
            prop_assert!(target.iter().all(|&b| (0x21..0x7f).contains(&b) && b != b'\\'));
            prop_assert!(!host.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn damaged_segments_are_reported_not_crashed_on(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = trackplane::segment::WriterConfig { block_max_bytes: 256, segment_max_bytes: 1 << 20, segment_max_age: std::time::Duration::from_secs(60), zstd_level: 1 };
        // Where recovery looks: <data_dir>/segments.
        let segments = dir.path().join("segments");
        std::fs::create_dir_all(&segments).unwrap();
        let mut w = trackplane::segment::StreamWriter::create(&segments, 0, "n", 0, cfg).unwrap();
        for seq in 0..40u64 {
            w.append(seq, seq, format!("{{\"seq\":{seq}}}").as_bytes()).unwrap();
            if w.block_full() { w.write_block().unwrap(); }
        }
        let path = w.path().with_extension("");
        w.close().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, b) in edits { let i = at % bytes.len(); bytes[i] ^= b | 1; }
        bytes.truncate(cut % (bytes.len() + 1));
        std::fs::write(&path, &bytes).unwrap();
        // Reading, verifying and recovering never panic; errors name offsets.
        if let Ok(mut r) = trackplane::segment::SegmentReader::open(&path) {
            loop {
                match r.next_block() {
                    Ok(Some(b)) => { let _ = b.records().count(); }
                    Ok(None) => break,
                    Err(e) => { prop_assert!(e.offset().is_some() || e.to_string().contains(&path.display().to_string())); break; }
                }
            }
        }
        // Recovery repairs or quarantines whatever it finds: it fails only
        // on I/O, never on contents.
        prop_assert!(trackplane::segment::recover(dir.path()).is_ok());
    }
}

/// Random bytes and random JSON bodies at a live server: every one gets an
/// answer or a closed connection, and the worker keeps serving.
#[test]
fn a_live_server_survives_random_requests() {
    let s = common::start(trackplane::config::Driver::Uring, "");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(150));
    let bodies = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        r#"\[(\{"adv":"[a-z]{0,5}","ev":"[a-z_]{0,8}","pid":\[("[a-z0-9]{0,4}",?){0,3}\]\},?){0,4}\]"#.prop_map(String::into_bytes),
    ];
    runner
        .run(&(mutated(), bodies), |(head, body)| {
            use std::io::{Read, Write};
            let mut c = s.connect();
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = c.write_all(&head);
            let batch = format!(
                "\r\n\r\nPOST /batch HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(batch.as_bytes());
            let _ = c.write_all(&body);
            let _ = c.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
            Ok(())
        })
        .unwrap();
    // Still serving.
    assert_eq!(s.get("/i?adv=demo").status, 200);
    assert_eq!(s.get("/healthz").status, 200);
}
