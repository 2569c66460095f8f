//! Reading a few fields of a record without parsing it. Records are written
//! by `record::encode` with a fixed key order (`id`, `ts_ms`, `type`,
//! `advertiser`, `status`, ...), so a scan finds them; a value with an
//! escape returns `None` and the caller parses the record instead.

/// Where `key` begins in `rec`, searching from `from`. Records written
/// by `record::encode` have the key right there, so that is tried first.
fn find(rec: &[u8], from: usize, key: &[u8]) -> Option<usize> {
    let rest = rec.get(from..)?;
    if rest.starts_with(key) {
        return Some(from);
    }
    memchr::memmem::find(rest, key).map(|i| from + i)
}

/// The string value after `key` (which includes the opening quote), when
/// it has no escapes, and the offset just past it.
fn plain_str_from<'a>(rec: &'a [u8], from: usize, key: &[u8]) -> Option<(&'a str, usize)> {
    let at = find(rec, from, key)? + key.len();
    let len = memchr::memchr2(b'"', b'\\', &rec[at..])?;
    if rec[at + len] != b'"' {
        return None;
    }
    let value = std::str::from_utf8(&rec[at..at + len]).ok()?;
    Some((value, at + len + 1))
}

/// `ts_ms`.
pub fn ts_ms(rec: &[u8]) -> Option<u64> {
    Some(ts_ms_from(rec)?.0)
}

/// `ts_ms` and the offset just past it.
fn ts_ms_from(rec: &[u8]) -> Option<(u64, usize)> {
    let key = b",\"ts_ms\":";
    // After `{"id":"<node>-<stream>-<seq>"`, which has no comma.
    let id_end = memchr::memchr(b',', rec)?;
    let at = find(rec, id_end, key)? + key.len();
    let digits = rec[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let ts = rec[at..at + digits].iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    Some((ts, at + digits))
}

/// `ts_ms`, `type`, `advertiser` and `status` in one pass, when no value
/// has an escape.
pub fn ts_and_head(rec: &[u8]) -> Option<(u64, &str, &str, &str)> {
    let (ts, at) = ts_ms_from(rec)?;
    let (t, a, st) = head_from(rec, at)?;
    Some((ts, t, a, st))
}

/// `type`, `advertiser` and `status`, when none has an escape. Each key is
/// searched after the previous one's value, in the order records are
/// written.
pub fn head(rec: &[u8]) -> Option<(&str, &str, &str)> {
    head_from(rec, 0)
}

fn head_from(rec: &[u8], from: usize) -> Option<(&str, &str, &str)> {
    let (t, at) = plain_str_from(rec, from, b",\"type\":\"")?;
    let (a, at) = plain_str_from(rec, at, b",\"advertiser\":\"")?;
    let (st, _) = plain_str_from(rec, at, b",\"status\":\"")?;
    Some((t, a, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_or_declines() {
        let rec = br#"{"id":"n-0-1","ts_ms":1700,"type":"purchase","advertiser":"shop","status":"ok","issues":[]}"#;
        assert_eq!(ts_ms(rec), Some(1700));
        assert_eq!(head(rec), Some(("purchase", "shop", "ok")));
        assert_eq!(ts_and_head(rec), Some((1700, "purchase", "shop", "ok")));
        let escaped =
            br#"{"id":"n-0-1","ts_ms":1,"type":"a\"b","advertiser":"shop","status":"ok"}"#;
        assert_eq!(head(escaped), None);
        assert_eq!(ts_ms(b"{}"), None);
        assert_eq!(ts_ms(br#"{"id":"x","ts_ms":99999999999999999999}"#), None);
        // Out of the written order: not found, and the caller parses.
        let reordered = br#"{"id":"n","ts_ms":1,"advertiser":"shop","type":"a","status":"ok"}"#;
        assert_eq!(head(reordered), None);
    }
}
