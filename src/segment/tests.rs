//! Round trips, a model of writer/reader/rotation/crash sequences, and
//! damaged files.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn cfg(block: usize, segment: u64) -> WriterConfig {
    WriterConfig {
        block_max_bytes: block,
        segment_max_bytes: segment,
        segment_max_age: Duration::from_secs(3600),
        zstd_level: 1,
    }
}

/// Every record of every segment in `dir`, in stream and sequence order.
fn read_all(dir: &Path) -> Vec<(u32, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for seg in list(dir).unwrap() {
        let mut r = SegmentReader::open(&seg.path).unwrap();
        while let Some(b) = r.next_block().unwrap() {
            out.extend(
                b.records()
                    .map(|(seq, rec)| (seg.stream, seq, rec.to_vec())),
            );
        }
    }
    out
}

fn record(seq: u64, len: usize) -> Vec<u8> {
    let mut r = format!("{{\"seq\":{seq},\"pad\":\"").into_bytes();
    r.extend(std::iter::repeat_n(b'a' + (seq % 26) as u8, len));
    r.extend_from_slice(b"\"}");
    r
}

#[test]
fn write_then_read_back_across_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = StreamWriter::create(&dir, 3, "edge", 100, cfg(2000, 1200)).unwrap();
    for seq in 100..1100 {
        w.append(
            seq,
            1_700_000_000_000 + seq,
            &record(seq, (seq % 90) as usize),
        )
        .unwrap();
        if w.block_full() {
            w.write_block().unwrap();
        }
        if w.should_rotate() {
            w.rotate().unwrap();
        }
    }
    w.close().unwrap();
    let segs = list(&dir).unwrap();
    assert!(segs.len() > 3, "rotation by size happened");
    assert!(segs.iter().all(|s| !s.open && s.stream == 3));
    let all = read_all(&dir);
    assert_eq!(all.len(), 1000);
    for (i, (_, seq, rec)) in all.iter().enumerate() {
        assert_eq!(*seq, 100 + i as u64);
        assert_eq!(rec, &record(*seq, (*seq % 90) as usize));
    }
    assert_eq!(recover(tmp.path()).unwrap().next_seq[&3], 1100);
}

#[test]
fn out_of_order_sequence_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = StreamWriter::create(tmp.path(), 0, "n", 5, cfg(1000, 1 << 20)).unwrap();
    w.append(5, 0, b"{}").unwrap();
    assert!(w.append(7, 0, b"{}").is_err());
}

#[test]
fn a_block_compressed_in_pieces_or_whole_reads_back_and_pauses_between_pieces() {
    // Compressible records, then random ones: the output's worst case.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    for (compressible, in_pieces) in [(true, true), (false, true), (true, false), (false, false)] {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = StreamWriter::create(tmp.path(), 0, "n", 0, cfg(1 << 20, 1 << 30)).unwrap();
        let recs: Vec<Vec<u8>> = (0..400u64)
            .map(|seq| {
                if compressible {
                    record(seq, 500)
                } else {
                    random(500)
                }
            })
            .collect();
        for (seq, rec) in recs.iter().enumerate() {
            w.append(seq as u64, 1, rec).unwrap();
        }
        let stats = if in_pieces {
            let mut pauses = 0;
            let stats = w.write_block_pausing(&mut || pauses += 1).unwrap().unwrap();
            let pieces = (stats.raw_bytes as usize).div_ceil(writer::COMPRESS_PIECE);
            assert!(pieces >= 6, "{pieces} pieces");
            assert_eq!(pauses, pieces - 1, "a pause between pieces, none after");
            stats
        } else {
            w.write_block().unwrap().unwrap()
        };
        if !compressible {
            assert!(
                stats.written_bytes > stats.raw_bytes,
                "random data does not shrink"
            );
        }
        let back: Vec<Vec<u8>> = read_all(tmp.path()).into_iter().map(|r| r.2).collect();
        assert_eq!(back, recs);
    }
}

