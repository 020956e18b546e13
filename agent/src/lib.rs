//! `vitals-agent`: the pod's single probe port. Workers push their state over a Unix
//! socket, the agent adds what /proc shows, and answers the kubelet's probes and
//! Prometheus' scrapes from memory, at once, whatever the workers do.
//!
//! State flows one way: [`sources`] (the worker socket, /proc, upstream probers) write the
//! [`vitals_core::state`]; a snapshot of it is judged by [`vitals_core::verdict`] and
//! rendered by the [`surfaces`] (probe port, metrics, ticker, status). The state and the
//! verdicts are the pure core (the `vitals-core` crate: no I/O, no runtime); this crate is
//! the I/O around it. Each task gets the narrow handles it needs, not a
//! hub. [`run`] wires them; the binary and the integration tests call the same `run`.
//! [`cli`] is the command line's root, [`config`] the one place that validates `run`'s
//! settings; [`inject`] adds the agent to pods; [`net`] is the one outbound HTTP client
//! (probes, scrapes, `vitals-agent status`), [`listen`] makes the servers' sockets.

pub mod cadence;
pub mod cli;
pub mod config;
pub mod counters;
pub mod inject;
pub mod listen;
pub mod net;
pub mod sources;
pub mod surfaces;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Group};
use crate::sources::proc::{LiveProc, ProcSource};
use crate::sources::socket::{SocketError, SocketListener};
use crate::surfaces::metrics::Metrics;
use crate::surfaces::status::{AgentFacts, StatusSource};
use crate::surfaces::ticker::TransitionLog;
use vitals_core::snapshot::{AgentHealth, GroupSource, Snapshots};
use vitals_core::state::group::{GroupState, SharedGroup};
use vitals_core::state::registry::Registry;

/// This agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
        let http = listen::bind(config.listen).map_err(http_err)?;
        let socket = SocketListener::bind(&config.socket, config.socket_mode)?;
        Ok(Self { http, socket })
    }

    /// The bound HTTP address (the real port when `config.listen` asked for port 0).
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }
}

/// The agent's tokio runtime (the binary's, and tests that check what it allows). One
/// thread is plenty: every task is short, in-memory work. It keeps idle RSS and CPU near
/// zero.
///
/// The /proc sampler has a thread of its own (SPEC §7); the blocking pool serves name
/// lookups (group members, named probe hosts) and has one thread, so that a hung resolver
/// ties up one thread, not more: lookups are few (one per member, retried with a backoff),
/// and glibc gives every thread that allocates an arena of its own (measured: 3 threads →
/// 2, see docs/benchmarks.md).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
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
    let http = surfaces::http::listener(http)?;
    let unix = tokio::net::UnixListener::from_std(unix)?;
    let started_at = Instant::now();
    let registry = Arc::new(Registry::new(&config.expect, config.thresholds.hang));
    registry.add_upstreams(&config.upstreams);
    let health = Arc::new(AgentHealth::new(started_at));
    let mut snapshots = Snapshots::new(
        Arc::clone(&registry),
        Arc::clone(&health),
        config.thresholds,
    );
    let metrics = Arc::new(Metrics::new());
    // A leader's snapshots also judge its group, which its poller learns (SPEC §9).
    let mut group = None;
    // The leader's own pod judged without its group: what formation reads.
    let own = snapshots.clone();
    if let Group::Leader(g) = &config.group {
        warn_unqualified(&g.members);
        let shared = Arc::new(SharedGroup::new(GroupState::new(
            &g.members,
            Instant::now(),
        )));
        snapshots = snapshots.with_group(GroupSource {
            shared: Arc::clone(&shared),
            limits: vitals_core::verdict::group::GroupLimits {
                timeout: g.timeout,
                lost_after: g.lost_after,
            },
        });
        group = Some((shared, g.clone()));
    }
    let transitions = Arc::new(TransitionLog::default());
    let proc_wake = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(surfaces::http::serve(
        surfaces::http::Context {
            snapshots: snapshots.clone(),
            metrics: Arc::clone(&metrics),
            status: StatusSource {
                facts: AgentFacts {
                    started_at,
                    started_wall: SystemTime::now(),
                    socket: config.socket.clone(),
                },
                transitions: Arc::clone(&transitions),
            },
        },
        http,
        surfaces::http::Limits {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
        },
        stop.clone(),
    ));
    tasks.spawn(sources::socket::serve(
        sources::socket::Context {
            workers: registry.worker_reports(),
            counters: metrics.counters().clone(),
            proc_wake: Arc::clone(&proc_wake),
            hang_timeout: config.thresholds.hang,
        },
        unix,
        stop.clone(),
    ));
    tasks.spawn(surfaces::ticker::run(
        snapshots,
        Arc::clone(&health),
        Arc::clone(&metrics),
        transitions,
        stop.clone(),
    ));
    sources::upstream::run::spawn(
        &tasks,
        &sources::upstream::run::Context {
            counters: metrics.counters().clone(),
            host: sources::upstream::run::host(config.pod_ip),
            stall_timeout: config.thresholds.stall,
            scrape_interval: config.proc_interval,
        },
        &registry,
        &config.upstreams,
        &stop,
    );
    if let Some((shared, g)) = group {
        sources::group::spawn(
            &tasks,
            &sources::group::Context {
                group: shared,
                own,
                counters: metrics.counters().clone(),
                config: g,
            },
            &stop,
        );
    }
    tasks.spawn(sources::proc::watch::watch(
        registry.proc_samples(),
        sources::proc::watch::Sampler {
            source: proc_source,
            proc_root: std::path::PathBuf::from("/proc"),
            interval: config.proc_interval,
        },
        proc_wake,
        stop.clone(),
    ));
    tasks.close();
    tracing::info!(
        listen = %config.listen,
        socket = %config.socket.display(),
        expect = ?config.expect.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
        group = ?config.group,
        version = VERSION,
        "vitals agent started"
    );
    shutdown.cancelled().await;
    health.begin_shutdown();
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

/// Waits for the first SIGTERM or SIGINT and returns its name: what stops the agent and the
/// webhook. When the handlers cannot be installed it logs why and never returns (the
/// process then stops only with SIGKILL).
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Logs the members whose names go through the DNS search list at every lookup (ndots 5
/// makes that several queries each): derived names when `POD_NAMESPACE` is not set, or
/// explicit names without their trailing dot. Said here, not where the config is parsed,
/// because that runs before logging starts.
fn warn_unqualified(members: &[vitals_core::state::group::MemberTarget]) {
    let relative: Vec<&str> = members
        .iter()
        .map(|m| m.host.as_str())
        .filter(|h| h.parse::<std::net::IpAddr>().is_err() && !h.ends_with('.'))
        .collect();
    if !relative.is_empty() {
        tracing::warn!(
            members = ?relative,
            "group members' names are not fully qualified and are looked up through the \
             search list (set {} for derived names, or end a name with a dot)",
            vitals_proto::env::POD_NAMESPACE
        );
    }
}
