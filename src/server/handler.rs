//! One request, start to finish, without I/O: route, decode parameters,
//! audit, encode the record, hand it to the ring, write the answer. The
//! connection loop calls this with the request's bytes; everything here
//! reuses the worker's buffers, so the pixel path allocates nothing.
//!
//! With `server.audit_batch` set, a pixel or beacon whose answer does not
//! depend on its audit is answered first and waits, with its parameters,
//! to be audited and recorded with others: a worker woken for a request or two
//! finds the audit's rules, the catalogs and the record's code cold in its
//! caches, and pays for that once per group instead of once per wake-up.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;

use crate::audit::{Route, Verdict};
use crate::clock::WallClock;
use crate::config::Durability;
use crate::http::body::{self, BatchError};
use crate::http::date::HttpDate;
use crate::http::{response, HeadError, Method, Params, RequestHead, Status};
use crate::record::{self, json};
use crate::ring::Producer;
use crate::server::emitter::{Client, Emitter};
use crate::server::metrics::WorkerMetrics;
use crate::server::{Catalogs, Rules, Shared};
use crate::store::StreamShared;

/// The audit's route of each event route number of `Handler::handle`
/// (`/i`, `/c`, `/e`).
const EVENT_ROUTES: [Route; 3] = [Route::Pixel, Route::Click, Route::Beacon];

/// A worker's request handler and the buffers it reuses.
pub struct Handler {
    shared: Arc<Shared>,
    metrics: Arc<WorkerMetrics>,
    /// The rules and catalogs in force, kept by this worker: whether the
    /// kept one is still current is one plain load per request, where a
    /// load from the `ArcSwap` takes a locked instruction to borrow and
    /// another to give back, each a full barrier (four per request, about
    /// 0.5% of the process's CPU: `bench/results/together-cache-*.md`).
    rules: Cache<Arc<ArcSwap<Rules>>, Arc<Rules>>,
    catalogs: Cache<Arc<ArcSwap<Catalogs>>, Arc<Catalogs>>,
    params: Params,
    emitter: Emitter,
    date: HttpDate,
    clock: WallClock,
    batch_body: Vec<u8>,
    json_buffers: simd_json::Buffers,
    /// Events answered and not yet audited: the first `waiting_len` of
    /// `audit_batch` slots, each keeping its memory.
    waiting: Vec<Waiting>,
    waiting_len: usize,
    /// The rules and catalogs in force when the waiting events came: they
    /// are audited with these, not with what a reload put in their place.
    waiting_rules: Option<(Arc<Rules>, Arc<Catalogs>)>,
}

/// An event answered before its audit: its parameters, decoded once
/// before the answer, and the request facts its record needs. (One buffer
/// of raw query strings, decoded again at the audit, touched less memory
/// but came out at no gain on the realistic mix:
/// `bench/results/together-audit-*.md`.)
struct Waiting {
    route: Route,
    params: Params,
    /// The user agent, then the referer.
    strings: Vec<u8>,
    user_agent_len: usize,
    ip: IpAddr,
    do_not_track: bool,
    ts_ms: u64,
}

impl Handler {
    /// A handler for stream `stream`, whose next sequence number is `next_seq`.
    pub fn new(
        shared: Arc<Shared>,
        metrics: Arc<WorkerMetrics>,
        stream: u32,
        stream_shared: Arc<StreamShared>,
        next_seq: u64,
        producer: Producer,
        view: Producer,
    ) -> Handler {
        let max_params = shared.config.server.max_params;
        let audit_batch = shared.config.server.audit_batch as usize;
        let waiting = if audit_batch > 1 {
            (0..audit_batch)
                .map(|_| Waiting {
                    route: Route::Pixel,
                    params: Params::with_capacity(max_params),
                    strings: Vec::with_capacity(512),
                    user_agent_len: 0,
                    ip: IpAddr::from([0, 0, 0, 0]),
                    do_not_track: false,
                    ts_ms: 0,
                })
                .collect()
        } else {
            Vec::new()
        };
        let emitter = Emitter::new(&shared, stream, stream_shared, next_seq, producer, view);
        Handler {
            rules: Cache::new(shared.rules.clone()),
            catalogs: Cache::new(shared.catalogs.clone()),
            shared,
            metrics,
            params: Params::with_capacity(max_params),
            emitter,
            date: HttpDate::default(),
            clock: WallClock::new(),
            batch_body: Vec::new(),
            json_buffers: simd_json::Buffers::default(),
            waiting,
            waiting_len: 0,
            waiting_rules: None,
        }
    }

