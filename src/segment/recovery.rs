//! Start-up recovery: make every stream's segments whole again after a
//! crash, and find where each stream's sequence continues.
//!
//! # Invariants
//! - A fully written block (header and payload present, CRC good) is never
//!   cut. Only the torn or corrupt tail of an open segment is.
//! - A file recovery cannot read is moved to `quarantine/`, never deleted,
//!   and never stops the start.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::format;
use super::reader::{ReadError, SegmentReader};
use super::writer::sync_dir;

/// What recovery found and did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Next sequence number of every stream that has segments.
    pub next_seq: BTreeMap<u32, u64>,
    /// Open segments whose tail was cut: (file, offset cut at, why).
    pub cut: Vec<(PathBuf, u64, String)>,
    /// Open segments sealed (with or without a cut).
    pub sealed: Vec<PathBuf>,
    /// Files moved aside: (from, to, why).
    pub quarantined: Vec<(PathBuf, PathBuf, String)>,
}

/// A segment file found in a directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentFile {
    /// Stream.
    pub stream: u32,
    /// First sequence number.
    pub base_seq: u64,
    /// Still being written.
    pub open: bool,
    /// Full path.
    pub path: PathBuf,
}

/// Every segment file in `dir`, ordered by stream and base sequence.
pub fn list(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((stream, base_seq, open)) = name.to_str().and_then(format::parse_file_name) {
            out.push(SegmentFile {
                stream,
                base_seq,
                open,
                path: entry.path(),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Recovers `<data_dir>/segments`: cuts torn tails of open segments, seals
/// them, quarantines unreadable files, and computes each stream's next
/// sequence number.
pub fn recover(data_dir: &Path) -> io::Result<Recovery> {
    recover_streams(data_dir, |_| Ok(true))
}

/// [`recover`], touching only the streams `may_touch` allows: those of a
/// stream another live process writes are left as they are.
pub fn recover_streams(
    data_dir: &Path,
    mut may_touch: impl FnMut(u32) -> io::Result<bool>,
) -> io::Result<Recovery> {
    let dir = data_dir.join("segments");
    std::fs::create_dir_all(&dir)?;
    let mut rec = Recovery::default();
    let mut allowed: BTreeMap<u32, bool> = BTreeMap::new();
    let mut allowed_stream = |stream: u32| -> io::Result<bool> {
        if let Some(&yes) = allowed.get(&stream) {
            return Ok(yes);
        }
        let yes = may_touch(stream)?;
        allowed.insert(stream, yes);
        Ok(yes)
    };
    for seg in list(&dir)?.into_iter().filter(|s| s.open) {
        if allowed_stream(seg.stream)? {
            recover_open(data_dir, &seg, &mut rec)?;
        }
    }
    // The sealed segments now hold everything; the last readable one of a
    // stream tells where the stream continues.
    let mut by_stream: BTreeMap<u32, Vec<SegmentFile>> = BTreeMap::new();
    for seg in list(&dir)? {
        if allowed_stream(seg.stream)? {
            by_stream.entry(seg.stream).or_default().push(seg);
        }
    }
    for (stream, segs) in by_stream {
        for seg in segs.iter().rev() {
            match last_seq(&seg.path) {
                Ok(next) => {
                    rec.next_seq.insert(stream, next);
                    break;
                }
                Err(e) => quarantine(data_dir, &seg.path, &e.to_string(), &mut rec)?,
            }
        }
    }
    sync_dir(&dir)?;
    Ok(rec)
}

fn recover_open(data_dir: &Path, seg: &SegmentFile, rec: &mut Recovery) -> io::Result<()> {
    let mut reader = match SegmentReader::open(&seg.path) {
        Ok(r) => r,
        Err(ReadError::Io { source, .. }) => return Err(source),
        Err(e) => return quarantine(data_dir, &seg.path, &e.to_string(), rec),
    };
    let mut blocks = 0u64;
    let cut_reason = loop {
        match reader.skip_block() {
            Ok(Some(_)) => blocks += 1,
            Ok(None) => break None,
            Err(ReadError::Io { source, .. }) => return Err(source),
            Err(e) => break Some(e.to_string()),
        }
    };
    let good = reader.offset();
    let len = std::fs::metadata(&seg.path)?.len();
    drop(reader);
    if good < len {
        let file = OpenOptions::new().write(true).open(&seg.path)?;
        file.set_len(good)?;
        file.sync_data()?;
        let why = cut_reason.unwrap_or_else(|| "torn block at the end".to_owned());
        tracing::warn!(segment = %seg.path.display(), offset = good, cut_bytes = len - good, reason = %why, "cut torn or corrupt tail of open segment");
        rec.cut.push((seg.path.clone(), good, why));
    } else {
        // Synced before it is sealed, uncut too: a sealed segment is
        // durable (the shipper ships it without syncing it), and the
        // crashed process may have left blocks only in the page cache.
        // Linux fdatasyncs a file opened to read, as it was just read.
        File::open(&seg.path)?.sync_data()?;
    }
    if blocks == 0 {
        // Nothing was ever completely written: there is nothing to keep.
        std::fs::remove_file(&seg.path)?;
        return Ok(());
    }
    let sealed = seg.path.with_extension("");
    std::fs::rename(&seg.path, &sealed)?;
    rec.sealed.push(sealed);
    Ok(())
}

/// One past the sequence number of the last record in a sealed segment.
fn last_seq(path: &Path) -> Result<u64, ReadError> {
    let mut reader = SegmentReader::open(path)?;
    let mut next = reader.header().base_seq;
    while let Some(h) = reader.skip_block()? {
        next = h.end_seq();
    }
    Ok(next)
}

fn quarantine(data_dir: &Path, path: &Path, why: &str, rec: &mut Recovery) -> io::Result<()> {
    let qdir = data_dir.join("quarantine");
    std::fs::create_dir_all(&qdir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let to = qdir.join(name);
    std::fs::rename(path, &to)?;
    sync_dir(&qdir)?;
    tracing::error!(segment = %path.display(), moved_to = %to.display(), reason = %why, "unreadable segment quarantined");
    rec.quarantined.push((path.to_owned(), to, why.to_owned()));
    Ok(())
}
