//! The soak's judge: a pure function from a run's [`Records`] to a [`Verdict`]. Every fault
//! is compared with its ground truth (detected and cleared within the bounds its
//! [`FaultKind`] row derives from the flags, plus the starvation measured over the same
//! window), and every probe of every target with the faults that held on it: a failure no
//! fault explains is a false failure, a reason the fault cannot give is a wrong reason, a
//! pass while a detected fault holds is a flap. Also: the agent's answer latency, its RSS in
//! each life, and panics.
//!
//! The agent's own faults shape the rest: while it is killed or stopped, probes get no
//! answer (allowed); after a restart, targets may fail with [`RECOVERY_REASONS`] until
//! [`agent_recovery`]; a fault that began before the agent had recovered is `carried` (its
//! detection is not judged, its reasons are); one whose agent died before its detection was
//! due is `interrupted`; time the agent spent stopped is added to the bounds it overlaps,
//! as starvation is (the agent could not run).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::faults::{
    agent_recovery, kind, FaultKind, Flags, PathRule, Probe, TargetKind, RECOVERY_REASONS,
};
use super::records::{Fault, Life, ProbeRecord, Records};
use crate::report::percentile;

/// The agent's answers, in the style of the agent's own never-blocked tests: p99 and max of
/// a probe's latency less the starvation measured over it (ms).
pub const P99_BOUND_MS: f64 = 10.0;
/// See [`P99_BOUND_MS`].
pub const MAX_BOUND_MS: f64 = 100.0;
/// The agent's RSS may grow by this much in one life, from 5 s after it answered to its end
/// (KiB; scenario U6's bound).
pub const RSS_GROWTH_KIB: i64 = 2048;
/// A life is judged for RSS growth once it spans this long (s) after its warm-up.
const RSS_MIN_SPAN: f64 = 10.0;
/// RSS is taken as warm this long after the agent answered (s).
const RSS_WARM: f64 = 5.0;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemKind {
    /// A fault never detected although its bound passed while it held.
    Missed,
    /// Detected after its bound.
    Late,
    /// Detected before the earliest correct time.
    Early,
    /// Still failing after the clear bound (or never passed again).
    NotCleared,
    /// Passed while a detected fault held.
    Flap,
    /// Failed with no fault to explain it.
    FalseFailure,
    /// Failed with a reason the fault cannot give.
    WrongReason,
    /// The agent did not answer while it was neither killed nor stopped.
    NoAnswer,
    /// An answer slower than [`MAX_BOUND_MS`] beyond starvation, or a p99 over
    /// [`P99_BOUND_MS`].
    SlowAnswer,
    /// A healthy target not ready again within the recovery bound after an agent restart.
    SlowRecovery,
    /// The agent's RSS grew more than [`RSS_GROWTH_KIB`] in one life.
    RssGrowth,
    /// A panic in a log.
    Panic,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// What.
    pub kind: ProblemKind,
    /// When (s on the run's timeline).
    pub t: f64,
    /// For a person.
    pub detail: String,
}

/// How a fault's detection on one path was judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detection {
    /// Within its bound, after this long (s).
    InBound(f64),
    /// After its bound.
    Late(f64),
    /// Before its earliest correct time.
    Early(f64),
    /// Not detected while the fault held past its bound.
    Missed,
    /// Began before the agent had recovered from a restart: not judged.
    Carried,
    /// The agent died before the detection was due: not judged.
    Interrupted,
    /// Cleared before its bound passed (the machine was starved): not judged.
    Unjudged,
}

/// One row of the per-kind table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindRow {
    /// `worker stop`, `upstream hung_engine`, ...
    pub name: String,
    /// Faults of the kind.
    pub faults: usize,
    /// Detected in bound on every `MustFail` path (or, with none, never failing wrongly).
    pub in_bound: usize,
    /// Missed, late or early on some path.
    pub out_of_bound: usize,
    /// Carried, interrupted or unjudged.
    pub not_judged: usize,
    /// Cleared within bound on every path.
    pub cleared: usize,
    /// Detection latencies of the first `MustFail` path (s).
    pub detect: Vec<f64>,
    /// The bound on them without starvation (s).
    pub bound: f64,
    /// Clear latencies (s), the slowest path of each fault, from the clear (or from the
    /// agent's recovery when it restarted meanwhile).
    pub clear: Vec<f64>,
    /// The clear bound without starvation (s).
    pub clear_bound: f64,
    /// Flaps.
    pub flaps: usize,
    /// Reasons seen while its faults held, with counts of failing probes.
    pub reasons: BTreeMap<String, usize>,
}

/// The agent's own faults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentRow {
    /// SIGKILLs.
    pub kills: usize,
    /// From the restart (spawn) to its own `/livez` passing (s).
    pub back: Vec<f64>,
    /// From it answering to the last healthy target ready (s).
    pub targets_ready: Vec<f64>,
    /// SIGSTOPs.
    pub stops: usize,
    /// Their lengths (s).
    pub stopped: Vec<f64>,
}

/// The judge's conclusion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// Per fault kind.
    pub rows: Vec<KindRow>,
    /// The agent's faults.
    pub agent: AgentRow,
    /// Every problem, by time.
    pub problems: Vec<Problem>,
    /// Probes judged.
    pub probes: usize,
    /// p99 and max of the answered probes' latency (ms), raw.
    pub p99_ms: f64,
    /// See `p99_ms`.
    pub max_ms: f64,
    /// p99 and max of latency less the starvation over it (ms).
    pub p99_unexplained_ms: f64,
    /// See `p99_unexplained_ms`.
    pub max_unexplained_ms: f64,
    /// The largest RSS growth of a judged life (KiB), and how many lives were judged.
    pub rss_growth_kib: Option<i64>,
    /// Lives judged for RSS.
    pub rss_lives: usize,
    /// Starvation over the whole run (s).
    pub starvation: f64,
}

impl Verdict {
    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// How many problems of `kind`.
    pub fn count(&self, kind: ProblemKind) -> usize {
        self.problems.iter().filter(|p| p.kind == kind).count()
    }
}

