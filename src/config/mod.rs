//! Typed configuration: the embedded default, file loading, CLI overrides and
//! `validate()`, which names the key that is wrong and why.
//!
//! `default.toml` is the one source of default values. A user's file is merged
//! over it key by key (tables recursively), with two exceptions: a file that
//! names `advertisers` replaces the default advertisers whole (the demo
//! advertiser has no place on a real node), and each event type a file names
//! replaces that default type whole (its schema is not mixed with the
//! default's), while the other default types stay.
//!
//! # Layout
//! - `schema`: event types, their parameters and formats
//! - `validate`: `Config::validate`, the checks types cannot make

mod schema;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use schema::{Durability, EventTypeConfig, Format, ParamSpec};

/// The embedded default configuration, as shipped.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The shortest batched wait `server.wake_linger_us` accepts (0 turns
/// batching off).
pub const MIN_WAKE_LINGER_US: u64 = 50;

/// A configuration that could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    /// A key is unknown, has a value of the wrong type, or one that makes
    /// no sense (an `Invalid` once its origin is known).
    #[error("{origin}: key `{key}`: {message}")]
    Key {
        origin: String,
        key: String,
        message: String,
    },
    /// A key has a well-typed value that makes no sense.
    #[error("key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// An `Invalid` error as found in `origin` (a file, the command line).
    fn at(self, origin: &str) -> ConfigError {
        match self {
            ConfigError::Invalid { key, message } => ConfigError::Key {
                origin: origin.to_owned(),
                key,
                message,
            },
            other => other,
        }
    }
}

/// The whole configuration of a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node name in every event id; empty means the hostname.
    pub node_id: String,
    /// Root of everything the node writes.
    pub data_dir: PathBuf,
    /// Listeners, workers, limits and timeouts.
    pub server: ServerConfig,
    /// IP and do-not-track handling.
    pub privacy: PrivacyConfig,
    /// Names of the parameters with a meaning of their own.
    pub params: ParamNames,
    /// The event type each route implies when `ev` is absent.
    pub routes: RouteEvents,
    /// Where advertiser catalogs live and how often they are re-read.
    pub catalogs: CatalogConfig,
    /// Blocks, segments, fsync and the disk budget.
    pub storage: StorageConfig,
    /// Known advertisers and their redirect policy.
    pub advertisers: BTreeMap<String, AdvertiserConfig>,
    /// Event types and their schemas.
    pub event_types: BTreeMap<String, EventTypeConfig>,
    /// The Kafka shipper (`trackplane-shipper`).
    pub shipper: ShipperConfig,
}

/// The Kafka shipper.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipperConfig {
    /// Kafka bootstrap servers, comma-separated.
    pub brokers: String,
    /// Admin port: metrics and health.
    pub admin_listen: SocketAddr,
    /// Topic of event types not in `topics`.
    pub default_topic: String,
    /// Topic per event type.
    pub topics: BTreeMap<String, String>,
    /// How often watermarks go to every partition written.
    pub watermark_interval_ms: u64,
    /// How often checkpoints are written at most.
    pub checkpoint_interval_ms: u64,
    /// Fully shipped sealed segments are deleted after this long.
    pub retain_shipped_s: u64,
    /// Produced, unacknowledged records per stream, at most.
    pub max_in_flight: usize,
    /// librdkafka `linger.ms`.
    pub linger_ms: u64,
    /// librdkafka `batch.size`.
    pub batch_size_bytes: usize,
    /// librdkafka `max.in.flight.requests.per.connection`.
    pub max_requests_in_flight: u32,
    /// Other librdkafka properties, passed through.
    pub kafka: BTreeMap<String, String>,
}

impl ShipperConfig {
    /// The topic of an event type.
    pub fn topic(&self, event_type: &str) -> &str {
        self.topics
            .get(event_type)
            .map_or(&self.default_topic, String::as_str)
    }
}

