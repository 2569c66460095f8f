//! Chunked request bodies (RFC 9112 §7.1), sans-io. [`scan`] says whether a
//! whole body is in the buffer, without touching it; [`decode`] then moves
//! the chunk data together in place (decoded data is never longer than its
//! encoding), so the handler sees a body like any other. Chunk extensions
//! are skipped; trailer fields are checked for shape and dropped.

use crate::http::HeadError;

/// Longest chunk-size line (with extensions) or trailer line.
const MAX_LINE: usize = 4096;
/// Framing bytes (size lines, CRLFs, trailers) allowed beyond the body
/// limit, so that tiny chunks can't grow the buffer without end.
const MAX_FRAMING: usize = 64 * 1024;

/// A complete chunked body at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes of the encoding, up to and including the final blank line.
    pub encoded_len: usize,
    /// Bytes of the decoded body.
    pub body_len: usize,
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Not chunked syntax: 400.
    #[error("malformed chunked body")]
    Malformed,
    /// Decoded body over the limit, or too much framing: 413.
    #[error("chunked body too large")]
    TooLarge,
}

impl From<ChunkError> for HeadError {
    fn from(e: ChunkError) -> HeadError {
        match e {
            ChunkError::Malformed => HeadError::Malformed,
            ChunkError::TooLarge => HeadError::BodyTooLarge,
        }
    }
}

/// Where a scan of a body still arriving stopped: the end of its last
/// complete chunk. The next scan of the same body (more bytes appended)
/// resumes there, so a body trickling in byte by byte costs linear time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pos: usize,
    body: usize,
}

/// Scans a chunked body at the start of `buf`, resuming at `progress`
/// (`Progress::default()` for a new body). `Ok(None)`: not complete yet,
/// read more.
pub fn scan(
    buf: &[u8],
    max_body: usize,
    progress: &mut Progress,
) -> Result<Option<Scanned>, ChunkError> {
    let max_encoded = max_body.saturating_add(MAX_FRAMING);
    let mut pos = progress.pos;
    let mut body = progress.body;
    loop {
        let Some(eol) = line_end(&buf[pos..])? else {
            return incomplete(buf, max_encoded);
        };
        let size = chunk_size(&buf[pos..pos + eol])?;
        pos += eol + 2;
        if size == 0 {
            break;
        }
        body = body.checked_add(size).ok_or(ChunkError::TooLarge)?;
        if body > max_body {
            return Err(ChunkError::TooLarge);
        }
        let end = pos + size;
        if buf.len() < end + 2 {
            return incomplete(buf, max_encoded);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ChunkError::Malformed);
        }
        pos = end + 2;
        *progress = Progress { pos, body };
    }
    // Trailer fields, then the blank line.
    loop {
        let Some(eol) = line_end(&buf[pos..])? else {
            return incomplete(buf, max_encoded);
        };
        let line = &buf[pos..pos + eol];
        pos += eol + 2;
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|&b| b == b':');
        if colon.is_none_or(|c| c == 0) || line[0] == b' ' || line[0] == b'\t' {
            return Err(ChunkError::Malformed);
        }
    }
    if pos > max_encoded {
        return Err(ChunkError::TooLarge);
    }
    Ok(Some(Scanned {
        encoded_len: pos,
        body_len: body,
    }))
}

fn incomplete(buf: &[u8], max_encoded: usize) -> Result<Option<Scanned>, ChunkError> {
    if buf.len() > max_encoded {
        Err(ChunkError::TooLarge)
    } else {
        Ok(None)
    }
}

/// Offset of the CRLF ending the line at the start of `buf`; `None` when
/// not there yet. A bare LF or CR, or a line past the limit, is malformed.
fn line_end(buf: &[u8]) -> Result<Option<usize>, ChunkError> {
    for (i, &b) in buf.iter().enumerate().take(MAX_LINE + 1) {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(ChunkError::Malformed),
                    None => Ok(None),
                }
            }
            b'\n' | 0 => return Err(ChunkError::Malformed),
            _ => {}
        }
    }
    if buf.len() > MAX_LINE {
        Err(ChunkError::Malformed)
    } else {
        Ok(None)
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, then nothing or `;` extensions
/// (after optional spaces or tabs).
fn chunk_size(line: &[u8]) -> Result<usize, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(ChunkError::Malformed);
    }
    let rest = &line[digits..];
    let ext = rest.iter().position(|&b| b != b' ' && b != b'\t');
    if let Some(i) = ext {
        if rest[i] != b';' {
            return Err(ChunkError::Malformed);
        }
    }
    Ok(line[..digits].iter().fold(0usize, |n, &d| {
        n * 16 + (d as char).to_digit(16).unwrap_or(0) as usize
    }))
}

