//! Following one stream: its blocks in sequence order, segment after
//! segment, including the open segment as it grows; when an open segment is
//! sealed (renamed), what was written before the rename is read and the next
//! segment follows — like `tail -F`. `trackplane tail` and the shipper both
//! read this way.
//!
//! A durable follower (the shipper's) hands out a block of an open segment
//! only once it is on disk: it fdatasyncs the segment itself first, once
//! for everything written so far. What it hands out then survives a power
//! failure, so the server, which continues a stream after the last record
//! that survived, never gives a new record the id of one already shipped.
//! Sealed segments were synced by whoever sealed them.

use std::path::{Path, PathBuf};

use super::writer::SyncFile;
use super::{list, Block, ReadError, SegmentReader};

/// A block and the segment it lies in.
pub struct Located {
    /// The block.
    pub block: Block,
    /// Base sequence of its segment.
    pub segment_base: u64,
}

/// A reader of one stream's blocks.
pub struct Follower {
    dir: PathBuf,
    stream: u32,
    reader: Option<SegmentReader>,
    /// Base of the segment being read (or last read).
    base: Option<u64>,
    /// Blocks that end at or before this sequence are skipped.
    from_seq: u64,
    /// Where to seek in the first segment: (segment base, block offset).
    seek: Option<(u64, u64)>,
    /// The reader was positioned by a seek and has not read yet.
    seeked: bool,
    /// How a durable follower syncs an open segment (`None`: it does not).
    sync: Option<SyncFile>,
    /// Length of the open segment being read that is known synced.
    synced_len: u64,
}

impl Follower {
    /// A follower of `stream` in `dir` starting at sequence `from_seq`,
    /// optionally at a known block (a checkpoint's segment and offset).
    pub fn new(dir: &Path, stream: u32, from_seq: u64, seek: Option<(u64, u64)>) -> Follower {
        Follower {
            dir: dir.to_owned(),
            stream,
            reader: None,
            base: None,
            from_seq,
            seek,
            seeked: false,
            sync: None,
            synced_len: 0,
        }
    }

    /// This follower, handing out blocks of open segments only once
    /// `sync_file` made them durable (module header).
    pub fn durable(mut self, sync_file: SyncFile) -> Follower {
        self.sync = Some(sync_file);
        self
    }

    /// Starts again at `seq`, from the start of the segment holding it.
    pub fn rewind(&mut self, seq: u64) {
        self.reader = None;
        self.base = None;
        self.from_seq = seq;
        self.seek = None;
    }

    /// Gives up on the current segment (after its corruption was reported)
    /// and goes on with the next one.
    pub fn skip_segment(&mut self) {
        self.reader = None;
    }

    /// Whether the segment being read is sealed (renamed since it was
    /// opened included): nothing in it changes any more.
    pub fn segment_sealed(&self) -> bool {
        self.reader
            .as_ref()
            .is_some_and(|r| r.is_sealed() || r.path().with_extension("").exists())
    }

