//! Loading, merging, validation and overrides of the configuration.

use super::*;

fn err(text: &str) -> String {
    Config::from_toml_str(text, "test.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn embedded_default_has_the_documented_values() {
    let c = Config::embedded();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9100");
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    for t in [
        "impression",
        "click",
        "page_view",
        "view_item",
        "add_to_cart",
        "purchase",
    ] {
        assert!(c.event_types.contains_key(t), "{t}");
    }
    let p = &c.event_types["purchase"];
    assert_eq!(p.required, ["order_id", "value", "currency", "pid"]);
    assert_eq!(p.params["value"].format, Format::Decimal);
    assert_eq!(p.params["currency"].format, Format::Currency);
    assert!(p.params["pid"].list);
    assert_eq!(c.catalog_dir(), PathBuf::from("./data/catalogs"));
    assert_eq!((c.server.wake_batch, c.server.wake_linger_us), (32, 200));
    assert_eq!(c.server.wake_batch_busy_percent, 90);
    assert_eq!(c.server.audit_batch, 0);
    assert!(c.server.multishot_recv);
    assert_eq!(
        c.server.view_memory_bytes,
        crate::view::DEFAULT_MEMORY_BYTES
    );
    assert_eq!(c.server.background_class, BackgroundClass::Idle);
}

#[test]
fn background_class_takes_idle_or_normal_only() {
    let c = Config::from_toml_str("[server]\nbackground_class = \"idle\"\n", "t").unwrap();
    assert_eq!(c.server.background_class, BackgroundClass::Idle);
    assert!(err("[server]\nbackground_class = \"batch\"\n").contains("server.background_class"));
}

#[test]
fn a_file_overrides_single_keys_and_keeps_the_rest() {
    let c = Config::from_toml_str("[server]\nworkers = 3\n", "t").unwrap();
    assert_eq!(c.server.workers, 3);
    assert_eq!(c.server.max_body_bytes, 1048576);
    assert!(c.event_types.contains_key("purchase"));
}

#[test]
fn an_event_type_in_a_file_replaces_that_type_only() {
    let text = "[event_types.purchase]\ndurability = 'sync'\nrequired = ['order_id']\n[event_types.signup]\n";
    let c = Config::from_toml_str(text, "t").unwrap();
    assert_eq!(c.event_types["purchase"].required, ["order_id"]);
    assert_eq!(c.event_types["purchase"].durability, Durability::Sync);
    assert!(
        c.event_types["purchase"].params.is_empty(),
        "not mixed with the default"
    );
    assert!(c.event_types.contains_key("signup"));
    assert!(
        c.event_types.contains_key("view_item"),
        "other defaults stay"
    );
}

#[test]
fn advertisers_in_a_file_replace_the_defaults_whole() {
    let c = Config::from_toml_str("[advertisers.shop]\n", "t").unwrap();
    assert_eq!(c.advertisers.keys().collect::<Vec<_>>(), ["shop"]);
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let e = err("[server]\nmax_body_bytez = 3\n");
    assert!(e.contains("test.toml: key `server.max_body_bytez`"), "{e}");
}

#[test]
fn wrong_type_is_named_with_its_path() {
    let e = err("[server]\nworkers = \"two\"\n");
    assert!(e.contains("key `server.workers`"), "{e}");
}

#[test]
fn syntax_error_names_file_and_line() {
    let e = err("[server\n");
    assert!(e.starts_with("test.toml:") && e.contains("line 1"), "{e}");
}

#[test]
fn invalid_values_name_their_key() {
    assert!(err("[server]\nring_bytes = 1000\n").contains("`server.ring_bytes`"));
    assert!(err("[server]\nmax_headers = 0\n").contains("`server.max_headers`"));
    assert!(err("[routes]\npixel_event = 'nope'\n").contains("`routes.pixel_event`"));
    assert!(err("[advertisers.a]\nredirect_hosts = ['*']\n")
        .contains("`advertisers.a.redirect_hosts[0]`"));
    assert!(err("[event_types.impression]\nrequired = ['x y']\n")
        .contains("`event_types.impression.required[0]`"));
    let e = err("[event_types.impression.params.v]\nformat = 'enum'\n");
    assert!(
        e.contains("`event_types.impression.params.v.values`"),
        "{e}"
    );
    assert!(
        err("[server]\nlisten='127.0.0.1:1'\nadmin_listen='127.0.0.1:1'\n")
            .contains("`server.admin_listen`")
    );
    assert!(err("node_id = 'a b'\n").contains("`node_id`"));
    assert!(err("[server]\nwake_batch = 5000\n").contains("`server.wake_batch`"));
    assert!(err("[server]\nwake_batch_busy_percent = 101\n")
        .contains("`server.wake_batch_busy_percent`"));
    assert!(
        err("[server]\nwake_batch_busy_percent = -1\n").contains("server.wake_batch_busy_percent")
    );
    assert!(err("[server]\naudit_batch = 5000\n").contains("`server.audit_batch`"));
    assert!(err("[server]\nview_memory_bytes = 1000\n").contains("`server.view_memory_bytes`"));
    assert!(err("[server]\nwake_linger_us = 10001\n").contains("`server.wake_linger_us`"));
    assert!(err("[server]\nwake_linger_us = -1\n").contains("server.wake_linger_us"));
    // A linger too short to pay for itself is refused, unless batching is
    // off anyway (wake_batch 0 or 1); 0 and the floor itself are fine.
    for short in [1, 10, 25, 49] {
        let e = err(&format!("[server]\nwake_linger_us = {short}\n"));
        assert!(
            e.contains("`server.wake_linger_us`") && e.contains("at least 50"),
            "{e}"
        );
    }
    for ok in [
        "[server]\nwake_linger_us = 0\n",
        "[server]\nwake_linger_us = 50\n",
        "[server]\nwake_batch = 0\nwake_linger_us = 10\n",
        "[server]\nwake_batch = 1\nwake_linger_us = 10\n",
    ] {
        assert!(Config::from_toml_str(ok, "t").is_ok(), "{ok}");
    }
}

/// librdkafka properties are checked as the shipper would set them, so
/// `check-config` refuses what the shipper would refuse at start: an
/// unknown property and a value it cannot take, each named.
#[test]
fn kafka_properties_are_checked_by_name() {
    let e = err("[shipper.kafka]\n\"bogus.key\" = \"1\"\n");
    assert!(
        e.contains("`shipper.kafka.\"bogus.key\"`") && e.contains("No such configuration property"),
        "{e}"
    );
    let e = err("[shipper.kafka]\n\"linger.ms\" = \"soon\"\n");
    assert!(
        e.contains("`shipper.kafka.\"linger.ms\"`") && e.contains("Invalid value"),
        "{e}"
    );
    let ok = "[shipper.kafka]\n\"linger.ms\" = \"20\"\n\"security.protocol\" = \"plaintext\"\n";
    assert!(Config::from_toml_str(ok, "t").is_ok());
}

#[test]
fn overrides_apply_and_validate() {
    let mut c = Config::embedded();
    let o = Overrides {
        workers: Some(2),
        data_dir: Some("/tmp/x".into()),
        ..Default::default()
    };
    c.apply(&o).unwrap();
    assert_eq!(c.server.workers, 2);
    assert_eq!(c.catalog_dir(), PathBuf::from("/tmp/x/catalogs"));
}

/// An empty data directory is refused, from the file and from the command
/// line alike, rather than taken as whatever directory the process has.
#[test]
fn an_empty_data_dir_is_refused() {
    let e = err("data_dir = \"\"\n");
    assert!(e.contains("key `data_dir`: must name a directory"), "{e}");
    let mut c = Config::embedded();
    let o = Overrides {
        data_dir: Some("".into()),
        ..Default::default()
    };
    let e = c.apply(&o).unwrap_err().to_string();
    assert!(
        e.contains("`data_dir`") && e.contains("command line"),
        "{e}"
    );
}

/// Every error names where it was found: a value out of range names the
/// file as a wrong type does, and an unreadable file's error is said once
/// as the binaries print it.
#[test]
fn errors_name_their_file_once() {
    let e = err("[storage]\nzstd_level = 0\n");
    assert!(
        e.starts_with("test.toml: key `storage.zstd_level`: "),
        "{e}"
    );
    let missing = std::path::Path::new("/nonexistent/trackplane.toml");
    let e = anyhow::Error::from(Config::load(missing).unwrap_err());
    let text = crate::logging::one_line(&e);
    assert!(text.starts_with("/nonexistent/trackplane.toml: "), "{text}");
    assert_eq!(text.matches("os error 2").count(), 1, "{text}");
}

/// A value of the wrong type is one line naming its key once: the TOML
/// library's own "in `key`" line repeated what the error already said.
#[test]
fn a_wrong_type_names_its_key_once() {
    let e = err("[server]\nworkers = \"two\"\n");
    assert_eq!(
        e,
        "test.toml: key `server.workers`: invalid type: string \"two\", expected usize"
    );
    let e = err("[server]\nlisten = \"127.0.0.1:99999\"\n");
    assert_eq!(e.matches("server.listen").count(), 1, "{e}");
    assert!(!e.contains('\n'), "{e}");
}
