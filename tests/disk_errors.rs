//! The store when the kernel refuses its writes, as on a full disk: new
//! events are refused (pixels still answer, `/readyz` fails), what was
//! accepted stays pending and is written once writes work again, and the
//! segments stay whole. The refusal is real: a file-size limit
//! (RLIMIT_FSIZE) on this process makes the kernel answer the store's
//! writes with EFBIG, as a full file system answers ENOSPC. The limit is
//! the whole process's, so this file holds one test.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{limit_file_size, metric, records, start, wait_for};
use trackplane::config::Driver;
use trackplane::segment::list;

fn open_segment(data_dir: &Path) -> std::path::PathBuf {
    list(&data_dir.join("segments"))
        .unwrap()
        .into_iter()
        .find(|s| s.open)
        .unwrap()
        .path
}

#[test]
fn failed_writes_refuse_new_events_and_lose_none_accepted() {
    let mut s = start(Driver::Uring, "[storage]\nflush_interval_ms = 20\n");
    let dir = s.data_dir();
    let mut sent = 0;
    let mut pixel = |s: &common::TestServer, tag: &str| {
        sent += 1;
        let r = s.get(&format!("/i?adv=demo&pid=sku-1&tag={tag}"));
        assert_eq!(r.status, 200, "pixels always answer");
    };
    for i in 0..50 {
        pixel(&s, &format!("before-{i}"));
    }
    // All of them written: a failure below then comes from an event sent
    // under the limit.
    wait_for("the first events on disk", Duration::from_secs(10), || {
        records(&dir).len() == 50
    });

    // No file may grow more than a few bytes past the open segment's size
    // now: the next block is written in part, then refused.
    let size = std::fs::metadata(open_segment(&dir)).unwrap().len();
    limit_file_size(None, Some(size + 10));
    for i in 0..50 {
        pixel(&s, &format!("during-{i}"));
    }
    wait_for(
        "the store to report failing writes",
        Duration::from_secs(10),
        || metric(&s.metrics(), "trackplane_store_failing") == 1.0,
    );
    assert_eq!(s.admin_get("/readyz").status, 503);
    pixel(&s, "refused");
    let body = r#"[{"adv":"demo","tag":"refused-batch"}]"#;
    let raw = format!(
        "POST /batch HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(s.exchange(raw.as_bytes(), 1).remove(0).status, 503);
    // Its one event counts as refused too.
    let batched = 1;
    let refused = metric(&s.metrics(), "trackplane_events_refused_total");
    assert!(refused >= 1.0, "{refused}");
    assert!(metric(&s.metrics(), "trackplane_store_errors_total") >= 1.0);
    // The part of a block that was written is cut off again.
    assert_eq!(std::fs::metadata(open_segment(&dir)).unwrap().len(), size);

    limit_file_size(None, None);
    wait_for("writes to work again", Duration::from_secs(10), || {
        metric(&s.metrics(), "trackplane_store_failing") == 0.0
    });
    assert_eq!(s.admin_get("/readyz").status, 200);
    for i in 0..20 {
        pixel(&s, &format!("after-{i}"));
    }
    let refused = metric(&s.metrics(), "trackplane_events_refused_total") as usize;

    // Every event not refused is on disk once, in whole blocks (`stop`
    // reads every segment and checks each stream's sequence has no gap).
    let stored = s.stop();
    let sent = sent + batched;
    assert_eq!(stored.len(), sent - refused, "refused {refused} of {sent}");
    let tags: Vec<&str> = stored
        .iter()
        .map(|r| r["params"]["tag"].as_str().unwrap())
        .collect();
    for i in 0..50 {
        assert!(tags.contains(&format!("before-{i}").as_str()));
    }
    for i in 0..20 {
        assert!(tags.contains(&format!("after-{i}").as_str()));
    }
    assert!(!tags.contains(&"refused"));
    // Some of the events sent while the limit held were accepted (the
    // ring took them before the store's write failed) and written later.
    assert!(tags.iter().any(|t| t.starts_with("during-")), "{tags:?}");
}
