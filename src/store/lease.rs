//! Stream leases: which process writes which stream. During a zero-downtime
//! restart two servers share one data directory, so each takes its streams
//! under an exclusive lock file (`<data_dir>/leases/stream-NNNNN.lock`,
//! flock) and never touches a stream another live process holds.
//!
//!
//! A lease file also says how far its holder has written: its store sets
//! the file's modification time to the receive time before which every
//! record of the stream it accepted is in a segment ([`mark`]). The
//! shipper's watermark for a stream it has caught up with must not pass
//! that time while the lease is held ([`written_through`]): a record held
//! in memory while segment writes fail is written later with the time it
//! was received.
//!
//! # Invariants
//! - A stream is written only by the process holding its lease.
//! - A lease ends with its process, however that ends (the kernel drops
//!   the lock), so a crash never strands a stream.
//! - A held lease's modification time never passes a record of its stream
//!   that is not yet in a segment (the flush window aside: a record may
//!   be received before and pushed after its store's pass began).

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The lease file of `stream` under `data_dir`.
pub fn path(data_dir: &Path, stream: u32) -> PathBuf {
    data_dir.join("leases").join(file_name(stream))
}

fn file_name(stream: u32) -> String {
    format!("stream-{stream:05}.lock")
}

/// Marks every record of the lease's stream received before `through_ms`
/// (Unix ms) as written. Changes only the inode, so it works on a full
/// file system.
pub fn mark(lease: &File, through_ms: u64) -> io::Result<()> {
    let t = UNIX_EPOCH + Duration::from_millis(through_ms);
    lease.set_times(std::fs::FileTimes::new().set_modified(t))
}

/// How far the live holder of `stream`'s lease has written, in Unix ms
/// ([`mark`]); `None` when no live process holds the lease (nothing can
/// then be held in memory for the stream) or it cannot be read.
pub fn written_through(data_dir: &Path, stream: u32, locks: &HeldLocks) -> Option<u64> {
    let meta = std::fs::metadata(path(data_dir, stream)).ok()?;
    if !locks.holds(&meta) {
        return None;
    }
    let modified = meta.modified().ok()?;
    let ms = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_millis();
    Some(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The files some process holds an flock on, read from `/proc/locks`
/// without taking a lock: a probe by locking would make a server that
/// starts meanwhile pass the stream over.
#[derive(Debug, Default)]
pub struct HeldLocks {
    /// Device major, minor and inode of each.
    files: HashSet<(u32, u32, u64)>,
}

impl HeldLocks {
    /// The flocks held now; none when `/proc/locks` cannot be read.
    pub fn read() -> HeldLocks {
        HeldLocks::try_read().unwrap_or_default()
    }

    /// The flocks held now, or why `/proc/locks` cannot be read (hidden
    /// by a unit's `ProcSubset=pid`, for one).
    pub fn try_read() -> io::Result<HeldLocks> {
        std::fs::read_to_string("/proc/locks").map(|text| HeldLocks::parse(&text))
    }

    /// Parses `/proc/locks`: `1: FLOCK  ADVISORY  WRITE 4242 fe:00:1234 0
    /// EOF` is held; a line with `->` is a waiter.
    fn parse(text: &str) -> HeldLocks {
        let mut files = HashSet::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&"FLOCK") {
                continue;
            }
            let Some(id) = fields.get(5) else {
                continue;
            };
            let mut parts = id.split(':');
            let (Some(major), Some(minor), Some(inode), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let (Ok(major), Ok(minor), Ok(inode)) = (
                u32::from_str_radix(major, 16),
                u32::from_str_radix(minor, 16),
                inode.parse::<u64>(),
            ) {
                files.insert((major, minor, inode));
            }
        }
        HeldLocks { files }
    }

    /// Whether the file of `meta` is held.
    pub fn holds(&self, meta: &std::fs::Metadata) -> bool {
        let dev = meta.dev();
        // The kernel's encoding of a device number (glibc's major/minor).
        let major = (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0fff)) as u32;
        let minor = (((dev >> 12) & 0xffff_ff00) | (dev & 0x00ff)) as u32;
        self.files.contains(&(major, minor, meta.ino()))
    }
}

