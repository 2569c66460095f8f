//! Request heads: httparse does the parsing; this file turns its borrowed
//! slices into offsets (so the buffer stays free to move) and enforces the
//! limits that decide 414, 431, 413 and 400.

use memchr::memchr;

/// A byte range of the connection's read buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// The bytes this span covers in `buf`.
    #[inline]
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// Whether the span covers nothing.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn within(buf: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }
}

/// The request methods trackplane routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: answered like GET, without a body.
    Head,
    /// POST.
    Post,
    /// Anything else: always 405.
    Other,
}

/// Limits on a request head and body.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line.
    pub max_request_line_bytes: usize,
    /// Longest head.
    pub max_header_bytes: usize,
    /// Most header fields; at most [`MAX_HEADERS`].
    pub max_headers: usize,
    /// Largest body.
    pub max_body_bytes: usize,
}

/// The hard ceiling on header fields (a stack array of this many entries).
pub const MAX_HEADERS: usize = 256;

/// A parsed request head: offsets into the buffer it was parsed from.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead {
    /// Method.
    pub method: Method,
    /// Path, without the query.
    pub path: Span,
    /// Query string, without the `?`; empty when absent.
    pub query: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
    /// Bytes of the body that follows the head (for a chunked body: 0
    /// until the connection loop has decoded it).
    pub content_length: usize,
    /// The body is `Transfer-Encoding: chunked` (see `http::chunked`).
    pub chunked: bool,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `User-Agent`.
    pub user_agent: Span,
    /// `Referer`.
    pub referer: Span,
    /// `Content-Type`.
    pub content_type: Span,
    /// `DNT: 1` or `Sec-GPC: 1`.
    pub do_not_track: bool,
}

/// Why a head can't be answered normally. Each maps to one status; none
/// allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x syntax (bad method, target, version or header): 400.
    #[error("malformed request")]
    Malformed,
    /// The request line is longer than allowed: 414.
    #[error("request line too long")]
    UriTooLong,
    /// Too many header fields or too many header bytes: 431.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The declared body is larger than allowed: 413.
    #[error("request body too large")]
    BodyTooLarge,
    /// A transfer coding under `chunked` (`gzip, chunked`): 501.
    #[error("transfer coding not implemented")]
    NotImplemented,
}

/// The transfer codings a request names, over all its `Transfer-Encoding`
/// fields (one list, RFC 9110 §5.3), as far as framing needs them.
#[derive(Default)]
struct Codings {
    /// Whether a `Transfer-Encoding` field was sent.
    present: bool,
    /// Codings named, empty list elements aside.
    named: usize,
    /// Times `chunked` was named.
    chunked: usize,
    /// Whether the last coding named is `chunked`.
    chunked_last: bool,
}

