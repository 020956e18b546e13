//! The verdict function (SPEC §2, §7, §8): pure, from a registry [`State`] and `now` to the
//! startup, ready and live verdict of every worker and upstream, the agent's own, and the
//! aggregates.
//!
//! This is the one place that decides why `/livez/model` fails: HTTP, metrics, the
//! transition log and `/status` only render what [`evaluate`] returns. It does no I/O and
//! reads no clock, so probes can call it on the spot and tests can call it with any `now`.
//! Each kind has its own precedence table, in its own file: a protocol [`worker`]'s, an
//! [`upstream`]'s and a leader's [`group`] (SPEC §9, added to the answers here); this file
//! holds what they share (thresholds, the /proc rules, the probes and their answers) and
//! the aggregates.

pub mod edges;
pub mod group;
pub mod upstream;
pub mod worker;

pub use upstream::{UpstreamReason, UpstreamVerdict};
pub use worker::{Diagnosis, LiveReason, ReadyReason, StartupReason, WorkerVerdict};

use std::time::{Duration, Instant};

use vitals_proto::WorkerName;

use crate::state::probe_result::Failure;
pub use crate::state::proc_track::PidStatus;
use crate::state::proc_track::ProcTrack;
use crate::state::registry::{Instance, State, Worker};
use crate::state::upstream::UpstreamState;
use crate::upstreams::ProbeKind;

/// The agent's own liveness fails when its ticker has not run for this long (SPEC §7).
pub const TICKER_LIMIT: Duration = Duration::from_secs(2);

/// CPU use (in cores) over the last /proc interval above which a worker without
/// heartbeats is `spinning` rather than `blocked`. A hung process's remaining threads
/// (an idle HTTP runtime) use well under 1% of a core; a busy loop uses a core on an idle
/// node but was measured at 0.3-0.46 of one on a busy 2-core node (a Python loop holding
/// the GIL, shared/python's tests), so the line sits at a tenth of a core.
pub const SPIN_CORES: f64 = 0.1;

/// The liveness bounds (`--hang-timeout` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// No heartbeat for this long; also the `stopped` and `silent` bound.
    pub hang: Duration,
    /// Heartbeats arrive but `progress` has not moved for this long.
    pub stall: Duration,
    /// Loading/warming has not advanced for this long.
    pub load_stall: Duration,
    /// Continuously in state `D` for this long.
    pub d_state: Duration,
    /// A /proc sample older than this is no evidence (a stuck or late sampler;
    /// the agent's `config::sample_max_age`).
    pub sample_max_age: Duration,
}

/// Whose verdict a probe answers (SPEC §2, §3). Typed, not a name: a container may have
/// any legal name, `agent` included, and still be told apart from the agent itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// The agent itself: `/livez`, and the agent's line in the aggregates.
    Agent,
    /// The pod as a whole: `/readyz` and `/startupz`.
    All,
    /// One worker or upstream: `/<probe>/<name>`.
    Container(WorkerName),
}

impl Target {
    /// The target of `/<probe>` (no container) or `/<probe>/<container>`: `/livez` is the
    /// agent alone (SPEC §2).
    pub fn of(probe: Probe, container: Option<&WorkerName>) -> Self {
        match (container, probe) {
            (Some(name), _) => Self::Container(name.clone()),
            (None, Probe::Live) => Self::Agent,
            (None, Probe::Ready | Probe::Startup) => Self::All,
        }
    }
}

/// Why the agent itself fails (SPEC §2, §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentReason {
    /// Liveness: its ticker has not run for [`TICKER_LIMIT`].
    TickerStalled,
    /// Readiness and startup: a shutdown signal arrived.
    ShuttingDown,
}