/// What the judge consults.
struct Ctx<'a> {
    r: &'a Records,
    f: Flags,
}

impl Ctx<'_> {
    /// Starvation measured in `scope` over `[a, b]`: each slice's share of the window (a
    /// slice half inside counts half), added up. For windows of seconds (a detection, a
    /// clear).
    fn starvation(&self, scope: &str, a: f64, b: f64) -> f64 {
        self.r
            .slices
            .iter()
            .filter(|s| s.scope == scope && s.from < b && s.to > a && s.to > s.from)
            .map(|s| s.starvation * (s.to.min(b) - s.from.max(a)) / (s.to - s.from))
            .sum()
    }

    /// Starvation measured in `scope` in the slices `[a, b]` touches, whole: for a window of
    /// milliseconds (one probe) within a slice, where in it a stall fell is not known.
    fn starvation_around(&self, scope: &str, a: f64, b: f64) -> f64 {
        self.r
            .slices
            .iter()
            .filter(|s| s.scope == scope && s.from <= b && s.to >= a)
            .map(|s| s.starvation)
            .sum()
    }

    /// How long the agent was SIGSTOPped within `[a, b]`.
    fn agent_stopped(&self, a: f64, b: f64) -> f64 {
        self.r
            .faults
            .iter()
            .filter(|x| x.kind == "agent_stop")
            .map(|x| (x.end.min(b) - x.start.max(a)).max(0.0))
            .sum()
    }

    /// What an upper bound on a verdict about `scope` adds over `[a, b]`.
    fn slack(&self, scope: &str, a: f64, b: f64) -> f64 {
        self.starvation(scope, a, b) + self.agent_stopped(a, b)
    }

    fn life_at(&self, t: f64) -> Option<&Life> {
        self.r
            .lives
            .iter()
            .find(|l| l.spawned <= t && l.died.is_none_or(|d| t < d))
    }

    /// When a life has recovered from its start: it answered, and every target had time to
    /// be heard from.
    fn settled(&self, life: &Life, scope: &str) -> Option<f64> {
        let up = life.up?;
        let b = agent_recovery(&self.f).total();
        let settled = up + b + self.slack(scope, up, up + b);
        // The run began once every target was ready with the first agent.
        Some(if life.n == 0 {
            settled.min(self.r.run.begin)
        } else {
            settled
        })
    }

    /// Probes started in these windows may get no answer (or a slow one): the agent was
    /// killed or stopped.
    fn unanswerable(&self, t: f64) -> bool {
        let (timeout, period) = (self.f.probe_timeout, self.f.probe_period);
        self.r.faults.iter().any(|x| match x.kind.as_str() {
            "agent_stop" => t >= x.start - timeout && t <= x.end + period,
            "agent_kill" => {
                let up = self
                    .r
                    .lives
                    .iter()
                    .find(|l| l.spawned >= x.start)
                    .and_then(|l| l.up)
                    .unwrap_or(f64::INFINITY);
                t >= x.start - timeout && t <= up + period
            }
            _ => false,
        })
    }

    /// Whether `t` is in a life's recovery window.
    /// (From its spawn: it may answer a little before the soak saw it up.)
    fn recovering(&self, t: f64, scope: &str) -> bool {
        self.r
            .lives
            .iter()
            .any(|l| t >= l.spawned && self.settled(l, scope).is_some_and(|s| t <= s))
    }

    /// When a clock of `bound` that starts at `t` can run in an agent that stays up: `t`
    /// itself, unless the agent was down then, died before the bound passed, or was still
    /// recovering; then when the next life (or this one) had recovered.
    fn resumed(&self, t: f64, bound: f64, scope: &str) -> f64 {
        let settled = |l: &Life| self.settled(l, scope).unwrap_or(t).max(t);
        let next = || {
            self.r
                .lives
                .iter()
                .find(|l| l.spawned > t)
                .map_or(t, settled)
        };
        match self.life_at(t) {
            None => next(),
            Some(now) if now.died.is_some_and(|d| d < t + bound) => next(),
            Some(now) => settled(now),
        }
    }

    fn target_kind(&self, name: &str) -> Option<TargetKind> {
        self.r
            .run
            .targets
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.kind)
    }

    fn probes<'p>(
        &'p self,
        target: &'p str,
        probe: Probe,
    ) -> impl Iterator<Item = &'p ProbeRecord> + 'p {
        self.r
            .probes
            .iter()
            .filter(move |p| p.target == target && p.probe == probe)
    }
}

/// When the agent's answer to `p` had come at the latest: its end.
fn answered_by(p: &ProbeRecord) -> f64 {
    p.t + p.latency_ms / 1e3
}

/// The scope of the starvation that delays the agent's answers.
const AGENT: &str = "agent";

fn allowed(reason: &str, reasons: &[&str]) -> bool {
    reasons.iter().any(|r| reason.starts_with(r))
}

/// A fault as judged, path by path.
struct Judged<'a> {
    fault: &'a Fault,
    kind: &'static FaultKind,
    /// Until when each path's failures are explained by this fault.
    explains_until: [f64; 2],
    /// The agent life the fault began in.
    life: Option<usize>,
    carried: bool,
}

