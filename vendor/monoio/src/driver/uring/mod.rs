//! Monoio Uring Driver.

use std::{
    cell::UnsafeCell,
    io,
    mem::ManuallyDrop,
    os::unix::prelude::{AsRawFd, RawFd},
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use io_uring::{cqueue, opcode, types::Timespec, IoUring};
use lifecycle::Lifecycle;

use super::{
    op::{CompletionMeta, Op, OpAble},
    // ready::Ready,
    // scheduled_io::ScheduledIo,
    util::timespec,
    Driver,
    Inner,
    CURRENT,
};
use crate::utils::slab::Slab;

mod lifecycle;
mod multi_recv;
pub use multi_recv::{multishot_recv_active, set_multishot_recv, MultiRecv};
#[cfg(feature = "sync")]
mod waker;
#[cfg(feature = "sync")]
pub(crate) use waker::UnparkHandle;

#[allow(unused)]
pub(crate) const CANCEL_USERDATA: u64 = u64::MAX;
pub(crate) const TIMEOUT_USERDATA: u64 = u64::MAX - 1;
#[allow(unused)]
pub(crate) const EVENTFD_USERDATA: u64 = u64::MAX - 2;
#[cfg(feature = "poll-io")]
pub(crate) const POLLER_USERDATA: u64 = u64::MAX - 3;

pub(crate) const MIN_REVERSED_USERDATA: u64 = u64::MAX - 3;

/// Batched wake-ups for a parked thread: it sleeps until `events`
/// completions are ready, or until `min_wait` has passed and at least one is
/// (the `min_wait_usec` of `io_uring_getevents_arg`, Linux 6.12). Off by
/// default (`events` 0 or 1, or a zero `min_wait`).
///
/// A thread woken once per completion pays a context switch and a pass of
/// its loop for each; one woken for a batch pays them once. The price is
/// latency: a completion may wait up to `min_wait` for company. With
/// `DEFER_TASKRUN` the kernel does not even wake the thread to run
/// completion work until the batch is there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitBatch {
    /// Completions that end a wait at once.
    pub events: u32,
    /// How long a wait may hold a completion back for more to join it.
    pub min_wait: Duration,
}

impl WaitBatch {
    /// Whether this asks for batching at all (more than one event, and a
    /// minimum wait of at least a microsecond).
    pub fn is_on(&self) -> bool {
        self.events > 1 && self.min_wait_usec() > 0
    }

    fn min_wait_usec(&self) -> u32 {
        u32::try_from(self.min_wait.as_micros()).unwrap_or(u32::MAX)
    }
}