impl AgentReason {
    /// `ticker_stalled` or `shutting_down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TickerStalled => "ticker_stalled",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// Declares [`Reason`] with a `From` of each kind's own reason type.
macro_rules! reasons {
    ($($(#[$doc:meta])* $kind:ident($ty:ty),)*) => {
        /// Why a check or a probe fails: one kind per precedence table.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Reason {
            $($(#[$doc])* $kind($ty),)*
        }

        $(impl From<$ty> for Reason {
            fn from(r: $ty) -> Self {
                Self::$kind(r)
            }
        })*
    };
}

reasons! {
    /// The agent's own.
    Agent(AgentReason),
    /// A protocol worker's startup.
    Startup(StartupReason),
    /// A protocol worker's readiness (its liveness reasons included).
    Ready(ReadyReason),
    /// A protocol worker's liveness.
    Live(LiveReason),
    /// An upstream's (SPEC §8).
    Upstream(UpstreamReason),
    /// A leader's group, added to readiness (SPEC §9).
    Group(group::GroupReadyReason),
    /// A leader's broken group, added to its model containers' liveness (SPEC §9).
    Broken(group::BrokenReason),
}

impl Reason {
    /// The reason without what changes while it holds (an unreachable member's age): two
    /// reasons with equal keys are the same verdict, so the ticker logs and counts a change
    /// once, not every tick.
    pub fn key(&self) -> Self {
        match self {
            Self::Group(g) => Self::Group(g.without_age()),
            other => other.clone(),
        }
    }
}

/// What one line of a verbose or JSON answer is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckName {
    /// An aggregate's line for the agent or for one container.
    Target(Target),
    /// A leader's group (SPEC §9).
    Group,
    /// A worker has an open connection.
    Connected,
    /// A container's liveness (part of its readiness, or its `/livez/<c>` alone).
    Live,
    /// A worker's phase is `ready`.
    Phase,
    /// A container's startup (its `/startupz/<c>` alone).
    Started,
    /// An upstream's process is not gone.
    Process,
    /// An upstream is not asleep waiting for an operator's wake-up (SPEC §12).
    Awake,
    /// No child of an upstream's process has been a zombie for the grace period (SPEC §12).
    Children,
    /// An upstream's own readiness probe.
    ReadinessProbe,
    /// One of a worker's own checks, by its name.
    Check(String),
}

/// One line of a verbose or JSON answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What it is about.
    pub name: CheckName,
    /// Why it fails; `Ok` when it passes.
    pub result: Result<(), Reason>,
}

impl Check {
    fn new<R: Into<Reason>>(name: CheckName, result: Result<(), R>) -> Self {
        Self {
            name,
            result: result.map_err(Into::into),
        }
    }

    /// Whether the check passes.
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Why a probe's answer fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    /// In an aggregate, the container whose reason it is (SPEC §7: `fail: <worker>:
    /// <reason>`); `None` for the agent's own, the group's, or a container's own answer.
    pub container: Option<WorkerName>,
    /// The reason.
    pub reason: Reason,
}

impl Failing {
    fn own(reason: impl Into<Reason>) -> Self {
        Self {
            container: None,
            reason: reason.into(),
        }
    }

    /// The same failure with [`Reason::key`]: equal keys, same verdict.
    pub fn key(&self) -> Self {
        Self {
            container: self.container.clone(),
            reason: self.reason.key(),
        }
    }
}

/// The three probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// `/livez`.
    Live,
    /// `/readyz`.
    Ready,
    /// `/startupz`.
    Startup,
}

impl Probe {
    /// Every probe.
    pub const ALL: [Probe; 3] = [Probe::Live, Probe::Ready, Probe::Startup];

    /// The path name: `livez`, `readyz`, `startupz` (also the `probe` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Live => "livez",
            Probe::Ready => "readyz",
            Probe::Startup => "startupz",
        }
    }

    /// Parses a path name.
    pub fn from_path(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A probe's answer: whose, pass or why not, and the lines for `?verbose`/JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Which probe.
    pub probe: Probe,
    /// Whose verdict.
    pub target: Target,
    /// `Ok` on pass; why it fails otherwise.
    pub result: Result<(), Failing>,
    /// The checks that make up the answer.
    pub checks: Vec<Check>,
}

impl Answer {
    /// Whether the probe passes.
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// What the agent knows about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentInput {
    /// A shutdown signal arrived.
    pub shutting_down: bool,
    /// When the internal ticker last ran.
    pub last_tick: Instant,
}

/// Every verdict at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    /// The agent's liveness.
    pub agent_live: Result<(), AgentReason>,
    /// The agent's readiness.
    pub agent_ready: Result<(), AgentReason>,
    /// Each known worker, by name.
    pub workers: Vec<WorkerVerdict>,
    /// Each upstream (SPEC §8), by name.
    pub upstreams: Vec<UpstreamVerdict>,
    /// A leader's group verdict (SPEC §9): added, after each container's own reasons, to
    /// `/readyz`, `/readyz/<c>` and `/livez/<c>`.
    pub group: Option<group::GroupVerdict>,
}

/// `r` with its error as a [`Reason`].
fn reason<E: Clone + Into<Reason>>(r: &Result<(), E>) -> Result<(), Reason> {
    r.clone().map_err(Into::into)
}

impl Verdicts {
    /// One worker's verdicts.
    pub fn get(&self, name: &str) -> Option<&WorkerVerdict> {
        self.workers.iter().find(|w| w.name.as_str() == name)
    }

