//! `trackplane-shipper`: forwards every stream's segments to Kafka in
//! sequence order, including the open segments as they grow. Each record is
//! produced unchanged as the message value, keyed by advertiser, to its
//! event type's topic, by an idempotent producer. Checkpoints advance only
//! past contiguously acknowledged records; watermarks tell consumers how far
//! this node's event time is complete; shipped segments are deleted after a
//! retention period. The server never talks to Kafka: an outage only grows
//! the backlog on disk.
//!
//! # Layout
//! - `checkpoint`: per-stream position files and the contiguous-ack window
//! - `stream`: a stream's state, and how a failure rewinds or restarts it
//! - `kafka`: the producer and its delivery reports
//! - `watermark`: each stream's event-time watermark, sent to every partition
//! - `dead_letter`: the file for records Kafka will never accept
//! - `metrics`: lag, rates, errors, connectivity
//!
//! # Invariants
//! - At least once: a record is behind the checkpoint only after Kafka
//!   acknowledged it and every record before it.
//! - Only records on disk are produced: a block of an open segment waits
//!   for an fdatasync that covers it (`segment::follow`), so a power
//!   failure cannot make the server hand a shipped record's id out again.
//! - Memory is bounded by `max_in_flight` per stream and librdkafka's queue;
//!   beyond that, records stay on disk until there is room.
//! - A message Kafka can never take (too large, not authorized) goes to the
//!   dead-letter file with a metric; it never stops the stream for long. It
//!   counts as handled only once that file holds it on disk: while the file
//!   cannot be written, the stream waits at the record.
//! - A producer that fails for good (an idempotent producer's fatal error)
//!   is replaced, and every stream goes on from its last contiguous
//!   acknowledgement.
//! - Records missing from a stream's segments (deleted by the server's
//!   `drop_oldest` policy or quarantined before they were shipped, or past
//!   a corrupt block of a sealed segment) are passed over, logged and
//!   counted, once every record before them is acknowledged; they never
//!   hold back the checkpoint or the watermark.

pub mod checkpoint;
mod dead_letter;
pub mod kafka;
pub mod metrics;
mod stream;
mod watermark;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};

use crate::clock::unix_ms;
use crate::config::Config;
use crate::segment::Follower;
use checkpoint::{AckWindow, Position};
use dead_letter::DeadLetters;
use kafka::{opaque, unpack, Producer, WATERMARK};
pub use metrics::{ShipperMetrics, StreamGauges};
use stream::{
    advance, backoff, doubled, resend_from_acked, restart, rewind, BlockInfo, StreamState,
};

/// Header naming the event type.
pub const HEADER_TYPE: &str = "trackplane-type";
/// Header naming the node.
pub const HEADER_NODE: &str = "trackplane-node";
/// Header with the record format version.
pub const HEADER_FORMAT: &str = "trackplane-format";
/// Header marking a watermark message.
pub const HEADER_WATERMARK: &str = "trackplane-watermark";

/// The shipper: its producer, every stream's state, and its counters.
pub struct Shipper {
    config: Arc<Config>,
    producer: Producer,
    node: String,
    segments: PathBuf,
    streams: BTreeMap<u32, StreamState>,
    partitions: BTreeMap<String, Vec<i32>>,
    dead_letters: DeadLetters,
    /// Delivery reports being applied (kept to reuse its memory).
    reports: Vec<kafka::Delivery>,
    /// Watermark messages sent and not yet reported on. While any are, no
    /// new round is sent: through a Kafka outage, rounds would pile up in
    /// the producer's queue (every partition, every interval, for hours)
    /// where the next round supersedes them anyway.
    watermarks_in_flight: usize,
    /// Counters and gauges for the admin port.
    pub metrics: Arc<ShipperMetrics>,
    /// When to try again to start a producer in place of one that failed
    /// for good, after a try failed (`None`: no try is pending).
    restart_at: Option<Instant>,
    /// How long the next failed try waits: 1 s, doubling up to 30 s.
    restart_backoff: Duration,
    /// Which unknown topic the next watermark round asks about (they take
    /// turns: one that does not exist must not hide the others).
    metadata_turn: usize,
    /// Tests only: make the producer fail for good once this many records
    /// are acknowledged (`fail_producer_once_acked_for_tests`).
    fail_once_acked: Option<u64>,
}

/// The first wait before trying again to start a producer.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// The fields of a record the shipper routes by.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow, rename = "type")]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    advertiser: std::borrow::Cow<'a, str>,
}

