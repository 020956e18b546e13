//! The `vitals-worker` binary: parse the command line, set up logging and CPU threads,
//! turn SIGTERM/SIGINT into the shutdown root, and run the worker. Exit codes, as the
//! agent's: 0 ok, 1 runtime failure, 2 bad command line.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory as _, Parser as _};
use tokio_util::sync::CancellationToken;
use vitals_worker::config::{Args, Config, LogFormat};

/// How long tasks still running after the drain (a connection stuck on a hung model) may
/// hold the process once `run` has returned.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    let args = Args::try_parse_from(&argv)
        .map_err(|e| vitals_proto::env::name_the_variable(e, &Args::command(), &argv))
        .unwrap_or_else(|e| e.exit());
    init_tracing(args.log_format);
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            let message = format!("invalid configuration: {e}");
            let message =
                vitals_proto::env::with_variable(message, &Args::command(), &argv, Some(e.flag()));
            tracing::error!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    // Before any other thread exists (see its doc).
    vitals_worker::model::device::configure_cpu_threads(config.threads);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(
            listen = %config.listen,
            model_dir = %config.model_dir.display(),
            agent_socket = %config.agent_socket.display(),
            "vitals-worker starting"
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signals(shutdown.clone()));
        vitals_worker::run(config, listener, shutdown)
            .await
            .context("vitals-worker stopped")
    });
    // Never wait on the model thread or a connection stuck behind it: a hung loop is what
    // the agent exists to catch, and it must not also turn SIGTERM into SIGKILL.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// Cancels the shutdown root on the first SIGTERM or SIGINT.
async fn on_signals(shutdown: CancellationToken) {
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
    shutdown.cancel();
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