thread_local! {
    static RECV_POLL_FIRST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static WAIT_BATCH_ACTIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether this thread's ring, when built with a [`WaitBatch`], batches
/// its waits now (on by default). Off, each wait ends at the first
/// completion, as on a ring built without one; the ring stays as it was
/// built, so batching can come back at any wait. For a caller that
/// batches only while its thread is busy, where a wake-up per request
/// costs the CPU that batching saves, and a quiet thread answers at once.
pub fn set_wait_batch_active(on: bool) {
    WAIT_BATCH_ACTIVE.with(|c| c.set(on));
}

fn wait_batch_active() -> bool {
    WAIT_BATCH_ACTIVE.with(|c| c.get())
}

/// Makes this thread's socket receives arm poll first instead of trying
/// the socket at once (`IORING_RECVSEND_POLL_FIRST`, Linux 5.19): for a
/// server whose receives are mostly asked for while the socket is empty
/// (a keep-alive client sends its next request after the answer), the
/// first try is a wasted `recvmsg` each time. Off by default; kernels
/// before 5.19 refuse the flag (`EINVAL`), so only a caller that knows
/// the kernel is newer may turn it on.
pub fn set_recv_poll_first(on: bool) {
    RECV_POLL_FIRST.with(|c| c.set(on));
}

pub(crate) fn recv_poll_first() -> bool {
    RECV_POLL_FIRST.with(|c| c.get())
}

/// `struct io_uring_getevents_arg` as of Linux 6.12 (`min_wait_usec` was
/// `pad` before; io-uring 0.6 does not expose it).
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;
/// The general timeout of a batched wait with no timer due: the kernel
/// needs one, or it would end every wait at `min_wait`, idle or not.
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// How much later than the timer due a standing timeout may end and still
/// serve: the timer wheel counts whole milliseconds, so the same timer's
/// deadline, worked out again at each park, moves within one.
const STANDING_SLACK: Duration = Duration::from_millis(1);

/// Driver with uring.
pub struct IoUringDriver {
    inner: Rc<UnsafeCell<UringInner>>,

    // Used as timeout buffer
    timespec: *mut Timespec,

    // Used as read eventfd buffer
    #[cfg(feature = "sync")]
    eventfd_read_dst: *mut u8,

    // Used for drop
    #[cfg(feature = "sync")]
    thread_id: usize,
}

pub(crate) struct UringInner {
    /// In-flight operations
    ops: Ops,

    #[cfg(feature = "poll-io")]
    poll: super::poll::Poll,
    #[cfg(feature = "poll-io")]
    poller_installed: bool,

    /// IoUring bindings
    uring: ManuallyDrop<IoUring>,

    /// Shared waker
    #[cfg(feature = "sync")]
    shared_waker: std::sync::Arc<waker::EventWaker>,

    // Mark if eventfd is in the ring
    #[cfg(feature = "sync")]
    eventfd_installed: bool,

    // Waker receiver
    #[cfg(feature = "sync")]
    waker_receiver: flume::Receiver<std::task::Waker>,

    // Uring support ext_arg
    ext_arg: bool,

    // Batched wake-ups (off unless set and supported)
    wait: WaitBatch,

    // Multishot receives and their buffer ring (when asked for and supported)
    multi: Option<multi_recv::Multi>,

    // When the timeout last pushed into the ring ends
    armed: Option<std::time::Instant>,
}

// When dropping the driver, all in-flight operations must have completed. This
// type wraps the slab and ensures that, on drop, the slab is empty.
struct Ops {
    slab: Slab<Lifecycle>,
}

impl IoUringDriver {
    const DEFAULT_ENTRIES: u32 = 1024;

    pub(crate) fn new(b: &io_uring::Builder) -> io::Result<IoUringDriver> {
        Self::new_with_entries(b, Self::DEFAULT_ENTRIES)
    }

    #[cfg(not(feature = "sync"))]
    pub(crate) fn new_with_entries(
        urb: &io_uring::Builder,
        entries: u32,
    ) -> io::Result<IoUringDriver> {
        let uring = ManuallyDrop::new(urb.build(entries)?);

        let inner = Rc::new(UnsafeCell::new(UringInner {
            #[cfg(feature = "poll-io")]
            poll: super::poll::Poll::with_capacity(entries as usize)?,
            #[cfg(feature = "poll-io")]
            poller_installed: false,
            ops: Ops::new(),
            ext_arg: uring.params().is_feature_ext_arg(),
            wait: WaitBatch::default(),
            multi: multi_recv::Multi::for_new_ring(&uring),
            armed: None,
            uring,
        }));

        Ok(IoUringDriver {
            inner,
            timespec: Box::leak(Box::new(Timespec::new())) as *mut Timespec,
        })
    }

    #[cfg(feature = "sync")]
    pub(crate) fn new_with_entries(
        urb: &io_uring::Builder,
        entries: u32,
    ) -> io::Result<IoUringDriver> {
        let uring = ManuallyDrop::new(urb.build(entries)?);

        // Create eventfd and register it to the ring.
        let waker = {
            let fd = crate::syscall!(eventfd(0, libc::EFD_CLOEXEC))?;
            unsafe {
                use std::os::unix::io::FromRawFd;
                std::fs::File::from_raw_fd(fd)
            }
        };

        let (waker_sender, waker_receiver) = flume::unbounded::<std::task::Waker>();

        let inner = Rc::new(UnsafeCell::new(UringInner {
            #[cfg(feature = "poll-io")]
            poller_installed: false,
            #[cfg(feature = "poll-io")]
            poll: super::poll::Poll::with_capacity(entries as usize)?,
            ops: Ops::new(),
            ext_arg: uring.params().is_feature_ext_arg(),
            wait: WaitBatch::default(),
            multi: multi_recv::Multi::for_new_ring(&uring),
            armed: None,
            uring,
            shared_waker: std::sync::Arc::new(waker::EventWaker::new(waker)),
            eventfd_installed: false,
            waker_receiver,
        }));

        let thread_id = crate::builder::BUILD_THREAD_ID.with(|id| *id);
        let driver = IoUringDriver {
            inner,
            timespec: Box::leak(Box::new(Timespec::new())) as *mut Timespec,
            eventfd_read_dst: Box::leak(Box::new([0_u8; 8])) as *mut u8,
            thread_id,
        };

        // Register unpark handle
        super::thread::register_unpark_handle(thread_id, driver.unpark().into());
        super::thread::register_waker_sender(thread_id, waker_sender);
        Ok(driver)
    }

    #[allow(unused)]
    fn num_operations(&self) -> usize {
        let inner = self.inner.get();
        unsafe { (*inner).ops.slab.len() }
    }

    // Flush to make enough space
    fn flush_space(inner: &mut UringInner, need: usize) -> io::Result<()> {
        let sq = inner.uring.submission();
        debug_assert!(sq.capacity() >= need);
        if sq.len() + need > sq.capacity() {
            drop(sq);
            inner.submit()?;
        }
        Ok(())
    }

    #[cfg(feature = "sync")]
    fn install_eventfd(&self, inner: &mut UringInner, fd: RawFd) {
        let entry = opcode::Read::new(io_uring::types::Fd(fd), self.eventfd_read_dst, 8)
            .build()
            .user_data(EVENTFD_USERDATA);

        let mut sq = inner.uring.submission();
        let _ = unsafe { sq.push(&entry) };
        inner.eventfd_installed = true;
    }

    #[cfg(feature = "poll-io")]
    fn install_poller(&self, inner: &mut UringInner, fd: RawFd) {
        let entry = opcode::PollAdd::new(io_uring::types::Fd(fd), libc::POLLIN as _)
            .build()
            .user_data(POLLER_USERDATA);

        let mut sq = inner.uring.submission();
        let _ = unsafe { sq.push(&entry) };
        inner.poller_installed = true;
    }

    /// Turns batched wake-ups on (or off with a default `WaitBatch`). Fails
    /// with `Unsupported` when the kernel lacks `min_wait_usec`: it refuses
    /// a nonzero `pad` with `EINVAL`, which one non-waiting enter shows.
    pub(crate) fn set_wait_batch(&self, wait: WaitBatch) -> io::Result<()> {
        let inner = unsafe { &mut *self.inner.get() };
        if wait.is_on() {
            if !inner.ext_arg {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "io_uring without EXT_ARG",
                ));
            }
            if let Err(e) = inner.enter_with_args(0, 1, &timespec(Duration::ZERO)) {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "io_uring without min_wait_usec (Linux 6.12)",
                    ));
                }
                if !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) {
                    return Err(e);
                }
            }
        }
        inner.wait = wait;
        Ok(())
    }

    fn install_timeout(&self, inner: &mut UringInner, duration: Duration) {
        let timespec = timespec(duration);
        unsafe {
            std::ptr::replace(self.timespec, timespec);
        }
        let entry = opcode::Timeout::new(self.timespec as *const Timespec)
            .build()
            .user_data(TIMEOUT_USERDATA);

        let mut sq = inner.uring.submission();
        let _ = unsafe { sq.push(&entry) };
    }

    fn inner_park(&self, timeout: Option<Duration>) -> io::Result<()> {
        let inner = unsafe { &mut *self.inner.get() };

        #[allow(unused_mut)]
        let mut need_wait = true;

        #[cfg(feature = "sync")]
        {
            // Process foreign wakers
            while let Ok(w) = inner.waker_receiver.try_recv() {
                w.wake();
                need_wait = false;
            }

            // Set status as not awake if we are going to sleep
            if need_wait {
                inner
                    .shared_waker
                    .awake
                    .store(false, std::sync::atomic::Ordering::Release);
            }

            // Process foreign wakers left
            while let Ok(w) = inner.waker_receiver.try_recv() {
                w.wake();
                need_wait = false;
            }
        }

        // Idle work first (`driver::idle`). Work left and no completion
        // work pending: do not sleep, so that timers are looked at and
        // the work goes on at the next park. What the tasks queued goes to
        // the kernel before it: a receive left in the queue (a new
        // connection's first) could complete only after the work, however
        // soon its bytes came, where submitted it raises the task-run
        // flag that ends the work.
        if need_wait && !inner.uring.submission().is_empty() && super::idle::is_set() {
            inner.submit()?;
        }
        if need_wait
            && super::idle::run(|| inner.io_waiting())
            && !inner.io_waiting()
        {
            need_wait = false;
        }

        if need_wait {
            // Install timeout and eventfd for unpark if sync is enabled

            // 1. alloc spaces
            let mut space = 0;
            #[cfg(feature = "sync")]
            if !inner.eventfd_installed {
                space += 1;
            }
            #[cfg(feature = "poll-io")]
            if !inner.poller_installed {
                space += 1;
            }
            if timeout.is_some() {
                space += 1;
            }
            if space != 0 {
                Self::flush_space(inner, space)?;
            }

            // 2.1 install poller
            #[cfg(feature = "poll-io")]
            if !inner.poller_installed {
                self.install_poller(inner, inner.poll.as_raw_fd());
            }

            // 2.2 install eventfd and timeout
            #[cfg(feature = "sync")]
            if !inner.eventfd_installed {
                self.install_eventfd(inner, inner.shared_waker.as_raw_fd());
            }

            // 2.3 install timeout and submit_and_wait with timeout
            // Completion work already pending (it came while this thread
            // worked) is not held for a batch: the kernel counts `min_wait`
            // from the start of the wait, so it would wait all of it again.
            let batch = inner.wait.is_on()
                && wait_batch_active()
                && !inner.io_waiting()
                && timeout.map_or(true, |t| t > inner.wait.min_wait);
            if batch {
                // A general timeout always goes with the minimum one, and a
                // timer due sooner than `min_wait` is waited for alone.
                let ts = timespec(timeout.unwrap_or(IDLE_WAIT));
                let (events, usec) = (inner.wait.events, inner.wait.min_wait_usec());
                if let Err(e) = inner.enter_with_args(events, usec, &ts) {
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) {
                        return Err(e);
                    }
                }
            } else if let Some(duration) = timeout {
                // A timer ahead. The wait passes no timeout of its own
                // (with one, the kernel starts and cancels a timer around
                // every wait, and on a VM reprograms the core's timer, a
                // trip out of the guest, whenever it is the soonest): a
                // timeout request in the ring ends it. One pushed before
                // serves while it is still ahead and ends no later than
                // `STANDING_SLACK` after this timer; else another goes in.
                // One that then ends for nothing costs a wake-up. `now` is
                // the time driver's reading from just before this park
                // (`time::recent`), from which it counted `duration`.
                let now = crate::time::clock::recent_std();
                let due = now + duration;
                let standing = !duration.is_zero()
                    && inner
                        .armed
                        .is_some_and(|end| end > now && end <= due + STANDING_SLACK);
                if !standing {
                    self.install_timeout(inner, duration);
                    inner.armed = Some(due);
                }
                inner.uring.submit_and_wait(1)?;
            } else {
                // Submit and Wait without timeout
                inner.uring.submit_and_wait(1)?;
            }
        } else if !inner.uring.submission().is_empty() {
            // Submit only
            inner.uring.submit()?;
        }

        // Set status as awake
        #[cfg(feature = "sync")]
        inner
            .shared_waker
            .awake
            .store(true, std::sync::atomic::Ordering::Release);

        // Process CQ
        inner.tick()?;

        Ok(())
    }

    #[cfg(feature = "poll-io")]
    #[inline]
    pub(crate) fn register_poll_io(
        this: &Rc<UnsafeCell<UringInner>>,
        source: &mut impl mio::event::Source,
        interest: mio::Interest,
    ) -> io::Result<usize> {
        let inner = unsafe { &mut *this.get() };
        inner.poll.register(source, interest)
    }

    #[cfg(feature = "poll-io")]
    #[inline]
    pub(crate) fn deregister_poll_io(
        this: &Rc<UnsafeCell<UringInner>>,
        source: &mut impl mio::event::Source,
        token: usize,
    ) -> io::Result<()> {
        let inner = unsafe { &mut *this.get() };
        inner.poll.deregister(source, token)
    }
}