    /// The answer of `/livez`, `/readyz` or `/startupz`.
    pub fn aggregate(&self, probe: Probe) -> Answer {
        let agent_result = match probe {
            Probe::Live => self.agent_live,
            Probe::Ready | Probe::Startup => self.agent_ready,
        };
        let mut checks = vec![Check::new(CheckName::Target(Target::Agent), agent_result)];
        let mut result = agent_result.map_err(Failing::own);
        // Only the workers that count: /livez is the agent alone; /readyz the expected and
        // connected workers; /startupz the expected ones.
        let counted = self.workers.iter().filter_map(|w| match probe {
            Probe::Live => None,
            Probe::Ready if w.expected || w.connected => Some((&w.name, reason(&w.ready))),
            Probe::Startup if w.expected => Some((&w.name, reason(&w.startup))),
            Probe::Ready | Probe::Startup => None,
        });
        // Every upstream counts like an expected worker (SPEC §8).
        let upstreams = self.upstreams.iter().filter_map(|u| match probe {
            Probe::Live => None,
            Probe::Ready => Some((&u.name, reason(&u.ready))),
            Probe::Startup => Some((&u.name, reason(&u.startup))),
        });
        for (name, r) in counted.chain(upstreams) {
            if let (Ok(()), Err(why)) = (&result, &r) {
                result = Err(Failing {
                    container: Some(name.clone()),
                    reason: why.clone(),
                });
            }
            checks.push(Check {
                name: CheckName::Target(Target::Container(name.clone())),
                result: r,
            });
        }
        if let (Probe::Ready, Some(g)) = (probe, &self.group) {
            // The group's reasons read whole (`group: forming 1/2`), after the pod's own.
            let r = reason(&g.ready);
            if let (Ok(()), Err(why)) = (&result, &r) {
                result = Err(Failing::own(why.clone()));
            }
            checks.push(Check {
                name: CheckName::Group,
                result: r,
            });
        }
        Answer {
            probe,
            target: Target::of(probe, None),
            result,
            checks,
        }
    }

    /// One upstream's verdicts.
    pub fn get_upstream(&self, name: &str) -> Option<&UpstreamVerdict> {
        self.upstreams.iter().find(|u| u.name.as_str() == name)
    }

    /// Every name a per-container probe answers for: workers, then upstreams.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.workers
            .iter()
            .map(|w| w.name.as_str())
            .chain(self.upstreams.iter().map(|u| u.name.as_str()))
    }

    /// The answer of `/<probe>/<name>` for a worker or an upstream; `None` for a name
    /// never expected nor seen.
    pub fn worker(&self, probe: Probe, name: &str) -> Option<Answer> {
        let answer = self.own_answer(probe, name)?;
        Some(self.with_group(answer))
    }

    /// A model container's answer with a leader's group verdict added after its own
    /// reasons (readiness and liveness only).
    fn with_group(&self, mut answer: Answer) -> Answer {
        let Some(g) = &self.group else {
            return answer;
        };
        let r = match answer.probe {
            Probe::Startup => return answer,
            Probe::Live => reason(&g.live),
            Probe::Ready => reason(&g.ready),
        };
        if let (Ok(()), Err(why)) = (&answer.result, &r) {
            answer.result = Err(Failing::own(why.clone()));
        }
        answer.checks.push(Check {
            name: CheckName::Group,
            result: r,
        });
        answer
    }

    /// The container's own answer, without the group.
    fn own_answer(&self, probe: Probe, name: &str) -> Option<Answer> {
        if let Some(u) = self.get_upstream(name) {
            return Some(u.answer(probe));
        }
        let w = self.get(name)?;
        let (result, checks) = match probe {
            Probe::Live => {
                let r = reason(&w.live);
                (r.clone(), vec![Check::new(CheckName::Live, r)])
            }
            Probe::Startup => {
                let r = reason(&w.startup);
                (r.clone(), vec![Check::new(CheckName::Started, r)])
            }
            Probe::Ready => (reason(&w.ready), w.ready_checks.clone()),
        };
        Some(Answer {
            probe,
            target: Target::Container(w.name.clone()),
            result: result.map_err(Failing::own),
            checks,
        })
    }
}

/// Computes every verdict from `state` at `now`.
pub fn evaluate(state: &State, agent: AgentInput, t: &Thresholds, now: Instant) -> Verdicts {
    evaluate_some(state, agent, t, now, |_| true)
}

/// The verdicts [`evaluate`] gives, for container `name` alone beside the agent's own: what
/// a probe of `/livez|readyz|startupz/<name>` reads, without judging every other container.
pub fn evaluate_one(
    state: &State,
    agent: AgentInput,
    t: &Thresholds,
    now: Instant,
    name: &str,
) -> Verdicts {
    evaluate_some(state, agent, t, now, |n| n.as_str() == name)
}

fn evaluate_some(
    state: &State,
    agent: AgentInput,
    t: &Thresholds,
    now: Instant,
    wanted: impl Fn(&WorkerName) -> bool,
) -> Verdicts {
    let ticking = now.saturating_duration_since(agent.last_tick) < TICKER_LIMIT;
    Verdicts {
        agent_live: if ticking {
            Ok(())
        } else {
            Err(AgentReason::TickerStalled)
        },
        agent_ready: if agent.shutting_down {
            Err(AgentReason::ShuttingDown)
        } else {
            Ok(())
        },
        workers: state
            .workers
            .iter()
            .filter(|(name, _)| wanted(name))
            .map(|(name, w)| worker::judge(name, w, t, now))
            .collect(),
        upstreams: state
            .upstreams
            .iter()
            .filter(|(name, _)| wanted(name))
            .map(|(name, u)| upstream::judge(name, u, t, now))
            .collect(),
        group: None,
    }
}

