//! The server's routes on the admin port: metrics, health and readiness,
//! and the live view (its page, its JSON and its event streams). The
//! listener itself is `admin`'s, shared with the shipper.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::page::MetricsPage;
use super::{admin, Shared};

/// The admin port's routes: health, metrics, and the live view.
pub(super) fn route(target: &str, shared: &Arc<Shared>, page: &MetricsPage) -> admin::Reply {
    let (path, query) = admin::split_target(target);
    match path {
        "/metrics" => return admin::Reply::metrics(page.render()),
        "/healthz" => return admin::Reply::text("200 OK", "ok\n"),
        "/readyz" if shared.is_ready() => return admin::Reply::text("200 OK", "ready\n"),
        "/readyz" => return admin::Reply::text("503 Service Unavailable", "not ready\n"),
        "/" => return admin::Reply::html(crate::view::PAGE),
        _ if path.starts_with("/api/") && shared.view.stopped() => {
            return admin::Reply::text(
                "503 Service Unavailable",
                "the live view stopped: its thread ended by a panic (see the log); restart trackplane to bring it back\n",
            )
        }
        "/api/advertisers" => return admin::Reply::json(shared.view.advertisers_json()),
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/api/advertisers/") else {
        return admin::Reply::not_found();
    };
    let Some((advertiser, what)) = rest.split_once('/') else {
        return admin::Reply::not_found();
    };
    if !crate::config::valid_name(advertiser) {
        return admin::Reply::text("400 Bad Request", "not an advertiser id\n");
    }
    match what {
        "audit" => match shared.view.audit_json(advertiser) {
            Some(json) => admin::Reply::json(json),
            None => admin::Reply::text("404 Not Found", "no events of this advertiser yet\n"),
        },
        "events" => {
            let invalid_only = query
                .split('&')
                .any(|kv| kv == "invalid=1" || kv == "invalid=true");
            let Some(sub) = shared.view.subscribe(advertiser, invalid_only) else {
                return admin::Reply::text("503 Service Unavailable", "too many viewers\n");
            };
            let shared = shared.clone();
            admin::Reply::event_stream(Box::new(move |conn| {
                let stopped = || shared.shutdown.load(Ordering::Relaxed);
                crate::view::serve_events(
                    &shared.view,
                    sub,
                    std::io::BufWriter::new(conn),
                    &stopped,
                );
            }))
        }
        _ => admin::Reply::not_found(),
    }
}