    /// Unix milliseconds at `at`, with the `Date` header brought up to it.
    fn now(&mut self, at: Instant) -> u64 {
        let ms = self.clock.ms(at);
        self.date.update(ms / 1000);
        ms
    }

    /// Answers one complete request (`req` holds its head and body, read
    /// at `arrived`) into `out`. Returns whether the connection stays open.
    pub fn handle(
        &mut self,
        req: &mut [u8],
        head: &RequestHead,
        peer: IpAddr,
        arrived: Instant,
        out: &mut Vec<u8>,
    ) -> bool {
        let ts_ms = self.now(arrived);
        let keep = head.keep_alive && !self.shared.shutdown.load(Ordering::Relaxed);
        let (route, allow): (usize, &str) = match head.path.of(req) {
            b"/i" => (0, "GET, HEAD"),
            b"/c" => (1, "GET, HEAD"),
            b"/e" => (2, "GET, HEAD, POST"),
            b"/batch" => (3, "POST"),
            b"/healthz" => (4, "GET, HEAD"),
            _ => (5, ""),
        };
        self.metrics.requests[route].inc();
        let allowed = match (route, head.method) {
            (5, _) => return self.error(out, Status::NotFound, keep, None),
            (3, Method::Post) => true,
            (3, _) => false,
            (2, Method::Get | Method::Head | Method::Post) => true,
            (_, Method::Get | Method::Head) => true,
            _ => false,
        };
        if !allowed {
            return self.error(out, Status::MethodNotAllowed, keep, Some(allow));
        }
        if route == 4 {
            response::empty(out, Status::Ok, &self.date, keep);
            self.metrics.response(200);
            return keep;
        }
        let (head_part, body) = req.split_at_mut(head.head_len);
        let client = Client {
            ip: peer,
            user_agent: head.user_agent.of(head_part),
            referer: head.referer.of(head_part),
            do_not_track: head.do_not_track,
            ts_ms,
        };
        // Pixels and beacons of GET or HEAD.
        let answers_first = matches!(EVENT_ROUTES.get(route), Some(Route::Pixel | Route::Beacon))
            && self.waiting.len() > 1
            && matches!(head.method, Method::Get | Method::Head)
            && body.is_empty();
        if answers_first {
            let route = EVENT_ROUTES[route];
            if let Some(keep) = self.answer_first(route, head, head_part, &client, out, keep) {
                return keep;
            }
        }
        // Records keep the order requests came in.
        self.run_waiting();
        if route == 3 {
            return self.batch(body, &client, out, keep);
        }
        self.params.clear();
        let max = self.shared.config.server.max_params;
        let mut decoded = self
            .params
            .parse_urlencoded(head.query.of(head_part), max)
            .is_ok();
        if decoded && head.method == Method::Post && !body.is_empty() {
            decoded = if head
                .content_type
                .of(head_part)
                .starts_with(b"application/json")
            {
                body::object_params(body, &mut self.params, max, &mut self.json_buffers)
            } else {
                self.params.parse_urlencoded(body, max).is_ok()
            };
        }
        if !decoded {
            return self.error(out, Status::BadRequest, keep, None);
        }
        let route = EVENT_ROUTES[route];
        let catalogs = self.catalogs.load();
        let rules = self.rules.load();
        let mut verdict = Verdict::default();
        rules
            .auditor
            .audit_into(&mut verdict, &self.params, route, catalogs);
        self.emitter.emit(
            &self.shared,
            rules,
            &self.metrics,
            &verdict,
            &self.params,
            &client,
        );
        self.emitter.commit_all(&self.metrics);
        match route {
            Route::Pixel | Route::Beacon => {
                self.answer_unaudited(out, route, head.method == Method::Head, keep);
            }
            Route::Click => match verdict.redirect {
                Some(target) => {
                    response::redirect(out, &self.date, keep, target);
                    self.metrics.response(302);
                }
                None => {
                    response::error(out, Status::BadRequest, &self.date, keep, None);
                    self.metrics.response(400);
                }
            },
        }
        keep
    }

