//! Counts over a sliding window: the last minute in 60 one-second buckets,
//! the last hour in 60 one-minute buckets. Keys are few per advertiser
//! (event types, issue codes, failing parameters), so a bucket is a small
//! vector searched linearly.

/// Counts of keys over the last minute and hour.
#[derive(Debug, Default)]
pub struct Window {
    seconds: Vec<Bucket>,
    minutes: Vec<Bucket>,
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    /// Which second or minute this bucket holds.
    at: u64,
    counts: Vec<(Box<str>, u64)>,
}

impl Bucket {
    fn add(&mut self, at: u64, key: &str) {
        if self.at != at {
            self.at = at;
            self.counts.clear();
        }
        match self.counts.iter_mut().find(|(k, _)| &**k == key) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((key.into(), 1)),
        }
    }
}

impl Window {
    /// Counts `key` at `now_ms`.
    pub fn add(&mut self, now_ms: u64, key: &str) {
        if self.seconds.is_empty() {
            self.seconds = vec![Bucket::default(); 60];
            self.minutes = vec![Bucket::default(); 60];
        }
        let s = now_ms / 1000;
        let m = s / 60;
        self.seconds[(s % 60) as usize].add(s, key);
        self.minutes[(m % 60) as usize].add(m, key);
    }

    /// Sums over the last 60 seconds, by key, largest first.
    pub fn last_minute(&self, now_ms: u64) -> Vec<(String, u64)> {
        let s = now_ms / 1000;
        sum(self.seconds.iter().filter(|b| b.at + 60 > s && b.at <= s))
    }

    /// Sums over the last 60 minutes, by key, largest first.
    pub fn last_hour(&self, now_ms: u64) -> Vec<(String, u64)> {
        let m = now_ms / 60_000;
        sum(self.minutes.iter().filter(|b| b.at + 60 > m && b.at <= m))
    }
}

fn sum<'a>(buckets: impl Iterator<Item = &'a Bucket>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for b in buckets {
        for (k, n) in &b.counts {
            match out.iter_mut().find(|(key, _)| key == &**k) {
                Some((_, total)) => *total += n,
                None => out.push((k.to_string(), *n)),
            }
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_and_hour_slide() {
        let mut w = Window::default();
        let t0 = 1_700_000_000_000;
        w.add(t0, "a");
        w.add(t0 + 500, "a");
        w.add(t0 + 30_000, "b");
        assert_eq!(
            w.last_minute(t0 + 30_000),
            [("a".to_string(), 2), ("b".to_string(), 1)]
        );
        // 61 s later the first second has left the minute, not the hour.
        assert_eq!(w.last_minute(t0 + 61_000), [("b".to_string(), 1)]);
        assert_eq!(w.last_hour(t0 + 61_000).iter().map(|x| x.1).sum::<u64>(), 3);
        assert!(w.last_hour(t0 + 3_700_000).is_empty());
        // A bucket reused an hour later starts from zero.
        w.add(t0 + 3_600_000, "c");
        assert_eq!(w.last_hour(t0 + 3_600_000), [("c".to_string(), 1)]);
    }
}
