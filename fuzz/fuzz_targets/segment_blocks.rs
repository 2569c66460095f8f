//! Segment files whose checksums are right and whose contents are not: the
//! input supplies a block header's fields and its payload (compressed here
//! or taken raw), and the target writes them with correct CRCs, so the
//! fuzzer gets past the checksum that stops `segment` early and reaches
//! decompression, record framing, sequence arithmetic and recovery. The
//! same promises: no panic, every error names an offset, recovery fails
//! only on I/O.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackplane::segment::format::{BlockHeader, SegmentHeader, CODEC_ZSTD};

/// Header fields the input chooses: count, first sequence, min and max
/// event time, whether to compress, and the uncompressed length.
const FIELDS: usize = 4 + 8 + 8 + 8 + 1 + 4;

fuzz_target!(|data: &[u8]| {
    if data.len() < FIELDS {
        return;
    }
    let (f, rest) = data.split_at(FIELDS);
    let u32_at = |i: usize| u32::from_le_bytes(f[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().unwrap());
    let compress = f[28] & 1 == 1;
    let payload = if compress {
        zstd::bulk::compress(rest, 1).unwrap()
    } else {
        rest.to_vec()
    };
    // Mostly the true length, sometimes the input's claim.
    let uncompressed_len = if f[28] & 2 == 0 {
        rest.len() as u32
    } else {
        u32_at(29)
    };
    let block = BlockHeader {
        compressed_len: payload.len() as u32,
        uncompressed_len,
        count: u32_at(0),
        first_seq: u64_at(4),
        min_ts: u64_at(12),
        max_ts: u64_at(20),
        codec: CODEC_ZSTD,
        crc: 0,
    };
    let header = SegmentHeader {
        stream: 0,
        base_seq: block.first_seq,
        created_ms: 0,
        node: "edge-1".into(),
    };
    let mut file = header.encode().to_vec();
    file.extend_from_slice(&block.encode(&payload));
    file.extend_from_slice(&payload);
    trackplane_fuzz::check_segment_file(&file);
});