fn elapsed(since: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(since)
}

/// The /proc liveness rules, read the same way for workers and upstreams (SPEC §7, §8):
/// `(stopped, uninterruptible)`. A run of `T` (`D`) samples fails liveness once it has held
/// for `--hang-timeout` (`--d-state-timeout`), while the process exists and no evidence
/// newer than the latest sample (`ran_at`: a heartbeat, an answered probe) says it ran.
fn proc_rules(
    p: &ProcTrack,
    ran_at: Option<Instant>,
    t: &Thresholds,
    now: Instant,
) -> (bool, bool) {
    let (stopped, d) = p.runs(ran_at, now, t.sample_max_age);
    let held_for =
        |since: Option<Instant>, bound: Duration| since.is_some_and(|s| elapsed(s, now) >= bound);
    (held_for(stopped, t.hang), held_for(d, t.d_state))
}

#[cfg(test)]
pub(crate) mod tests {
    use vitals_proto::message::{CheckReport, WorkerMessage};
    use vitals_proto::Phase;

    use super::*;
    use crate::proc::{ProcSample, SampleError};

    use crate::fixtures::{beat, hello, name, phase, PEER, T};
    use crate::state::registry::{PeerCred, ProcTarget};

    const EPS: Duration = Duration::from_millis(1);

    /// A failing answer: `reason`, in an aggregate about `container`.
    pub(crate) fn fails(container: Option<&str>, reason: impl Into<Reason>) -> Result<(), Failing> {
        Err(Failing {
            container: container.map(name),
            reason: reason.into(),
        })
    }

    /// A verdict with its reason in words, as the reason kinds write them.
    pub(crate) fn err_string<E: std::fmt::Display>(r: &Result<(), E>) -> Result<(), String> {
        r.as_ref().map(|_| ()).map_err(ToString::to_string)
    }

    /// A scripted world: one clock, one registry, helpers to feed it.
    struct World {
        t0: Instant,
        state: State,
        conn: u64,
    }

