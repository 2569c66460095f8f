//! The `trackplane-shipper` command: parse arguments, load config, ship.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use trackplane::bell::Bell;
use trackplane::config::{Config, Overrides};
use trackplane::server::admin::{self, Reply};
use trackplane::shipper::Shipper;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Forwards trackplane's segment files to Kafka.
#[derive(Parser)]
#[command(name = "trackplane-shipper", version)]
struct Args {
    /// Configuration file, merged over the embedded default (its shipper.* keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers, host:port[,host:port...] (shipper.brokers).
    #[arg(long)]
    brokers: Option<String>,
    /// Data directory whose segments to ship (data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Admin address (shipper.admin_listen).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    trackplane::logging::init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackplane-shipper: {}", trackplane::logging::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    };
    config.apply(&Overrides {
        data_dir: args.data_dir,
        brokers: args.brokers,
        shipper_admin_listen: args.admin_listen,
        ..Default::default()
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install signal handlers")?;
    }
    let admin_addr = config.shipper.admin_listen;
    let listener = std::net::TcpListener::bind(admin_addr)
        .with_context(|| format!("cannot listen on {admin_addr}"))?;
    let bound = listener.local_addr()?;
    let brokers = config.shipper.brokers.clone();
    let data_dir = config.data_dir.clone();
    let mut shipper = Shipper::new(config).context("cannot create the Kafka producer")?;
    let metrics = shipper.metrics.clone();
    let router: admin::Router = Box::new(move |target| match admin::split_target(target).0 {
        "/metrics" => Reply::metrics(metrics.render()),
        // Alive: the process answers.
        "/healthz" => Reply::text("200 OK", "ok\n"),
        // Ready: Kafka answers (`broker_up`).
        "/readyz" if metrics.broker_up.load(Ordering::Relaxed) == 1 => {
            Reply::text("200 OK", "ready\n")
        }
        "/readyz" => Reply::text("503 Service Unavailable", "brokers unreachable\n"),
        _ => Reply::not_found(),
    });
    let admin_stop = Arc::new(Bell::new().context("cannot create the admin's stop bell")?);
    let admin = admin::spawn(listener, admin_stop.clone(), router)?;
    tracing::info!(admin = %bound, brokers = %brokers, data_dir = %data_dir.display(), "trackplane-shipper running");
    shipper.run(&stop);
    admin_stop.ring();
    let _ = admin.join();
    tracing::info!("trackplane-shipper stopped");
    Ok(())
}
