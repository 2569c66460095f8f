//! Appends blocks to one stream's open segment, seals and rotates it.
//! Owned by the store thread; never shared.
//!
//! # Invariants
//! - Bytes are only appended; a block goes out in one `write`.
//! - A new segment's header is durable (fdatasync + directory fsync) before
//!   its first block is written.
//! - Sealing syncs the file, renames `.seg.open` to `.seg` and syncs the
//!   directory, so a sealed name always holds complete, durable blocks;
//!   unless an fdatasync failed (`sync_failed`), after which nothing is
//!   durable for certain.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zstd::zstd_safe::{self, zstd_sys::ZSTD_EndDirective, CCtx, CParameter, InBuffer, OutBuffer};

use super::format::{self, BlockHeader, SegmentHeader, BLOCK_HEADER_LEN, CODEC_ZSTD, HEADER_LEN};
use crate::clock::unix_ms;

/// A block is compressed this many bytes at a time where whoever compresses
/// it has other work to do in between: a worker's packer compresses one
/// piece per turn of idle work (`store::pack`), where a 256 KiB block in
/// one go held the worker's core for 300-400 µs. Each piece ends a zstd
/// block inside the one frame, and the frame's history spans the pieces,
/// so the ratio stays close to one-shot compression; but each piece
/// builds its own entropy tables, a few µs a piece. `cargo bench --bench
/// store -- block_compress` on the loadtest's records: 247 µs a block
/// whole at 12.84:1, 293 in 32 KiB pieces at 12.53:1, 410 in 8 KiB pieces
/// at 11.49:1. 8 KiB it is for a worker that does not batch its wake-ups
/// (one that does: [`COMPRESS_PIECE_BATCHED`]), because a request that
/// arrives during a piece waits for its end: at 50k requests/s
/// unbatched, with 32 KiB pieces (37-55 µs each) trackplane's p99 outside
/// the VM's stalls was 1.11-1.13x nginx's; with 8 KiB pieces (about 13
/// µs) 0.92-0.97x, lower than with 32 KiB in 18 of 22 rounds, for about
/// 1% more CPU per request and 8% more bytes on disk
/// (`bench/results/pieces-20261205-1245.md`). Those figures are zstd
/// level 1's. At level -1, the default since, a piece builds no table for
/// its literals, and 4 KiB pieces cost no separable CPU (1.000 side by
/// side, 5% more bytes), but their p99 against nginx's was lower at 50k/s
/// only, not at 20k or 100k/s (`tails-20261205-2210.md`, `-2214.md`,
/// `-2217.md`); 8 KiB stayed.
pub const COMPRESS_PIECE: usize = 8 << 10;

/// The piece of a worker that batches its wake-ups (`server::pace`, on a
/// nearly full core, where CPU is what runs out): its answers already
/// wait up to the linger (200 µs by default) for company, and 32 KiB
/// pieces save that core part of the 8 KiB pieces' extra work (117 µs a
/// block by the bench above, at about 150 blocks a second: under 2% of
/// the core at 100k requests/s). At 100k/s, against 8 KiB pieces: CPU per
/// request 0.968 and 0.988 in two races, lower in 12 of 16 rounds; p99
/// outside the VM's stalls no higher; p50 higher in 14 of 16 rounds (by
/// 12-21 µs in the medians over windows), as each answer may wait for a
/// longer piece before the worker's next wait
/// (`bench/results/tails-20261205-1542.md`, `-1553.md`).
pub const COMPRESS_PIECE_BATCHED: usize = 32 << 10;

/// Worst-case bytes a flush adds beyond `compress_bound` (a zstd block
/// header, with room to spare), once per piece: bounds count pieces of
/// [`COMPRESS_PIECE`], the smallest.
const FLUSH_OVERHEAD: usize = 16;

/// How blocks are cut and segments rotated.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Cut a block once its uncompressed records reach this size.
    pub block_max_bytes: usize,
    /// Seal a segment once it reaches this size.
    pub segment_max_bytes: u64,
    /// Seal a segment once it is this old (and holds a block).
    pub segment_max_age: Duration,
    /// zstd level.
    pub zstd_level: i32,
}