/// Judges a run's records.
pub fn judge(r: &Records) -> Verdict {
    let cx = Ctx { r, f: r.run.flags };
    let (begin, end) = (r.run.begin, r.run.end);
    let mut v = Verdict {
        probes: r
            .probes
            .iter()
            .filter(|p| p.t >= begin && p.t <= end)
            .count(),
        starvation: cx.starvation(AGENT, begin, end),
        ..Verdict::default()
    };
    let mut problems = Vec::new();
    let mut judged = Vec::new();
    let mut outcomes = Vec::new();
    for fault in &r.faults {
        let Some(tk) = cx.target_kind(&fault.target) else {
            continue;
        };
        let Some(k) = kind(&fault.kind, tk) else {
            problems.push(Problem {
                kind: ProblemKind::Missed,
                t: fault.start,
                detail: format!("fault {}: unknown kind {}", fault.id, fault.kind),
            });
            continue;
        };
        let (j, outcome) = judge_fault(&cx, fault, k, &mut problems);
        judged.push(j);
        outcomes.push(outcome);
    }
    // Faults during which a probe failed wrongly (a reason it cannot give, or a path it
    // must leave passing): not "in bound" whatever their detection.
    let mut wrong = vec![false; judged.len()];
    let mut reasons: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); judged.len()];

    // Every probe of a target: explained by a fault, by the agent's recovery, or a problem.
    for p in r.probes.iter().filter(|p| p.t >= begin && p.t <= end) {
        if p.ok {
            continue;
        }
        if p.status.is_none() {
            if !cx.unanswerable(p.t) {
                problems.push(Problem {
                    kind: ProblemKind::NoAnswer,
                    t: p.t,
                    detail: format!("{}: no answer: {}", p.probe.path(&p.target), p.reason),
                });
            }
            continue;
        }
        if p.target == "agent" {
            problems.push(Problem {
                kind: ProblemKind::FalseFailure,
                t: p.t,
                detail: format!(
                    "{}: the agent failed itself: {}",
                    p.probe.path("agent"),
                    p.reason
                ),
            });
            continue;
        }
        let idx = usize::from(p.probe == Probe::Ready);
        // The agent answered somewhere between the probe's start and its end.
        let holding = judged.iter().position(|j| {
            j.fault.target == p.target
                && answered_by(p) >= j.fault.start
                && p.t <= j.explains_until[idx]
        });
        if let Some(i) = holding {
            let j = &judged[i];
            let rule = j.kind.rule(p.probe);
            let other_life = j.carried || cx.life_at(p.t).map(|l| l.n) != j.life;
            let ok = allowed(&p.reason, rule.reasons())
                || (other_life && allowed(&p.reason, RECOVERY_REASONS));
            *reasons[i].entry(reason_word(&p.reason)).or_default() += 1;
            if !ok {
                wrong[i] = true;
                let (kind, why) = match rule {
                    PathRule::Pass => (ProblemKind::FalseFailure, "must not fail"),
                    _ => (ProblemKind::WrongReason, "cannot give"),
                };
                problems.push(Problem {
                    kind,
                    t: p.t,
                    detail: format!(
                        "{}: fault {} ({}, {:.2}s in) {why} `{}`",
                        p.probe.path(&p.target),
                        j.fault.id,
                        j.kind.name,
                        p.t - j.fault.start,
                        p.reason
                    ),
                });
            }
            continue;
        }
        if cx.recovering(answered_by(p), &p.target) && allowed(&p.reason, RECOVERY_REASONS) {
            continue;
        }
        problems.push(Problem {
            kind: ProblemKind::FalseFailure,
            t: p.t,
            detail: format!(
                "{}: failed on a healthy target: {}",
                p.probe.path(&p.target),
                p.reason
            ),
        });
    }

    let mut rows: BTreeMap<String, KindRow> = BTreeMap::new();
    for (((j, outcome), wrong), reasons) in judged.iter().zip(&outcomes).zip(wrong).zip(reasons) {
        let row = rows
            .entry(format!("{:?} {}", j.kind.target, j.kind.name).to_lowercase())
            .or_default();
        row.faults += 1;
        match outcome.detection {
            Some(Detection::InBound(lat)) if !wrong => {
                row.in_bound += 1;
                row.detect.push(lat);
            }
            Some(Detection::InBound(lat) | Detection::Late(lat) | Detection::Early(lat)) => {
                row.out_of_bound += 1;
                row.detect.push(lat);
            }
            Some(Detection::Missed) => row.out_of_bound += 1,
            Some(Detection::Carried | Detection::Interrupted | Detection::Unjudged) => {
                row.not_judged += 1;
            }
            // No path must fail: in bound unless a probe failed wrongly.
            None if wrong => row.out_of_bound += 1,
            None => row.in_bound += 1,
        }
        row.bound = outcome.bound;
        row.clear_bound = (j.kind.clear_bound)(&cx.f).total();
        if let Some(c) = outcome.clear {
            row.cleared += 1;
            row.clear.push(c);
        }
        row.flaps += outcome.flaps;
        for (reason, n) in reasons {
            *row.reasons.entry(reason).or_default() += n;
        }
    }
    judge_agent(&cx, &judged, &mut v.agent, &mut problems);
    judge_latency(&cx, &mut v, &mut problems);
    judge_rss(&cx, &mut v, &mut problems);
    for panic in &r.panics {
        problems.push(Problem {
            kind: ProblemKind::Panic,
            t: end,
            detail: format!("{}: {}", panic.who, panic.line),
        });
    }
    problems.sort_by(|a, b| a.t.total_cmp(&b.t).then(a.kind.cmp(&b.kind)));
    v.problems = problems;
    v.rows = rows
        .into_iter()
        .map(|(name, row)| KindRow { name, ..row })
        .collect();
    v
}

/// The reason without a changing detail (`heartbeat_timeout: 2.1s` → `heartbeat_timeout`),
/// keeping `probe_failed: timeout` and `phase: loading` whole.
fn reason_word(reason: &str) -> String {
    match reason.split_once(": ") {
        Some((w @ ("probe_failed" | "phase"), rest)) => {
            format!("{w}: {}", rest.split_whitespace().next().unwrap_or(""))
        }
        Some((w, _)) => w.to_string(),
        None => reason.to_string(),
    }
}

/// One fault's outcome.
struct Outcome {
    /// The first `MustFail` path's detection (`None`: no path must fail).
    detection: Option<Detection>,
    /// Its bound without starvation.
    bound: f64,
    /// Cleared within bound: the slowest path's latency.
    clear: Option<f64>,
    flaps: usize,
}