    /// Answers a pixel or beacon whose answer does not wait for the disk,
    /// and keeps it to be audited with others; `None` (nothing answered)
    /// for an event type answered only once durable.
    fn answer_first(
        &mut self,
        route: Route,
        head: &RequestHead,
        head_part: &[u8],
        client: &Client<'_>,
        out: &mut Vec<u8>,
        keep: bool,
    ) -> Option<bool> {
        let max = self.shared.config.server.max_params;
        let i = self.waiting_len;
        let params = &mut self.waiting[i].params;
        params.clear();
        if params
            .parse_urlencoded(head.query.of(head_part), max)
            .is_err()
        {
            return Some(self.error(out, Status::BadRequest, keep, None));
        }
        let (sync, current) = {
            let rules = self.rules.load();
            let catalogs = self.catalogs.load();
            let sync = rules.auditor.durability(&self.waiting[i].params, route) == Durability::Sync;
            let current = self
                .waiting_rules
                .as_ref()
                .is_some_and(|(r, c)| Arc::ptr_eq(r, rules) && Arc::ptr_eq(c, catalogs));
            (sync, current)
        };
        if sync {
            return None;
        }
        if !current {
            // A reload since the waiting events came: they go first, with
            // the rules they came under, and this one starts a group.
            self.run_waiting();
            self.waiting.swap(i, 0);
            self.waiting_rules = Some((self.rules.load().clone(), self.catalogs.load().clone()));
        }
        let slot = &mut self.waiting[self.waiting_len];
        slot.route = route;
        slot.strings.clear();
        slot.strings.extend_from_slice(client.user_agent);
        slot.user_agent_len = client.user_agent.len();
        slot.strings.extend_from_slice(client.referer);
        slot.ip = client.ip;
        slot.do_not_track = client.do_not_track;
        slot.ts_ms = client.ts_ms;
        self.waiting_len += 1;
        if self.waiting_len == self.waiting.len() {
            self.run_waiting();
        }
        self.answer_unaudited(out, route, head.method == Method::Head, keep);
        Some(keep)
    }

    /// The answer of a pixel (the GIF) or a beacon (204), which is the same
    /// whatever its audit found.
    fn answer_unaudited(&self, out: &mut Vec<u8>, route: Route, head_only: bool, keep: bool) {
        if route == Route::Pixel {
            response::gif(out, &self.date, keep, head_only);
            self.metrics.response(200);
        } else {
            response::empty(out, Status::NoContent, &self.date, keep);
            self.metrics.response(204);
        }
    }

    /// The handler's part of the worker's heartbeat: events answered
    /// before their audit wait at most this long, and rules or catalogs a
    /// reload replaced are let go of even by a worker no request reaches.
    pub fn heartbeat(&mut self) {
        self.run_waiting();
        self.rules.load();
        self.catalogs.load();
    }

    /// Audits and records every event answered before its audit, in the
    /// order they came in. The worker also calls this at each heartbeat
    /// and before it exits, so none waits long or is lost at a stop.
    pub fn run_waiting(&mut self) {
        if self.waiting_len == 0 {
            return;
        }
        let Some((rules, catalogs)) = &self.waiting_rules else {
            return;
        };
        for w in &self.waiting[..self.waiting_len] {
            let (user_agent, referer) = w.strings.split_at(w.user_agent_len);
            let client = Client {
                ip: w.ip,
                user_agent,
                referer,
                do_not_track: w.do_not_track,
                ts_ms: w.ts_ms,
            };
            let mut verdict = Verdict::default();
            rules
                .auditor
                .audit_into(&mut verdict, &w.params, w.route, catalogs);
            self.emitter.emit(
                &self.shared,
                rules,
                &self.metrics,
                &verdict,
                &w.params,
                &client,
            );
        }
        self.waiting_len = 0;
        self.emitter.commit_all(&self.metrics);
    }

