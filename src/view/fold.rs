//! How records reach the view: each worker folds its own view ring in, a
//! slice at a time, in the moments its runtime would otherwise sleep
//! (monoio's idle work, `set_idle_work`).
//!
//! A thread of its own did this before, sharing the workers' cores in the
//! idle scheduling class. Its work was small (about 2,000 instructions a
//! record), but it ran in the workers' gaps and every request that came
//! meanwhile preempted it: a rescheduling interrupt and two context
//! switches, which that thread's CPU time was charged with and which a
//! worker waking on an idle core does not pay. Done by the worker between
//! its own I/O, the same work needs neither: the worker reads its ring's
//! task-run flag between slices and goes back to its connections as soon
//! as a completion is pending, without having slept. Records gather
//! before a fold ([`GATHER_BYTES`] or [`GATHER_FOR`]), so that the fold's
//! own work is shared by a score of them.
//!
//! The view stays lossy and never holds up ingestion: a worker that finds
//! the view locked (an admin reader, another worker folding) leaves its
//! records for its next idle moment, and a worker that is never idle lets
//! its ring fill, which drops copies and counts them
//! (`trackplane_view_dropped_total{where="ring"}`), except that a ring past a
//! quarter is folded a slice at a time even while I/O waits. A fold that
//! panics stops the view (it answers 503) and leaves the worker serving.
//! The view allocates nothing in steady state but the shared copy of an
//! event streamed to a viewer, which is now made on a worker thread, off
//! the request path, and only while someone watches the live stream.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{forget_idle, Batch, View};
use crate::record::Spans;
use crate::ring::Consumer;

/// Bytes a worker writes before each record in its view ring
/// ([`entry_head`]).
pub const ENTRY_HEAD: usize = 16;

/// What a worker writes before a record in its view ring: the event's
/// time, then where the record's type and advertiser lie (`spans`, as
/// `record::encode` returned them, given only for a valid event), each
/// offset a `u16`; zeros without spans, or when they lie further in.
/// The fold reads a valid event's fields there (`head_fields`):
/// scanning the record for them was two fifths of its work (a call-graph
/// profile of a worker, session 56 in `docs/performance-log.md`), and
/// most events are valid. Any other record is scanned, as before.
pub fn entry_head(ts_ms: u64, spans: Option<&Spans>) -> [u8; ENTRY_HEAD] {
    let mut head = [0; ENTRY_HEAD];
    head[..8].copy_from_slice(&ts_ms.to_le_bytes());
    let offsets = spans.and_then(|s| {
        let at = |i: usize| u16::try_from(i).ok().map(u16::to_le_bytes);
        Some([
            at(s.event_type.start)?,
            at(s.event_type.end)?,
            at(s.advertiser.start)?,
            at(s.advertiser.end)?,
        ])
    });
    if let Some(offsets) = offsets {
        head[8..].copy_from_slice(offsets.as_flattened());
    }
    head
}

/// The event time, type and advertiser that an [`entry_head`] with spans
/// says `rec` holds; `None` for a head without them.
fn head_fields<'r>(head: &[u8; ENTRY_HEAD], rec: &'r [u8]) -> Option<(u64, &'r [u8], &'r [u8])> {
    let (ts, offsets) = head.split_first_chunk::<8>()?;
    let [type_start, type_end, ad_start, ad_end] =
        [0, 2, 4, 6].map(|i| usize::from(u16::from_le_bytes([offsets[i], offsets[i + 1]])));
    // An empty type still ends past the record's first byte.
    if type_end == 0 {
        return None;
    }
    Some((
        u64::from_le_bytes(*ts),
        rec.get(type_start..type_end)?,
        rec.get(ad_start..ad_end)?,
    ))
}

/// Folds one view ring entry: by its head when that says where the fields
/// are, by a scan of the record otherwise.
fn add_entry(batch: &mut Batch<'_>, entry: &[u8]) {
    let Some((head, rec)) = entry.split_first_chunk::<ENTRY_HEAD>() else {
        return;
    };
    match head_fields(head, rec) {
        Some((ts, event_type, advertiser)) => batch.add_valid(ts, event_type, advertiser, rec),
        None => batch.add(rec),
    }
}

