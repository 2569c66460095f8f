//! Responses, written into the connection's output buffer. Static parts are
//! constants; only `Date`, lengths and `Location` vary.

use super::date::HttpDate;

/// The statuses trackplane answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 204.
    NoContent,
    /// 302.
    Found,
    /// 400.
    BadRequest,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 408.
    RequestTimeout,
    /// 501.
    NotImplemented,
    /// 413.
    PayloadTooLarge,
    /// 414.
    UriTooLong,
    /// 431.
    HeadersTooLarge,
    /// 500.
    Internal,
    /// 503.
    Unavailable,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::NoContent => 204,
            Status::Found => 302,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::NotImplemented => 501,
            Status::PayloadTooLarge => 413,
            Status::UriTooLong => 414,
            Status::HeadersTooLarge => 431,
            Status::Internal => 500,
            Status::Unavailable => 503,
        }
    }

    fn line(self) -> &'static [u8] {
        match self {
            Status::Ok => b"HTTP/1.1 200 OK\r\n",
            Status::NoContent => b"HTTP/1.1 204 No Content\r\n",
            Status::Found => b"HTTP/1.1 302 Found\r\n",
            Status::BadRequest => b"HTTP/1.1 400 Bad Request\r\n",
            Status::NotFound => b"HTTP/1.1 404 Not Found\r\n",
            Status::MethodNotAllowed => b"HTTP/1.1 405 Method Not Allowed\r\n",
            Status::RequestTimeout => b"HTTP/1.1 408 Request Timeout\r\n",
            Status::NotImplemented => b"HTTP/1.1 501 Not Implemented\r\n",
            Status::PayloadTooLarge => b"HTTP/1.1 413 Payload Too Large\r\n",
            Status::UriTooLong => b"HTTP/1.1 414 URI Too Long\r\n",
            Status::HeadersTooLarge => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Status::Internal => b"HTTP/1.1 500 Internal Server Error\r\n",
            Status::Unavailable => b"HTTP/1.1 503 Service Unavailable\r\n",
        }
    }

    /// The reason phrase, as a short body for error answers.
    pub fn reason(self) -> &'static str {
        let line = self.line();
        std::str::from_utf8(&line[13..line.len() - 2]).unwrap_or("")
    }
}

/// nginx's `empty_gif`: a 1x1 transparent GIF, 43 bytes.
pub const EMPTY_GIF: [u8; 43] = [
    b'G', b'I', b'F', b'8', b'9', b'a', 0x01, 0x00, 0x01, 0x00, 0x80, 0x01, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x01, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x4c, 0x01, 0x00, 0x3b,
];

macro_rules! no_cache {
    () => {
        "Cache-Control: no-cache, no-store, must-revalidate\r\nPragma: no-cache\r\nExpires: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
    };
}
const NO_CACHE: &[u8] = no_cache!().as_bytes();

/// The pixel's answer is the same bytes every time but for its `Date`:
/// what comes before the date, and after it (kept alive or closing) up to
/// the GIF. Written whole, four copies instead of ten and a number
/// formatted; a pixel is most of what a node answers.
const GIF_BEFORE_DATE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: trackplane\r\nDate: ";
macro_rules! gif_after_date {
    ($connection:literal) => {
        concat!(
            "\r\nConnection: ",
            $connection,
            "\r\nContent-Type: image/gif\r\n",
            no_cache!(),
            "Content-Length: 43\r\n\r\n"
        )
        .as_bytes()
    };
}
const GIF_AFTER_DATE_KEEP: &[u8] = gif_after_date!("keep-alive");
const GIF_AFTER_DATE_CLOSE: &[u8] = gif_after_date!("close");

/// Writes the response start: status line, `Server`, `Date`, `Connection`.
fn start(out: &mut Vec<u8>, status: Status, date: &HttpDate, keep_alive: bool) {
    out.extend_from_slice(status.line());
    out.extend_from_slice(b"Server: trackplane\r\nDate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(if keep_alive {
        b"\r\nConnection: keep-alive\r\n"
    } else {
        b"\r\nConnection: close\r\n"
    });
}

