//! Reading a few fields of a record without parsing it. Records are written
//! by `record::encode` with a fixed key order (`id`, `ts_ms`, `type`,
//! `advertiser`, `status`, ...), so a scan finds them; a value with an
//! escape returns `None` and the caller parses the record instead.
//!
//! Values come back as the record's bytes, not checked as UTF-8: the live
//! view, which reads them for every record, keys on bytes and checks only
//! what it shows (`record::encode` writes UTF-8 anyway); a caller that
//! wants text converts.

/// A string value as the record holds it, between its quotes.
pub type Value<'a> = &'a [u8];

/// Where `key` begins in `rec`, searching from `from`. Records written
/// by `record::encode` have the key right there, so that is tried first.
#[inline(always)]
fn find(rec: &[u8], from: usize, key: &[u8]) -> Option<usize> {
    let rest = rec.get(from..)?;
    if rest.starts_with(key) {
        return Some(from);
    }
    memchr::memmem::find(rest, key).map(|i| from + i)
}

/// The string value after `key` (which includes the opening quote), when
/// it has no escapes, and the offset just past it.
#[inline(always)]
fn plain_str_from<'a>(rec: &'a [u8], from: usize, key: &[u8]) -> Option<(Value<'a>, usize)> {
    let at = find(rec, from, key)? + key.len();
    let len = memchr::memchr2(b'"', b'\\', &rec[at..])?;
    if rec[at + len] != b'"' {
        return None;
    }
    Some((&rec[at..at + len], at + len + 1))
}

/// [`plain_str_from`] with `key` exactly at `at`.
fn plain_str_at<'a>(rec: &'a [u8], at: usize, key: &[u8]) -> Option<(Value<'a>, usize)> {
    if !rec.get(at..)?.starts_with(key) {
        return None;
    }
    plain_str_from(rec, at, key)
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
pub fn ts_and_head(rec: &[u8]) -> Option<(u64, Value<'_>, Value<'_>, Value<'_>)> {
    let (ts, at) = ts_ms_from(rec)?;
    let (t, a, st, _) = head_from(rec, at)?;
    Some((ts, t, a, st))
}

/// One issue as a record carries it: code, parameter, and value (empty
/// when the record has none).
pub type Issue<'a> = (Value<'a>, Value<'a>, Value<'a>);

/// [`ts_and_head`], and the first `issues.len()` issues into `issues`
/// (the rest are skipped), when no value read has an escape. Issues are
/// written `{"code":..,"param":..[,"value":..]}` right after `status`.
pub fn ts_head_and_issues<'a>(
    rec: &'a [u8],
    issues: &mut [Option<Issue<'a>>],
) -> Option<(u64, Value<'a>, Value<'a>, Value<'a>)> {
    let (ts, at) = ts_ms_from(rec)?;
    let (t, a, st, mut at) = head_from(rec, at)?;
    let list = b",\"issues\":[";
    if !rec.get(at..)?.starts_with(list) {
        return None;
    }
    at += list.len();
    issues.fill(None);
    let mut n = 0;
    while rec.get(at) == Some(&b'{') {
        let (code, next) = plain_str_at(rec, at, b"{\"code\":\"")?;
        let (param, next) = plain_str_at(rec, next, b",\"param\":\"")?;
        at = next;
        let mut value: Value<'_> = b"";
        if rec.get(at) == Some(&b',') {
            (value, at) = plain_str_at(rec, at, b",\"value\":\"")?;
        }
        if rec.get(at) != Some(&b'}') {
            return None;
        }
        at += 1;
        if let Some(slot) = issues.get_mut(n) {
            *slot = Some((code, param, value));
            n += 1;
        }
        match rec.get(at) {
            Some(b',') => at += 1,
            Some(b']') => break,
            _ => return None,
        }
    }
    (rec.get(at) == Some(&b']')).then_some((ts, t, a, st))
}

/// `type`, `advertiser` and `status`, when none has an escape. Each key is
/// searched after the previous one's value, in the order records are
/// written.
pub fn head(rec: &[u8]) -> Option<(Value<'_>, Value<'_>, Value<'_>)> {
    let (t, a, st, _) = head_from(rec, 0)?;
    Some((t, a, st))
}