#[test]
fn a_block_framed_piece_by_piece_takes_no_record_until_cleared() {
    let mut b = writer::BlockBuilder::new(7, 1 << 20, 1).unwrap();
    assert!(matches!(
        b.frame_piece(1024).unwrap(),
        writer::Framed::Empty
    ));
    for seq in 7..207 {
        b.append(seq, 1, &record(seq, 500)).unwrap();
    }
    let mut partial = 0;
    while let writer::Framed::Partial = b.frame_piece(16 << 10).unwrap() {
        partial += 1;
        let refused = b.append(207, 1, b"late").unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    }
    assert_eq!(partial, b.pending_bytes().div_ceil(16 << 10) - 1);
    let whole = match b.frame_piece(16 << 10).unwrap() {
        writer::Framed::Whole(bytes, stats) => {
            assert_eq!(stats.records, 200);
            bytes.to_vec()
        }
        _ => panic!("not whole"),
    };
    // Asked again (its write failed): the same block, not compressed anew.
    assert!(
        matches!(b.frame_piece(16 << 10).unwrap(), writer::Framed::Whole(again, _) if again == whole)
    );
    // Compressed in one go, the block reads back the same.
    let tmp = tempfile::tempdir().unwrap();
    let mut w = StreamWriter::create(tmp.path(), 0, "n", 7, cfg(1 << 20, 1 << 30)).unwrap();
    w.write_framed(&whole).unwrap();
    w.close().unwrap();
    let back: Vec<(u64, Vec<u8>)> = read_all(tmp.path())
        .into_iter()
        .map(|r| (r.1, r.2))
        .collect();
    assert_eq!(
        back,
        (7..207)
            .map(|seq| (seq, record(seq, 500)))
            .collect::<Vec<_>>()
    );
    b.clear();
    b.append(207, 1, b"next").unwrap();
    assert!(
        matches!(b.frame_piece(usize::MAX).unwrap(), writer::Framed::Whole(_, s) if s.records == 1)
    );
}

#[test]
fn open_segment_is_followed_while_it_grows() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = StreamWriter::create(tmp.path(), 0, "n", 0, cfg(100_000, 1 << 20)).unwrap();
    let mut r = SegmentReader::open(w.path()).unwrap();
    assert!(r.next_block().unwrap().is_none(), "no block yet");
    w.append(0, 1, b"{\"a\":1}").unwrap();
    w.write_block().unwrap();
    let b = r.next_block().unwrap().unwrap();
    assert_eq!(b.records().collect::<Vec<_>>(), [(0, &b"{\"a\":1}"[..])]);
    // Half a block on disk is "not yet" for an open segment.
    let path = w.path().to_owned();
    w.append(1, 2, b"{\"b\":2}").unwrap();
    w.write_block().unwrap();
    let full = std::fs::metadata(&path).unwrap().len();
    let bytes = std::fs::read(&path).unwrap();
    let copy = tmp.path().join("0009-00000000000000000000.seg.open");
    std::fs::write(&copy, &bytes[..full as usize - 5]).unwrap();
    let mut partial = SegmentReader::open(&copy).unwrap();
    assert!(partial.next_block().unwrap().is_some());
    assert!(partial.next_block().unwrap().is_none());
}

#[test]
fn recovery_cuts_a_torn_tail_and_keeps_whole_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = StreamWriter::create(&dir, 1, "n", 0, cfg(1 << 20, 1 << 30)).unwrap();
    for seq in 0..10 {
        w.append(seq, seq, &record(seq, 10)).unwrap();
        w.write_block().unwrap();
    }
    let path = w.path().to_owned();
    std::mem::forget(w); // a crash: no seal
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 7).unwrap();
    let rec = recover(tmp.path()).unwrap();
    assert_eq!(rec.cut.len(), 1);
    assert_eq!(rec.next_seq[&1], 9);
    assert_eq!(read_all(&dir).len(), 9);
    assert!(list(&dir).unwrap().iter().all(|s| !s.open));
}

#[test]
fn recovery_cuts_at_a_bit_flip_and_quarantines_a_bad_header() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = StreamWriter::create(&dir, 0, "n", 0, cfg(1 << 20, 1 << 30)).unwrap();
    let mut ends = Vec::new();
    for seq in 0..6 {
        w.append(seq, seq, &record(seq, 50)).unwrap();
        w.write_block().unwrap();
        ends.push(std::fs::metadata(w.path()).unwrap().len());
    }
    let path = w.path().to_owned();
    std::mem::forget(w);
    let mut bytes = std::fs::read(&path).unwrap();
    let flip = ends[2] as usize + 60; // inside block 3's payload
    bytes[flip] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    // A second stream whose open segment has a broken header.
    let bad = dir.join(format::file_name(7, 0, true));
    std::fs::write(&bad, b"not a segment at all").unwrap();
    let rec = recover(tmp.path()).unwrap();
    assert_eq!(rec.cut[0].1, ends[2], "cut exactly at the damaged block");
    assert_eq!(rec.next_seq[&0], 3);
    assert_eq!(rec.quarantined.len(), 1);
    assert!(tmp
        .path()
        .join("quarantine")
        .join(bad.file_name().unwrap())
        .exists());
    assert!(!rec.next_seq.contains_key(&7));
}

#[test]
fn sealed_segment_damage_is_reported_with_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = StreamWriter::create(tmp.path(), 0, "n", 0, cfg(1 << 20, 1 << 30)).unwrap();
    w.append(0, 0, &record(0, 100)).unwrap();
    w.write_block().unwrap();
    let sealed = w.path().with_extension("");
    w.close().unwrap();
    let mut bytes = std::fs::read(&sealed).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 1;
    std::fs::write(&sealed, &bytes).unwrap();
    let err = SegmentReader::open(&sealed)
        .unwrap()
        .next_block()
        .unwrap_err();
    assert_eq!(err.offset(), Some(format::HEADER_LEN as u64));
    assert!(err.to_string().contains("CRC mismatch"), "{err}");
    assert!(err.to_string().contains(&sealed.display().to_string()));
}

