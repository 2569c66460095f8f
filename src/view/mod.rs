//! The live tag-validation view: what an integration team watches while it
//! fixes an advertiser's tags. Per advertiser: counts by event type and
//! issue code over the last minute and hour, the parameters that fail most,
//! unknown products, and a live stream of its events filtered on the server.
//!
//! Workers copy each record into a lossy ring of their own (a full ring
//! drops the copy and counts it; ingestion never waits for the view), and
//! fold their ring into the view themselves in the moments they would
//! otherwise sleep (`fold`). The view keeps the aggregates and fans events
//! out to subscribers through bounded queues: a slow viewer loses events,
//! it never slows anything else. In steady state the view allocates
//! nothing, except the shared copy of an event streamed to a viewer.
//!
//! Whoever can reach the data port decides what the view is asked to keep
//! (any advertiser id, event type or product id a request names), so
//! everything it keeps is charged to one memory budget
//! (`server.view_memory_bytes`). Once it is spent, new advertisers go
//! untracked, new names count as `(other)`, and new unknown products and
//! recent events are not kept (counted); counting what is tracked goes on.
//! An advertiser with no event for an hour is forgotten and gives back what
//! it took, so a burst of made-up names does not hold the budget for good.
//!
//! # Layout
//! - `window`: minute and hour counts
//! - `fold`: how a worker folds its ring into the view while idle
//! - `recent`: the last events kept for a page that just opened
//! - `page.html`: the page served at `/` of the admin port

pub mod fold;
pub mod recent;
pub mod window;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;

use crate::clock::unix_ms;
use crate::record::peek;
pub use fold::Folder;
use recent::Recent;
use window::{Kind, Window};

/// The page served at `/`.
pub const PAGE: &str = include_str!("page.html");

/// Advertisers tracked at most (memory bound); events of others are counted.
const MAX_ADVERTISERS: usize = 10_000;
/// Unknown products remembered per advertiser.
const MAX_PRODUCTS: usize = 1_000;
/// Events queued per viewer before its stream starts losing them.
const SUBSCRIBER_QUEUE: usize = 1_024;
/// Viewers at once.
pub const MAX_SUBSCRIBERS: usize = 64;
/// An advertiser without events for this long is forgotten: its counts
/// have all left the hour, and what it kept goes back to the budget.
const IDLE_MS: u64 = 3_600_000;
/// How often idle advertisers are looked for.
const FORGET_EVERY_MS: u64 = 60_000;
/// What a hash map entry costs beyond its key and value, roughly.
const ENTRY_OVERHEAD: usize = 16;

/// Bytes the view may still keep. Every name, count slot, product and
/// recent-event buffer it keeps is charged when first allocated; the view
/// reuses what it has, so only forgetting an idle advertiser gives back.
#[derive(Debug)]
pub struct Budget {
    left: usize,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Budget {
        Budget { left: bytes }
    }

    /// Takes `n` bytes, or nothing when fewer are left.
    pub fn take(&mut self, n: usize) -> bool {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }

    /// Gives back `n` bytes taken before.
    fn give(&mut self, n: usize) {
        self.left += n;
    }
}

#[derive(Deserialize)]
struct Event<'a> {
    ts_ms: u64,
    #[serde(borrow, rename = "type")]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    advertiser: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    issues: EventIssues<'a>,
}

/// A record's issues, as many as the audit writes at most (it counts the
/// rest), read without allocating.
#[derive(Default)]
struct EventIssues<'a> {
    items: [Option<EventIssue<'a>>; crate::audit::Issues::CAP],
}