/// What one block write did, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockStats {
    /// Records in the block.
    pub records: u64,
    /// Uncompressed record bytes (with length prefixes).
    pub raw_bytes: u64,
    /// Bytes written (header and payload).
    pub written_bytes: u64,
}

/// A block being built: records appended in sequence order, then
/// compressed and framed (header and payload, ready to write). A worker's
/// packer builds the server's blocks (`store::pack`); a `StreamWriter`
/// holds one for records appended to it directly.
pub struct BlockBuilder {
    raw: Vec<u8>,
    count: u32,
    next_seq: u64,
    min_ts: u64,
    max_ts: u64,
    block_max_bytes: usize,
    compressor: CCtx<'static>,
    /// The block being framed: header, then the zstd frame so far.
    out: Vec<u8>,
    /// How far the records waiting are framed (`BlockBuilder::frame_piece`).
    framing: Framing,
}

/// How far a block's compression has come.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// Not begun (or begun again after an error).
    NotBegun,
    /// The first this-many bytes of the records are in the frame.
    Begun(usize),
    /// The frame is whole and its header written: `out` holds the block.
    Done,
}

/// What [`BlockBuilder::frame_piece`] did.
pub enum Framed<'a> {
    /// No record waits.
    Empty,
    /// A piece was compressed; more is left.
    Partial,
    /// The block is whole: its bytes and what it holds.
    Whole(&'a [u8], BlockStats),
}

impl BlockBuilder {
    /// An empty block whose first record will be `next_seq`.
    pub fn new(next_seq: u64, block_max_bytes: usize, zstd_level: i32) -> io::Result<BlockBuilder> {
        Ok(BlockBuilder {
            raw: Vec::with_capacity(block_max_bytes + 4096),
            count: 0,
            next_seq,
            min_ts: u64::MAX,
            max_ts: 0,
            block_max_bytes,
            compressor: compressor(zstd_level)?,
            // Sized once for the largest block normally cut (the limit plus
            // one record), so that framing blocks does not grow it later.
            out: Vec::with_capacity(out_bound(block_max_bytes + 4096)),
            framing: Framing::NotBegun,
        })
    }

