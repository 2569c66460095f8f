//! Wall-clock time as the product writes it: Unix milliseconds, in event
//! records, segment headers, watermarks and the live view. One function
//! reads it; the request path reads it through a [`WallClock`], from the
//! monotonic reading its runtime took when it reaped the request's bytes
//! (`monoio::time::recent`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix milliseconds now (0 for a clock set before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wall-clock milliseconds from a monotonic reading already taken, so
/// that a request costs no reading of the system clock of its own: that
/// is read again once a second, so a step of it (NTP, an operator) shows
/// in event times within a second.
pub struct WallClock {
    anchor: Instant,
    anchor_ms: u64,
}

/// How often [`WallClock`] reads the system clock again.
const WALL_CLOCK_ANCHOR: Duration = Duration::from_secs(1);

impl WallClock {
    /// A clock anchored now.
    pub fn new() -> WallClock {
        let now = Instant::now();
        WallClock {
            anchor: now,
            anchor_ms: unix_ms(),
        }
    }

    /// Unix milliseconds at `at`. An `at` before the anchor (a request
    /// read before another connection's re-anchored it) counts as the
    /// anchor.
    pub fn ms(&mut self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.anchor);
        if since >= WALL_CLOCK_ANCHOR {
            self.anchor = at;
            self.anchor_ms = unix_ms();
            return self.anchor_ms;
        }
        self.anchor_ms + since.as_millis() as u64
    }
}

impl Default for WallClock {
    fn default() -> WallClock {
        WallClock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_follows_the_reading_and_reanchors_each_second() {
        let mut c = WallClock::new();
        let (anchor, ms) = (c.anchor, c.anchor_ms);
        let system = unix_ms();
        assert!(
            ms <= system && system - ms < 1000,
            "anchored to the system clock"
        );
        assert_eq!(c.ms(anchor + Duration::from_millis(250)), ms + 250);
        assert_eq!(c.ms(anchor + Duration::from_millis(999)), ms + 999);
        // A reading from before the anchor counts as the anchor.
        assert_eq!(
            c.ms(anchor
                .checked_sub(Duration::from_millis(5))
                .unwrap_or(anchor)),
            ms
        );
        // A second on: the system clock is read again and is the new anchor.
        let later = anchor + Duration::from_secs(3);
        let again = c.ms(later);
        assert_eq!((c.anchor, c.anchor_ms), (later, again));
        let system = unix_ms();
        assert!(again <= system && system - again < 1000);
        assert_eq!(c.ms(later + Duration::from_millis(40)), again + 40);
    }
}
