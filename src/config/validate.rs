//! `Config::validate`: what types alone cannot check (names, ranges,
//! references between keys, Kafka properties), each error naming its key
//! and why.

use super::{valid_name, Config, ConfigError, MIN_WAKE_LINGER_US};

impl Config {
    /// Checks what types alone can't: names, ranges, references between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sh = &self.shipper;
        if sh.brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err(invalid(
                "shipper.brokers",
                "must be host:port[,host:port...]",
            ));
        }
        if !valid_topic(&sh.default_topic) {
            return Err(invalid(
                "shipper.default_topic",
                "is not a Kafka topic name",
            ));
        }
        for (event, topic) in &sh.topics {
            if !valid_topic(topic) {
                return Err(invalid(
                    format!("shipper.topics.{event}"),
                    "is not a Kafka topic name",
                ));
            }
        }
        // librdkafka checks a property's name and value as it is set,
        // before any client exists: so check-config catches what the
        // shipper would refuse at start.
        for (k, v) in &sh.kafka {
            let mut one = rdkafka::ClientConfig::new();
            one.set(k, v);
            if let Err(e) = one.create_native_config() {
                let why = match e {
                    rdkafka::error::KafkaError::ClientConfig(_, why, _, _) => why,
                    e => e.to_string(),
                };
                return Err(invalid(format!("shipper.kafka.\"{k}\""), why));
            }
        }
        if !(1..=5).contains(&sh.max_requests_in_flight) {
            return Err(invalid(
                "shipper.max_requests_in_flight",
                "must be 1 to 5 (the idempotent producer's limit)",
            ));
        }
        if sh.max_in_flight == 0 || sh.watermark_interval_ms == 0 || sh.checkpoint_interval_ms == 0
        {
            return Err(invalid("shipper", "max_in_flight, watermark_interval_ms and checkpoint_interval_ms must be greater than 0"));
        }
        let s = &self.server;
        if s.listen == s.admin_listen && s.listen.port() != 0 {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen: the admin port is never the public one",
            ));
        }
        let positive = [
            (
                "server.max_connections_per_worker",
                s.max_connections_per_worker,
            ),
            ("server.max_request_line_bytes", s.max_request_line_bytes),
            ("server.max_headers", s.max_headers),
            ("server.max_params", s.max_params),
            ("server.header_timeout_ms", s.header_timeout_ms as usize),
            ("server.body_timeout_ms", s.body_timeout_ms as usize),
            ("server.idle_timeout_ms", s.idle_timeout_ms as usize),
            ("server.send_timeout_ms", s.send_timeout_ms as usize),
            (
                "catalogs.reload_interval_ms",
                self.catalogs.reload_interval_ms as usize,
            ),
            (
                "storage.flush_interval_ms",
                self.storage.flush_interval_ms as usize,
            ),
            (
                "storage.sync_interval_ms",
                self.storage.sync_interval_ms as usize,
            ),
            (
                "storage.sync_timeout_ms",
                self.storage.sync_timeout_ms as usize,
            ),
            (
                "storage.segment_max_age_s",
                self.storage.segment_max_age_s as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        let bounded: [(&str, u64, u64, &str); 4] = [
            (
                "server.wake_batch",
                s.wake_batch.into(),
                4096,
                "must be at most 4096 (a worker's ring holds 4096 completions)",
            ),
            (
                "server.audit_batch",
                s.audit_batch.into(),
                1024,
                "must be at most 1024 (each waiting event keeps its parameters)",
            ),
            (
                "server.wake_batch_busy_percent",
                s.wake_batch_busy_percent.into(),
                100,
                "must be at most 100 (a share of one core)",
            ),
            (
                "server.wake_linger_us",
                s.wake_linger_us,
                10_000,
                "must be at most 10000 (10 ms): every request may wait this long",
            ),
        ];
        for (key, value, max, message) in bounded {
            if value > max {
                return Err(invalid(key, message));
            }
        }
        // Measured on the reference VM (bench/results/linger-*.md): a
        // 1-10 µs linger cost 1.4-2.8x the CPU of no batching (at 1 µs
        // the worker hardly slept, busy in the kernel's wait); 25 µs
        // still 1.07x at 50k/s (tails-20261201-0220.md). 50 µs costs less
        // than no batching at 50k/s (0.91x and 0.98x in two races) and
        // more at 20k/s (1.11x, tails-20261201-0226.md): a choice for busy
        // nodes.
        if s.wake_batch > 1 && (1..MIN_WAKE_LINGER_US).contains(&s.wake_linger_us) {
            return Err(invalid(
                "server.wake_linger_us",
                format!(
                    "must be 0 (no batching) or at least {MIN_WAKE_LINGER_US}: \
                     a shorter linger costs more CPU than no batching"
                ),
            ));
        }
        if s.workers > 1024 {
            return Err(invalid("server.workers", "must be at most 1024"));
        }
        if s.max_header_bytes < s.max_request_line_bytes {
            return Err(invalid(
                "server.max_header_bytes",
                "must be at least server.max_request_line_bytes",
            ));
        }
        let st = &self.storage;
        if st.block_max_bytes < 1024 || st.block_max_bytes > 16 << 20 {
            return Err(invalid(
                "storage.block_max_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if st.segment_max_bytes < st.block_max_bytes as u64 {
            return Err(invalid(
                "storage.segment_max_bytes",
                "must be at least storage.block_max_bytes",
            ));
        }
        if !(-7..=19).contains(&st.zstd_level) || st.zstd_level == 0 {
            return Err(invalid(
                "storage.zstd_level",
                "must be between -7 and 19, and not 0",
            ));
        }
        if st.disk_budget_bytes != 0 && st.disk_budget_bytes < 2 * st.segment_max_bytes {
            return Err(invalid(
                "storage.disk_budget_bytes",
                "must be 0 (no limit) or at least twice storage.segment_max_bytes",
            ));
        }
        let max_headers = crate::http::request::MAX_HEADERS;
        if s.max_headers > max_headers {
            return Err(invalid(
                "server.max_headers",
                format!("must be at most {max_headers}"),
            ));
        }
        if s.max_params > 1024 {
            return Err(invalid("server.max_params", "must be at most 1024"));
        }
        if s.view_memory_bytes < 1 << 20 {
            return Err(invalid(
                "server.view_memory_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if !s.ring_bytes.is_power_of_two() || s.ring_bytes < 65536 {
            return Err(invalid(
                "server.ring_bytes",
                "must be a power of two of at least 65536",
            ));
        }
        // An empty path would mean whatever directory the process was
        // started in, which under systemd is `/`.
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "data_dir",
                "must name a directory (\".\" for the current one)",
            ));
        }
        if !self.node_id.is_empty() && !valid_name(&self.node_id) {
            return Err(invalid(
                "node_id",
                "must be letters, digits, '.', '_' or '-', at most 64 bytes",
            ));
        }
        let p = &self.params;
        let names = [
            ("params.advertiser", &p.advertiser),
            ("params.event_type", &p.event_type),
            ("params.products", &p.products),
            ("params.user", &p.user),
            ("params.redirect", &p.redirect),
            ("params.signature", &p.signature),
        ];
        for (key, name) in names {
            if !valid_name(name) {
                return Err(invalid(key, "must be a non-empty parameter name"));
            }
        }
        for (name, ev) in &self.event_types {
            if !valid_name(name) {
                return Err(invalid(
                    format!("event_types.{name}"),
                    "is not a valid event type name",
                ));
            }
            ev.validate(&format!("event_types.{name}"))
                .map_err(|(key, why)| invalid(key, why))?;
        }
        for (key, event) in [
            ("routes.pixel_event", &self.routes.pixel_event),
            ("routes.click_event", &self.routes.click_event),
            ("routes.beacon_event", &self.routes.beacon_event),
        ] {
            if !self.event_types.contains_key(event) {
                return Err(invalid(
                    key,
                    format!("names `{event}`, which is not in event_types"),
                ));
            }
        }
        for (name, adv) in &self.advertisers {
            if !valid_name(name) {
                return Err(invalid(
                    format!("advertisers.{name}"),
                    "is not a valid advertiser id",
                ));
            }
            for (i, host) in adv.redirect_hosts.iter().enumerate() {
                if let Err(why) = crate::audit::redirect::HostRule::parse(host) {
                    return Err(invalid(
                        format!("advertisers.{name}.redirect_hosts[{i}]"),
                        why,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An error naming `key`.
fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Kafka topic names: letters, digits, '.', '_', '-', at most 249 bytes.
fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
