//! The `trackplane` command: parse arguments, load config, call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use trackplane::config::{Config, Driver, Overrides};
use trackplane::server::handover::Taken;
use trackplane::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "trackplane",
    version,
    about = "Edge data plane for ad-tech tracking calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Answer, audit and record tracking calls (the default command).
    Serve(ServeArgs),
    /// Check a configuration file; names the bad key and why.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Print, follow, filter, count or verify segment files.
    Tail(TailArgs),
}

#[derive(Parser)]
struct TailArgs {
    /// Data or segments directory; default: the configured data_dir.
    dir: Option<PathBuf>,
    /// Configuration whose data_dir to read.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Keep printing new records, across segment rotation (like tail -F).
    #[arg(short, long)]
    follow: bool,
    /// Print every record, not only the last 10.
    #[arg(long)]
    from_beginning: bool,
    /// Only records received at or after TIME: Unix s or ms, RFC 3339, or an
    /// age like 15m.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Print the last N matching records.
    #[arg(short = 'n', long = "lines", value_name = "N")]
    last: Option<usize>,
    /// Only this advertiser.
    #[arg(long)]
    advertiser: Option<String>,
    /// Only this event type.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Only events with audit issues.
    #[arg(long)]
    invalid: bool,
    /// Only events with this issue code.
    #[arg(long, value_name = "CODE")]
    issue: Option<String>,
    /// Print counts by type, advertiser and issue instead of records.
    #[arg(long)]
    stats: bool,
    /// Check every CRC; one line per file; exit 1 on corruption or an unreadable file.
    #[arg(long)]
    verify: bool,
}

#[derive(Parser, Default)]
struct ServeArgs {
    /// Configuration file, merged over the embedded default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Public data address (server.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin address (server.admin_listen).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Data directory (data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Worker threads, 0 for one per core (server.workers).
    #[arg(long)]
    workers: Option<usize>,
    /// I/O driver (server.driver).
    #[arg(long, value_enum)]
    driver: Option<DriverArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DriverArg {
    Auto,
    Uring,
    Epoll,
}

fn main() -> ExitCode {
    // A process started by a restart drops what it inherited by accident
    // (its sockets come over the handover socket instead).
    let inherited = if std::env::var_os(trackplane::server::handover::ENV).is_some() {
        // SAFETY: nothing has opened a descriptor yet: this is the first
        // thing `main` does.
        #[allow(unsafe_code)]
        let closed = unsafe { trackplane::server::handover::close_inherited_descriptors() };
        closed.err()
    } else {
        None
    };
    trackplane::logging::init();
    if let Some(e) = inherited {
        tracing::warn!(error = %e, "cannot close descriptors inherited from the old process");
    }
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::CheckConfig { file } => Config::load(&file)
            .map(|_| println!("{}: ok", file.display()))
            .map_err(anyhow::Error::from),
        Command::DefaultConfig => {
            print!("{}", trackplane::config::DEFAULT_TOML);
            Ok(())
        }
        Command::Tail(args) => match tail(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackplane: {}", trackplane::logging::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs `tail`; `Ok(false)` when corruption was found (already reported).
fn tail(args: TailArgs) -> anyhow::Result<bool> {
    let dir = match args.dir {
        Some(d) => d,
        None => match &args.config {
            Some(path) => Config::load(path)?.data_dir,
            None => Config::embedded().data_dir,
        },
    };
    let now_ms = trackplane::clock::unix_ms();
    let since_ms = match &args.since {
        Some(s) => Some(trackplane::tail::parse_time(s, now_ms).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let opts = trackplane::tail::TailOptions {
        dir,
        follow: args.follow,
        from_beginning: args.from_beginning,
        last: args.last,
        filter: trackplane::tail::Filter {
            advertiser: args.advertiser,
            event_type: args.event_type,
            invalid_only: args.invalid,
            issue: args.issue,
            since_ms,
        },
        stats: args.stats,
        verify: args.verify,
        poll: std::time::Duration::from_millis(100),
        follow_for: None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut err = std::io::stderr();
    match trackplane::tail::run(&opts, &mut out, &mut err) {
        Ok(intact) => Ok(intact),
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e.into()),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        data_dir: args.data_dir,
        workers: args.workers,
        driver: args.driver.map(|d| match d {
            DriverArg::Auto => Driver::Auto,
            DriverArg::Uring => Driver::Uring,
            DriverArg::Epoll => Driver::Epoll,
        }),
        ..Default::default()
    };
    let load = |path: &Option<PathBuf>| -> anyhow::Result<Config> {
        let mut config = match path {
            Some(path) => Config::load(path)?,
            None => Config::embedded(),
        };
        config.apply(&overrides)?;
        Ok(config)
    };
    let config = load(&args.config)?;
    // The binary's path now: a package upgrade replaces the file, and a
    // restart runs the new one.
    let exe = std::env::current_exe().context("cannot locate this binary")?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR2])
        .context("cannot install signal handlers")?;
    let taken = Taken::from_env().context("cannot take over from the running server")?;
    let (server, ready) = match taken {
        Some(Taken { listeners, ready }) => {
            (Server::start_with(config, Some(listeners))?, Some(ready))
        }
        None => (Server::start(config)?, None),
    };
    if let Some(ready) = ready {
        ready
            .send()
            .context("cannot tell the old process this one serves")?;
    }
    let notifier = trackplane::server::notify::Notifier::from_env();
    for signal in signals.forever() {
        match signal {
            SIGUSR2 => {
                // Zero-downtime restart: a new process of this binary, with
                // the same arguments, takes over the listening sockets.
                let mut command = std::process::Command::new(&exe);
                command
                    .args(std::env::args_os().skip(1))
                    .stdin(std::process::Stdio::null());
                match server.hand_over(command) {
                    Ok(_) => return Ok(server.wait()?),
                    Err(e) => {
                        tracing::error!(error = %e, "restart failed; this process keeps serving")
                    }
                }
            }
            SIGHUP => {
                // Reload: an invalid file is rejected with its reason and the
                // running rules stay.
                notifier.notify("RELOADING=1");
                match load(&args.config) {
                    Ok(config) => {
                        let pending = server.reload(config);
                        if !pending.is_empty() {
                            tracing::warn!(keys = ?pending, "these changes take effect at the next restart");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %trackplane::logging::one_line(&e), "reload rejected; the running configuration stays")
                    }
                }
                notifier.notify("READY=1");
            }
            _ => {
                tracing::info!(signal, "shutting down");
                break;
            }
        }
    }
    server.shutdown();
    server.wait()?;
    Ok(())
}