/// Records folded per turn: a few tens of microseconds at the view's
/// per-record cost, which a request that arrives meanwhile may wait.
pub const TURN_RECORDS: usize = 32;

/// Bytes a view ring gathers before a fold, unless its first record has
/// waited [`GATHER_FOR`]. A fold takes the view's two locks and goes
/// through the advertisers' counts; a worker that idles between requests
/// folded each record alone, and the fold's own work (the locks, its
/// turn) came to about 260 ns a record beside the record's own 670 (a
/// call-graph profile at 20k/s, session 57 in `docs/performance-log.md`).
/// 8 KiB is about twenty of the loadtest's records, under a turn's
/// [`TURN_RECORDS`].
pub const GATHER_BYTES: usize = 8 << 10;

/// How long records gather at most: the view is live within seconds, and
/// an idle worker's heartbeat gives it a turn every 20 ms.
pub const GATHER_FOR: Duration = Duration::from_millis(50);

/// One worker's view ring and what it folds into.
pub struct Folder {
    ring: Consumer,
    view: Arc<View>,
    fold: fn(&mut Batch<'_>, &[u8]),
    /// When the records now waiting have gathered long enough: a turn
    /// that first finds them sets it ([`GATHER_FOR`] on), and each turn
    /// compares it with its reading, which is cheaper than the span
    /// between the two that a start time would take (an `Instant`'s
    /// difference is a normalized `Duration`, about 40 instructions).
    due: Option<Instant>,
    /// A fold left records: the next turn folds on, gathered or not.
    draining: bool,
}

impl Folder {
    /// Folds `ring` into `view`.
    pub fn new(ring: Consumer, view: Arc<View>) -> Folder {
        Folder::folding(ring, view, add_entry)
    }

