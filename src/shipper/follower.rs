//! One stream's blocks in sequence order from a checkpoint on, including the
//! open segment as it grows; knows where each block lies so checkpoints can
//! name (segment, block, record).

use std::path::{Path, PathBuf};

use super::checkpoint::Position;
use crate::segment::{self, Block, ReadError, SegmentReader};

/// A reader of one stream for the shipper.
pub struct Follower {
    dir: PathBuf,
    stream: u32,
    reader: Option<SegmentReader>,
    base: Option<u64>,
    /// Records below this were shipped; blocks are filtered to start here.
    from_seq: u64,
    /// Seek target inside the first segment opened (from the checkpoint).
    seek: Option<(u64, u64)>,
    /// The open reader was positioned by a seek and has not read yet.
    seeked: bool,
}

/// A block and where it lies.
pub struct Located {
    /// The block.
    pub block: Block,
    /// Base sequence of its segment.
    pub segment_base: u64,
}

impl Follower {
    /// A follower that resumes at `from`.
    pub fn new(dir: &Path, stream: u32, from: Position) -> Follower {
        Follower {
            dir: dir.to_owned(),
            stream,
            reader: None,
            base: None,
            from_seq: from.next_seq,
            seek: (from.block_offset > 0).then_some((from.segment_base, from.block_offset)),
            seeked: false,
        }
    }

    /// Restarts at `seq` (after a failed delivery): reads from the start of
    /// the segment holding it again.
    pub fn rewind(&mut self, seq: u64) {
        self.reader = None;
        self.base = None;
        self.from_seq = seq;
        self.seek = None;
    }

    /// The next block holding records at or after the resume point, or
    /// `None` when nothing more is written yet.
    pub fn next_block(&mut self) -> Result<Option<Located>, ReadError> {
        loop {
            if self.reader.is_none() && !self.open()? {
                return Ok(None);
            }
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            let read = reader.next_block();
            if std::mem::take(&mut self.seeked) && matches!(read, Err(ReadError::Corrupt { .. })) {
                tracing::warn!(
                    stream = self.stream,
                    "checkpoint offset is not a block; reading the segment from its start"
                );
                self.reader = None;
                self.base = None;
                continue;
            }
            match read? {
                Some(block) if block.header.end_seq() <= self.from_seq => continue,
                Some(block) => {
                    let segment_base = self.base.unwrap_or(0);
                    return Ok(Some(Located {
                        block,
                        segment_base,
                    }));
                }
                None if reader.is_sealed() => {
                    self.reader = None;
                }
                None => {
                    let sealed = reader.path().with_extension("");
                    if sealed.exists() {
                        reader.mark_sealed(&sealed);
                        continue;
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Opens the segment holding the resume point, or the next one.
    fn open(&mut self) -> Result<bool, ReadError> {
        let io = |source| ReadError::Io {
            path: self.dir.clone(),
            source,
        };
        for _attempt in 0..3 {
            let segs: Vec<_> = segment::list(&self.dir)
                .map_err(io)?
                .into_iter()
                .filter(|s| s.stream == self.stream)
                .collect();
            let next = match self.base {
                // Moving on: the first segment after the current one.
                Some(cur) => segs.iter().find(|s| s.base_seq > cur),
                // Resuming: the last segment starting at or before the
                // resume point, else the first one.
                None => segs
                    .iter()
                    .rev()
                    .find(|s| s.base_seq <= self.from_seq)
                    .or(segs.first()),
            };
            let Some(seg) = next else { return Ok(false) };
            if self.base.is_none() && seg.base_seq > self.from_seq {
                tracing::warn!(
                    stream = self.stream,
                    checkpoint = self.from_seq,
                    first_on_disk = seg.base_seq,
                    "records after the checkpoint are no longer on disk (deleted by the disk budget?); shipping resumes at the first segment left"
                );
            }
            if let Some((base, offset)) = self.seek.take() {
                if base != seg.base_seq {
                    tracing::warn!(
                        stream = self.stream,
                        segment = base,
                        "checkpoint names a segment that is not on disk; resuming by sequence"
                    );
                }
                match SegmentReader::open(&seg.path) {
                    Ok(mut r) if base == seg.base_seq => {
                        r.seek_to(offset);
                        self.seeked = true;
                        self.base = Some(seg.base_seq);
                        self.reader = Some(r);
                        return Ok(true);
                    }
                    Ok(r) => {
                        self.base = Some(seg.base_seq);
                        self.reader = Some(r);
                        return Ok(true);
                    }
                    Err(ReadError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                }
            }
            match SegmentReader::open(&seg.path) {
                Ok(r) => {
                    self.base = Some(seg.base_seq);
                    self.reader = Some(r);
                    return Ok(true);
                }
                Err(ReadError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}
