//! `trackplane serve`: start the workers, the storage consumer, the catalog
//! reloader and the admin listener; stop them in order on shutdown so that
//! nothing answered is lost.
//!
//! # Layout
//! - `worker`: per-core thread, runtime, driver choice, accept loop, drain
//! - `pace`: whether a worker batches its wake-ups (only while busy)
//! - `conn`: the connection loop (read, pipeline, write, timeouts)
//! - `handler`: one request: route, audit, record, answer
//! - `emitter`: encodes a request's records and hands them to the rings
//! - `admin`: the admin listener, which any process gives its own routes
//! - `admin_routes`: the server's: `/metrics`, health, the live view
//! - `metrics`: per-worker counters
//! - `page`: the `/metrics` page
//! - `background`: catalog reloader and systemd watchdog threads
//! - `notify`: systemd's notify protocol
//! - `listen`: listening sockets, bound or taken over
//! - `handover`: zero-downtime restart (pass the sockets to a new process)
//!
//! # Invariants
//! - Shutdown order: stop accepting, finish in-flight requests, stop the
//!   workers (dropping their ring producers), then drain the rings to disk
//!   and fsync. An event whose answer was written is on disk when `wait`
//!   returns.

pub mod admin;
mod admin_routes;
mod background;
pub mod conn;
mod emitter;
pub mod handler;
pub mod handover;
mod listen;
pub mod metrics;
pub mod notify;
mod pace;
mod page;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;

use crate::audit::{Auditor, CatalogDir, Catalogs};
use crate::bell::Bell;
use crate::config::{BackgroundClass, Config};
use crate::store::lease::StreamLeases;
use crate::store::pack::Packer;
use crate::store::{Store, StoreMetrics, StoreStatus, StreamShared, StreamSpec};
pub use handover::{HandoverError, Listeners};
use page::{MetricsPage, RecoveryCounts};
pub use worker::DriverKind;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A runtime could not be built on the requested driver.
    #[error("cannot start the {driver} runtime: {source}")]
    Runtime {
        /// The driver.
        driver: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The data directory or the event log failed.
    #[error("{what} ({path}): {source}")]
    Storage {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A thread could not be started or died.
    #[error("{0}")]
    Thread(String),
}

/// What every worker and helper thread shares. Read-mostly; swapped, never
/// locked.
pub struct Shared {
    /// The configuration the server started with.
    pub config: Arc<Config>,
    /// What a reload replaces: audit rules and per-event settings. (In an
    /// `Arc` of its own so that each worker can keep a [`Cache`] of it.)
    ///
    /// [`Cache`]: arc_swap::cache::Cache
    pub rules: Arc<ArcSwap<Rules>>,
    /// Rung by a reload: the catalog reloader scans at once.
    pub rescan_catalogs: Bell,
    /// Current catalogs; the reloader swaps in new snapshots.
    pub catalogs: Arc<ArcSwap<Catalogs>>,
    /// Node name for event ids.
    pub node: String,
    /// Set once to stop everything.
    pub shutdown: AtomicBool,
    /// Rung with `shutdown` and never cleared: wakes the threads that
    /// sleep until there is work (admin, catalogs) and ends the view's nap.
    pub stopping: Arc<Bell>,
    /// Set when every worker is accepting.
    pub ready: AtomicBool,
    /// Per stream: durable sequence and sync requests, shared with the store.
    pub streams: Vec<Arc<StreamShared>>,
    /// Whether the store refuses new events (disk budget).
    pub store_status: Arc<StoreStatus>,
    /// Per worker: bumped by its event loop every 20 ms.
    pub heartbeats: Vec<std::sync::atomic::AtomicU64>,
    /// The live tag-validation view.
    pub view: Arc<crate::view::View>,
}

/// Bytes of each worker's lossy ring to the live view. The worker folds it
/// into the view while idle (`view::fold`), and while busy only once it is
/// past a quarter, so a quarter holds a busy stretch's records: its 2 MiB is
/// about 40 ms of them at 100k requests/s.
const VIEW_RING_BYTES: usize = 8 << 20;

/// The part of the configuration a reload (SIGHUP) replaces while the
/// server runs: advertisers, event types, catalogs, privacy, parameter
/// names. Each worker reads it per request from its own cache of
/// `Shared::rules` (a plain load; the cache notices a reload, lock-free).
pub struct Rules {
    /// The configuration these rules were compiled from.
    pub config: Arc<Config>,
    /// Compiled audit rules.
    pub auditor: Auditor,
}

impl Rules {
    /// Compiles the rules of a validated config.
    pub fn new(config: Arc<Config>) -> Rules {
        Rules {
            auditor: Auditor::new(&config),
            config,
        }
    }
}

/// Parts of the configuration whose changes take effect only after a
/// restart (listeners, workers, limits, storage, shipper).
fn restart_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("node_id", old.node_id != new.node_id),
        ("data_dir", old.data_dir != new.data_dir),
        ("server", old.server != new.server),
        ("storage", old.storage != new.storage),
        ("shipper", old.shipper != new.shipper),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

impl Shared {
    /// Ready: every worker accepts, not shutting down, and the store does
    /// not refuse events (at the disk budget, or while its writes fail).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.shutdown.load(Ordering::Relaxed)
            && !self.store_status.refuses()
    }
}