impl Codings {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        for coding in value.split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.named += 1;
            self.chunked += usize::from(chunked);
            self.chunked_last = chunked;
        }
    }

    /// Whether the body is chunked. A body whose last coding is not
    /// `chunked` (an empty list included), or that is chunked twice, has
    /// no length a server can rely on: 400 (RFC 9112 §6.3, §6.1). One
    /// chunked over another coding (`gzip, chunked`) is framed, but its
    /// coding is one this server does not decode: 501.
    fn framing(&self) -> Result<bool, HeadError> {
        match (self.present, self.chunked, self.chunked_last) {
            (false, _, _) => Ok(false),
            (_, 1, true) if self.named == 1 => Ok(true),
            (_, 1, true) => Err(HeadError::NotImplemented),
            _ => Err(HeadError::Malformed),
        }
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)` means the head is
/// not complete yet: read more (unless `buf` already holds the limit).
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    // Uninitialized: zeroing 256 entries (8 KiB) per request cost more
    // than parsing a pixel call's head.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let limit = limits.max_headers.min(MAX_HEADERS);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers[..limit]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            let line_end = memchr(b'\n', buf);
            return match line_end {
                None if buf.len() > limits.max_request_line_bytes => Err(HeadError::UriTooLong),
                Some(n) if n > limits.max_request_line_bytes => Err(HeadError::UriTooLong),
                _ if buf.len() > limits.max_header_bytes => Err(HeadError::HeadersTooLarge),
                _ => Ok(None),
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadersTooLarge),
        Err(_) => {
            // A line too long to be a line is reported as such even when
            // httparse first trips over something else in it.
            return match memchr(b'\n', buf) {
                Some(n) if n > limits.max_request_line_bytes => Err(HeadError::UriTooLong),
                _ => Err(HeadError::Malformed),
            };
        }
    };
    if memchr(b'\n', buf).is_some_and(|n| n > limits.max_request_line_bytes) {
        return Err(HeadError::UriTooLong);
    }
    if head_len > limits.max_header_bytes {
        return Err(HeadError::HeadersTooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let target = origin_form(req.path.ok_or(HeadError::Malformed)?.as_bytes())?;
    let (path, query) = match memchr(b'?', target) {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &target[target.len()..]),
    };
    let minor_version = req.version.ok_or(HeadError::Malformed)?;
    let mut head = RequestHead {
        method,
        path: Span::within(buf, path),
        query: Span::within(buf, query),
        minor_version,
        head_len,
        content_length: 0,
        chunked: false,
        keep_alive: minor_version == 1,
        expect_continue: false,
        user_agent: Span::default(),
        referer: Span::default(),
        content_type: Span::default(),
        do_not_track: false,
    };
    let mut seen_length = false;
    let mut codings = Codings::default();
    let mut hosts = 0u32;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            3 if name.eq_ignore_ascii_case(b"dnt") => head.do_not_track |= value == b"1",
            7 if name.eq_ignore_ascii_case(b"sec-gpc") => head.do_not_track |= value == b"1",
            6 if name.eq_ignore_ascii_case(b"expect") => {
                head.expect_continue = value.eq_ignore_ascii_case(b"100-continue")
            }
            7 if name.eq_ignore_ascii_case(b"referer") => head.referer = Span::within(buf, value),
            10 if name.eq_ignore_ascii_case(b"user-agent") => {
                head.user_agent = Span::within(buf, value)
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = trim(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && minor_version == 0 {
                        head.keep_alive = true;
                    }
                }
            }
            12 if name.eq_ignore_ascii_case(b"content-type") => {
                head.content_type = Span::within(buf, value)
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = parse_length(value).ok_or(HeadError::Malformed)?;
                if seen_length && n != head.content_length {
                    return Err(HeadError::Malformed);
                }
                seen_length = true;
                head.content_length = n;
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => codings.add(value),
            _ => {}
        }
    }
    head.chunked = codings.framing()?;
    // Both framings at once is how requests are smuggled past proxies;
    // HTTP/1.0 has no chunked coding (RFC 9112 §6.1, §6.3).
    if head.chunked && (seen_length || minor_version == 0) {
        return Err(HeadError::Malformed);
    }
    // An HTTP/1.1 request names its host once, an HTTP/1.0 one at most
    // once (RFC 9112 §3.2), as nginx also requires.
    if hosts > 1 || (hosts == 0 && minor_version == 1) {
        return Err(HeadError::Malformed);
    }
    if head.content_length > limits.max_body_bytes {
        return Err(HeadError::BodyTooLarge);
    }
    Ok(Some(head))
}

/// The path and query of a request target: the target itself in origin
/// form (`/i?adv=a`), or what follows the authority in absolute form
/// (`http://host/i?adv=a`), which a server must accept too (RFC 9112
/// §3.2.2); the host it names is not used. Anything else (`*`, authority
/// form) is no request this server answers.
fn origin_form(target: &[u8]) -> Result<&[u8], HeadError> {
    if target.first() == Some(&b'/') {
        return Ok(target);
    }
    let after = [&b"http://"[..], b"https://"]
        .iter()
        .find(|scheme| {
            target
                .get(..scheme.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(scheme))
        })
        .map(|scheme| &target[scheme.len()..])
        .ok_or(HeadError::Malformed)?;
    // The authority, never empty, ends at the path or, with no path, at
    // the query.
    match after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len())
    {
        0 => Err(HeadError::Malformed),
        n => Ok(&after[n..]),
    }
}