    impl World {
        fn new(expected: &[&str]) -> Self {
            let names: Vec<_> = expected.iter().map(|n| name(n)).collect();
            Self {
                t0: Instant::now(),
                state: State::new(&names),
                conn: 0,
            }
        }
        fn at(&self, d: Duration) -> Instant {
            self.t0 + d
        }
        fn hello_as(&mut self, w: &str, inst: &str, peer: PeerCred, d: Duration) {
            self.conn += 1;
            let now = self.at(d);
            self.state
                .hello(&hello(w, inst), peer, self.conn, now)
                .expect("name free");
        }
        fn hello(&mut self, w: &str, inst: &str, d: Duration) {
            self.hello_as(w, inst, PEER, d);
        }
        fn send(&mut self, w: &str, msg: WorkerMessage, d: Duration) {
            let now = self.at(d);
            self.state.message(&name(w), self.conn, msg, now);
        }
        fn check(&mut self, w: &str, check: &str, ok: bool, d: Duration) {
            let msg = WorkerMessage::Check(CheckReport {
                name: check.into(),
                ok,
                message: if ok { "fine".into() } else { "missing".into() },
            });
            self.send(w, msg, d);
        }
        fn close(&mut self, w: &str, d: Duration) {
            let now = self.at(d);
            self.state.disconnect(&name(w), self.conn, now);
        }
        fn target(&self, w: &str) -> ProcTarget {
            self.state
                .proc_targets()
                .into_iter()
                .find(|t| t.name.as_str() == w)
                .expect("sampled worker")
        }
        fn sample(&mut self, w: &str, state: char, cpu: f64, start: u64, d: Duration) {
            let target = self.target(w);
            let sample = ProcSample {
                taken_at: self.at(d),
                state,
                cpu_seconds: cpu,
                rss_bytes: 1 << 20,
                threads: 3,
                start_time: start,
            };
            self.state.apply_proc(&target, None, Some(Ok(sample)), None);
        }
        fn gone(&mut self, w: &str) {
            let target = self.target(w);
            self.state
                .apply_proc(&target, None, Some(Err(SampleError::Gone(PEER.pid))), None);
        }
        fn eval(&self, d: Duration) -> Verdicts {
            let now = self.at(d);
            let agent = AgentInput {
                shutting_down: false,
                last_tick: now,
            };
            evaluate(&self.state, agent, &T, now)
        }
        fn v(&self, w: &str, d: Duration) -> WorkerVerdict {
            self.eval(d).get(w).expect("known worker").clone()
        }
        /// A connected worker that reached ready at 0 s with heartbeats at 0 s.
        fn ready(w: &str) -> Self {
            let mut world = Self::new(&[w]);
            world.hello(w, "a", Duration::ZERO);
            world.send(w, phase(Phase::Ready, None), Duration::ZERO);
            world.send(w, beat(1), Duration::ZERO);
            world
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_ready_worker_passes_everything() {
        let w = World::ready("model");
        let v = w.v("model", s(1));
        assert_eq!((v.startup, v.ready, v.live), (Ok(()), Ok(()), Ok(())));
        let all = w.eval(s(1));
        for p in Probe::ALL {
            assert!(all.aggregate(p).ok(), "{p:?}");
            assert!(all.worker(p, "model").expect("known").ok(), "{p:?}");
        }
    }

    #[test]
    fn expected_but_never_seen() {
        let w = World::new(&["model"]);
        let v = w.v("model", s(0));
        assert_eq!(v.startup, Err(StartupReason::NotConnected));
        assert_eq!(v.ready, Err(ReadyReason::NotConnected));
        assert_eq!(v.live, Ok(()));
        let all = w.eval(s(0));
        assert_eq!(
            all.aggregate(Probe::Ready).result,
            fails(Some("model"), ReadyReason::NotConnected)
        );
        assert_eq!(
            all.aggregate(Probe::Startup).result,
            fails(Some("model"), StartupReason::NotConnected)
        );
        assert!(all.aggregate(Probe::Live).ok(), "livez is the agent only");
        assert!(all.worker(Probe::Ready, "other").is_none());
    }

    #[test]
    fn loading_worker_is_started_and_live_but_not_ready() {
        let mut w = World::new(&["model"]);
        w.hello("model", "a", s(0));
        w.send("model", phase(Phase::Loading, Some(1)), s(0));
        let v = w.v("model", s(1));
        assert_eq!(v.startup, Ok(()), "startup passes at hello, not at ready");
        assert_eq!(v.ready, Err(ReadyReason::Phase(Some(Phase::Loading))));
        assert_eq!(
            v.ready.as_ref().map_err(ToString::to_string),
            Err("phase: loading".into())
        );
        assert_eq!(v.live, Ok(()));
    }

    #[test]
    fn no_phase_yet_is_phase_unknown() {
        let mut w = World::new(&[]);
        w.hello("model", "a", s(0));
        let v = w.v("model", s(0));
        assert_eq!(
            v.ready.map_err(|r| r.to_string()),
            Err("phase: unknown".into())
        );
    }

    #[test]
    fn heartbeat_timeout_just_under_and_over() {
        let w = World::ready("model");
        assert_eq!(w.v("model", T.hang - EPS).live, Ok(()));
        let v = w.v("model", T.hang);
        assert_eq!(v.live, Err(LiveReason::HeartbeatTimeout));
        assert_eq!(
            v.ready,
            Err(ReadyReason::Live(LiveReason::HeartbeatTimeout))
        );
        assert_eq!(v.startup, Ok(()), "startup stays passed once reached");
    }

    #[test]
    fn heartbeat_clock_starts_at_hello() {
        let mut w = World::new(&[]);
        w.hello("model", "a", s(0));
        assert_eq!(w.v("model", T.hang - EPS).live, Ok(()));
        assert_eq!(w.v("model", T.hang).live, Err(LiveReason::HeartbeatTimeout));
    }

    #[test]
    fn loop_stalled_just_under_and_over() {
        let mut w = World::ready("model");
        // Heartbeats keep coming, progress frozen at 1.
        let mut at = s(0);
        while at < T.stall + s(1) {
            w.send("model", beat(1), at);
            at += s(1);
        }
        assert_eq!(w.v("model", T.stall - EPS).live, Ok(()));
        assert_eq!(w.v("model", T.stall).live, Err(LiveReason::LoopStalled));
        w.send("model", beat(2), T.stall + s(1));
        assert_eq!(w.v("model", T.stall + s(1)).live, Ok(()), "progress moved");
    }

    #[test]
    fn loop_stalled_does_not_apply_while_loading() {
        let mut w = World::new(&[]);
        w.hello("model", "a", s(0));
        w.send("model", phase(Phase::Loading, Some(1)), s(0));
        for i in 0..40 {
            w.send("model", beat(1), s(i));
            w.send("model", phase(Phase::Loading, Some(i + 2)), s(i));
        }
        assert_eq!(w.v("model", s(39)).live, Ok(()));
        // Becoming ready restarts the loop clock: not stalled at once.
        w.send("model", phase(Phase::Ready, None), s(39));
        for i in 39..=(39 + T.stall.as_secs()) {
            w.send("model", beat(1), s(i));
        }
        assert_eq!(w.v("model", s(39) + T.stall - EPS).live, Ok(()));
        assert_eq!(
            w.v("model", s(39) + T.stall).live,
            Err(LiveReason::LoopStalled)
        );
    }

    #[test]
    fn load_stalled_just_under_and_over_and_progress_resets_it() {
        let mut w = World::new(&[]);
        w.hello("model", "a", s(0));
        w.send("model", phase(Phase::Loading, Some(1)), s(0));
        let beat_until = |w: &mut World, until: Duration| {
            let mut at = s(0);
            while at <= until {
                w.send("model", beat(at.as_secs()), at);
                at += s(1);
            }
        };
        beat_until(&mut w, T.load_stall + s(1));
        assert_eq!(w.v("model", T.load_stall - EPS).live, Ok(()));
        assert_eq!(
            w.v("model", T.load_stall).live,
            Err(LiveReason::LoadStalled)
        );
        // A slow load that moves is live: liveness never kills a model still loading.
        w.send("model", phase(Phase::Loading, Some(2)), T.load_stall + s(1));
        assert_eq!(w.v("model", T.load_stall + s(1)).live, Ok(()));
    }

    #[test]
    fn load_stalled_without_progress_field_and_in_warming() {
        let mut w = World::new(&[]);
        w.hello("model", "a", s(0));
        w.send("model", phase(Phase::Warming, None), s(0));
        let mut at = s(0);
        while at <= T.load_stall {
            w.send("model", beat(at.as_secs()), at);
            at += s(1);
        }
        assert_eq!(
            w.v("model", T.load_stall).live,
            Err(LiveReason::LoadStalled)
        );
    }

    #[test]
    fn failed_is_immediate_and_not_ready() {
        let mut w = World::ready("model");
        w.send("model", phase(Phase::Failed, None), s(1));
        let v = w.v("model", s(1));
        assert_eq!(v.live, Err(LiveReason::Failed));
        assert_eq!(v.ready, Err(ReadyReason::Live(LiveReason::Failed)));
    }

    #[test]
    fn a_failing_check_gates_readiness_but_not_liveness() {
        let mut w = World::ready("model");
        w.check("model", "tokenizer", true, s(0));
        w.check("model", "device", false, s(1));
        let v = w.v("model", s(1));
        assert_eq!(v.live, Ok(()));
        assert_eq!(
            v.ready.as_ref().map_err(ToString::to_string),
            Err("check: device: missing".into())
        );
        let answer = w.eval(s(1)).worker(Probe::Ready, "model").expect("known");
        let names: Vec<_> = answer.checks.into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                CheckName::Connected,
                CheckName::Live,
                CheckName::Phase,
                CheckName::Check("device".into()),
                CheckName::Check("tokenizer".into())
            ]
        );
        w.check("model", "device", true, s(2));
        assert_eq!(w.v("model", s(2)).ready, Ok(()));
    }

