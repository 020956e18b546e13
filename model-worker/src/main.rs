//! The `vitals-worker` binary: parse the command line, set up logging and CPU threads,
//! turn SIGTERM/SIGINT into the shutdown signal, and run the worker.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use vitals_worker::config::{Args, Config, LogFormat};
use vitals_worker::Shutdown;

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::from_args(args).context("invalid configuration")?;
    // Before any other thread exists (see its doc).
    vitals_worker::model::device::configure_cpu_threads(config.threads);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(
            listen = %config.listen,
            model_dir = %config.model_dir.display(),
            agent_socket = %config.agent_socket.display(),
            "vitals-worker starting"
        );
        let shutdown = Shutdown::new();
        tokio::spawn(on_signals(shutdown.clone()));
        vitals_worker::run(config, listener, shutdown)
            .await
            .context("vitals-worker stopped")
    })
}

/// Triggers shutdown on the first SIGTERM or SIGINT.
async fn on_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGTERM will kill without draining");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    shutdown.trigger();
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