    /// `new`, with what folds a record in given (a test makes it panic).
    pub(super) fn folding(
        ring: Consumer,
        view: Arc<View>,
        fold: fn(&mut Batch<'_>, &[u8]),
    ) -> Folder {
        Folder {
            ring,
            view,
            fold,
            due: None,
            draining: false,
        }
    }

    /// One turn of idle work at `now`: folds up to [`TURN_RECORDS`]
    /// records, unless I/O is waiting (`io_waiting`) and the ring is not
    /// past a quarter, or the records are still gathering
    /// ([`GATHER_BYTES`], [`GATHER_FOR`]). Returns whether records are left
    /// for another turn; false also when they gather, when the view is
    /// locked by someone else (later, then) and when it is stopped.
    pub fn turn(&mut self, io_waiting: bool, now: Instant) -> bool {
        let backlog = self.ring.backlog();
        if backlog == 0 || self.view.stopped() {
            (self.due, self.draining) = (None, false);
            return false;
        }
        if io_waiting && !self.ring.past_quarter() {
            return true;
        }
        let due = *self.due.get_or_insert_with(|| now + GATHER_FOR);
        let gathered = backlog >= GATHER_BYTES || now >= due;
        if !(gathered || self.draining) {
            return false;
        }
        let Some(mut batch) = self.view.try_batch() else {
            return false;
        };
        let (ring, fold) = (&mut self.ring, self.fold);
        let folded = catch_unwind(AssertUnwindSafe(|| {
            ring.drain_at_most(TURN_RECORDS, |rec| fold(&mut batch, rec));
            // The newest event's time stands for now, without a clock
            // read per turn: the records were received moments ago, and
            // the view's windows count by event time anyway.
            let now = batch.newest_ms;
            if now > 0 && batch.view.forget_due(now) {
                forget_idle(&mut batch.ads, now);
            }
        }));
        // Its locks go before a panic is dealt with, which takes one.
        drop(batch);
        if folded.is_err() {
            self.view.stop_after_panic();
            return false;
        }
        self.draining = self.ring.backlog() > 0;
        if !self.draining {
            self.due = None;
        }
        self.draining
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_ms;

    /// A view ring entry without spans: its record is scanned.
    fn rec(adv: &str) -> Vec<u8> {
        let rec = format!(
            r#"{{"id":"n-0-1","ts_ms":{},"type":"view_item","advertiser":"{adv}","status":"ok","issues":[],"params":{{}}}}"#,
            unix_ms()
        );
        [&entry_head(0, None), rec.as_bytes()].concat()
    }

    #[test]
    fn entries_read_by_their_head_fold_as_their_records_scanned() {
        use crate::record::{encode_query, Envelope};
        let (by_entry, by_scan) = (View::default(), View::default());
        let (mut spanned, mut heads) = (0, 0);
        // Valid events (spanned), and invalid ones: one escaped, one
        // missing a parameter, one of an advertiser not configured.
        let queries = [
            "adv=demo&ev=page_view",
            "adv=demo",
            "adv=demo&ev=page_view&uid=u1",
            "adv=de%22mo&ev=page_view",
            "adv=demo&ev=view_item",
            "adv=other&ev=page_view",
        ];
        for (i, query) in queries.iter().enumerate() {
            let env = Envelope {
                node: "n",
                stream: 0,
                seq: i as u64,
                ts_ms: unix_ms(),
                ip: None,
                user_agent: b"",
                referer: b"",
                withheld_param: b"",
            };
            let mut rec = Vec::new();
            let (spans, valid) = encode_query(&mut rec, &env, query);
            let head = entry_head(env.ts_ms, spans.as_ref().filter(|_| valid));
            spanned += usize::from(spans.is_some() && valid);
            heads += usize::from(head[8..] != [0; 8]);
            add_entry(&mut by_entry.batch(), &[&head, rec.as_slice()].concat());
            by_scan.add(&rec);
        }
        assert_eq!((spanned, heads), (3, 3), "three read by their head");
        let audit = |view: &View, adv: &str| {
            let mut doc: serde_json::Value =
                serde_json::from_str(&view.audit_json(adv).expect(adv)).unwrap();
            doc["now_ms"].take();
            doc
        };
        for adv in ["demo", "de\"mo", "other"] {
            assert_eq!(audit(&by_entry, adv), audit(&by_scan, adv), "{adv}");
        }
        let demo = audit(&by_entry, "demo");
        assert_eq!(demo["last_hour"]["events_by_type"]["page_view"], 2);
        assert_eq!(demo["last_hour"]["events_by_type"]["impression"], 1);
        assert_eq!(demo["last_hour"]["events_by_type"]["view_item"], 1);
        assert_eq!(demo["last_hour"]["events_by_status"]["ok"], 3);
        assert_eq!(demo["last_hour"]["events_by_status"]["invalid"], 1);
    }

    /// A turn at a time when whatever waits has gathered long enough.
    fn turn(folder: &mut Folder, io_waiting: bool) -> bool {
        let now = Instant::now();
        folder.due = Some(now);
        folder.turn(io_waiting, now)
    }

    fn seen(view: &View, adv: &str) -> u64 {
        let audit: serde_json::Value =
            serde_json::from_str(&view.audit_json(adv).unwrap_or_else(|| "{}".into())).unwrap();
        audit["last_hour"]["events_by_type"]["view_item"]
            .as_u64()
            .unwrap_or(0)
    }

    #[test]
    fn a_turn_folds_a_slice_and_says_whether_more_is_left() {
        let view = Arc::new(View::default());
        let (mut tx, rx) = crate::ring::ring(1 << 20);
        let mut folder = Folder::new(rx, view.clone());
        assert!(!turn(&mut folder, false), "nothing to fold");
        for _ in 0..TURN_RECORDS + 5 {
            tx.push(&rec("shop")).unwrap();
        }
        assert!(turn(&mut folder, false), "a slice, and more left");
        assert_eq!(seen(&view, "shop"), TURN_RECORDS as u64);
        assert!(!turn(&mut folder, false), "the rest, and nothing left");
        assert_eq!(seen(&view, "shop"), TURN_RECORDS as u64 + 5);
    }

    #[test]
    fn records_gather_for_a_folds_worth_or_until_they_have_waited() {
        let view = Arc::new(View::default());
        let (mut tx, rx) = crate::ring::ring(1 << 20);
        let mut folder = Folder::new(rx, view.clone());
        let t0 = Instant::now();
        tx.push(&rec("shop")).unwrap();
        assert!(!folder.turn(false, t0), "one record gathers");
        assert!(!folder.turn(false, t0 + GATHER_FOR / 2));
        assert_eq!(seen(&view, "shop"), 0);
        assert!(!folder.turn(false, t0 + GATHER_FOR), "waited: folded");
        assert_eq!(seen(&view, "shop"), 1);
        // The wait counts from the first turn that finds records again.
        let t1 = t0 + GATHER_FOR * 3;
        let one = rec("shop");
        tx.push(&one).unwrap();
        // What a record takes in the ring, its length and padding included.
        let worth = GATHER_BYTES.div_ceil(folder.ring.backlog());
        for _ in 0..worth - 2 {
            tx.push(&one).unwrap();
        }
        assert!(!folder.turn(false, t1), "short of a fold's worth");
        assert_eq!(seen(&view, "shop"), 1);
        tx.push(&one).unwrap();
        assert!(worth > TURN_RECORDS);
        assert!(folder.turn(false, t1), "a fold's worth: a slice at once");
        assert_eq!(seen(&view, "shop"), 1 + TURN_RECORDS as u64);
        assert!(!folder.turn(false, t1), "and the rest");
        assert_eq!(seen(&view, "shop"), 1 + worth as u64);
    }

    #[test]
    fn with_io_waiting_only_a_ring_past_a_quarter_is_folded() {
        let view = Arc::new(View::default());
        let one = rec("shop");
        // A ring a few dozen records fill past a quarter.
        let (mut tx, rx) = crate::ring::ring((32 * one.len()).next_power_of_two());
        let mut folder = Folder::new(rx, view.clone());
        tx.push(&one).unwrap();
        assert!(turn(&mut folder, true), "left for a quiet moment");
        assert_eq!(seen(&view, "shop"), 0);
        while !tx.past_quarter() {
            tx.push(&one).unwrap();
        }
        turn(&mut folder, true);
        assert!(seen(&view, "shop") > 0, "a ring past a quarter is folded");
    }

    #[test]
    fn a_locked_view_is_left_for_later() {
        let view = Arc::new(View::default());
        let (mut tx, rx) = crate::ring::ring(1 << 20);
        let mut folder = Folder::new(rx, view.clone());
        tx.push(&rec("shop")).unwrap();
        {
            let _reader = view.batch();
            assert!(!turn(&mut folder, false), "no waiting for the lock");
        }
        assert_eq!(seen(&view, "shop"), 0);
        assert!(!turn(&mut folder, false));
        assert_eq!(seen(&view, "shop"), 1);
    }

    #[test]
    fn a_fold_that_panics_stops_the_view_and_ends_its_streams() {
        let view = Arc::new(View::default());
        let sub = view.subscribe("shop", false).unwrap();
        let (mut tx, rx) = crate::ring::ring(1 << 12);
        let mut folder = Folder::folding(rx, view.clone(), |_, _| panic!("injected"));
        tx.push(&rec("shop")).unwrap();
        assert!(!turn(&mut folder, false), "nothing more after a panic");
        assert!(view.stopped());
        // The viewer's stream ends instead of waiting for events for good.
        assert!(matches!(
            sub.rx.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ));
        assert_eq!(view.subscribers(), 0);
        assert!(view.subscribe("shop", false).is_none());
        // Later records are left alone, and the view still answers.
        tx.push(&rec("shop")).unwrap();
        assert!(!turn(&mut folder, false));
        assert!(view.advertisers_json().starts_with('['));
    }

    #[test]
    fn idle_advertisers_are_forgotten_once_a_minute_by_a_fold() {
        let view = Arc::new(View::default());
        let (mut tx, rx) = crate::ring::ring(1 << 20);
        let mut folder = Folder::new(rx, view.clone());
        tx.push(&rec("shop")).unwrap();
        turn(&mut folder, false);
        assert_eq!(seen(&view, "shop"), 1);
        // Pretend the hour without events has passed and the minute is up.
        view.advertisers
            .lock()
            .unwrap()
            .by_id
            .values_mut()
            .for_each(|a| a.last_ms = 0);
        view.next_forget_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
        tx.push(&rec("other")).unwrap();
        turn(&mut folder, false);
        assert_eq!(seen(&view, "shop"), 0, "shop was forgotten");
        assert_eq!(seen(&view, "other"), 1);
        assert!(
            view.next_forget_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                > unix_ms(),
            "the next look is a minute away"
        );
    }
}
