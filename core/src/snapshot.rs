//! One immutable view of everything the agent knows at one instant, and the only way the
//! probe port, the ticker, `/status` and the metrics read it.
//!
//! A [`Snapshot`] pairs the registry's state (taken as an `Arc` under the registry's lock,
//! which is then released) with the agent's own health and the verdicts evaluated from
//! both. Everything downstream renders a snapshot; nothing downstream holds a lock while
//! it evaluates, renders or encodes. On a group's leader it also pairs the group's state
//! (SPEC §9) and adds the group verdict to the verdicts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::group::{self, GroupState, SharedGroup};
use crate::state::registry::{Registry, State};
use crate::verdict::group::GroupLimits;
use crate::verdict::{evaluate, evaluate_one, AgentInput, Thresholds, Verdicts};

/// The agent's own liveness and readiness inputs: when its ticker last ran, and whether
/// a shutdown signal arrived. Written by the ticker and by `run`; read by snapshots.
#[derive(Debug)]
pub struct AgentHealth {
    started_at: Instant,
    /// Nanoseconds after `started_at` of the ticker's last run.
    last_tick: AtomicU64,
    shutting_down: AtomicBool,
}

impl AgentHealth {
    /// Health of an agent starting now (its ticker counts as having just run).
    pub fn new(started_at: Instant) -> Self {
        Self {
            started_at,
            last_tick: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// The ticker ran at `now`.
    pub fn mark_tick(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.started_at).as_nanos();
        self.last_tick
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A shutdown signal arrived: readiness fails from now on (SPEC §7).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// What the agent knows about itself at this moment.
    pub fn input(&self) -> AgentInput {
        let nanos = self.last_tick.load(Ordering::Relaxed);
        AgentInput {
            shutting_down: self.shutting_down.load(Ordering::Relaxed),
            last_tick: self.started_at + Duration::from_nanos(nanos),
        }
    }
}

/// Everything known at one instant, and the verdicts it implies.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Instant,
    /// The registry's state at `at`.
    pub state: Arc<State>,
    /// The agent's own health at `at`.
    pub agent: AgentInput,
    /// The verdicts evaluated from `state` and `agent` (and `group`) at `at`: every
    /// container's from [`Snapshots::take`], one container's (beside the agent's and the
    /// group's) from [`Snapshots::take_for`], which only a probe of that container reads.
    pub verdicts: Verdicts,
    /// A leader's group state at `at`.
    pub group: Option<Arc<GroupState>>,
}

impl Snapshot {
    /// Judges `state` and `agent` at `at`.
    pub fn evaluate(
        state: Arc<State>,
        agent: AgentInput,
        thresholds: &Thresholds,
        at: Instant,
    ) -> Self {
        let verdicts = evaluate(&state, agent, thresholds, at);
        Self {
            at,
            state,
            agent,
            verdicts,
            group: None,
        }
    }

    /// Adds a leader's group: its state as this pod's own instances at `at` show it, and
    /// its verdict.
    pub fn with_group(mut self, g: Arc<GroupState>, limits: &GroupLimits) -> Self {
        let g = g.as_of(&group::instances(&self.state), self.at);
        self.verdicts.group = Some(crate::verdict::group::evaluate(&g, limits, self.at));
        self.group = Some(g);
        self
    }
}

/// A leader's group, as snapshots read it.
#[derive(Debug, Clone)]
pub struct GroupSource {
    /// What the poller learnt.
    pub shared: Arc<SharedGroup>,
    /// `--group-timeout` and `--group-lost-after`.
    pub limits: GroupLimits,
}

/// Takes snapshots: a cheap, cloneable read handle on the registry and the agent's health.
#[derive(Debug, Clone)]
pub struct Snapshots {
    registry: Arc<Registry>,
    health: Arc<AgentHealth>,
    thresholds: Thresholds,
    group: Option<GroupSource>,
}

impl Snapshots {
    /// Snapshots of `registry` and `health`, judged by `thresholds`.
    pub fn new(registry: Arc<Registry>, health: Arc<AgentHealth>, thresholds: Thresholds) -> Self {
        Self {
            registry,
            health,
            thresholds,
            group: None,
        }
    }

    /// The same, on a group's leader: every snapshot also judges the group.
    pub fn with_group(mut self, group: GroupSource) -> Self {
        self.group = Some(group);
        self
    }

