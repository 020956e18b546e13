//! The `Reporter`: a std-thread protocol client any worker can embed without tokio.
//!
//! The worker's hot loop only touches [`LoopCounters`] (atomics) and calls
//! [`Reporter::set_phase`] / [`Reporter::set_check`], which update shared state under a
//! lock that is never held across I/O, so they return at once whatever the socket does.
//! One background thread owns the socket: it says `hello`, re-sends the current phase and
//! every check on each new connection, sends a heartbeat every `heartbeat` interval, and
//! reconnects with backoff (100 ms doubling, 1 s cap) when the agent goes away.
//! Phase and check updates are coalesced: the agent needs the latest value, not each one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::codec::{encode_line, read_line, ReadLineError};
use crate::message::{
    decode_agent_message, AgentMessage, CheckReport, ErrorCode, Heartbeat, Hello, Phase,
    PhaseReport, Progress, WorkerMessage, PROTOCOL_VERSION,
};
use crate::name::WorkerName;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How long to wait for the agent's `welcome`, and for a write to drain, before
/// treating the connection as broken.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Who the reporter says it is, and where the agent listens.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// The agent's Unix socket (`/run/vitals/agent.sock` in a pod).
    pub socket: PathBuf,
    /// The worker's name in the agent.
    pub worker: WorkerName,
    /// Unique per process start; see [`new_instance_id`].
    pub instance: String,
    /// The worker's software version, shown in `/status`.
    pub version: String,
    /// How often to send a heartbeat.
    pub heartbeat: Duration,
}

