//! Segment format v1, byte for byte as `docs/segment-format.md` specifies:
//! constants, the segment and block headers, CRCs and file names. Pure
//! functions; the writer, reader and recovery build on these.

/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TRKPSEG1";
/// The format version this code writes.
pub const VERSION: u16 = 1;
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 128;
/// First bytes of every block.
pub const BLOCK_MAGIC: [u8; 4] = *b"TPBK";
/// Bytes of a block header.
pub const BLOCK_HEADER_LEN: usize = 48;
/// Largest compressed or uncompressed block.
pub const MAX_BLOCK_BYTES: usize = 64 << 20;
/// Largest record.
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// Longest node name.
pub const MAX_NODE_BYTES: usize = 64;
/// Codec byte of a zstd block.
pub const CODEC_ZSTD: u8 = 1;

/// What is wrong with bytes that should be a header or block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The magic bytes are not there.
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not read.
    #[error("unsupported format version {0}")]
    Version(u16),
    /// A length field is out of range or inconsistent.
    #[error("bad length: {0}")]
    Length(&'static str),
    /// The CRC does not match.
    #[error("CRC mismatch")]
    Crc,
    /// A codec this code does not read.
    #[error("unknown codec {0}")]
    Codec(u8),
    /// The payload does not decompress to the declared records.
    #[error("bad payload: {0}")]
    Payload(&'static str),
    /// The file ends inside this structure.
    #[error("truncated")]
    Truncated,
}

/// The segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Stream (worker) number.
    pub stream: u32,
    /// Sequence number of the segment's first record.
    pub base_seq: u64,
    /// Creation time, Unix ms.
    pub created_ms: u64,
    /// Node name, 1 to 64 ASCII bytes.
    pub node: String,
}

impl SegmentHeader {
    /// The 128 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.stream.to_le_bytes());
        b[16..24].copy_from_slice(&self.base_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        let node = &self.node.as_bytes()[..self.node.len().min(MAX_NODE_BYTES)];
        b[32] = node.len() as u8;
        b[33..33 + node.len()].copy_from_slice(node);
        let crc = crc32c::crc32c(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and verifies a header.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, FormatError> {
        if b.len() < HEADER_LEN {
            return Err(FormatError::Truncated);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if crc32c::crc32c(&b[..124]) != u32_at(b, 124) {
            return Err(FormatError::Crc);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        if u16::from_le_bytes([b[10], b[11]]) as usize != HEADER_LEN {
            return Err(FormatError::Length("header length"));
        }
        let n = b[32] as usize;
        if n == 0 || n > MAX_NODE_BYTES || !b[33..33 + n].is_ascii() {
            return Err(FormatError::Length("node name"));
        }
        Ok(SegmentHeader {
            stream: u32_at(b, 12),
            base_seq: u64_at(b, 16),
            created_ms: u64_at(b, 24),
            node: String::from_utf8_lossy(&b[33..33 + n]).into_owned(),
        })
    }
}

/// A block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    /// Payload bytes after the header.
    pub compressed_len: u32,
    /// Bytes of the decompressed payload.
    pub uncompressed_len: u32,
    /// Records in the block.
    pub count: u32,
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Smallest event time, Unix ms.
    pub min_ts: u64,
    /// Largest event time, Unix ms.
    pub max_ts: u64,
    /// Payload codec.
    pub codec: u8,
    /// CRC32C of header bytes 0..44 and the payload.
    pub crc: u32,
}

impl BlockHeader {
    /// Header bytes for `payload`, with the CRC computed over both.
    pub fn encode(&self, payload: &[u8]) -> [u8; BLOCK_HEADER_LEN] {
        let mut b = [0u8; BLOCK_HEADER_LEN];
        b[0..4].copy_from_slice(&BLOCK_MAGIC);
        b[4..8].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[8..12].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.count.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.min_ts.to_le_bytes());
        b[32..40].copy_from_slice(&self.max_ts.to_le_bytes());
        b[40] = self.codec;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..44]), payload);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a header's fields and checks their ranges; the CRC is checked
    /// with [`BlockHeader::verify`] once the payload is read.
    pub fn decode(b: &[u8]) -> Result<BlockHeader, FormatError> {
        if b.len() < BLOCK_HEADER_LEN {
            return Err(FormatError::Truncated);
        }
        if b[0..4] != BLOCK_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let h = BlockHeader {
            compressed_len: u32_at(b, 4),
            uncompressed_len: u32_at(b, 8),
            count: u32_at(b, 12),
            first_seq: u64_at(b, 16),
            min_ts: u64_at(b, 24),
            max_ts: u64_at(b, 32),
            codec: b[40],
            crc: u32_at(b, 44),
        };
        if h.compressed_len as usize > MAX_BLOCK_BYTES || h.compressed_len == 0 {
            return Err(FormatError::Length("compressed length"));
        }
        if h.uncompressed_len as usize > MAX_BLOCK_BYTES
            || (h.uncompressed_len as usize) < 4 * h.count as usize
        {
            return Err(FormatError::Length("uncompressed length"));
        }
        if h.count == 0 {
            return Err(FormatError::Length("record count"));
        }
        // end_seq must be representable: readers, recovery and the shipper
        // all compute it.
        if h.first_seq.checked_add(u64::from(h.count)).is_none() {
            return Err(FormatError::Length("sequence range"));
        }
        Ok(h)
    }

