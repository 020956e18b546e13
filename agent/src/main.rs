//! `vitals-agent` binary: parses the command line, sets up logging and a small tokio
//! runtime, and hands over to the library (`run`, `status`, `inject`, `webhook`). Exit codes: 0 ok,
//! 1 runtime failure, 2 bad command line (clap's convention).

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use vitals_agent::cli::{self, Cli, Command};
use vitals_agent::config::{Config, LogFormat};
use vitals_agent::{inject, surfaces::status, Listeners};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_args(&argv).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Run(args) => match Config::try_from(*args) {
            Ok(config) => run(config),
            Err(e) => {
                eprintln!("error: {}", cli::explain(&e, &argv));
                return ExitCode::from(2);
            }
        },
        Command::Status(args) => {
            runtime().and_then(|rt| rt.block_on(status::run(&args)).map_err(Into::into))
        }
        Command::Inject(args) => inject::run(&args),
        Command::Webhook(args) => {
            init_logging(args.log_format);
            inject::webhook::run(&args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    vitals_agent::runtime().context("cannot start the tokio runtime")
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    init_logging(config.log_format);
    let listeners = Listeners::bind(&config)?;
    let rt = runtime()?;
    let shutdown = CancellationToken::new();
    rt.block_on(async {
        let signals = tokio::spawn(on_signal(shutdown.clone()));
        let result = vitals_agent::run(config, listeners, shutdown).await;
        signals.abort();
        result
    })
    .context("agent failed")?;
    // A /proc read stuck on a sick process must not keep the agent from exiting.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Cancels `shutdown` at the first SIGTERM or SIGINT.
async fn on_signal(shutdown: CancellationToken) {
    let name = vitals_agent::stop_signal().await;
    tracing::info!(signal = name, "shutdown signal received");
    shutdown.cancel();
}
