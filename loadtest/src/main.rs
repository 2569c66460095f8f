//! `loadtest`: an open-loop HTTP load generator with wrk2's semantics, for
//! trackplane and any other HTTP server (nginx, the bare responder).
//!
//! ```text
//! loadtest setup --dir D            # catalogs + trackplane config for the mix
//! loadtest run --addr 127.0.0.1:8080 --rate 50000 --duration 10 [--json]
//!               [--kinds all|impressions]   # the whole mix, or pixels only
//! loadtest run --addr 127.0.0.1:8080 --addr 127.0.0.1:8081 ...
//!               # both servers at once, each at --rate: one report each
//! loadtest run ... --trace FILE     # also each answer: server, due, latency
//! loadtest run ... --stall-us 500   # also the tail outside the machine's stalls
//! loadtest wrk2-script --out mix.lua  # the same mix for wrk2 (`wrk2.rs`)
//! wrk2 -L ... | loadtest wrk2-report --rate R --connections C   # its report as run's JSON
//! ```

mod engine;
mod mix;
mod stalls;
mod wrk2;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadtest", about = "Open-loop HTTP load with wrk2 semantics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write catalogs and a trackplane config matching the mix.
    Setup {
        /// Directory to write into (catalogs/ and trackplane.toml).
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        mix: MixArgs,
    },
    /// Send load and report latency and throughput.
    Run {
        /// Server address (loopback only). Given more than once, every
        /// server takes --rate over --connections of its own at the same
        /// time, and each gets its own report, in the order given.
        #[arg(long, required = true)]
        addr: Vec<SocketAddr>,
        /// Requests per second to each server; 0 means closed loop (as fast
        /// as answers come).
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Connections, each with one request outstanding.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds measured.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Seconds of load before measuring.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write each measured answer to FILE, one line each: the
        /// server's index (in --addr order), its due time on
        /// CLOCK_MONOTONIC and its latency, both in ns.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
        /// Also report the tail outside stalls: spans in which some answer
        /// waited at least this many µs, whose answers are left out
        /// (`stalls.rs`). 0: no split.
        #[arg(long, value_name = "US", default_value_t = 0)]
        stall_us: u64,
        #[command(flatten)]
        mix: MixArgs,
    },
    /// Write the mix as a wrk2 Lua script: the requests `run` sends, in turn.
    Wrk2Script {
        /// The script to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        mix: MixArgs,
    },
    /// Read wrk2's report (run with -L) on standard input and print it as
    /// `run --json` does.
    Wrk2Report {
        /// The rate wrk2 was given (-R).
        #[arg(long)]
        rate: u64,
        /// The connections wrk2 was given (-c).
        #[arg(long)]
        connections: usize,
    },
}

#[derive(Args, Clone, Copy)]
struct MixArgs {
    /// Advertisers in the mix.
    #[arg(long, default_value_t = 50)]
    advertisers: usize,
    /// Products per advertiser catalog.
    #[arg(long, default_value_t = 20_000)]
    products: usize,
    /// Share of broken tags, in percent.
    #[arg(long, default_value_t = 10)]
    invalid_percent: u64,
    /// Seed of the mix.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Which calls to send.
    #[arg(long, value_enum, default_value_t = mix::Kinds::All)]
    kinds: mix::Kinds,
}

impl MixArgs {
    fn spec(self) -> mix::MixSpec {
        mix::MixSpec {
            advertisers: self.advertisers.max(1),
            products: self.products.max(1),
            invalid_percent: self.invalid_percent.min(100),
            seed: self.seed,
            kinds: self.kinds,
        }
    }
}