    #[test]
    fn draining_is_live_but_not_ready() {
        let mut w = World::ready("model");
        w.send("model", phase(Phase::Draining, None), s(1));
        let v = w.v("model", s(1));
        assert_eq!(v.live, Ok(()));
        assert_eq!(v.ready, Err(ReadyReason::Phase(Some(Phase::Draining))));
        assert_eq!(v.startup, Ok(()));
        // loop_stalled still applies while draining.
        w.send("model", beat(1), T.stall);
        assert_eq!(
            w.v("model", T.stall + s(1)).live,
            Err(LiveReason::LoopStalled)
        );
    }

    #[test]
    fn a_restarted_instance_starts_at_its_own_hello() {
        let mut w = World::ready("model");
        w.close("model", s(1));
        w.gone("model");
        assert_eq!(
            w.v("model", s(1)).startup,
            Err(StartupReason::NotConnected),
            "between instances"
        );
        w.hello("model", "b", s(2));
        w.send("model", phase(Phase::Loading, None), s(2));
        assert_eq!(w.v("model", s(2)).startup, Ok(()));
        assert_eq!(w.state.workers[&name("model")].restarts, 1);
    }

    #[test]
    fn a_long_load_stays_started_and_a_stuck_one_is_left_to_liveness() {
        let mut w = World::new(&["model"]);
        w.hello("model", "a", s(0));
        // Twenty minutes of loading, progress every minute: started and live throughout.
        for minute in 0..20 {
            w.send("model", beat(minute), s(minute * 60));
            w.send("model", phase(Phase::Loading, Some(minute)), s(minute * 60));
            let v = w.v("model", s(minute * 60 + 5));
            assert_eq!((v.startup, v.live), (Ok(()), Ok(())), "minute {minute}");
        }
        // Then the load freezes (heartbeats still come): liveness fails, startup stays passed.
        let frozen = 19 * 60;
        for t in (frozen + 5..=frozen + 300).step_by(5) {
            w.send("model", beat(t), s(t));
        }
        let v = w.v("model", s(frozen + 300));
        assert_eq!(v.live, Err(LiveReason::LoadStalled));
        assert_eq!(v.startup, Ok(()), "once started, liveness decides");
        assert_eq!(
            v.ready,
            Err(ReadyReason::Live(LiveReason::LoadStalled)),
            "and readiness says why"
        );
    }

    #[test]
    fn reconnect_of_the_same_instance_continues() {
        let mut w = World::ready("model");
        w.check("model", "device", true, s(0));
        w.close("model", s(1));
        w.hello("model", "a", s(2));
        let v = w.v("model", s(2));
        assert_eq!(v.startup, Ok(()), "still started");
        assert_eq!(v.ready, Ok(()), "phase and checks carried over");
        assert_eq!(w.state.workers[&name("model")].restarts, 0);
    }

