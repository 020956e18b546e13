//! The seeded plan: which fault hits which target when, for how long. A pure function of the
//! seed, the length and the flags, so a seed names a run: faults on one target follow each
//! other (a fault clears, its bound passes, a healthy gap, the next), while the targets'
//! sequences, and the agent's own faults, overlap freely.

use super::faults::{
    agent_recovery, agent_stop_max, backoff_reset, restart_backoff, Action, FaultKind, Flags,
    Needs, KUBELET_SCALE,
};
use super::records::Target;

/// One planned fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Its number (by start).
    pub id: usize,
    /// The kind's name.
    pub kind: &'static str,
    /// The target's name (`agent` for the agent's own faults).
    pub target: String,
    /// When to inject it (s after probing began).
    pub at: f64,
    /// How long to hold it (s); for a kill, the kubelet's back-off before the restart.
    pub hold: f64,
}

/// A healthy gap between two faults on one target (s): long enough to see it pass again.
const GAP: (f64, f64) = (1.0, 4.0);
/// A random extra hold beyond a kind's minimum (s).
const EXTRA_HOLD: (f64, f64) = (0.0, 3.0);
/// Between two agent faults (s).
const AGENT_GAP: (f64, f64) = (20.0, 45.0);
/// The agent's faults keep this far from the run's ends (s), so each life is judged.
const AGENT_MARGIN: f64 = 10.0;

fn uniform(rng: &mut fastrand::Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + rng.f64() * (hi - lo)
}

