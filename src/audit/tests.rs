//! The audit table: one row per situation an integrator can create.

use super::*;
use crate::config::Config;

fn auditor() -> (Auditor, Catalogs) {
    let text = r#"
        [advertisers.shop]
        redirect_hosts = ["shop.com"]
        redirect_signing_key = "secret"
        [advertisers.nocat]
        [event_types.impression]
        params = { pid = { format = "id", list = true } }
        [event_types.click]
        required = ["url"]
        [event_types.page_view]
        params = { page = { format = "url" }, ts = { format = "timestamp" }, n = { format = "integer" }, device = { format = "enum", values = ["web", "app"] }, note = { format = "string", max_len = 8 } }
        [event_types.view_item]
        required = ["pid"]
        params = { pid = { format = "id", list = true } }
        [event_types.add_to_cart]
        required = ["pid"]
        params = { pid = { format = "id", list = true }, value = { format = "decimal" }, currency = { format = "currency" } }
        [event_types.purchase]
        required = ["order_id", "value", "currency", "pid"]
        params = { order_id = { format = "id" }, value = { format = "decimal" }, currency = { format = "currency" }, pid = { format = "id", list = true } }
    "#;
    let config = Config::from_toml_str(text, "test").unwrap();
    let catalogs = Catalogs::default()
        .with("shop", ProductSet::build([&b"p1"[..], b"p2", b"p3"]))
        .with("catonly", ProductSet::build([&b"x1"[..]]));
    (Auditor::new(&config), catalogs)
}