    /// Adds a record. Records must come in sequence order without gaps.
    /// Not while the block is being framed.
    pub fn append(&mut self, seq: u64, ts_ms: u64, record: &[u8]) -> io::Result<()> {
        if self.framing != Framing::NotBegun {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the block is being compressed",
            ));
        }
        if seq != self.next_seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected sequence {} but got {seq}", self.next_seq),
            ));
        }
        if record.len() > format::MAX_RECORD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record larger than the format allows",
            ));
        }
        self.raw
            .extend_from_slice(&(record.len() as u32).to_le_bytes());
        self.raw.extend_from_slice(record);
        self.count += 1;
        self.next_seq = seq + 1;
        self.min_ts = self.min_ts.min(ts_ms);
        self.max_ts = self.max_ts.max(ts_ms);
        Ok(())
    }

    /// Records waiting.
    pub fn pending(&self) -> u32 {
        self.count
    }

    /// Bytes of the records waiting.
    pub fn pending_bytes(&self) -> usize {
        self.raw.len()
    }

    /// Whether the block has reached its size.
    pub fn full(&self) -> bool {
        self.raw.len() >= self.block_max_bytes
    }

    /// The earliest event time among the records waiting.
    pub fn pending_min_ts(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min_ts)
    }

    /// Sequence number the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence number of the first record waiting (the next one's
    /// when none waits): every record below it has left the block.
    pub fn first_seq(&self) -> u64 {
        self.next_seq - u64::from(self.count)
    }

    /// Moves past records written elsewhere: the next record must be
    /// `seq`. Only while nothing waits.
    fn skip_to(&mut self, seq: u64) {
        debug_assert_eq!(self.count, 0);
        self.next_seq = seq;
    }

    /// Compresses the records waiting, in pieces of `piece` bytes
    /// (`usize::MAX`: in one go) with `pause` called between them, into
    /// one framed block: its bytes and what it holds, or `None` when
    /// nothing waits. The records stay waiting until [`BlockBuilder::clear`],
    /// so that a block whose write failed is written again as it was.
    pub fn frame(
        &mut self,
        piece: usize,
        pause: &mut dyn FnMut(),
    ) -> io::Result<Option<(&[u8], BlockStats)>> {
        while let Framed::Partial = self.frame_piece(piece)? {
            pause();
        }
        // Whole by now (asked again, it is not compressed again), or empty.
        Ok(match self.frame_piece(piece)? {
            Framed::Whole(bytes, stats) => Some((bytes, stats)),
            Framed::Empty | Framed::Partial => None,
        })
    }

    /// Compresses the next `piece` bytes (`usize::MAX`: all that is left)
    /// of the records waiting into the block's frame; a caller may do
    /// other work between pieces, while no record is appended. Once the
    /// frame is whole, this and every later call return the block, until
    /// [`BlockBuilder::clear`]. After an error the next call begins again.
    pub fn frame_piece(&mut self, piece: usize) -> io::Result<Framed<'_>> {
        if self.count == 0 {
            return Ok(Framed::Empty);
        }
        if self.framing == Framing::NotBegun {
            self.out.clear();
            self.out.reserve(out_bound(self.raw.len()));
            self.out.resize(BLOCK_HEADER_LEN, 0);
            begin(&mut self.compressor, self.raw.len())?;
            self.framing = Framing::Begun(0);
        }
        if let Framing::Begun(done) = self.framing {
            let end = done.saturating_add(piece.max(1)).min(self.raw.len());
            let last = end == self.raw.len();
            let compressed = compress_piece(
                &mut self.compressor,
                &self.raw[done..end],
                &mut self.out,
                last,
            );
            if let Err(e) = compressed {
                self.framing = Framing::NotBegun;
                return Err(e);
            }
            if !last {
                self.framing = Framing::Begun(end);
                return Ok(Framed::Partial);
            }
            let n = self.out.len() - BLOCK_HEADER_LEN;
            let header = BlockHeader {
                compressed_len: n as u32,
                uncompressed_len: self.raw.len() as u32,
                count: self.count,
                first_seq: self.first_seq(),
                min_ts: self.min_ts,
                max_ts: self.max_ts,
                codec: CODEC_ZSTD,
                crc: 0,
            };
            let head = header.encode(&self.out[BLOCK_HEADER_LEN..]);
            self.out[..BLOCK_HEADER_LEN].copy_from_slice(&head);
            self.framing = Framing::Done;
        }
        let stats = BlockStats {
            records: u64::from(self.count),
            raw_bytes: self.raw.len() as u64,
            written_bytes: self.out.len() as u64,
        };
        Ok(Framed::Whole(&self.out, stats))
    }

    /// Whether the records waiting are being framed (in pieces), so that
    /// none may be appended until the block is cleared.
    pub fn framing(&self) -> bool {
        self.framing != Framing::NotBegun
    }

    /// Empties the block once its framed bytes are taken.
    pub fn clear(&mut self) {
        self.raw.clear();
        self.framing = Framing::NotBegun;
        self.count = 0;
        self.min_ts = u64::MAX;
        self.max_ts = 0;
    }
}

/// The writer of one stream.
pub struct StreamWriter {
    dir: PathBuf,
    stream: u32,
    node: String,
    cfg: WriterConfig,
    file: Arc<File>,
    path: PathBuf,
    base_seq: u64,
    size: u64,
    blocks: u64,
    opened: Instant,
    /// Records appended directly, not yet written.
    block: BlockBuilder,
    unsynced: bool,
    /// The segment is sealed and the next one not yet open (opening it
    /// failed): the next block opens it first.
    sealed: bool,
    /// A failed write may have left part of a block past `size`, and
    /// cutting it off failed too: cut before the next write.
    torn: bool,
    /// An fdatasync of this writer's failed: the kernel may have dropped
    /// what it held of the file, and a later fdatasync that succeeds says
    /// nothing about it (the error is reported once).
    sync_failed: bool,
    /// How files are fdatasync'ed: `File::sync_data`, or a fault in tests.
    sync_file: SyncFile,
}

