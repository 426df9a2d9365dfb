//! `casserole-churn`: the churn scenario (see `casserole_tests::churn`) for the benchmark
//! harness, longer than the CI run and with release binaries.
//!
//! ```text
//! CASSEROLE_NODE_BIN=target-bench/release/casserole-node casserole-churn --seconds 60
//! ```
//! Prints the report as a markdown table (also to `--out`); exits 1 when a wrong body, a client
//! error on a node that stayed up, or upstream bytes over the bound were seen.

use std::{path::PathBuf, time::Duration};

use casserole_tests::churn::{run, ChurnConfig};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "casserole-churn",
    about = "Churn soak of a local Casserole cluster"
)]
struct Args {
    /// How long clients download while membership churns (at least 10).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds between membership events (kill -9, restart, join, leave in turn).
    #[arg(long, default_value_t = 3)]
    event_every: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Write the markdown report here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.seconds < 10 || args.event_every == 0 {
        eprintln!("casserole-churn: --seconds must be at least 10 and --event-every at least 1");
        return std::process::ExitCode::from(2);
    }
    let cfg = ChurnConfig {
        duration: Duration::from_secs(args.seconds),
        event_every: Duration::from_secs(args.event_every),
        clients: args.clients,
        objects: 12,
        object_size: 32 << 20,
        ..ChurnConfig::ci()
    };
    let report = run(cfg).await;
    let mut text = report.table();
    let ok = report.wrong_bodies == 0
        && report.client_errors == 0
        && report.upstream_bytes <= report.bound_bytes;
    if let Some(e) = &report.first_error {
        text.push_str(&format!("\nfirst error: {e}\n"));
    }
    print!("{text}");
    if let Some(out) = &args.out {
        if let Err(e) = std::fs::write(out, &text) {
            eprintln!("casserole-churn: writing {}: {e}", out.display());
        }
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!(
            "casserole-churn: FAILED (wrong bodies, client errors or amplification over the bound)"
        );
        std::process::ExitCode::FAILURE
    }
}
