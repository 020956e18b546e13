//! vitals-worker: a BERT sentence-embedding server (candle) that reports its lifecycle to
//! the Vitals agent. The binary in `main.rs` only parses the command line and calls
//! [`run`]; tests call the same `run` with a bound port and their own [`Shutdown`].
//!
//! Threads and tasks: the HTTP server runs on the caller's tokio runtime; the model runs
//! on its own OS thread ([`startup`], [`batch`]); the reporter has its own thread
//! (vitals-proto). One [`Shutdown`] signal ends them all.

pub mod api;
pub mod batch;
pub mod config;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod startup;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use vitals_proto::{Phase, Reporter, ReporterConfig};

pub use config::Config;
pub use lifecycle::{Lifecycle, Shutdown};

/// How long to wait for the agent to hear a final phase before exiting.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long open connections get to finish their last response after the drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the worker stopped unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The model failed (phase `failed`); the reason was reported to the agent.
    #[error("worker failed: {0}")]
    Failed(String),
}

/// Runs the worker until `shutdown` is triggered (then drains and returns `Ok`) or the
/// model fails (returns [`WorkerError::Failed`] after telling the agent).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), WorkerError> {
    let mut reporter_config = ReporterConfig::new(
        &config.agent_socket,
        config.name.clone(),
        env!("CARGO_PKG_VERSION"),
    );
    reporter_config.heartbeat = config.heartbeat_interval;
    let reporter = Reporter::start(reporter_config).map_err(|source| WorkerError::Thread {
        what: "reporter",
        source,
    })?;
    let counters = reporter.counters();
    let lifecycle = Lifecycle::new(reporter);
    let metrics = metrics::Metrics::new();
    let (submitter, model_loop) =
        batch::queue(config.max_queue, config.batch, counters, metrics.clone());
    let loop_faults = Arc::clone(&model_loop.faults);
    let stop_loop = Arc::clone(&model_loop.stop);
    let loaded = Arc::new(OnceLock::new());
    let model_name = config
        .model_dir
        .file_name()
        .map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned());
    let model_thread = startup::ModelThread {
        spec_dir: config.model_dir.clone(),
        device: config.device,
        threads: config.threads,
        faults: config.load_faults,
        lifecycle: lifecycle.clone(),
        loaded: Arc::clone(&loaded),
        shutdown: shutdown.clone(),
        model_loop,
    }
    .spawn()
    .map_err(|source| WorkerError::Thread {
        what: "model",
        source,
    })?;

    let state = Arc::new(api::AppState {
        lifecycle: lifecycle.clone(),
        model_name,
        loaded,
        submitter: submitter.clone(),
        metrics,
        limits: api::ApiLimits {
            max_inputs: config.max_inputs,
            max_request_chars: config.max_request_chars,
            max_queue: config.max_queue,
            batch: config.batch,
        },
        fault_injection: config.fault_injection,
        loop_faults,
    });
    let (closing_tx, closing) = watch::channel(false);
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let server = tokio::spawn(api::serve(listener, state, closing, open_tx));

    shutdown.wait().await;
    if shutdown.exit_code() != 0 {
        let status = lifecycle.status();
        flush(&lifecycle).await;
        server.abort();
        return Err(WorkerError::Failed(status.detail));
    }

    lifecycle.set_phase(Phase::Draining, "shutting down", None);
    tracing::info!(queued = submitter.depth(), "draining");
    let deadline = Instant::now() + config.drain_timeout;
    while submitter.depth() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = submitter.depth();
    if left > 0 {
        tracing::warn!(
            left,
            "drain timeout: exiting with requests still queued or running"
        );
    }
    stop_loop.store(true, Ordering::SeqCst);
    // Stop accepting, let every connection finish its response, then close them.
    server.abort();
    let _ = server.await;
    let _ = closing_tx.send(true);
    let remaining = deadline.saturating_duration_since(Instant::now());
    let _ = tokio::time::timeout(remaining.min(CLOSE_TIMEOUT), open_rx.recv()).await;
    if left == 0 {
        // The loop exits at its next tick once stopped; do not wait on a hung one.
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::task::spawn_blocking(move || model_thread.join()),
        )
        .await;
    }
    flush(&lifecycle).await;
    tracing::info!("stopped");
    Ok(())
}

/// Gives the reporter a moment to deliver the last phase to the agent; only a short one
/// when no agent is connected (a worker running alone should exit promptly).
async fn flush(lifecycle: &Lifecycle) {
    let lifecycle = lifecycle.clone();
    let timeout = if lifecycle.reporter().is_connected() {
        FLUSH_TIMEOUT
    } else {
        FLUSH_TIMEOUT / 8
    };
    let _ = tokio::task::spawn_blocking(move || lifecycle.flush(timeout)).await;
}