/// An fdatasync. A real disk fails one only when its hardware does, so
/// tests put a function that fails here (`StreamWriter::sync_with`).
pub type SyncFile = fn(&File) -> io::Result<()>;

fn compressor(level: i32) -> io::Result<CCtx<'static>> {
    let mut cctx = CCtx::try_create().ok_or_else(|| io::Error::other("zstd context"))?;
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(zstd_err)?;
    Ok(cctx)
}

fn zstd_err(code: zstd_safe::ErrorCode) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))
}

/// Appends one whole block's `bytes` to `file`, which holds `size` bytes.
/// A full disk or a file-size limit may take part of it: that part is cut
/// off, so that the next try appends after the last whole block, or, when
/// the cut fails too, `torn` says the next write must cut first.
fn append_whole(file: &File, size: u64, torn: &mut bool, bytes: &[u8]) -> io::Result<()> {
    let written = (&*file).write_all(bytes);
    if written.is_err() {
        *torn = file.set_len(size).is_err();
    }
    written
}

/// Capacity of `out` for a block of `raw_len` bytes: header and the
/// compressed frame at its largest.
pub fn out_bound(raw_len: usize) -> usize {
    BLOCK_HEADER_LEN
        + zstd_safe::compress_bound(raw_len)
        + raw_len.div_ceil(COMPRESS_PIECE).max(1) * FLUSH_OVERHEAD
}

/// Begins a zstd frame of `len` bytes.
fn begin(cctx: &mut CCtx<'static>, len: usize) -> io::Result<()> {
    cctx.reset(zstd_safe::ResetDirective::SessionOnly)
        .map_err(zstd_err)?;
    cctx.set_pledged_src_size(Some(len as u64))
        .map_err(zstd_err)?;
    Ok(())
}

/// Compresses `piece`, the next bytes of the frame `begin` began, onto
/// the end of `out` (whose capacity is `out_bound` of the whole): `last`
/// ends the frame, otherwise the piece ends a zstd block.
fn compress_piece(
    cctx: &mut CCtx<'static>,
    piece: &[u8],
    out: &mut Vec<u8>,
    last: bool,
) -> io::Result<()> {
    let mode = if last {
        ZSTD_EndDirective::ZSTD_e_end
    } else {
        ZSTD_EndDirective::ZSTD_e_flush
    };
    let at = out.len();
    let mut output = OutBuffer::around_pos(out, at);
    let mut input = InBuffer::around(piece);
    loop {
        let before = (input.pos(), output.pos());
        let left = cctx
            .compress_stream2(&mut output, &mut input, mode)
            .map_err(zstd_err)?;
        if left == 0 && input.pos() == piece.len() {
            return Ok(());
        }
        if (input.pos(), output.pos()) == before {
            // Cannot happen with `out_bound`'s capacity; never spin.
            return Err(io::Error::other("zstd: no room for the compressed block"));
        }
    }
}