/// Requests of the mix a run cycles through.
const MIX_REQUESTS: usize = 10_000;

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Setup { dir, mix } => match mix::write_setup(&dir, &mix.spec()) {
            Ok(()) => {
                println!(
                    "wrote {}/catalogs and {}/trackplane.toml",
                    dir.display(),
                    dir.display()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadtest: {}: {e}", dir.display());
                std::process::ExitCode::FAILURE
            }
        },
        Command::Wrk2Script { out, mix } => {
            let requests = mix::requests(&mix.spec(), MIX_REQUESTS, "edge.example");
            match std::fs::write(&out, wrk2::script(&requests)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadtest: {}: {e}", out.display());
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Wrk2Report { rate, connections } => {
            let mut text = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                eprintln!("loadtest: standard input: {e}");
                return std::process::ExitCode::FAILURE;
            }
            match wrk2::report(&text) {
                Ok(r) => {
                    println!("{}", r.json(rate, connections));
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadtest: wrk2's report: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            addr,
            rate,
            connections,
            duration,
            warmup,
            json,
            trace,
            stall_us,
            mix,
        } => {
            if let Some(addr) = addr.iter().find(|a| !a.ip().is_loopback()) {
                eprintln!("loadtest: {addr} is not a loopback address; refusing to send load");
                return std::process::ExitCode::FAILURE;
            }
            let duration = Duration::from_secs(duration.clamp(1, 600));
            let requests = mix::requests(&mix.spec(), MIX_REQUESTS, "edge.example");
            match engine::run(
                &addr,
                connections.clamp(1, 10_000),
                rate,
                duration,
                &requests,
                Duration::from_secs(warmup.min(60)),
                trace.is_some() || stall_us > 0,
            ) {
                Ok(reports) => {
                    if let Some(path) = &trace {
                        if let Err(e) = write_trace(path, &reports) {
                            eprintln!("loadtest: {}: {e}", path.display());
                            return std::process::ExitCode::FAILURE;
                        }
                    }
                    for (a, r) in addr.iter().zip(&reports) {
                        if addr.len() > 1 && !json {
                            println!("{a}:");
                        }
                        let split =
                            (stall_us > 0).then(|| stalls::split(&r.trace, stall_us * 1_000));
                        print_report(r, rate, connections, json, split.as_ref());
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadtest: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn write_trace(path: &std::path::Path, reports: &[engine::Report]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (server, r) in reports.iter().enumerate() {
        for (due, latency) in &r.trace {
            writeln!(out, "{server} {due} {latency}")?;
        }
    }
    out.flush()
}

fn print_report(
    r: &engine::Report,
    rate: u64,
    connections: usize,
    json: bool,
    split: Option<&stalls::Split>,
) {
    let secs = r.elapsed.as_secs_f64();
    let achieved = r.completed as f64 / secs;
    let us = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
    let max = r.latency.max() as f64 / 1000.0;
    let measured = r.trace.len() as u64;
    let outside = |s: &stalls::Split, q: f64| s.outside.value_at_quantile(q) as f64 / 1000.0;
    if json {
        let split = split.map_or(String::new(), |s| {
            format!(
                ",\"stalls\":{},\"stalled_pct\":{:.3},\"p99_outside_stalls_us\":{:.1},\"p999_outside_stalls_us\":{:.1}",
                s.stalls,
                s.left_out_pct(measured),
                outside(s, 0.99),
                outside(s, 0.999)
            )
        });
        println!(
            "{{\"target_rate\":{rate},\"connections\":{connections},\"seconds\":{secs:.1},\"sent\":{},\"completed\":{},\"achieved_rate\":{achieved:.0},\"ok\":{},\"other_status\":{},\"errors\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"p9999_us\":{:.1},\"max_us\":{max:.1}{split}}}",
            r.sent, r.completed, r.status_2xx_3xx, r.status_other, r.errors, us(0.5), us(0.9), us(0.99), us(0.999), us(0.9999)
        );
    } else {
        println!("target {rate}/s over {connections} connections for {secs:.1}s");
        println!(
            "achieved {achieved:.0}/s  completed {}  2xx/3xx {}  other {}  errors {}",
            r.completed, r.status_2xx_3xx, r.status_other, r.errors
        );
        println!("latency from intended send time (µs):");
        println!(
            "  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {max:.1}",
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            us(0.9999)
        );
        if let Some(s) = split {
            println!(
                "outside {} stalls ({:.2}% of answers due in them): p99 {:.1}  p99.9 {:.1}",
                s.stalls,
                s.left_out_pct(measured),
                outside(s, 0.99),
                outside(s, 0.999)
            );
        }
    }
}