/// `type`, `advertiser`, `status`, and the offset just past `status`.
fn head_from(rec: &[u8], from: usize) -> Option<(Value<'_>, Value<'_>, Value<'_>, usize)> {
    let (t, at) = plain_str_from(rec, from, b",\"type\":\"")?;
    let (a, at) = plain_str_from(rec, at, b",\"advertiser\":\"")?;
    let (st, at) = plain_str_from(rec, at, b",\"status\":\"")?;
    Some((t, a, st, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_or_declines() {
        let rec = br#"{"id":"n-0-1","ts_ms":1700,"type":"purchase","advertiser":"shop","status":"ok","issues":[]}"#;
        assert_eq!(ts_ms(rec), Some(1700));
        assert_eq!(
            head(rec),
            Some((&b"purchase"[..], &b"shop"[..], &b"ok"[..]))
        );
        assert_eq!(
            ts_and_head(rec),
            Some((1700, &b"purchase"[..], &b"shop"[..], &b"ok"[..]))
        );
        let escaped =
            br#"{"id":"n-0-1","ts_ms":1,"type":"a\"b","advertiser":"shop","status":"ok"}"#;
        assert_eq!(head(escaped), None);
        assert_eq!(ts_ms(b"{}"), None);
        assert_eq!(ts_ms(br#"{"id":"x","ts_ms":99999999999999999999}"#), None);
        // Out of the written order: not found, and the caller parses.
        let reordered = br#"{"id":"n","ts_ms":1,"advertiser":"shop","type":"a","status":"ok"}"#;
        assert_eq!(head(reordered), None);
    }

    #[test]
    fn reads_issues_or_declines() {
        let mut got = [None; 2];
        let rec = br#"{"id":"n-0-1","ts_ms":7,"type":"purchase","advertiser":"shop","status":"invalid","issues":[{"code":"missing_param","param":"order_id"},{"code":"unknown_product","param":"pid","value":"sku-9"},{"code":"bad_format","param":"value","value":"9,99"}],"params":{}}"#;
        assert_eq!(
            ts_head_and_issues(rec, &mut got),
            Some((7, &b"purchase"[..], &b"shop"[..], &b"invalid"[..]))
        );
        // Two slots: the third issue is skipped.
        assert_eq!(
            got,
            [
                Some((&b"missing_param"[..], &b"order_id"[..], &b""[..])),
                Some((&b"unknown_product"[..], &b"pid"[..], &b"sku-9"[..]))
            ]
        );
        let ok = br#"{"id":"n-0-1","ts_ms":7,"type":"a","advertiser":"b","status":"ok","issues":[],"params":{}}"#;
        assert_eq!(
            ts_head_and_issues(ok, &mut got),
            Some((7, &b"a"[..], &b"b"[..], &b"ok"[..]))
        );
        assert_eq!(got, [None, None], "slots of an earlier record cleared");
        // An escape in a value, a key out of place, a cut record: the
        // caller parses instead.
        for bad in [
            &br#"{"id":"n-0-1","ts_ms":7,"type":"a","advertiser":"b","status":"invalid","issues":[{"code":"bad_format","param":"p","value":"a"b"}]}"#[..],
            br#"{"id":"n-0-1","ts_ms":7,"type":"a","advertiser":"b","status":"invalid","issues":[{"param":"p","code":"bad_format"}]}"#,
            br#"{"id":"n-0-1","ts_ms":7,"type":"a","advertiser":"b","status":"invalid","issues":[{"code":"bad_format","param":"p"}"#,
            br#"{"id":"n-0-1","ts_ms":7,"type":"a","advertiser":"b","status":"invalid","issues":[{"code":"bad_format","param":"p"},"#,
            br#"{"id":"n-0-1","ts_ms":7,"type":"a","advertiser":"b","status":"invalid"}"#,
        ] {
            assert_eq!(
                ts_head_and_issues(bad, &mut got),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