impl Driver for IoUringDriver {
    /// Enter the driver context. This enables using uring types.
    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        // TODO(ihciah): remove clone
        let inner = Inner::Uring(self.inner.clone());
        CURRENT.set(&inner, f)
    }

    fn submit(&self) -> io::Result<()> {
        let inner = unsafe { &mut *self.inner.get() };
        inner.submit()?;
        inner.tick()?;
        Ok(())
    }

    fn park(&self) -> io::Result<()> {
        self.inner_park(None)
    }

    fn park_timeout(&self, duration: Duration) -> io::Result<()> {
        self.inner_park(Some(duration))
    }

    #[cfg(feature = "sync")]
    type Unpark = waker::UnparkHandle;

    #[cfg(feature = "sync")]
    fn unpark(&self) -> Self::Unpark {
        UringInner::unpark(&self.inner)
    }
}

impl UringInner {
    /// Submits what is queued and waits for `events` completions, or for
    /// `min_wait_usec` and one, or for `ts`: `io_uring_enter` with an
    /// extended argument, which io-uring 0.6 cannot fill in full.
    fn enter_with_args(
        &mut self,
        events: u32,
        min_wait_usec: u32,
        ts: &Timespec,
    ) -> io::Result<()> {
        // `Timespec` is a transparent `struct __kernel_timespec`.
        let arg = GeteventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec,
            ts: ts as *const Timespec as u64,
        };
        let to_submit = self.uring.submission().len() as u32;
        // SAFETY: the ring's own fd; `arg` and `ts` outlive the call, and
        // the kernel only reads them.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.uring.as_raw_fd(),
                to_submit,
                events,
                IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                &arg as *const GeteventsArg,
                std::mem::size_of::<GeteventsArg>(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn tick(&mut self) -> io::Result<()> {
        let cq = self.uring.completion();

        for cqe in cq {
            let index = cqe.user_data();
            match index {
                #[cfg(feature = "sync")]
                EVENTFD_USERDATA => self.eventfd_installed = false,
                #[cfg(feature = "poll-io")]
                POLLER_USERDATA => {
                    self.poller_installed = false;
                    self.poll.tick(Some(Duration::ZERO))?;
                }
                _ if index >= MIN_REVERSED_USERDATA => (),
                _ if index & multi_recv::MULTI_TAG != 0 => {
                    if let Some(multi) = self.multi.as_mut() {
                        multi.complete(index, cqe.result(), cqe.flags());
                    }
                }
                _ => self.ops.complete(index as _, resultify(&cqe), cqe.flags()),
            }
        }
        multi_recv::Multi::after_tick(self);
        Ok(())
    }

    /// Whether completions wait to be processed: completion work the
    /// kernel deferred to this thread (the task-run flag a ring built with
    /// `setup_taskrun_flag` keeps; without it, never), or completions
    /// already posted (a request that completed as it was submitted posts
    /// its completion at once and raises no flag).
    fn io_waiting(&mut self) -> bool {
        self.uring.submission().taskrun() || !self.uring.completion().is_empty()
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.uring.submit() {
                #[cfg(feature = "unstable")]
                Err(ref e)
                    if matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::ResourceBusy) =>
                {
                    self.tick()?;
                }
                #[cfg(not(feature = "unstable"))]
                Err(ref e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) =>
                {
                    // This error is constructed with io::Error::last_os_error():
                    // https://github.com/tokio-rs/io-uring/blob/01c83bbce965d4aaf93ebfaa08c3aa8b7b0f5335/src/sys/mod.rs#L32
                    // So we can use https://doc.rust-lang.org/nightly/std/io/struct.Error.html#method.raw_os_error
                    // to get the raw error code.
                    self.tick()?;
                }
                e => return e.map(|_| ()),
            }
        }
    }

    fn new_op<T>(data: T, inner: &mut UringInner, driver: Inner) -> Op<T> {
        Op {
            driver,
            index: inner.ops.insert(),
            data: Some(data),
        }
    }

    pub(crate) fn submit_with_data<T>(
        this: &Rc<UnsafeCell<UringInner>>,
        data: T,
    ) -> io::Result<Op<T>>
    where
        T: OpAble,
    {
        let inner = unsafe { &mut *this.get() };
        // If the submission queue is full, flush it to the kernel
        if inner.uring.submission().is_full() {
            inner.submit()?;
        }

        // Create the operation
        let mut op = Self::new_op(data, inner, Inner::Uring(this.clone()));

        // Configure the SQE
        let data_mut = unsafe { op.data.as_mut().unwrap_unchecked() };
        let sqe = OpAble::uring_op(data_mut).user_data(op.index as _);

        {
            let mut sq = inner.uring.submission();

            // Push the new operation
            if unsafe { sq.push(&sqe).is_err() } {
                unimplemented!("when is this hit?");
            }
        }

        // Submit the new operation. At this point, the operation has been
        // pushed onto the queue and the tail pointer has been updated, so
        // the submission entry is visible to the kernel. If there is an
        // error here (probably EAGAIN), we still return the operation. A
        // future `io_uring_enter` will fully submit the event.

        // CHIHAI: We are not going to do syscall now. If we are waiting
        // for IO, we will submit on `park`.
        // let _ = inner.submit();
        Ok(op)
    }

    pub(crate) fn poll_op(
        this: &Rc<UnsafeCell<UringInner>>,
        index: usize,
        cx: &mut Context<'_>,
    ) -> Poll<CompletionMeta> {
        let inner = unsafe { &mut *this.get() };
        let lifecycle = unsafe { inner.ops.slab.get(index).unwrap_unchecked() };
        lifecycle.poll_op(cx)
    }

    #[cfg(feature = "poll-io")]
    pub(crate) fn poll_legacy_op<T: OpAble>(
        this: &Rc<UnsafeCell<Self>>,
        data: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<CompletionMeta> {
        let inner = unsafe { &mut *this.get() };
        let (direction, index) = match data.legacy_interest() {
            Some(x) => x,
            None => {
                // if there is no index provided, it means the action does not rely on fd
                // readiness. do syscall right now.
                return Poll::Ready(CompletionMeta {
                    result: OpAble::legacy_call(data),
                    flags: 0,
                });
            }
        };

        // wait io ready and do syscall
        inner
            .poll
            .poll_syscall(cx, index, direction, || OpAble::legacy_call(data))
    }

    pub(crate) fn drop_op<T: 'static>(
        this: &Rc<UnsafeCell<UringInner>>,
        index: usize,
        data: &mut Option<T>,
    ) {
        let inner = unsafe { &mut *this.get() };
        if index == usize::MAX {
            // already finished
            return;
        }
        if let Some(lifecycle) = inner.ops.slab.get(index) {
            let _must_finished = lifecycle.drop_op(data);
            #[cfg(feature = "async-cancel")]
            if !_must_finished {
                unsafe {
                    let cancel = opcode::AsyncCancel::new(index as u64)
                        .build()
                        .user_data(u64::MAX);

                    // Try push cancel, if failed, will submit and re-push.
                    if inner.uring.submission().push(&cancel).is_err() {
                        let _ = inner.submit();
                        let _ = inner.uring.submission().push(&cancel);
                    }
                }
            }
        }
    }

    pub(crate) unsafe fn cancel_op(this: &Rc<UnsafeCell<UringInner>>, index: usize) {
        let inner = &mut *this.get();
        let cancel = opcode::AsyncCancel::new(index as u64)
            .build()
            .user_data(u64::MAX);
        if inner.uring.submission().push(&cancel).is_err() {
            let _ = inner.submit();
            let _ = inner.uring.submission().push(&cancel);
        }
    }

    #[cfg(feature = "sync")]
    pub(crate) fn unpark(this: &Rc<UnsafeCell<UringInner>>) -> waker::UnparkHandle {
        let inner = unsafe { &*this.get() };
        let weak = std::sync::Arc::downgrade(&inner.shared_waker);
        waker::UnparkHandle(weak)
    }
}