/// Event type and advertiser of a record: by scan (record::peek), or by
/// parsing when a value has escapes.
fn route_of(rec: &[u8]) -> Option<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    if let Some((t, a, _)) = crate::record::peek::head(rec) {
        if let (Ok(t), Ok(a)) = (std::str::from_utf8(t), std::str::from_utf8(a)) {
            return Some((t.into(), a.into()));
        }
    }
    let head: Head<'_> = serde_json::from_slice(rec).ok()?;
    Some((head.event_type, head.advertiser))
}

impl Shipper {
    /// A shipper for `config`, resuming every stream at its checkpoint.
    pub fn new(config: Config) -> Result<Shipper, KafkaError> {
        let producer = kafka::producer(&config)?;
        let node = config.node();
        let segments = crate::store::segments_dir(&config.data_dir);
        let mut shipper = Shipper {
            producer,
            node,
            segments,
            streams: BTreeMap::new(),
            partitions: BTreeMap::new(),
            dead_letters: DeadLetters::new(&config),
            reports: Vec::new(),
            watermarks_in_flight: 0,
            metrics: Arc::new(ShipperMetrics::default()),
            config: Arc::new(config),
            restart_at: None,
            restart_backoff: RESTART_BACKOFF,
            metadata_turn: 0,
            fail_once_acked: None,
        };
        if let Err(e) = crate::store::lease::HeldLocks::try_read() {
            tracing::warn!(error = %e, "cannot read /proc/locks: a caught-up stream's watermark follows the clock alone, and may pass events its server holds while segment writes fail");
        }
        shipper.discover();
        Ok(shipper)
    }

    /// Adds state for every stream that has segments or a checkpoint.
    fn discover(&mut self) {
        let mut found: Vec<u32> = crate::segment::list(&self.segments)
            .unwrap_or_default()
            .iter()
            .map(|s| s.stream)
            .collect();
        found.extend(checkpoint::streams(&self.config.data_dir).unwrap_or_default());
        for stream in found {
            if self.streams.contains_key(&stream) {
                continue;
            }
            let from = match checkpoint::load(&self.config.data_dir, stream) {
                Ok(Some(p)) => p,
                Ok(None) => Position::default(),
                Err(e) => {
                    tracing::error!(stream, error = %e, "unreadable checkpoint; starting the stream from its first segment");
                    Position::default()
                }
            };
            tracing::info!(stream, next_seq = from.next_seq, "shipping stream");
            let follower = Follower::new(
                &self.segments,
                stream,
                from.next_seq,
                (from.block_offset > 0).then_some((from.segment_base, from.block_offset)),
            )
            .durable(std::fs::File::sync_data);
            self.streams
                .insert(stream, StreamState::new(follower, &from));
        }
    }

