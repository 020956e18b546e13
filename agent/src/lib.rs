//! `vitals-agent`: the pod's single probe port. Workers push their state over a Unix
//! socket, the agent adds what /proc shows, and answers the kubelet's probes and
//! Prometheus' scrapes from memory, at once, whatever the workers do.
//!
//! State flows one way: [`socket`] and [`procwatch`] → [`registry`] → [`verdict`] →
//! [`http`], [`metrics`], [`ticker`] and [`status`]. [`run`] wires them; the binary and
//! the integration tests call the same `run`.

pub mod config;
pub mod http;
pub mod inject;
pub mod metrics;
pub mod procwatch;
pub mod registry;
pub mod socket;
pub mod status;
pub mod ticker;
pub mod upstream;
pub mod verdict;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::procwatch::{LiveProc, ProcSource};
use crate::registry::State;
use crate::socket::{SocketError, SocketListener};
use crate::ticker::TransitionLog;
use crate::verdict::{evaluate, AgentInput, Thresholds, Verdicts};

/// This agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// State shared by every task of a running agent.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// Verdict bounds.
    pub thresholds: Thresholds,
    /// When the agent started (monotonic).
    pub started_at: Instant,
    /// When the agent started (wall clock, for `/status`).
    pub started_wall: SystemTime,
    /// Nanoseconds after `started_at` of the ticker's last run.
    last_tick: AtomicU64,
    shutting_down: AtomicBool,
    /// Metric handles.
    pub metrics: Metrics,
    /// The last verdict transitions, for `/status`.
    pub transitions: TransitionLog,
    /// Wakes the /proc watcher (a new worker said hello).
    pub proc_wake: Arc<Notify>,
    /// The worker socket path, for `/status`.
    pub socket_path: std::path::PathBuf,
}

impl Shared {
    /// Fresh state for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            state: Mutex::new(State::new(&config.expect)),
            thresholds: config.thresholds,
            started_at: Instant::now(),
            started_wall: SystemTime::now(),
            last_tick: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            metrics: Metrics::new(),
            transitions: TransitionLog::default(),
            proc_wake: Arc::new(Notify::new()),
            socket_path: config.socket.clone(),
        }
    }

    /// The registry. Held only for in-memory updates or reads, never across an await
    /// or I/O, so a probe waits at most microseconds for it.
    pub fn registry(&self) -> MutexGuard<'_, State> {
        // Every update is a few field assignments; a panic mid-update (a bug) would at
        // worst leave one worker's fields half-new, which the next message fixes.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the agent knows about itself at this moment.
    pub fn agent_input(&self) -> AgentInput {
        let nanos = self.last_tick.load(Ordering::Relaxed);
        AgentInput {
            shutting_down: self.shutting_down.load(Ordering::Relaxed),
            last_tick: self.started_at + Duration::from_nanos(nanos),
        }
    }

    /// Every verdict, evaluated now from the current state.
    pub fn verdicts(&self, now: Instant) -> Verdicts {
        let agent = self.agent_input();
        evaluate(&self.registry(), agent, &self.thresholds, now)
    }

    /// The ticker ran at `now`.
    pub fn mark_tick(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.started_at).as_nanos();
        self.last_tick
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether a shutdown signal arrived.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
}

/// The agent's bound listeners. Bound before [`run`] so a test can bind port 0 and learn
/// the address, and so binding errors surface before anything starts.
#[derive(Debug)]
pub struct Listeners {
    /// The HTTP port (non-blocking).
    pub http: std::net::TcpListener,
    /// The worker socket.
    pub socket: SocketListener,
}

impl Listeners {
    /// Binds `config.listen` and `config.socket`.
    pub fn bind(config: &Config) -> Result<Self, StartError> {
        let http_err = |source| StartError::Http {
            addr: config.listen,
            source,
        };
        let http = std::net::TcpListener::bind(config.listen).map_err(http_err)?;
        http.set_nonblocking(true).map_err(http_err)?;
        let socket = SocketListener::bind(&config.socket, config.socket_mode)?;
        Ok(Self { http, socket })
    }

    /// The bound HTTP address (the real port when `config.listen` asked for port 0).
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }
}

/// Runs the agent until `shutdown` is cancelled, then keeps answering (readiness
/// failing) for `config.shutdown_grace`, and returns. The socket file is removed on
/// return. Must be called inside a tokio runtime with time and IO enabled.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run_with(config, listeners, shutdown, Arc::new(LiveProc::default())).await
}

/// [`run`] with another /proc source (tests).
pub async fn run_with(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    proc_source: Arc<dyn ProcSource>,
) -> std::io::Result<()> {
    let Listeners { http, socket } = listeners;
    let SocketListener {
        listener: unix,
        file: _socket_file,
    } = socket;
    let http = tokio::net::TcpListener::from_std(http)?;
    let unix = tokio::net::UnixListener::from_std(unix)?;
    let shared = Arc::new(Shared::new(&config));
    shared.mark_tick(Instant::now());
    let stop = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(http::serve(
        Arc::clone(&shared),
        http,
        http::Limits {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
        },
        stop.clone(),
    ));
    tasks.spawn(socket::serve(Arc::clone(&shared), unix, stop.clone()));
    tasks.spawn(ticker::run(Arc::clone(&shared), stop.clone()));
    tasks.spawn(procwatch::watch(
        Arc::clone(&shared),
        proc_source,
        config.proc_interval,
        Arc::clone(&shared.proc_wake),
        stop.clone(),
    ));
    tasks.close();
    tracing::info!(
        listen = %config.listen,
        socket = %config.socket.display(),
        expect = ?config.expect.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
        version = VERSION,
        "vitals agent started"
    );
    shutdown.cancelled().await;
    shared.shutting_down.store(true, Ordering::Relaxed);
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: readiness fails, still answering");
    tokio::time::sleep(config.shutdown_grace).await;
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(1), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 1s");
    }
    tracing::info!("vitals agent stopped");
    Ok(())
}
