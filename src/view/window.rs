//! Counts over a sliding window: the last minute in 60 one-second buckets,
//! the last hour in 60 one-minute buckets. Keys (event types, statuses,
//! issue codes, failing parameters) are few per advertiser, so each is
//! interned once to a small id and a bucket is a dense vector of counts:
//! adding an event is one hash lookup and four increments. The memory a
//! new key or a window's buckets take is charged to the view's budget.

use std::collections::HashMap;

use super::{Budget, ENTRY_OVERHEAD};

/// What a key counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Event type.
    Type,
    /// `ok` or `invalid`.
    Status,
    /// Issue code.
    Issue,
    /// A parameter that failed.
    Param,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Type => "type",
            Kind::Status => "status",
            Kind::Issue => "issue",
            Kind::Param => "param",
        }
    }
}

/// Keys a window tracks; later names are counted as `(other)` of their
/// kind (names come from configuration, but memory stays bounded anyway).
const MAX_KEYS: usize = 256;
const OTHER: &[u8] = b"(other)";
/// One-second and one-minute buckets.
const BUCKETS: usize = 120;

/// What a key of `len` bytes costs: the name twice (map and list), its
/// count in every bucket, and the entries.
const fn key_cost(len: usize) -> usize {
    2 * len + BUCKETS * size_of::<u64>() + 2 * ENTRY_OVERHEAD
}

/// Counts of keys over the last minute and hour.
#[derive(Debug, Default)]
pub struct Window {
    /// Per kind: name → id. Names come from requests (unknown event
    /// types, duplicated parameters), hence a hash keyed at random. Kept
    /// as the record's bytes (`record::peek`); shown as text.
    ids: [HashMap<Box<[u8]>, u16, ahash::RandomState>; 4],
    /// id → key.
    keys: Vec<(Kind, Box<[u8]>)>,
    /// Per kind: the id found last. An advertiser's events mostly repeat
    /// their type and status, and a name compared with the last one's is
    /// a hash and a probe fewer (`Window::id` was about a fifth of the
    /// view's fold, 290 instructions a request with two lookups a record).
    last: [Option<u16>; 4],
    seconds: Vec<Bucket>,
    minutes: Vec<Bucket>,
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    at: u64,
    /// Count per key id.
    counts: Vec<u64>,
}

impl Bucket {
    fn add(&mut self, at: u64, id: u16) {
        if self.at != at {
            self.at = at;
            self.counts.fill(0);
        }
        // Every key's slot exists (`Window::id` makes it): no growth here.
        if let Some(n) = self.counts.get_mut(usize::from(id)) {
            *n += 1;
        }
    }
}

impl Window {
    /// What a window costs before its own keys, charged by whoever creates
    /// it: its buckets, and the `(other)` key of each kind, so that a name
    /// the budget has no room for can always be counted there.
    pub const COST: usize = BUCKETS * size_of::<Bucket>() + 4 * key_cost(OTHER.len());

    /// Counts `name` of `kind` at `now_ms`. Returns false when `name` was
    /// new and `budget` had no room for it, so it was counted as
    /// `(other)`.
    pub fn add(&mut self, now_ms: u64, kind: Kind, name: &[u8], budget: &mut Budget) -> bool {
        if self.seconds.is_empty() {
            self.seconds = vec![Bucket::default(); BUCKETS / 2];
            self.minutes = vec![Bucket::default(); BUCKETS / 2];
        }
        let (id, kept) = self.id(kind, name, budget);
        let s = now_ms / 1000;
        let m = s / 60;
        self.seconds[(s % 60) as usize].add(s, id);
        self.minutes[(m % 60) as usize].add(m, id);
        kept
    }

    /// The id of `name`, and whether it has its own (or was meant to be
    /// `(other)` anyway).
    fn id(&mut self, kind: Kind, name: &[u8], budget: &mut Budget) -> (u16, bool) {
        let last = &mut self.last[kind as usize];
        if let Some(id) = *last {
            if *self.keys[usize::from(id)].1 == *name {
                return (id, true);
            }
        }
        if let Some(&id) = self.ids[kind as usize].get(name) {
            *last = Some(id);
            return (id, true);
        }
        if name != OTHER {
            if self.keys.len() >= MAX_KEYS {
                return (self.id(kind, OTHER, budget).0, true);
            }
            if !budget.take(key_cost(name.len())) {
                return (self.id(kind, OTHER, budget).0, false);
            }
        }
        let id = self.keys.len() as u16;
        self.keys.push((kind, name.into()));
        self.ids[kind as usize].insert(name.into(), id);
        self.last[kind as usize] = Some(id);
        // Every bucket gets its slot now, so that counting never allocates
        // (not even in a bucket's first second or minute).
        for b in self.seconds.iter_mut().chain(&mut self.minutes) {
            b.counts.resize(self.keys.len(), 0);
        }
        (id, true)
    }

    /// `kind:name` and count, most frequent first, over the last minute.
    pub fn last_minute(&self, now_ms: u64) -> Vec<(String, u64)> {
        let s = now_ms / 1000;
        self.sum(self.seconds.iter().filter(|b| b.at + 60 > s && b.at <= s))
    }

    /// The same over the last hour.
    pub fn last_hour(&self, now_ms: u64) -> Vec<(String, u64)> {
        let m = now_ms / 60_000;
        self.sum(self.minutes.iter().filter(|b| b.at + 60 > m && b.at <= m))
    }