fn parse_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0usize, |n, d| n * 10 + (d - b'0') as usize))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_request_line_bytes: 64,
        max_header_bytes: 256,
        max_headers: 8,
        max_body_bytes: 100,
    };

    fn parse(s: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_head(s, &L)
    }

    #[test]
    fn complete_get_with_query_and_headers() {
        let buf = b"GET /i?adv=a&ev=x HTTP/1.1\r\nHost: x\r\nUser-Agent: ua/1\r\nReferer: http://r/\r\nDNT: 1\r\n\r\nrest";
        let h = parse(buf).unwrap().unwrap();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path.of(buf), b"/i");
        assert_eq!(h.query.of(buf), b"adv=a&ev=x");
        assert_eq!(h.user_agent.of(buf), b"ua/1");
        assert_eq!(h.referer.of(buf), b"http://r/");
        assert!(h.do_not_track && h.keep_alive);
        assert_eq!(&buf[h.head_len..], b"rest");
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(
            parse(b"GET /i HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .map(|h| h.head_len),
            None
        );
        assert_eq!(parse(b"GE").unwrap().map(|h| h.head_len), None);
    }

    #[test]
    fn keep_alive_rules_for_both_versions() {
        let h = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn limits_map_to_their_errors() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100));
        assert_eq!(parse(long.as_bytes()).unwrap_err(), HeadError::UriTooLong);
        assert_eq!(
            parse(&long.as_bytes()[..80]).unwrap_err(),
            HeadError::UriTooLong
        );
        let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse(req.as_bytes()).unwrap_err(),
            HeadError::HeadersTooLarge
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "v".repeat(300));
        assert_eq!(
            parse(big.as_bytes()).unwrap_err(),
            HeadError::HeadersTooLarge
        );
        let body = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n";
        assert_eq!(parse(body).unwrap_err(), HeadError::BodyTooLarge);
        let chunked = b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert!(parse(chunked).unwrap().unwrap().chunked);
        let listed = b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: , chunked\r\n\r\n";
        assert!(parse(listed).unwrap().unwrap().chunked);
        for (bad, why) in [
            (&b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..], HeadError::NotImplemented),
            (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::NotImplemented),
            // The last coding not chunked, or chunked twice: no length to
            // rely on (RFC 9112 §6.3, §6.1).
            (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", HeadError::Malformed),
            (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", HeadError::Malformed),
            (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::Malformed),
            (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", HeadError::Malformed),
            (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\nContent-Length: 2\r\n\r\n", HeadError::Malformed),
            (b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", HeadError::Malformed),
            (b"POST /e HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::Malformed),
        ] {
            assert_eq!(parse(bad).unwrap_err(), why);
        }
    }

    #[test]
    fn malformed_heads_are_rejected() {
        for bad in [
            &b"GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
            // Host: none in HTTP/1.1, two in either version.
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: x\r\nHost: x\r\n\r\n",
            // Targets other than origin and absolute form.
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http:/x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http:///i HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http:// HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(parse(bad).unwrap_err(), HeadError::Malformed, "{bad:?}");
        }
    }

    /// Absolute-form targets are answered as their path and query (RFC
    /// 9112 §3.2.2); an HTTP/1.0 request may leave out Host.
    #[test]
    fn absolute_targets_and_hostless_http_1_0() {
        for (req, path, query) in [
            (
                &b"GET http://x/i?adv=a HTTP/1.1\r\nHost: y\r\n\r\n"[..],
                &b"/i"[..],
                &b"adv=a"[..],
            ),
            (
                b"GET HTTPS://x:443/c HTTP/1.1\r\nHost: y\r\n\r\n",
                b"/c",
                b"",
            ),
            (
                b"GET http://x?adv=a HTTP/1.1\r\nHost: y\r\n\r\n",
                b"",
                b"adv=a",
            ),
            (b"GET http://x HTTP/1.1\r\nHost: y\r\n\r\n", b"", b""),
            (b"GET /i?adv=a HTTP/1.0\r\n\r\n", b"/i", b"adv=a"),
        ] {
            let h = parse(req).unwrap().unwrap();
            assert_eq!((h.path.of(req), h.query.of(req)), (path, query), "{req:?}");
        }
    }

    #[test]
    fn other_methods_parse_and_are_marked() {
        let h = parse(b"DELETE /i HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::Other);
    }
}