fn judge_fault<'a>(
    cx: &Ctx<'_>,
    fault: &'a Fault,
    k: &'static FaultKind,
    problems: &mut Vec<Problem>,
) -> (Judged<'a>, Outcome) {
    let life = cx.life_at(fault.start);
    let scope = fault.target.as_str();
    let carried = life
        .and_then(|l| cx.settled(l, scope))
        .is_none_or(|settled| fault.start < settled);
    let died = life.and_then(|l| l.died).unwrap_or(f64::INFINITY);
    let mut outcome = Outcome {
        detection: None,
        bound: 0.0,
        clear: Some(0.0),
        flaps: 0,
    };
    let mut explains_until = [cx.r.run.end; 2];
    let label = |p: Probe| format!("fault {} {} on {}", fault.id, k.name, p.path(&fault.target));

    for (idx, probe) in Probe::ALL.into_iter().enumerate() {
        let rule = k.rule(probe);
        if let PathRule::MustFail {
            reasons,
            detect,
            not_before,
        } = rule
        {
            let bound = detect(&cx.f).total();
            let first = cx.probes(&fault.target, probe).find(|p| {
                answered_by(p) >= fault.start
                    && p.t <= fault.end
                    && !p.ok
                    && p.status.is_some()
                    && allowed(&p.reason, reasons)
            });
            // Bounds count from when the injection was done, lower bounds from when it
            // began: its effect came in between.
            let limit = |t: f64| fault.injected + bound + cx.slack(scope, fault.start, t);
            let d = if carried {
                Detection::Carried
            } else {
                match first {
                    Some(p) if p.t >= died => Detection::Interrupted,
                    Some(p) if p.t > limit(p.t) => Detection::Late(p.t - fault.injected),
                    // Early only if even its answer (the latest the verdict can have been
                    // made) came before the earliest correct time.
                    Some(p) if answered_by(p) - fault.start < not_before(&cx.f) => {
                        Detection::Early((p.t - fault.start).max(0.0))
                    }
                    Some(p) => Detection::InBound((p.t - fault.injected).max(0.0)),
                    None if died < fault.end.min(limit(fault.end)) => Detection::Interrupted,
                    None if fault.end >= limit(fault.end) => Detection::Missed,
                    None => Detection::Unjudged,
                }
            };
            match d {
                Detection::Late(lat) => problems.push(Problem {
                    kind: ProblemKind::Late,
                    t: fault.injected + lat,
                    detail: format!(
                        "{}: detected after {lat:.2}s, bound {bound:.2}s + {:.3}s starvation",
                        label(probe),
                        cx.slack(scope, fault.start, fault.injected + lat)
                    ),
                }),
                Detection::Early(lat) => problems.push(Problem {
                    kind: ProblemKind::Early,
                    t: fault.start + lat,
                    detail: format!(
                        "{}: detected after {lat:.2}s, before {:.2}s",
                        label(probe),
                        not_before(&cx.f)
                    ),
                }),
                Detection::Missed => problems.push(Problem {
                    kind: ProblemKind::Missed,
                    t: fault.start,
                    detail: format!(
                        "{}: never detected in {:.2}s held (bound {bound:.2}s + {:.3}s \
                         starvation)",
                        label(probe),
                        fault.end - fault.injected,
                        cx.slack(scope, fault.start, fault.end)
                    ),
                }),
                _ => {}
            }
            // Flaps: passes after the detection while the fault still held, in that life.
            if let (Some(p), Detection::InBound(_) | Detection::Late(_) | Detection::Early(_)) =
                (first, d)
            {
                let mut failing = true;
                // A probe answered after the clear action may pass: only answers before it
                // count.
                for q in cx
                    .probes(&fault.target, probe)
                    .filter(|q| q.t > p.t && answered_by(q) < fault.end.min(died))
                {
                    if q.ok && failing {
                        outcome.flaps += 1;
                        problems.push(Problem {
                            kind: ProblemKind::Flap,
                            t: q.t,
                            detail: format!(
                                "{}: passed {:.2}s after its detection, {:.2}s before the clear",
                                label(probe),
                                q.t - p.t,
                                fault.end - q.t
                            ),
                        });
                    }
                    if q.status.is_some() {
                        failing = !q.ok;
                    }
                }
            }
            // The fault's detection is its first such path's, unless another path did worse.
            let worse = |d: Detection| match d {
                Detection::Missed => 3,
                Detection::Late(_) => 2,
                Detection::Early(_) => 1,
                _ => 0,
            };
            if outcome.detection.is_none_or(|o| worse(d) > worse(o)) {
                outcome.detection = Some(d);
                outcome.bound = bound;
            }
        }
        if matches!(rule, PathRule::Pass) {
            // Nothing to clear; a failure is found by the probe sweep.
            explains_until[idx] = fault.cleared;
            continue;
        }
        // Cleared: the first pass after the clear action, within the clear bound counted
        // from the clear, or from the agent having recovered when it was down or restarted
        // meanwhile.
        let clear_bound = (k.clear_bound)(&cx.f).total();
        let from = cx.resumed(fault.cleared, clear_bound, scope);
        let pass = cx
            .probes(&fault.target, probe)
            .find(|p| p.t >= fault.end && p.ok);
        // The next fault on the target, when it came before the clear was due (the agent's
        // restart delayed it), leaves the clear unjudged.
        let next =
            cx.r.faults
                .iter()
                .filter(|x| x.target == fault.target && x.start > fault.end)
                .map(|x| x.start)
                .fold(f64::INFINITY, f64::min);
        let due = |to: f64| from + clear_bound + cx.slack(scope, from, to);
        explains_until[idx] = pass.map_or(cx.r.run.end, |p| p.t);
        match pass {
            Some(p) if p.t <= due(p.t) => {
                if let Some(c) = outcome.clear.as_mut() {
                    *c = c.max(p.t - from);
                }
            }
            _ if next < due(next) => {
                outcome.clear = None;
                explains_until[idx] = explains_until[idx].min(next);
            }
            _ => {
                outcome.clear = None;
                problems.push(Problem {
                    kind: ProblemKind::NotCleared,
                    t: fault.end,
                    detail: format!(
                        "{}: {} after the clear (bound {clear_bound:.2}s + {:.3}s starvation)",
                        label(probe),
                        pass.map_or("never passed again".to_string(), |p| format!(
                            "passed again only {:.2}s",
                            p.t - fault.cleared
                        )),
                        cx.slack(scope, from, pass.map_or(cx.r.run.end, |p| p.t))
                    ),
                });
            }
        }
    }
    (
        Judged {
            fault,
            kind: k,
            explains_until,
            life: life.map(|l| l.n),
            carried,
        },
        outcome,
    )
}