    /// `POST /batch`: a JSON array of event objects, recorded all or none.
    fn batch(
        &mut self,
        body: &mut [u8],
        client: &Client<'_>,
        out: &mut Vec<u8>,
        keep: bool,
    ) -> bool {
        let max = self.shared.config.server.max_params;
        let mut doc_buffers = std::mem::take(&mut self.json_buffers);
        let items = match body::batch_items(body, &mut doc_buffers) {
            Ok(items) => items,
            Err(e) => {
                self.json_buffers = doc_buffers;
                let (status, message) = match e {
                    BatchError::NotJson => (Status::BadRequest, "body is not valid JSON"),
                    BatchError::NotArray => {
                        (Status::BadRequest, "body must be a JSON array of events")
                    }
                    BatchError::TooMany => {
                        (Status::PayloadTooLarge, "too many events in one batch")
                    }
                };
                return self.json_error(out, status, keep, message);
            }
        };
        let catalogs = self.catalogs.load();
        let rules = self.rules.load();
        let body_out = &mut self.batch_body;
        body_out.clear();
        body_out.extend_from_slice(b"{\"results\":[");
        let (mut accepted, mut invalid, mut rejected) = (0u64, 0u64, 0u64);
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body_out.push(b',');
            }
            self.params.clear();
            if !body::item_params(item, &mut self.params, max) {
                rejected += 1;
                body_out.extend_from_slice(b"{\"status\":\"rejected\",\"error\":\"not an object of at most max_params scalar or list values\"}");
                continue;
            }
            let mut verdict = Verdict::default();
            rules
                .auditor
                .audit_into(&mut verdict, &self.params, Route::Beacon, catalogs);
            match self.emitter.emit(
                &self.shared,
                rules,
                &self.metrics,
                &verdict,
                &self.params,
                client,
            ) {
                Some(seq) => {
                    body_out.extend_from_slice(b"{\"id\":\"");
                    body_out.extend_from_slice(self.shared.node.as_bytes());
                    body_out.push(b'-');
                    json::write_u64(body_out, u64::from(self.emitter.stream));
                    body_out.push(b'-');
                    json::write_u64(body_out, seq);
                    body_out.push(b'"');
                }
                None => body_out.extend_from_slice(b"{\"id\":null"),
            }
            accepted += 1;
            if verdict.issues.is_empty() {
                body_out.extend_from_slice(b",\"status\":\"ok\"}");
            } else {
                invalid += 1;
                body_out.extend_from_slice(b",\"status\":\"invalid\",\"issues\":[");
                record::write_issues(body_out, verdict.issues.iter());
                body_out.extend_from_slice(b"]}");
            }
        }
        drop(items);
        self.json_buffers = doc_buffers;
        if !self.emitter.commit_all(&self.metrics) {
            return self.json_error(
                out,
                Status::Unavailable,
                keep,
                "storage is behind; retry later",
            );
        }
        body_out.extend_from_slice(b"],\"accepted\":");
        json::write_u64(body_out, accepted);
        body_out.extend_from_slice(b",\"invalid\":");
        json::write_u64(body_out, invalid);
        body_out.extend_from_slice(b",\"rejected\":");
        json::write_u64(body_out, rejected);
        body_out.push(b'}');
        response::json(out, Status::Ok, &self.date, keep, None, body_out);
        self.metrics.response(200);
        keep
    }

    fn json_error(&mut self, out: &mut Vec<u8>, status: Status, keep: bool, message: &str) -> bool {
        let body = &mut self.batch_body;
        body.clear();
        body.extend_from_slice(b"{\"error\":");
        json::write_str(body, message.as_bytes());
        body.push(b'}');
        let retry = (status == Status::Unavailable).then_some(1);
        response::json(out, status, &self.date, keep, retry, body);
        self.metrics.response(status.code());
        keep
    }

    fn error(
        &mut self,
        out: &mut Vec<u8>,
        status: Status,
        keep: bool,
        allow: Option<&str>,
    ) -> bool {
        response::error(out, status, &self.date, keep, allow);
        self.metrics.response(status.code());
        keep
    }

    /// Answers a request that could not be parsed; the connection closes.
    pub fn reject(&mut self, err: HeadError, out: &mut Vec<u8>) {
        self.now(Instant::now());
        let status = match err {
            HeadError::Malformed => Status::BadRequest,
            HeadError::UriTooLong => Status::UriTooLong,
            HeadError::HeadersTooLarge => Status::HeadersTooLarge,
            HeadError::BodyTooLarge => Status::PayloadTooLarge,
            HeadError::NotImplemented => Status::NotImplemented,
        };
        self.error(out, status, false, None);
    }

    /// Answers a client too slow to send its request; the connection closes.
    pub fn timeout(&mut self, out: &mut Vec<u8>) {
        self.now(Instant::now());
        self.error(out, Status::RequestTimeout, false, None);
    }

    /// Next sequence number of this worker's stream.
    pub fn next_seq(&self) -> u64 {
        self.emitter.next_seq
    }

    /// The sequence number that must be durable before the answers written
    /// since the last call may be sent (a `sync` event among them).
    pub fn take_sync_wait(&mut self) -> Option<u64> {
        self.emitter.sync_wait.take()
    }
}
