//! The small JSON writer records need: strings with escaping, integers, IPs.

use std::net::IpAddr;

/// Writes `s` as a JSON string. Invalid UTF-8 becomes U+FFFD.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    match std::str::from_utf8(s) {
        Ok(text) => write_valid(out, text.as_bytes()),
        Err(_) => write_valid(out, String::from_utf8_lossy(s).as_bytes()),
    }
}

fn write_valid(out: &mut Vec<u8>, s: &[u8]) {
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

/// Writes an unsigned integer.
#[inline]
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes an address as a JSON string without allocating.
pub fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write;
    out.push(b'"');
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{ip}");
    out.push(b'"');
}