/// Agent restarts: back within what, and every target not under a fault ready again within
/// the recovery bound.
fn judge_agent(
    cx: &Ctx<'_>,
    judged: &[Judged<'_>],
    row: &mut AgentRow,
    problems: &mut Vec<Problem>,
) {
    for x in &cx.r.faults {
        match x.kind.as_str() {
            "agent_stop" => {
                row.stops += 1;
                row.stopped.push(x.end - x.start);
            }
            "agent_kill" => {
                row.kills += 1;
                let Some(life) = cx.r.lives.iter().find(|l| l.spawned >= x.start) else {
                    continue;
                };
                let Some(up) = life.up else {
                    problems.push(Problem {
                        kind: ProblemKind::SlowRecovery,
                        t: life.spawned,
                        detail: "the restarted agent never answered /livez".into(),
                    });
                    continue;
                };
                row.back.push(up - life.spawned);
                let bound = agent_recovery(&cx.f).total();
                let mut slowest: f64 = 0.0;
                let slack = |t: &str, to: f64| cx.slack(t, up, to);
                for t in &cx.r.run.targets {
                    // A target under a fault then is judged by that fault.
                    let faulted = judged.iter().any(|j| {
                        j.fault.target == t.name
                            && j.fault.start <= up + bound
                            && j.explains_until[1] >= x.start
                    });
                    if faulted {
                        continue;
                    }
                    let ready = cx.probes(&t.name, Probe::Ready).find(|p| p.t >= up && p.ok);
                    match ready {
                        Some(p) if p.t - up <= bound + slack(&t.name, p.t) => {
                            slowest = slowest.max(p.t - up);
                        }
                        _ => problems.push(Problem {
                            kind: ProblemKind::SlowRecovery,
                            t: up,
                            detail: format!(
                                "{} not ready within {bound:.2}s + {:.3}s starvation of the \
                                 agent's restart ({})",
                                Probe::Ready.path(&t.name),
                                slack(&t.name, up + bound),
                                ready.map_or("never".into(), |p| format!("{:.2}s", p.t - up))
                            ),
                        }),
                    }
                }
                row.targets_ready.push(slowest);
            }
            _ => {}
        }
    }
}

/// The p99 of `sorted` (ascending) in the toolkit's one definition; 0 when empty.
fn p99(sorted: &[f64]) -> f64 {
    if sorted.is_empty() {
        0.0
    } else {
        percentile(sorted, 0.99)
    }
}

fn judge_latency(cx: &Ctx<'_>, v: &mut Verdict, problems: &mut Vec<Problem>) {
    let (begin, end) = (cx.r.run.begin, cx.r.run.end);
    let answered: Vec<&ProbeRecord> =
        cx.r.probes
            .iter()
            .filter(|p| p.t >= begin && p.t <= end && p.status.is_some() && !cx.unanswerable(p.t))
            .collect();
    let mut raw: Vec<f64> = answered.iter().map(|p| p.latency_ms).collect();
    let mut unexplained: Vec<(f64, &ProbeRecord)> = answered
        .iter()
        .map(|p| {
            let s = cx.starvation_around(AGENT, p.t, p.t + p.latency_ms / 1e3) * 1e3;
            ((p.latency_ms - s).max(0.0), *p)
        })
        .collect();
    raw.sort_by(f64::total_cmp);
    unexplained.sort_by(|a, b| a.0.total_cmp(&b.0));
    let u: Vec<f64> = unexplained.iter().map(|x| x.0).collect();
    v.p99_ms = p99(&raw);
    v.max_ms = raw.last().copied().unwrap_or(0.0);
    v.p99_unexplained_ms = p99(&u);
    v.max_unexplained_ms = u.last().copied().unwrap_or(0.0);
    for (ms, p) in unexplained.iter().rev().take_while(|x| x.0 > MAX_BOUND_MS) {
        problems.push(Problem {
            kind: ProblemKind::SlowAnswer,
            t: p.t,
            detail: format!(
                "{} answered in {:.1} ms, {ms:.1} ms beyond the starvation measured over it \
                 (max {MAX_BOUND_MS} ms)",
                p.probe.path(&p.target),
                p.latency_ms
            ),
        });
    }
    if v.p99_unexplained_ms > P99_BOUND_MS {
        problems.push(Problem {
            kind: ProblemKind::SlowAnswer,
            t: end,
            detail: format!(
                "probe latency p99 {:.1} ms beyond starvation (bound {P99_BOUND_MS} ms; raw p99 \
                 {:.1} ms)",
                v.p99_unexplained_ms, v.p99_ms
            ),
        });
    }
}

fn judge_rss(cx: &Ctx<'_>, v: &mut Verdict, problems: &mut Vec<Problem>) {
    for life in &cx.r.lives {
        let Some(up) = life.up else { continue };
        let mine: Vec<_> = cx.r.rss.iter().filter(|s| s.life == life.n).collect();
        let (Some(warm), Some(last)) = (mine.iter().find(|s| s.t >= up + RSS_WARM), mine.last())
        else {
            continue;
        };
        if last.t - warm.t < RSS_MIN_SPAN {
            continue;
        }
        let growth = i64::try_from(last.kib).unwrap_or(i64::MAX)
            - i64::try_from(warm.kib).unwrap_or(i64::MAX);
        v.rss_lives += 1;
        v.rss_growth_kib = Some(v.rss_growth_kib.map_or(growth, |g| g.max(growth)));
        if growth > RSS_GROWTH_KIB {
            problems.push(Problem {
                kind: ProblemKind::RssGrowth,
                t: last.t,
                detail: format!(
                    "agent life {}: RSS {} KiB at {:.0}s, {} KiB at {:.0}s (+{growth} KiB, bound \
                     {RSS_GROWTH_KIB})",
                    life.n, warm.kib, warm.t, last.kib, last.t
                ),
            });
        }
    }
}

/// Whether two problem texts differ only in their measurements (every number but a fault's
/// id and a life's number).
fn alike(a: &str, b: &str) -> bool {
    let shape = |s: &str| -> Vec<String> {
        let mut previous = "";
        s.split_whitespace()
            .map(|word| {
                let kept = matches!(previous, "fault" | "life");
                previous = word;
                if kept {
                    word.to_string()
                } else {
                    word.chars()
                        .filter(|c| !c.is_ascii_digit() && *c != '.')
                        .collect()
                }
            })
            .collect()
    };
    shape(a) == shape(b)
}

fn span(xs: &[f64]) -> String {
    if xs.is_empty() {
        return "-".into();
    }
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "{:.2}/{:.2}/{:.2}",
        s[0],
        percentile(&s, 0.5),
        s[s.len() - 1]
    )
}

