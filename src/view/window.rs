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
    fn add(&mut self, at: u64, kind: &str, name: &str) {
        if self.at != at {
            self.at = at;
            self.counts.clear();
        }
        // Keys are `kind:name`; compare in place so that counting allocates
        // only the first time a key appears in a bucket.
        let is = |k: &str| {
            k.len() == kind.len() + 1 + name.len()
                && k.starts_with(kind)
                && k.ends_with(name)
                && k.as_bytes()[kind.len()] == b':'
        };
        match self.counts.iter_mut().find(|(k, _)| is(k)) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((format!("{kind}:{name}").into(), 1)),
        }
    }
}

impl Window {
    /// Counts the key `kind:name` at `now_ms`.
    pub fn add(&mut self, now_ms: u64, kind: &str, name: &str) {
        if self.seconds.is_empty() {
            self.seconds = vec![Bucket::default(); 60];
            self.minutes = vec![Bucket::default(); 60];
        }
        let s = now_ms / 1000;
        let m = s / 60;
        self.seconds[(s % 60) as usize].add(s, kind, name);
        self.minutes[(m % 60) as usize].add(m, kind, name);
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
        w.add(t0, "k", "a");
        w.add(t0 + 500, "k", "a");
        w.add(t0 + 30_000, "k", "b");
        // A key whose name ends like another's is still its own.
        w.add(t0 + 30_000, "kk", "b");
        assert_eq!(
            w.last_minute(t0 + 30_000),
            [
                ("k:a".to_string(), 2),
                ("k:b".to_string(), 1),
                ("kk:b".to_string(), 1)
            ]
        );
        // 61 s later the first second has left the minute, not the hour.
        assert_eq!(
            w.last_minute(t0 + 61_000),
            [("k:b".to_string(), 1), ("kk:b".to_string(), 1)]
        );
        assert_eq!(w.last_hour(t0 + 61_000).iter().map(|x| x.1).sum::<u64>(), 4);
        assert!(w.last_hour(t0 + 3_700_000).is_empty());
        // A bucket reused an hour later starts from zero.
        w.add(t0 + 3_600_000, "k", "c");
        assert_eq!(w.last_hour(t0 + 3_600_000), [("k:c".to_string(), 1)]);
    }
}
