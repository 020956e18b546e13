//! What changed between two instants' verdicts (SPEC §4, §7): a pure diff, the one place
//! that decides which transitions are logged and which events are counted. The ticker
//! applies what [`Seen::diff`] returns; nothing else counts an edge, so a counter never
//! depends on who looked (a `GET /metrics` only sets gauges).

use std::collections::HashMap;

use vitals_proto::WorkerName;

use super::group::BrokenReason;
use super::{Answer, Failing, LiveReason, Probe, Target, Verdicts};

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edge {
    /// A probe's answer changed (an unreachable member's growing age is no change:
    /// [`Failing::key`]).
    Transition {
        /// Whose answer.
        target: Target,
        /// Which probe.
        probe: Probe,
        /// As it was when it last changed; `None` when first seen.
        from: Option<Result<(), Failing>>,
        /// As it is now.
        to: Result<(), Failing>,
    },
    /// A container's liveness started failing for a hang reason (`vitals_worker_hangs_total`).
    Hang {
        /// The worker or upstream.
        container: WorkerName,
        /// Why.
        reason: LiveReason,
    },
    /// A leader's group broke, or broke for another reason (`vitals_group_broken_total`).
    GroupBroken(BrokenReason),
}

/// What the last diff saw.
#[derive(Debug, Default)]
pub struct Seen {
    answers: HashMap<(Target, Probe), Result<(), Failing>>,
    lives: HashMap<WorkerName, Result<(), LiveReason>>,
    group_broken: Option<BrokenReason>,
}

/// Every answer a probe could ask for now: the agent's `/livez`, the aggregates, and each
/// container's three probes.
pub fn answers(v: &Verdicts) -> impl Iterator<Item = Answer> + '_ {
    let pod = Probe::ALL.map(|p| v.aggregate(p));
    let containers = v.names().flat_map(move |name| {
        Probe::ALL
            .into_iter()
            .filter_map(move |p| v.worker(p, name))
    });
    pod.into_iter().chain(containers)
}

/// Each container's liveness as far as hangs go: a worker's verdict, an upstream's /proc
/// and metrics reasons (a failing probe of its own is not a hang).
fn hang_lives(v: &Verdicts) -> impl Iterator<Item = (WorkerName, Result<(), LiveReason>)> + '_ {
    let workers = v.workers.iter().map(|w| (w.name.clone(), w.live));
    let upstreams = v.upstreams.iter().map(|u| {
        let live = match &u.live {
            Err(r) => r.as_live().map_or(Ok(()), Err),
            Ok(()) => Ok(()),
        };
        (u.name.clone(), live)
    });
    workers.chain(upstreams)
}

/// `r` without ages, for comparing.
fn key(r: &Result<(), Failing>) -> Result<(), Failing> {
    r.as_ref().map(|_| ()).map_err(Failing::key)
}

impl Seen {
    /// The edges from what was seen last to `v`, in a stable order (answers as [`answers`]
    /// lists them, then hangs, then the group); `v` is seen from now on.
    pub fn diff(&mut self, v: &Verdicts) -> Vec<Edge> {
        let mut edges = Vec::new();
        for answer in answers(v) {
            let at = (answer.target.clone(), answer.probe);
            let before = self.answers.get(&at);
            if before.is_some_and(|b| key(b) == key(&answer.result)) {
                continue;
            }
            edges.push(Edge::Transition {
                target: answer.target,
                probe: answer.probe,
                from: before.cloned(),
                to: answer.result.clone(),
            });
            self.answers.insert(at, answer.result);
        }
        for (container, live) in hang_lives(v) {
            let before = self.lives.insert(container.clone(), live);
            if let (Some(Ok(())) | None, Err(reason)) = (before, live) {
                edges.push(Edge::Hang { container, reason });
            }
        }
        let broken = v.group.as_ref().and_then(|g| g.live.err());
        if let Some(b) = broken.filter(|b| self.group_broken.as_ref() != Some(b)) {
            edges.push(Edge::GroupBroken(b));
        }
        self.group_broken = broken;
        edges
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use vitals_proto::Phase;

    use super::*;
    use crate::fixtures::{broken_group, hello, name, phase, LIMITS, PEER, T};
    use crate::state::group::GroupState;
    use crate::state::registry::State;
    use crate::verdict::group;
    use crate::verdict::{evaluate, AgentInput};

    fn judge(state: &State, g: Option<&GroupState>, at: Instant) -> Verdicts {
        let agent = AgentInput {
            shutting_down: false,
            last_tick: at,
        };
        let mut v = evaluate(state, agent, &T, at);
        v.group = g.map(|g| group::evaluate(g, &LIMITS, at));
        v
    }

    fn counted(edges: &[Edge]) -> Vec<&Edge> {
        edges
            .iter()
            .filter(|e| !matches!(e, Edge::Transition { .. }))
            .collect()
    }

    #[test]
    fn the_first_diff_sees_every_answer_and_a_steady_state_none() {
        let t0 = Instant::now();
        let mut state = State::new(&[name("agent")]);
        state
            .hello(&hello("agent", "a"), PEER, 1, t0)
            .expect("free");
        let mut seen = Seen::default();
        let first = seen.diff(&judge(&state, None, t0));
        let targets: Vec<_> = first
            .iter()
            .filter_map(|e| match e {
                Edge::Transition { target, probe, .. } => Some((target.clone(), *probe)),
                _ => None,
            })
            .collect();
        let agent = Target::Container(name("agent"));
        assert_eq!(
            targets,
            [
                (Target::Agent, Probe::Live),
                (Target::All, Probe::Ready),
                (Target::All, Probe::Startup),
                (agent.clone(), Probe::Live),
                (agent.clone(), Probe::Ready),
                (agent, Probe::Startup),
            ],
            "the agent and a container named agent are two targets"
        );
        for secs in 1..5 {
            let at = t0 + Duration::from_millis(secs * 100);
            assert_eq!(seen.diff(&judge(&state, None, at)), []);
        }
    }

    #[test]
    fn a_hang_is_counted_when_liveness_starts_failing() {
        let t0 = Instant::now();
        let mut state = State::new(&[]);
        state
            .hello(&hello("model", "a"), PEER, 1, t0)
            .expect("free");
        let mut seen = Seen::default();
        assert_eq!(
            counted(&seen.diff(&judge(&state, None, t0))),
            [] as [&Edge; 0]
        );
        state.message(&name("model"), 1, phase(Phase::Failed, None), t0);
        let hang = Edge::Hang {
            container: name("model"),
            reason: LiveReason::Failed,
        };
        assert_eq!(counted(&seen.diff(&judge(&state, None, t0))), [&hang]);
        assert_eq!(seen.diff(&judge(&state, None, t0)), [], "once");
    }

    #[test]
    fn a_group_break_is_counted_once() {
        let t0 = Instant::now();
        let state = State::new(&[]);
        let g = broken_group(t0);
        let mut seen = Seen::default();
        // Member 1's latest answer stays fresh from 1 s to 3.5 s: the same break throughout.
        let at = |ms| t0 + Duration::from_millis(ms);
        let broken = Edge::GroupBroken(group::BrokenReason::Restarted { member: 1 });
        assert_eq!(
            counted(&seen.diff(&judge(&state, Some(&g), at(1000)))),
            [&broken]
        );
        for ms in [1500, 2000, 3500] {
            assert_eq!(seen.diff(&judge(&state, Some(&g), at(ms))), []);
        }
    }
}
