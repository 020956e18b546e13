//! A protocol worker's verdicts (SPEC §2, §7): the one function that decides why
//! `/livez/<worker>`, `/readyz/<worker>` or `/startupz/<worker>` fails, from its instance's
//! messages and its process's /proc track. Its reasons are declared in precedence order.

use std::fmt;
use std::time::Instant;

use vitals_proto::{Phase, WorkerName};

use super::*;

/// Why a worker is not live, in SPEC §7 precedence order (the derived `Ord` is that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LiveReason {
    /// Phase `failed`.
    Failed,
    /// /proc state `T` for `--hang-timeout`.
    Stopped,
    /// /proc state `D` continuously for `--d-state-timeout`.
    Uninterruptible,
    /// No heartbeat for `--hang-timeout` while connected.
    HeartbeatTimeout,
    /// Heartbeats arrive but `progress` has not moved for `--stall-timeout`.
    LoopStalled,
    /// Loading/warming made no progress for `--load-stall-timeout`.
    LoadStalled,
    /// Disconnected, but the process still exists, for `--hang-timeout`.
    Silent,
}

impl LiveReason {
    /// Every reason, in precedence order (for per-reason metrics).
    pub const ALL: [LiveReason; 7] = [
        LiveReason::Failed,
        LiveReason::Stopped,
        LiveReason::Uninterruptible,
        LiveReason::HeartbeatTimeout,
        LiveReason::LoopStalled,
        LiveReason::LoadStalled,
        LiveReason::Silent,
    ];

    /// The reason as reported (`heartbeat_timeout`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LiveReason::Failed => "failed",
            LiveReason::Stopped => "stopped",
            LiveReason::Uninterruptible => "uninterruptible",
            LiveReason::HeartbeatTimeout => "heartbeat_timeout",
            LiveReason::LoopStalled => "loop_stalled",
            LiveReason::LoadStalled => "load_stalled",
            LiveReason::Silent => "silent",
        }
    }
}

impl fmt::Display for LiveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a worker without heartbeats is doing, from /proc CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diagnosis {
    /// CPU time advancing: a busy loop.
    Spinning,
    /// CPU time not advancing: waiting on something.
    Blocked,
}

impl Diagnosis {
    /// `spinning` or `blocked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Diagnosis::Spinning => "spinning",
            Diagnosis::Blocked => "blocked",
        }
    }
}

/// Why a worker is not ready, in the precedence `judge` applies: a dead or hung loop says
/// more than the phase it last reported, and the phase more than its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyReason {
    /// No open connection.
    NotConnected,
    /// Not live.
    Live(LiveReason),
    /// Phase is not `ready` (`None`: no phase reported yet).
    Phase(Option<Phase>),
    /// A check fails.
    Check {
        /// The check's name.
        name: String,
        /// Its message.
        message: String,
    },
}

impl fmt::Display for ReadyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyReason::NotConnected => f.write_str("not_connected"),
            ReadyReason::Phase(Some(p)) => write!(f, "phase: {p}"),
            ReadyReason::Phase(None) => f.write_str("phase: unknown"),
            ReadyReason::Check { name, message } => write!(f, "check: {name}: {message}"),
            ReadyReason::Live(r) => r.fmt(f),
        }
    }
}

/// Why a worker has not started.
///
/// SPEC §2: startup passes once an instance is connected and live, and stays passed for
/// that instance. Every clock of an instance starts at its first `hello`, so no liveness
/// rule can hold at that instant: an instance is started from its first `hello` for as
/// long as it is present, and from then on liveness (with `load_stalled`) decides. A load
/// of any length that keeps moving is never killed by the kubelet's startup budget, which
/// only has to cover process start to `hello`. The one reason left is the absence of any
/// instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupReason {
    /// No connection and no process.
    NotConnected,
}

impl fmt::Display for StartupReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StartupReason::NotConnected => "not_connected",
        })
    }
}

/// The verdicts of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerVerdict {
    /// The worker.
    pub name: WorkerName,
    /// Named by `--expect`.
    pub expected: bool,
    /// Has an open connection.
    pub connected: bool,
    /// Whether its process exists.
    pub pid: PidStatus,
    /// Startup verdict.
    pub startup: Result<(), StartupReason>,
    /// Readiness verdict.
    pub ready: Result<(), ReadyReason>,
    /// Liveness verdict.
    pub live: Result<(), LiveReason>,
    /// For `heartbeat_timeout`: what the process is doing, when /proc can tell.
    pub diagnosis: Option<Diagnosis>,
    /// The parts of readiness: `connected`, `live`, `phase`, `check:<name>`.
    pub ready_checks: Vec<Check>,
}

