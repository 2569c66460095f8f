//! What the segment fuzz targets share: a scratch data directory per
//! process, and the promises every segment file keeps however it was made
//! or damaged.

use std::path::{Path, PathBuf};

use trackplane::segment::{self, format, SegmentReader};

thread_local! {
    static DATA_DIR: PathBuf = std::env::temp_dir().join(format!(
        "trackplane-fuzz-segment-{}",
        std::process::id()
    ));
}

/// Puts `file` in a fresh data directory as stream 0's segment, reads it as
/// a sealed segment and then as the open one, and runs recovery over it.
/// Panics when a read error names no offset or recovery fails: it may fail
/// only on I/O, never on contents.
pub fn check_segment_file(file: &[u8]) {
    DATA_DIR.with(|dir| {
        let segments = dir.join("segments");
        let _ = std::fs::remove_dir_all(&segments);
        std::fs::create_dir_all(&segments).unwrap();
        let sealed = segments.join(format::file_name(0, 0, false));
        let open = segments.join(format::file_name(0, 0, true));
        std::fs::write(&sealed, file).unwrap();
        read_all(&sealed);
        std::fs::rename(&sealed, &open).unwrap();
        read_all(&open);
        segment::recover(dir).unwrap();
    });
}

fn read_all(path: &Path) {
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
