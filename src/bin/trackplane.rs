//! The `trackplane` command: parse arguments, load config, call the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use signal_hook::consts::{SIGINT, SIGTERM};
use trackplane::config::{Config, Driver, Overrides};
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    };
    config.apply(&Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        data_dir: args.data_dir,
        workers: args.workers,
        driver: args.driver.map(|d| match d {
            DriverArg::Auto => Driver::Auto,
            DriverArg::Uring => Driver::Uring,
            DriverArg::Epoll => Driver::Epoll,
        }),
    })?;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    let server = Server::start(config)?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    server.shutdown();
    server.wait()?;
    Ok(())
}
