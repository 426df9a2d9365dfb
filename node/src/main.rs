use casserole_node::{
    config::{Config, LogFormat},
    fetch::MemoryBudget,
    RunningNode,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("CASSEROLE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: `kubectl logs` and log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> std::process::ExitCode {
    casserole_node::malloc::limit_arenas();
    // A hidden flag for checking dashboards and alerts: every metric name, one a line.
    if std::env::args().any(|a| a == "--print-metric-names") {
        for name in casserole_node::metric_names() {
            println!("{name}");
        }
        return std::process::ExitCode::SUCCESS;
    }
    let cfg = match Config::load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("casserole-node: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(cfg.log_format);
    if cfg.prefault_memory {
        // Before the runtime's threads start: the memory is written by the one thread there is.
        // The memory tier's share, which a busy node fills; the rest of the budget (chunks in
        // flight) is used only at peaks.
        let started = std::time::Instant::now();
        let chunk_size = cfg.chunk_size.0;
        let budget = MemoryBudget::split(cfg.max_memory_usage.0, chunk_size, cfg.readahead);
        let bytes = casserole_node::malloc::prefault(budget.tier_bytes, chunk_size);
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(bytes, ms, "memory tier's share prefaulted");
    }
    run(cfg)
}

#[tokio::main]
async fn run(cfg: Config) -> std::process::ExitCode {
    let node = match RunningNode::start(cfg).await {
        Ok(node) => node,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "could not start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    let drained = node.shutdown().await;
    tracing::info!(drained, "stopped");
    std::process::ExitCode::SUCCESS
}