/// fsyncs a directory, so that a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl StreamWriter {
    /// Opens a new segment for `stream` whose first record will be
    /// `next_seq`.
    pub fn create(
        dir: &Path,
        stream: u32,
        node: &str,
        next_seq: u64,
        cfg: WriterConfig,
    ) -> io::Result<StreamWriter> {
        let (file, path) = new_segment(dir, stream, node, next_seq)?;
        let file = Arc::new(file);
        Ok(StreamWriter {
            dir: dir.to_owned(),
            stream,
            node: node.to_owned(),
            cfg,
            file,
            path,
            base_seq: next_seq,
            size: HEADER_LEN as u64,
            blocks: 0,
            opened: Instant::now(),
            block: BlockBuilder::new(next_seq, cfg.block_max_bytes, cfg.zstd_level)?,
            unsynced: false,
            sealed: false,
            torn: false,
            sync_failed: false,
            sync_file: File::sync_data,
        })
    }

    /// Adds a record to the block being built. Records must come in
    /// sequence order without gaps.
    pub fn append(&mut self, seq: u64, ts_ms: u64, record: &[u8]) -> io::Result<()> {
        self.block
            .append(seq, ts_ms, record)
            .map_err(|e| io::Error::new(e.kind(), format!("stream {}: {e}", self.stream)))
    }

    /// Bytes of the block being built.
    pub fn pending_bytes(&self) -> usize {
        self.block.pending_bytes()
    }

    /// Whether the block being built has reached its size.
    pub fn block_full(&self) -> bool {
        self.block.full()
    }

    /// Records waiting in the block being built.
    pub fn pending(&self) -> u32 {
        self.block.pending()
    }

    /// The earliest event time among the records waiting in the block
    /// being built.
    pub fn pending_min_ts(&self) -> Option<u64> {
        self.block.pending_min_ts()
    }

    /// Compresses (in one go) and writes the block being built, if any.
    pub fn write_block(&mut self) -> io::Result<Option<BlockStats>> {
        self.write_block_in(usize::MAX, &mut || {})
    }

    /// [`StreamWriter::write_block`], compressing in pieces of
    /// [`COMPRESS_PIECE`] bytes and calling `pause` between them.
    pub fn write_block_pausing(
        &mut self,
        pause: &mut dyn FnMut(),
    ) -> io::Result<Option<BlockStats>> {
        self.write_block_in(COMPRESS_PIECE, pause)
    }

    fn write_block_in(
        &mut self,
        piece: usize,
        pause: &mut dyn FnMut(),
    ) -> io::Result<Option<BlockStats>> {
        if self.block.pending() == 0 {
            return Ok(None);
        }
        self.ready_to_write()?;
        let Some((bytes, stats)) = self.block.frame(piece, pause)? else {
            return Ok(None);
        };
        // After a failure the records stay pending for the next try.
        append_whole(&self.file, self.size, &mut self.torn, bytes)?;
        self.block.clear();
        self.wrote(stats.written_bytes);
        Ok(Some(stats))
    }

    /// Writes a block framed elsewhere (`BlockBuilder::frame`), which must
    /// begin at the next sequence number, while no record appended here
    /// waits. A failed write leaves the segment as it was, so that the
    /// same block can be written again.
    pub fn write_framed(&mut self, block: &[u8]) -> io::Result<BlockStats> {
        let header = BlockHeader::decode(block)
            .ok()
            .filter(|h| block.len() == BLOCK_HEADER_LEN + h.compressed_len as usize);
        let Some(header) = header else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a framed block",
            ));
        };
        if self.block.pending() > 0 || header.first_seq != self.block.next_seq() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "stream {} expected a block at sequence {} but got one at {}",
                    self.stream,
                    self.block.next_seq(),
                    header.first_seq
                ),
            ));
        }
        self.ready_to_write()?;
        append_whole(&self.file, self.size, &mut self.torn, block)?;
        self.block.skip_to(header.end_seq());
        self.wrote(block.len() as u64);
        Ok(BlockStats {
            records: u64::from(header.count),
            raw_bytes: u64::from(header.uncompressed_len),
            written_bytes: block.len() as u64,
        })
    }

    /// Opens the next segment if this one is sealed, and cuts off what a
    /// failed write left, before a block is written.
    fn ready_to_write(&mut self) -> io::Result<()> {
        if self.sealed {
            self.open_next()?;
        }
        if self.torn {
            self.file.set_len(self.size)?;
            self.torn = false;
        }
        Ok(())
    }

    /// Counts a block of `bytes` written.
    fn wrote(&mut self, bytes: u64) {
        self.size += bytes;
        self.blocks += 1;
        self.unsynced = true;
    }

    /// fdatasyncs written blocks, if any are unsynced. Returns whether it
    /// synced.
    pub fn sync(&mut self) -> io::Result<bool> {
        if !self.unsynced {
            return Ok(false);
        }
        self.sync_data()?;
        self.unsynced = false;
        Ok(true)
    }

    /// Whether an fdatasync of this writer's ever failed (see
    /// `sync_failed`): nothing it wrote may be called durable again.
    pub fn sync_failed(&self) -> bool {
        self.sync_failed
    }

    /// Syncs this writer's files with `sync_file` from now on.
    pub fn sync_with(&mut self, sync_file: SyncFile) {
        self.sync_file = sync_file;
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let synced = (self.sync_file)(&self.file);
        self.sync_failed |= synced.is_err();
        synced
    }

    /// Whether blocks were written since the last sync or sync point.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// Undoes [`StreamWriter::sync_point`] when its sync could not be
    /// scheduled.
    pub fn mark_unsynced(&mut self) {
        self.unsynced = true;
    }

    /// The open segment's file and the sequence number below which every
    /// record is in a written block: what an fdatasync of that file makes
    /// durable. Lets another thread sync while this one keeps writing.
    pub fn sync_point(&mut self) -> (Arc<File>, u64) {
        self.unsynced = false;
        (self.file.clone(), self.written_through())
    }

    /// Whether the segment should be sealed (by size or age) now.
    pub fn should_rotate(&self) -> bool {
        self.blocks > 0
            && (self.size >= self.cfg.segment_max_bytes
                || self.opened.elapsed() >= self.cfg.segment_max_age)
    }

    /// Seals this segment and opens the next one. Either step may fail
    /// and be tried again: a sealed segment is not sealed twice.
    pub fn rotate(&mut self) -> io::Result<()> {
        if self.sealed {
            // Sealed by a rotation that could not open the next segment;
            // what waits stays pending for the next block.
            return self.open_next();
        }
        self.write_block()?;
        self.seal()?;
        self.open_next()
    }

    /// Writes what is pending, syncs and seals. A segment without a block
    /// is removed instead of sealed.
    pub fn close(mut self) -> io::Result<()> {
        self.write_block()?;
        if self.sealed {
            return Ok(());
        }
        self.seal()
    }

    fn seal(&mut self) -> io::Result<()> {
        if self.blocks == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            self.sync_data()?;
            std::fs::rename(&self.path, self.path.with_extension(""))?;
        }
        self.sealed = true;
        sync_dir(&self.dir)
    }

    /// Opens the segment after a sealed one; its first record is the first
    /// one not yet written.
    fn open_next(&mut self) -> io::Result<()> {
        let base = self.written_through();
        let (file, path) = new_segment(&self.dir, self.stream, &self.node, base)?;
        self.file = Arc::new(file);
        self.path = path;
        self.base_seq = base;
        self.size = HEADER_LEN as u64;
        self.blocks = 0;
        self.opened = Instant::now();
        self.sealed = false;
        self.torn = false;
        Ok(())
    }

    /// Sequence number the next record must have.
    pub fn next_seq(&self) -> u64 {
        self.block.next_seq()
    }

    /// The sequence number below which every record is in a written block.
    pub fn written_through(&self) -> u64 {
        self.block.first_seq()
    }

    /// The open segment's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open segment's first sequence number.
    pub fn base_seq(&self) -> u64 {
        self.base_seq
    }
}

fn new_segment(dir: &Path, stream: u32, node: &str, base_seq: u64) -> io::Result<(File, PathBuf)> {
    let path = dir.join(format::file_name(stream, base_seq, true));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    let header = SegmentHeader {
        stream,
        base_seq,
        created_ms: unix_ms(),
        node: node.to_owned(),
    };
    let written = file
        .write_all(&header.encode())
        .and_then(|()| file.sync_data())
        .and_then(|()| sync_dir(dir));
    if let Err(e) = written {
        // Not left half made: the next try creates it anew.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok((file, path))
}