    /// The snapshot at `now`. Holds the registry's lock only to clone an `Arc`.
    pub fn take(&self, now: Instant) -> Snapshot {
        self.grouped(Snapshot::evaluate(
            self.registry.current(),
            self.health.input(),
            &self.thresholds,
            now,
        ))
    }

    /// The snapshot at `now` with container `name`'s verdicts alone (beside the agent's
    /// and a leader's group): all a probe of that container reads, and the same answer
    /// [`Self::take`] gives it, without judging every other container.
    pub fn take_for(&self, now: Instant, name: &str) -> Snapshot {
        let (state, agent) = (self.registry.current(), self.health.input());
        let verdicts = evaluate_one(&state, agent, &self.thresholds, now, name);
        self.grouped(Snapshot {
            at: now,
            state,
            agent,
            verdicts,
            group: None,
        })
    }

    fn grouped(&self, snapshot: Snapshot) -> Snapshot {
        match &self.group {
            Some(g) => snapshot.with_group(g.shared.current(), &g.limits),
            None => snapshot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{hello, name, phase, PEER, T};
    use crate::verdict::Probe;
    use vitals_proto::Phase;

    /// An agent at `t0` expecting `workers`, each connected (the `i`-th as connection `i`):
    /// its registry, its health and their snapshots.
    fn agent(workers: &[&str], t0: Instant) -> (Arc<Registry>, Arc<AgentHealth>, Snapshots) {
        let names: Vec<_> = workers.iter().map(|w| name(w)).collect();
        let registry = Arc::new(Registry::new(&names, T.hang));
        let health = Arc::new(AgentHealth::new(t0));
        let snapshots = Snapshots::new(Arc::clone(&registry), Arc::clone(&health), T);
        let reports = registry.worker_reports();
        for (conn, w) in (1..).zip(workers) {
            reports
                .hello(&hello(w, "a"), PEER, conn, t0)
                .expect("name free");
        }
        (registry, health, snapshots)
    }

    #[test]
    fn a_snapshot_does_not_change_after_it_is_taken() {
        let t0 = Instant::now();
        let (registry, health, snapshots) = agent(&["model"], t0);
        let reports = registry.worker_reports();
        let before = snapshots.take(t0);
        reports.message(&name("model"), 1, phase(Phase::Failed, None), t0);
        health.begin_shutdown();
        let after = snapshots.take(t0);
        let live = |s: &Snapshot| s.verdicts.get("model").map(|w| w.live);
        assert_eq!(live(&before), Some(Ok(())), "taken before the failure");
        assert!(before.verdicts.agent_ready.is_ok());
        assert_eq!(live(&after).map(|l| l.is_err()), Some(true));
        assert!(after.verdicts.agent_ready.is_err());
    }

    /// A probe of one container reads the same answer from its own snapshot as from the
    /// whole one, for each probe, whatever the other containers' state.
    #[test]
    fn a_containers_own_snapshot_answers_as_the_whole_one() {
        let t0 = Instant::now();
        let (registry, _health, snapshots) = agent(&["model", "other"], t0);
        let reports = registry.worker_reports();
        reports.message(&name("model"), 1, phase(Phase::Ready, None), t0);
        reports.message(&name("other"), 2, phase(Phase::Failed, None), t0);
        for at in [t0, t0 + T.hang] {
            let whole = snapshots.take(at).verdicts;
            for c in ["model", "other"] {
                let own_snapshot = snapshots.take_for(at, c);
                // What a 404 lists: every name the whole snapshot judges, from the state.
                assert!(own_snapshot.state.names().eq(whole.names()), "{c}");
                let own = own_snapshot.verdicts;
                for probe in [Probe::Startup, Probe::Live, Probe::Ready] {
                    assert_eq!(
                        own.worker(probe, c),
                        whole.worker(probe, c),
                        "{c} {probe:?}"
                    );
                }
                assert_eq!(own.names().collect::<Vec<_>>(), vec![c], "judged alone");
            }
        }
    }

    #[test]
    fn the_agent_is_live_while_its_ticker_runs() {
        let t0 = Instant::now();
        let health = AgentHealth::new(t0);
        assert!(!health.input().shutting_down);
        health.mark_tick(t0 + Duration::from_secs(5));
        assert_eq!(health.input().last_tick, t0 + Duration::from_secs(5));
    }
}
