//! vitals-worker: a BERT sentence-embedding server (candle) that reports its lifecycle to
//! the Vitals agent. The binary in `main.rs` only parses the command line and calls
//! [`run`]; tests call the same `run` with a bound port and their own shutdown token.
//!
//! Threads and tasks: the HTTP server ([`server`], [`api`]) runs on the caller's tokio
//! runtime; the model runs on its own OS thread ([`startup`], [`batch`]); the reporter has
//! its own thread (vitals-proto). One shutdown root, a `CancellationToken` cancelled by
//! SIGTERM/SIGINT or by the model thread when it fails, starts the drain that [`run`]
//! drives; every wait in it is bounded, so a hung model thread cannot keep the process up.

pub mod api;
pub mod batch;
pub mod config;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod server;
pub mod startup;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vitals_proto::{Phase, Reporter, ReporterConfig};

pub use config::Config;
pub use lifecycle::Lifecycle;

/// How long the agent gets to hear the final phase. Short: the agent is on a local socket,
/// and the drain budget (delay + timeout) plus this must stay within the pod's grace.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// How long open connections get to finish their last response once the queue is empty.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How far past the drain deadline closing the connections may go when a request is stuck
/// on a hung model loop.
const CLOSE_PAST_DEADLINE: Duration = Duration::from_millis(500);

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

/// Runs the worker until `shutdown` is cancelled, then drains (SPEC §1 `draining`:
/// readiness fails at once, requests are admitted for `--drain-delay`, the queue empties
/// within `--drain-timeout`) and returns `Ok`; or, when the model fails (it cancels
/// `shutdown` itself after reporting `failed`), closes the server and returns
/// [`WorkerError::Failed`].
///
/// The caller's runtime must not wait for the model thread either: it may be hung (that is
/// what Vitals detects); the binary uses `Runtime::shutdown_timeout`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
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

    let depth = submitter.depth_gauge();
    let state = Arc::new(api::AppState {
        lifecycle: lifecycle.clone(),
        model_name,
        loaded,
        submitter,
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
    let close = CancellationToken::new();
    let server = tokio::spawn(server::serve(listener, state, close.clone(), CLOSE_TIMEOUT));

    shutdown.cancelled().await;
    if lifecycle.status().phase == Phase::Failed {
        close.cancel();
        flush(&lifecycle).await;
        return Err(WorkerError::Failed(lifecycle.status().detail));
    }
    drain(&lifecycle, &config, &depth, &close, server, &model_thread).await;
    Ok(())
}

/// The drain, from the moment `shutdown` is cancelled (SPEC §1 `draining`):
/// 1. report `draining` at once: the agent fails readiness, so endpoints stop routing here;
/// 2. keep admitting new requests for `drain_delay`, while kube-proxy and ingresses catch up;
/// 3. refuse new requests (503 `draining`) and wait until the queue is empty (woken by the
///    last request's slot leaving [`batch::QueueDepth`]), at most until the deadline
///    `drain_delay + drain_timeout` after the signal;
/// 4. close connections once each has finished its response, within [`CLOSE_TIMEOUT`] but
///    at most [`CLOSE_PAST_DEADLINE`] past the deadline (a request stuck on a hung loop
///    must not hold the exit);
/// 5. leave the model thread behind if it is still busy (it may be hung: that is what
///    Vitals detects), and give the agent [`FLUSH_TIMEOUT`] to hear the last phase.
async fn drain(
    lifecycle: &Lifecycle,
    config: &Config,
    depth: &batch::QueueDepth,
    close: &CancellationToken,
    server: tokio::task::JoinHandle<()>,
    model_thread: &std::thread::JoinHandle<()>,
) {
    let signalled = Instant::now();
    let deadline = signalled + config.drain_delay + config.drain_timeout;
    lifecycle.set_phase(Phase::Draining, "shutting down", None);
    tracing::info!(delay = ?config.drain_delay, queued = depth.get(), "draining: still accepting for the drain delay");
    tokio::time::sleep(config.drain_delay).await;

    lifecycle.stop_accepting();
    if tokio::time::timeout_at(deadline.into(), depth.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            left = depth.get(),
            "drain timeout: exiting with requests still queued or running"
        );
    }

    close.cancel();
    let left_of_budget = deadline.saturating_duration_since(Instant::now());
    let close_within = CLOSE_TIMEOUT.min(left_of_budget.max(CLOSE_PAST_DEADLINE));
    if tokio::time::timeout(close_within, server).await.is_err() {
        tracing::warn!("connections still open at the drain deadline");
    }

    if model_thread.is_finished() {
        tracing::debug!("model loop ended");
    } else {
        tracing::warn!("model thread still busy at exit (hung?); not waiting for it");
    }
    flush(lifecycle).await;
    tracing::info!(took = ?signalled.elapsed(), "stopped");
}

/// Gives the reporter a moment to deliver the last phase to the agent, on a plain thread:
/// a blocking-pool task would make the runtime wait for it at shutdown.
async fn flush(lifecycle: &Lifecycle) {
    let lifecycle = lifecycle.clone();
    let (done, flushed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("flush".into())
        .spawn(move || {
            let _ = done.send(lifecycle.flush(FLUSH_TIMEOUT));
        });
    if spawned.is_ok() {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, flushed).await;
    }
}
