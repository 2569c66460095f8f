//! The interim event log: one consumer thread drains every worker's ring and
//! appends the records as JSON lines to `<data_dir>/events/stream-<N>.jsonl`.
//! It stands in for the segment store until that lands, with the same
//! promise: what a worker answered reaches the file within
//! `flush_interval_ms`, and everything is flushed and fsynced on shutdown.
//!
//! # Invariants
//! - One file per stream, appended only; a line is one record.
//! - Sequence numbers continue across restarts: a stream starts after the
//!   last id found at the end of its file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ring::Consumer;

/// Counters the admin port reports.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Records written.
    pub records: AtomicU64,
    /// Bytes written, newlines included.
    pub bytes: AtomicU64,
    /// Write or flush errors.
    pub errors: AtomicU64,
}

/// The running consumer thread.
pub struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// Its counters.
    pub metrics: Arc<SinkMetrics>,
}

/// The directory the event log lives in.
pub fn events_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("events")
}

/// The file of one stream.
pub fn stream_path(data_dir: &Path, stream: usize) -> PathBuf {
    events_dir(data_dir).join(format!("stream-{stream}.jsonl"))
}

/// The next sequence number of a stream: one past the last id in its file.
pub fn next_seq(data_dir: &Path, stream: usize) -> io::Result<u64> {
    let path = stream_path(data_dir, stream);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let from = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    Ok(tail
        .split(|&b| b == b'\n')
        .rev()
        .find_map(last_seq_of_line)
        .map_or(0, |s| s + 1))
}

fn last_seq_of_line(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"id\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let id = std::str::from_utf8(&rest[..end]).ok()?;
    id.rsplit('-').next()?.parse().ok()
}

impl Sink {
    /// Starts draining `consumers` (consumer `i` is stream `i`).
    pub fn start(
        data_dir: &Path,
        consumers: Vec<Consumer>,
        flush_interval: Duration,
    ) -> io::Result<Sink> {
        std::fs::create_dir_all(events_dir(data_dir))?;
        let mut files = Vec::with_capacity(consumers.len());
        for i in 0..consumers.len() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(stream_path(data_dir, i))?;
            files.push(BufWriter::with_capacity(256 * 1024, f));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(SinkMetrics::default());
        let thread = {
            let stop = stop.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("trackplane-sink".into())
                .spawn(move || run(consumers, files, stop, metrics, flush_interval))?
        };
        Ok(Sink {
            stop,
            thread: Some(thread),
            metrics,
        })
    }

    /// Drains what is left, flushes, fsyncs and stops. Call after every
    /// producer has stopped.
    pub fn finish(mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("sink thread panicked")),
            None => Ok(()),
        }
    }
}

fn run(
    mut consumers: Vec<Consumer>,
    mut files: Vec<BufWriter<File>>,
    stop: Arc<AtomicBool>,
    metrics: Arc<SinkMetrics>,
    flush_interval: Duration,
) -> io::Result<()> {
    let mut last_flush = Instant::now();
    let mut dirty = false;
    let idle_sleep =
        (flush_interval / 4).clamp(Duration::from_millis(1), Duration::from_millis(10));
    loop {
        // Read the flag before draining so that a final drain follows it.
        let stopping = stop.load(Ordering::Acquire);
        let mut drained = 0;
        for (consumer, file) in consumers.iter_mut().zip(files.iter_mut()) {
            let mut result = Ok(());
            drained += consumer.drain(|record| {
                if result.is_ok() {
                    result = file.write_all(record).and_then(|()| file.write_all(b"\n"));
                }
                metrics.records.fetch_add(1, Ordering::Relaxed);
                metrics
                    .bytes
                    .fetch_add(record.len() as u64 + 1, Ordering::Relaxed);
            });
            if let Err(e) = result {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "event log write failed");
            }
        }
        dirty |= drained > 0;
        if stopping || dirty && last_flush.elapsed() >= flush_interval {
            for file in &mut files {
                if let Err(e) = file.flush() {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "event log flush failed");
                }
            }
            last_flush = Instant::now();
            dirty = false;
        }
        if stopping {
            for file in &files {
                file.get_ref().sync_data()?;
            }
            return Ok(());
        }
        if drained == 0 {
            // Idle: look again after a quarter of the flush interval. Each
            // wake-up costs the workers' core a context switch; the records
            // only have to be visible within the flush interval.
            std::thread::sleep(idle_sleep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_reach_the_file_and_sequences_resume() {
        let dir = std::env::temp_dir().join(format!("trackplane-sink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(next_seq(&dir, 0).unwrap(), 0);
        let (mut p, c) = crate::ring::ring(4096);
        let sink = Sink::start(&dir, vec![c], Duration::from_millis(5)).unwrap();
        p.push(br#"{"id":"n-1-0-0","x":1}"#).unwrap();
        p.push(br#"{"id":"n-1-0-41","x":2}"#).unwrap();
        sink.finish().unwrap();
        let text = std::fs::read_to_string(stream_path(&dir, 0)).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(next_seq(&dir, 0).unwrap(), 42);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
