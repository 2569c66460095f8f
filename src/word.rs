//! Short byte strings read as one machine word, so that the request path
//! can compare and test them without a call into libc's `memcmp` or a
//! byte-at-a-time loop: most of what it compares (parameter names) and
//! escapes (parameter values) is a few bytes long, where the call is most
//! of the cost.

/// A word made of the bytes of `s` (shorter than eight): its first and
/// last four, two or one bytes (which may overlap), and `fill`'s bytes in
/// any place left. For one length, two strings give the same word exactly
/// when they are equal, and every byte of the word is a byte of `s` or
/// of `fill`.
#[inline]
pub fn short(s: &[u8], fill: u64) -> u64 {
    let n = s.len();
    let u16_at = |i: usize| u64::from(u16::from_ne_bytes([s[i], s[i + 1]]));
    let u32_at = |i: usize| u64::from(u32::from_ne_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]));
    match n {
        4.. => u32_at(0) | u32_at(n - 4) << 32,
        2..=3 => u16_at(0) | u16_at(n - 2) << 16 | fill << 32,
        1 => u64::from(s[0]) | fill << 8,
        0 => fill,
    }
}

/// The first eight bytes of `s` as a word, or [`short`]'s word with no
/// fill when it is shorter: equal strings give equal heads, and strings of
/// one length up to eight bytes give equal heads only when they are equal.
#[inline]
pub fn head(s: &[u8]) -> u64 {
    match s.first_chunk::<8>() {
        Some(first) => u64::from_ne_bytes(*first),
        None => short(s, 0),
    }
}

/// Whether `a` equals `b`, given each one's [`head`]: a key compared
/// against a table's keys computes its own head once, and the table keeps
/// its keys' heads.
#[inline]
pub fn equal_with_head(a: &[u8], a_head: u64, b: &[u8], b_head: u64) -> bool {
    a.len() == b.len() && a_head == b_head && (a.len() <= 8 || a[8..] == b[8..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `b` is `a` with at most one byte changed, or a string of its
        /// own, so that equal heads of unequal strings are common.
        #[test]
        fn equal_with_head_is_equality(
            a in proptest::collection::vec(b'a'..=b'b', 0..20),
            other in proptest::collection::vec(b'a'..=b'b', 0..20),
            change in proptest::option::of(any::<prop::sample::Index>()),
            own in any::<bool>(),
        ) {
            let mut b = if own { other } else { a.clone() };
            if let (Some(i), false) = (change, b.is_empty()) {
                let i = i.index(b.len());
                b[i] ^= 3;
            }
            prop_assert_eq!(equal_with_head(&a, head(&a), &b, head(&b)), a == b);
            prop_assert!(equal_with_head(&a, head(&a), &a, head(&a)));
        }
    }

    #[test]
    fn short_words_differ_where_strings_do() {
        // Every string of up to seven bytes over two letters.
        let mut all: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..8 {
            for bits in 0..1u32 << len {
                all.push((0..len).map(|i| b'a' + (bits >> i & 1) as u8).collect());
            }
        }
        for a in &all {
            for b in all.iter().filter(|b| b.len() == a.len()) {
                assert_eq!(short(a, 0) == short(b, 0), a == b, "{a:?} {b:?}");
            }
        }
    }
}