    #[test]
    fn stopped_under_and_over_then_sigcont_does_not_flap() {
        let mut w = World::ready("model");
        // SIGSTOP just after the heartbeat at 0 s; samples every second from 1 s.
        for i in 1..=12 {
            w.sample("model", 'T', 1.0, 9, s(i));
        }
        // First T sample at 1 s: stopped at 11 s; heartbeat_timeout holds from 10 s.
        let v = w.v("model", s(11) - EPS);
        assert_eq!(v.live, Err(LiveReason::HeartbeatTimeout));
        assert_eq!(v.diagnosis, Some(Diagnosis::Blocked));
        let v = w.v("model", s(11));
        assert_eq!(v.live, Err(LiveReason::Stopped), "stopped outranks");
        assert_eq!(v.diagnosis, Some(Diagnosis::Blocked), "still diagnosed");
        // SIGCONT: a heartbeat arrives before the next sample; the old T no longer counts.
        w.send("model", beat(2), s(12) + EPS);
        assert_eq!(w.v("model", s(12) + EPS).live, Ok(()));
        w.sample("model", 'S', 1.0, 9, s(13));
        assert_eq!(w.v("model", s(13)).live, Ok(()));
    }

    #[test]
    fn uninterruptible_just_under_and_over() {
        let mut w = World::ready("model");
        // D from 1 s; heartbeats stop too (the whole process is stuck).
        let mut at = s(1);
        while at <= s(1) + T.d_state {
            w.sample("model", 'D', 1.0, 9, at);
            at += s(1);
        }
        let v = w.v("model", s(1) + T.d_state - EPS);
        assert_eq!(v.live, Err(LiveReason::HeartbeatTimeout));
        assert_eq!(
            w.v("model", s(1) + T.d_state).live,
            Err(LiveReason::Uninterruptible)
        );
    }

    #[test]
    fn short_d_state_with_heartbeats_is_fine() {
        let mut w = World::ready("model");
        for i in 1..40 {
            w.sample("model", 'D', 1.0, 9, s(i));
            w.send("model", beat(i + 1), s(i) + EPS);
        }
        assert_eq!(w.v("model", s(40)).live, Ok(()));
    }

    #[test]
    fn spinning_versus_blocked() {
        let mut w = World::ready("model");
        w.sample("model", 'R', 1.0, 9, s(10));
        w.sample("model", 'R', 1.9, 9, s(11));
        let v = w.v("model", s(11));
        assert_eq!(v.live, Err(LiveReason::HeartbeatTimeout));
        assert_eq!(v.diagnosis, Some(Diagnosis::Spinning));
        // A busy node gives the spinning loop a third of a core: still spinning.
        w.sample("model", 'R', 2.2, 9, s(12));
        assert_eq!(w.v("model", s(12)).diagnosis, Some(Diagnosis::Spinning));
        // An idle runtime's ticks (under 1% of a core): blocked.
        w.sample("model", 'S', 2.205, 9, s(13));
        assert_eq!(w.v("model", s(13)).diagnosis, Some(Diagnosis::Blocked));
    }

    #[test]
    fn no_diagnosis_without_proc() {
        let mut w = World::new(&[]);
        w.hello_as("model", "a", PeerCred { pid: 0, ..PEER }, s(0));
        let v = w.v("model", T.hang);
        assert_eq!(v.live, Err(LiveReason::HeartbeatTimeout));
        assert_eq!(v.diagnosis, None);
    }

    #[test]
    fn silent_just_under_and_over() {
        let mut w = World::ready("model");
        w.sample("model", 'S', 1.0, 9, s(0));
        w.close("model", s(1));
        for i in 2..=12 {
            w.sample("model", 'S', 1.0, 9, s(i));
        }
        let v = w.v("model", s(1) + T.hang - EPS);
        assert_eq!(v.live, Ok(()));
        assert_eq!(v.ready, Err(ReadyReason::NotConnected));
        assert_eq!(v.startup, Ok(()), "process still there: started");
        assert_eq!(w.v("model", s(1) + T.hang).live, Err(LiveReason::Silent));
    }

    #[test]
    fn pid_gone_passes_liveness_and_fails_the_rest() {
        let mut w = World::ready("model");
        w.send("model", phase(Phase::Failed, None), s(1));
        w.close("model", s(1));
        w.gone("model");
        let v = w.v("model", s(30));
        assert_eq!(v.pid, PidStatus::Gone);
        assert_eq!(v.live, Ok(()));
        assert_eq!(v.ready, Err(ReadyReason::NotConnected));
        assert_eq!(v.startup, Err(StartupReason::NotConnected));
    }

    #[test]
    fn zombie_or_reused_pid_is_gone() {
        let mut w = World::ready("model");
        w.sample("model", 'S', 1.0, 9, s(1));
        w.close("model", s(1));
        w.sample("model", 'Z', 1.0, 9, s(2));
        assert_eq!(w.v("model", s(30)).live, Ok(()));
        let mut w = World::ready("model");
        w.sample("model", 'S', 1.0, 9, s(1));
        w.close("model", s(1));
        w.sample("model", 'S', 1.0, 77, s(2));
        assert_eq!(w.v("model", s(30)).pid, PidStatus::Gone);
    }