/// The plan for a run of `secs` seconds with seed `seed`: for each target, faults drawn
/// from `kinds` (those for its kind), one after another; and the agent's kills and stops.
/// Every fault ends, bound included, before `secs`.
pub fn plan(
    seed: u64,
    secs: f64,
    flags: &Flags,
    targets: &[Target],
    kinds: &[&'static FaultKind],
) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::new();
    for target in targets {
        let mine: Vec<_> = kinds
            .iter()
            .filter(|k| k.target == target.kind)
            .filter(|k| k.needs != Needs::DataParallel || target.engines > 1)
            .filter(|k| (k.needs == Needs::Canary) == target.canary)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut kills: Vec<f64> = Vec::new();
        let mut t = uniform(&mut rng, (0.5, 2.0));
        loop {
            let k = mine[rng.usize(..mine.len())];
            let hold = if k.inject == Action::Kill {
                kubelet_delay(&kills, t).max((k.min_hold)(flags))
            } else {
                (k.min_hold)(flags) + uniform(&mut rng, EXTRA_HOLD)
            };
            let done = t + hold + (k.clear_bound)(flags).total();
            if done > secs {
                break;
            }
            if k.inject == Action::Kill {
                kills.push(t);
            }
            out.push(Planned {
                id: 0,
                kind: k.name,
                target: target.name.clone(),
                at: t,
                hold,
            });
            t = done + uniform(&mut rng, GAP);
        }
    }
    // The agent's faults alternate, a kill first, so even a short run has both.
    let mut kills: Vec<f64> = Vec::new();
    let mut t = uniform(&mut rng, (AGENT_MARGIN, 2.0 * AGENT_MARGIN));
    let mut kill = false;
    while t + AGENT_MARGIN < secs {
        kill = !kill;
        let (kind, hold) = if kill {
            let delay = kubelet_delay(&kills, t);
            kills.push(t);
            ("agent_kill", delay)
        } else {
            let max = agent_stop_max(flags);
            ("agent_stop", uniform(&mut rng, (0.2 * max, 0.8 * max)))
        };
        if t + hold + agent_recovery(flags).total() + AGENT_MARGIN > secs {
            break;
        }
        out.push(Planned {
            id: 0,
            kind,
            target: "agent".into(),
            at: t,
            hold,
        });
        t += hold + uniform(&mut rng, AGENT_GAP);
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    for (i, p) in out.iter_mut().enumerate() {
        p.id = i;
    }
    out
}

/// How long after a kill at `t` the kubelet restarts the container: its crash-loop
/// back-off, grown by the `kills` still within the back-off's reset window.
fn kubelet_delay(kills: &[f64], t: f64) -> f64 {
    let recent = kills
        .iter()
        .filter(|&&at| t - at < backoff_reset(KUBELET_SCALE))
        .count();
    restart_backoff(u32::try_from(recent).unwrap_or(u32::MAX), KUBELET_SCALE)
}

#[cfg(test)]
mod tests {
    use super::super::faults::{kind, TargetKind, KINDS};
    use super::*;

    /// The flags a soak runs with: the e2e agent's and the soak's own intervals.
    fn flags() -> Flags {
        super::super::run::flags(&crate::pod::AgentOptions::default())
    }

    fn targets() -> Vec<Target> {
        [
            ("model", TargetKind::Worker, 1, false),
            ("model-b", TargetKind::Worker, 1, false),
            ("vllm-a", TargetKind::Upstream, 1, false),
            ("vllm-b", TargetKind::Upstream, 2, false),
            ("vllm-idle", TargetKind::Upstream, 1, true),
        ]
        .into_iter()
        .map(|(n, kind, engines, canary)| Target {
            name: n.into(),
            kind,
            engines,
            canary,
        })
        .collect()
    }

    #[test]
    fn a_seed_names_a_plan() {
        let all: Vec<_> = KINDS.iter().collect();
        let a = plan(7, 300.0, &flags(), &targets(), &all);
        assert_eq!(a, plan(7, 300.0, &flags(), &targets(), &all));
        assert_ne!(a, plan(8, 300.0, &flags(), &targets(), &all));
    }

    #[test]
    fn faults_on_one_target_never_overlap_and_end_in_time() {
        let f = flags();
        let all: Vec<_> = KINDS.iter().collect();
        let p = plan(1, 600.0, &f, &targets(), &all);
        for t in targets() {
            let mine: Vec<_> = p.iter().filter(|x| x.target == t.name).collect();
            for w in mine.windows(2) {
                let k = kind(w[0].kind, t.kind).expect("a planned kind is in the table");
                assert!(w[0].at + w[0].hold + (k.clear_bound)(&f).total() < w[1].at);
            }
            let last = mine
                .last()
                .expect("a 600 s plan has faults on every target");
            assert!(last.at + last.hold < 600.0);
        }
        // Every kind of a target kind shows up in ten minutes; the agent's too.
        for k in KINDS {
            assert!(
                p.iter().any(|x| x.kind == k.name),
                "{} never planned",
                k.name
            );
        }
        assert!(
            !p.iter()
                .any(|x| x.kind == "one_engine_hung" && x.target == "vllm-a"),
            "one engine of one hangs only with data parallelism"
        );
        // The idle upstream gets only the canary's kinds, and they go nowhere else: the
        // others' load keeps them from being idle, and the busy kinds need a load.
        for x in p.iter().filter(|x| x.target.starts_with("vllm")) {
            let k = kind(x.kind, TargetKind::Upstream).expect("a planned kind is in the table");
            assert_eq!(
                k.needs == Needs::Canary,
                x.target == "vllm-idle",
                "{} on {}",
                x.kind,
                x.target
            );
        }
        assert!(p.iter().any(|x| x.kind == "agent_kill"));
        assert!(p.iter().any(|x| x.kind == "agent_stop"));
        assert!(p
            .iter()
            .filter(|x| x.kind == "agent_stop")
            .all(|x| x.hold <= agent_stop_max(&f)));
        assert!(p
            .windows(2)
            .all(|w| w[0].at <= w[1].at && w[0].id + 1 == w[1].id));
    }

    #[test]
    fn kills_wait_the_kubelets_back_off() {
        let kill: Vec<_> = KINDS.iter().filter(|k| k.inject == Action::Kill).collect();
        let p = plan(3, 120.0, &flags(), &targets(), &kill);
        let holds: Vec<f64> = p
            .iter()
            .filter(|x| x.target == "model")
            .map(|x| x.hold)
            .collect();
        // 1 s (or the kind's minimum hold), then doubling while the earlier restarts are
        // recent.
        let min = (kind("kill", TargetKind::Worker).expect("a row").min_hold)(&flags());
        let steps: Vec<f64> = (0..10)
            .map(|k| restart_backoff(k, KUBELET_SCALE).max(min))
            .collect();
        assert_eq!(holds[0], steps[0]);
        assert!(holds.iter().all(|h| steps.contains(h)), "{holds:?}");
        assert!(holds.iter().any(|&h| h >= 2.0), "{holds:?}");
    }
}
