//! The agent's heartbeat: every [`TICK`] it proves the runtime runs (the agent's own
//! liveness), evaluates every verdict, refreshes the gauges, and applies the edges that
//! [`vitals_core::verdict::edges`] finds: logs each verdict transition once, keeping the last
//! [`KEEP`] for `/status`, and counts hangs and group breaks.
//!
//! Probes never depend on this timer (they evaluate on the spot, and `/metrics` sets its
//! gauges before it encodes); it exists so that transitions are noticed and counted without
//! anyone asking, and counted by nobody else, so a counter does not depend on who looks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cadence::Cadence;
use crate::surfaces::metrics::Metrics;
use crate::surfaces::text;
use vitals_core::snapshot::{AgentHealth, Snapshots};
use vitals_core::verdict::edges::{Edge, Seen};
use vitals_core::verdict::{Diagnosis, Failing, Probe, Target, Verdicts};

/// How often the ticker runs, on the grid the 1 s probes and the /proc sampler share
/// ([`crate::cadence`]), so it adds no wake-up of its own. Half the 2 s agent-liveness
/// bound: liveness fails only when the runtime misses a whole tick. Judging (every verdict
/// of every worker and upstream, their metrics, the transition check) is about 80 µs with
/// 4 workers and 3 upstreams (perf); transitions are logged within a second.
pub const TICK: Duration = Duration::from_secs(1);

/// Transitions kept for `/status`.
pub const KEEP: usize = 50;

/// One verdict changing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// `_agent`, `_all` or a container's name ([`text::target`]).
    pub target: String,
    /// `livez`, `readyz` or `startupz`.
    pub probe: String,
    /// Before: `pass`, `fail: <reason>`, or `None` when first seen.
    pub from: Option<String>,
    /// After.
    pub to: String,
}

/// The last [`KEEP`] transitions.
#[derive(Debug, Default)]
pub struct TransitionLog(Mutex<VecDeque<Transition>>);

impl TransitionLog {
    fn push(&self, t: Transition) {
        let mut log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() == KEEP {
            log.pop_front();
        }
        log.push_back(t);
    }

    /// Oldest first.
    pub fn list(&self) -> Vec<Transition> {
        let log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().cloned().collect()
    }
}

/// Applies the edges [`Seen::diff`] finds in each tick's verdicts: logs and records each
/// transition, counts hangs and group breaks. The one place an edge is counted.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: Seen,
}

impl Tracker {
    /// Compares `v` with the previous call's; logs, records into `log` and counts into
    /// `metrics` what changed.
    pub fn observe(
        &mut self,
        v: &Verdicts,
        wall: SystemTime,
        log: &TransitionLog,
        metrics: &Metrics,
    ) {
        for edge in self.seen.diff(v) {
            match edge {
                Edge::Transition {
                    target,
                    probe,
                    from,
                    to,
                } => {
                    let diagnosis = match &target {
                        Target::Container(name) => v.get(name.as_str()).and_then(|w| w.diagnosis),
                        Target::Agent | Target::All => None,
                    };
                    log.push(transition(&target, probe, from, &to, diagnosis, wall));
                }
                Edge::Hang { container, reason } => metrics.hang(container.as_str(), reason),
                Edge::GroupBroken(reason) => metrics.group_broken(&reason),
            }
        }
    }
}

/// Logs one transition, and returns it as `/status` lists it.
fn transition(
    target: &Target,
    probe: Probe,
    from: Option<Result<(), Failing>>,
    to: &Result<(), Failing>,
    diagnosis: Option<Diagnosis>,
    wall: SystemTime,
) -> Transition {
    let (target, probe) = (text::target(target), probe.as_str());
    let from = from.as_ref().map(text::outcome);
    let shown = text::outcome(to);
    if to.is_ok() {
        tracing::info!(target: "vitals::verdict", worker = %target, probe, from = from.as_deref().unwrap_or("-"), "{probe} {target}: pass");
    } else {
        let diagnosis = diagnosis.map(Diagnosis::as_str);
        tracing::warn!(target: "vitals::verdict", worker = %target, probe, from = from.as_deref().unwrap_or("-"), diagnosis, "{probe} {target}: {shown}");
    }
    Transition {
        at: rfc3339(wall),
        at_unix_ms: unix_ms(wall),
        target: target.to_owned(),
        probe: probe.to_owned(),
        from,
        to: shown,
    }
}