    /// The next block with records at or after the start point, or `None`
    /// when nothing more is written yet.
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
                    "recorded block offset is not a block; reading the segment from its start"
                );
                self.reader = None;
                self.base = None;
                continue;
            }
            match read? {
                Some(block) if block.header.end_seq() <= self.from_seq => continue,
                Some(block) => {
                    let end = block.offset + block.header.total_len();
                    if let Some(sync_file) = self.sync {
                        if !reader.is_sealed() && end > self.synced_len {
                            match reader.sync(sync_file) {
                                Ok(len) => self.synced_len = len,
                                Err(source) => {
                                    // Handed out by the next call instead.
                                    reader.seek_to(block.offset);
                                    return Err(ReadError::Io {
                                        path: reader.path().to_owned(),
                                        source,
                                    });
                                }
                            }
                        }
                    }
                    return Ok(Some(Located {
                        block,
                        segment_base: self.base.unwrap_or(0),
                    }));
                }
                None if reader.is_sealed() => self.reader = None,
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

    /// Opens the next segment: the one after the current, or (first) the
    /// one holding the start point. Returns whether there was one.
    fn open(&mut self) -> Result<bool, ReadError> {
        for _attempt in 0..3 {
            let segs = list(&self.dir).map_err(|source| ReadError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let mine: Vec<_> = segs
                .into_iter()
                .filter(|s| s.stream == self.stream)
                .collect();
            let next = match self.base {
                Some(cur) => mine.iter().find(|s| s.base_seq > cur),
                None => mine
                    .iter()
                    .rev()
                    .find(|s| s.base_seq <= self.from_seq)
                    .or(mine.first()),
            };
            let Some(seg) = next else { return Ok(false) };
            if self.base.is_none() && seg.base_seq > self.from_seq {
                tracing::warn!(
                    stream = self.stream,
                    from = self.from_seq,
                    first_on_disk = seg.base_seq,
                    "records from the start point are no longer on disk; reading from the first segment left"
                );
            }
            match SegmentReader::open(&seg.path) {
                Ok(mut reader) => {
                    if let Some((base, offset)) = self.seek.take() {
                        if base == seg.base_seq {
                            reader.seek_to(offset);
                            self.seeked = true;
                        } else {
                            tracing::warn!(
                                stream = self.stream,
                                segment = base,
                                "recorded segment is not on disk; reading by sequence"
                            );
                        }
                    }
                    self.base = Some(seg.base_seq);
                    self.reader = Some(reader);
                    self.synced_len = 0;
                    return Ok(true);
                }
                // Renamed or deleted between listing and opening: list again.
                Err(ReadError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                Err(e) => {
                    // Remember it, so that skipping moves past it.
                    self.base = Some(seg.base_seq);
                    return Err(e);
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::segment::{StreamWriter, WriterConfig};

    static SYNCS: AtomicUsize = AtomicUsize::new(0);
    static FAIL: AtomicBool = AtomicBool::new(false);

    /// fdatasync, counted, or EIO while `FAIL` is set.
    fn counted(file: &std::fs::File) -> std::io::Result<()> {
        if FAIL.load(Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        SYNCS.fetch_add(1, Ordering::Relaxed);
        file.sync_data()
    }

    fn first_seq(f: &mut Follower) -> Option<u64> {
        f.next_block().unwrap().map(|l| l.block.header.first_seq)
    }

    /// A durable follower syncs an open segment before it hands out a block
    /// written since its last sync, once for everything written so far; a
    /// failed sync hands out nothing, and the block comes with the next
    /// call. A plain follower (tail's) never syncs.
    #[test]
    fn a_durable_follower_hands_out_only_synced_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = WriterConfig {
            block_max_bytes: 1 << 20,
            segment_max_bytes: 1 << 30,
            segment_max_age: Duration::from_secs(3600),
            zstd_level: 1,
        };
        let mut writer = StreamWriter::create(dir.path(), 0, "t", 0, cfg).unwrap();
        let mut block = |seq: u64| {
            writer.append(seq, 1, b"{}").unwrap();
            writer.write_block().unwrap();
        };
        block(0);
        let mut plain = Follower::new(dir.path(), 0, 0, None);
        assert_eq!(first_seq(&mut plain), Some(0));
        assert_eq!(
            SYNCS.load(Ordering::Relaxed),
            0,
            "tail's follower syncs nothing"
        );

        let mut f = Follower::new(dir.path(), 0, 0, None).durable(counted);
        assert_eq!(first_seq(&mut f), Some(0));
        assert_eq!(SYNCS.load(Ordering::Relaxed), 1);
        assert_eq!(first_seq(&mut f), None);
        block(1);
        block(2);
        assert_eq!(first_seq(&mut f), Some(1));
        assert_eq!(first_seq(&mut f), Some(2));
        assert_eq!(SYNCS.load(Ordering::Relaxed), 2, "one sync for both");

        block(3);
        FAIL.store(true, Ordering::Relaxed);
        assert!(matches!(f.next_block(), Err(ReadError::Io { .. })));
        FAIL.store(false, Ordering::Relaxed);
        assert_eq!(
            first_seq(&mut f),
            Some(3),
            "the block the failed sync held back"
        );
        assert_eq!(SYNCS.load(Ordering::Relaxed), 3);
        assert_eq!(first_seq(&mut f), None);
    }
}
