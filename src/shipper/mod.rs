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
//! - `kafka`: the producer and its delivery reports
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
pub mod kafka;
pub mod metrics;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};

use crate::clock::unix_ms;
use crate::config::Config;
use crate::segment::{Follower, Located};
use checkpoint::{AckWindow, Position};
use kafka::{opaque, unpack, Producer, WATERMARK};
pub use metrics::{ShipperMetrics, StreamGauges};

/// Header naming the event type.
pub const HEADER_TYPE: &str = "trackplane-type";
/// Header naming the node.
pub const HEADER_NODE: &str = "trackplane-node";
/// Header with the record format version.
pub const HEADER_FORMAT: &str = "trackplane-format";
/// Header marking a watermark message.
pub const HEADER_WATERMARK: &str = "trackplane-watermark";

/// A block read and not yet fully acknowledged.
struct BlockInfo {
    end_seq: u64,
    segment_base: u64,
    offset: u64,
    min_ts: u64,
    max_ts: u64,
}

struct StreamState {
    follower: Follower,
    /// The block being produced and the index of its next record.
    current: Option<(Located, usize)>,
    /// A block read past a gap in the sequence, waiting until everything
    /// before the gap is acknowledged.
    past_gap: Option<Located>,
    window: AckWindow,
    blocks: VecDeque<BlockInfo>,
    in_flight: usize,
    acked_ts: u64,
    checkpointed: u64,
    read_through: u64,
    caught_up: bool,
    retry_at: Option<Instant>,
    /// A rewind waits out its backoff: it will send again everything from
    /// the last contiguous acknowledgement, so a failure reported meanwhile
    /// needs no rewind of its own. (A backoff after a read error is no
    /// rewind: a failure reported during one must still rewind.)
    rewinding: bool,
    backoff: Duration,
    last_watermark: u64,
}

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

/// How long a watermark round waits for a topic's partitions (`watermarks`).
/// A broker that is up answers in milliseconds; one still being connected
/// to answers a later round.
const METADATA_WAIT: Duration = Duration::from_millis(250);

