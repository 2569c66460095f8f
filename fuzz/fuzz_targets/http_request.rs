//! A request head and, when chunked, its body, as the connection loop reads
//! them: the parser never panics, every span it returns lies inside the
//! head, and a chunked body scanned in two reads agrees with one scan.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackplane::http::chunked::{self, Progress};
use trackplane::http::{parse_head, Limits};

const LIMITS: Limits = Limits {
    max_request_line_bytes: 8192,
    max_header_bytes: 16384,
    max_headers: 64,
    max_body_bytes: 65536,
};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = parse_head(data, &LIMITS) else {
        return;
    };
    assert!(head.head_len <= data.len());
    for span in [
        head.path,
        head.query,
        head.user_agent,
        head.referer,
        head.content_type,
    ] {
        assert!(span.start <= span.end && span.end as usize <= head.head_len);
    }
    assert!(head.content_length <= LIMITS.max_body_bytes);
    if !head.chunked {
        return;
    }
    let mut body = data[head.head_len..].to_vec();
    let max = LIMITS.max_body_bytes;
    let whole = chunked::scan(&body, max, &mut Progress::default());
    let mut progress = Progress::default();
    match chunked::scan(&body[..body.len() / 2], max, &mut progress) {
        Ok(None) => assert_eq!(chunked::scan(&body, max, &mut progress), whole),
        Ok(Some(first)) => assert_eq!(Ok(Some(first)), whole),
        Err(_) => {}
    }
    if let Ok(Some(s)) = whole {
        assert!(s.encoded_len <= body.len() && s.body_len <= max);
        assert_eq!(chunked::decode(&mut body[..s.encoded_len]), s.body_len);
    }
});