/// Listeners, workers, limits and timeouts of `trackplane serve`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Public data port.
    pub listen: SocketAddr,
    /// Admin port: metrics, health, views. Never the public port.
    pub admin_listen: SocketAddr,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// I/O driver: auto, uring or epoll.
    pub driver: Driver,
    /// Open connections one worker accepts before refusing more.
    pub max_connections_per_worker: usize,
    /// Longest request line (method, target, version); longer gets 414.
    pub max_request_line_bytes: usize,
    /// Longest request head (line and headers); longer gets 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more gets 431.
    pub max_headers: usize,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: usize,
    /// Most query or form parameters in one event; more gets 400.
    pub max_params: usize,
    /// Time allowed to receive a whole request head; slower gets 408.
    pub header_timeout_ms: u64,
    /// Time allowed between two reads of a body; slower gets 408.
    pub body_timeout_ms: u64,
    /// An idle keep-alive connection is closed this long after its last
    /// request arrived.
    pub idle_timeout_ms: u64,
    /// A connection whose answers are not all taken by the client this
    /// long after their requests arrived is closed (nginx's
    /// `send_timeout`): a client that never reads holds no connection for
    /// good.
    pub send_timeout_ms: u64,
    /// A connection closed after an answer while the client may still be
    /// sending reads and drops what it sends for up to this long, so that
    /// the client reads the answer, not a reset (nginx's
    /// `lingering_close`). 0 closes at once.
    pub lingering_close_ms: u64,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout_ms: u64,
    /// Bytes of each worker's hand-off ring to the event log.
    pub ring_bytes: usize,
    /// io_uring: a worker with nothing to do sleeps until this many I/O
    /// completions are ready, or until `wake_linger_us` has passed and one
    /// is. 0 or 1 turns batching off.
    pub wake_batch: u32,
    /// io_uring: the longest a completion waits for others to join its
    /// batch. 0 turns batching off.
    pub wake_linger_us: u64,
    /// io_uring: a worker batches its wake-ups only while its thread used
    /// more than this percent of its core over each of two looks of 500 ms
    /// in a row, and stops once the requests of one would have used less
    /// than seven eighths of that unbatched, at what a request cost in its
    /// last unbatched look (`server::pace`): a quiet worker answers at
    /// once, a busy one saves the CPU of a wake-up per request. 0 batches
    /// always.
    pub wake_batch_busy_percent: u32,
    /// io_uring (Linux 6.0): one receive request per connection for its
    /// whole life (multishot, into a ring of buffers the worker refills)
    /// instead of one per read. Off, each read arms the socket's poll
    /// again.
    pub multishot_recv: bool,
    /// Above 1, pixels and beacons whose answer does not wait for their
    /// audit (GET and HEAD of `/i` and `/e`, buffered event types) are
    /// answered first; their audits and records are made in groups of up
    /// to this many (when that many have gathered, before any other
    /// event's record, and at least every 20 ms). 0 (the default) or 1
    /// audits each before its answer.
    pub audit_batch: u32,
    /// Bytes the live view may keep (advertisers, count keys, unknown
    /// products, recent events); requests decide what it is asked to keep.
    pub view_memory_bytes: usize,
    /// The scheduling class of the store thread while the rings are calm,
    /// and of the catalog reloader.
    pub background_class: BackgroundClass,
}

/// The scheduling class of the threads that share the workers' cores
/// (`crate::sched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundClass {
    /// Passes in SCHED_IDLE while their rings hold little, lifted back to
    /// the normal class when one fills past a quarter; the normal class
    /// throughout when the kernel would not allow the way back.
    Idle,
    /// The normal class throughout.
    Normal,
}

/// The I/O driver a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring only; refuse to start without it.
    Uring,
    /// epoll only.
    Epoll,
}

/// IP and do-not-track handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// What is kept of the client's address.
    pub ip: IpPolicy,
    /// What a `DNT: 1` or `Sec-GPC: 1` request does.
    pub dnt: DntPolicy,
}

/// What is kept of the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpPolicy {
    /// IPv4 to /24, IPv6 to /48.
    Truncate,
    /// Nothing.
    Drop,
    /// The whole address.
    Full,
}

/// What a request that asks not to be tracked does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DntPolicy {
    /// Recorded like any other.
    Ignore,
    /// Recorded without ip, user agent or user id.
    Anonymize,
    /// Answered, counted, not recorded.
    Drop,
}

/// Names of the parameters with a meaning of their own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamNames {
    /// Advertiser id.
    pub advertiser: String,
    /// Event type.
    pub event_type: String,
    /// Product ids, comma-separated.
    pub products: String,
    /// User id.
    pub user: String,
    /// Click target.
    pub redirect: String,
    /// HMAC-SHA256 of the click target, hex, for signed links.
    pub signature: String,
}

/// The event type each route implies when the event-type parameter is absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEvents {
    /// `GET /i`.
    pub pixel_event: String,
    /// `GET /c`.
    pub click_event: String,
    /// `GET|POST /e` and `/batch` items.
    pub beacon_event: String,
}

/// Where advertiser catalogs live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Catalog directory; empty means `<data_dir>/catalogs`.
    pub dir: PathBuf,
    /// How often the directory is checked for changed files.
    pub reload_interval_ms: u64,
}