/// Makes a file-size limit (RLIMIT_FSIZE) a failed write, which the store
/// survives (refusing new events until its writes work again), instead of
/// SIGXFSZ, whose default ends the process with whatever its rings held.
fn survive_file_size_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, seen) {
            tracing::warn!(error = %e, "cannot catch SIGXFSZ: a file-size limit would end the process");
        }
    });
}

/// Turns transparent huge pages off for the whole process. The allocator
/// (mimalloc) asks for huge pages on the memory it reserves, so the first
/// write to each 2 MiB of it zeroes a whole huge page inside one page fault,
/// and it gives freed memory back after a second, so such faults recur
/// while serving. On the reference VM one held a worker for 10-30 ms
/// (`perf`: `clear_page_erms` under `do_huge_pmd_anonymous_page`, from
/// `mi_page_free_list_extend` under a growing `Vec`): at 20k requests/s,
/// p99.9 of 16-22 ms in 3 of 6 windows of 8 s, and in none of 6 with huge
/// pages off (at most 2.5 ms), for the same CPU per request
/// (`bench/results/tails-20261204-0647.md`). What huge pages would save,
/// TLB misses, came to nothing measurable even for 10 million products
/// (`together-thp-20261130-1525.md`). Kept across `exec`, so a restarted
/// process starts with it too.
fn forgo_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers (full words: the
    // kernel refuses garbage in the unused ones) and touches no memory of
    // ours.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot turn transparent huge pages off: a first write to fresh memory may stall a worker for milliseconds");
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    helpers: Vec<JoinHandle<()>>,
    store: Store,
    /// The bound data address (the real port when configured with port 0).
    pub data_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    /// The driver each worker runs on.
    pub drivers: Vec<DriverKind>,
    page: Arc<MetricsPage>,
    /// Copies of the listening sockets, to hand to a new process.
    handover: Mutex<Option<Listeners>>,
    /// The streams this process writes; released when it ends.
    _leases: StreamLeases,
}

fn bell_error(e: std::io::Error) -> ServeError {
    ServeError::Thread(format!("cannot create a wake-up bell: {e}"))
}

fn storage<'a>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> ServeError + 'a {
    move |source| ServeError::Storage {
        what,
        path: path.to_owned(),
        source,
    }
}

impl Server {
    /// Starts everything and returns once every worker accepts connections.
    pub fn start(config: Config) -> Result<Server, ServeError> {
        Server::start_with(config, None)
    }