impl AsRawFd for IoUringDriver {
    fn as_raw_fd(&self) -> RawFd {
        unsafe { (*self.inner.get()).uring.as_raw_fd() }
    }
}

impl Drop for IoUringDriver {
    fn drop(&mut self) {
        trace!("MONOIO DEBUG[IoUringDriver]: drop");

        // Dealloc leaked memory
        unsafe { std::ptr::drop_in_place(self.timespec) };

        #[cfg(feature = "sync")]
        unsafe {
            std::ptr::drop_in_place(self.eventfd_read_dst)
        };

        // Deregister thread id
        #[cfg(feature = "sync")]
        {
            use crate::driver::thread::{unregister_unpark_handle, unregister_waker_sender};
            unregister_unpark_handle(self.thread_id);
            unregister_waker_sender(self.thread_id);
        }
    }
}

impl Drop for UringInner {
    fn drop(&mut self) {
        // no need to wait for completion, as the kernel will clean up the ring asynchronically.
        let _ = self.uring.submitter().submit();
        // The buffer ring is freed after this: the kernel must not hold it.
        if let Some(multi) = &self.multi {
            multi.unregister(&self.uring);
        }
        unsafe {
            ManuallyDrop::drop(&mut self.uring);
        }
    }
}

impl Ops {
    const fn new() -> Self {
        Ops { slab: Slab::new() }
    }

    // Insert a new operation
    pub(crate) fn insert(&mut self) -> usize {
        self.slab.insert(Lifecycle::Submitted)
    }

    fn complete(&mut self, index: usize, result: io::Result<u32>, flags: u32) {
        let lifecycle = unsafe { self.slab.get(index).unwrap_unchecked() };
        lifecycle.complete(result, flags);
    }
}

#[inline]
fn resultify(cqe: &cqueue::Entry) -> io::Result<u32> {
    let res = cqe.result();

    if res >= 0 {
        Ok(res as u32)
    } else {
        Err(io::Error::from_raw_os_error(-res))
    }
}