#[derive(Debug, Clone)]
enum Action {
    Append(u8, u8),
    WriteBlock,
    Sync,
    Rotate,
    /// Crash with the last `n` bytes of the open segment torn off.
    Crash(u16),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (1u8..20, any::<u8>()).prop_map(|(n, len)| Action::Append(n, len)),
        3 => Just(Action::WriteBlock),
        1 => Just(Action::Sync),
        1 => Just(Action::Rotate),
        1 => (0u16..300).prop_map(Action::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The model: records in blocks that were completely written before a
    /// crash survive it; records still in the writer's block, or in a block
    /// torn by the crash, are gone; after recovery the stream continues
    /// right after the last survivor, and readers see exactly the survivors.
    #[test]
    fn writer_reader_rotation_crash_model(actions in proptest::collection::vec(action(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("segments");
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = StreamWriter::create(&dir, 0, "m", 0, cfg(512, 2048)).unwrap();
        let mut durable: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut written: Vec<(u64, Vec<u8>, u64)> = Vec::new(); // (seq, rec, end offset) in the open segment
        let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next = 0u64;
        for a in actions {
            match a {
                Action::Append(n, len) => {
                    for _ in 0..n {
                        let r = record(next, len as usize);
                        w.append(next, next, &r).unwrap();
                        pending.push((next, r));
                        next += 1;
                    }
                }
                Action::WriteBlock => {
                    w.write_block().unwrap();
                    let end = std::fs::metadata(w.path()).unwrap().len();
                    written.extend(pending.drain(..).map(|(s, r)| (s, r, end)));
                }
                Action::Sync => { w.sync().unwrap(); }
                Action::Rotate => {
                    let had_block = !written.is_empty() || !pending.is_empty();
                    w.rotate().unwrap();
                    durable.extend(written.drain(..).map(|(s, r, _)| (s, r)));
                    durable.append(&mut pending);
                    prop_assert!(had_block || list(&dir).unwrap().iter().filter(|s| !s.open).count() as u64 <= next);
                }
                Action::Crash(tear) => {
                    let path = w.path().to_owned();
                    drop(w);
                    let len = std::fs::metadata(&path).unwrap().len();
                    let cut = len.saturating_sub(u64::from(tear)).max(format::HEADER_LEN as u64);
                    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
                    durable.extend(written.drain(..).filter(|(_, _, end)| *end <= cut).map(|(s, r, _)| (s, r)));
                    pending.clear();
                    let rec = recover(tmp.path()).unwrap();
                    next = durable.last().map_or(0, |(s, _)| s + 1);
                    prop_assert_eq!(rec.next_seq.get(&0).copied().unwrap_or(0), next);
                    w = StreamWriter::create(&dir, 0, "m", next, cfg(512, 2048)).unwrap();
                }
            }
        }
        w.close().unwrap();
        durable.extend(written.drain(..).map(|(s, r, _)| (s, r)));
        durable.append(&mut pending);
        let got: Vec<(u64, Vec<u8>)> = read_all(&dir).into_iter().map(|(_, s, r)| (s, r)).collect();
        prop_assert_eq!(got, durable);
    }
}

#[test]
fn a_rotation_whose_next_segment_cannot_be_made_is_tried_again_without_sealing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = StreamWriter::create(dir, 0, "n", 0, cfg(1 << 20, 1 << 30)).unwrap();
    for seq in 0..3 {
        w.append(seq, 1, &record(seq, 10)).unwrap();
    }
    // A file where the next segment goes: creating it fails (EEXIST).
    let blocker = dir.join(format::file_name(0, 3, true));
    std::fs::write(&blocker, b"not a segment").unwrap();
    assert!(w.rotate().is_err());
    assert!(dir.join(format::file_name(0, 0, false)).exists(), "sealed");
    // Records taken meanwhile wait; writing them fails while the next
    // segment cannot be made, and nothing goes into the sealed one.
    w.append(3, 1, &record(3, 10)).unwrap();
    assert!(w.write_block().is_err());
    assert!(w.rotate().is_err());
    std::fs::remove_file(&blocker).unwrap();
    // The retried rotation opens the next segment; what waits is written
    // there with the next block (not yet durable, so still pending).
    w.rotate().unwrap();
    assert!(!w.should_rotate());
    assert_eq!(w.pending(), 1);
    w.append(4, 1, &record(4, 10)).unwrap();
    w.close().unwrap();
    let segs: Vec<_> = list(dir).unwrap().into_iter().map(|s| s.base_seq).collect();
    assert_eq!(segs, [0, 3]);
    let seqs: Vec<u64> = read_all(dir).into_iter().map(|(_, seq, _)| seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
}
