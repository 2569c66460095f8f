//! A bell that wakes a sleeping background thread at once, so that the
//! threads which only wait for something to happen (the admin port's
//! acceptor, the catalog reloader) sleep until it does. They used to poll a
//! flag every 20 ms: a hundred wake-ups a second on an idle node, each a
//! context switch on a core the workers share. The store's and the view's
//! naps end at a stop the same way, so they can be long on a quiet node.
//!
//! A bell is a connected pair of Unix sockets: ringing writes a byte,
//! and the bell stays readable until it is cleared, so a ring between a
//! thread's check of its state and its wait is never lost. [`wait`] sleeps
//! in poll(2) on bells and any other descriptors (the admin's listener).
//!
//! # Invariants
//! - Ringing never blocks: a bell whose buffer is full is rung already.
//! - A bell nobody clears (the stop bell) stays rung for every waiter.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// One bell. Shared by reference (`Arc`) between the ringers and the
/// thread that waits on it.
#[derive(Debug)]
pub struct Bell {
    ear: UnixStream,
    clapper: UnixStream,
}

impl Bell {
    /// A new, silent bell.
    pub fn new() -> std::io::Result<Bell> {
        let (ear, clapper) = UnixStream::pair()?;
        ear.set_nonblocking(true)?;
        clapper.set_nonblocking(true)?;
        Ok(Bell { ear, clapper })
    }

    /// Rings the bell; from any thread, never blocks.
    pub fn ring(&self) {
        // WouldBlock: the buffer is full of earlier rings, so the bell is
        // rung already. Nothing else can fail on a connected pair whose
        // both ends this bell owns.
        let _ = (&self.clapper).write(&[1]);
    }

    /// Silences the bell, returning whether it had been rung.
    pub fn clear(&self) -> bool {
        let mut rung = false;
        let mut buf = [0u8; 64];
        while let Ok(1..) = (&self.ear).read(&mut buf) {
            rung = true;
        }
        rung
    }

    /// Sleeps for `timeout`, or until the bell rings if sooner (at once if
    /// it has been rung and not cleared). Returns whether it was rung.
    pub fn nap(&self, timeout: Duration) -> bool {
        match wait([self.fd()], Some(timeout)) {
            Ok([rung]) => rung,
            Err(_) => {
                std::thread::sleep(timeout);
                false
            }
        }
    }

    /// Whether the bell has been rung and not cleared since.
    pub fn is_rung(&self) -> bool {
        wait([self.fd()], Some(Duration::ZERO)).is_ok_and(|[rung]| rung)
    }

    /// The descriptor [`wait`] polls.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ear.as_fd()
    }
}

/// Sleeps until one of `fds` is readable or `timeout` has passed (`None`:
/// no timeout); returns which were readable. A signal ends the wait early
/// with none readable.
pub fn wait<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> std::io::Result<[bool; N]> {
    let mut polled = fds.each_ref().map(|fd| PollFd::new(fd, PollFlags::IN));
    let timeout = timeout.map(|t| Timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    match poll(&mut polled, timeout.as_ref()) {
        Ok(_) => Ok(polled.each_ref().map(|p| !p.revents().is_empty())),
        Err(rustix::io::Errno::INTR) => Ok([false; N]),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_ring_wakes_a_waiting_thread_and_stays_until_cleared() {
        let bell = Arc::new(Bell::new().unwrap());
        assert!(!bell.is_rung());
        let waiter = {
            let bell = bell.clone();
            std::thread::spawn(move || {
                let woke = wait([bell.fd()], Some(Duration::from_secs(30))).unwrap();
                (woke, Instant::now())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let rung_at = Instant::now();
        bell.ring();
        let (woke, at) = waiter.join().unwrap();
        assert_eq!(woke, [true]);
        assert!(at >= rung_at, "the waiter woke before the ring");
        assert!(bell.is_rung(), "waking does not clear the bell");
        assert!(bell.clear());
        assert!(!bell.is_rung());
        assert!(!bell.clear(), "a cleared bell was rung again");
    }

    #[test]
    fn a_nap_lasts_its_time_unless_the_bell_rings() {
        let bell = Bell::new().unwrap();
        let start = Instant::now();
        assert!(!bell.nap(Duration::from_millis(30)), "a silent bell rang");
        assert!(
            start.elapsed() >= Duration::from_millis(30),
            "a silent bell's nap ended early"
        );
        bell.ring();
        let start = Instant::now();
        assert!(
            bell.nap(Duration::from_secs(30)),
            "a rung bell's nap said silent"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a rung bell's nap went on"
        );
    }

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let bell = Bell::new().unwrap();
        bell.ring();
        assert_eq!(
            wait([bell.fd()], Some(Duration::from_secs(30))).unwrap(),
            [true]
        );
    }

    #[test]
    fn ringing_a_full_bell_neither_blocks_nor_fails() {
        let bell = Bell::new().unwrap();
        // Far more than a Unix socket's buffer holds.
        for _ in 0..20_000 {
            bell.ring();
        }
        assert!(bell.clear());
        assert!(!bell.is_rung());
    }

    #[test]
    fn a_silent_bell_times_out_and_says_which_descriptor_is_ready() {
        let (quiet, loud) = (Bell::new().unwrap(), Bell::new().unwrap());
        assert_eq!(
            wait([quiet.fd(), loud.fd()], Some(Duration::from_millis(20))).unwrap(),
            [false, false]
        );
        loud.ring();
        assert_eq!(
            wait([quiet.fd(), loud.fd()], Some(Duration::from_millis(20))).unwrap(),
            [false, true]
        );
    }
}
