//! Decoded parameters of one event: a query string or form body,
//! percent-decoded into one reusable buffer. A worker keeps one `Params` and
//! clears it per request, so decoding allocates nothing in steady state.

use std::ops::Range;

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

/// Decoded key/value pairs. The first occurrence of a key wins; later ones
/// are counted as duplicates.
#[derive(Debug, Default)]
pub struct Params {
    bytes: Vec<u8>,
    entries: Vec<(Range<u32>, Range<u32>)>,
    duplicates: Vec<Range<u32>>,
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
    pub fn parse_urlencoded(&mut self, input: &[u8], max: usize) -> Result<(), DecodeError> {
        let mut offset = 0;
        for pair in input.split(|&b| b == b'&') {
            let at = offset;
            offset += pair.len() + 1;
            if pair.is_empty() {
                continue;
            }
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &pair[pair.len()..]),
            };
            let key = self.decode(k, at)?;
            let value = self.decode(v, at + k.len() + 1)?;
            self.insert(key, value, max)?;
        }
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
        if self
            .entries
            .iter()
            .any(|(ek, _)| &self.bytes[ek.start as usize..ek.end as usize] == key)
        {
            if self.duplicates.len() < self.duplicates.capacity() {
                self.duplicates.push(k);
            }
            return Ok(());
        }
        if self.entries.len() >= max {
            return Err(DecodeError::TooMany);
        }
        self.entries.push((k, v));
        Ok(())
    }

    fn append(&mut self, raw: &[u8]) -> Range<u32> {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(raw);
        start..self.bytes.len() as u32
    }

    fn decode(&mut self, raw: &[u8], at: usize) -> Result<Range<u32>, DecodeError> {
        let start = self.bytes.len();
        if !raw.iter().any(|&b| b == b'%' || b == b'+') {
            self.bytes.extend_from_slice(raw);
        } else {
            let mut i = 0;
            while i < raw.len() {
                match raw[i] {
                    b'+' => self.bytes.push(b' '),
                    b'%' => {
                        let hex = |j: usize| raw.get(j).and_then(|&c| (c as char).to_digit(16));
                        match (hex(i + 1), hex(i + 2)) {
                            (Some(h), Some(l)) => self.bytes.push((h * 16 + l) as u8),
                            _ => {
                                self.bytes.truncate(start);
                                return Err(DecodeError::BadPercent(at + i));
                            }
                        }
                        i += 2;
                    }
                    b => self.bytes.push(b),
                }
                i += 1;
            }
        }
        Ok(start as u32..self.bytes.len() as u32)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.get_bytes(key.as_bytes())
    }

    /// The value of `key`, if present.
    pub fn get_bytes(&self, key: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every pair, in the order first seen.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.entries.iter().map(|(k, v)| {
            (
                &self.bytes[k.start as usize..k.end as usize],
                &self.bytes[v.start as usize..v.end as usize],
            )
        })
    }

    /// Keys that appeared more than once (each repeat once).
    pub fn duplicates(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.duplicates
            .iter()
            .map(|k| &self.bytes[k.start as usize..k.end as usize])
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