/// Streams a server may hold at once and the ids it searches: far above
/// any core count, small enough to scan.
const MAX_STREAM_ID: u32 = 4096;

/// The streams this process holds.
#[derive(Debug)]
pub struct StreamLeases {
    dir: PathBuf,
    held: BTreeMap<u32, File>,
}

impl StreamLeases {
    /// Takes the `count` lowest stream ids no live process holds.
    pub fn acquire(data_dir: &Path, count: usize) -> io::Result<StreamLeases> {
        let dir = data_dir.join("leases");
        std::fs::create_dir_all(&dir)?;
        let mut leases = StreamLeases {
            dir,
            held: BTreeMap::new(),
        };
        let mut id = 0;
        while leases.held.len() < count {
            if id >= MAX_STREAM_ID {
                return Err(io::Error::other(format!(
                    "every stream id below {MAX_STREAM_ID} is held by another process"
                )));
            }
            if let Some(file) = leases.try_lock(id)? {
                leases.held.insert(id, file);
            }
            id += 1;
        }
        Ok(leases)
    }

    /// The held stream ids, lowest first.
    pub fn ids(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    /// Whether this process may touch `stream`: it holds it, or no live
    /// process does (its lock is taken into `visited` for the caller to
    /// keep while it works on the stream).
    pub fn may_touch(&self, stream: u32, visited: &mut Vec<File>) -> io::Result<bool> {
        if self.held.contains_key(&stream) {
            return Ok(true);
        }
        Ok(match self.try_lock(stream)? {
            Some(file) => {
                visited.push(file);
                true
            }
            None => false,
        })
    }

    fn try_lock(&self, stream: u32) -> io::Result<Option<File>> {
        let path = self.dir.join(file_name(stream));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_name_held_flocks_and_not_waiters() {
        let locks = HeldLocks::parse(
            "1: FLOCK  ADVISORY  WRITE 4242 fe:00:10010782 0 EOF\n\
             1: -> FLOCK  ADVISORY  WRITE 4343 fe:00:777 0 EOF\n\
             2: POSIX  ADVISORY  WRITE 4444 08:01:555 0 EOF\n\
             3: FLOCK  ADVISORY  WRITE 4545 103:0a:99 0 EOF\n\
             4: FLOCK  ADVISORY  WRITE 4646 garbage 0 EOF\n\
             5: FLOCK\n",
        );
        assert_eq!(
            locks.files,
            HashSet::from([(0xfe, 0, 10010782), (0x103, 0x0a, 99)])
        );
    }

    /// A live holder's mark is read back; once no process holds the lease,
    /// nothing is (nothing can be held in memory for the stream then).
    #[test]
    fn written_through_is_read_only_while_the_lease_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let leases = StreamLeases::acquire(dir.path(), 1).unwrap();
        let held = &leases.held[&0];
        mark(held, 1_700_000_123_456).unwrap();
        assert_eq!(
            written_through(dir.path(), 0, &HeldLocks::read()),
            Some(1_700_000_123_456)
        );
        assert_eq!(written_through(dir.path(), 1, &HeldLocks::read()), None);
        drop(leases);
        assert_eq!(written_through(dir.path(), 0, &HeldLocks::read()), None);
    }

    #[test]
    fn two_holders_get_distinct_streams_and_a_released_one_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = StreamLeases::acquire(dir.path(), 2).unwrap();
        let second = StreamLeases::acquire(dir.path(), 3).unwrap();
        assert_eq!(first.ids(), vec![0, 1]);
        assert_eq!(second.ids(), vec![2, 3, 4]);
        let mut visited = Vec::new();
        assert!(!second.may_touch(0, &mut visited).unwrap());
        assert!(second.may_touch(3, &mut visited).unwrap());
        assert!(second.may_touch(9, &mut visited).unwrap());
        assert_eq!(visited.len(), 1, "a free stream is locked while visited");
        assert!(StreamLeases::acquire(dir.path(), 6)
            .unwrap()
            .ids()
            .contains(&5));
        drop(visited);
        drop(first);
        let third = StreamLeases::acquire(dir.path(), 2).unwrap();
        assert_eq!(third.ids(), vec![0, 1]);
    }
}
