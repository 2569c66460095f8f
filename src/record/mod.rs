//! Event records: the JSON object stored per event and sent to Kafka as the
//! message value, byte for byte. Keys are stable (DESIGN.md, "Event record");
//! new keys may be added, none renamed.
//!
//! Encoding writes into a caller's reused buffer and allocates only to
//! repair invalid UTF-8 (replaced with U+FFFD).

pub mod json;
pub mod peek;

use std::net::IpAddr;
use std::ops::Range;

use crate::audit::Verdict;
use crate::config::IpPolicy;
use crate::http::Params;
use json::{write_str, write_u64};

/// Where and when an event was received, beside its parameters.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// Node name.
    pub node: &'a str,
    /// Stream (worker) number.
    pub stream: u32,
    /// Sequence number within the stream.
    pub seq: u64,
    /// Receive time, Unix milliseconds.
    pub ts_ms: u64,
    /// Client address as it will be stored (already truncated), if kept.
    pub ip: Option<IpAddr>,
    /// `User-Agent`, empty when absent or not kept.
    pub user_agent: &'a [u8],
    /// `Referer`, empty when absent.
    pub referer: &'a [u8],
    /// A parameter left out of `params` for privacy (the user id), or empty.
    pub withheld_param: &'a [u8],
}

/// Where [`encode`] wrote the event type's and the advertiser's values
/// (between their quotes), as offsets into the record: what the live view
/// reads instead of scanning the record for them (`view::fold::entry_head`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spans {
    /// `type`'s value.
    pub event_type: Range<usize>,
    /// `advertiser`'s value.
    pub advertiser: Range<usize>,
}

/// Appends the record of one audited event to `out`. Returns where its
/// type and advertiser are, unless either had to be escaped.
pub fn encode(
    out: &mut Vec<u8>,
    env: &Envelope<'_>,
    verdict: &Verdict<'_>,
    params: &Params,
) -> Option<Spans> {
    let start = out.len();
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(env.node.as_bytes());
    out.push(b'-');
    write_u64(out, u64::from(env.stream));
    out.push(b'-');
    write_u64(out, env.seq);
    out.extend_from_slice(b"\",\"ts_ms\":");
    write_u64(out, env.ts_ms);
    out.extend_from_slice(b",\"type\":");
    let type_at = out.len() + 1 - start;
    let type_plain = write_str(out, verdict.event_type);
    out.extend_from_slice(b",\"advertiser\":");
    let advertiser_at = out.len() + 1 - start;
    let advertiser_plain = write_str(out, verdict.advertiser);
    let spans = (type_plain && advertiser_plain).then(|| Spans {
        event_type: type_at..type_at + verdict.event_type.len(),
        advertiser: advertiser_at..advertiser_at + verdict.advertiser.len(),
    });
    out.extend_from_slice(if verdict.issues.is_empty() {
        b",\"status\":\"ok\",\"issues\":["
    } else {
        b",\"status\":\"invalid\",\"issues\":["
    });
    write_issues(out, verdict.issues.iter());
    out.extend_from_slice(b"],\"params\":{");
    let mut first = true;
    for (k, v) in params.iter() {
        if !env.withheld_param.is_empty() && k == env.withheld_param {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, k);
        out.push(b':');
        write_str(out, v);
    }
    out.extend_from_slice(b"},\"products\":[");
    if !verdict.products.is_empty() {
        for (i, p) in verdict.products.split(|&b| b == b',').enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, p);
        }
    }
    out.extend_from_slice(b"],\"ip\":");
    match env.ip {
        Some(ip) => json::write_ip(out, ip),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"user_agent\":");
    write_str(out, env.user_agent);
    out.extend_from_slice(b",\"referer\":");
    write_str(out, env.referer);
    out.extend_from_slice(b",\"node\":");
    write_str(out, env.node.as_bytes());
    out.push(b'}');
    spans
}

/// Writes issues as the elements of a JSON array (without brackets):
/// `{"code":..,"param":..[,"value":..]}`, as records and `/batch` answers
/// carry them.
pub fn write_issues<'i, 'a: 'i>(
    out: &mut Vec<u8>,
    issues: impl IntoIterator<Item = &'i crate::audit::Issue<'a>>,
) {
    for (i, issue) in issues.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"code\":\"");
        out.extend_from_slice(issue.code.as_str().as_bytes());
        out.extend_from_slice(b"\",\"param\":");
        write_str(out, issue.param);
        if !issue.value.is_empty() {
            out.extend_from_slice(b",\"value\":");
            write_str(out, issue.value);
        }
        out.push(b'}');
    }
}

/// The client address as the policy keeps it.
pub fn keep_ip(ip: IpAddr, policy: IpPolicy) -> Option<IpAddr> {
    match (policy, ip) {
        (IpPolicy::Drop, _) => None,
        (IpPolicy::Full, ip) => Some(ip),
        (IpPolicy::Truncate, IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            Some(IpAddr::from([a, b, c, 0]))
        }
        (IpPolicy::Truncate, IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => keep_ip(IpAddr::V4(v4), policy),
            None => {
                let s = v6.segments();
                Some(IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0]))
            }
        },
    }
}

