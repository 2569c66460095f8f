//! Multishot receive (Linux 6.0): one receive request per connection for
//! as long as it lives, instead of one per read. Each completion carries a
//! buffer the kernel took from a ring-mapped buffer ring (Linux 5.19); the
//! driver copies the bytes out at once, into the connection's own vector,
//! and gives the buffer back by moving the ring's tail, which is a store,
//! not a request. A keep-alive connection then costs the kernel no poll
//! arming per request, and the ring no request but the answer's.
//!
//! Measured against one receive per read with poll armed first, both
//! answering by send(2): about 10% less CPU per request for a bare
//! responder (trackplane's bench/results/floors-together-20261201-0130.md).
//!
//! Off unless a thread asks for it (`set_multishot_recv`) before its
//! streams are made: only a caller that knows the kernel is 6.0 or newer
//! may, since older ones take the request as a single receive.

use std::{
    cell::{Cell, UnsafeCell},
    io,
    os::unix::io::RawFd,
    ptr::NonNull,
    rc::Rc,
    sync::atomic::{AtomicU16, Ordering},
    task::{Context, Poll, Waker},
};

use io_uring::{cqueue, opcode, types};

use super::UringInner;
use crate::{driver::Inner, utils::slab::Slab};

/// Marks a completion as a multishot receive's; the low bits are its
/// stream's key. Far above the operation slab's keys and below the
/// reserved user data at the top.
pub(crate) const MULTI_TAG: u64 = 1 << 48;
const KEY_MASK: u64 = MULTI_TAG - 1;

/// Buffers of the ring, and their size: a tracking call's request fits one;
/// larger reads take several completions.
const BUFS: u16 = 256;
const BUF_SIZE: usize = 1024;
/// The buffer group this driver's ring is registered as.
const GROUP: u16 = 0x4d52;
/// Bytes received and not yet taken at which a stream's receive is
/// cancelled, so that a client whose answers are not being read cannot
/// make its connection hold much more: what the kernel received in the
/// same pass still comes (it loops up to 32 times per wake-up, 32 KiB of
/// these buffers), then the socket's own buffer holds the rest and TCP's
/// window stops the client. Taking the bytes arms the receive again.
const PAUSE_AT: usize = 8 * 1024;

