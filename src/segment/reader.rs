//! Reads one segment block by block, verifying every CRC before it
//! decompresses. Works on a segment that is still being written: a block
//! that runs past the end of an open segment is "not yet", not an error.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::format::{self, BlockHeader, FormatError, SegmentHeader, BLOCK_HEADER_LEN, HEADER_LEN};

/// A read that failed: which file, at which byte, and why.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes at `offset` are not what the format says.
    #[error("{}: offset {offset}: {error}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad structure starts.
        offset: u64,
        /// What is wrong.
        error: FormatError,
    },
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl ReadError {
    /// The byte offset of a corruption, if this is one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            ReadError::Corrupt { offset, .. } => Some(*offset),
            ReadError::Io { .. } => None,
        }
    }
}

/// One verified, decompressed block.
#[derive(Debug)]
pub struct Block {
    /// Its header.
    pub header: BlockHeader,
    /// Its byte offset in the segment.
    pub offset: u64,
    data: Vec<u8>,
    ends: Vec<(u32, u32)>,
}

impl Block {
    /// Records in the block.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the block has no records (never true for a valid block).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Record `i` with its sequence number.
    pub fn record(&self, i: usize) -> Option<(u64, &[u8])> {
        let &(start, end) = self.ends.get(i)?;
        Some((
            self.header.first_seq + i as u64,
            &self.data[start as usize..end as usize],
        ))
    }

    /// The records with their sequence numbers.
    pub fn records(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.ends.iter().enumerate().map(|(i, &(start, end))| {
            (
                self.header.first_seq + i as u64,
                &self.data[start as usize..end as usize],
            )
        })
    }
}

/// A reader positioned after the last block it returned.
pub struct SegmentReader {
    file: File,
    path: PathBuf,
    header: SegmentHeader,
    offset: u64,
    sealed: bool,
    compressed: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl SegmentReader {
    /// Opens a segment and verifies its header. `.seg.open` files are read
    /// as growing.
    pub fn open(path: &Path) -> Result<SegmentReader, ReadError> {
        let io_err = |source| ReadError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let mut head = [0u8; HEADER_LEN];
        let got = read_up_to(&mut file, &mut head).map_err(io_err)?;
        let header = SegmentHeader::decode(&head[..got]).map_err(|error| ReadError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            error,
        })?;
        let sealed = !path.to_string_lossy().ends_with(".open");
        Ok(SegmentReader {
            file,
            path: path.to_owned(),
            header,
            offset: HEADER_LEN as u64,
            sealed,
            compressed: Vec::new(),
            decompressor: zstd::bulk::Decompressor::new().map_err(io_err)?,
        })
    }

    /// The segment header.
    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset of the next block.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The segment was renamed to `.seg` since it was opened: it will not
    /// grow any more. Call when a follower sees the rename.
    pub fn mark_sealed(&mut self, sealed_path: &Path) {
        self.sealed = true;
        self.path = sealed_path.to_owned();
    }

    /// Moves to a block boundary a checkpoint recorded. A wrong offset is
    /// caught by the next block's magic and CRC.
    pub fn seek_to(&mut self, offset: u64) {
        self.offset = offset.max(HEADER_LEN as u64);
    }

    /// Makes everything written to the segment so far durable, with
    /// `sync_file` on this reader's descriptor (Linux fdatasyncs a file
    /// opened read-only); returns the length that covers.
    pub fn sync(&self, sync_file: super::writer::SyncFile) -> io::Result<u64> {
        let len = self.file.metadata()?.len();
        sync_file(&self.file)?;
        Ok(len)
    }

    /// Whether the reader treats the file as final.
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// The next block, or `None` at the end (of a sealed segment) or when
    /// the next block is not completely written yet (of an open one).
    pub fn next_block(&mut self) -> Result<Option<Block>, ReadError> {
        match self.next_header()? {
            None => Ok(None),
            Some((header, head)) => {
                let block = self.read_payload(header, &head)?;
                Ok(Some(block))
            }
        }
    }

    /// Skips the next block after checking its header and CRC, without
    /// decompressing. For verifying and for seeking by sequence or time.
    pub fn skip_block(&mut self) -> Result<Option<BlockHeader>, ReadError> {
        match self.next_header()? {
            None => Ok(None),
            Some((header, head)) => {
                self.read_compressed(&header)?;
                header
                    .verify(&head, &self.compressed)
                    .map_err(|e| self.corrupt(e))?;
                self.offset += header.total_len();
                Ok(Some(header))
            }
        }
    }

    fn corrupt(&self, error: FormatError) -> ReadError {
        ReadError::Corrupt {
            path: self.path.clone(),
            offset: self.offset,
            error,
        }
    }

    fn next_header(&mut self) -> Result<Option<(BlockHeader, [u8; BLOCK_HEADER_LEN])>, ReadError> {
        let io_err = |source| ReadError::Io {
            path: self.path.clone(),
            source,
        };
        let len = self.file.metadata().map_err(io_err)?.len();
        if self.offset == len {
            return Ok(None);
        }
        if len < self.offset + BLOCK_HEADER_LEN as u64 {
            return self.incomplete();
        }
        let mut head = [0u8; BLOCK_HEADER_LEN];
        self.file
            .seek(SeekFrom::Start(self.offset))
            .map_err(|source| ReadError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.file
            .read_exact(&mut head)
            .map_err(|source| ReadError::Io {
                path: self.path.clone(),
                source,
            })?;
        let header = BlockHeader::decode(&head).map_err(|e| self.corrupt(e))?;
        if len < self.offset + header.total_len() {
            return self.incomplete();
        }
        Ok(Some((header, head)))
    }

    fn incomplete<T>(&self) -> Result<Option<T>, ReadError> {
        if self.sealed {
            Err(self.corrupt(FormatError::Truncated))
        } else {
            Ok(None)
        }
    }

    fn read_compressed(&mut self, header: &BlockHeader) -> Result<(), ReadError> {
        self.compressed.resize(header.compressed_len as usize, 0);
        self.file
            .read_exact(&mut self.compressed)
            .map_err(|source| ReadError::Io {
                path: self.path.clone(),
                source,
            })
    }

    fn read_payload(&mut self, header: BlockHeader, head: &[u8]) -> Result<Block, ReadError> {
        self.read_compressed(&header)?;
        header
            .verify(head, &self.compressed)
            .map_err(|e| self.corrupt(e))?;
        let data = self
            .decompressor
            .decompress(&self.compressed, header.uncompressed_len as usize)
            .map_err(|_| self.corrupt(FormatError::Payload("zstd frame does not decompress")))?;
        if data.len() != header.uncompressed_len as usize {
            return Err(self.corrupt(FormatError::Payload(
                "decompressed length differs from the header",
            )));
        }
        let ends = format::records(&data, header.count)
            .map_err(|e| self.corrupt(e))?
            .iter()
            .map(|r| {
                let start = r.as_ptr() as usize - data.as_ptr() as usize;
                (start as u32, (start + r.len()) as u32)
            })
            .collect();
        let block = Block {
            header,
            offset: self.offset,
            data,
            ends,
        };
        self.offset += header.total_len();
        Ok(block)
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}