/// A stream's first wait after a failure, doubling up to 30 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The first wait before trying again to start a producer.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// What the streams' leases said before a round read the segments
/// (`store::lease`).
struct LeaseMarks {
    /// When they were read, Unix ms.
    now_ms: u64,
    /// Per stream: how far its live server has written, if one holds it.
    written: BTreeMap<u32, Option<u64>>,
}

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
        return Some((t.into(), a.into()));
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
                Ok(None) => Position {
                    next_seq: 0,
                    segment_base: 0,
                    block_offset: 0,
                    acked_ts_ms: 0,
                },
                Err(e) => {
                    tracing::error!(stream, error = %e, "unreadable checkpoint; starting the stream from its first segment");
                    Position {
                        next_seq: 0,
                        segment_base: 0,
                        block_offset: 0,
                        acked_ts_ms: 0,
                    }
                }
            };
            tracing::info!(stream, next_seq = from.next_seq, "shipping stream");
            self.streams.insert(
                stream,
                StreamState {
                    follower: Follower::new(
                        &self.segments,
                        stream,
                        from.next_seq,
                        (from.block_offset > 0).then_some((from.segment_base, from.block_offset)),
                    )
                    .durable(std::fs::File::sync_data),
                    current: None,
                    past_gap: None,
                    window: AckWindow::new(from.next_seq),
                    blocks: VecDeque::new(),
                    in_flight: 0,
                    acked_ts: from.acked_ts_ms,
                    checkpointed: from.next_seq,
                    read_through: from.next_seq,
                    caught_up: false,
                    retry_at: None,
                    rewinding: false,
                    backoff: FIRST_BACKOFF,
                    last_watermark: from.acked_ts_ms,
                },
            );
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

    /// The event time below which everything of `st` is acknowledged, at
    /// `now_ms`, with `written_through` from the stream's lease while a
    /// live server holds it (`store::lease`).
    fn watermark_of(
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

    /// How far the live servers holding each stream have written, for the
    /// next watermarks.
    fn lease_marks(&self) -> LeaseMarks {
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
    fn watermarks(&mut self, marks: &LeaseMarks) {
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
            let wm = Self::watermark_of(st, flush_ms, marks.now_ms, written);
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

/// Moves a stream's contiguous point past `seq` if it can, dropping the
/// blocks that are now fully acknowledged.
fn advance(st: &mut StreamState, seq: u64) {
    if st.window.ack(seq).is_some() {
        let through = st.window.acked_through();
        while st.blocks.front().is_some_and(|b| b.end_seq <= through) {
            if let Some(b) = st.blocks.pop_front() {
                st.acked_ts = st.acked_ts.max(b.max_ts);
            }
        }
        st.backoff = FIRST_BACKOFF;
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

/// After a record's delivery failed: rewinds, unless a rewind that will
/// send it again already waits.
fn resend_from_acked(st: &mut StreamState, metrics: &ShipperMetrics) {
    if !st.rewinding {
        rewind(st, metrics);
    }
}

/// Starts the stream again at its last contiguous acknowledgement with a
/// new producer: what the old one held is gone, and the failures that
/// grew the stream's backoff (or left a wait pending) were the old one's,
/// so it produces at once.
fn restart(st: &mut StreamState, metrics: &ShipperMetrics) {
    st.in_flight = 0;
    read_again_from_acked(st, metrics);
    st.caught_up = false;
    st.retry_at = None;
    st.rewinding = false;
    st.backoff = FIRST_BACKOFF;
}

/// Starts the stream again at its last contiguous acknowledgement, after a
/// growing backoff.
fn rewind(st: &mut StreamState, metrics: &ShipperMetrics) {
    read_again_from_acked(st, metrics);
    backoff(st);
    st.rewinding = true;
}

/// What a rewind and a restart share: counted as a retry, the stream is
/// read again from its last contiguous acknowledgement.
fn read_again_from_acked(st: &mut StreamState, metrics: &ShipperMetrics) {
    metrics.retries.fetch_add(1, Ordering::Relaxed);
    let from = st.window.acked_through();
    st.follower.rewind(from);
    st.window.reset();
    st.current = None;
    st.past_gap = None;
    st.blocks.clear();
    st.read_through = from;
}

/// Holds a stream back after a failure; until it reads to the end again it
/// is not caught up (its watermark then waits at what is acknowledged).
fn backoff(st: &mut StreamState) {
    st.caught_up = false;
    st.retry_at = Some(Instant::now() + st.backoff);
    st.backoff = doubled(st.backoff);
}

/// The wait after one of `wait` failed again: twice as long, up to 30 s.
fn doubled(wait: Duration) -> Duration {
    (wait * 2).min(Duration::from_secs(30))
}

/// The dead-letter file: records Kafka will never accept, one JSON line
/// each (`{"stream":..,"seq":..,"error":..,"record":..}`), fsynced before
/// the record counts as handled. A line that could not be written whole is
/// cut off again, and a file whose last line was torn (a crash in the
/// middle of a write) gets a line break before the next, so every line
/// stays one record.
struct DeadLetters {
    path: PathBuf,
    file: Option<File>,
}

impl DeadLetters {
    fn new(config: &Config) -> DeadLetters {
        DeadLetters {
            path: checkpoint::dir(&config.data_dir).join("dead-letter.jsonl"),
            file: None,
        }
    }

    /// Writes one record with its error, durably, and counts it. On an
    /// error the record is not in the file: the caller holds its stream at
    /// the record and tries again later, so a full disk delays the stream
    /// instead of losing the record once retention deletes its segment.
    fn write(
        &mut self,
        metrics: &ShipperMetrics,
        stream: u32,
        seq: u64,
        error: &KafkaError,
        record: &[u8],
    ) -> std::io::Result<()> {
        use crate::record::json::{write_str, write_u64};
        let mut line = b"{\"stream\":".to_vec();
        write_u64(&mut line, u64::from(stream));
        line.extend_from_slice(b",\"seq\":");
        write_u64(&mut line, seq);
        line.extend_from_slice(b",\"error\":");
        write_str(&mut line, error.to_string().as_bytes());
        line.extend_from_slice(b",\"record\":");
        // A record is JSON already; anything else is kept as a string.
        if serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok() {
            line.extend_from_slice(record);
        } else {
            write_str(&mut line, record);
        }
        line.extend_from_slice(b"}\n");
        match self.append(&line) {
            Ok(()) => {
                metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                tracing::error!(stream, seq, %error, "message Kafka will never accept; written to the dead-letter file");
                Ok(())
            }
            Err(e) => {
                metrics.dead_letter_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(stream, seq, %error, path = %self.path.display(), io_error = %e,
                    "message Kafka will never accept, and the dead-letter file cannot take it; holding the stream there and trying again");
                Err(e)
            }
        }
    }

    /// Appends one whole line and syncs it, or leaves the file as it was
    /// (as far as cutting it back can) and closes it.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let f = match self.file.as_mut() {
            Some(f) => f,
            None => self.file.insert(open_for_lines(&self.path)?),
        };
        let len = f.metadata()?.len();
        let written = f.write_all(line).and_then(|()| f.sync_data());
        if written.is_err() {
            let _ = f.set_len(len);
            self.file = None;
        }
        written
    }
}

/// Opens a file of lines to append to, creating it (its name made
/// durable) or ending a last line that a crash tore, so that the next line
/// starts on its own.
fn open_for_lines(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::FileExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    crate::segment::writer::sync_dir(dir)?;
    let len = f.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        f.read_exact_at(&mut last, len - 1)?;
    }
    if last[0] != b'\n' {
        f.write_all(b"\n")?;
    }
    Ok(f)
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

#[cfg(test)]
mod dead_letter_tests {
    use super::*;

    /// A dead-letter file (not created yet) under a new data directory,
    /// kept while the first lives; its path; an error to file records under.
    fn dead_letters() -> (tempfile::TempDir, DeadLetters, PathBuf, KafkaError) {
        let dir = tempfile::tempdir().unwrap();
        let config =
            Config::from_toml_str(&format!("data_dir = \"{}\"\n", dir.path().display()), "t")
                .unwrap();
        let path = dir.path().join("shipper/dead-letter.jsonl");
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        (dir, DeadLetters::new(&config), path, e)
    }

    #[test]
    fn poison_is_written_as_one_json_line_each_and_counted() {
        let (_dir, mut dl, path, e) = dead_letters();
        let metrics = ShipperMetrics::default();
        dl.write(&metrics, 2, 41, &e, br#"{"id":"n-2-41"}"#)
            .unwrap();
        dl.write(&metrics, 2, 42, &e, b"not json \"quoted\"")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0]["stream"].as_u64(), lines[0]["seq"].as_u64()),
            (Some(2), Some(41))
        );
        assert_eq!(lines[0]["record"]["id"], "n-2-41");
        assert!(
            lines[0]["error"].as_str().unwrap().contains("too large"),
            "{}",
            lines[0]["error"]
        );
        assert_eq!(lines[1]["record"], "not json \"quoted\"");
        assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 2);
    }

    /// A write the disk refuses (/dev/full: ENOSPC) is an error and not
    /// counted as written; the same record is written once it can be.
    #[test]
    fn a_refused_write_is_an_error_and_can_be_tried_again() {
        let (_dir, mut dl, path, e) = dead_letters();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let metrics = ShipperMetrics::default();
        assert!(dl.write(&metrics, 0, 7, &e, b"{}").is_err());
        assert!(dl.write(&metrics, 0, 7, &e, b"{}").is_err());
        assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.dead_letter_errors.load(Ordering::Relaxed), 2);
        std::fs::remove_file(&path).unwrap();
        dl.write(&metrics, 0, 7, &e, b"{}").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 1);
    }

    /// A line torn by a crash in the middle of its write is ended before
    /// the next one, so that one parses.
    #[test]
    fn a_torn_last_line_is_ended_first() {
        let (_dir, mut dl, path, e) = dead_letters();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"stream\":0,\"seq\":6,\"err").unwrap();
        let metrics = ShipperMetrics::default();
        dl.write(&metrics, 0, 7, &e, br#"{"id":"n-0-7"}"#).unwrap();
        dl.write(&metrics, 0, 8, &e, br#"{"id":"n-0-8"}"#).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (line, id) in lines[1..].iter().zip(["n-0-7", "n-0-8"]) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["record"]["id"], id);
        }
    }
}