/// The per-kind table, the agent's row, the problems (at most `max_problems`) and the
/// summary line, for a person.
pub fn render(r: &Records, v: &Verdict, max_problems: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>4} {:>8} {:>5} {:>6} {:>8}  {:<17} {:>6}  {:<17} {:>6} {:>5}  reasons seen",
        "kind",
        "n",
        "in bound",
        "out",
        "unjdg",
        "cleared",
        "detect min/med/max",
        "bound",
        "clear min/med/max",
        "bound",
        "flaps"
    );
    for row in &v.rows {
        let reasons: Vec<String> = row
            .reasons
            .iter()
            .map(|(r, n)| format!("{r} x{n}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<24} {:>4} {:>8} {:>5} {:>6} {:>8}  {:<17} {:>6.2}  {:<17} {:>6.2} {:>5}  {}",
            row.name,
            row.faults,
            row.in_bound,
            row.out_of_bound,
            row.not_judged,
            row.cleared,
            span(&row.detect),
            row.bound,
            span(&row.clear),
            row.clear_bound,
            row.flaps,
            reasons.join(", ")
        );
    }
    let a = &v.agent;
    let _ = writeln!(
        out,
        "agent_kill {:>3}: back {} s after the restart; healthy targets ready {} s after it \
         answered (bound {:.2} s + starvation)",
        a.kills,
        span(&a.back),
        span(&a.targets_ready),
        agent_recovery(&r.run.flags).total()
    );
    let _ = writeln!(
        out,
        "agent_stop {:>3}: stopped {} s (at most {:.2} s: every clock stays under its timeout)",
        a.stops,
        span(&a.stopped),
        super::faults::agent_stop_max(&r.run.flags)
    );
    for why in &r.run.not_made {
        let _ = writeln!(out, "not made here: {why}");
    }
    // One line per run of alike problems (same kind and text but for the times in it): a
    // false verdict held for 2 s is one line, not twenty.
    let mut folded: Vec<(&Problem, usize, f64)> = Vec::new();
    for p in &v.problems {
        match folded
            .iter_mut()
            .find(|(first, _, _)| first.kind == p.kind && alike(&first.detail, &p.detail))
        {
            Some((_, n, last)) => {
                *n += 1;
                *last = p.t;
            }
            None => folded.push((p, 1, p.t)),
        }
    }
    for (p, n, last) in folded.iter().take(max_problems) {
        let more = if *n > 1 {
            format!(" (x{n} until {last:.3}s)")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "PROBLEM {:>8.3}s {:?}: {}{more}",
            p.t, p.kind, p.detail
        );
    }
    if folded.len() > max_problems {
        let _ = writeln!(
            out,
            "... {} more kinds of problem",
            folded.len() - max_problems
        );
    }
    out.push_str(&summary(r, v));
    out.push('\n');
    out
}

/// The one summary line.
pub fn summary(r: &Records, v: &Verdict) -> String {
    let faults: usize = v.rows.iter().map(|x| x.faults).sum();
    let in_bound: usize = v.rows.iter().map(|x| x.in_bound).sum();
    let not_judged: usize = v.rows.iter().map(|x| x.not_judged).sum();
    let c = |k| v.count(k);
    format!(
        "soak: seed {}, {:.0} s, {faults} faults, {in_bound} detected in bound ({not_judged} \
         not judged), {} missed/late/early, {} not cleared, {} false, {} wrong reasons, {} \
         flaps, {} agent kills + {} stops, {} probes, p99 {:.1} ms (max {:.1} ms; beyond \
         starvation p99 {:.1} ms, max {:.1} ms), {} no answer, RSS growth {} over {} lives, {} \
         panics, starvation {:.1} s: {}",
        r.run.seed,
        r.run.end - r.run.begin,
        c(ProblemKind::Missed) + c(ProblemKind::Late) + c(ProblemKind::Early),
        c(ProblemKind::NotCleared),
        c(ProblemKind::FalseFailure),
        c(ProblemKind::WrongReason),
        c(ProblemKind::Flap),
        v.agent.kills,
        v.agent.stops,
        v.probes,
        v.p99_ms,
        v.max_ms,
        v.p99_unexplained_ms,
        v.max_unexplained_ms,
        c(ProblemKind::NoAnswer),
        v.rss_growth_kib
            .map_or("-".into(), |g| format!("max {g:+} KiB")),
        v.rss_lives,
        c(ProblemKind::Panic),
        v.starvation,
        if v.passed() { "PASS" } else { "FAIL" }
    )
}

#[cfg(test)]
mod tests {
    //! Records built by hand: a clean run passes; each planted fault (a false failure, a
    //! flap, a missed fault, a slow answer, a wrong reason, a panic, RSS growth) is caught.
    use super::super::records::{Panic, Rss, RunInfo, Slice, Target};
    use super::*;

