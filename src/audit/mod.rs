//! The audit: every call becomes an event, and this module decides what is
//! wrong with it. Pure functions of (rules, catalogs, parameters): no I/O, no
//! allocation, so the request path can run it on every call.
//!
//! # Layout
//! - `issue`: issue codes and the fixed-size list of findings
//! - `format`: value formats (integer, decimal, currency, ...)
//! - `catalog`: product-id sets and the catalog directory reloader
//! - `redirect`: click-target policy (allowed hosts, signed links)

pub mod catalog;
pub mod format;
pub mod issue;
pub mod redirect;

use std::collections::HashMap;

use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use crate::config::{Config, Durability, EventTypeConfig, ParamSpec};
use crate::http::Params;
pub use catalog::{CatalogDir, Catalogs, ProductSet, ScanReport};
pub use issue::{Issue, IssueCode, Issues};
use redirect::RedirectPolicy;

/// Which public route an event came in on; it implies the event type when
/// none is given and decides whether a click target is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /i`.
    Pixel,
    /// `GET /c`.
    Click,
    /// `/e` and `/batch` items.
    Beacon,
}

struct EventRules {
    name: Vec<u8>,
    durability: Durability,
    required: Vec<Vec<u8>>,
    params: Vec<(Vec<u8>, ParamSpec)>,
    product_param: Vec<u8>,
    redirect_param: Vec<u8>,
}

/// The audit rules compiled from a [`Config`].
pub struct Auditor {
    advertiser_param: Vec<u8>,
    event_param: Vec<u8>,
    signature_param: Vec<u8>,
    route_events: [usize; 3],
    events: Vec<EventRules>,
    /// Keyed by advertiser id; built from the config only, so unseeded
    /// hashing is safe (see `Catalogs`).
    advertisers: HashMap<Vec<u8>, RedirectPolicy, Xxh3DefaultBuilder>,
}

/// What the audit decided about one event. Borrows the parameters and rules.
#[derive(Debug)]
pub struct Verdict<'a> {
    /// The event type: the parameter's value, or the route's default.
    pub event_type: &'a [u8],
    /// The advertiser id, or empty when absent.
    pub advertiser: &'a [u8],
    /// What is wrong; empty means the event is `ok`.
    pub issues: Issues<'a>,
    /// The product-id list as sent (comma-separated), or empty.
    pub products: &'a [u8],
    /// For a click: the target the client may be sent to.
    pub redirect: Option<&'a [u8]>,
    /// When the event is answered: its type's, or buffered for an
    /// unknown type.
    pub durability: Durability,
}

impl Default for Verdict<'_> {
    /// An event of no type and no advertiser with nothing found, for
    /// [`Auditor::audit_into`] to fill.
    fn default() -> Self {
        Verdict {
            event_type: b"",
            advertiser: b"",
            issues: Issues::default(),
            products: b"",
            redirect: None,
            durability: Durability::Buffered,
        }
    }
}

impl Auditor {
    /// Compiles the rules of a validated config.
    pub fn new(config: &Config) -> Auditor {
        let names = &config.params;
        let compile = |name: &String, t: &EventTypeConfig| EventRules {
            name: name.as_bytes().to_vec(),
            durability: t.durability,
            required: t.required.iter().map(|r| r.as_bytes().to_vec()).collect(),
            params: t
                .params
                .iter()
                .map(|(k, s)| (k.as_bytes().to_vec(), s.clone()))
                .collect(),
            product_param: pick(&t.product_param, &names.products),
            redirect_param: pick(&t.redirect_param, &names.redirect),
        };
        let events: Vec<EventRules> = config
            .event_types
            .iter()
            .map(|(n, t)| compile(n, t))
            .collect();
        let position = |name: &str| {
            events
                .iter()
                .position(|e| e.name == name.as_bytes())
                .unwrap_or(0)
        };
        Auditor {
            advertiser_param: names.advertiser.as_bytes().to_vec(),
            event_param: names.event_type.as_bytes().to_vec(),
            signature_param: names.signature.as_bytes().to_vec(),
            route_events: [
                position(&config.routes.pixel_event),
                position(&config.routes.click_event),
                position(&config.routes.beacon_event),
            ],
            advertisers: config
                .advertisers
                .iter()
                .map(|(n, a)| {
                    (
                        n.as_bytes().to_vec(),
                        RedirectPolicy::new(&a.redirect_hosts, &a.redirect_signing_key),
                    )
                })
                .collect(),
            events,
        }
    }