/// Runs the ticker until `stop`.
pub async fn run(
    snapshots: Snapshots,
    health: Arc<AgentHealth>,
    metrics: Arc<Metrics>,
    log: Arc<TransitionLog>,
    stop: CancellationToken,
) {
    let mut ticker = Cadence::every(TICK);
    let mut tracker = Tracker::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        health.mark_tick(now);
        let snapshot = snapshots.take(now);
        metrics.refresh(&snapshot);
        metrics.mirror(&snapshot.state);
        tracker.observe(&snapshot.verdicts, SystemTime::now(), &log, &metrics);
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 in UTC with milliseconds (`2024-05-01T12:00:00.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitals_core::fixtures::{hello, name, phase, PEER, T};
    use vitals_core::state::registry::Registry;
    use vitals_core::verdict::{evaluate, AgentInput};
    use vitals_proto::Phase;

    #[test]
    fn formats_utc_timestamps() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(s);
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400_123)), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(at(1_700_000_000_000)), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn logs_each_transition_once_and_counts_hangs() {
        let t0 = Instant::now();
        let registry = std::sync::Arc::new(Registry::new(&[], T.hang));
        let reports = registry.worker_reports();
        let (log, metrics) = (TransitionLog::default(), Metrics::new());
        let agent = AgentInput {
            shutting_down: false,
            last_tick: t0,
        };
        let mut tracker = Tracker::default();
        let observe = |tracker: &mut Tracker| {
            let v = evaluate(&registry.current(), agent, &T, t0);
            tracker.observe(&v, SystemTime::now(), &log, &metrics);
        };
        reports
            .hello(&hello("model", "a"), PEER, 1, t0)
            .expect("free");
        observe(&mut tracker);
        let first = log.list().len();
        assert_eq!(first, 6, "agent, two aggregates, three worker probes");
        observe(&mut tracker);
        assert_eq!(log.list().len(), first, "no change, no entry");
        reports.message(&name("model"), 1, phase(Phase::Failed, None), t0);
        observe(&mut tracker);
        let entries = log.list();
        let live = entries
            .iter()
            .rfind(|t| t.target == "model" && t.probe == "livez")
            .expect("live transition");
        assert_eq!(live.from.as_deref(), Some("pass"));
        assert_eq!(live.to, "fail: failed");
        let text = String::from_utf8(metrics.encode()).expect("utf8");
        assert!(text.contains("vitals_worker_hangs_total{reason=\"failed\",worker=\"model\"} 1"));
        for _ in 0..100 {
            tracker = Tracker::default();
            observe(&mut tracker);
        }
        assert_eq!(log.list().len(), KEEP);
    }

    #[test]
    fn an_unreachable_members_growing_age_is_one_transition() {
        use vitals_core::fixtures::{live, targets, up, FRESH};
        use vitals_core::state::group::GroupState;
        use vitals_core::verdict::group::GroupLimits;
        let t0 = Instant::now();
        let state = vitals_core::state::registry::State::new(&[]);
        let mut g = GroupState::new(&targets(1), t0);
        g.record(0, live(&[]), &up(&[]), FRESH, t0);
        let limits = GroupLimits {
            timeout: FRESH,
            lost_after: Duration::from_secs(60),
        };
        let (log, metrics) = (TransitionLog::default(), Metrics::new());
        let mut tracker = Tracker::default();
        for secs in [3, 4, 5, 6] {
            let at = t0 + Duration::from_secs(secs);
            let agent = AgentInput {
                shutting_down: false,
                last_tick: at,
            };
            let mut v = evaluate(&state, agent, &T, at);
            v.group = Some(vitals_core::verdict::group::evaluate(&g, &limits, at));
            tracker.observe(&v, SystemTime::now(), &log, &metrics);
        }
        let ready: Vec<_> = log
            .list()
            .into_iter()
            .filter(|t| t.target == "_all" && t.probe == "readyz")
            .map(|t| t.to)
            .collect();
        assert_eq!(ready, ["fail: group: member 1 unreachable 3.0s"]);
    }

    #[test]
    fn a_container_named_agent_is_tracked_apart_from_the_agent() {
        let t0 = Instant::now();
        let registry = std::sync::Arc::new(Registry::new(&[], T.hang));
        let reports = registry.worker_reports();
        reports
            .hello(&hello("agent", "a"), PEER, 1, t0)
            .expect("free");
        reports.message(&name("agent"), 1, phase(Phase::Failed, None), t0);
        let (log, metrics) = (TransitionLog::default(), Metrics::new());
        let agent = AgentInput {
            shutting_down: false,
            last_tick: t0,
        };
        let mut tracker = Tracker::default();
        for _ in 0..5 {
            let v = evaluate(&registry.current(), agent, &T, t0);
            tracker.observe(&v, SystemTime::now(), &log, &metrics);
        }
        let livez: Vec<_> = log
            .list()
            .into_iter()
            .filter(|t| t.probe == "livez" && t.target.ends_with("agent"))
            .map(|t| (t.target, t.to))
            .collect();
        assert_eq!(
            livez,
            [
                ("_agent".to_owned(), "pass".to_owned()),
                ("agent".to_owned(), "fail: failed".to_owned())
            ]
        );
    }
}