    /// The flags a soak runs with: the e2e agent's and the soak's own intervals.
    fn flags() -> Flags {
        super::super::run::flags(&crate::pod::AgentOptions::default())
    }

    /// 30 s, a worker `model` SIGSTOPped from 5 s to 10 s (live and ready fail
    /// `heartbeat_timeout` from 7.0 s, pass again at 10.1 s) and an upstream `vllm-a` whose
    /// metrics stop from 12 s to 20 s (passing throughout); probes every 0.1 s, 1 ms each.
    fn clean() -> Records {
        let mut probes = Vec::new();
        for i in 0..300 {
            let t = f64::from(i) * 0.1;
            for (target, probe) in [
                ("model", Probe::Live),
                ("model", Probe::Ready),
                ("vllm-a", Probe::Live),
                ("vllm-a", Probe::Ready),
                ("agent", Probe::Live),
            ] {
                let failing = target == "model" && (7.0..10.05).contains(&t);
                probes.push(ProbeRecord {
                    t,
                    target: target.into(),
                    probe,
                    status: Some(if failing { 503 } else { 200 }),
                    ok: !failing,
                    reason: if failing {
                        "heartbeat_timeout".into()
                    } else {
                        String::new()
                    },
                    latency_ms: 1.0,
                });
            }
        }
        Records {
            run: RunInfo {
                seed: 1,
                secs: 30.0,
                begin: 0.0,
                end: 30.0,
                flags: flags(),
                targets: vec![
                    Target {
                        name: "model".into(),
                        kind: TargetKind::Worker,
                        engines: 1,
                        canary: false,
                    },
                    Target {
                        name: "vllm-a".into(),
                        kind: TargetKind::Upstream,
                        engines: 1,
                        canary: false,
                    },
                ],
                not_made: vec![],
                agent_bin: "agent".into(),
            },
            faults: vec![
                Fault {
                    id: 0,
                    kind: "stop".into(),
                    target: "model".into(),
                    start: 5.0,
                    injected: 5.0,
                    end: 10.0,
                    cleared: 10.0,
                },
                Fault {
                    id: 1,
                    kind: "metrics_gone".into(),
                    target: "vllm-a".into(),
                    start: 12.0,
                    injected: 12.0,
                    end: 20.0,
                    cleared: 20.0,
                },
            ],
            probes,
            lives: vec![Life {
                n: 0,
                pid: 1,
                spawned: -5.0,
                up: Some(-4.9),
                died: None,
            }],
            rss: (0..30)
                .map(|i| Rss {
                    life: 0,
                    t: f64::from(i),
                    kib: 5000,
                })
                .collect(),
            slices: ["agent", "model", "vllm-a"]
                .into_iter()
                .flat_map(|scope| {
                    (0..120).map(move |i| Slice {
                        scope: scope.into(),
                        from: f64::from(i) * 0.25,
                        to: f64::from(i + 1) * 0.25,
                        starvation: 0.0,
                    })
                })
                .collect(),
            panics: vec![],
        }
    }