/// Decodes the chunked body [`scan`] found complete in `buf` (its first
/// `encoded_len` bytes), in place; returns the body's length. The body is
/// then `buf[..len]`.
pub fn decode(buf: &mut [u8]) -> usize {
    let mut read = 0;
    let mut write = 0;
    loop {
        let Ok(Some(eol)) = line_end(&buf[read..]) else {
            return write;
        };
        let Ok(size) = chunk_size(&buf[read..read + eol]) else {
            return write;
        };
        read += eol + 2;
        if size == 0 || read + size > buf.len() {
            return write;
        }
        buf.copy_within(read..read + size, write);
        write += size;
        read += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(encoded: &[u8]) -> (Scanned, Vec<u8>) {
        let sc = scan(encoded, 1 << 20, &mut Progress::default())
            .unwrap()
            .expect("complete");
        let mut buf = encoded.to_vec();
        let n = decode(&mut buf[..sc.encoded_len]);
        assert_eq!(n, sc.body_len);
        buf.truncate(n);
        (sc, buf)
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let enc = b"5\r\nhello\r\n6;name=v\r\n world\r\n0\r\n\r\nNEXT";
        let (sc, body) = whole(enc);
        assert_eq!(body, b"hello world");
        assert_eq!(sc.encoded_len, enc.len() - 4);
        let enc = b"A \t;x\r\n0123456789\r\n0\r\nX-Check: 1\r\nX-More: 2\r\n\r\n";
        let (sc, body) = whole(enc);
        assert_eq!(body, b"0123456789");
        assert_eq!(sc.encoded_len, enc.len());
        assert_eq!(whole(b"0\r\n\r\n").1, b"");
    }

    #[test]
    fn malformed_bodies_are_named() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
            b"0\r\x00",
            b"0\r\nX: 1\n\r\n",
        ] {
            if let Ok(r) = scan(bad, 1 << 20, &mut Progress::default()) {
                panic!("{:?} scanned as {r:?}", String::from_utf8_lossy(bad));
            }
        }
        let long_line = [b'1'; MAX_LINE + 10];
        assert_eq!(
            scan(&long_line, 1 << 20, &mut Progress::default()),
            Err(ChunkError::Malformed)
        );
    }

    #[test]
    fn limits_hold() {
        assert_eq!(
            scan(
                b"b\r\nhello world\r\n0\r\n\r\n",
                10,
                &mut Progress::default()
            ),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(
            scan(b"fffffffffffffff\r\n", usize::MAX, &mut Progress::default()),
            Ok(None)
        );
        assert_eq!(
            scan(b"fffffffffffffff\r\n", 100, &mut Progress::default()),
            Err(ChunkError::TooLarge)
        );
        // Long extensions on tiny chunks grow nothing past the framing
        // allowance.
        let mut framing = Vec::new();
        let ext = "e".repeat(4000);
        for _ in 0..20 {
            framing.extend_from_slice(format!("1;{ext}\r\nx\r\n").as_bytes());
        }
        assert_eq!(scan(&framing, 1 << 20, &mut Progress::default()), Ok(None));
        assert_eq!(
            scan(&framing, 100, &mut Progress::default()),
            Err(ChunkError::TooLarge)
        );
    }

    proptest! {
        /// Any body in any chunking decodes to itself, and every proper
        /// prefix of its encoding is incomplete, never an error.
        #[test]
        fn round_trip(body in proptest::collection::vec(any::<u8>(), 0..600),
                      cuts in proptest::collection::vec(1usize..80, 0..20)) {
            let mut enc = Vec::new();
            let mut rest = &body[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts.get(i).copied().unwrap_or(rest.len()).min(rest.len());
                enc.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                enc.extend_from_slice(&rest[..n]);
                enc.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            enc.extend_from_slice(b"0\r\n\r\n");
            let mut progress = Progress::default();
            for cut in 0..enc.len() {
                prop_assert_eq!(scan(&enc[..cut], 1 << 20, &mut Progress::default()), Ok(None));
                // Resuming where the last scan stopped sees the same.
                prop_assert_eq!(scan(&enc[..cut], 1 << 20, &mut progress), Ok(None));
            }
            prop_assert_eq!(
                scan(&enc, 1 << 20, &mut progress),
                scan(&enc, 1 << 20, &mut Progress::default())
            );
            let (sc, decoded) = whole(&enc);
            prop_assert_eq!(sc.encoded_len, enc.len());
            prop_assert_eq!(decoded, body);
        }

        /// Untrusted bytes never panic either function.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some(sc)) = scan(&bytes, 1 << 20, &mut Progress::default()) {
                let mut buf = bytes.clone();
                prop_assert_eq!(decode(&mut buf[..sc.encoded_len]), sc.body_len);
            }
        }
    }
}