    /// Checks the CRC over the header bytes and the payload.
    pub fn verify(&self, header_bytes: &[u8], payload: &[u8]) -> Result<(), FormatError> {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header_bytes[..44]), payload);
        if crc != self.crc {
            return Err(FormatError::Crc);
        }
        if self.codec != CODEC_ZSTD {
            return Err(FormatError::Codec(self.codec));
        }
        Ok(())
    }

    /// Sequence number one past the block's last record.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// Bytes of the block on disk.
    pub fn total_len(&self) -> u64 {
        BLOCK_HEADER_LEN as u64 + u64::from(self.compressed_len)
    }
}

/// Splits a decompressed payload into its records, checking the framing.
pub fn records(payload: &[u8], count: u32) -> Result<Vec<&[u8]>, FormatError> {
    let mut out = Vec::with_capacity(count as usize);
    let mut at = 0;
    while at < payload.len() {
        let len = payload
            .get(at..at + 4)
            .map(|b| u32_at(b, 0) as usize)
            .ok_or(FormatError::Payload("torn record length"))?;
        let rec = payload
            .get(at + 4..at + 4 + len)
            .ok_or(FormatError::Payload("record past the payload"))?;
        out.push(rec);
        at += 4 + len;
    }
    if out.len() != count as usize {
        return Err(FormatError::Payload("record count differs from the header"));
    }
    Ok(out)
}

/// `<stream:04>-<base_seq:020>.seg[.open]`.
pub fn file_name(stream: u32, base_seq: u64, open: bool) -> String {
    format!(
        "{stream:04}-{base_seq:020}.seg{}",
        if open { ".open" } else { "" }
    )
}

/// Parses a segment file name: (stream, base sequence, open).
pub fn parse_file_name(name: &str) -> Option<(u32, u64, bool)> {
    let (stem, open) = match name.strip_suffix(".seg.open") {
        Some(s) => (s, true),
        None => (name.strip_suffix(".seg")?, false),
    };
    let (stream, base) = stem.split_once('-')?;
    if stream.len() < 4 || base.len() != 20 {
        return None;
    }
    Some((stream.parse().ok()?, base.parse().ok()?, open))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn segment_header_round_trips(stream: u32, base_seq: u64, created_ms: u64, node in "[a-z0-9.-]{1,64}") {
            let h = SegmentHeader { stream, base_seq, created_ms, node };
            prop_assert_eq!(SegmentHeader::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn block_header_round_trips(len in 1u32..1000, count in 1u32..100, first_seq in 0..=u64::MAX - 100, min_ts: u64, max_ts: u64, payload in proptest::collection::vec(any::<u8>(), 1..64)) {
            let h = BlockHeader { compressed_len: payload.len() as u32, uncompressed_len: len.max(4 * count), count, first_seq, min_ts, max_ts, codec: CODEC_ZSTD, crc: 0 };
            let bytes = h.encode(&payload);
            let d = BlockHeader::decode(&bytes).unwrap();
            d.verify(&bytes, &payload).unwrap();
            prop_assert_eq!(BlockHeader { crc: 0, ..d }, h);
        }

        #[test]
        fn a_sequence_range_past_u64_is_refused(count in 1u32..100, below in 0u64..100) {
            let first_seq = u64::MAX - below;
            let h = BlockHeader { compressed_len: 1, uncompressed_len: 4 * count, count, first_seq, min_ts: 0, max_ts: 0, codec: CODEC_ZSTD, crc: 0 };
            let d = BlockHeader::decode(&h.encode(b"x"));
            if u64::from(count) > below {
                prop_assert_eq!(d, Err(FormatError::Length("sequence range")));
            } else {
                prop_assert_eq!(d.map(|d| d.end_seq()), Ok(u64::MAX - below + u64::from(count)));
            }
        }

        #[test]
        fn any_bit_flip_in_a_header_is_caught(byte in 0usize..124, bit in 0u8..8) {
            let h = SegmentHeader { stream: 3, base_seq: 77, created_ms: 1, node: "edge".into() };
            let mut b = h.encode();
            b[byte] ^= 1 << bit;
            prop_assert!(SegmentHeader::decode(&b).is_err());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = SegmentHeader::decode(&bytes);
            let _ = BlockHeader::decode(&bytes);
            let _ = records(&bytes, 3);
        }
    }

    #[test]
    fn file_names_sort_and_parse() {
        assert_eq!(file_name(2, 42, true), "0002-00000000000000000042.seg.open");
        assert_eq!(
            parse_file_name("0002-00000000000000000042.seg.open"),
            Some((2, 42, true))
        );
        assert_eq!(
            parse_file_name("0002-00000000000000000042.seg"),
            Some((2, 42, false))
        );
        for bad in [
            "x.seg",
            "0002-42.seg",
            "0002-00000000000000000042.log",
            "2-00000000000000000042.seg",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        let mut names = [
            file_name(0, 1000, false),
            file_name(0, 99, false),
            file_name(0, 5, false),
        ];
        names.sort();
        assert_eq!(names[0], file_name(0, 5, false));
    }
}
