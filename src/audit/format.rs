//! Value formats: one check per [`Format`], on decoded bytes.

use crate::config::{Format, ParamSpec};

/// Whether `value` has the format `spec` declares (each item, for a list).
pub fn check(spec: &ParamSpec, value: &[u8]) -> bool {
    if spec.list {
        value
            .split(|&b| b == b',')
            .all(|item| check_item(spec, item))
    } else {
        check_item(spec, value)
    }
}

/// Whether one value (one item of a list) has the format of `spec`.
pub fn check_item(spec: &ParamSpec, v: &[u8]) -> bool {
    let max = if spec.max_len > 0 {
        spec.max_len
    } else {
        default_max(spec.format)
    };
    if v.is_empty() || v.len() > max {
        return false;
    }
    match spec.format {
        Format::Integer => integer(v),
        Format::Decimal => decimal(v),
        Format::Currency => currency(v),
        Format::Timestamp => timestamp(v),
        Format::Url => url(v),
        Format::Enum => spec.values.iter().any(|x| x.as_bytes() == v),
        Format::String => std::str::from_utf8(v).is_ok_and(|s| !s.chars().any(char::is_control)),
        Format::Id => id(v),
    }
}

fn default_max(f: Format) -> usize {
    match f {
        Format::Integer | Format::Decimal => 20,
        Format::Currency => 3,
        Format::Timestamp => 35,
        Format::Url => 2048,
        Format::Enum | Format::String => 256,
        Format::Id => 128,
    }
}

/// Letters, digits and `._:-`.
pub fn id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn digits(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(u8::is_ascii_digit)
}

fn integer(v: &[u8]) -> bool {
    let v = v.strip_prefix(b"-").unwrap_or(v);
    digits(v) && v.len() <= 18
}

fn decimal(v: &[u8]) -> bool {
    let v = v.strip_prefix(b"-").unwrap_or(v);
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], Some(&v[dot + 1..])),
        None => (v, None),
    };
    digits(int) && frac.is_none_or(digits) && int.len() + frac.map_or(0, <[u8]>::len) <= 18
}

fn currency(v: &[u8]) -> bool {
    v.len() == 3 && ISO_4217.binary_search(&[v[0], v[1], v[2]]).is_ok()
}

fn timestamp(v: &[u8]) -> bool {
    if digits(v) {
        return v.len() == 10 || v.len() == 13;
    }
    // RFC 3339: 2024-05-01T12:34:56(.fff)?(Z|+hh:mm|-hh:mm)
    let d = |r: std::ops::Range<usize>| v.get(r).is_some_and(digits);
    if v.len() < 20 || !(d(0..4) && d(5..7) && d(8..10) && d(11..13) && d(14..16) && d(17..19)) {
        return false;
    }
    if v[4] != b'-'
        || v[7] != b'-'
        || !matches!(v[10], b'T' | b't')
        || v[13] != b':'
        || v[16] != b':'
    {
        return false;
    }
    let mut rest = &v[19..];
    if let [b'.', tail @ ..] = rest {
        let n = tail.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &tail[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

fn url(v: &[u8]) -> bool {
    let lower = |p: &[u8]| v.len() > p.len() && v[..p.len()].eq_ignore_ascii_case(p);
    let rest = if lower(b"https://") {
        &v[8..]
    } else if lower(b"http://") {
        &v[7..]
    } else {
        return false;
    };
    !rest.is_empty()
        && !matches!(rest[0], b'/' | b'?' | b'#')
        && v.iter().all(|&b| (0x21..0x7f).contains(&b))
}

/// Active ISO 4217 codes, sorted.
const ISO_4217: [[u8; 3]; 156] = {
    const S: &[u8] = b"AEDAFNALLAMDANGAOAARSAUDAWGAZNBAMBBDBDTBGNBHDBIFBMDBNDBOBBRLBSDBTNBWPBYNBZDCADCDFCHFCLPCNYCOPCRCCUPCVECZKDJFDKKDOPDZDEGPERNETBEURFJDFKPGBPGELGHSGIPGMDGNFGTQGYDHKDHNLHTGHUFIDRILSINRIQDIRRISKJMDJODJPYKESKGSKHRKMFKPWKRWKWDKYDKZTLAKLBPLKRLRDLSLLYDMADMDLMGAMKDMMKMNTMOPMRUMURMVRMWKMXNMYRMZNNADNGNNIONOKNPRNZDOMRPABPENPGKPHPPKRPLNPYGQARRONRSDRUBRWFSARSBDSCRSDGSEKSGDSHPSLESOSSRDSSPSTNSVCSYPSZLTHBTJSTMTTNDTOPTRYTTDTWDTZSUAHUGXUSDUYUUZSVESVNDVUVWSTXAFXCDXCGXOFXPFYERZARZMWZWG";
    let mut out = [[0u8; 3]; 156];
    let mut i = 0;
    while i < 156 {
        out[i] = [S[i * 3], S[i * 3 + 1], S[i * 3 + 2]];
        i += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(format: Format) -> ParamSpec {
        ParamSpec {
            format,
            list: false,
            max_len: 0,
            values: vec![],
        }
    }

    #[test]
    fn currency_table_is_sorted_and_complete() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
        for ok in ["EUR", "USD", "JPY", "CHF", "ZWG", "AED"] {
            assert!(currency(ok.as_bytes()), "{ok}");
        }
        for bad in ["eur", "EU", "EURO", "XXX", "ABC", ""] {
            assert!(!currency(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn formats_accept_and_reject() {
        let cases: &[(Format, &str, bool)] = &[
            (Format::Integer, "42", true),
            (Format::Integer, "-7", true),
            (Format::Integer, "4.2", false),
            (Format::Integer, "1234567890123456789", false),
            (Format::Decimal, "9.99", true),
            (Format::Decimal, "10", true),
            (Format::Decimal, "-0.5", true),
            (Format::Decimal, "9,99", false),
            (Format::Decimal, "1e3", false),
            (Format::Decimal, ".5", false),
            (Format::Decimal, "5.", false),
            (Format::Timestamp, "1700000000", true),
            (Format::Timestamp, "1700000000123", true),
            (Format::Timestamp, "2024-05-01T12:34:56Z", true),
            (Format::Timestamp, "2024-05-01T12:34:56.123+02:00", true),
            (Format::Timestamp, "2024-05-01 12:34:56", false),
            (Format::Timestamp, "17000", false),
            (Format::Url, "https://shop.example/p?x=1", true),
            (Format::Url, "HTTP://a", true),
            (Format::Url, "ftp://a", false),
            (Format::Url, "https:///path", false),
            (Format::Url, "https://a b", false),
            (Format::String, "hello world", true),
            (Format::String, "tab\there", false),
            (Format::Id, "SKU-1_2.3:4", true),
            (Format::Id, "a b", false),
            (Format::Id, "a/b", false),
        ];
        for &(f, v, want) in cases {
            assert_eq!(check(&spec(f), v.as_bytes()), want, "{f:?} {v:?}");
        }
    }

    #[test]
    fn lists_check_every_item_and_enums_their_values() {
        let mut s = spec(Format::Id);
        s.list = true;
        assert!(check(&s, b"a,b,c"));
        assert!(!check(&s, b"a,,c"));
        assert!(!check(&s, b"a,b c"));
        let mut e = spec(Format::Enum);
        e.values = vec!["web".into(), "app".into()];
        assert!(check(&e, b"app"));
        assert!(!check(&e, b"tv"));
        let mut m = spec(Format::String);
        m.max_len = 3;
        assert!(check(&m, b"abc") && !check(&m, b"abcd"));
    }
}