    /// [`Server::start`], accepting on `taken` (the listening sockets of the
    /// process this one replaces) where they match the configuration.
    pub fn start_with(config: Config, taken: Option<Listeners>) -> Result<Server, ServeError> {
        let took_over = taken.is_some();
        survive_file_size_limit();
        forgo_huge_pages();
        let config = Arc::new(config);
        let cfg = &config.server;
        let workers = if cfg.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.workers
        };
        std::fs::create_dir_all(&config.data_dir).map_err(storage(
            "cannot create the data directory",
            &config.data_dir,
        ))?;
        // Streams another live process writes (the one this replaces) are
        // neither taken nor recovered.
        let leases = StreamLeases::acquire(&config.data_dir, workers)
            .map_err(storage("cannot lease streams", &config.data_dir))?;
        let stream_ids = leases.ids();
        let mut visited = Vec::new();
        let recovered = crate::segment::recover_streams(&config.data_dir, |stream| {
            leases.may_touch(stream, &mut visited)
        })
        .map_err(storage("cannot recover segments", &config.data_dir))?;
        drop(visited);
        if !recovered.sealed.is_empty() || !recovered.quarantined.is_empty() {
            tracing::warn!(
                sealed = recovered.sealed.len(),
                cut = recovered.cut.len(),
                quarantined = recovered.quarantined.len(),
                "recovered segments left open by an earlier run"
            );
        }
        let recovery = RecoveryCounts {
            cut: recovered.cut.len() as u64,
            quarantined: recovered.quarantined.len() as u64,
        };