thread_local! {
    static MULTISHOT: Cell<bool> = const { Cell::new(false) };
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Lets the io_uring runtimes this thread builds from now on make
/// multishot receives (`MultiRecv::new`). Off by default; see the module
/// doc for the kernel.
pub fn set_multishot_recv(on: bool) {
    MULTISHOT.with(|c| c.set(on));
}

/// Whether the io_uring runtime this thread built last makes multishot
/// receives: asked for, and its buffer ring registered.
pub fn multishot_recv_active() -> bool {
    ACTIVE.with(Cell::get)
}

/// The multishot state of one ring: its buffer ring and its streams.
pub(crate) struct Multi {
    ring: BufRing,
    streams: Slab<Stream>,
    /// Streams past `PAUSE_AT` whose cancel is still to be pushed (the
    /// completion queue is borrowed while they are found).
    to_cancel: Vec<u64>,
}

struct Stream {
    fd: RawFd,
    /// Bytes received and not yet taken.
    data: Vec<u8>,
    waker: Option<Waker>,
    /// A receive request is in the kernel.
    armed: bool,
    /// Its cancel is pushed (paused at `PAUSE_AT`, or dropped).
    cancelling: bool,
    /// How the stream ended: 0 for end of file, else an errno.
    end: Option<i32>,
    /// Its `MultiRecv` is gone: the entry waits only for the request's
    /// last completion.
    orphan: bool,
}

/// A ring-mapped buffer ring: entries the kernel takes buffers from, and
/// a tail this thread moves as it gives them back.
struct BufRing {
    entries: NonNull<types::BufRingEntry>,
    bufs: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    const LAYOUT: std::alloc::Layout = match std::alloc::Layout::from_size_align(
        BUFS as usize * std::mem::size_of::<types::BufRingEntry>(),
        4096,
    ) {
        Ok(l) => l,
        Err(_) => panic!("buffer ring layout"),
    };

    fn register(uring: &io_uring::IoUring) -> io::Result<BufRing> {
        // SAFETY: a nonzero size.
        let raw = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        let entries = NonNull::new(raw.cast::<types::BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // Owned from here: dropped on an error below, it frees the entries,
        // which the kernel then never had.
        let mut ring = BufRing {
            entries,
            bufs: vec![0u8; usize::from(BUFS) * BUF_SIZE].into_boxed_slice(),
            tail: 0,
        };
        // SAFETY: page-aligned memory for `BUFS` entries, which `ring` frees
        // only after the driver unregisters it (`Multi::unregister`).
        unsafe { uring.submitter().register_buf_ring(raw as u64, BUFS, GROUP) }?;
        for bid in 0..BUFS {
            ring.give(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Puts buffer `bid` at the tail (seen by the kernel at `publish`).
    fn give(&mut self, bid: u16) {
        let addr = self.bufs[usize::from(bid) * BUF_SIZE..].as_ptr() as u64;
        // SAFETY: the index is masked to the ring's `BUFS` entries.
        let e = unsafe {
            &mut *self
                .entries
                .as_ptr()
                .add(usize::from(self.tail & (BUFS - 1)))
        };
        e.set_addr(addr);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the ring's tail, in its first entry, shared with the
        // kernel, which reads it with acquire ordering.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn bytes(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * BUF_SIZE;
        &self.bufs[start..start + len.min(BUF_SIZE)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `register` with this layout.
        unsafe { std::alloc::dealloc(self.entries.as_ptr().cast(), Self::LAYOUT) };
    }
}

impl Multi {
    /// The multishot state of a ring being built on this thread: `None`
    /// when the thread did not ask for it, or the kernel refused a buffer
    /// ring. `multishot_recv_active` tells which.
    pub(crate) fn for_new_ring(uring: &io_uring::IoUring) -> Option<Multi> {
        let multi = MULTISHOT
            .with(Cell::get)
            .then(|| BufRing::register(uring).ok())
            .flatten()
            .map(|ring| Multi {
                ring,
                streams: Slab::new(),
                to_cancel: Vec::new(),
            });
        ACTIVE.with(|a| a.set(multi.is_some()));
        multi
    }

    /// Takes the buffer ring back from the kernel. Called before the ring
    /// closes, so that no receive can write into the buffers once they are
    /// freed.
    pub(crate) fn unregister(&self, uring: &io_uring::IoUring) {
        let _ = uring.submitter().unregister_buf_ring(GROUP);
    }

    /// One completion of stream `user_data`'s request.
    pub(crate) fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let key = (user_data & KEY_MASK) as usize;
        let bid = cqueue::buffer_select(flags);
        let Some(mut s) = self.streams.get(key) else {
            if let Some(bid) = bid {
                self.ring.give(bid);
            }
            return;
        };
        if let Some(bid) = bid {
            if res > 0 && !s.orphan {
                s.data.extend_from_slice(self.ring.bytes(bid, res as usize));
            }
            self.ring.give(bid);
        }
        if !cqueue::more(flags) {
            s.armed = false;
            s.cancelling = false;
            if s.orphan {
                s.remove();
                return;
            }
            // Out of buffers, or paused: the owner arms it again.
            if res == 0 {
                s.end = Some(0);
            } else if res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED {
                s.end = Some(-res);
            }
        } else if s.data.len() >= PAUSE_AT && !s.cancelling {
            s.cancelling = true;
            self.to_cancel.push(user_data);
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// After a pass over the completion queue: buffers back to the kernel,
    /// and cancels for streams that hold too much.
    pub(crate) fn after_tick(inner: &mut UringInner) {
        let Some(multi) = inner.multi.as_mut() else {
            return;
        };
        multi.ring.publish();
        while let Some(user_data) = inner.multi.as_mut().and_then(|m| m.to_cancel.pop()) {
            push(inner, &cancel(user_data));
        }
    }
}

/// A request to cancel stream `user_data`'s receive (its completion is
/// ignored; the receive's own last completion says it ended).
fn cancel(user_data: u64) -> io_uring::squeue::Entry {
    opcode::AsyncCancel::new(user_data)
        .build()
        .user_data(super::CANCEL_USERDATA)
}

/// Pushes an entry, submitting first if the queue is full.
fn push(inner: &mut UringInner, e: &io_uring::squeue::Entry) {
    // SAFETY: the entries pushed here point at nothing of ours (a receive
    // into the buffer ring, or a cancel).
    unsafe {
        if inner.uring.submission().push(e).is_err() {
            let _ = inner.submit();
            let _ = inner.uring.submission().push(e);
        }
    }
}

/// A connection's multishot receive. Its socket must outlive it; dropping
/// it cancels the request.
pub struct MultiRecv {
    driver: Rc<UnsafeCell<UringInner>>,
    key: usize,
}

impl MultiRecv {
    /// A multishot receive on `fd`, or `None` when the current runtime is
    /// not io_uring, or the thread did not ask for multishot receives
    /// (`set_multishot_recv`), or the kernel refused a buffer ring. No
    /// request is made until the first `recv`.
    pub fn new(fd: RawFd) -> Option<MultiRecv> {
        if !crate::driver::CURRENT.is_set() {
            return None;
        }
        crate::driver::CURRENT.with(|inner| match inner {
            Inner::Uring(driver) => {
                // SAFETY: the driver is this thread's, and not borrowed here.
                let multi = unsafe { &mut *driver.get() }.multi.as_mut()?;
                let key = multi.streams.insert(Stream {
                    fd,
                    data: Vec::with_capacity(BUF_SIZE),
                    waker: None,
                    armed: false,
                    cancelling: false,
                    end: None,
                    orphan: false,
                });
                Some(MultiRecv {
                    driver: driver.clone(),
                    key,
                })
            }
            #[allow(unreachable_patterns)]
            _ => None,
        })
    }

    /// Bytes received and not yet taken by `recv`.
    pub fn pending(&self) -> usize {
        // SAFETY: as in `poll_recv`.
        let inner = unsafe { &mut *self.driver.get() };
        inner
            .multi
            .as_mut()
            .and_then(|m| m.streams.get(self.key).map(|s| s.data.len()))
            .unwrap_or(0)
    }

    /// Waits for bytes and appends them to `buf` (when `buf` is empty, the
    /// two vectors trade places instead: no copy). `Ok(0)` at end of file.
    pub async fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_recv(cx, buf)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        // SAFETY: the driver is this thread's, and not borrowed while a
        // task is polled.
        let inner = unsafe { &mut *self.driver.get() };
        let Some(multi) = inner.multi.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::Unsupported.into()));
        };
        let Some(mut s) = multi.streams.get(self.key) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let n = s.data.len();
        let result = if n > 0 {
            if buf.is_empty() {
                std::mem::swap(buf, &mut s.data);
            } else {
                buf.extend_from_slice(&s.data);
                s.data.clear();
            }
            Poll::Ready(Ok(n))
        } else {
            match s.end {
                Some(0) => return Poll::Ready(Ok(0)),
                Some(errno) => return Poll::Ready(Err(io::Error::from_raw_os_error(errno))),
                None => {
                    match &s.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => s.waker = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
            }
        };
        if !s.armed && s.end.is_none() {
            s.armed = true;
            let e = opcode::RecvMulti::new(types::Fd(s.fd), GROUP)
                .build()
                .user_data(MULTI_TAG | self.key as u64);
            drop(s);
            push(inner, &e);
        }
        result
    }
}

impl Drop for MultiRecv {
    fn drop(&mut self) {
        // SAFETY: as in `poll_recv`.
        let inner = unsafe { &mut *self.driver.get() };
        let Some(multi) = inner.multi.as_mut() else {
            return;
        };
        let Some(mut s) = multi.streams.get(self.key) else {
            return;
        };
        if !s.armed {
            s.remove();
            return;
        }
        s.orphan = true;
        s.waker = None;
        s.data = Vec::new();
        if !s.cancelling {
            s.cancelling = true;
            drop(s);
            push(inner, &cancel(MULTI_TAG | self.key as u64));
        }
    }
}
