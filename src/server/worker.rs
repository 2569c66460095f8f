//! One worker: a thread pinned to its core, its own monoio runtime (io_uring,
//! or epoll when the kernel refuses io_uring), its own SO_REUSEPORT listener,
//! and its own stream of events. Workers share nothing mutable.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::io::Canceller;
use monoio::net::TcpListener;

use crate::config::Driver;
use crate::http::Limits;
use crate::ring::{Consumer, Producer};
use crate::server::handler::Handler;
use crate::server::metrics::{Counter, WorkerMetrics};
use crate::server::pace::{self, Pace, Reading};
use crate::server::{ServeError, Shared};
use crate::store::pack::Packer;

/// The I/O driver a worker ended up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring. `batched`: wake-ups batched (`server.wake_batch`) while
    /// the worker is busy (`pace`); otherwise one per completion round.
    /// `multishot`: one receive request per connection
    /// (`server.multishot_recv`); otherwise one per read.
    Uring { batched: bool, multishot: bool },
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl DriverKind {
    /// As logged.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Uring { batched, multishot } => match (batched, multishot) {
                (false, false) => "io_uring",
                (true, false) => "io_uring, wake-ups batched when busy",
                (false, true) => "io_uring, multishot receive",
                (true, true) => "io_uring, wake-ups batched when busy, multishot receive",
            },
            DriverKind::Epoll => "epoll",
        }
    }

    /// Whether this is io_uring (in whichever setting).
    pub fn is_uring(self) -> bool {
        matches!(self, DriverKind::Uring { .. })
    }

    /// The drivers of all workers, as the start line gives them: one name
    /// when they agree, as they do unless the kernel refused some workers'
    /// rings and not others' (a limit on rings or their memory), else
    /// each driver with the workers on it.
    pub fn describe(drivers: &[DriverKind]) -> String {
        let mut kinds: Vec<DriverKind> = Vec::new();
        for &d in drivers {
            if !kinds.contains(&d) {
                kinds.push(d);
            }
        }
        match kinds.as_slice() {
            [] => "none".to_owned(),
            [one] => one.as_str().to_owned(),
            _ => kinds
                .iter()
                .map(|&kind| {
                    let on: Vec<String> = (0..drivers.len())
                        .filter(|&i| drivers[i] == kind)
                        .map(|i| i.to_string())
                        .collect();
                    let noun = if on.len() == 1 { "worker" } else { "workers" };
                    format!("{} ({noun} {})", kind.as_str(), on.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// A worker's state, shared by its connection tasks on its one thread.
pub struct Worker {
    /// Worker number (its index in `Shared`'s per-worker state).
    pub index: usize,
    /// What all workers share.
    pub shared: Arc<Shared>,
    /// Request limits, copied out of the config.
    pub limits: Limits,
    /// The request handler and its buffers.
    pub handler: RefCell<Handler>,
    /// This worker's counters.
    pub metrics: Arc<WorkerMetrics>,
    /// Connections holding part of a request or an unsent answer.
    pub in_flight: Cell<usize>,
    /// Connections accepted that have sent nothing yet.
    pub fresh: Cell<usize>,
    /// Connections open.
    pub connections: Cell<usize>,
}

impl Worker {
    /// Whether the server is shutting down.
    #[inline]
    pub fn shutting_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
    }
}

/// Everything one worker thread starts with.
pub struct WorkerSpec {
    /// Worker number.
    pub index: usize,
    /// Its stream's id (leased).
    pub stream: u32,
    /// Its listening sockets, already bound: its own, plus any taken over
    /// beyond one per worker.
    pub listeners: Vec<std::net::TcpListener>,
    /// Its end of the hand-off ring.
    pub producer: Producer,
    /// What packs the other end into blocks for the store, while the
    /// worker is idle (`store::pack`).
    pub packer: Packer,
    /// Its end of the lossy ring to the live view.
    pub view: Producer,
    /// The other end, which it folds into the view while idle.
    pub view_ring: Consumer,
    /// First sequence number of its stream.
    pub next_seq: u64,
    /// Its counters.
    pub metrics: Arc<WorkerMetrics>,
    /// The core to pin to, if any.
    pub core: Option<core_affinity::CoreId>,
}

/// Starts a worker thread. The channel receives the driver it runs on once
/// its runtime is up, or the error that stopped it.
pub fn spawn(
    shared: Arc<Shared>,
    spec: WorkerSpec,
    started: mpsc::Sender<Result<DriverKind, ServeError>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("trackplane-w{}", spec.index))
        .spawn(move || {
            if let Some(core) = spec.core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(worker = spec.index, core = core.id, "could not pin worker to its core");
                }
            }
            let entries = 4096;
            let want = shared.config.server.driver;
            let use_uring = match want {
                Driver::Uring => true,
                Driver::Epoll => false,
                // One worker says why for all: they share the kernel.
                Driver::Auto => monoio::utils::detect_uring() || {
                    if spec.index == 0 {
                        tracing::warn!(error = %uring_refusal(), "io_uring unavailable; using epoll");
                    }
                    false
                },
            };
            if use_uring {
                match uring_runtime(
                    entries,
                    wake_batch(&shared.config.server),
                    shared.config.server.multishot_recv,
                ) {
                    Ok((mut rt, kind)) => {
                        let _ = started.send(Ok(kind));
                        let batched = matches!(kind, DriverKind::Uring { batched: true, .. });
                        rt.block_on(run(shared, spec, batched));
                        return;
                    }
                    Err(e) if want == Driver::Uring => {
                        let _ = started.send(Err(ServeError::Runtime { driver: "io_uring", source: e }));
                        return;
                    }
                    Err(e) => tracing::warn!(worker = spec.index, error = %e, "io_uring unavailable; using epoll"),
                }
            }
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build() {
                Ok(mut rt) => {
                    let _ = started.send(Ok(DriverKind::Epoll));
                    rt.block_on(run(shared, spec, false));
                }
                Err(e) => {
                    let _ = started.send(Err(ServeError::Runtime { driver: "epoll", source: e }));
                }
            }
        })
}

/// Why io_uring cannot serve here, for the log: the kernel's answer when
/// asked for a ring (EPERM under a seccomp profile or
/// `kernel.io_uring_disabled`, ENOSYS without io_uring), or, when it gives
/// one, that the runtime's probe found operations missing.
fn uring_refusal() -> String {
    match io_uring::IoUring::new(2) {
        Err(e) => e.to_string(),
        Ok(_) => "the kernel lacks io_uring operations the runtime needs".to_owned(),
    }
}

/// How long a stopping worker waits for connections that have sent
/// nothing yet: round trips, with room to spare.
const FRESH_GRACE: Duration = Duration::from_secs(1);

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// The configured wake-up batching; off when either key is 0.
fn wake_batch(cfg: &crate::config::ServerConfig) -> monoio::WaitBatch {
    monoio::WaitBatch {
        events: cfg.wake_batch,
        min_wait: Duration::from_micros(cfg.wake_linger_us),
    }
}

/// An io_uring runtime for one thread. The ring is used by its creating
/// thread only, so it asks the kernel to run completion work when that
/// thread next enters the kernel instead of interrupting it
/// (`COOP_TASKRUN`, `SINGLE_ISSUER`; Linux 6.0). On this project's
/// reference VM that halves io_uring's CPU per request (bench/results).
///
/// Better still, the completion work waits until the thread asks for
/// completions (`DEFER_TASKRUN`, Linux 6.1): it then runs in one go, on the
/// thread's own way into the kernel to wait. About 2% of the CPU per
/// request unbatched at 20k/s
/// (bench/results/together-defer-20261130-1005.md). With wake-up batching
/// configured, the thread also sleeps until `wake_batch` completions are
/// ready or `wake_linger_us` has passed with one (Linux 6.12): one wake-up
/// per batch instead of one per one to three requests, while the worker
/// is busy (`pace`). The task-run flag
/// tells the driver when completion work came while the thread worked, so
/// that it is not held for a batch too. With `server.multishot_recv`, a
/// connection keeps one receive request for its life (Linux 6.0): 2-3% of
/// the CPU per request unbatched at 20k/s, 8% batched
/// (bench/results/together-multishot-20261201-0150.md). Kernels without a
/// feature get the ring before it.
fn uring_runtime(
    entries: u32,
    wake: monoio::WaitBatch,
    multishot: bool,
) -> std::io::Result<(UringRuntime, DriverKind)> {
    let build = |urb: io_uring::Builder, wake: monoio::WaitBatch| {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(urb)
            .wait_batch(wake)
            .enable_timer()
            .build()
    };
    // A keep-alive client sends its next request after the answer, so a
    // connection's read is nearly always asked for on an empty socket: arm
    // poll at once instead of trying it (Linux 5.19; any kernel that takes
    // SINGLE_ISSUER, 6.0, has it, and the plain ring below turns it off).
    // About 1% of the CPU per request, batched or not
    // (bench/results/together-pollfirst-20261130-0727.md).
    monoio::set_recv_poll_first(true);
    // Multishot receives need Linux 6.0, as SINGLE_ISSUER does: only the
    // rings built with it make them (`conn`).
    monoio::set_multishot_recv(multishot);
    let mut tuned = io_uring::IoUring::builder();
    tuned.setup_coop_taskrun().setup_single_issuer();
    let mut deferred = tuned.clone();
    deferred.setup_defer_taskrun().setup_taskrun_flag();
    // Read once the ring is built: whether its buffer ring was registered.
    let kind = |batched| DriverKind::Uring {
        batched,
        multishot: monoio::multishot_recv_active(),
    };
    if wake.is_on() {
        match build(deferred.clone(), wake) {
            Ok(rt) => return Ok((rt, kind(true))),
            Err(e) => tracing::info!(error = %e, "io_uring wake-ups not batched"),
        }
    }
    let unbatched = monoio::WaitBatch::default();
    let rt = match build(deferred, unbatched).or_else(|e| {
        tracing::info!(error = %e, "io_uring without DEFER_TASKRUN");
        build(tuned, unbatched)
    }) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::info!(error = %e, "io_uring without COOP_TASKRUN/SINGLE_ISSUER");
            monoio::set_recv_poll_first(false);
            monoio::set_multishot_recv(false);
            build(io_uring::IoUring::builder(), unbatched)?
        }
    };
    Ok((rt, kind(false)))
}

