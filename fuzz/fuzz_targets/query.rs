//! A query string (or form body) through decoding, audit and encoding, as
//! `/i`, `/c` and `/e` handle it: nothing panics, and every record encoded
//! from whatever was decoded is valid JSON, and where the live view's scan
//! reads a record (`record::peek`) it reads what a JSON parser does. The
//! same bytes as a redirect target: the redirect check never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackplane::audit::{Auditor, Catalogs, Route};
use trackplane::config::Config;
use trackplane::http::Params;
use trackplane::record::{self, Envelope};

thread_local! {
    static AUDITOR: Auditor = Auditor::new(&Config::embedded());
}

fuzz_target!(|data: &[u8]| {
    let _ = trackplane::audit::redirect::target_host(data);
    let mut params = Params::with_capacity(32);
    if params.parse_urlencoded(data, 32).is_err() {
        return;
    }
    let catalogs = Catalogs::default();
    AUDITOR.with(|auditor| {
        for route in [Route::Pixel, Route::Click, Route::Beacon] {
            let verdict = auditor.audit(&params, route, &catalogs);
            let env = Envelope {
                node: "edge-1",
                stream: 0,
                seq: 1,
                ts_ms: 2,
                ip: None,
                user_agent: data,
                referer: data,
                withheld_param: b"uid",
            };
            let mut out = Vec::new();
            record::encode(&mut out, &env, &verdict, &params);
            let parsed = match serde_json::from_slice::<serde_json::Value>(&out) {
                Ok(v) => v,
                Err(e) => panic!("{e}: {}", String::from_utf8_lossy(&out)),
            };
            let mut slots = [None; trackplane::audit::Issues::CAP];
            if let Some((ts, t, a, st)) = record::peek::ts_head_and_issues(&out, &mut slots) {
                let text = String::from_utf8_lossy(&out);
                // The scan hands out the record's bytes; the view shows
                // them as text, so they must be UTF-8.
                let utf8 = |b: &'_ [u8]| -> String {
                    match std::str::from_utf8(b) {
                        Ok(s) => s.to_owned(),
                        Err(e) => panic!("{e}: {text}"),
                    }
                };
                assert_eq!(parsed["ts_ms"], ts, "{text}");
                assert_eq!(parsed["type"], utf8(t), "{text}");
                assert_eq!(parsed["advertiser"], utf8(a), "{text}");
                assert_eq!(parsed["status"], utf8(st), "{text}");
                let issues = parsed["issues"].as_array().unwrap();
                let read = slots.iter().flatten().count();
                assert_eq!(read, issues.len().min(slots.len()), "{text}");
                for (&(code, param, value), i) in slots.iter().flatten().zip(issues) {
                    assert_eq!(i["code"], utf8(code), "{text}");
                    assert_eq!(i["param"], utf8(param), "{text}");
                    assert_eq!(i["value"].as_str().unwrap_or(""), utf8(value), "{text}");
                }
            }
        }
    });
});
