//! Log setup shared by both binaries: `tracing` to stderr, filtered by
//! `RUST_LOG` (default `info`), colors only on a terminal (journald gets
//! plain lines). Logs carry sentences and fields, never personal data.
//!
//! A log line that cannot be written (stderr a file on a full disk, a pipe
//! whose reader went away) is dropped: the process goes on serving and
//! keeping events. tracing-subscriber's own report of such a failure
//! prints to stderr with `eprintln!`, which panics when that fails too, so
//! it is off; a panic in the store's thread, or in one already unwinding,
//! would end the process with the events it held.

/// Installs the subscriber; call once at the start of a binary.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .init();
}

/// An error and its causes on one line, as `{:#}` prints them, but each
/// cause only when the text before does not already say it: most of this
/// crate's errors put their cause in their own message (so that a log line
/// of the error alone is whole) and also give it as their `source`.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::from_raw_os_error(98);
        let bound = crate::server::ServeError::Bind {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: io,
        };
        let e = anyhow::Error::from(bound);
        let text = super::one_line(&e);
        assert_eq!(text.matches("os error 98").count(), 1, "{text}");
        assert!(text.starts_with("cannot listen on 127.0.0.1:1: "), "{text}");
        // A cause that is not in the message is still given.
        let wrapped =
            anyhow::Error::from(std::io::Error::other("disk gone")).context("while sealing");
        assert_eq!(super::one_line(&wrapped), "while sealing: disk gone");
    }
}
