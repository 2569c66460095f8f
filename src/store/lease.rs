//! Stream leases: which process writes which stream. During a zero-downtime
//! restart two servers share one data directory, so each takes its streams
//! under an exclusive lock file (`<data_dir>/leases/stream-NNNNN.lock`,
//! flock) and never touches a stream another live process holds.
//!
//! # Invariants
//! - A stream is written only by the process holding its lease.
//! - A lease ends with its process, however that ends (the kernel drops
//!   the lock), so a crash never strands a stream.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

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
        let path = self.dir.join(format!("stream-{stream:05}.lock"));
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