        let mut catalog_dir = CatalogDir::new(&config.catalog_dir());
        match catalog_dir.scan() {
            Ok(Some(report)) => background::log_unreadable(&report),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(dir = %config.catalog_dir().display(), error = %e, "cannot read catalogs; starting without")
            }
        }
        let rules = Rules::new(config.clone());
        // Whether the store naps short for `sync` events; a reload updates it.
        let idle_wanted = config.server.background_class == BackgroundClass::Idle;
        let store_status = Arc::new(StoreStatus::new(
            rules.auditor.has_sync_types(),
            crate::sched::Class::new(idle_wanted),
        ));
        let background = match (idle_wanted, store_status.class.enabled()) {
            (true, true) => "idle",
            (true, false) => {
                tracing::info!("server.background_class = \"idle\" needs CAP_SYS_NICE or RLIMIT_NICE >= 20 to lift the store back; the store runs in the normal class (the catalog reloader, which stays idle, does not need it)");
                "normal"
            }
            (false, _) => "normal",
        };
        let shared = Arc::new(Shared {
            rules: Arc::new(ArcSwap::from_pointee(rules)),
            rescan_catalogs: Bell::new().map_err(bell_error)?,
            catalogs: Arc::new(ArcSwap::from_pointee(catalog_dir.catalogs().clone())),
            node: config.node(),
            shutdown: AtomicBool::new(false),
            stopping: Arc::new(Bell::new().map_err(bell_error)?),
            ready: AtomicBool::new(false),
            streams: (0..workers)
                .map(|_| Arc::new(StreamShared::default()))
                .collect(),
            store_status,
            view: Arc::new(crate::view::View::new(config.server.view_memory_bytes)),
            heartbeats: (0..workers)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            config: config.clone(),
        });

        // Bind every listener before starting anything, so that a taken port
        // fails the start cleanly.
        let bound = listen::bind(cfg.listen, cfg.admin_listen, workers, taken)?;
        let (data_addr, admin_addr) = (bound.data_addr, bound.admin_addr);
        let handover = Mutex::new(Some(Listeners {
            data: bound
                .data
                .iter()
                .flatten()
                .map(std::net::TcpListener::try_clone)
                .collect::<Result<_, _>>()
                .map_err(|source| ServeError::Bind {
                    addr: data_addr,
                    source,
                })?,
            admin: Some(bound.admin.try_clone().map_err(|source| ServeError::Bind {
                addr: admin_addr,
                source,
            })?),
        }));
        let admin_listener = bound.admin;

        let cores = core_affinity::get_core_ids().unwrap_or_default();
        // Shared by the store and the workers' packers.
        let store_metrics = Arc::new(StoreMetrics::default());
        let mut consumers = Vec::with_capacity(workers);
        let mut worker_metrics = Vec::with_capacity(workers);
        let mut rings = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        let (tx, rx) = mpsc::channel();
        let mut specs = Vec::with_capacity(workers);
        let mut next_seqs = Vec::with_capacity(workers);
        for (index, listeners) in bound.data.into_iter().enumerate() {
            let stream = stream_ids[index];
            // Records to the worker's own packer, blocks from it to the
            // store (`store::pack`).
            let (producer, records) = crate::ring::ring(cfg.ring_bytes);
            let (blocks, consumer) = crate::ring::ring(crate::store::pack::blocks_ring_bytes(
                cfg.ring_bytes,
                config.storage.block_max_bytes,
            ));
            let (view_producer, view_consumer) = crate::ring::ring(VIEW_RING_BYTES);
            rings.push(records.gauge());
            consumers.push(consumer);
            let metrics = Arc::new(metrics::WorkerMetrics::default());
            worker_metrics.push(metrics.clone());
            let next_seq = recovered.next_seq.get(&stream).copied().unwrap_or(0);
            next_seqs.push(next_seq);
            specs.push(worker::WorkerSpec {
                index,
                stream,
                listeners,
                producer,
                packer: Packer::new(
                    records,
                    blocks,
                    next_seq,
                    &config.storage,
                    shared.streams[index].clone(),
                    shared.store_status.clone(),
                    store_metrics.clone(),
                )
                .map_err(|e| ServeError::Thread(e.to_string()))?,
                view: view_producer,
                view_ring: view_consumer,
                next_seq,
                metrics,
                core: (!cores.is_empty()).then(|| cores[index % cores.len()]),
            });
        }
        let stream_specs = consumers
            .into_iter()
            .zip(next_seqs)
            .zip(&shared.streams)
            .zip(&stream_ids)
            .map(|(((consumer, next_seq), shared), &stream)| StreamSpec {
                stream,
                consumer,
                next_seq,
                shared: shared.clone(),
            })
            .collect();
        let store = Store::start(
            &config.data_dir,
            &shared.node,
            &config.storage,
            stream_specs,
            shared.store_status.clone(),
            store_metrics,
        )
        .map_err(storage("cannot open segments", &config.data_dir))?;
        for spec in specs {
            let handle = worker::spawn(shared.clone(), spec, tx.clone())
                .map_err(|e| ServeError::Thread(e.to_string()))?;
            handles.push(handle);
        }
        drop(tx);
        let mut drivers = Vec::with_capacity(workers);
        let mut failure = None;
        for _ in 0..workers {
            match rx.recv() {
                Ok(Ok(kind)) => drivers.push(kind),
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(ServeError::Thread("a worker died while starting".into())),
            }
        }
        let page = Arc::new(MetricsPage {
            workers: worker_metrics,
            drivers: drivers.clone(),
            store: store.metrics.clone(),
            shared: shared.clone(),
            recovery,
            rings: stream_ids.iter().copied().zip(rings).collect(),
        });
        let mut server = Server {
            shared: shared.clone(),
            workers: handles,
            helpers: Vec::new(),
            store,
            data_addr,
            admin_addr,
            drivers,
            page,
            handover,
            _leases: leases,
        };
        if let Some(e) = failure {
            server.shutdown();
            let _ = server.wait();
            return Err(e);
        }
        let reloader = background::spawn_reloader(shared.clone(), catalog_dir, idle_wanted)
            .map_err(|e| ServeError::Thread(e.to_string()))?;
        server.helpers.push(reloader);
        let router: admin::Router = {
            let page = server.page.clone();
            let shared = shared.clone();
            Box::new(move |target| admin_routes::route(target, &shared, &page))
        };
        let admin = admin::spawn(admin_listener, shared.stopping.clone(), router)
            .map_err(|e| ServeError::Thread(e.to_string()))?;
        server.helpers.push(admin);
        if let Some(every) = notify::Notifier::watchdog_interval() {
            let watchdog = background::spawn_watchdog(shared.clone(), every)
                .map_err(|e| ServeError::Thread(e.to_string()))?;
            server.helpers.push(watchdog);
        }
        shared.ready.store(true, Ordering::Release);
        // A process that took over becomes the unit's main process.
        let main_pid = if took_over {
            format!("MAINPID={}\n", std::process::id())
        } else {
            String::new()
        };
        notify::Notifier::from_env()
            .notify(&format!("{main_pid}READY=1\nSTATUS=serving on {data_addr}"));
        let driver = DriverKind::describe(&server.drivers);
        tracing::info!(listen = %data_addr, admin = %admin_addr, workers, driver = driver.as_str(), background, node = %shared.node, "trackplane serving");
        Ok(server)
    }

    /// Asks every part to stop; returns at once. [`Server::wait`] finishes.
    pub fn shutdown(&self) {
        notify::Notifier::from_env().notify("STOPPING=1");
        self.stop();
    }

    fn stop(&self) {
        self.shared.ready.store(false, Ordering::Release);
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.stopping.ring();
        self.shared.store_status.class.stay_normal();
        // This process's copies of the listening sockets go with it.
        self.handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Zero-downtime restart: starts `command` (this binary, `serve`) as a
    /// new process, passes it the listening sockets, and once it serves,
    /// stops accepting and drains like [`Server::shutdown`] (without
    /// telling systemd the service stops: the new process is its main
    /// process now). Returns the new process's pid. On error this server
    /// keeps serving.
    pub fn hand_over(&self, command: std::process::Command) -> Result<u32, HandoverError> {
        let guard = self
            .handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(listeners) = guard.as_ref() else {
            return Err(HandoverError::Protocol("the server is stopping".into()));
        };
        let socket = handover::socket_path(&self.shared.config.data_dir);
        let pid = handover::offer(&socket, listeners, command)?;
        drop(guard);
        tracing::info!(new_pid = pid, "the new process serves; draining this one");
        self.stop();
        Ok(pid)
    }

    /// Waits for the workers to drain, then writes, syncs and seals every
    /// stream's segment.
    pub fn wait(self) -> Result<(), ServeError> {
        let mut panicked = false;
        for w in self.workers {
            panicked |= w.join().is_err();
        }
        let stored = self.store.finish().map_err(storage(
            "cannot write segments",
            &self.shared.config.data_dir,
        ));
        for h in self.helpers {
            panicked |= h.join().is_err();
        }
        let refused: u64 = self
            .page
            .workers
            .iter()
            .map(|w| w.events_refused.get())
            .sum();
        if refused > 0 {
            tracing::warn!(
                refused,
                "events answered but not stored while this process ran (ring full, disk budget or failing writes)"
            );
        }
        stored?;
        if panicked {
            return Err(ServeError::Thread("a thread panicked".into()));
        }
        tracing::info!("trackplane stopped");
        Ok(())
    }

    /// Replaces advertisers, event types, catalogs, privacy and parameter
    /// names with those of `config` (already validated), atomically:
    /// requests see the old rules or the new, never a mix. Returns the keys
    /// that changed but need a restart to take effect.
    pub fn reload(&self, config: Config) -> Vec<&'static str> {
        let old = self.shared.rules.load();
        let pending = restart_keys(&old.config, &config);
        let rules = Rules::new(Arc::new(config));
        self.shared
            .store_status
            .sync_types
            .store(rules.auditor.has_sync_types(), Ordering::Release);
        self.shared.rules.store(Arc::new(rules));
        self.shared.rescan_catalogs.ring();
        tracing::info!(needs_restart = ?pending, "configuration reloaded");
        pending
    }

    /// The metrics page, as the admin port serves it.
    pub fn metrics_text(&self) -> String {
        self.page.render()
    }
}
