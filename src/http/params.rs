//! Decoded parameters of one event: a query string or form body,
//! percent-decoded into one reusable buffer. A worker keeps one `Params` and
//! clears it per request, so decoding allocates nothing in steady state.

use std::ops::Range;

use crate::word;

/// A parameter string that is not valid percent-encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `%` not followed by two hex digits, at this byte of the input.
    #[error("bad percent-encoding at byte {0}")]
    BadPercent(usize),
    /// More parameters than the limit.
    #[error("too many parameters")]
    TooMany,
}

/// The bytes a query string's decoding stops at; every other byte stands
/// for itself.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'&' as usize] = true;
    t[b'=' as usize] = true;
    t[b'%' as usize] = true;
    t[b'+' as usize] = true;
    t
};

/// Decoded key/value pairs. The first occurrence of a key wins; later ones
/// are counted as duplicates.
#[derive(Debug, Default)]
pub struct Params {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
    duplicates: Vec<Range<u32>>,
}

/// One pair, with its key's [`word::head`]: the audit looks up a dozen
/// names per event among the event's parameters, and names compared byte
/// by byte called libc's `memcmp` whenever their lengths agreed, about 12
/// times a request and 100 ns of it in a sampled profile. Compared by
/// head, the process spent 0.988-0.990 of the CPU per request
/// (`bench/results/together-params-20261205-2050.md`).
#[derive(Debug)]
struct Entry {
    key: Range<u32>,
    value: Range<u32>,
    head: u64,
}

impl Params {
    /// An empty table with room for `max` parameters of typical size.
    pub fn with_capacity(max: usize) -> Params {
        Params {
            bytes: Vec::with_capacity(max * 48),
            entries: Vec::with_capacity(max),
            duplicates: Vec::with_capacity(8),
        }
    }

