//! The small JSON writer records need: strings with escaping, integers, IPs.
//! Strings are most of a record's bytes (user agent, referer, parameter
//! values) and nearly all of them are plain ASCII, so runs that need no
//! escaping are found eight bytes at a time and copied whole.

use std::net::IpAddr;

/// Writes `s` as a JSON string. Invalid UTF-8 becomes U+FFFD.
/// Returns whether `s` was written as it is, between the quotes.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) -> bool {
    if !all_plain(s) {
        write_unusual(out, s);
        return false;
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
    true
}

/// Whether every byte of `s` is [`plain`], tested a word at a time with no
/// byte-at-a-time tail: the bytes past the last whole word are tested in
/// the word that ends where `s` ends (overlapping bytes already tested),
/// and a string shorter than a word in one word its own bytes fill
/// ([`crate::word::short`], with `a`, itself plain, in any place left, so
/// the word is plain exactly when `s` is). Most of a record's strings are
/// short (parameter names and values): a tail tested a byte at a time,
/// and copied as it went, was most of `write_str`'s instructions
/// (bench/instructions.sh).
#[inline]
fn all_plain(s: &[u8]) -> bool {
    const FILL: u64 = u64::from_ne_bytes([b'a'; 8]);
    let Some(last) = s.last_chunk::<8>() else {
        return plain_word(crate::word::short(s, FILL));
    };
    let (words, _) = s.as_chunks::<8>();
    words.iter().all(|w| plain_word(u64::from_ne_bytes(*w)))
        && plain_word(u64::from_ne_bytes(*last))
}

/// Writes a string that is not all printable ASCII: validated, then
/// escaped where needed.
fn write_unusual(out: &mut Vec<u8>, s: &[u8]) {
    match std::str::from_utf8(s) {
        Ok(text) => write_valid(out, text.as_bytes()),
        Err(_) => write_valid(out, String::from_utf8_lossy(s).as_bytes()),
    }
}

/// Writes valid UTF-8 `s` as a JSON string: runs of [`plain`] bytes
/// whole, every other byte through [`write_escaped`].
fn write_valid(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let mut rest = s;
    loop {
        let n = plain_run(rest);
        out.extend_from_slice(&rest[..n]);
        let Some((&b, tail)) = rest[n..].split_first() else {
            break;
        };
        write_escaped(out, b);
        rest = tail;
    }
    out.push(b'"');
}

/// Writes one byte of a valid UTF-8 string that [`plain`] refuses: `"`,
/// `\`, control characters and DEL escaped, a byte of a multi-byte
/// character as it is.
fn write_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0..=0x1f | 0x7f => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 15)],
        ]),
        _ => out.push(b),
    }
}

/// Whether `b` is printable ASCII other than `"` and `\`.
#[inline]
fn plain(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
}

/// Whether all eight bytes of `w` are [`plain`].
#[inline]
fn plain_word(w: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Boolean-exact byte tests (each sets a high bit somewhere iff some
    // byte matches; carries only start at a byte that matches anyway).
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let del_or_high = (w.wrapping_add(ONES) | w) & HIGH;
    below_space
        | del_or_high
        | zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
        == 0
}

/// Length of the leading run of [`plain`] bytes, tested a word at a time.
#[inline]
fn plain_run(s: &[u8]) -> usize {
    let mut i = 0;
    while let Some(word) = s.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        if !plain_word(u64::from_ne_bytes(*word)) {
            break;
        }
        i += 8;
    }
    i + s[i..].iter().take_while(|&&b| plain(b)).count()
}

/// Writes an unsigned integer.
#[inline]
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes an address as a JSON string without allocating.
pub fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        // Four numbers: cheaper by hand than through `fmt` or `itoa`
        // (whose buffer is copied out by a `memcpy` call per octet), and
        // into a buffer of their own that is copied once: a push a byte
        // checked the vector's room up to seventeen times.
        IpAddr::V4(v4) => {
            let mut buf = [0u8; b"\"255.255.255.255\"".len()];
            let mut n = 0;
            let mut put = |b: u8| {
                buf[n] = b;
                n += 1;
            };
            put(b'"');
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    put(b'.');
                }
                if octet >= 100 {
                    put(b'0' + octet / 100);
                }
                if octet >= 10 {
                    put(b'0' + octet / 10 % 10);
                }
                put(b'0' + octet % 10);
            }
            put(b'"');
            out.extend_from_slice(&buf[..n]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a Vec cannot fail.
            let _ = write!(out, "\"{v6}\"");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The byte-at-a-time writer the word-at-a-time one must match.
    fn reference(s: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(s);
        let mut out = vec![b'"'];
        for c in text.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\0'..='\x1f' | '\x7f' => {
                    out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
                }
                _ => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        out.push(b'"');
        out
    }

    /// What `write_str` adds after what the output already holds.
    fn written(s: &[u8]) -> Vec<u8> {
        let mut out = b"[1,".to_vec();
        write_str(&mut out, s);
        out.split_off(3)
    }

    #[test]
    fn every_special_byte_at_every_offset_of_a_word() {
        let specials: Vec<u8> = (0..0x20)
            .chain([b'"', b'\\', 0x7f, 0x80, 0xc3, 0xff])
            .collect();
        // Every way a string is tested: shorter than a word (through each
        // arm of `word::short`), a word or more with and without a tail.
        for len in (1..=17).chain([40]) {
            for &b in &specials {
                for at in 0..len {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(written(&s), reference(&s), "byte {b:#x} at {at} of {len}");
                }
            }
        }
        // Bytes next to each boundary the word tests use.
        for b in [
            0x1f_u8, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7e, 0x7f, 0x80,
        ] {
            let s = [b; 17];
            assert_eq!(written(&s), reference(&s), "byte {b:#x}");
        }
        assert_eq!(
            written("grüße, 東京 \u{1F600}".as_bytes()),
            reference("grüße, 東京 \u{1F600}".as_bytes())
        );
        assert_eq!(written(b""), b"\"\"");
    }

    proptest! {
        #[test]
        fn matches_the_byte_at_a_time_writer(s in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(written(&s), reference(&s));
        }

        #[test]
        fn mostly_ascii_matches_and_parses(s in "[ -~]{0,40}[\\x00-\\x{10FFFF}]?[ -~]{0,40}") {
            let out = written(s.as_bytes());
            prop_assert_eq!(&out, &reference(s.as_bytes()));
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn addresses_read_as_std_writes_them(v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>()) {
            // The longest and shortest IPv4 too, every run.
            let edges = [IpAddr::from([255; 4]), IpAddr::from([0; 4])];
            for ip in [IpAddr::from(v4), IpAddr::from(v6)].into_iter().chain(edges) {
                let mut out = Vec::new();
                write_ip(&mut out, ip);
                prop_assert_eq!(out, format!("\"{ip}\"").into_bytes());
            }
        }
    }
}
