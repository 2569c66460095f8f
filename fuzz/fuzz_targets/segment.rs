//! Arbitrary bytes as a segment file, the way `trackplane tail`, the
//! shipper and crash recovery meet a damaged one: reading never panics,
//! every error names an offset, and recovery never fails on the contents
//! (only on I/O).
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use trackplane::segment::{self, SegmentReader};

thread_local! {
    static DATA_DIR: PathBuf = {
        let dir = std::env::temp_dir().join(format!("trackplane-fuzz-segment-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("segments")).unwrap();
        dir
    };
}

fuzz_target!(|data: &[u8]| {
    DATA_DIR.with(|dir| {
        let segments = dir.join("segments");
        let _ = std::fs::remove_dir_all(&segments);
        std::fs::create_dir_all(&segments).unwrap();
        // As a sealed segment, then as the open one recovery repairs.
        let sealed = segments.join(segment::format::file_name(0, 0, false));
        let open = segments.join(segment::format::file_name(0, 0, true));
        std::fs::write(&sealed, data).unwrap();
        read_all(&sealed);
        std::fs::rename(&sealed, &open).unwrap();
        read_all(&open);
        segment::recover(dir).unwrap();
    });
});

fn read_all(path: &std::path::Path) {
    let Ok(mut reader) = SegmentReader::open(path) else {
        return;
    };
    loop {
        match reader.next_block() {
            Ok(Some(block)) => {
                let _ = block.records().count();
            }
            Ok(None) => return,
            Err(e) => {
                assert!(e.offset().is_some(), "{e}");
                return;
            }
        }
    }
}
