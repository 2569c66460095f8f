//! A worker's records on their way out: each audited event encoded as the
//! record of DESIGN.md into a scratch buffer, then handed to the worker's
//! ring to the store (all of a `/batch` or none) with a lossy copy to the
//! live view's ring, headed by what the view reads of it
//! (`view::fold::entry_head`). The handler decides what to record; this
//! is how.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::audit::Verdict;
use crate::config::{DntPolicy, Durability};
use crate::http::Params;
use crate::record::{self, Envelope};
use crate::ring::Producer;
use crate::server::metrics::WorkerMetrics;
use crate::server::{Rules, Shared};
use crate::store::{StoreStatus, StreamShared, RING_PREFIX};
use crate::view::fold::{entry_head, ENTRY_HEAD};

/// Encodes records and hands them to the worker's ring.
pub(super) struct Emitter {
    pub(super) stream: u32,
    pub(super) next_seq: u64,
    producer: Producer,
    scratch: Vec<u8>,
    /// Ends of each pending record in `scratch` (for `/batch`), and what
    /// goes before its copy in the view's ring.
    pending: Vec<(usize, [u8; ENTRY_HEAD])>,
    /// Highest pending sequence number of a `sync` event type.
    pending_sync: Option<u64>,
    /// Highest committed sequence number the answer must wait for.
    pub(super) sync_wait: Option<u64>,
    stream_shared: Arc<StreamShared>,
    store: Arc<StoreStatus>,
    /// Lossy copy of every record for the live view.
    view: Producer,
    view_shared: Arc<crate::view::View>,
}

/// The request facts a record needs besides its parameters.
#[derive(Clone, Copy)]
pub(super) struct Client<'a> {
    pub(super) ip: IpAddr,
    pub(super) user_agent: &'a [u8],
    pub(super) referer: &'a [u8],
    pub(super) do_not_track: bool,
    pub(super) ts_ms: u64,
}

impl Emitter {
    /// An emitter for stream `stream`, whose next sequence number is
    /// `next_seq`, pushing to the store's ring `producer` and the live
    /// view's ring `view`.
    pub(super) fn new(
        shared: &Shared,
        stream: u32,
        stream_shared: Arc<StreamShared>,
        next_seq: u64,
        producer: Producer,
        view: Producer,
    ) -> Emitter {
        Emitter {
            stream,
            next_seq,
            producer,
            scratch: Vec::with_capacity(4096),
            pending: Vec::new(),
            pending_sync: None,
            sync_wait: None,
            stream_shared,
            store: shared.store_status.clone(),
            view,
            view_shared: shared.view.clone(),
        }
    }

    /// Encodes one event into the pending records and returns its sequence
    /// number, or `None` when the do-not-track policy drops it;
    /// [`Emitter::commit_all`] hands the pending records to the ring.
    pub(super) fn emit(
        &mut self,
        shared: &Shared,
        rules: &Rules,
        metrics: &WorkerMetrics,
        verdict: &Verdict<'_>,
        params: &Params,
        client: &Client<'_>,
    ) -> Option<u64> {
        let privacy = &rules.config.privacy;
        let anonymize = client.do_not_track && privacy.dnt == DntPolicy::Anonymize;
        if client.do_not_track && privacy.dnt == DntPolicy::Drop {
            metrics.events_dnt_dropped.inc();
            return None;
        }
        let seq = self.next_seq + self.pending.len() as u64;
        self.scratch.extend_from_slice(&seq.to_le_bytes());
        self.scratch.extend_from_slice(&client.ts_ms.to_le_bytes());
        if verdict.durability == Durability::Sync {
            self.pending_sync = Some(seq);
        }
        let env = Envelope {
            node: &shared.node,
            stream: self.stream,
            seq,
            ts_ms: client.ts_ms,
            ip: if anonymize {
                None
            } else {
                record::keep_ip(client.ip, privacy.ip)
            },
            user_agent: if anonymize { b"" } else { client.user_agent },
            referer: client.referer,
            withheld_param: if anonymize {
                rules.config.params.user.as_bytes()
            } else {
                b""
            },
        };
        let spans = record::encode(&mut self.scratch, &env, verdict, params);
        let valid = verdict.issues.is_empty();
        let head = entry_head(client.ts_ms, spans.as_ref().filter(|_| valid));
        self.pending.push((self.scratch.len(), head));
        if valid {
            metrics.events_ok.inc();
        } else {
            metrics.events_invalid.inc();
            for issue in verdict.issues.iter() {
                metrics.issue(issue.code);
            }
        }
        Some(seq)
    }

    /// Pushes every pending record, or none when they don't all fit.
    /// Returns whether they were pushed.
    pub(super) fn commit_all(&mut self, metrics: &WorkerMetrics) -> bool {
        let n = self.pending.len();
        if n == 0 {
            return true;
        }
        // The worker packs its records while its runtime would sleep; a
        // client that keeps its socket full is answered read after read
        // without that, so past a quarter the packer catches up here
        // (`store::pack`), before the ring is asked for room.
        if self.producer.past_quarter() {
            monoio::catch_up_idle_work();
        }
        let fits = !self.store.refuses() && self.producer.fits(n, self.scratch.len());
        if fits {
            // The oldest record not yet packed, for the store's lease
            // (`store::pack`); set before the push, so never later than it.
            let unpacked = &self.stream_shared.unpacked_ts;
            if unpacked.load(Ordering::Relaxed) == u64::MAX {
                let ts = self.scratch[8..RING_PREFIX]
                    .try_into()
                    .map_or(0, u64::from_le_bytes);
                unpacked.store(ts, Ordering::Release);
            }
            let mut start = 0;
            for &(end, head) in &self.pending {
                // Cannot fail: the whole batch was checked to fit, and a
                // record larger than the ring accepts is refused by `fits`.
                if self.producer.push(&self.scratch[start..end]).is_err() {
                    metrics.events_refused.inc();
                }
                // The view's copy is lossy by design: a full ring drops it.
                if self
                    .view
                    .push_parts(&head, &self.scratch[start + RING_PREFIX..end])
                    .is_err()
                {
                    self.view_shared
                        .ring_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
                start = end;
            }
            self.next_seq += n as u64;
            metrics
                .record_bytes
                .add((self.scratch.len() - n * RING_PREFIX) as u64);
            if let Some(seq) = self.pending_sync {
                self.stream_shared.want_sync(seq);
                self.sync_wait = self.sync_wait.max(Some(seq));
            }
        } else {
            // Full: lift the store if it is idle and wake it if it naps
            // (no later push that succeeds would see the ring past a
            // quarter).
            self.store.class.lift();
            self.store.nudge();
            metrics.events_refused.add(n as u64);
        }
        self.pending_sync = None;
        self.pending.clear();
        self.scratch.clear();
        fits
    }
}