    /// Forgets every parameter, keeping the memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.entries.clear();
        self.duplicates.clear();
    }

    /// Decodes `a=b&c=d` (`+` is a space), appending to the table. Empty
    /// segments are skipped; a key without `=` has an empty value.
    ///
    /// One pass over the input, which is copied whole first and decoded in
    /// place (decoding only ever shortens it), a run of plain bytes at a
    /// time: the separators drop out and each key and value ends where the
    /// next begins. Decoding a key and a value at a time (a scan for `%`
    /// and `+`, then a copy of each) cost nearly twice as much
    /// (`cargo bench --bench request_path -- request_path_each`).
    pub fn parse_urlencoded(&mut self, input: &[u8], max: usize) -> Result<(), DecodeError> {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(input);
        // Where the next decoded byte goes, where the pair being decoded
        // began, and where its key ended (at its first `=`).
        let mut w = base;
        let mut pair = base;
        let mut eq: Option<usize> = None;
        let mut r = 0;
        loop {
            // A run of bytes that stand for themselves, moved down whole
            // once decoding has shortened what came before.
            let run = input[r..]
                .iter()
                .position(|&b| SPECIAL[usize::from(b)])
                .unwrap_or(input.len() - r);
            if w != base + r {
                self.bytes.copy_within(base + r..base + r + run, w);
            }
            w += run;
            r += run;
            match input.get(r) {
                None | Some(b'&') => {
                    // A segment with no bytes decodes to nothing and has no
                    // `=`; any other segment leaves one or the other.
                    if w > pair || eq.is_some() {
                        let k = pair as u32..eq.unwrap_or(w) as u32;
                        let v = eq.unwrap_or(w) as u32..w as u32;
                        if let Err(e) = self.insert(k, v, max) {
                            self.bytes.truncate(pair);
                            return Err(e);
                        }
                    }
                    if r == input.len() {
                        break;
                    }
                    pair = w;
                    eq = None;
                }
                Some(b'=') if eq.is_none() => eq = Some(w),
                Some(b'%') => {
                    let hex = |j: usize| input.get(j).and_then(|&c| (c as char).to_digit(16));
                    let (Some(h), Some(l)) = (hex(r + 1), hex(r + 2)) else {
                        self.bytes.truncate(pair);
                        return Err(DecodeError::BadPercent(r));
                    };
                    self.bytes[w] = (h * 16 + l) as u8;
                    w += 1;
                    r += 2;
                }
                Some(&b) => {
                    // `+`, or a `=` within a value.
                    self.bytes[w] = if b == b'+' { b' ' } else { b };
                    w += 1;
                }
            }
            r += 1;
        }
        self.bytes.truncate(w);
        Ok(())
    }

    /// Adds one already-decoded pair.
    pub fn push(&mut self, key: &[u8], value: &[u8], max: usize) -> Result<(), DecodeError> {
        let k = self.append(key);
        let v = self.append(value);
        self.insert(k, v, max)
    }

    /// Starts a value that the caller appends piece by piece with
    /// [`Params::extend_value`] and ends with [`Params::finish_value`].
    pub fn begin_value(&mut self, key: &[u8]) -> (Range<u32>, u32) {
        let k = self.append(key);
        (k, self.bytes.len() as u32)
    }

    /// Appends bytes to the value begun last.
    pub fn extend_value(&mut self, part: &[u8]) {
        self.bytes.extend_from_slice(part);
    }

    /// Ends the value begun with [`Params::begin_value`].
    pub fn finish_value(
        &mut self,
        begun: (Range<u32>, u32),
        max: usize,
    ) -> Result<(), DecodeError> {
        let end = self.bytes.len() as u32;
        self.insert(begun.0, begun.1..end, max)
    }

    fn insert(&mut self, k: Range<u32>, v: Range<u32>, max: usize) -> Result<(), DecodeError> {
        let key = &self.bytes[k.start as usize..k.end as usize];
        let head = word::head(key);
        if self.find(key, head).is_some() {
            if self.duplicates.len() < self.duplicates.capacity() {
                self.duplicates.push(k);
            }
            return Ok(());
        }
        if self.entries.len() >= max {
            return Err(DecodeError::TooMany);
        }
        self.entries.push(Entry {
            key: k,
            value: v,
            head,
        });
        Ok(())
    }

    /// The entry of `key`, whose [`word::head`] is `head`.
    #[inline]
    fn find(&self, key: &[u8], head: u64) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| word::equal_with_head(self.slice(&e.key), e.head, key, head))
    }

    #[inline]
    fn slice(&self, r: &Range<u32>) -> &[u8] {
        &self.bytes[r.start as usize..r.end as usize]
    }

    fn append(&mut self, raw: &[u8]) -> Range<u32> {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(raw);
        start..self.bytes.len() as u32
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.get_bytes(key.as_bytes())
    }

    /// The value of `key`, if present.
    pub fn get_bytes(&self, key: &[u8]) -> Option<&[u8]> {
        self.find(key, word::head(key))
            .map(|e| self.slice(&e.value))
    }

    /// Every pair, in the order first seen.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.entries
            .iter()
            .map(|e| (self.slice(&e.key), self.slice(&e.value)))
    }

    /// Keys that appeared more than once (each repeat once).
    pub fn duplicates(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.duplicates.iter().map(|k| self.slice(k))
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Result<Vec<(String, String)>, DecodeError> {
        let mut p = Params::with_capacity(8);
        p.parse_urlencoded(s.as_bytes(), 8)?;
        Ok(p.iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect())
    }

    #[test]
    fn decodes_percent_plus_and_empty_parts() {
        let got = parsed("a=1&&b=x+y%2Cz&c&%61%62=%E2%82%AC").unwrap();
        let want = [("a", "1"), ("b", "x y,z"), ("c", ""), ("ab", "€")];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    /// The decoding spelled out a key and value at a time, the way the
    /// single pass must agree with: pairs, duplicates and errors.
    #[allow(clippy::type_complexity)]
    fn reference(input: &[u8]) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>), DecodeError> {
        let decode = |raw: &[u8], at: usize| {
            let mut out = Vec::new();
            let mut i = 0;
            while i < raw.len() {
                match raw[i] {
                    b'+' => out.push(b' '),
                    b'%' => {
                        let hex = |j: usize| raw.get(j).and_then(|&c| (c as char).to_digit(16));
                        let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) else {
                            return Err(DecodeError::BadPercent(at + i));
                        };
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    b => out.push(b),
                }
                i += 1;
            }
            Ok(out)
        };
        let (mut pairs, mut repeats) = (Vec::<(Vec<u8>, Vec<u8>)>::new(), Vec::new());
        let mut at = 0;
        for seg in input.split(|&b| b == b'&') {
            let start = at;
            at += seg.len() + 1;
            if seg.is_empty() {
                continue;
            }
            let eq = seg.iter().position(|&b| b == b'=');
            let (k, v) = eq.map_or((seg, &seg[seg.len()..]), |e| (&seg[..e], &seg[e + 1..]));
            let key = decode(k, start)?;
            let value = decode(v, start + k.len() + 1)?;
            if pairs.iter().any(|(pk, _)| *pk == key) {
                repeats.push(key);
            } else {
                pairs.push((key, value));
            }
        }
        Ok((pairs, repeats))
    }

    #[test]
    fn agrees_with_decoding_a_key_and_value_at_a_time() {
        // Every string of up to five bytes over the bytes that matter,
        // decoded after a pair already in the table (as a form body is
        // after its query string); the alphabet has no `q`, so that pair
        // is never repeated.
        let alphabet = b"a=&%+2C";
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = inputs.clone();
        for _ in 0..5 {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |&b| [&s[..], &[b]].concat()))
                .collect();
            inputs.extend(last.iter().cloned());
        }
        let mut p = Params::with_capacity(64);
        for input in &inputs {
            p.clear();
            p.push(b"q", b"0", 64).unwrap();
            let got = p.parse_urlencoded(input, 64).map(|()| {
                let pairs: Vec<_> = p
                    .iter()
                    .skip(1)
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect();
                let repeats: Vec<_> = p.duplicates().map(<[u8]>::to_vec).collect();
                (pairs, repeats)
            });
            let want = reference(input);
            assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn bad_percent_names_the_offset() {
        assert_eq!(parsed("a=1&b=%zz").unwrap_err(), DecodeError::BadPercent(6));
        assert_eq!(parsed("abc%4").unwrap_err(), DecodeError::BadPercent(3));
        assert_eq!(parsed("x=%").unwrap_err(), DecodeError::BadPercent(2));
    }

    #[test]
    fn first_key_wins_and_repeats_are_reported() {
        let mut p = Params::with_capacity(4);
        p.parse_urlencoded(b"a=1&a=2&b=3", 4).unwrap();
        assert_eq!(p.get("a"), Some(&b"1"[..]));
        assert_eq!(p.duplicates().collect::<Vec<_>>(), [b"a"]);
    }

    #[test]
    fn keys_that_share_their_first_bytes_stay_apart() {
        let mut p = Params::with_capacity(8);
        p.parse_urlencoded(b"product_id=1&product_ix=2&prod=3&pro=4&product_id=5", 8)
            .unwrap();
        assert_eq!(p.get("product_id"), Some(&b"1"[..]));
        assert_eq!(p.get("product_ix"), Some(&b"2"[..]));
        assert_eq!(p.get("prod"), Some(&b"3"[..]));
        assert_eq!(p.get("pro"), Some(&b"4"[..]));
        assert_eq!(p.get("product_i"), None);
        assert_eq!(p.get("p"), None);
        assert_eq!(p.duplicates().collect::<Vec<_>>(), [b"product_id"]);
    }

    #[test]
    fn too_many_parameters() {
        assert_eq!(
            parsed("a&b&c&d&e&f&g&h&i").unwrap_err(),
            DecodeError::TooMany
        );
    }

    #[test]
    fn clear_keeps_capacity() {
        let mut p = Params::with_capacity(4);
        p.parse_urlencoded(b"a=1&b=2", 4).unwrap();
        let cap = p.bytes.capacity();
        p.clear();
        assert!(p.is_empty());
        assert_eq!(p.bytes.capacity(), cap);
    }
}
