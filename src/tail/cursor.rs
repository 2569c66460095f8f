//! One stream's records for `tail`: blocks from the segment follower, split
//! into records, with a one-record look-ahead for merging streams by time.

use std::collections::VecDeque;
use std::path::Path;

use super::filter::Filter;
use crate::record::peek::ts_ms;
use crate::segment::{Follower, ReadError};

/// A reader of one stream's records.
pub struct StreamCursor {
    stream: u32,
    follower: Follower,
    records: VecDeque<Vec<u8>>,
    peeked: Option<(u64, Vec<u8>)>,
}

impl StreamCursor {
    /// A cursor on `stream` in `dir`, from its first record on disk.
    pub fn new(dir: &Path, stream: u32) -> StreamCursor {
        StreamCursor {
            stream,
            follower: Follower::new(dir, stream, 0, None),
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
            let ts = ts_ms(&rec).unwrap_or(0);
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
        self.follower.skip_segment();
        self.records.clear();
    }

    fn next_record(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            if let Some(r) = self.records.pop_front() {
                return Ok(Some(r));
            }
            match self.follower.next_block()? {
                Some(located) => self
                    .records
                    .extend(located.block.records().map(|(_, r)| r.to_vec())),
                None => return Ok(None),
            }
        }
    }
}
