//! Log setup shared by both binaries: `tracing` to stderr, filtered by
//! `RUST_LOG` (default `info`), colors only on a terminal (journald gets
//! plain lines). Logs carry sentences and fields, never personal data.

/// Installs the subscriber; call once at the start of a binary.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
