//! `trackplane tail`: how an operator reads segment files. Prints records as
//! JSON lines (ready for jq), follows open segments across rotation like
//! `tail -F`, filters, counts, and verifies every CRC. Reading never
//! modifies a segment and works while the server writes.
//!
//! # Layout
//! - `cursor`: one stream's records across its segments, following growth
//! - `filter`: selection by advertiser, type, status, issue, time
//! - `stats` and `verify` live here: they are short

mod cursor;
mod filter;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cursor::StreamCursor;
pub use filter::{parse_time, Filter};

use crate::segment::{self, ReadError, SegmentReader};

/// What to read and print.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// The segments directory (or a data directory holding `segments/`).
    pub dir: PathBuf,
    /// Keep following new records and segments.
    pub follow: bool,
    /// Print everything, not just the last records.
    pub from_beginning: bool,
    /// Print at most the last N matching records (default 10 unless
    /// `from_beginning` or `since`).
    pub last: Option<usize>,
    /// Which records.
    pub filter: Filter,
    /// Print counts instead of records.
    pub stats: bool,
    /// Check every CRC and print a summary per file instead of records.
    pub verify: bool,
    /// How often a follower looks for more.
    pub poll: Duration,
    /// Stop following after this long (tests); `None`: until killed.
    pub follow_for: Option<Duration>,
}

/// The segments directory for a path the operator gave.
pub fn segments_dir(dir: &Path) -> PathBuf {
    let nested = dir.join("segments");
    if nested.is_dir() {
        nested
    } else {
        dir.to_owned()
    }
}

/// Runs the tail. Returns whether everything read was intact (the exit
/// status: `false` means corruption was found and reported on `err`).
pub fn run(opts: &TailOptions, out: &mut impl Write, err: &mut impl Write) -> io::Result<bool> {
    let dir = segments_dir(&opts.dir);
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: no such segments directory", dir.display()),
        ));
    }
    if opts.verify {
        return verify(&dir, out);
    }
    let mut cursors = open_cursors(&dir)?;
    let mut intact = true;
    let mut stats = Stats::default();
    let limit = match (
        opts.last,
        opts.from_beginning || opts.filter.since_ms.is_some(),
    ) {
        (Some(n), _) => Some(n),
        (None, true) => None,
        (None, false) => Some(10),
    };
    // What exists now: merged by event time across streams.
    let mut kept: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    loop {
        let next = cursors
            .values_mut()
            .filter_map(|c| match c.peek_ts(&opts.filter) {
                Ok(ts) => ts.map(|ts| (ts, c.stream())),
                Err(e) => {
                    intact = false;
                    let _ = writeln!(err, "trackplane tail: {e}");
                    c.skip_segment();
                    None
                }
            })
            .min();
        let Some((_, stream)) = next else { break };
        let Some(cursor) = cursors.get_mut(&stream) else {
            break;
        };
        if let Some(rec) = cursor.take() {
            if opts.filter.matches(&rec) {
                if opts.stats {
                    stats.add(&rec);
                } else {
                    kept.push_back(rec);
                    if limit.is_some_and(|n| kept.len() > n) {
                        kept.pop_front();
                    } else if limit.is_none() {
                        for r in kept.drain(..) {
                            out.write_all(&r)?;
                            out.write_all(b"\n")?;
                        }
                    }
                }
            }
        }
    }
    for r in kept.drain(..) {
        out.write_all(&r)?;
        out.write_all(b"\n")?;
    }
    if opts.stats {
        stats.print(out)?;
        return Ok(intact);
    }
    out.flush()?;
    if !opts.follow {
        return Ok(intact);
    }
    // Follow: print records as they are written, stream by stream.
    let began = std::time::Instant::now();
    loop {
        let mut printed = false;
        for cursor in cursors.values_mut() {
            loop {
                match cursor.next_following() {
                    Ok(Some(rec)) => {
                        if opts.filter.matches(&rec) {
                            out.write_all(&rec)?;
                            out.write_all(b"\n")?;
                            printed = true;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        intact = false;
                        let _ = writeln!(err, "trackplane tail: {e}");
                        cursor.skip_segment();
                    }
                }
            }
        }
        if printed {
            out.flush()?;
        }
        // New streams appear when a server starts with more workers.
        for seg in segment::list(&dir)? {
            cursors
                .entry(seg.stream)
                .or_insert_with(|| StreamCursor::new(&dir, seg.stream));
        }
        if opts.follow_for.is_some_and(|d| began.elapsed() >= d) {
            return Ok(intact);
        }
        std::thread::sleep(opts.poll);
    }
}