    fn row<'a>(v: &'a Verdict, name: &str) -> &'a KindRow {
        v.rows
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no row {name}: {:?}", v.rows))
    }

    fn probe_at<'a>(r: &'a mut Records, target: &str, probe: Probe, t: f64) -> &'a mut ProbeRecord {
        r.probes
            .iter_mut()
            .find(|p| p.target == target && p.probe == probe && (p.t - t).abs() < 1e-6)
            .expect("a probe at that time")
    }

    /// Sets the starvation of slice `i` (0.25 s each) in `scope`.
    fn starve(r: &mut Records, scope: &str, i: usize, s: f64) {
        r.slices
            .iter_mut()
            .filter(|x| x.scope == scope)
            .nth(i)
            .expect("a slice")
            .starvation = s;
    }

    fn fail(p: &mut ProbeRecord, reason: &str) {
        p.status = Some(503);
        p.ok = false;
        p.reason = reason.into();
    }

    fn only(v: &Verdict, kind: ProblemKind) {
        assert!(!v.passed());
        assert!(
            v.problems.iter().all(|p| p.kind == kind),
            "expected only {kind:?}: {:#?}",
            v.problems
        );
    }

    #[test]
    fn a_clean_run_passes() {
        let r = clean();
        let v = judge(&r);
        assert!(v.passed(), "{}", render(&r, &v, 20));
        let stop = row(&v, "worker stop");
        assert_eq!((stop.faults, stop.in_bound, stop.cleared), (1, 1, 1));
        assert!((stop.detect[0] - 2.0).abs() < 1e-6);
        assert_eq!(row(&v, "upstream metrics_gone").in_bound, 1);
        assert!(summary(&r, &v).ends_with("PASS"));
    }

    #[test]
    fn a_false_failure_on_a_healthy_target_is_caught() {
        let mut r = clean();
        fail(
            probe_at(&mut r, "vllm-a", Probe::Live, 25.0),
            "loop_stalled",
        );
        only(&judge(&r), ProblemKind::FalseFailure);
    }

    #[test]
    fn failing_liveness_while_only_metrics_are_gone_is_caught() {
        // Issue 26: a busy server whose /metrics stops answering, /health 200.
        let mut r = clean();
        fail(
            probe_at(&mut r, "vllm-a", Probe::Live, 15.0),
            "loop_stalled",
        );
        let v = judge(&r);
        only(&v, ProblemKind::FalseFailure);
        assert!(
            v.problems[0].detail.contains("metrics_gone"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_flap_while_the_fault_holds_is_caught() {
        let mut r = clean();
        let p = probe_at(&mut r, "model", Probe::Live, 8.0);
        (p.status, p.ok, p.reason) = (Some(200), true, String::new());
        let v = judge(&r);
        only(&v, ProblemKind::Flap);
        assert_eq!(row(&v, "worker stop").flaps, 1);
    }

    #[test]
    fn a_missed_fault_is_caught() {
        let mut r = clean();
        for p in r.probes.iter_mut().filter(|p| p.target == "model") {
            (p.status, p.ok, p.reason) = (Some(200), true, String::new());
        }
        let v = judge(&r);
        only(&v, ProblemKind::Missed);
        assert_eq!(v.count(ProblemKind::Missed), 2, "live and ready");
    }

    #[test]
    fn a_late_or_early_detection_is_caught_and_starvation_widens_the_bound() {
        let mut r = clean();
        for t in [7.0, 7.1, 7.2, 7.3] {
            for probe in Probe::ALL {
                let p = probe_at(&mut r, "model", probe, t);
                (p.status, p.ok, p.reason) = (Some(200), true, String::new());
            }
        }
        // First seen at 7.4 s: 2.4 s after the stop, past 2 s + 0.1 s.
        only(&judge(&r), ProblemKind::Late);
        // 0.4 s of measured starvation in the window: in bound again.
        starve(&mut r, "vllm-a", 24, 0.2);
        starve(&mut r, "vllm-a", 25, 0.2);
        assert!(
            !judge(&r).passed(),
            "another target's starvation is not this one's"
        );
        starve(&mut r, "model", 24, 0.2);
        starve(&mut r, "model", 25, 0.2);
        assert!(judge(&r).passed());
        // Failing from 0.5 s after the stop: before the hang timeout less two heartbeats.
        let mut early = clean();
        for i in 55..70 {
            let t = f64::from(i) * 0.1;
            fail(
                probe_at(&mut early, "model", Probe::Live, t),
                "heartbeat_timeout",
            );
        }
        only(&judge(&early), ProblemKind::Early);
    }

    #[test]
    fn a_reason_the_fault_cannot_give_is_caught() {
        let mut r = clean();
        fail(probe_at(&mut r, "model", Probe::Ready, 9.0), "loop_stalled");
        only(&judge(&r), ProblemKind::WrongReason);
    }

    #[test]
    fn a_slow_answer_is_caught_unless_starvation_explains_it() {
        let mut r = clean();
        probe_at(&mut r, "vllm-a", Probe::Ready, 22.0).latency_ms = 400.0;
        only(&judge(&r), ProblemKind::SlowAnswer);
        // The probe (22.0-22.4 s) touches slices 88 and 89: their starvation counts whole.
        starve(&mut r, "vllm-a", 88, 0.25);
        starve(&mut r, "vllm-a", 89, 0.25);
        assert!(
            !judge(&r).passed(),
            "a target's starvation does not delay the agent"
        );
        starve(&mut r, "agent", 88, 0.2);
        starve(&mut r, "agent", 89, 0.1);
        assert!(judge(&r).passed());
        // Many answers a little slow: the p99.
        let mut r = clean();
        for p in r.probes.iter_mut().step_by(50) {
            p.latency_ms = 30.0;
        }
        only(&judge(&r), ProblemKind::SlowAnswer);
    }

    #[test]
    fn no_answer_outside_the_agents_own_faults_is_caught_and_inside_allowed() {
        let mut r = clean();
        let p = probe_at(&mut r, "vllm-a", Probe::Live, 24.0);
        (p.status, p.ok, p.reason) = (None, false, "connection refused".into());
        only(&judge(&r), ProblemKind::NoAnswer);
        // The agent killed at 23.5 s, restarted at 24.5 s, answering at 24.6 s.
        r.faults.push(Fault {
            id: 2,
            kind: "agent_kill".into(),
            target: "agent".into(),
            start: 23.5,
            injected: 23.5,
            end: 24.5,
            cleared: 24.5,
        });
        r.lives[0].died = Some(23.5);
        r.lives.push(Life {
            n: 1,
            pid: 2,
            spawned: 24.5,
            up: Some(24.6),
            died: None,
        });
        // A worker not yet reconnected: `not_connected` for a moment is recovery.
        fail(
            probe_at(&mut r, "model", Probe::Ready, 24.8),
            "not_connected",
        );
        let v = judge(&r);
        assert!(v.passed(), "{:#?}", v.problems);
        assert_eq!(v.agent.kills, 1);
        // But not long after the recovery bound.
        fail(
            probe_at(&mut r, "model", Probe::Ready, 27.0),
            "not_connected",
        );
        only(&judge(&r), ProblemKind::FalseFailure);
    }

    #[test]
    fn panics_and_rss_growth_are_caught() {
        let mut r = clean();
        r.panics.push(Panic {
            who: "agent".into(),
            line: "thread 'main' panicked at src/x.rs:1:1".into(),
        });
        only(&judge(&r), ProblemKind::Panic);
        let mut r = clean();
        r.rss.last_mut().expect("samples").kib = 5000 + 4096;
        only(&judge(&r), ProblemKind::RssGrowth);
    }

    #[test]
    fn a_fault_that_never_clears_is_caught() {
        let mut r = clean();
        for t in [10.1, 10.2, 10.3, 10.4, 10.5] {
            fail(probe_at(&mut r, "model", Probe::Live, t), "stopped");
        }
        only(&judge(&r), ProblemKind::NotCleared);
    }

    #[test]
    fn reasons_are_grouped_by_their_word() {
        assert_eq!(reason_word("heartbeat_timeout: 2.1s"), "heartbeat_timeout");
        assert_eq!(
            reason_word("probe_failed: timeout"),
            "probe_failed: timeout"
        );
        assert_eq!(reason_word("phase: loading (weights)"), "phase: loading");
        assert_eq!(p99(&[1.0, 2.0, 3.0]), 3.0);
        assert_eq!(p99(&[]), 0.0);
        assert!(alike(
            "/livez/a: fault 5 (x, 2.05s in) must not fail",
            "/livez/a: fault 5 (x, 12.15s in) must not fail"
        ));
        assert!(!alike("/livez/a: x", "/readyz/a: x"));
        assert!(!alike("/livez/a: fault 5 (x)", "/livez/a: fault 6 (x)"));
    }
}
