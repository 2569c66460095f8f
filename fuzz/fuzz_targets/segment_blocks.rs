//! Segment files whose checksums are right and whose contents are not: the
//! input supplies a block header's fields and its payload (compressed here
//! or taken raw), and the target writes them with correct CRCs, so the
//! fuzzer gets past the checksum that stops `segment` early and reaches
//! decompression, record framing, sequence arithmetic and recovery. The
//! same promises: no panic, every error names an offset, recovery fails
//! only on I/O.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use trackplane::segment::format::{self, BlockHeader, SegmentHeader, CODEC_ZSTD};
use trackplane::segment::{self, SegmentReader};

thread_local! {
    static DATA_DIR: PathBuf = {
        let dir = std::env::temp_dir().join(format!("trackplane-fuzz-blocks-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("segments")).unwrap();
        dir
    };
}

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
    DATA_DIR.with(|dir| {
        let segments = dir.join("segments");
        let _ = std::fs::remove_dir_all(&segments);
        std::fs::create_dir_all(&segments).unwrap();
        let open = segments.join(format::file_name(0, 0, true));
        std::fs::write(&open, &file).unwrap();
        if let Ok(mut reader) = SegmentReader::open(&open) {
            loop {
                match reader.next_block() {
                    Ok(Some(block)) => {
                        for (seq, _) in block.records() {
                            let _ = seq;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert!(e.offset().is_some(), "{e}");
                        break;
                    }
                }
            }
        }
        segment::recover(dir).unwrap();
    });
});
