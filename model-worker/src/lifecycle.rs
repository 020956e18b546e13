//! The worker's lifecycle in one place: the phase (`loading` → `warming` → `ready`, then
//! `draining` or `failed`), its readiness checks, and whether new work is still admitted
//! (through the drain delay, after `draining` is reported).
//!
//! Every change goes both to the agent (through the [`Reporter`]) and to the HTTP side
//! (a watch channel the API reads to answer 503 while not ready), so the two never
//! disagree. `failed` is terminal: later phase changes are ignored, as the agent does.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vitals_proto::message::Progress;
use vitals_proto::{Phase, Reporter};

/// The phase as the HTTP side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Current phase.
    pub phase: Phase,
    /// Human-readable detail (loading step, failure reason).
    pub detail: String,
    /// Whether new requests are admitted. True from the start; false once the drain delay
    /// after `draining` has passed. While loading, requests are refused by phase anyway.
    pub accepting: bool,
}

/// Reports the lifecycle to the agent and to the API; cheap to clone.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    reporter: Arc<Reporter>,
    status: Arc<watch::Sender<Status>>,
}

impl Lifecycle {
    /// Starts in `loading`.
    pub fn new(reporter: Reporter) -> Self {
        let status = Status {
            phase: Phase::Loading,
            detail: "starting".to_owned(),
            accepting: true,
        };
        reporter.set_phase(status.phase, status.detail.clone(), None);
        Self {
            reporter: Arc::new(reporter),
            status: Arc::new(watch::channel(status).0),
        }
    }

    /// A receiver of every phase change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The current phase and detail.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The reporter (loop counters, fault injection).
    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Moves to `phase`. Ignored once `failed`; once `draining`, only `failed` may follow
    /// (a load that finishes during shutdown must not turn the worker ready again).
    /// Returns whether it took effect.
    pub fn set_phase(&self, phase: Phase, detail: &str, progress: Option<Progress>) -> bool {
        let changed = self.status.send_if_modified(|s| {
            if s.phase == Phase::Failed || (s.phase == Phase::Draining && phase != Phase::Failed) {
                return false;
            }
            if s.phase != phase || s.detail != detail {
                s.phase = phase;
                s.detail = detail.to_owned();
            }
            true
        });
        if changed {
            self.reporter.set_phase(phase, detail, progress);
        }
        changed
    }

    /// The drain delay is over: new requests are refused from now on (in-flight ones
    /// still finish).
    pub fn stop_accepting(&self) {
        self.status.send_modify(|s| s.accepting = false);
    }

    /// Reports a readiness check.
    pub fn set_check(&self, name: &str, ok: bool, message: &str) {
        self.reporter.set_check(name, ok, message);
    }

    /// Moves to `failed` with `reason` and logs it.
    pub fn fail(&self, reason: &str) {
        tracing::error!(reason, "worker failed");
        self.set_phase(Phase::Failed, reason, None);
    }

    /// Waits (blocking) up to `timeout` for the agent to have received every update.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.reporter.flush(timeout)
    }
}