impl<'de: 'a, 'a> Deserialize<'de> for EventIssues<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for List<'a> {
            type Value = EventIssues<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of issues")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut list = EventIssues::default();
                for slot in &mut list.items {
                    match seq.next_element()? {
                        Some(issue) => *slot = Some(issue),
                        None => return Ok(list),
                    }
                }
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(list)
            }
        }
        d.deserialize_seq(List(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct EventIssue<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
    #[serde(borrow)]
    param: Cow<'a, str>,
    /// Empty when the record has none. (A plain `Cow`: serde borrows
    /// only those, an `Option<Cow>` would always be a copy.)
    #[serde(borrow, default)]
    value: Cow<'a, str>,
}

#[derive(Default)]
struct AdvertiserView {
    counts: Window,
    unknown_products: HashMap<Box<[u8]>, (u64, u64), ahash::RandomState>,
    /// The last events, or a sample of them when it sends many.
    recent: Recent,
    /// When its last event happened.
    last_ms: u64,
    /// What it has taken from the budget, given back when it is forgotten.
    charged: usize,
}

struct Subscriber {
    advertiser: String,
    invalid_only: bool,
    tx: SyncSender<Arc<str>>,
    open: Arc<AtomicBool>,
}

/// One viewer's queue of events; closing it (drop) frees its place.
pub struct Subscription {
    /// The events, oldest first.
    pub rx: Receiver<Arc<str>>,
    open: Arc<AtomicBool>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.open.store(false, Ordering::Release);
    }
}

/// The advertisers tracked and the budget their data is charged to.
struct Advertisers {
    /// Keyed by whatever advertiser id requests send, so with a hash keyed
    /// at random: under a fixed hash, ids crafted to collide would make
    /// every lookup walk thousands of entries. aHash rather than std's
    /// SipHash: folding in a valid event costs a quarter less
    /// (`cargo bench --bench view`, `bench/results/view-ahash-20261130-1015.md`).
    /// Keyed by the record's bytes, as the view's names all are
    /// (`record::peek`): read as UTF-8 only when shown.
    by_id: HashMap<Box<[u8]>, AdvertiserView, ahash::RandomState>,
    budget: Budget,
}

/// What the workers (folding records in) and the admin port share.
pub struct View {
    advertisers: Mutex<Advertisers>,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Record copies the workers' view rings had no room for.
    pub ring_dropped: AtomicU64,
    /// Events a slow viewer's queue had no room for.
    pub viewer_dropped: AtomicU64,
    /// Events of advertisers beyond the tracking limit.
    pub untracked: AtomicU64,
    /// Events written to viewers' streams.
    pub streamed: AtomicU64,
    /// Names, products and recent events not kept: the budget was spent.
    pub over_budget: AtomicU64,
    /// Set when folding a record in panicked: nothing is counted after it,
    /// so the view answers that it stopped rather than show old counts as
    /// live ones. Ingestion goes on (a full view ring drops copies).
    stopped: AtomicBool,
    /// When (ms since the epoch) idle advertisers are next forgotten.
    next_forget_ms: AtomicU64,
}

impl Default for View {
    fn default() -> View {
        View::new(DEFAULT_MEMORY_BYTES)
    }
}

/// The view's memory budget unless configured (`server.view_memory_bytes`).
pub const DEFAULT_MEMORY_BYTES: usize = 256 << 20;

/// Both of the view's locks, held for a run of records: one lock and unlock
/// per drain pass instead of two per record. (Per record, the unlock's
/// atomic swap waited for the copy into the recent buffers to reach the
/// cache, which made it most of the view's cost.) Taken in `subscribe`'s
/// order: subscribers, then advertisers.
pub struct Batch<'a> {
    view: &'a View,
    subs: MutexGuard<'a, Vec<Subscriber>>,
    ads: MutexGuard<'a, Advertisers>,
    /// The newest event time folded in by this batch (0 before one).
    newest_ms: u64,
}