#[cfg(test)]
mod watermark_tests {
    use super::*;

    /// A stream read to its end with every record acknowledged, the last
    /// one received at `acked_ts`.
    fn caught_up(acked_ts: u64) -> StreamState {
        StreamState {
            follower: Follower::new(std::path::Path::new("/nonexistent"), 0, 0, None),
            current: None,
            past_gap: None,
            window: AckWindow::new(0),
            blocks: VecDeque::new(),
            in_flight: 0,
            acked_ts,
            checkpointed: 0,
            read_through: 0,
            caught_up: true,
            retry_at: None,
            rewinding: false,
            backoff: FIRST_BACKOFF,
            last_watermark: 0,
        }
    }

    /// A delivery failure reported while a stream waits out a read error's
    /// backoff still rewinds it: the failed record is sent again. It used
    /// not to (the check was "no backoff pending"), which left a hole in
    /// the acknowledgements that held the checkpoint below it for good.
    /// A failure reported while a rewind waits adds no second rewind.
    #[test]
    fn a_failure_during_a_read_backoff_still_rewinds() {
        let metrics = ShipperMetrics::default();
        let mut st = caught_up(0);
        st.window = AckWindow::new(5);
        st.read_through = 9;
        backoff(&mut st);
        resend_from_acked(&mut st, &metrics);
        assert_eq!(metrics.retries.load(Ordering::Relaxed), 1);
        assert!(st.rewinding);
        assert_eq!(st.read_through, 5, "read again from the failed record");
        resend_from_acked(&mut st, &metrics);
        assert_eq!(metrics.retries.load(Ordering::Relaxed), 1);
    }

    /// A new producer starts a stream at its last contiguous
    /// acknowledgement at once: the backoff that the old producer's
    /// failures grew (to 30 s, with a producer that could not be replaced
    /// for minutes) is not waited out again.
    #[test]
    fn a_new_producer_starts_a_stream_at_once() {
        let metrics = ShipperMetrics::default();
        let mut st = caught_up(0);
        st.window = AckWindow::new(5);
        st.read_through = 9;
        st.in_flight = 4;
        for _ in 0..12 {
            resend_from_acked(&mut st, &metrics);
            st.rewinding = false;
        }
        assert_eq!(st.backoff, Duration::from_secs(30));
        restart(&mut st, &metrics);
        assert_eq!(
            st.read_through, 5,
            "read again from the first unacknowledged"
        );
        assert_eq!((st.in_flight, st.retry_at), (0, None));
        assert_eq!(st.backoff, FIRST_BACKOFF);
    }

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
        let wm = |st: &StreamState, held| Shipper::watermark_of(st, 100, now, held);
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
        assert_eq!(Shipper::watermark_of(&st, 100, now, None), now - 120_000);
    }
}