    #[test]
    fn pid_zero_disconnected_is_unknown() {
        let mut w = World::new(&["model"]);
        w.hello_as("model", "a", PeerCred { pid: 0, ..PEER }, s(0));
        w.send("model", phase(Phase::Ready, None), s(0));
        w.close("model", s(1));
        let v = w.v("model", s(30));
        assert_eq!(v.pid, PidStatus::Unknown);
        assert_eq!(v.live, Ok(()), "no silent without /proc");
        assert_eq!(v.ready, Err(ReadyReason::NotConnected));
        assert_eq!(v.startup, Err(StartupReason::NotConnected));
    }

    #[test]
    fn reasons_follow_the_spec_order() {
        let mut sorted = LiveReason::ALL;
        sorted.sort();
        assert_eq!(sorted, LiveReason::ALL);
        let names: Vec<_> = LiveReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "failed",
                "stopped",
                "uninterruptible",
                "heartbeat_timeout",
                "loop_stalled",
                "load_stalled",
                "silent"
            ]
        );
        // failed + stopped + heartbeat_timeout all hold: failed is reported.
        let mut w = World::ready("model");
        w.send("model", phase(Phase::Failed, None), s(0));
        for i in 1..=12 {
            w.sample("model", 'T', 1.0, 9, s(i));
        }
        let all = worker::live_failures(
            w.state.workers[&name("model")]
                .instance
                .as_ref()
                .expect("i"),
            PidStatus::Exists,
            &T,
            w.at(s(12)),
        );
        assert_eq!(
            all,
            [
                LiveReason::Failed,
                LiveReason::Stopped,
                LiveReason::HeartbeatTimeout
            ]
        );
        assert_eq!(w.v("model", s(12)).live, Err(LiveReason::Failed));
    }

    #[test]
    fn readiness_reasons_in_order() {
        let mut w = World::ready("model");
        w.check("model", "device", false, s(0));
        w.send("model", phase(Phase::Warming, None), s(0));
        // liveness before phase before check, as `?verbose` lists them.
        assert_eq!(
            w.v("model", T.hang).ready,
            Err(ReadyReason::Live(LiveReason::HeartbeatTimeout))
        );
        assert_eq!(
            w.v("model", T.hang - EPS).ready,
            Err(ReadyReason::Phase(Some(Phase::Warming)))
        );
        w.send("model", phase(Phase::Ready, None), s(0));
        assert_eq!(
            w.v("model", T.hang - EPS).ready.map_err(|r| r.to_string()),
            Err("check: device: missing".into())
        );
    }

    #[test]
    fn aggregates_name_the_first_failing_worker_and_shutdown_first() {
        let mut w = World::ready("b");
        let a = Worker {
            expected: true,
            ..Worker::default()
        };
        w.state.workers.insert(name("a"), a);
        let now = w.at(s(1));
        let mut agent = AgentInput {
            shutting_down: false,
            last_tick: now,
        };
        let v = evaluate(&w.state, agent, &T, now);
        assert_eq!(
            v.aggregate(Probe::Ready).result,
            fails(Some("a"), ReadyReason::NotConnected)
        );
        agent.shutting_down = true;
        let v = evaluate(&w.state, agent, &T, now);
        for p in [Probe::Ready, Probe::Startup] {
            assert_eq!(
                v.aggregate(p).result,
                fails(None, AgentReason::ShuttingDown)
            );
        }
        assert!(v.aggregate(Probe::Live).ok());
        assert!(
            v.worker(Probe::Ready, "b").expect("known").ok(),
            "per-worker unaffected"
        );
    }

    #[test]
    fn connected_unexpected_workers_count_for_readyz_only() {
        let mut w = World::new(&[]);
        w.hello("extra", "a", s(0));
        let v = w.eval(s(0));
        assert_eq!(
            v.aggregate(Probe::Ready).result,
            fails(Some("extra"), ReadyReason::Phase(None))
        );
        assert!(v.aggregate(Probe::Startup).ok(), "nothing expected: passes");
        // Disconnected and gone: no longer counted.
        w.close("extra", s(1));
        w.gone("extra");
        assert!(w.eval(s(2)).aggregate(Probe::Ready).ok());
    }

    #[test]
    fn agent_liveness_follows_its_ticker() {
        let state = State::default();
        let t0 = Instant::now();
        let agent = AgentInput {
            shutting_down: false,
            last_tick: t0,
        };
        let live = |d| evaluate(&state, agent, &T, t0 + d).aggregate(Probe::Live);
        assert!(live(TICKER_LIMIT - EPS).ok());
        assert_eq!(
            live(TICKER_LIMIT).result,
            fails(None, AgentReason::TickerStalled)
        );
    }
}