    fn sum<'a>(&self, buckets: impl Iterator<Item = &'a Bucket>) -> Vec<(String, u64)> {
        let mut totals = vec![0u64; self.keys.len()];
        for b in buckets {
            for (t, n) in totals.iter_mut().zip(&b.counts) {
                *t += n;
            }
        }
        let mut out: Vec<(String, u64)> = totals
            .into_iter()
            .zip(&self.keys)
            .filter(|(n, _)| *n > 0)
            .map(|(n, (kind, name))| {
                let name = String::from_utf8_lossy(name);
                (format!("{}:{name}", kind.as_str()), n)
            })
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(w: &mut Window, now_ms: u64, kind: Kind, name: &str) {
        assert!(w.add(now_ms, kind, name.as_bytes(), &mut Budget::new(usize::MAX)));
    }

    #[test]
    fn minute_and_hour_slide() {
        let mut w = Window::default();
        let t0 = 1_700_000_000_000;
        add(&mut w, t0, Kind::Type, "a");
        add(&mut w, t0 + 500, Kind::Type, "a");
        add(&mut w, t0 + 30_000, Kind::Type, "b");
        // The same name of another kind is its own key.
        add(&mut w, t0 + 30_000, Kind::Param, "b");
        assert_eq!(
            w.last_minute(t0 + 30_000),
            [
                ("type:a".to_string(), 2),
                ("param:b".to_string(), 1),
                ("type:b".to_string(), 1)
            ]
        );
        // 61 s later the first second has left the minute, not the hour.
        assert_eq!(
            w.last_minute(t0 + 61_000),
            [("param:b".to_string(), 1), ("type:b".to_string(), 1)]
        );
        assert_eq!(w.last_hour(t0 + 61_000).iter().map(|x| x.1).sum::<u64>(), 4);
        assert!(w.last_hour(t0 + 3_700_000).is_empty());
        // A bucket reused an hour later starts from zero.
        add(&mut w, t0 + 3_600_000, Kind::Type, "c");
        assert_eq!(w.last_hour(t0 + 3_600_000), [("type:c".to_string(), 1)]);
    }

    #[test]
    fn names_alternating_and_repeating_are_each_counted_as_themselves() {
        // The last name found per kind is looked at first: a name that
        // differs from it, or comes back after others, even once the cap
        // sends new names to `(other)`, must still land on its own key.
        let mut w = Window::default();
        let t0 = 1_700_000_000_000;
        for name in ["a", "a", "b", "a", "b", "b", "c", "a"] {
            add(&mut w, t0, Kind::Type, name);
        }
        add(&mut w, t0, Kind::Status, "a");
        for i in 0..MAX_KEYS + 10 {
            add(&mut w, t0, Kind::Param, &format!("p{i}"));
            add(&mut w, t0, Kind::Param, "p0");
        }
        let minute = w.last_minute(t0);
        let count = |key: &str| minute.iter().find(|x| x.0 == key).map_or(0, |x| x.1);
        assert_eq!(count("type:a"), 4);
        assert_eq!(count("type:b"), 3);
        assert_eq!(count("type:c"), 1);
        assert_eq!(count("status:a"), 1);
        assert_eq!(count("param:p0"), MAX_KEYS as u64 + 11);
        assert_eq!(count("param:p1"), 1);
        // The cap counts every kind's keys: four went to the types and the
        // status, so the last fourteen parameters are `(other)`.
        assert_eq!(count("param:(other)"), 14);
        let total: u64 = minute.iter().map(|x| x.1).sum();
        assert_eq!(total, 9 + 2 * (MAX_KEYS as u64 + 10));
    }

    #[test]
    fn keys_stay_bounded() {
        let mut w = Window::default();
        let t0 = 1_700_000_000_000;
        for i in 0..1000 {
            add(&mut w, t0, Kind::Param, &format!("p{i}"));
        }
        assert!(w.keys.len() <= MAX_KEYS + 1);
        let minute = w.last_minute(t0);
        assert_eq!(minute.iter().map(|x| x.1).sum::<u64>(), 1000);
        assert_eq!(
            minute[0],
            ("param:(other)".to_string(), 1000 - MAX_KEYS as u64)
        );
    }

    #[test]
    fn a_spent_budget_counts_new_names_as_other() {
        let mut w = Window::default();
        let t0 = 1_700_000_000_000;
        let mut budget = Budget::new(3 * key_cost(2) + 1);
        let kept: Vec<bool> = (0..10)
            .map(|i| w.add(t0, Kind::Param, format!("p{i}").as_bytes(), &mut budget))
            .collect();
        assert_eq!(kept.iter().filter(|k| **k).count(), 3);
        let minute = w.last_minute(t0);
        assert_eq!(minute[0], ("param:(other)".to_string(), 7));
        assert_eq!(minute.iter().map(|x| x.1).sum::<u64>(), 10);
        // Known names still count as themselves; so does every event of a
        // kind whose names no longer fit, as `(other)`.
        assert!(w.add(t0, Kind::Param, b"p1", &mut budget));
        assert!(!w.add(t0, Kind::Type, b"view_item", &mut budget));
        assert_eq!(
            w.last_minute(t0)
                .iter()
                .find(|(k, _)| k == "type:(other)")
                .map(|x| x.1),
            Some(1)
        );
    }
}