    /// Runs until `stop` is set, then flushes, checkpoints and returns.
    pub fn run(&mut self, stop: &AtomicBool) {
        let cfg = self.config.shipper.clone();
        let checkpoint_every = Duration::from_millis(cfg.checkpoint_interval_ms);
        let watermark_every = Duration::from_millis(cfg.watermark_interval_ms);
        let (mut last_checkpoint, mut last_watermark, mut last_housekeeping) =
            (Instant::now(), Instant::now(), Instant::now());
        loop {
            let stopping = stop.load(Ordering::Acquire);
            // How far each server has written is read before this round
            // reads the segments: a stream found caught up below has then
            // been read past everything written before the mark.
            let marks = (Instant::now().duration_since(last_watermark) >= watermark_every)
                .then(|| self.lease_marks());
            let mut produced = 0;
            if !stopping {
                let ids: Vec<u32> = self.streams.keys().copied().collect();
                for stream in ids {
                    produced += self.fill(stream);
                }
            }
            // Right after producing: with records in flight.
            if self
                .fail_once_acked
                .is_some_and(|n| self.metrics.acked.load(Ordering::Relaxed) >= n)
            {
                self.fail_once_acked = None;
                kafka::fail_for_tests(&self.producer);
            }
            self.producer.poll(if produced > 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(20)
            });
            self.take_deliveries();
            // After an error, or when a failed restart is due again.
            let errored = self.producer.context().errors.swap(false, Ordering::AcqRel);
            if self.restart_at.map_or(errored, |t| Instant::now() >= t) {
                match self.producer.client().fatal_error() {
                    Some(why) => self.replace_producer(why),
                    None => self.restart_at = None,
                }
            }
            let now = Instant::now();
            if stopping || now.duration_since(last_checkpoint) >= checkpoint_every {
                self.checkpoint_all();
                last_checkpoint = now;
            }
            if let Some(marks) = marks {
                self.watermarks(&marks);
                last_watermark = now;
            }
            if now.duration_since(last_housekeeping) >= Duration::from_secs(1) {
                self.discover();
                self.retention();
                self.update_gauges();
                last_housekeeping = now;
            }
            if stopping {
                let _ = self.producer.flush(Duration::from_secs(10));
                self.take_deliveries();
                self.checkpoint_all();
                return;
            }
        }
    }

    /// Starts a new producer in place of one that raised a fatal error (an
    /// idempotent producer does when it can no longer keep its ordering
    /// promise, e.g. a broker lost acknowledged messages). The old one
    /// fails every message from then on, so without this the shipper
    /// would retry for ever; the new one gets a new producer id, and
    /// every stream goes on from its last contiguous acknowledgement.
    /// A producer that cannot be created (a TLS file gone, say) is tried
    /// again after 1 s, doubling up to 30 s.
    fn replace_producer(&mut self, (code, reason): (RDKafkaErrorCode, String)) {
        if self.restart_at.is_none() {
            tracing::error!(
                ?code,
                reason,
                "the Kafka producer failed for good; starting a new one"
            );
        }
        let producer = match kafka::producer(&self.config) {
            Ok(p) => p,
            Err(e) => {
                self.metrics
                    .producer_restart_errors
                    .fetch_add(1, Ordering::Relaxed);
                let wait = self.restart_backoff;
                tracing::error!(error = %e, retry_in = ?wait, "cannot create a new Kafka producer");
                self.restart_at = Some(Instant::now() + wait);
                self.restart_backoff = doubled(wait);
                return;
            }
        };
        self.restart_at = None;
        self.restart_backoff = RESTART_BACKOFF;
        // Dropping the old one purges what it still holds (and reports it
        // to its own context, which goes with it): those are sent again.
        drop(std::mem::replace(&mut self.producer, producer));
        self.watermarks_in_flight = 0;
        self.metrics
            .producer_restarts
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!("a new Kafka producer replaced the one that failed for good");
        for st in self.streams.values_mut() {
            restart(st, &self.metrics);
        }
    }

    /// Makes the producer fail for good, as an idempotent producer does
    /// when a broker lost messages it had acknowledged. No broker does that
    /// on demand, so tests use librdkafka's own fault injection.
    #[doc(hidden)]
    pub fn fail_producer_for_tests(&self) {
        kafka::fail_for_tests(&self.producer);
    }

    /// `fail_producer_for_tests` from within `run`, once `acked` records
    /// are acknowledged: with others produced and not yet acknowledged.
    #[doc(hidden)]
    pub fn fail_producer_once_acked_for_tests(&mut self, acked: u64) {
        self.fail_once_acked = Some(acked);
    }

    /// Produces from one stream until its in-flight limit, the producer's
    /// queue, or the end of what is written. Returns records produced.
    fn fill(&mut self, stream: u32) -> usize {
        let max = self.config.shipper.max_in_flight;
        let Some(st) = self.streams.get_mut(&stream) else {
            return 0;
        };
        if st.retry_at.is_some_and(|t| Instant::now() < t) {
            return 0;
        }
        st.retry_at = None;
        st.rewinding = false;
        let mut produced = 0;
        while st.in_flight < max {
            if st.current.is_none() {
                let next = match st.past_gap.take() {
                    Some(loc) => Ok(Some(loc)),
                    None => st.follower.next_block(),
                };
                match next {
                    Ok(Some(loc)) => {
                        let h = loc.block.header;
                        if h.first_seq > st.read_through {
                            // Records between are not on disk and never will
                            // be: once everything before them is
                            // acknowledged, the stream goes on after them.
                            if st.in_flight > 0 || st.window.acked_through() < st.read_through {
                                st.past_gap = Some(loc);
                                st.caught_up = false;
                                break;
                            }
                            let missing = h.first_seq - st.read_through;
                            self.metrics.missing.fetch_add(missing, Ordering::Relaxed);
                            tracing::warn!(
                                stream,
                                from = st.read_through,
                                to = h.first_seq,
                                "records missing from the segments (deleted or quarantined before they were shipped); going on after them"
                            );
                            st.window = AckWindow::new(h.first_seq);
                            st.read_through = h.first_seq;
                        }
                        st.blocks.push_back(BlockInfo {
                            end_seq: h.end_seq(),
                            segment_base: loc.segment_base,
                            offset: loc.block.offset,
                            min_ts: h.min_ts,
                            max_ts: h.max_ts,
                        });
                        st.read_through = st.read_through.max(h.end_seq());
                        let skip = st.window.acked_through().saturating_sub(h.first_seq) as usize;
                        st.current = Some((loc, skip));
                        st.caught_up = false;
                    }
                    Ok(None) => {
                        st.caught_up = true;
                        break;
                    }
                    Err(e) => {
                        self.metrics.read_errors.fetch_add(1, Ordering::Relaxed);
                        // A sealed segment never changes: what it holds past
                        // a corrupt block is a gap (counted below) that no
                        // retry fills. Anything else may pass (an open
                        // segment being cut back, an I/O error).
                        if e.offset().is_some() && st.follower.segment_sealed() {
                            tracing::error!(stream, error = %e, "corrupt block in a sealed segment; going on with the next segment");
                            st.follower.skip_segment();
                            continue;
                        }
                        tracing::error!(stream, error = %e, "cannot read segment; retrying with backoff");
                        backoff(st);
                        break;
                    }
                }
            }
            let Some((loc, idx)) = st.current.as_mut() else {
                break;
            };
            let Some((seq, rec)) = loc.block.record(*idx) else {
                st.current = None;
                continue;
            };
            let route = route_of(rec);
            let (event_type, advertiser) = route
                .as_ref()
                .map_or(("", ""), |(t, a)| (t.as_ref(), a.as_ref()));
            let topic = self.config.shipper.topic(event_type);
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_TYPE,
                    value: Some(event_type),
                })
                .insert(Header {
                    key: HEADER_NODE,
                    value: Some(self.node.as_str()),
                })
                .insert(Header {
                    key: HEADER_FORMAT,
                    value: Some("1"),
                });
            let record = BaseRecord::with_opaque_to(topic, opaque(stream, seq))
                .key(advertiser)
                .payload(rec)
                .headers(headers);
            match self.producer.send(record) {
                Ok(()) => {
                    st.in_flight += 1;
                    *idx += 1;
                    produced += 1;
                    self.metrics.produced.fetch_add(1, Ordering::Relaxed);
                }
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => break,
                Err((e, _)) if kafka::is_poison(&e) => {
                    if self
                        .dead_letters
                        .write(&self.metrics, stream, seq, &e, rec)
                        .is_err()
                    {
                        // Produced again after the backoff, from this record.
                        backoff(st);
                        break;
                    }
                    *idx += 1;
                    advance(st, seq);
                }
                Err((e, _)) => {
                    self.metrics.delivery_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stream, seq, error = %e, "produce failed; retrying from the last acknowledged record");
                    rewind(st, &self.metrics);
                    break;
                }
            }
        }
        produced
    }

    /// Applies delivery reports: acknowledgements move the contiguous point,
    /// poison goes to the dead-letter file, other failures rewind.
    fn take_deliveries(&mut self) {
        // Swap buffers with the delivery callback: both keep their memory.
        let mut reports = std::mem::take(&mut self.reports);
        std::mem::swap(
            &mut reports,
            &mut *self
                .producer
                .context()
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if self
            .producer
            .context()
            .all_brokers_down
            .swap(false, Ordering::AcqRel)
        {
            self.metrics.broker_up.store(0, Ordering::Relaxed);
        }
        for d in reports.drain(..) {
            if d.failure.is_none() {
                self.metrics.broker_up.store(1, Ordering::Relaxed);
            }
            if d.opaque == WATERMARK {
                self.watermarks_in_flight = self.watermarks_in_flight.saturating_sub(1);
                if let Some((e, _)) = d.failure {
                    self.metrics
                        .watermark_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "watermark not delivered");
                }
                continue;
            }
            let (stream, seq) = unpack(d.opaque);
            let Some(st) = self.streams.get_mut(&stream) else {
                continue;
            };
            st.in_flight = st.in_flight.saturating_sub(1);
            match d.failure {
                None => {
                    self.metrics.acked.fetch_add(1, Ordering::Relaxed);
                    advance(st, seq);
                }
                Some((e, payload)) if kafka::is_poison(&e) => {
                    match self
                        .dead_letters
                        .write(&self.metrics, stream, seq, &e, &payload)
                    {
                        Ok(()) => advance(st, seq),
                        // Sent again from here, and dead-lettered again.
                        Err(_) => resend_from_acked(st, &self.metrics),
                    }
                }
                Some((e, _)) => {
                    self.metrics.delivery_errors.fetch_add(1, Ordering::Relaxed);
                    if !st.rewinding {
                        tracing::warn!(stream, seq, error = %e, "delivery failed; resending from the last acknowledged record");
                    }
                    resend_from_acked(st, &self.metrics);
                }
            }
        }
        self.reports = reports;
    }

    fn checkpoint_all(&mut self) {
        for (&stream, st) in self.streams.iter_mut() {
            let next = st.window.acked_through();
            if next == st.checkpointed {
                continue;
            }
            let (segment_base, block_offset) = st
                .blocks
                .front()
                .map_or((0, 0), |b| (b.segment_base, b.offset));
            let p = Position {
                next_seq: next,
                segment_base,
                block_offset,
                acked_ts_ms: st.acked_ts,
            };
            match checkpoint::store(&self.config.data_dir, stream, p) {
                Ok(()) => {
                    st.checkpointed = next;
                    self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::error!(stream, error = %e, "cannot write checkpoint"),
            }
        }
    }

    /// Deletes sealed segments whose every record is acknowledged and that
    /// are older than the retention period.
    fn retention(&mut self) {
        let retain = Duration::from_secs(self.config.shipper.retain_shipped_s);
        let Ok(segs) = crate::segment::list(&self.segments) else {
            return;
        };
        for pair in segs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.open || a.stream != b.stream {
                continue;
            }
            let Some(st) = self.streams.get(&a.stream) else {
                continue;
            };
            // Everything in `a` is below `b`'s base, so below the checkpoint.
            if b.base_seq > st.checkpointed {
                continue;
            }
            let old_enough = std::fs::metadata(&a.path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() >= retain);
            if old_enough && std::fs::remove_file(&a.path).is_ok() {
                self.metrics
                    .segments_deleted
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(segment = %a.path.display(), "deleted shipped segment");
            }
        }
    }

    fn update_gauges(&self) {
        let now = unix_ms();
        let segs = crate::segment::list(&self.segments).unwrap_or_default();
        let mut gauges = BTreeMap::new();
        for (&stream, st) in &self.streams {
            let acked = st.window.acked_through();
            let unread_bytes: u64 = segs
                .iter()
                .filter(|s| {
                    s.stream == stream
                        && s.base_seq >= st.blocks.back().map_or(0, |b| b.segment_base)
                })
                .filter_map(|s| std::fs::metadata(&s.path).ok().map(|m| m.len()))
                .sum();
            let oldest = st.blocks.front().map(|b| b.min_ts);
            gauges.insert(
                stream,
                StreamGauges {
                    lag_events: st.read_through.saturating_sub(acked),
                    lag_bytes: if st.caught_up && st.blocks.is_empty() {
                        0
                    } else {
                        unread_bytes
                    },
                    lag_seconds: oldest.map_or(0.0, |ts| now.saturating_sub(ts) as f64 / 1000.0),
                    checkpoint: st.checkpointed,
                    in_flight: st.in_flight as u64,
                },
            );
        }
        if let Ok(mut g) = self.metrics.streams.lock() {
            *g = gauges;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route_of;

    #[test]
    fn routes_by_scan_and_by_parse() {
        let plain =
            br#"{"id":"n-0-1","ts_ms":1,"type":"purchase","advertiser":"shop","status":"ok"}"#;
        let (t, a) = route_of(plain).unwrap();
        assert_eq!((t.as_ref(), a.as_ref()), ("purchase", "shop"));
        let escaped =
            br#"{"id":"n-0-1","ts_ms":1,"type":"a\"b","advertiser":"x\\y","status":"ok"}"#;
        let (t, a) = route_of(escaped).unwrap();
        assert_eq!((t.as_ref(), a.as_ref()), ("a\"b", "x\\y"));
        assert!(route_of(b"not json").is_none());
    }
}

#[cfg(test)]
mod scan_tests {
    #[test]
    fn encoded_records_take_the_scan_path() {
        use crate::audit::{Auditor, Catalogs, Route};
        use crate::config::Config;
        use crate::http::Params;
        let auditor = Auditor::new(&Config::embedded());
        let mut params = Params::with_capacity(8);
        params.parse_urlencoded(b"adv=adv-3&pid=a", 8).unwrap();
        let catalogs = Catalogs::default();
        let verdict = auditor.audit(&params, Route::Pixel, &catalogs);
        let env = crate::record::Envelope {
            node: "edge-1",
            stream: 0,
            seq: 1,
            ts_ms: 1,
            ip: None,
            user_agent: b"",
            referer: b"",
            withheld_param: b"",
        };
        let mut rec = Vec::new();
        crate::record::encode(&mut rec, &env, &verdict, &params);
        let (t, a) = super::route_of(&rec).unwrap();
        assert!(
            matches!(t, std::borrow::Cow::Borrowed(_))
                && matches!(a, std::borrow::Cow::Borrowed(_))
        );
        assert_eq!(
            (t.as_ref(), a.as_ref()),
            ("impression", "adv-3"),
            "{}",
            String::from_utf8_lossy(&rec)
        );
    }
}
