//! The `Date` header value (IMF-fixdate), formatted once per second per
//! worker instead of once per response.

/// A cached `Date` value.
#[derive(Debug, Clone)]
pub struct HttpDate {
    secs: u64,
    text: [u8; 29],
}

impl Default for HttpDate {
    fn default() -> Self {
        let mut d = HttpDate {
            secs: u64::MAX,
            text: [b' '; 29],
        };
        d.update(0);
        d
    }
}

impl HttpDate {
    /// Re-formats when `unix_secs` differs from the cached second.
    #[inline]
    pub fn update(&mut self, unix_secs: u64) {
        if unix_secs != self.secs {
            self.secs = unix_secs;
            self.text = format(unix_secs);
        }
    }

    /// `Sun, 06 Nov 1994 08:49:37 GMT`.
    #[inline]
    pub fn as_bytes(&self) -> &[u8; 29] {
        &self.text
    }
}

fn format(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, d) = civil_from_days(days as i64);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    two(&mut out[5..7], d);
    out[8..11].copy_from_slice(MONTHS[(m - 1) as usize]);
    two(&mut out[12..14], (y / 100) as u32);
    two(&mut out[14..16], (y % 100) as u32);
    two(&mut out[17..19], (rem / 3600) as u32);
    two(&mut out[20..22], (rem / 60 % 60) as u32);
    two(&mut out[23..25], (rem % 60) as u32);
    out
}

fn two(out: &mut [u8], v: u32) {
    out[0] = b'0' + (v / 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

/// Howard Hinnant's days-to-civil: (year, month 1-12, day 1-31).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(&format(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&format(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&format(1_709_210_096), b"Thu, 29 Feb 2024 12:34:56 GMT");
        assert_eq!(&format(1_798_761_599), b"Thu, 31 Dec 2026 23:59:59 GMT");
    }
}