/// What `pace` reads of this worker at a look.
fn reading(metrics: &WorkerMetrics) -> Reading {
    Reading {
        cpu: pace::thread_cpu(),
        requests: metrics.requests.iter().map(Counter::get).sum(),
    }
}

/// Serves until shutdown. `batched`: the ring was built to batch its
/// wake-ups, which it does while `pace` says the worker is busy.
async fn run(shared: Arc<Shared>, spec: WorkerSpec, batched: bool) {
    let cfg = &shared.config.server;
    let limits = Limits {
        max_request_line_bytes: cfg.max_request_line_bytes,
        max_header_bytes: cfg.max_header_bytes,
        max_headers: cfg.max_headers,
        max_body_bytes: cfg.max_body_bytes,
    };
    let max_connections = cfg.max_connections_per_worker;
    let drain = Duration::from_millis(cfg.drain_timeout_ms);
    let mut listeners = Vec::with_capacity(spec.listeners.len());
    for l in spec.listeners {
        match TcpListener::from_std(l) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                tracing::error!(worker = spec.index, error = %e, "listener unusable; worker stops");
                return;
            }
        }
    }
    let handler = Handler::new(
        shared.clone(),
        spec.metrics.clone(),
        spec.stream,
        shared.streams[spec.index].clone(),
        spec.next_seq,
        spec.producer,
        spec.view,
    );
    // This worker's records are packed into blocks for the store
    // (`store::pack`) and folded into the live view (`view::fold`) by its
    // own hand, between its I/O; taken back as the worker ends.
    let packer = Rc::new(RefCell::new(spec.packer));
    let mut folder = crate::view::Folder::new(spec.view_ring, shared.view.clone());
    let idle_packer = packer.clone();
    monoio::set_idle_work(Some(Box::new(move |io_waiting| {
        let now = monoio::time::recent().into_std();
        let packing = idle_packer.borrow_mut().turn(io_waiting, now);
        match (packing, folder.turn(io_waiting, now)) {
            (monoio::IdleTurn::Done, true) => monoio::IdleTurn::More,
            (packing, _) => packing,
        }
    })));
    let worker = Rc::new(Worker {
        index: spec.index,
        shared,
        limits,
        handler: RefCell::new(handler),
        metrics: spec.metrics,
        in_flight: Cell::new(0),
        fresh: Cell::new(0),
        connections: Cell::new(0),
    });

    // Accept blocks in the kernel; a watcher cancels it at shutdown.
    let canceller = Canceller::new();
    let cancel = canceller.handle();
    let watcher = worker.clone();
    // An idle-class pass older than this is starved (`sched`).
    let starved_ms = (worker.shared.config.storage.flush_interval_ms / 2).max(1);
    let mut pace = batched.then(|| {
        let busy_percent = worker.shared.config.server.wake_batch_busy_percent;
        Pace::new(busy_percent, reading(&worker.metrics), Instant::now())
    });
    if let Some(p) = &pace {
        set_batching(&worker.metrics, &packer, p.batching());
    }
    // Weak: the packer goes back to this function at the stop.
    let pace_packer = Rc::downgrade(&packer);
    monoio::spawn(async move {
        while !watcher.shutting_down() {
            monoio::time::sleep(Duration::from_millis(20)).await;
            if let Some(change) = pace
                .as_mut()
                .and_then(|p| p.look(Instant::now(), || reading(&watcher.metrics)))
            {
                if let Some(packer) = pace_packer.upgrade() {
                    set_batching(&watcher.metrics, &packer, change);
                }
                watcher.metrics.wake_batch_changes.inc();
            }
            let shared = &watcher.shared;
            // The watchdog pings systemd only while this advances.
            shared.heartbeats[watcher.index].fetch_add(1, Ordering::Relaxed);
            shared.store_status.class.lift_if_starved(starved_ms);
            watcher.handler.borrow_mut().heartbeat();
        }
        canceller.cancel();
    });

    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            monoio::spawn(accept_loop(
                worker.clone(),
                l,
                cancel.clone(),
                max_connections,
            ))
        })
        .collect();
    for l in loops {
        l.await;
    }
    // Requests begun are finished, up to the drain timeout. A client that
    // has just connected sends its request within a round trip, so it is
    // waited for that long (FRESH_GRACE), not its header timeout: a
    // connection opened ahead of need, as browsers open them, held every
    // stop for the whole header timeout (10 s by default).
    let stopped = monoio::time::Instant::now();
    let (deadline, fresh_until) = (stopped + drain, stopped + FRESH_GRACE.min(drain));
    loop {
        let now = monoio::time::Instant::now();
        let waiting = worker.in_flight.get() > 0 || (worker.fresh.get() > 0 && now < fresh_until);
        if !waiting || now >= deadline {
            break;
        }
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    // What was answered is recorded, and packed for the store, before the
    // worker goes.
    worker.handler.borrow_mut().run_waiting();
    monoio::set_idle_work(None);
    // The idle work held the packer's other handle; it is gone with it.
    match Rc::try_unwrap(packer) {
        Ok(packer) => pack_the_rest(packer.into_inner(), &worker.shared, spec.index, drain).await,
        Err(_) => tracing::error!(worker = spec.index, "records left unpacked at the stop"),
    }
    if worker.in_flight.get() > 0 {
        tracing::warn!(
            worker = spec.index,
            in_flight = worker.in_flight.get(),
            "drain timeout; closing busy connections"
        );
    }
}