fn open_cursors(dir: &Path) -> io::Result<BTreeMap<u32, StreamCursor>> {
    let mut cursors = BTreeMap::new();
    for seg in segment::list(dir)? {
        cursors
            .entry(seg.stream)
            .or_insert_with(|| StreamCursor::new(dir, seg.stream));
    }
    Ok(cursors)
}

/// Counts by event type, advertiser and issue code.
#[derive(Debug, Default)]
struct Stats {
    records: u64,
    invalid: u64,
    by_type: HashMap<String, u64>,
    by_advertiser: HashMap<String, u64>,
    by_issue: HashMap<String, u64>,
}

impl Stats {
    fn add(&mut self, rec: &[u8]) {
        let Ok(v) = serde_json::from_slice::<filter::View<'_>>(rec) else {
            return;
        };
        self.records += 1;
        if v.status == "invalid" {
            self.invalid += 1;
        }
        *self.by_type.entry(v.event_type.into_owned()).or_default() += 1;
        *self
            .by_advertiser
            .entry(v.advertiser.into_owned())
            .or_default() += 1;
        for issue in v.issues {
            *self.by_issue.entry(issue.code.into_owned()).or_default() += 1;
        }
    }

    fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let map = |m: &HashMap<String, u64>| {
            m.iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
                .collect::<serde_json::Map<_, _>>()
        };
        let doc = serde_json::json!({
            "records": self.records,
            "invalid": self.invalid,
            "by_type": map(&self.by_type),
            "by_advertiser": map(&self.by_advertiser),
            "by_issue": map(&self.by_issue),
        });
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        out.write_all(b"\n")
    }
}

/// Checks every block of every segment; one summary line per file.
fn verify(dir: &Path, out: &mut impl Write) -> io::Result<bool> {
    let (mut corrupt, mut unreadable) = (0u64, 0u64);
    let (mut files, mut blocks_total, mut records_total) = (0u64, 0u64, 0u64);
    for seg in segment::list(dir)? {
        files += 1;
        let (mut blocks, mut records) = (0u64, 0u64);
        let result = (|| -> Result<(), ReadError> {
            let mut r = SegmentReader::open(&seg.path)?;
            while let Some(b) = r.next_block()? {
                blocks += 1;
                records += u64::from(b.header.count);
            }
            Ok(())
        })();
        blocks_total += blocks;
        records_total += records;
        let state = if seg.open { " (open)" } else { "" };
        match result {
            Ok(()) => writeln!(
                out,
                "{}: ok{state}: {blocks} blocks, {records} records",
                seg.path.display()
            )?,
            // The line names the file once; the error names it too.
            Err(ReadError::Corrupt { offset, error, .. }) => {
                corrupt += 1;
                writeln!(
                    out,
                    "{}: CORRUPT{state} after {blocks} good blocks: offset {offset}: {error}",
                    seg.path.display()
                )?;
            }
            Err(ReadError::Io { source, .. }) => {
                unreadable += 1;
                writeln!(
                    out,
                    "{}: UNREADABLE{state} after {blocks} good blocks: {source}",
                    seg.path.display()
                )?;
            }
        }
    }
    let verdict = match (corrupt, unreadable) {
        (0, 0) => "all intact".to_owned(),
        (c, 0) => format!("CORRUPTION FOUND in {c}"),
        (0, u) => format!("{u} UNREADABLE"),
        (c, u) => format!("CORRUPTION FOUND in {c}, {u} UNREADABLE"),
    };
    writeln!(
        out,
        "{files} segments, {blocks_total} blocks, {records_total} records: {verdict}"
    )?;
    Ok(corrupt == 0 && unreadable == 0)
}
