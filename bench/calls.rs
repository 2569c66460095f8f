//! Records exactly as the request path encodes them, for benches that need
//! many: a call's query string is parsed, audited and encoded in a fixed
//! envelope (node `edge-1`, stream 0, a truncated address).

use trackplane::audit::{Auditor, Catalogs, Route};
use trackplane::http::Params;
use trackplane::record::{self, Envelope};

/// Encodes calls against one set of rules and catalogs.
pub struct Encoder<'a> {
    auditor: &'a Auditor,
    catalogs: &'a Catalogs,
    params: Params,
}

impl<'a> Encoder<'a> {
    pub fn new(auditor: &'a Auditor, catalogs: &'a Catalogs) -> Encoder<'a> {
        Encoder {
            auditor,
            catalogs,
            params: Params::with_capacity(64),
        }
    }

    /// The record of beacon call `seq` with `query`, and its event type.
    pub fn encode(
        &mut self,
        seq: u64,
        query: &str,
        user_agent: &[u8],
        referer: &[u8],
    ) -> (Vec<u8>, String) {
        self.params.clear();
        self.params.parse_urlencoded(query.as_bytes(), 64).unwrap();
        let verdict = self
            .auditor
            .audit(&self.params, Route::Beacon, self.catalogs);
        let env = Envelope {
            node: "edge-1",
            stream: 0,
            seq,
            ts_ms: 1_700_000_000_000 + seq,
            ip: Some("203.0.113.0".parse().unwrap()),
            user_agent,
            referer,
            withheld_param: b"",
        };
        let mut out = Vec::new();
        record::encode(&mut out, &env, &verdict, &self.params);
        (
            out,
            String::from_utf8_lossy(verdict.event_type).into_owned(),
        )
    }
}