/// Every liveness rule that holds, in precedence order.
pub(super) fn live_failures(
    inst: &Instance,
    pid: PidStatus,
    t: &Thresholds,
    now: Instant,
) -> Vec<LiveReason> {
    let phase = inst.phase();
    // A heartbeat newer than the latest sample supersedes a T/D seen in it.
    let (stopped, uninterruptible) = proc_rules(&inst.proc, Some(inst.heartbeat_at), t, now);
    let connected = inst.connected;
    let rules = [
        (LiveReason::Failed, phase == Some(Phase::Failed)),
        (LiveReason::Stopped, stopped),
        (LiveReason::Uninterruptible, uninterruptible),
        (
            LiveReason::HeartbeatTimeout,
            connected && elapsed(inst.heartbeat_at, now) >= t.hang,
        ),
        (
            LiveReason::LoopStalled,
            connected
                && matches!(phase, Some(Phase::Ready | Phase::Draining))
                && inst.loop_clock.is_some_and(|c| elapsed(c, now) >= t.stall),
        ),
        (
            LiveReason::LoadStalled,
            connected
                && phase.is_some_and(Phase::is_starting)
                && elapsed(inst.load_clock, now) >= t.load_stall,
        ),
        (
            LiveReason::Silent,
            !connected
                && pid == PidStatus::Exists
                && inst
                    .disconnected_at
                    .is_some_and(|d| elapsed(d, now) >= t.hang),
        ),
    ];
    rules
        .into_iter()
        .filter_map(|(reason, holds)| holds.then_some(reason))
        .collect()
}

/// `spinning` if the process used at least [`SPIN_CORES`] over the last interval.
fn diagnose(inst: &Instance) -> Option<Diagnosis> {
    let (prev, latest) = (inst.proc.previous.as_ref()?, inst.proc.latest.as_ref()?);
    let wall = latest
        .taken_at
        .checked_duration_since(prev.taken_at)?
        .as_secs_f64();
    if wall <= 0.0 {
        return None;
    }
    let cores = (latest.cpu_seconds - prev.cpu_seconds) / wall;
    Some(if cores >= SPIN_CORES {
        Diagnosis::Spinning
    } else {
        Diagnosis::Blocked
    })
}

/// The verdicts of worker `name` at `now`.
pub(super) fn judge(name: &WorkerName, w: &Worker, t: &Thresholds, now: Instant) -> WorkerVerdict {
    let Some(inst) = w.instance.as_ref() else {
        return absent(name, w, PidStatus::Unknown);
    };
    let pid = inst.proc.pid_status();
    if !inst.connected && pid != PidStatus::Exists {
        // Gone or unknown: the kubelet already restarts exited containers (SPEC §2).
        return absent(name, w, pid);
    }
    let failures = live_failures(inst, pid, t, now);
    let live = match failures.first() {
        Some(&reason) => Err(reason),
        None => Ok(()),
    };
    // Diagnosed whenever heartbeats are overdue, even when `stopped` or `uninterruptible`
    // outranks the timeout: the operator still wants to know whether it burns CPU.
    let diagnosis = if failures.contains(&LiveReason::HeartbeatTimeout) {
        diagnose(inst)
    } else {
        None
    };
    let phase = inst.phase();
    let connected_r = if inst.connected {
        Ok(())
    } else {
        Err(ReadyReason::NotConnected)
    };
    let phase_r = match phase {
        Some(Phase::Ready) => Ok(()),
        other => Err(ReadyReason::Phase(other)),
    };
    let check_rs: Vec<(&str, Result<(), ReadyReason>)> = inst
        .checks
        .values()
        .map(|c| {
            let r = if c.ok {
                Ok(())
            } else {
                Err(ReadyReason::Check {
                    name: c.name.clone(),
                    message: c.message.clone(),
                })
            };
            (c.name.as_str(), r)
        })
        .collect();
    let live_r = live.map_err(ReadyReason::Live);
    // The order of the verbose listing: a liveness failure says more than the phase it
    // happened in (`load_stalled` rather than `phase: loading`).
    let ready = [&connected_r, &live_r, &phase_r]
        .into_iter()
        .chain(check_rs.iter().map(|(_, r)| r))
        .find_map(|r| r.clone().err())
        .map_or(Ok(()), Err);
    let mut ready_checks = vec![
        Check::new(CheckName::Connected, connected_r),
        Check::new(CheckName::Live, live_r),
        Check::new(CheckName::Phase, phase_r),
    ];
    ready_checks.extend(
        check_rs
            .into_iter()
            .map(|(n, r)| Check::new(CheckName::Check(n.to_owned()), r)),
    );
    WorkerVerdict {
        name: name.clone(),
        expected: w.expected,
        connected: inst.connected,
        pid,
        startup: Ok(()),
        ready,
        live,
        diagnosis,
        ready_checks,
    }
}

/// A worker with no connection and no (known) process: live passes, the rest fail.
fn absent(name: &WorkerName, w: &Worker, pid: PidStatus) -> WorkerVerdict {
    WorkerVerdict {
        name: name.clone(),
        expected: w.expected,
        connected: false,
        pid,
        startup: Err(StartupReason::NotConnected),
        ready: Err(ReadyReason::NotConnected),
        live: Ok(()),
        diagnosis: None,
        ready_checks: vec![
            Check::new(CheckName::Connected, Err(ReadyReason::NotConnected)),
            Check::new(CheckName::Live, Ok::<(), Reason>(())),
        ],
    }
}
