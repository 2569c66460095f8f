//! The Kafka side: an idempotent librdkafka producer (acks=all, zstd,
//! tuned batching) whose delivery reports are collected for the shipper's
//! loop, and the mapping of records to messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use crate::config::Config;

/// Delivery-opaque value of watermark messages (not tied to a record).
pub const WATERMARK: usize = usize::MAX;

/// Packs a record's stream (< 65535) and sequence (< 2^48) into a delivery
/// opaque.
pub fn opaque(stream: u32, seq: u64) -> usize {
    ((stream as usize) << 48) | (seq as usize & ((1 << 48) - 1))
}

/// Unpacks [`opaque`].
pub fn unpack(opaque: usize) -> (u32, u64) {
    ((opaque >> 48) as u32, (opaque & ((1 << 48) - 1)) as u64)
}

/// One delivery report.
#[derive(Debug)]
pub struct Delivery {
    /// The record's delivery opaque.
    pub opaque: usize,
    /// `None` when acknowledged; else the error and the payload (for the
    /// dead-letter file).
    pub failure: Option<(KafkaError, Vec<u8>)>,
}

/// Collects delivery reports; librdkafka calls it from `poll`.
#[derive(Default)]
pub struct Reports {
    /// Reports not yet taken by the loop.
    pub pending: Mutex<Vec<Delivery>>,
    /// A client error came since the loop last looked: one may be fatal
    /// (the event does not say; `Client::fatal_error` does).
    pub errors: AtomicBool,
    /// librdkafka lost its connection to every broker since the loop last
    /// looked; a delivery since says they are back.
    pub all_brokers_down: AtomicBool,
    quiet: Quiet,
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.store(true, Ordering::Release);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.all_brokers_down.store(true, Ordering::Release);
        }
        if let Some(left_out) = self.quiet.admit(error.to_string(), Instant::now()) {
            tracing::warn!(%error, reason, left_out, "kafka client error");
        }
    }
}

/// How often one kind of client error is logged at most.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Client errors, logged once a minute each at most: through a Kafka
/// outage librdkafka reports every failed connection (about fifty lines a
/// second against one unreachable broker), and `broker_up` and the lag
/// metrics already say that the outage goes on.
#[derive(Default)]
struct Quiet {
    /// By error: when it was last logged, and how often it came since.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Quiet {
    /// Whether to log `error` now; if so, how many of it were left out
    /// since it was last logged.
    fn admit(&self, error: String, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(&error) {
            Some((last, left_out)) if now.duration_since(*last) < ERROR_LOG_EVERY => {
                *left_out += 1;
                None
            }
            Some((last, left_out)) => {
                *last = now;
                Some(std::mem::take(left_out))
            }
            None => {
                seen.insert(error, (now, 0));
                Some(0)
            }
        }
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let failure = match result {
            Ok(_) => None,
            Err((e, msg)) => Some((e.clone(), msg.payload().unwrap_or_default().to_vec())),
        };
        if let Ok(mut p) = self.pending.lock() {
            p.push(Delivery { opaque, failure });
        }
    }
}

/// The producer the shipper uses.
pub type Producer = BaseProducer<Reports>;

/// Builds the idempotent producer from the config. Operator properties in
/// `[shipper.kafka]` are applied last, so they can change anything.
pub fn producer(config: &Config) -> Result<Producer, KafkaError> {
    let sh = &config.shipper;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &sh.brokers)
        .set("client.id", format!("trackplane-shipper-{}", config.node()))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", sh.linger_ms.to_string())
        .set("batch.size", sh.batch_size_bytes.to_string())
        .set(
            "max.in.flight.requests.per.connection",
            sh.max_requests_in_flight.to_string(),
        )
        // Never give up on a message: a Kafka outage of hours is waited out
        // (segments wait on disk); back-pressure comes from the bounded queue.
        .set("message.timeout.ms", "0")
        .set(
            "queue.buffering.max.messages",
            (sh.max_in_flight * 2).min(10_000_000).to_string(),
        )
        .set("queue.buffering.max.kbytes", "1048576")
        .set("retry.backoff.ms", "100")
        .set("retry.backoff.max.ms", "5000")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "10000");
    for (k, v) in &sh.kafka {
        c.set(k, v);
    }
    c.create_with_context(Reports::default())
}

/// Raises a fatal error in `producer` (`rd_kafka_test_fatal_error`,
/// librdkafka's fault injection for tests of this handling): from then on
/// it fails every message, as after a real one.
#[allow(unsafe_code)]
pub fn fail_for_tests(producer: &Producer) {
    use rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};
    use rdkafka::producer::Producer as _;
    // SAFETY: the handle is the live producer's; the reason is a C string
    // that outlives the call, which copies it.
    unsafe {
        rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            c"injected by a test".as_ptr(),
        );
    }
}

/// Whether an error means this message can never be delivered (it goes to
/// the dead-letter file) rather than "try again". A missing topic is not
/// poison: the operator creates it and shipping goes on.
pub fn is_poison(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_round_trips() {
        // Streams are workers: at most 1024 (config validation).
        for (s, q) in [(0, 0), (3, 1 << 40), (1023, (1 << 48) - 1)] {
            assert_eq!(unpack(opaque(s, q)), (s, q));
            assert_ne!(opaque(s, q), WATERMARK);
        }
    }

    /// Each kind of error is logged when first seen, then once a minute
    /// with how many were left out; kinds do not hold each other back.
    #[test]
    fn client_errors_are_logged_once_a_minute_each() {
        let q = Quiet::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(q.admit("down".into(), at(0)), Some(0));
        assert_eq!(q.admit("refused".into(), at(1)), Some(0));
        for ms in (20..60_000).step_by(20) {
            assert_eq!(q.admit("down".into(), at(ms)), None);
        }
        assert_eq!(q.admit("down".into(), at(60_000)), Some(2999));
        assert_eq!(q.admit("refused".into(), at(60_001)), Some(0));
        assert_eq!(q.admit("down".into(), at(60_020)), None);
    }
}
