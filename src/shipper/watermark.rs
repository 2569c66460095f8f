//! Event-time watermarks: each round tells every partition of every topic
//! how far each stream's event time is complete, so that a consumer can
//! close its windows. A stream's watermark stops just below the earliest
//! event time of its oldest block not fully acknowledged; a caught-up
//! stream's follows the clock, less the flush window, but never passes what
//! its live server still holds in memory.
//!
//! # Invariants
//! - A stream's watermark never goes back.
//! - No new round is sent while one is still in flight: through a Kafka
//!   outage rounds would otherwise pile up in the producer's queue.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};

use super::kafka::WATERMARK;
use super::stream::StreamState;
use super::{Shipper, HEADER_NODE, HEADER_WATERMARK};
use crate::clock::unix_ms;

/// How long a watermark round waits for a topic's partitions (`watermarks`).
/// A broker that is up answers in milliseconds; one still being connected
/// to answers a later round.
const METADATA_WAIT: Duration = Duration::from_millis(250);

/// What the streams' leases said before a round read the segments
/// (`store::lease`).
pub(super) struct LeaseMarks {
    /// When they were read, Unix ms.
    now_ms: u64,
    /// Per stream: how far its live server has written, if one holds it.
    written: BTreeMap<u32, Option<u64>>,
}

/// The event time below which everything of `st` is acknowledged, at
/// `now_ms`, with `written_through` from the stream's lease while a
/// live server holds it (`store::lease`).
pub(super) fn watermark_of(
    st: &StreamState,
    flush_ms: u64,
    now_ms: u64,
    written_through: Option<u64>,
) -> u64 {
    let wm = match st.blocks.front() {
        // The first block not fully acknowledged bounds it.
        Some(b) => b.min_ts.saturating_sub(1),
        // Nothing unacknowledged was read: if the stream is caught up,
        // anything it will still write is younger than the flush
        // window, and than what its server still holds in memory (a
        // segment write failing).
        None if st.caught_up && st.in_flight == 0 => {
            let idle = now_ms.saturating_sub(flush_ms + 1000);
            let held = written_through.map_or(u64::MAX, |t| t.saturating_sub(1));
            idle.min(held).max(st.acked_ts)
        }
        None => st.acked_ts,
    };
    wm.max(st.last_watermark)
}

impl Shipper {
    /// How far the live servers holding each stream have written, for the
    /// next watermarks.
    pub(super) fn lease_marks(&self) -> LeaseMarks {
        let locks = crate::store::lease::HeldLocks::read();
        let written = self
            .streams
            .keys()
            .map(|&stream| {
                let mark =
                    crate::store::lease::written_through(&self.config.data_dir, stream, &locks);
                (stream, mark)
            })
            .collect();
        LeaseMarks {
            now_ms: unix_ms(),
            written,
        }
    }