    /// Audits one event's parameters.
    pub fn audit<'a>(
        &'a self,
        params: &'a Params,
        route: Route,
        catalogs: &'a Catalogs,
    ) -> Verdict<'a> {
        let mut verdict = Verdict::default();
        self.audit_into(&mut verdict, params, route, catalogs);
        verdict
    }

    /// [`Auditor::audit`] into a verdict the caller keeps, which is what
    /// the request path does: a verdict is 728 bytes (its findings are on
    /// the stack), and one returned was copied into the caller's, about
    /// 100 instructions a request. For the same reason the findings are
    /// pushed into the verdict, not built apart and moved in.
    pub fn audit_into<'a>(
        &'a self,
        verdict: &mut Verdict<'a>,
        params: &'a Params,
        route: Route,
        catalogs: &'a Catalogs,
    ) {
        let advertiser = params.get_bytes(&self.advertiser_param).unwrap_or(b"");
        let (event_type, rules) = self.event_rules(params, route);
        // Field by field: a whole new verdict would be built apart and
        // copied in.
        verdict.event_type = event_type;
        verdict.advertiser = advertiser;
        verdict.issues.clear();
        verdict.products = b"";
        verdict.redirect = None;
        verdict.durability = rules.map_or(Durability::Buffered, |r| r.durability);
        for key in params.duplicates() {
            verdict.issues.push(IssueCode::DuplicateParam, key, b"");
        }
        let policy = self.advertisers.get(advertiser);
        let catalog = catalogs.get(advertiser);
        if advertiser.is_empty() {
            verdict
                .issues
                .push(IssueCode::MissingParam, &self.advertiser_param, b"");
        } else if policy.is_none() && catalog.is_none() {
            verdict.issues.push(
                IssueCode::UnknownAdvertiser,
                &self.advertiser_param,
                advertiser,
            );
        }
        let Some(rules) = rules else {
            verdict
                .issues
                .push(IssueCode::UnknownEventType, &self.event_param, event_type);
            return;
        };
        for name in &rules.required {
            if params.get_bytes(name).is_none_or(<[u8]>::is_empty) {
                verdict.issues.push(IssueCode::MissingParam, name, b"");
            }
        }
        for (name, spec) in &rules.params {
            if let Some(v) = params.get_bytes(name).filter(|v| !v.is_empty()) {
                if name != &rules.product_param && !format::check(spec, v) {
                    verdict.issues.push(IssueCode::BadFormat, name, v);
                }
            }
        }
        if let Some(list) = params
            .get_bytes(&rules.product_param)
            .filter(|v| !v.is_empty())
        {
            verdict.products = list;
            let spec = rules
                .params
                .iter()
                .find(|(n, _)| *n == rules.product_param)
                .map(|(_, s)| s);
            self.check_products(
                &rules.product_param,
                list,
                spec,
                advertiser,
                catalog,
                policy.is_some(),
                &mut verdict.issues,
            );
        }
        if route == Route::Click {
            if let Some(target) = params
                .get_bytes(&rules.redirect_param)
                .filter(|v| !v.is_empty())
            {
                let signature = params.get_bytes(&self.signature_param).unwrap_or(b"");
                if policy.is_some_and(|p| p.allows(target, signature)) {
                    verdict.redirect = Some(target);
                } else {
                    verdict
                        .issues
                        .push(IssueCode::DisallowedRedirect, &rules.redirect_param, b"");
                }
            }
        }
    }

    /// The event's type (the parameter's value, or the route's default)
    /// and its rules, if the type is known.
    fn event_rules<'a>(
        &'a self,
        params: &'a Params,
        route: Route,
    ) -> (&'a [u8], Option<&'a EventRules>) {
        let default = &self.events[self.route_events[route as usize]];
        match params.get_bytes(&self.event_param) {
            None | Some(b"") => (&default.name[..], Some(default)),
            Some(ev) => (ev, self.events.iter().find(|e| e.name == ev)),
        }
    }

    /// When the event will be answered, as its verdict will say, without
    /// auditing it: so that an event whose answer does not wait for the
    /// disk can be answered before its audit.
    pub fn durability(&self, params: &Params, route: Route) -> Durability {
        self.event_rules(params, route)
            .1
            .map_or(Durability::Buffered, |r| r.durability)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_products<'a>(
        &self,
        param: &'a [u8],
        list: &'a [u8],
        spec: Option<&ParamSpec>,
        advertiser: &[u8],
        catalog: Option<&ProductSet>,
        configured: bool,
        issues: &mut Issues<'a>,
    ) {
        let mut reported_catalog = false;
        for id in list.split(|&b| b == b',') {
            let well_formed = match spec {
                Some(s) => format::check_item(s, id),
                None => format::id(id),
            };
            if !well_formed {
                issues.push(IssueCode::BadFormat, param, id);
                continue;
            }
            match catalog {
                Some(set) if !set.contains(id) => issues.push(IssueCode::UnknownProduct, param, id),
                Some(_) => {}
                None if configured && !advertiser.is_empty() && !reported_catalog => {
                    reported_catalog = true;
                    issues.push(IssueCode::NoCatalog, param, b"");
                }
                None => {}
            }
        }
    }

    /// Whether any event type is answered only once durable.
    pub fn has_sync_types(&self) -> bool {
        self.events.iter().any(|e| e.durability == Durability::Sync)
    }

    /// The advertisers named in the config.
    pub fn configured_advertisers(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.advertisers.keys().map(Vec::as_slice)
    }
}

fn pick(own: &str, global: &str) -> Vec<u8> {
    if own.is_empty() { global } else { own }
        .as_bytes()
        .to_vec()
}

#[cfg(test)]
mod tests;
