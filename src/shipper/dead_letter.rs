//! The dead-letter file: where a record goes that Kafka will never accept
//! (too large, not authorized), so that it never stops its stream for long
//! and is never lost.
//!
//! # Invariants
//! - A record counts as handled only once the file holds it on disk
//!   (fdatasync); while the file cannot be written, the stream waits.
//! - Every line is one whole record: a line written in part is cut off
//!   again, and a line a crash tore is ended before the next.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rdkafka::error::KafkaError;

use super::{checkpoint, ShipperMetrics};
use crate::config::Config;

/// The dead-letter file: records Kafka will never accept, one JSON line
/// each (`{"stream":..,"seq":..,"error":..,"record":..}`), fsynced before
/// the record counts as handled. A line that could not be written whole is
/// cut off again, and a file whose last line was torn (a crash in the
/// middle of a write) gets a line break before the next, so every line
/// stays one record.
pub(super) struct DeadLetters {
    path: PathBuf,
    file: Option<File>,
}

impl DeadLetters {
    pub(super) fn new(config: &Config) -> DeadLetters {
        DeadLetters {
            path: checkpoint::dir(&config.data_dir).join("dead-letter.jsonl"),
            file: None,
        }
    }

    /// Writes one record with its error, durably, and counts it. On an
    /// error the record is not in the file: the caller holds its stream at
    /// the record and tries again later, so a full disk delays the stream
    /// instead of losing the record once retention deletes its segment.
    pub(super) fn write(
        &mut self,
        metrics: &ShipperMetrics,
        stream: u32,
        seq: u64,
        error: &KafkaError,
        record: &[u8],
    ) -> std::io::Result<()> {
        use crate::record::json::{write_str, write_u64};
        let mut line = b"{\"stream\":".to_vec();
        write_u64(&mut line, u64::from(stream));
        line.extend_from_slice(b",\"seq\":");
        write_u64(&mut line, seq);
        line.extend_from_slice(b",\"error\":");
        write_str(&mut line, error.to_string().as_bytes());
        line.extend_from_slice(b",\"record\":");
        // A record is JSON already; anything else is kept as a string.
        if serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok() {
            line.extend_from_slice(record);
        } else {
            write_str(&mut line, record);
        }
        line.extend_from_slice(b"}\n");
        match self.append(&line) {
            Ok(()) => {
                metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
                tracing::error!(stream, seq, %error, "message Kafka will never accept; written to the dead-letter file");
                Ok(())
            }
            Err(e) => {
                metrics.dead_letter_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(stream, seq, %error, path = %self.path.display(), io_error = %e,
                    "message Kafka will never accept, and the dead-letter file cannot take it; holding the stream there and trying again");
                Err(e)
            }
        }
    }

    /// Appends one whole line and syncs it, or leaves the file as it was
    /// (as far as cutting it back can) and closes it.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let f = match self.file.as_mut() {
            Some(f) => f,
            None => self.file.insert(open_for_lines(&self.path)?),
        };
        let len = f.metadata()?.len();
        let written = f.write_all(line).and_then(|()| f.sync_data());
        if written.is_err() {
            let _ = f.set_len(len);
            self.file = None;
        }
        written
    }
}

/// Opens a file of lines to append to, creating it (its name made
/// durable) or ending a last line that a crash tore, so that the next line
/// starts on its own.
fn open_for_lines(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::FileExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    crate::segment::writer::sync_dir(dir)?;
    let len = f.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        f.read_exact_at(&mut last, len - 1)?;
    }
    if last[0] != b'\n' {
        f.write_all(b"\n")?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;

    /// A dead-letter file (not created yet) under a new data directory,
    /// kept while the first lives; its path; an error to file records under.
    fn dead_letters() -> (tempfile::TempDir, DeadLetters, PathBuf, KafkaError) {
        let dir = tempfile::tempdir().unwrap();
        let config =
            Config::from_toml_str(&format!("data_dir = \"{}\"\n", dir.path().display()), "t")
                .unwrap();
        let path = dir.path().join("shipper/dead-letter.jsonl");
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        (dir, DeadLetters::new(&config), path, e)
    }

    #[test]
    fn poison_is_written_as_one_json_line_each_and_counted() {
        let (_dir, mut dl, path, e) = dead_letters();
        let metrics = ShipperMetrics::default();
        dl.write(&metrics, 2, 41, &e, br#"{"id":"n-2-41"}"#)
            .unwrap();
        dl.write(&metrics, 2, 42, &e, b"not json \"quoted\"")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0]["stream"].as_u64(), lines[0]["seq"].as_u64()),
            (Some(2), Some(41))
        );
        assert_eq!(lines[0]["record"]["id"], "n-2-41");
        assert!(
            lines[0]["error"].as_str().unwrap().contains("too large"),
            "{}",
            lines[0]["error"]
        );
        assert_eq!(lines[1]["record"], "not json \"quoted\"");
        assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 2);
    }

    /// A write the disk refuses (/dev/full: ENOSPC) is an error and not
    /// counted as written; the same record is written once it can be.
    #[test]
    fn a_refused_write_is_an_error_and_can_be_tried_again() {
        let (_dir, mut dl, path, e) = dead_letters();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let metrics = ShipperMetrics::default();
        assert!(dl.write(&metrics, 0, 7, &e, b"{}").is_err());
        assert!(dl.write(&metrics, 0, 7, &e, b"{}").is_err());
        assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.dead_letter_errors.load(Ordering::Relaxed), 2);
        std::fs::remove_file(&path).unwrap();
        dl.write(&metrics, 0, 7, &e, b"{}").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(metrics.dead_letters.load(Ordering::Relaxed), 1);
    }

    /// A line torn by a crash in the middle of its write is ended before
    /// the next one, so that one parses.
    #[test]
    fn a_torn_last_line_is_ended_first() {
        let (_dir, mut dl, path, e) = dead_letters();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{\"stream\":0,\"seq\":6,\"err").unwrap();
        let metrics = ShipperMetrics::default();
        dl.write(&metrics, 0, 7, &e, br#"{"id":"n-0-7"}"#).unwrap();
        dl.write(&metrics, 0, 8, &e, br#"{"id":"n-0-8"}"#).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (line, id) in lines[1..].iter().zip(["n-0-7", "n-0-8"]) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["record"]["id"], id);
        }
    }
}