/// Blocks, segments, fsync and the disk budget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Events reach segment files at most this long after being answered.
    pub flush_interval_ms: u64,
    /// A block is cut once its records reach this many bytes.
    pub block_max_bytes: usize,
    /// A segment is sealed at this size.
    pub segment_max_bytes: u64,
    /// A segment is sealed at this age.
    pub segment_max_age_s: u64,
    /// zstd level of blocks.
    pub zstd_level: i32,
    /// `buffered` events are fdatasync'ed at least this often.
    pub sync_interval_ms: u64,
    /// Longest a `sync` event waits for its fdatasync.
    pub sync_timeout_ms: u64,
    /// Bytes of segments kept on this node; 0 means no limit.
    pub disk_budget_bytes: u64,
    /// What happens at the disk budget.
    pub full_policy: FullPolicy,
    /// Benchmarks only: drop records after the ring instead of storing them.
    pub discard_for_benchmarks: bool,
}

/// What happens when segments reach the disk budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// New events are refused (counted); `/batch` answers 503.
    Refuse,
    /// The oldest sealed segments are deleted, shipped or not.
    DropOldest,
}

/// One advertiser's policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvertiserConfig {
    /// Hosts clicks may redirect to: `shop.com` (exactly) or `*.shop.com`
    /// (any subdomain, and shop.com itself).
    pub redirect_hosts: Vec<String>,
    /// Key for HMAC-SHA256-signed click targets; empty disables signed links.
    pub redirect_signing_key: String,
}

/// Command-line overrides, applied after the file and before validation.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--driver`.
    pub driver: Option<Driver>,
    /// `--brokers` (shipper).
    pub brokers: Option<String>,
    /// `--admin-listen` of the shipper.
    pub shipper_admin_listen: Option<SocketAddr>,
}

impl Config {
    /// The embedded default.
    pub fn embedded() -> Config {
        Self::from_toml_str(DEFAULT_TOML, "embedded default")
            .expect("the embedded default configuration is valid")
    }

    /// Loads a file merged over the embedded default, and validates it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses TOML text merged over the embedded default, and validates it.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let syntax = |origin: &str, e: toml::de::Error| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        };
        let mut merged: toml::Table =
            toml::from_str(DEFAULT_TOML).map_err(|e| syntax("embedded default", e))?;
        let user: toml::Table = toml::from_str(text).map_err(|e| syntax(origin, e))?;
        merge(&mut merged, user, Depth::Top);
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
                // The message alone: the error's display adds the key
                // again ("in `server.workers`"), which `key` already is.
                ConfigError::Key {
                    origin: origin.to_owned(),
                    key: e.path().to_string(),
                    message: e.inner().message().trim_end().to_owned(),
                }
            })?;
        config.validate().map_err(|e| e.at(origin))?;
        Ok(config)
    }

    /// Applies command-line overrides and validates again.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(a) = o.listen {
            self.server.listen = a;
        }
        if let Some(a) = o.admin_listen {
            self.server.admin_listen = a;
        }
        if let Some(d) = &o.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(w) = o.workers {
            self.server.workers = w;
        }
        if let Some(d) = o.driver {
            self.server.driver = d;
        }
        if let Some(b) = &o.brokers {
            self.shipper.brokers = b.clone();
        }
        if let Some(a) = o.shipper_admin_listen {
            self.shipper.admin_listen = a;
        }
        self.validate()
            .map_err(|e| e.at("with the command line's overrides"))
    }

    /// The catalog directory, resolved against the data directory.
    pub fn catalog_dir(&self) -> PathBuf {
        if self.catalogs.dir.as_os_str().is_empty() {
            self.data_dir.join("catalogs")
        } else {
            self.catalogs.dir.clone()
        }
    }

    /// The node id, with the hostname standing in for an empty one.
    pub fn node(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = hostname();
        let clean: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if clean.is_empty() {
            "node".to_owned()
        } else {
            clean
        }
    }
}

/// Names of advertisers, event types, parameters and nodes: printable ASCII
/// without JSON or URL metacharacters, so they go into records unescaped.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The hostname; /etc/hostname when /proc/sys is hidden (systemd's
/// ProcSubset=pid).
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_default()
}

/// How deep a user's table merges into the default.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// The top level.
    Top,
    /// Inside `event_types`: each type replaces the default's whole.
    EventTypes,
    /// Anywhere else: recursive.
    Nested,
}

/// Merges `over` into `base`: tables recursively, everything else replaced;
/// `advertisers` whole, and each event type whole.
fn merge(base: &mut toml::Table, over: toml::Table, depth: Depth) {
    for (key, value) in over {
        let inner = match (depth, key.as_str()) {
            (Depth::Top, "advertisers") | (Depth::EventTypes, _) => None,
            (Depth::Top, "event_types") => Some(Depth::EventTypes),
            _ => Some(Depth::Nested),
        };
        match (base.get_mut(&key), value, inner) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o), Some(d)) => merge(b, o, d),
            (_, v, _) => {
                base.insert(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests;