/// (route, query, expected type, expected issues as "code:param[:value]")
const TABLE: &[(Route, &str, &str, &[&str])] = &[
    // well-formed events of every type
    (Route::Pixel, "adv=shop", "impression", &[]),
    (Route::Pixel, "adv=shop&pid=p1", "impression", &[]),
    (Route::Pixel, "adv=shop&pid=p1,p2,p3", "impression", &[]),
    (Route::Beacon, "adv=shop", "page_view", &[]),
    (
        Route::Beacon,
        "adv=shop&ev=view_item&pid=p2",
        "view_item",
        &[],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=add_to_cart&pid=p1&value=10&currency=EUR",
        "add_to_cart",
        &[],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=purchase&order_id=o-1&value=9.99&currency=EUR&pid=p1,p2",
        "purchase",
        &[],
    ),
    (
        Route::Click,
        "adv=shop&url=https%3A%2F%2Fshop.com%2Fp%2F1",
        "click",
        &[],
    ),
    (
        Route::Pixel,
        "adv=shop&ev=purchase&order_id=o&value=1&currency=USD&pid=p3",
        "purchase",
        &[],
    ),
    (
        Route::Beacon,
        "adv=shop&page=https://shop.com/&ts=1700000000&n=-3&device=app&note=hi",
        "page_view",
        &[],
    ),
    (
        Route::Beacon,
        "adv=catonly&pid=x1&ev=view_item",
        "view_item",
        &[],
    ),
    (
        Route::Beacon,
        "adv=shop&extra=anything&ev=",
        "page_view",
        &[],
    ),
    // missing_param
    (Route::Pixel, "", "impression", &["missing_param:adv"]),
    (Route::Pixel, "adv=", "impression", &["missing_param:adv"]),
    (
        Route::Beacon,
        "adv=shop&ev=view_item",
        "view_item",
        &["missing_param:pid"],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=view_item&pid=",
        "view_item",
        &["missing_param:pid"],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=purchase",
        "purchase",
        &[
            "missing_param:order_id",
            "missing_param:value",
            "missing_param:currency",
            "missing_param:pid",
        ],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=purchase&order_id=o&value=1&pid=p1",
        "purchase",
        &["missing_param:currency"],
    ),
    (Route::Click, "adv=shop", "click", &["missing_param:url"]),
    // bad_format
    (
        Route::Beacon,
        "adv=shop&ev=purchase&order_id=o&value=9,99&currency=EUR&pid=p1",
        "purchase",
        &["bad_format:value:9,99"],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=purchase&order_id=o&value=1&currency=eur&pid=p1",
        "purchase",
        &["bad_format:currency:eur"],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=purchase&order_id=o&value=1&currency=XXX&pid=p1",
        "purchase",
        &["bad_format:currency:XXX"],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=purchase&order_id=o%20x&value=1&currency=EUR&pid=p1",
        "purchase",
        &["bad_format:order_id:o x"],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=add_to_cart&pid=p1&value=abc",
        "add_to_cart",
        &["bad_format:value:abc"],
    ),
    (
        Route::Beacon,
        "adv=shop&page=ftp://x",
        "page_view",
        &["bad_format:page:ftp://x"],
    ),
    (
        Route::Beacon,
        "adv=shop&ts=yesterday",
        "page_view",
        &["bad_format:ts:yesterday"],
    ),
    (
        Route::Beacon,
        "adv=shop&n=1.5",
        "page_view",
        &["bad_format:n:1.5"],
    ),
    (
        Route::Beacon,
        "adv=shop&device=tv",
        "page_view",
        &["bad_format:device:tv"],
    ),
    (
        Route::Beacon,
        "adv=shop&note=too+long+note",
        "page_view",
        &["bad_format:note:too long note"],
    ),
    (
        Route::Pixel,
        "adv=shop&pid=p1,,p2",
        "impression",
        &["bad_format:pid:"],
    ),
    (
        Route::Pixel,
        "adv=shop&pid=p1,a%20b",
        "impression",
        &["bad_format:pid:a b"],
    ),
    // unknown_product
    (
        Route::Pixel,
        "adv=shop&pid=p9",
        "impression",
        &["unknown_product:pid:p9"],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=view_item&pid=p1,p7,p8",
        "view_item",
        &["unknown_product:pid:p7", "unknown_product:pid:p8"],
    ),
    (
        Route::Beacon,
        "adv=shop&ev=purchase&order_id=o&value=1&currency=EUR&pid=P1",
        "purchase",
        &["unknown_product:pid:P1"],
    ),
    (
        Route::Beacon,
        "adv=catonly&ev=view_item&pid=x2",
        "view_item",
        &["unknown_product:pid:x2"],
    ),
    // unknown_event_type
    (
        Route::Beacon,
        "adv=shop&ev=signup",
        "signup",
        &["unknown_event_type:ev:signup"],
    ),
    (
        Route::Pixel,
        "adv=shop&ev=Purchase",
        "Purchase",
        &["unknown_event_type:ev:Purchase"],
    ),
    (
        Route::Beacon,
        "ev=nope",
        "nope",
        &["missing_param:adv", "unknown_event_type:ev:nope"],
    ),
    // unknown_advertiser
    (
        Route::Pixel,
        "adv=stranger",
        "impression",
        &["unknown_advertiser:adv:stranger"],
    ),
    (
        Route::Pixel,
        "adv=stranger&pid=p1",
        "impression",
        &["unknown_advertiser:adv:stranger"],
    ),
    (
        Route::Click,
        "adv=stranger&url=https://shop.com/",
        "click",
        &["unknown_advertiser:adv:stranger", "disallowed_redirect:url"],
    ),
    // no_catalog
    (
        Route::Pixel,
        "adv=nocat&pid=a",
        "impression",
        &["no_catalog:pid"],
    ),
    (
        Route::Beacon,
        "adv=nocat&ev=view_item&pid=a,b,c",
        "view_item",
        &["no_catalog:pid"],
    ),
    (Route::Pixel, "adv=nocat", "impression", &[]),
    // disallowed_redirect
    (
        Route::Click,
        "adv=shop&url=https://evil.com/",
        "click",
        &["disallowed_redirect:url"],
    ),
    (
        Route::Click,
        "adv=shop&url=//shop.com",
        "click",
        &["disallowed_redirect:url"],
    ),
    (
        Route::Click,
        "adv=shop&url=https://shop.com%0d%0aX:1",
        "click",
        &["disallowed_redirect:url"],
    ),
    (
        Route::Click,
        "adv=nocat&url=https://shop.com/",
        "click",
        &["disallowed_redirect:url"],
    ),
    (
        Route::Click,
        "adv=shop&url=https://other.example/&sig=00",
        "click",
        &["disallowed_redirect:url"],
    ),
    // redirect only checked on the click route
    (
        Route::Beacon,
        "adv=shop&ev=click&url=https://evil.com/",
        "click",
        &[],
    ),
    // duplicate_param
    (
        Route::Pixel,
        "adv=shop&adv=other",
        "impression",
        &["duplicate_param:adv"],
    ),
    (
        Route::Pixel,
        "adv=shop&pid=p1&pid=p2",
        "impression",
        &["duplicate_param:pid"],
    ),
];

fn render(issues: &Issues<'_>) -> Vec<String> {
    issues
        .iter()
        .map(|i| {
            let mut s = format!("{}:{}", i.code.as_str(), String::from_utf8_lossy(i.param));
            if !i.value.is_empty() || i.code == IssueCode::BadFormat {
                s += &format!(":{}", String::from_utf8_lossy(i.value));
            }
            s
        })
        .collect()
}

#[test]
fn audit_table() {
    let (auditor, catalogs) = auditor();
    assert!(TABLE.len() >= 40);
    let mut params = Params::with_capacity(16);
    for &(route, query, ty, want) in TABLE {
        params.clear();
        params.parse_urlencoded(query.as_bytes(), 16).unwrap();
        let v = auditor.audit(&params, route, &catalogs);
        assert_eq!(String::from_utf8_lossy(v.event_type), ty, "{query}");
        assert_eq!(render(&v.issues), want, "{route:?} {query}");
    }
}