fn content_length(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(b"Content-Length: ");
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(n).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// 200 with the transparent GIF and no-cache headers.
pub fn gif(out: &mut Vec<u8>, date: &HttpDate, keep_alive: bool, head_only: bool) {
    out.extend_from_slice(GIF_BEFORE_DATE);
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(if keep_alive {
        GIF_AFTER_DATE_KEEP
    } else {
        GIF_AFTER_DATE_CLOSE
    });
    if !head_only {
        out.extend_from_slice(&EMPTY_GIF);
    }
}

/// 302 to `location`, which the caller has checked holds no CR, LF or
/// control byte.
pub fn redirect(out: &mut Vec<u8>, date: &HttpDate, keep_alive: bool, location: &[u8]) {
    start(out, Status::Found, date, keep_alive);
    out.extend_from_slice(b"Location: ");
    out.extend_from_slice(location);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(NO_CACHE);
    content_length(out, 0);
}

/// A body-less status (204, or a 200 for `/healthz`).
pub fn empty(out: &mut Vec<u8>, status: Status, date: &HttpDate, keep_alive: bool) {
    start(out, status, date, keep_alive);
    if status == Status::NoContent {
        out.extend_from_slice(NO_CACHE);
        out.extend_from_slice(b"\r\n");
    } else {
        content_length(out, 0);
    }
}

/// A JSON body with an optional `Retry-After`.
pub fn json(
    out: &mut Vec<u8>,
    status: Status,
    date: &HttpDate,
    keep_alive: bool,
    retry_after_s: Option<u32>,
    body: &[u8],
) {
    start(out, status, date, keep_alive);
    out.extend_from_slice(b"Content-Type: application/json\r\nCache-Control: no-store\r\n");
    if let Some(s) = retry_after_s {
        out.extend_from_slice(b"Retry-After: ");
        out.extend_from_slice(itoa::Buffer::new().format(s).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    content_length(out, body.len());
    out.extend_from_slice(body);
}

/// An error status with its reason as a plain-text body. `allow` adds the
/// `Allow` header a 405 needs.
pub fn error(
    out: &mut Vec<u8>,
    status: Status,
    date: &HttpDate,
    keep_alive: bool,
    allow: Option<&str>,
) {
    start(out, status, date, keep_alive);
    if let Some(methods) = allow {
        out.extend_from_slice(b"Allow: ");
        out.extend_from_slice(methods.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status == Status::Unavailable {
        out.extend_from_slice(b"Retry-After: 1\r\n");
    }
    out.extend_from_slice(b"Content-Type: text/plain\r\n");
    let reason = status.reason().as_bytes();
    content_length(out, reason.len() + 1);
    out.extend_from_slice(reason);
    out.push(b'\n');
}

/// `100 Continue`, for a client that waits before sending its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gif_response_is_exact() {
        let mut out = Vec::new();
        gif(&mut out, &HttpDate::default(), true, false);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("\r\nContent-Type: image/gif\r\n"));
        assert!(text.contains("\r\nContent-Length: 43\r\n\r\n"));
        assert!(text.contains("Cache-Control: no-cache, no-store, must-revalidate"));
        assert!(out.ends_with(&EMPTY_GIF));
        assert_eq!(EMPTY_GIF.len(), 43);
    }

    #[test]
    fn gif_written_whole_is_the_answer_written_header_by_header() {
        let date = HttpDate::default();
        for (keep_alive, head_only) in [(true, false), (false, false), (true, true), (false, true)]
        {
            let mut by_parts = Vec::new();
            start(&mut by_parts, Status::Ok, &date, keep_alive);
            by_parts.extend_from_slice(b"Content-Type: image/gif\r\n");
            by_parts.extend_from_slice(NO_CACHE);
            content_length(&mut by_parts, EMPTY_GIF.len());
            if !head_only {
                by_parts.extend_from_slice(&EMPTY_GIF);
            }
            let mut whole = Vec::new();
            gif(&mut whole, &date, keep_alive, head_only);
            assert_eq!(
                String::from_utf8_lossy(&whole),
                String::from_utf8_lossy(&by_parts),
                "keep-alive {keep_alive}, HEAD {head_only}"
            );
        }
    }

    #[test]
    fn reasons_come_from_status_lines() {
        assert_eq!(
            Status::HeadersTooLarge.reason(),
            "Request Header Fields Too Large"
        );
        assert_eq!(Status::Ok.reason(), "OK");
    }

    #[test]
    fn error_has_allow_and_length() {
        let mut out = Vec::new();
        error(
            &mut out,
            Status::MethodNotAllowed,
            &HttpDate::default(),
            false,
            Some("GET, HEAD"),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Allow: GET, HEAD\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("Content-Length: 19\r\n\r\nMethod Not Allowed\n"));
    }
}
