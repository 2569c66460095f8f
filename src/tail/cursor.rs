//! One stream's records, segment after segment, following an open segment
//! as it grows and moving on when it is sealed (renamed) — like `tail -F`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::filter::{record_ts, Filter};
use crate::segment::{self, ReadError, SegmentReader};

/// A reader of one stream's records.
pub struct StreamCursor {
    dir: PathBuf,
    stream: u32,
    /// Base sequence of the segment being read (or last read).
    current: Option<u64>,
    /// The first segment considered has at least this base.
    from_base: u64,
    reader: Option<SegmentReader>,
    records: VecDeque<Vec<u8>>,
    peeked: Option<(u64, Vec<u8>)>,
}

impl StreamCursor {
    /// A cursor on `stream` in `dir`, starting at the segment holding
    /// `from_base` or the first after it.
    pub fn new(dir: &Path, stream: u32, from_base: u64) -> StreamCursor {
        StreamCursor {
            dir: dir.to_owned(),
            stream,
            current: None,
            from_base,
            reader: None,
            records: VecDeque::new(),
            peeked: None,
        }
    }

    /// The stream.
    pub fn stream(&self) -> u32 {
        self.stream
    }

    /// Event time of the next record that passes the time filter, without
    /// consuming it; `None` when nothing more is available now.
    pub fn peek_ts(&mut self, filter: &Filter) -> Result<Option<u64>, ReadError> {
        loop {
            if let Some((ts, _)) = &self.peeked {
                return Ok(Some(*ts));
            }
            let Some(rec) = self.next_record()? else {
                return Ok(None);
            };
            let ts = record_ts(&rec).unwrap_or(0);
            if filter.since_ms.is_some_and(|since| ts < since) {
                continue;
            }
            self.peeked = Some((ts, rec));
        }
    }

    /// Takes the record [`StreamCursor::peek_ts`] looked at.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        self.peeked.take().map(|(_, r)| r)
    }

    /// The next record, waiting for nothing: `None` means "not yet".
    pub fn next_following(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        if let Some((_, r)) = self.peeked.take() {
            return Ok(Some(r));
        }
        self.next_record()
    }

    /// Gives up on the current segment (after reporting its corruption) and
    /// moves to the next one.
    pub fn skip_segment(&mut self) {
        self.reader = None;
        self.records.clear();
    }

    fn next_record(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            if let Some(r) = self.records.pop_front() {
                return Ok(Some(r));
            }
            if self.reader.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            match reader.next_block()? {
                Some(block) => self
                    .records
                    .extend(block.records().map(|(_, r)| r.to_vec())),
                None if reader.is_sealed() => self.reader = None,
                None => {
                    // The end of an open segment: sealed since? Then read
                    // what was written before the rename and move on.
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

    /// Opens the stream's next segment. Returns whether there was one.
    fn open_next(&mut self) -> Result<bool, ReadError> {
        for _attempt in 0..3 {
            let listed = segment::list(&self.dir).map_err(|source| ReadError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let next = listed.into_iter().find(|s| {
                s.stream == self.stream
                    && match self.current {
                        Some(cur) => s.base_seq > cur,
                        None => s.base_seq >= self.from_base,
                    }
            });
            let Some(seg) = next else { return Ok(false) };
            match SegmentReader::open(&seg.path) {
                Ok(r) => {
                    self.current = Some(seg.base_seq);
                    self.reader = Some(r);
                    return Ok(true);
                }
                // Renamed or deleted between listing and opening: list again.
                Err(ReadError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                Err(e) => {
                    self.current = Some(seg.base_seq);
                    return Err(e);
                }
            }
        }
        Ok(false)
    }
}