/// Turns this thread's wake-up batching on or off, and its gauge with it.
fn set_batching(metrics: &WorkerMetrics, packer: &RefCell<Packer>, on: bool) {
    monoio::set_wait_batch_active(on);
    metrics.wake_batching.set(u64::from(on));
    packer.borrow_mut().set_batching(on);
}

/// Accepts on `listener` until shutdown cancels it. A connection accepted
/// as the cancel arrives is still served: accepted means the client waits.
async fn accept_loop(
    worker: Rc<Worker>,
    listener: TcpListener,
    cancel: monoio::io::CancelHandle,
    max_connections: usize,
) {
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                if worker.connections.get() >= max_connections {
                    worker.metrics.connections_refused.inc();
                    drop(stream);
                    continue;
                }
                worker.connections.set(worker.connections.get() + 1);
                worker.metrics.connections_accepted.inc();
                monoio::spawn(super::conn::serve(worker.clone(), stream, peer));
            }
            Err(_) if worker.shutting_down() => break,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(worker = worker.index, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Packs every record left for the store, waiting (up to `patience`) while
/// the store's ring is full; what still cannot go is lost, and said.
async fn pack_the_rest(mut packer: Packer, shared: &Shared, index: usize, patience: Duration) {
    let deadline = monoio::time::Instant::now() + patience;
    while !packer.finish() {
        if monoio::time::Instant::now() >= deadline {
            tracing::error!(
                worker = index,
                records = packer.lose_the_rest(),
                "records lost: the store took no more blocks before the stop"
            );
            return;
        }
        shared.store_status.nudge();
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::DriverKind;

    #[test]
    fn the_start_line_names_each_driver_with_its_workers_when_they_differ() {
        let ring = DriverKind::Uring {
            batched: false,
            multishot: true,
        };
        assert_eq!(DriverKind::describe(&[]), "none");
        assert_eq!(
            DriverKind::describe(&[ring, ring]),
            "io_uring, multishot receive"
        );
        assert_eq!(DriverKind::describe(&[DriverKind::Epoll]), "epoll");
        assert_eq!(
            DriverKind::describe(&[ring, DriverKind::Epoll, ring]),
            "io_uring, multishot receive (workers 0, 2); epoll (worker 1)"
        );
    }
}