/// The pixel request `query` audited by the embedded configuration (no
/// catalogs), appended to `out` as [`encode`] writes it; with whether the
/// event was valid. For tests of what reads records.
#[cfg(test)]
pub(crate) fn encode_query(
    out: &mut Vec<u8>,
    env: &Envelope<'_>,
    query: &str,
) -> (Option<Spans>, bool) {
    use crate::audit::{Auditor, Catalogs, Route};
    let auditor = Auditor::new(&crate::config::Config::embedded());
    let mut params = Params::with_capacity(16);
    params.parse_urlencoded(query.as_bytes(), 16).unwrap();
    let catalogs = Catalogs::default();
    let verdict = auditor.audit(&params, Route::Pixel, &catalogs);
    (
        encode(out, env, &verdict, &params),
        verdict.issues.is_empty(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(query: &str, env: Envelope<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        encode_query(&mut out, &env, query);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    fn env() -> Envelope<'static> {
        Envelope {
            node: "edge-1",
            stream: 3,
            seq: 42,
            ts_ms: 1_700_000_000_123,
            ip: Some("203.0.113.0".parse().unwrap()),
            user_agent: b"Mozilla/5.0 \"quoted\"",
            referer: b"",
            withheld_param: b"",
        }
    }

    #[test]
    fn record_has_every_stable_key() {
        let r = record("adv=demo&pid=a,b&x=%E2%82%AC%0A%22", env());
        assert_eq!(r["id"], "edge-1-3-42");
        assert_eq!(r["ts_ms"], 1_700_000_000_123u64);
        assert_eq!(r["type"], "impression");
        assert_eq!(r["advertiser"], "demo");
        assert_eq!(r["status"], "invalid");
        assert_eq!(r["issues"][0]["code"], "no_catalog");
        assert_eq!(r["issues"][0]["param"], "pid");
        assert_eq!(r["params"]["x"], "€\n\"");
        assert_eq!(r["products"], serde_json::json!(["a", "b"]));
        assert_eq!(r["ip"], "203.0.113.0");
        assert_eq!(r["user_agent"], "Mozilla/5.0 \"quoted\"");
        assert_eq!(r["referer"], "");
        assert_eq!(r["node"], "edge-1");
    }

    #[test]
    fn spans_point_at_the_type_and_advertiser_unless_either_was_escaped() {
        let spans_of = |query: &str| {
            // Offsets count from the record's start, not the buffer's.
            let mut out = b"earlier bytes".to_vec();
            let (spans, _) = encode_query(&mut out, &env(), query);
            let rec = out.split_off(13);
            spans.map(|s| (rec[s.event_type].to_vec(), rec[s.advertiser].to_vec()))
        };
        assert_eq!(
            spans_of("adv=demo&ev=purchase"),
            Some((b"purchase".to_vec(), b"demo".to_vec()))
        );
        assert_eq!(
            spans_of("adv=&pid=x"),
            Some((b"impression".to_vec(), b"".to_vec()))
        );
        assert_eq!(spans_of("adv=de%22mo"), None);
        assert_eq!(spans_of("adv=demo&ev=%0A"), None);
    }

    #[test]
    fn invalid_utf8_and_controls_stay_valid_json() {
        let r = record("adv=demo&x=%FF%00%1F", Envelope { ip: None, ..env() });
        assert_eq!(r["params"]["x"], "\u{FFFD}\u{0}\u{1F}");
        assert_eq!(r["status"], "ok");
        assert!(r["ip"].is_null());
    }

    #[test]
    fn withheld_param_is_left_out() {
        let r = record(
            "adv=demo&uid=u1&k=v",
            Envelope {
                withheld_param: b"uid",
                ..env()
            },
        );
        assert!(r["params"].get("uid").is_none());
        assert_eq!(r["params"]["k"], "v");
    }

    #[test]
    fn ip_policies() {
        let v4: IpAddr = "198.51.100.77".parse().unwrap();
        let v6: IpAddr = "2001:db8:abcd:12::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.77".parse().unwrap();
        assert_eq!(
            keep_ip(v4, IpPolicy::Truncate).unwrap().to_string(),
            "198.51.100.0"
        );
        assert_eq!(
            keep_ip(v6, IpPolicy::Truncate).unwrap().to_string(),
            "2001:db8:abcd::"
        );
        assert_eq!(
            keep_ip(mapped, IpPolicy::Truncate).unwrap().to_string(),
            "198.51.100.0"
        );
        assert_eq!(keep_ip(v4, IpPolicy::Drop), None);
        assert_eq!(keep_ip(v4, IpPolicy::Full), Some(v4));
    }
}
