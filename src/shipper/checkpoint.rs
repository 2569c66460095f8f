//! Per-stream checkpoints: the position below which every record was
//! acknowledged by Kafka. Versioned, written temp → fsync → rename, and on
//! start the renamed file is trusted (vector's file-source checkpointer is
//! the model).
//!
//! # Invariants
//! - A checkpoint only moves forward, and only past records whose
//!   acknowledgements are contiguous from the previous checkpoint.
//! - The file on disk is always a whole, earlier or current checkpoint.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a stream's shipping resumes (by default: its first record).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Next sequence number to ship (everything below is acknowledged).
    pub next_seq: u64,
    /// Base sequence of the segment holding `next_seq`, if known.
    pub segment_base: u64,
    /// Byte offset of the block holding `next_seq` in that segment.
    pub block_offset: u64,
    /// Event time (Unix ms) of the newest acknowledged record.
    pub acked_ts_ms: u64,
}

/// The checkpoint file, versioned so its shape can change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "version")]
enum CheckpointFile {
    /// Version 1.
    #[serde(rename = "1")]
    V1 {
        /// The stream.
        stream: u32,
        /// Its position.
        position: Position,
    },
}

/// The directory of checkpoints under a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("shipper")
}

fn path(data_dir: &Path, stream: u32) -> PathBuf {
    dir(data_dir).join(format!("checkpoint-{stream:04}.json"))
}

/// Reads a stream's checkpoint; `None` when there is none yet.
pub fn load(data_dir: &Path, stream: u32) -> io::Result<Option<Position>> {
    let p = path(data_dir, stream);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice::<CheckpointFile>(&bytes) {
        Ok(CheckpointFile::V1 {
            stream: s,
            position,
        }) if s == stream => Ok(Some(position)),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: checkpoint of another stream", p.display()),
        )),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", p.display()),
        )),
    }
}

/// Writes a stream's checkpoint durably: temp file, fsync, rename, fsync
/// of the directory.
pub fn store(data_dir: &Path, stream: u32, position: Position) -> io::Result<()> {
    let d = dir(data_dir);
    std::fs::create_dir_all(&d)?;
    let final_path = path(data_dir, stream);
    let tmp = final_path.with_extension("json.tmp");
    let body = serde_json::to_vec(&CheckpointFile::V1 { stream, position })?;
    let mut f = File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &final_path)?;
    File::open(&d)?.sync_all()
}

/// Every stream that has a checkpoint.
pub fn streams(data_dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir(data_dir)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("checkpoint-")
            .and_then(|r| r.strip_suffix(".json"))
        {
            if let Ok(s) = n.parse() {
                out.push(s);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Contiguous-acknowledgement tracking for one stream: records are sent in
/// sequence order and acknowledged in any order; the checkpoint may move
/// only past the lowest unacknowledged sequence.
#[derive(Debug)]
pub struct AckWindow {
    /// Next sequence not yet known acknowledged (everything below is).
    acked_through: u64,
    /// Acknowledged sequences above `acked_through`, as a bitmap window.
    pending: std::collections::VecDeque<bool>,
}

impl AckWindow {
    /// A window whose next unacknowledged sequence is `from`.
    pub fn new(from: u64) -> AckWindow {
        AckWindow {
            acked_through: from,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// Records that `seq` was acknowledged. Returns the new contiguous
    /// point if it moved.
    pub fn ack(&mut self, seq: u64) -> Option<u64> {
        if seq < self.acked_through {
            return None;
        }
        let i = (seq - self.acked_through) as usize;
        if self.pending.len() <= i {
            self.pending.resize(i + 1, false);
        }
        self.pending[i] = true;
        let before = self.acked_through;
        while self.pending.front() == Some(&true) {
            self.pending.pop_front();
            self.acked_through += 1;
        }
        (self.acked_through > before).then_some(self.acked_through)
    }

    /// Everything below this is acknowledged.
    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }

    /// Forgets acknowledgements above the contiguous point (after a
    /// rewind, those records are sent again).
    pub fn reset(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_versioned_shape() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path(), 3).unwrap(), None);
        let p = Position {
            next_seq: 42,
            segment_base: 40,
            block_offset: 128,
            acked_ts_ms: 7,
        };
        store(d.path(), 3, p).unwrap();
        assert_eq!(load(d.path(), 3).unwrap(), Some(p));
        let text = std::fs::read_to_string(d.path().join("shipper/checkpoint-0003.json")).unwrap();
        assert!(text.contains("\"version\":\"1\""), "{text}");
        assert_eq!(streams(d.path()).unwrap(), [3]);
        std::fs::write(d.path().join("shipper/checkpoint-0003.json"), "{garbage").unwrap();
        assert!(load(d.path(), 3)
            .unwrap_err()
            .to_string()
            .contains("checkpoint-0003.json"));
    }

    #[test]
    fn window_moves_only_past_contiguous_acks() {
        let mut w = AckWindow::new(10);
        assert_eq!(w.ack(12), None);
        assert_eq!(w.ack(11), None);
        assert_eq!(w.ack(10), Some(13));
        assert_eq!(w.ack(9), None);
        assert_eq!(w.ack(14), None);
        assert_eq!(w.acked_through(), 13);
        w.reset();
        assert_eq!(w.ack(13), Some(14));
    }
}
