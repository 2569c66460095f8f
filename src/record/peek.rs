//! Reading a few fields of a record without parsing it. Records are written
//! by `record::encode` with a fixed key order (`id`, `ts_ms`, `type`,
//! `advertiser`, `status`, ...), so a scan finds them; a value with an
//! escape returns `None` and the caller parses the record instead.

/// The string value after `key` (which includes the opening quote), when
/// it has no escapes.
pub fn plain_str<'a>(rec: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = rec.windows(key.len()).position(|w| w == key)? + key.len();
    let len = rec[at..].iter().position(|&b| b == b'"' || b == b'\\')?;
    if rec[at + len] != b'"' {
        return None;
    }
    std::str::from_utf8(&rec[at..at + len]).ok()
}

/// `ts_ms`.
pub fn ts_ms(rec: &[u8]) -> Option<u64> {
    let key = b",\"ts_ms\":";
    let at = rec.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = rec[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rec[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// `type`, `advertiser` and `status`, when none has an escape.
pub fn head(rec: &[u8]) -> Option<(&str, &str, &str)> {
    Some((
        plain_str(rec, b",\"type\":\"")?,
        plain_str(rec, b",\"advertiser\":\"")?,
        plain_str(rec, b",\"status\":\"")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_or_declines() {
        let rec = br#"{"id":"n-0-1","ts_ms":1700,"type":"purchase","advertiser":"shop","status":"ok","issues":[]}"#;
        assert_eq!(ts_ms(rec), Some(1700));
        assert_eq!(head(rec), Some(("purchase", "shop", "ok")));
        let escaped =
            br#"{"id":"n-0-1","ts_ms":1,"type":"a\"b","advertiser":"shop","status":"ok"}"#;
        assert_eq!(head(escaped), None);
        assert_eq!(ts_ms(b"{}"), None);
    }
}