    /// Sends each stream's watermark to every partition of every topic,
    /// from `marks` taken before the segments were last read.
    pub(super) fn watermarks(&mut self, marks: &LeaseMarks) {
        let mut topics: Vec<String> = vec![self.config.shipper.default_topic.clone()];
        topics.extend(self.config.shipper.topics.values().cloned());
        topics.sort();
        topics.dedup();
        // One unknown topic a round, in turns, waiting briefly: the wait
        // holds up the whole loop (deliveries, checkpoints, a restart, a
        // stop), and with every broker down it lasts its full length.
        if let Some(topic) = next_unknown(&topics, &self.partitions, &mut self.metadata_turn) {
            match self
                .producer
                .client()
                .fetch_metadata(Some(topic), METADATA_WAIT)
            {
                Ok(md) => {
                    let parts: Vec<i32> = md
                        .topics()
                        .iter()
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .collect();
                    if !parts.is_empty() {
                        self.partitions.insert(topic.clone(), parts);
                    }
                    self.metrics.broker_up.store(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics.broker_up.store(0, Ordering::Relaxed);
                    tracing::debug!(topic, error = %e, "no metadata for watermarks yet");
                }
            }
        }
        if self.watermarks_in_flight > 0 {
            return;
        }
        let flush_ms = self.config.storage.flush_interval_ms;
        for (&stream, st) in self.streams.iter_mut() {
            // A stream found after the marks were taken waits for the next.
            let Some(&written) = marks.written.get(&stream) else {
                continue;
            };
            let wm = watermark_of(st, flush_ms, marks.now_ms, written);
            st.last_watermark = wm;
            let body = format!(
                "{{\"watermark\":true,\"node\":\"{}\",\"stream\":{stream},\"event_time_ms\":{wm}}}",
                self.node
            );
            for (topic, parts) in &self.partitions {
                for &p in parts {
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: HEADER_WATERMARK,
                            value: Some("1"),
                        })
                        .insert(Header {
                            key: HEADER_NODE,
                            value: Some(self.node.as_str()),
                        });
                    let rec = BaseRecord::with_opaque_to(topic.as_str(), WATERMARK)
                        .partition(p)
                        .key(self.node.as_str())
                        .payload(&body)
                        .headers(headers);
                    if self.producer.send(rec).is_ok() {
                        self.watermarks_in_flight += 1;
                        self.metrics.watermarks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// The topic whose partitions the next watermark round asks for: the
/// unknown ones in turns, so that one that does not exist (never known)
/// does not keep the others from being asked.
fn next_unknown<'a>(
    topics: &'a [String],
    known: &BTreeMap<String, Vec<i32>>,
    turn: &mut usize,
) -> Option<&'a String> {
    let unknown: Vec<&String> = topics.iter().filter(|t| !known.contains_key(*t)).collect();
    if unknown.is_empty() {
        return None;
    }
    *turn = turn.wrapping_add(1);
    Some(unknown[*turn % unknown.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shipper::stream::rewind;
    use crate::shipper::stream::tests::caught_up;
    use crate::shipper::ShipperMetrics;

    /// Unknown topics take turns: one that never becomes known (it does
    /// not exist) does not keep the next from being asked, whichever
    /// comes first. (The test broker creates any topic asked about, so
    /// this cannot be shown against it.)
    #[test]
    fn unknown_topics_take_turns() {
        let topics: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut known = BTreeMap::new();
        let mut turn = 0;
        let mut asked = Vec::new();
        for _ in 0..6 {
            let t = next_unknown(&topics, &known, &mut turn).unwrap().clone();
            // "a" does not exist; the others answer when asked.
            if t != "a" {
                known.insert(t.clone(), vec![0]);
            }
            asked.push(t);
        }
        assert!(
            known.contains_key("b") && known.contains_key("c"),
            "{asked:?}"
        );
        assert_eq!(
            next_unknown(&topics, &known, &mut turn).map(String::as_str),
            Some("a")
        );
        known.insert("a".into(), vec![0]);
        assert_eq!(next_unknown(&topics, &known, &mut turn), None);
    }

    /// An idle stream's watermark follows the clock, less the flush window
    /// and a second, but never passes a record its live server still holds
    /// in memory (a segment write failing): that record is written later
    /// with the time it was received.
    #[test]
    fn an_idle_streams_watermark_waits_for_what_its_server_still_holds() {
        let now = 1_800_000_000_000;
        let mut st = caught_up(now - 120_000);
        let wm = |st: &StreamState, held| watermark_of(st, 100, now, held);
        // No live server holds the stream: nothing can be held for it.
        assert_eq!(wm(&st, None), now - 1100);
        // Its server has written all but the flush window.
        assert_eq!(wm(&st, Some(now - 80)), now - 1100);
        // Its server holds a record received a minute ago.
        assert_eq!(wm(&st, Some(now - 60_000)), now - 60_001);
        // Never below what is acknowledged, nor what was already sent.
        assert_eq!(wm(&st, Some(now - 600_000)), now - 120_000);
        st.last_watermark = now - 1100;
        assert_eq!(wm(&st, Some(now - 60_000)), now - 1100);
    }

    /// After a delivery failure the stream is read again from its last
    /// acknowledged record: until it is read to the end once more, its
    /// watermark waits at what is acknowledged.
    #[test]
    fn a_rewound_stream_is_not_read_to_its_end() {
        let now = 1_800_000_000_000;
        let mut st = caught_up(now - 120_000);
        rewind(&mut st, &ShipperMetrics::default());
        assert_eq!(watermark_of(&st, 100, now, None), now - 120_000);
    }
}
