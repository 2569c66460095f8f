//! trackplane: an edge data plane for ad-tech tracking calls. It answers
//! impression pixels, clicks and conversion beacons in microseconds, audits
//! every call against the advertiser's tag schema and catalog, and hands each
//! audited event to local storage without locks on the request path.
//!
//! # Layout
//! - `bell`: wakes a sleeping background thread at once (admin, catalogs,
//!   the store's and view's naps at a stop)
//! - `clock`: Unix milliseconds, and the request path's cheap wall clock
//! - `config`: typed configuration, embedded default, validation
//! - `http`: sans-io HTTP/1.x parsing and responses
//! - `audit`: schemas, catalogs, redirect policy, issue codes
//! - `record`: the JSON event record, exactly as stored and shipped
//! - `ring`: the lock-free hand-off from a worker to storage (the one
//!   module allowed `unsafe`, besides `server::handover`'s single
//!   `close_range` call, `server::conn`'s send(2) of an answer through
//!   syscall(2), `sched`'s scheduler calls and `shipper::kafka`'s fault
//!   injection for tests; the crate denies it everywhere else)
//! - `segment`: the on-disk format, writer, reader and crash recovery
//! - `sched`: the store thread in the idle scheduling class while calm,
//!   lifted back when the rings fill
//! - `store`: drains the rings into zstd blocks in segments; fsync, rotation,
//!   disk budget, stream leases
//! - `server`: workers, connection loop, request handler, admin port,
//!   zero-downtime restart (listening sockets handed to a new process)
//! - `tail`: the operator's `trackplane tail` (follow, filter, stats, verify)
//! - `shipper`: `trackplane-shipper`, segments to Kafka with checkpoints and
//!   watermarks
//! - `view`: the live tag-validation view on the admin port
//! - `logging`: log setup shared by the binaries
//! - `word`: short byte strings compared and tested a machine word at a time
pub mod audit;
pub mod bell;
pub mod clock;
pub mod config;
pub mod http;
pub mod logging;
pub mod record;
pub mod ring;
pub mod sched;
pub mod segment;
pub mod server;
pub mod shipper;
pub mod store;
pub mod tail;
pub mod view;
pub mod word;