impl Batch<'_> {
    /// Folds one record into the aggregates and hands it to matching
    /// viewers.
    pub fn add(&mut self, rec: &[u8]) {
        // Most events are valid: their type, advertiser and status are read
        // by scan. Invalid ones are scanned for their issues too, and only
        // a record with an escaped value among those (or out of the
        // written order) is parsed: parsing cost 8 times a scan
        // (`cargo bench --bench view`).
        let parsed;
        let slots: [Option<peek::Issue<'_>>; crate::audit::Issues::CAP];
        let (ts, event_type, advertiser, status, issues): (
            u64,
            peek::Value<'_>,
            peek::Value<'_>,
            peek::Value<'_>,
            &[Option<peek::Issue<'_>>],
        ) = match peek::ts_and_head(rec) {
            Some((ts, t, a, st)) if st == b"ok" => (ts, t, a, st, &[]),
            _ => {
                let mut found = [None; crate::audit::Issues::CAP];
                if let Some((ts, t, a, st)) = peek::ts_head_and_issues(rec, &mut found) {
                    slots = found;
                    (ts, t, a, st, &slots)
                } else {
                    let Ok(ev) = serde_json::from_slice::<Event<'_>>(rec) else {
                        return;
                    };
                    parsed = ev;
                    for (slot, i) in found.iter_mut().zip(&parsed.issues.items) {
                        *slot = i
                            .as_ref()
                            .map(|i| (i.code.as_bytes(), i.param.as_bytes(), i.value.as_bytes()));
                    }
                    slots = found;
                    (
                        parsed.ts_ms,
                        parsed.event_type.as_bytes(),
                        parsed.advertiser.as_bytes(),
                        parsed.status.as_bytes(),
                        &slots,
                    )
                }
            }
        };
        self.fold(ts, event_type, advertiser, status, issues, rec);
    }

    /// [`Batch::add`] for a valid event whose time, type and advertiser the
    /// caller already knows (`fold::entry_head`): no scan of the record.
    fn add_valid(&mut self, ts: u64, event_type: &[u8], advertiser: &[u8], rec: &[u8]) {
        self.fold(ts, event_type, advertiser, b"ok", &[], rec);
    }

    /// Folds one record, its fields read.
    fn fold(
        &mut self,
        ts: u64,
        event_type: &[u8],
        advertiser: &[u8],
        status: &[u8],
        issues: &[Option<peek::Issue<'_>>],
        rec: &[u8],
    ) {
        self.newest_ms = self.newest_ms.max(ts);
        let Advertisers { by_id, budget } = &mut *self.ads;
        let left = budget.left;
        let mut refused = 0;
        let full = by_id.len() >= MAX_ADVERTISERS;
        let view = match by_id.get_mut(advertiser) {
            Some(v) => Some(v),
            None if full => None,
            None => {
                if budget.take(advertiser.len() + AdvertiserView::COST) {
                    Some(by_id.entry(advertiser.into()).or_default())
                } else {
                    refused += 1;
                    None
                }
            }
        };
        if let Some(view) = view {
            let counts = &mut view.counts;
            refused += u64::from(!counts.add(ts, Kind::Type, event_type, budget));
            refused += u64::from(!counts.add(ts, Kind::Status, status, budget));
            for &(code, param, value) in issues.iter().flatten() {
                refused += u64::from(!counts.add(ts, Kind::Issue, code, budget));
                if code != b"unknown_product" {
                    refused += u64::from(!counts.add(ts, Kind::Param, param, budget));
                } else if !value.is_empty() {
                    let products = &mut view.unknown_products;
                    if let Some(e) = products.get_mut(value) {
                        e.0 += 1;
                        e.1 = ts;
                    } else if products.len() < MAX_PRODUCTS {
                        let cost =
                            value.len() + size_of::<(Box<[u8]>, (u64, u64))>() + ENTRY_OVERHEAD;
                        if budget.take(cost) {
                            products.insert(value.into(), (1, ts));
                        } else {
                            refused += 1;
                        }
                    }
                }
            }
            if !view.recent.offer(ts, rec, budget) {
                refused += 1;
            }
            view.last_ms = view.last_ms.max(ts);
            view.charged += left - budget.left;
        } else {
            self.view.untracked.fetch_add(1, Ordering::Relaxed);
        }
        if refused > 0 {
            self.view.over_budget.fetch_add(refused, Ordering::Relaxed);
        }
        if self.subs.is_empty() {
            return;
        }
        // A shared copy only when someone watches this advertiser.
        let mut text: Option<Arc<str>> = None;
        self.subs.retain(|s| {
            if s.advertiser.as_bytes() != advertiser || (s.invalid_only && status != b"invalid") {
                return true;
            }
            let t = text
                .get_or_insert_with(|| Arc::from(String::from_utf8_lossy(rec)))
                .clone();
            match s.tx.try_send(t) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    self.view.viewer_dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

impl AdvertiserView {
    /// What a new advertiser costs before its name: the entry, its count
    /// buckets and its recent-event queue.
    const COST: usize = size_of::<AdvertiserView>() + ENTRY_OVERHEAD + Window::COST + Recent::COST;
}

impl View {
    /// A view that keeps at most about `memory_bytes` of data.
    pub fn new(memory_bytes: usize) -> View {
        View {
            advertisers: Mutex::new(Advertisers {
                by_id: HashMap::default(),
                budget: Budget::new(memory_bytes),
            }),
            subscribers: Mutex::default(),
            ring_dropped: AtomicU64::new(0),
            viewer_dropped: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
            streamed: AtomicU64::new(0),
            over_budget: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            next_forget_ms: AtomicU64::new(unix_ms().saturating_add(FORGET_EVERY_MS)),
        }
    }

    /// Whether folding a record in panicked (see `stopped`).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Locks the view for a run of `Batch::add`; admin readers wait until
    /// it is dropped.
    pub fn batch(&self) -> Batch<'_> {
        let subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let ads = self.advertisers.lock().unwrap_or_else(|e| e.into_inner());
        Batch {
            view: self,
            subs,
            ads,
            newest_ms: 0,
        }
    }

    /// `batch`, unless either lock is held (by an admin reader, or another
    /// worker folding): a worker folds later rather than wait.
    pub fn try_batch(&self) -> Option<Batch<'_>> {
        let subs = match self.subscribers.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let ads = match self.advertisers.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(Batch {
            view: self,
            subs,
            ads,
            newest_ms: 0,
        })
    }

    /// Whether idle advertisers are due to be forgotten at `now_ms` (once a
    /// minute); true for one caller per minute.
    fn forget_due(&self, now_ms: u64) -> bool {
        let due = self.next_forget_ms.load(Ordering::Relaxed);
        now_ms >= due
            && self
                .next_forget_ms
                .compare_exchange(
                    due,
                    now_ms.saturating_add(FORGET_EVERY_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// After folding panicked: says so once, marks the view stopped and
    /// ends the viewers' streams, which would otherwise wait for events
    /// that never come.
    fn stop_after_panic(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(
            "folding an event into the live view panicked: the view answers 503 until trackplane is restarted; ingestion goes on"
        );
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Forgets advertisers with no event in the hour before `now_ms` and
    /// gives back what they took from the budget, so that names a burst of
    /// calls made up do not hold it for good. Returns how many it forgot.
    pub fn forget_idle(&self, now_ms: u64) -> usize {
        let mut ads = self.advertisers.lock().unwrap_or_else(|e| e.into_inner());
        forget_idle(&mut ads, now_ms)
    }

    /// Folds one record in (see `Batch::add`).
    pub fn add(&self, rec: &[u8]) {
        self.batch().add(rec);
    }

    /// A new viewer of one advertiser's events; `None` at the viewer limit
    /// or once the view stopped. The queue starts with the advertiser's
    /// recent events.
    pub fn subscribe(&self, advertiser: &str, invalid_only: bool) -> Option<Subscription> {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| s.open.load(Ordering::Acquire));
        // Read under the lock `stop_after_panic` clears the viewers under.
        if self.stopped() || subs.len() >= MAX_SUBSCRIBERS {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(SUBSCRIBER_QUEUE);
        if let Some(view) = self
            .advertisers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(advertiser.as_bytes())
        {
            for r in view.recent.iter() {
                let text = String::from_utf8_lossy(r);
                if !invalid_only || text.contains("\"status\":\"invalid\"") {
                    let _ = tx.try_send(Arc::from(text));
                }
            }
        }
        let open = Arc::new(AtomicBool::new(true));
        subs.push(Subscriber {
            advertiser: advertiser.to_owned(),
            invalid_only,
            tx,
            open: open.clone(),
        });
        Some(Subscription { rx, open })
    }

    /// Viewers connected now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.lock().map_or(0, |s| {
            s.iter().filter(|x| x.open.load(Ordering::Acquire)).count()
        })
    }

    /// Advertisers seen, sorted.
    pub fn advertisers_json(&self) -> String {
        let ads = self.advertisers.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<Cow<'_, str>> = ads
            .by_id
            .keys()
            .map(|k| String::from_utf8_lossy(k))
            .collect();
        names.sort();
        serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
    }

    /// The audit summary of one advertiser, or `None` when it was never
    /// seen.
    pub fn audit_json(&self, advertiser: &str) -> Option<String> {
        let now = unix_ms();
        let ads = self.advertisers.lock().unwrap_or_else(|e| e.into_inner());
        let view = ads.by_id.get(advertiser.as_bytes())?;
        let split = |counts: Vec<(String, u64)>| {
            let mut by: HashMap<&str, serde_json::Map<String, serde_json::Value>> = HashMap::new();
            for (key, n) in &counts {
                if let Some((kind, name)) = key.split_once(':') {
                    by.entry(kind)
                        .or_default()
                        .insert(name.to_owned(), (*n).into());
                }
            }
            let mut take = |k: &str| serde_json::Value::Object(by.remove(k).unwrap_or_default());
            serde_json::json!({
                "events_by_type": take("type"),
                "events_by_status": take("status"),
                "issues_by_code": take("issue"),
                "failing_params": take("param"),
            })
        };
        let mut products: Vec<(Cow<'_, str>, &(u64, u64))> = view
            .unknown_products
            .iter()
            .filter(|(_, (_, last))| last + 3_600_000 > now)
            .map(|(id, seen)| (String::from_utf8_lossy(id), seen))
            .collect();
        products.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        let doc = serde_json::json!({
            "advertiser": advertiser,
            "now_ms": now,
            "last_minute": split(view.counts.last_minute(now)),
            "last_hour": split(view.counts.last_hour(now)),
            "unknown_products": products.iter().take(50).map(|(id, (n, last))| serde_json::json!({"id": id, "count": n, "last_seen_ms": last})).collect::<Vec<_>>(),
            "recent": view.recent.iter().rev().filter_map(|r| serde_json::from_slice::<serde_json::Value>(r).ok()).collect::<Vec<_>>(),
        });
        Some(doc.to_string())
    }
}

/// Writes a viewer's events to `out` as Server-Sent Events until the viewer
/// goes away or `stopped` says so; a comment line every 15 s keeps proxies
/// from closing an idle stream.
pub fn serve_events(
    view: &View,
    sub: Subscription,
    mut out: impl std::io::Write,
    stopped: &dyn Fn() -> bool,
) {
    let mut idle = Duration::ZERO;
    while !stopped() {
        let wrote = match sub.rx.recv_timeout(Duration::from_millis(500)) {
            Ok(ev) => {
                idle = Duration::ZERO;
                view.streamed.fetch_add(1, Ordering::Relaxed);
                out.write_all(b"data: ")
                    .and_then(|()| out.write_all(ev.as_bytes()))
                    .and_then(|()| out.write_all(b"\n\n"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                idle += Duration::from_millis(500);
                if idle < Duration::from_secs(15) {
                    continue;
                }
                idle = Duration::ZERO;
                out.write_all(b": keep-alive\n\n")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if wrote.and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

/// `View::forget_idle` on the advertisers, under their lock.
fn forget_idle(ads: &mut Advertisers, now_ms: u64) -> usize {
    let Advertisers { by_id, budget } = ads;
    let before = by_id.len();
    by_id.retain(|_, a| {
        let idle = a.last_ms.saturating_add(IDLE_MS) <= now_ms;
        if idle {
            budget.give(a.charged);
        }
        !idle
    });
    before - by_id.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(adv: &str, ty: &str, issues: &str) -> Vec<u8> {
        let status = if issues.is_empty() { "ok" } else { "invalid" };
        format!(r#"{{"id":"n-0-1","ts_ms":{},"type":"{ty}","advertiser":"{adv}","status":"{status}","issues":[{issues}],"params":{{}}}}"#, unix_ms()).into_bytes()
    }

    #[test]
    fn aggregates_and_filters() {
        let v = View::default();
        let rx = v.subscribe("shop", true).unwrap();
        v.add(&rec(
            "shop",
            "purchase",
            r#"{"code":"bad_format","param":"value","value":"9,99"}"#,
        ));
        v.add(&rec(
            "shop",
            "view_item",
            r#"{"code":"unknown_product","param":"pid","value":"sku-9"}"#,
        ));
        v.add(&rec("shop", "view_item", ""));
        v.add(&rec(
            "other",
            "view_item",
            r#"{"code":"missing_param","param":"pid"}"#,
        ));
        let audit: serde_json::Value =
            serde_json::from_str(&v.audit_json("shop").unwrap()).unwrap();
        let m = &audit["last_minute"];
        assert_eq!(m["events_by_type"]["view_item"], 2);
        assert_eq!(m["events_by_status"]["invalid"], 2);
        assert_eq!(m["issues_by_code"]["bad_format"], 1);
        assert_eq!(m["failing_params"]["value"], 1);
        assert_eq!(audit["unknown_products"][0]["id"], "sku-9");
        assert_eq!(audit["recent"].as_array().unwrap().len(), 3);
        assert_eq!(audit["last_hour"]["events_by_type"]["purchase"], 1);
        // The viewer of shop's invalid events got exactly those two.
        let got: Vec<Arc<str>> = rx.rx.try_iter().collect();
        assert_eq!(got.len(), 2);
        assert!(got
            .iter()
            .all(|e| e.contains("\"advertiser\":\"shop\"") && e.contains("invalid")));
        assert!(v.audit_json("nobody").is_none());
        assert_eq!(v.advertisers_json(), r#"["other","shop"]"#);
    }

    /// Issues are read by scan; a record with an escaped value among them
    /// is parsed instead, and counts the same.
    #[test]
    fn scanned_and_parsed_records_count_alike() {
        let v = View::default();
        let plain = r#"{"code":"unknown_product","param":"pid","value":"sku-1"},{"code":"missing_param","param":"order_id"}"#;
        let escaped = r#"{"code":"unknown_product","param":"pid","value":"sku-\"2"},{"code":"missing_param","param":"order_id"}"#;
        assert!(crate::record::peek::ts_head_and_issues(
            &rec("shop", "purchase", plain),
            &mut [None; 2]
        )
        .is_some());
        assert!(crate::record::peek::ts_head_and_issues(
            &rec("shop", "purchase", escaped),
            &mut [None; 2]
        )
        .is_none());
        v.add(&rec("shop", "purchase", plain));
        v.add(&rec("shop", "purchase", escaped));
        let audit: serde_json::Value =
            serde_json::from_str(&v.audit_json("shop").unwrap()).unwrap();
        let m = &audit["last_minute"];
        assert_eq!(m["issues_by_code"]["unknown_product"], 2);
        assert_eq!(m["issues_by_code"]["missing_param"], 2);
        assert_eq!(m["failing_params"]["order_id"], 2);
        let mut ids: Vec<&str> = audit["unknown_products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["sku-\"2", "sku-1"]);
    }

    #[test]
    fn issues_past_the_audit_limit_are_skipped_not_refused() {
        let v = View::default();
        let issue = r#"{"code":"missing_param","param":"x"}"#;
        let issues = vec![issue; crate::audit::Issues::CAP + 4].join(",");
        v.add(&rec("shop", "purchase", &issues));
        let audit: serde_json::Value =
            serde_json::from_str(&v.audit_json("shop").unwrap()).unwrap();
        let m = &audit["last_minute"];
        assert_eq!(m["events_by_status"]["invalid"], 1);
        assert_eq!(
            m["issues_by_code"]["missing_param"],
            crate::audit::Issues::CAP as u64
        );
    }

    #[test]
    fn what_requests_ask_the_view_to_keep_stays_within_its_budget() {
        let budget = 1 << 20;
        let v = View::new(budget);
        // 2,000 advertisers with 8 KB records would take 50 MB of recent
        // events alone.
        let pad = "x".repeat(8000);
        let big = |adv: &str, ts: u64| {
            format!(r#"{{"id":"n-0-1","ts_ms":{ts},"type":"page_view","advertiser":"{adv}","status":"ok","issues":[],"params":{{"u":"{pad}"}}}}"#).into_bytes()
        };
        // A round a second, within the last minute, so that the rate at
        // which recent events are kept lets every one through.
        let start = unix_ms() - recent::RECENT as u64 * 1000;
        for round in 0..recent::RECENT {
            for a in 0..2000 {
                v.add(&big(&format!("a{a}"), start + round as u64 * 1000));
            }
            if round == 0 {
                assert!(v.over_budget.load(Ordering::Relaxed) > 0);
            }
        }
        let ads = v.advertisers.lock().unwrap();
        let kept: usize = ads
            .by_id
            .values()
            .flat_map(|a| a.recent.iter())
            .map(Vec::capacity)
            .sum();
        // Recent events and the advertisers' own cost fill the budget (each
        // advertiser also keeps a name of two to five bytes).
        let charged = kept + ads.by_id.len() * AdvertiserView::COST;
        assert!(charged > budget / 2 && charged <= budget, "{charged}");
        assert!(ads.by_id.len() < 2000);
        drop(ads);
        assert!(v.untracked.load(Ordering::Relaxed) > 0);
        // Advertisers tracked before the budget ran out keep counting, names
        // new to them as `(other)` once the little left (less than a recent
        // buffer, about 16 names) is spent; one that came after is
        // untracked.
        let refused = v.over_budget.load(Ordering::Relaxed);
        for t in 0..32 {
            v.add(&rec("a0", &format!("t{t}"), ""));
        }
        assert!(v.over_budget.load(Ordering::Relaxed) > refused);
        let audit: serde_json::Value = serde_json::from_str(&v.audit_json("a0").unwrap()).unwrap();
        let by_type = &audit["last_minute"]["events_by_type"];
        assert_eq!(by_type["page_view"], recent::RECENT as u64);
        let other = by_type["(other)"].as_u64().unwrap();
        assert!(other > 0 && other < 32, "{other}");
        assert!(v.audit_json("a1999").is_none());
    }

    #[test]
    fn idle_advertisers_are_forgotten_and_their_budget_comes_back() {
        let v = View::new(1 << 20);
        let old = |adv: &str, ts: u64| {
            format!(r#"{{"id":"n-0-1","ts_ms":{ts},"type":"page_view","advertiser":"{adv}","status":"ok","issues":[],"params":{{}}}}"#).into_bytes()
        };
        let now = unix_ms();
        v.add(&old("kept", now - IDLE_MS + 60_000));
        // Made-up names spend the rest of the budget...
        for a in 0..2000 {
            v.add(&old(&format!("junk{a}"), now - IDLE_MS - 1));
        }
        v.add(&old("shop", now));
        assert!(v.audit_json("shop").is_none());
        let spent = v.advertisers.lock().unwrap().budget.left;
        // ...until they have been idle for an hour: then they are forgotten,
        // the advertiser seen within the hour is not, and new ones fit.
        let junk = v.advertisers_json().matches("junk").count();
        assert!(junk > 10);
        assert_eq!(v.forget_idle(now), junk);
        assert!(v.advertisers.lock().unwrap().budget.left > spent);
        v.add(&old("shop", now));
        assert_eq!(v.advertisers_json(), r#"["kept","shop"]"#);
        assert_eq!(v.forget_idle(now), 0);
        assert_eq!(v.forget_idle(now + IDLE_MS), 2);
        assert_eq!(v.advertisers.lock().unwrap().budget.left, 1 << 20);
    }

    #[test]
    fn a_slow_viewer_loses_events_and_nothing_waits() {
        let v = View::default();
        let _rx = v.subscribe("shop", false).unwrap();
        for _ in 0..SUBSCRIBER_QUEUE + 10 {
            v.add(&rec("shop", "page_view", ""));
        }
        assert_eq!(v.viewer_dropped.load(Ordering::Relaxed), 10);
    }
}
