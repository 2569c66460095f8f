//! trackplane: an edge data plane for ad-tech tracking calls. It answers
//! impression pixels, clicks and conversion beacons in microseconds, audits
//! every call against the advertiser's tag schema and catalog, and hands each
//! audited event to local storage without locks on the request path.
//!
//! # Layout
//! - `config`: typed configuration, embedded default, validation
//! - `http`: sans-io HTTP/1.x parsing and responses
//! - `audit`: schemas, catalogs, redirect policy, issue codes
pub mod audit;
pub mod config;
pub mod http;
