//! Which records `tail` prints: by advertiser, event type, audit status,
//! issue code and event time. Also the time syntax `--since` accepts.

use std::borrow::Cow;

use serde::Deserialize;

/// A selection of records; empty selects everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this advertiser.
    pub advertiser: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only events with issues.
    pub invalid_only: bool,
    /// Only events with this issue code.
    pub issue: Option<String>,
    /// Only events received at or after this time (Unix ms).
    pub since_ms: Option<u64>,
}

/// The fields of a record the filters look at.
#[derive(Deserialize)]
pub(crate) struct View<'a> {
    #[serde(borrow)]
    pub advertiser: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    pub event_type: Cow<'a, str>,
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    #[serde(borrow, default)]
    pub issues: Vec<IssueView<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct IssueView<'a> {
    #[serde(borrow)]
    pub code: Cow<'a, str>,
}

impl Filter {
    fn selects_all(&self) -> bool {
        self.advertiser.is_none()
            && self.event_type.is_none()
            && !self.invalid_only
            && self.issue.is_none()
    }

    /// Whether `rec` is selected (time is applied by the cursor).
    pub fn matches(&self, rec: &[u8]) -> bool {
        if self.selects_all() {
            return true;
        }
        let Ok(v) = serde_json::from_slice::<View<'_>>(rec) else {
            return false;
        };
        self.advertiser.as_deref().is_none_or(|a| v.advertiser == a)
            && self.event_type.as_deref().is_none_or(|t| v.event_type == t)
            && (!self.invalid_only || v.status == "invalid")
            && self
                .issue
                .as_deref()
                .is_none_or(|code| v.issues.iter().any(|i| i.code == code))
    }
}

/// Parses `--since`: Unix seconds (10 digits) or milliseconds (13),
/// RFC 3339 (`2026-11-21T10:00:00Z`), or an age (`90s`, `15m`, `2h`, `1d`).
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let bad =
        || format!("`{s}` is not a time: use Unix seconds or ms, RFC 3339, or an age like 15m");
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = s.parse().map_err(|_| bad())?;
        return match s.len() {
            10 => Ok(n * 1000),
            13 => Ok(n),
            _ => Err(bad()),
        };
    }
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        if let Ok(n) = s[..s.len() - 1].parse::<u64>() {
            let ms = n * match unit {
                's' => 1000,
                'm' => 60_000,
                'h' => 3_600_000,
                _ => 86_400_000,
            };
            return Ok(now_ms.saturating_sub(ms));
        }
    }
    rfc3339_ms(s).ok_or_else(bad)
}

fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        let digits = &frac[..n];
        ms = format!("{digits:0<3}")[..3].parse().ok()?;
        rest = &frac[n..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 60 + om)
        }
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

/// Howard Hinnant's civil-to-days.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("1700000000", now), Ok(1_700_000_000_000));
        assert_eq!(parse_time("1700000000123", now), Ok(1_700_000_000_123));
        assert_eq!(parse_time("15m", now), Ok(now - 900_000));
        assert_eq!(parse_time("2h", now), Ok(now - 7_200_000));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00", now),
            Ok(1_700_000_000_500)
        );
        for bad in ["yesterday", "12345", "5y", "2023-11-14"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_select() {
        let rec = br#"{"id":"n-0-1","ts_ms":1700000000000,"type":"purchase","advertiser":"shop","status":"invalid","issues":[{"code":"bad_format","param":"value"}],"params":{}}"#;
        assert_eq!(crate::record::peek::ts_ms(rec), Some(1_700_000_000_000));
        let f = |f: Filter| f.matches(rec);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            advertiser: Some("shop".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            advertiser: Some("other".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            event_type: Some("purchase".into()),
            invalid_only: true,
            ..Default::default()
        }));
        assert!(f(Filter {
            issue: Some("bad_format".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            issue: Some("unknown_product".into()),
            ..Default::default()
        }));
    }
}