impl ReporterConfig {
    /// A config with a fresh instance id and a 1 s heartbeat.
    pub fn new(socket: impl Into<PathBuf>, worker: WorkerName, version: impl Into<String>) -> Self {
        Self {
            socket: socket.into(),
            worker,
            instance: new_instance_id(),
            version: version.into(),
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// An instance id unique per process start: the pid and the start time.
pub fn new_instance_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

/// Counters the inference loop bumps; the reporter thread reads them for each heartbeat.
#[derive(Debug, Default)]
pub struct LoopCounters {
    progress: AtomicU64,
    pending: AtomicU64,
    in_flight: AtomicU64,
}

impl LoopCounters {
    /// One loop iteration happened (idle ticks count too): proves the loop is alive.
    pub fn tick(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Work queued and not yet started.
    pub fn set_pending(&self, n: u64) {
        self.pending.store(n, Ordering::Relaxed);
    }

    /// Work being computed now.
    pub fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// Loop iterations so far.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    fn heartbeat(&self, seq: u64) -> Heartbeat {
        Heartbeat {
            seq,
            progress: self.progress.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// State shared between the worker's threads and the reporter thread.
#[derive(Debug, Default)]
struct State {
    phase: Option<PhaseReport>,
    checks: BTreeMap<String, CheckReport>,
    phase_dirty: bool,
    dirty_checks: BTreeSet<String>,
    /// Set when the connection's reader saw EOF: reconnect at once.
    connection_lost: bool,
    stopping: bool,
    /// Updates taken from the dirty sets that are not yet written to the socket.
    writing: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    counters: Arc<LoopCounters>,
    connected: AtomicBool,
    /// Fault injection: while set, no heartbeats are sent (phase and checks still are).
    heartbeats_paused: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data updated in single assignments; a panic elsewhere
        // cannot leave it half-written, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `deadline`, a state change or stop; returns the guard.
    fn wait_until(
        &self,
        deadline: Instant,
        ready: impl Fn(&State) -> bool,
    ) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            if ready(&state) || now >= deadline {
                return state;
            }
            state = self
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A worker's connection to the agent; stops its thread when dropped.
#[derive(Debug)]
pub struct Reporter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Starts the reporter thread. It connects in the background: the agent may start
    /// before or after the worker, and may restart at any time.
    pub fn start(config: ReporterConfig) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("vitals-reporter".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&shared, &config)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The counters to hand to the inference loop.
    pub fn counters(&self) -> Arc<LoopCounters> {
        Arc::clone(&self.shared.counters)
    }

    /// Reports a phase; never blocks on the socket.
    pub fn set_phase(&self, phase: Phase, detail: impl Into<String>, progress: Option<Progress>) {
        let mut state = self.shared.lock();
        state.phase = Some(PhaseReport {
            phase,
            detail: detail.into(),
            progress,
        });
        state.phase_dirty = true;
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Reports a readiness check; never blocks on the socket.
    pub fn set_check(&self, name: impl Into<String>, ok: bool, message: impl Into<String>) {
        let name = name.into();
        let mut state = self.shared.lock();
        state.checks.insert(
            name.clone(),
            CheckReport {
                name: name.clone(),
                ok,
                message: message.into(),
            },
        );
        state.dirty_checks.insert(name);
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Whether the agent has welcomed the current connection.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Stops (`true`) or resumes heartbeats while the connection stays up. For fault
    /// injection: it makes a live process look hung to the agent.
    pub fn pause_heartbeats(&self, paused: bool) {
        self.shared
            .heartbeats_paused
            .store(paused, Ordering::Relaxed);
    }

    /// Waits up to `timeout` until the agent is connected and every phase and check update
    /// has been handed to the socket; returns whether that happened. Call it before
    /// exiting after a `failed` phase so the agent learns why.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let sent = {
                let state = self.shared.lock();
                !state.phase_dirty && state.dirty_checks.is_empty() && !state.writing
            };
            if sent && self.is_connected() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("vitals reporter thread panicked");
            }
        }
    }
}

/// Why a connection to the agent ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("agent refused hello ({code}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("no welcome from agent: {0}")]
    NoWelcome(#[source] ReadLineError),
    #[error("unexpected reply to hello: {0}")]
    BadWelcome(String),
    #[error("agent closed the connection")]
    Closed,
    #[error("write failed: {0}")]
    Write(#[source] io::Error),
}

fn run(shared: &Arc<Shared>, config: &ReporterConfig) {
    let mut seq = 0;
    let mut backoff = BACKOFF_START;
    let mut quiet_failures = false;
    loop {
        match session(shared, config, &mut seq) {
            Ok(()) => return,
            Err(err) => {
                let was_connected = shared.connected.swap(false, Ordering::Relaxed);
                if was_connected {
                    backoff = BACKOFF_START;
                    quiet_failures = false;
                }
                // One warning per outage, then debug: an agent that is still starting
                // should not flood the worker's log.
                if quiet_failures {
                    tracing::debug!(error = %err, retry_in = ?backoff, "vitals agent unreachable");
                } else {
                    tracing::warn!(error = %err, retry_in = ?backoff, "vitals agent unreachable; retrying");
                    quiet_failures = true;
                }
            }
        }
        let deadline = Instant::now() + backoff;
        if shared.wait_until(deadline, |s| s.stopping).stopping {
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

fn write_message(stream: &mut UnixStream, message: &WorkerMessage) -> Result<(), SessionError> {
    stream
        .write_all(&encode_line(message))
        .map_err(SessionError::Write)
}

/// One connection: hello, welcome, resync, then updates and heartbeats until it breaks
/// (`Err`) or the reporter stops (`Ok`).
fn session(
    shared: &Arc<Shared>,
    config: &ReporterConfig,
    seq: &mut u64,
) -> Result<(), SessionError> {
    let mut stream = UnixStream::connect(&config.socket).map_err(SessionError::Connect)?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .map_err(SessionError::Connect)?;
    let hello = Hello {
        v: PROTOCOL_VERSION,
        worker: config.worker.to_string(),
        instance: config.instance.clone(),
        pid: std::process::id(),
        version: config.version.clone(),
        heartbeat_ms: u64::try_from(config.heartbeat.as_millis()).unwrap_or(u64::MAX),
    };
    write_message(&mut stream, &WorkerMessage::Hello(hello))?;
    let mut buf = Vec::new();
    let reply = read_line(&mut stream, &mut buf).map_err(SessionError::NoWelcome)?;
    match decode_agent_message(&reply) {
        Ok(AgentMessage::Welcome(w)) => {
            tracing::info!(agent_version = %w.agent_version, hang_timeout_ms = w.hang_timeout_ms, "connected to vitals agent");
        }
        Ok(AgentMessage::Error(e)) => {
            return Err(SessionError::Refused {
                code: e.code,
                message: e.message,
            })
        }
        Err(e) => return Err(SessionError::BadWelcome(e.to_string())),
    }
    shared.connected.store(true, Ordering::Relaxed);
    let reader = watch_for_close(shared, &stream, buf)?;
    let result = stream_updates(shared, config, &mut stream, seq);
    // Wake the reader thread (blocked in read) so it exits, then reap it.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    result
}

/// Starts a thread that reads the agent's side of the connection. The agent only speaks
/// again to say `error` before closing, so any read result ends the session; without this
/// a dead agent would be noticed only at the next failed write.
fn watch_for_close(
    shared: &Arc<Shared>,
    stream: &UnixStream,
    mut buf: Vec<u8>,
) -> Result<JoinHandle<()>, SessionError> {
    let mut read_half = stream.try_clone().map_err(SessionError::Connect)?;
    read_half
        .set_read_timeout(None)
        .map_err(SessionError::Connect)?;
    shared.lock().connection_lost = false;
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("vitals-reporter-read".into())
        .spawn(move || {
            match read_line(&mut read_half, &mut buf).map(|line| decode_agent_message(&line)) {
                Ok(Ok(AgentMessage::Error(e))) => {
                    tracing::warn!(code = %e.code, message = %e.message, "vitals agent closed the connection with an error");
                }
                Ok(_) => tracing::warn!("unexpected message from vitals agent"),
                Err(e) => tracing::debug!(error = %e, "vitals agent connection ended"),
            }
            shared.lock().connection_lost = true;
            shared.wake.notify_all();
        })
        .map_err(SessionError::Connect)
}

/// Sends the full state, then every change and a heartbeat each interval.
fn stream_updates(
    shared: &Shared,
    config: &ReporterConfig,
    stream: &mut UnixStream,
    seq: &mut u64,
) -> Result<(), SessionError> {
    {
        // A new connection starts from nothing on the agent's side: send all we have.
        let mut state = shared.lock();
        state.phase_dirty = state.phase.is_some();
        state.dirty_checks = state.checks.keys().cloned().collect();
        state.writing = false;
    }
    let mut next_heartbeat = Instant::now();
    loop {
        let (updates, stopping, lost) = {
            let mut state = shared.wait_until(next_heartbeat, |s| {
                s.stopping || s.connection_lost || s.phase_dirty || !s.dirty_checks.is_empty()
            });
            let mut updates = Vec::new();
            if std::mem::take(&mut state.phase_dirty) {
                updates.extend(state.phase.clone().map(WorkerMessage::Phase));
            }
            for name in std::mem::take(&mut state.dirty_checks) {
                updates.extend(state.checks.get(&name).cloned().map(WorkerMessage::Check));
            }
            state.writing = !updates.is_empty();
            (updates, state.stopping, state.connection_lost)
        };
        if stopping {
            return Ok(());
        }
        if lost {
            return Err(SessionError::Closed);
        }
        for update in &updates {
            write_message(stream, update)?;
        }
        if !updates.is_empty() {
            shared.lock().writing = false;
        }
        if Instant::now() >= next_heartbeat {
            if !shared.heartbeats_paused.load(Ordering::Relaxed) {
                *seq += 1;
                let beat = shared.counters.heartbeat(*seq);
                write_message(stream, &WorkerMessage::Heartbeat(beat))?;
            }
            next_heartbeat += config.heartbeat;
            // After a long stall (suspended process), do not burst to catch up.
            next_heartbeat = next_heartbeat.max(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    // The tests that need an agent are in `shared/tests/reporter.rs`, on the e2e toolkit's
    // fake agent.
    use super::*;

    fn config(dir: &tempfile::TempDir) -> ReporterConfig {
        let mut c = ReporterConfig::new(
            dir.path().join("agent.sock"),
            WorkerName::parse("model").expect("valid"),
            "1.2.3",
        );
        c.heartbeat = Duration::from_millis(50);
        c
    }

    #[test]
    fn set_phase_returns_at_once_without_an_agent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reporter = Reporter::start(config(&dir)).expect("start");
        let start = Instant::now();
        for i in 0..10_000u64 {
            reporter.set_phase(
                Phase::Loading,
                "x",
                Some(Progress {
                    done: i,
                    total: None,
                    unit: String::new(),
                }),
            );
            reporter.set_check("device", i % 2 == 0, "");
        }
        // 10k updates with nobody listening: generous bound, far from any socket timeout.
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "took {:?}",
            start.elapsed()
        );
        assert!(!reporter.is_connected());
        let start = Instant::now();
        drop(reporter);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "drop stops the thread promptly"
        );
    }
}
