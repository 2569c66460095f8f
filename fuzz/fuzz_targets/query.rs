//! A query string (or form body) through decoding, audit and encoding, as
//! `/i`, `/c` and `/e` handle it: nothing panics, and every record encoded
//! from whatever was decoded is valid JSON. The same bytes as a redirect
//! target: the redirect check never panics.
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
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out) {
                panic!("{e}: {}", String::from_utf8_lossy(&out));
            }
        }
    });
});
