//! The agent's heartbeat: every [`TICK`] it proves the runtime runs (the agent's own
//! liveness), evaluates every verdict, refreshes metrics, and logs each verdict transition
//! once, keeping the last [`KEEP`] for `/status`.
//!
//! Probes never depend on this timer (they evaluate on the spot, and `/metrics` refreshes
//! before it encodes); it exists so that transitions are noticed and counted without
//! anyone asking.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cadence::Cadence;
use crate::state::snapshot::{AgentHealth, Snapshots};
use crate::surfaces::metrics::Metrics;
use crate::surfaces::text;
use crate::verdict::{Answer, Failing, LiveReason, Probe, Target, Verdicts};

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

/// Every answer a probe could ask for now: the agent's `/livez`, the aggregates, and each
/// container's three probes.
fn answers(v: &Verdicts) -> impl Iterator<Item = Answer> + '_ {
    let pod = [Probe::Live, Probe::Ready, Probe::Startup].map(|p| v.aggregate(p));
    let containers = v.names().flat_map(move |name| {
        Probe::ALL
            .into_iter()
            .filter_map(move |p| v.worker(p, name))
    });
    pod.into_iter().chain(containers)
}

/// Tracks the previous verdicts and reports changes.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Each (target, probe)'s last verdict: its key ([`Failing::key`], without ages) and
    /// its text as logged.
    last: HashMap<(Target, Probe), (Result<(), Failing>, String)>,
    live: HashMap<String, Result<(), LiveReason>>,
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
        for answer in answers(v) {
            let key = (answer.target.clone(), answer.probe);
            let now = answer.result.as_ref().map_err(Failing::key).map(|_| ());
            let before = self.last.get(&key);
            // A group member's unreachable age grows every tick; the verdict does not change.
            if before.is_some_and(|(was, _)| *was == now) {
                continue;
            }
            let from = before.map(|(_, shown)| shown.clone());
            let (target, probe) = (text::target(&answer.target), answer.probe.as_str());
            let to = text::outcome(&answer.result);
            let diagnosis = match &answer.target {
                Target::Container(name) => v.get(name.as_str()).and_then(|w| w.diagnosis),
                Target::Agent | Target::All => None,
            };
            let diagnosis = diagnosis.map(|d| d.as_str());
            if answer.ok() {
                tracing::info!(target: "vitals::verdict", worker = %target, probe, from = from.as_deref().unwrap_or("-"), "{probe} {target}: pass");
            } else {
                tracing::warn!(target: "vitals::verdict", worker = %target, probe, from = from.as_deref().unwrap_or("-"), diagnosis, "{probe} {target}: {to}");
            }
            log.push(Transition {
                at: rfc3339(wall),
                at_unix_ms: unix_ms(wall),
                target: target.to_owned(),
                probe: probe.to_owned(),
                from,
                to: to.clone(),
            });
            self.last.insert(key, (now, to));
        }
        let lives =
            v.workers
                .iter()
                .map(|w| (w.name.as_str(), w.live))
                .chain(v.upstreams.iter().map(|u| {
                    // Only the /proc and metrics reasons are hangs; a failing probe is not.
                    let live = match &u.live {
                        Err(r) => r.as_live().map_or(Ok(()), Err),
                        Ok(()) => Ok(()),
                    };
                    (u.name.as_str(), live)
                }));
        for (name, live) in lives {
            let before = self.live.insert(name.to_owned(), live);
            if let (Some(Ok(())) | None, Err(reason)) = (before, live) {
                metrics.hang(name, reason);
            }
        }
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
    use crate::state::registry::tests::{hello, name, phase, PEER};
    use crate::state::registry::Registry;
    use crate::verdict::tests::T;
    use crate::verdict::{evaluate, AgentInput};
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
        let registry = std::sync::Arc::new(Registry::new(&[]));
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
            tracker.last.clear();
            observe(&mut tracker);
        }
        assert_eq!(log.list().len(), KEEP);
    }

    #[test]
    fn an_unreachable_members_growing_age_is_one_transition() {
        use crate::state::group::tests::{live, targets, FRESH};
        use crate::state::group::{GroupState, Instances};
        use crate::verdict::group::GroupLimits;
        let t0 = Instant::now();
        let state = crate::state::registry::State::new(&[]);
        let mut g = GroupState::new(&targets(1), t0);
        g.record(0, live(&[]), &Instances::new(), FRESH, t0);
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
            v.group = Some(crate::verdict::group::evaluate(
                &g,
                &Instances::new(),
                &limits,
                at,
            ));
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
        let registry = std::sync::Arc::new(Registry::new(&[]));
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
