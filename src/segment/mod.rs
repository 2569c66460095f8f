//! Segment files: the one place that knows the on-disk format of events
//! (`docs/segment-format.md`). The server's store writes them, `trackplane
//! tail` and the shipper read them, and recovery repairs them on start.
//!
//! # Layout
//! - `format`: headers, CRCs, file names (pure)
//! - `writer`: append blocks to a stream's open segment, seal, rotate
//! - `reader`: verify and decompress blocks, following growing files
//! - `recovery`: cut torn tails, seal, quarantine, find next sequences
//! - `follow`: one stream's blocks across segments, following growth and
//!   rotation (tail and shipper)
//!
//! # Invariants
//! - Writers only append; a sealed `.seg` never changes again.
//! - Every block carries a CRC32C over its header and payload; readers check
//!   it before decompressing.
//! - Sequence numbers of a stream are consecutive across blocks and
//!   segments.

pub mod follow;
pub mod format;
pub mod reader;
pub mod recovery;
pub mod writer;

pub use follow::{Follower, Located};
pub use reader::{Block, ReadError, SegmentReader};
pub use recovery::{list, recover, recover_streams, Recovery, SegmentFile};
pub use writer::{StreamWriter, WriterConfig};

#[cfg(test)]
mod tests;