#[test]
fn a_verdict_audited_into_again_says_only_what_its_new_event_has() {
    // The request path audits into a verdict it keeps: each row into the
    // verdict of the row before, with its findings, redirect and products.
    // An event with findings beyond the cap comes first and last, so that
    // the count of those dropped must be reset too.
    let (auditor, catalogs) = auditor();
    let ids: Vec<String> = (0..20).map(|i| format!("zz{i}")).collect();
    let over_cap = format!("adv=shop&pid={}", ids.join(","));
    let rows: Vec<(Route, &str)> = std::iter::once((Route::Pixel, over_cap.as_str()))
        .chain(TABLE.iter().map(|&(route, query, _, _)| (route, query)))
        .collect();
    let all: Vec<Params> = rows
        .iter()
        .map(|&(_, query)| {
            let mut params = Params::with_capacity(16);
            params.parse_urlencoded(query.as_bytes(), 16).unwrap();
            params
        })
        .collect();
    let mut v = Verdict::default();
    for (params, &(route, query)) in all.iter().zip(&rows).chain(all.iter().zip(&rows).rev()) {
        auditor.audit_into(&mut v, params, route, &catalogs);
        let fresh = auditor.audit(params, route, &catalogs);
        assert_eq!(render(&v.issues), render(&fresh.issues), "{query}");
        assert_eq!(v.issues.dropped(), fresh.issues.dropped(), "{query}");
        assert_eq!(
            (
                v.event_type,
                v.advertiser,
                v.products,
                v.redirect,
                v.durability
            ),
            (
                fresh.event_type,
                fresh.advertiser,
                fresh.products,
                fresh.redirect,
                fresh.durability
            ),
            "{query}"
        );
    }
}

#[test]
fn every_issue_code_is_covered_by_the_table() {
    for code in IssueCode::ALL {
        let prefix = format!("{}:", code.as_str());
        assert!(
            TABLE
                .iter()
                .any(|(_, _, _, want)| want.iter().any(|w| w.starts_with(&prefix))),
            "{prefix}"
        );
    }
}

#[test]
fn allowed_and_signed_clicks_carry_their_target() {
    let (auditor, catalogs) = auditor();
    let mut params = Params::with_capacity(16);
    params
        .parse_urlencoded(b"adv=shop&url=https%3A%2F%2Fshop.com%2Fp", 16)
        .unwrap();
    let v = auditor.audit(&params, Route::Click, &catalogs);
    assert_eq!(v.redirect, Some(&b"https://shop.com/p"[..]));

    let target = "https://partner.example/x";
    let sig = redirect::sign(b"secret", target.as_bytes());
    params.clear();
    params
        .parse_urlencoded(format!("adv=shop&url={target}&sig={sig}").as_bytes(), 16)
        .unwrap();
    let v = auditor.audit(&params, Route::Click, &catalogs);
    assert!(v.issues.is_empty(), "{:?}", render(&v.issues));
    assert_eq!(v.redirect, Some(target.as_bytes()));
}

#[test]
fn products_are_reported_as_sent() {
    let (auditor, catalogs) = auditor();
    let mut params = Params::with_capacity(16);
    params
        .parse_urlencoded(b"adv=shop&pid=p1%2Cp2", 16)
        .unwrap();
    let v = auditor.audit(&params, Route::Pixel, &catalogs);
    assert_eq!(v.products, b"p1,p2");
    assert!(v.issues.is_empty());
}

#[test]
fn findings_beyond_the_cap_are_counted() {
    let (auditor, catalogs) = auditor();
    let mut params = Params::with_capacity(16);
    let ids: Vec<String> = (0..20).map(|i| format!("zz{i}")).collect();
    params
        .parse_urlencoded(format!("adv=shop&pid={}", ids.join(",")).as_bytes(), 16)
        .unwrap();
    let v = auditor.audit(&params, Route::Pixel, &catalogs);
    assert_eq!(v.issues.len(), Issues::CAP);
    assert_eq!(v.issues.dropped(), 4);
}

#[test]
fn the_verdict_carries_its_event_types_durability_known_before_the_audit() {
    let config = Config::from_toml_str(
        "[event_types.purchase]\ndurability = \"sync\"\nrequired = [\"order_id\"]\n",
        "test",
    )
    .unwrap();
    let auditor = Auditor::new(&config);
    let catalogs = Catalogs::default();
    let mut params = Params::with_capacity(16);
    for (query, route, durability) in [
        (
            "adv=demo&ev=purchase&order_id=o1",
            Route::Beacon,
            Durability::Sync,
        ),
        ("adv=demo&ev=purchase", Route::Beacon, Durability::Sync),
        ("adv=demo", Route::Pixel, Durability::Buffered),
        (
            "adv=demo&ev=add_to_cart",
            Route::Beacon,
            Durability::Buffered,
        ),
        (
            "adv=demo&ev=no_such_type",
            Route::Beacon,
            Durability::Buffered,
        ),
    ] {
        params.clear();
        params.parse_urlencoded(query.as_bytes(), 16).unwrap();
        let v = auditor.audit(&params, route, &catalogs);
        assert_eq!(v.durability, durability, "{query}");
        // Known before the audit, as the verdict will say it.
        assert_eq!(auditor.durability(&params, route), durability, "{query}");
    }
}
