//! Worker instances, upstreams and their latest reported and observed state: the one place
//! the sources write, and the snapshot verdicts are computed from.
//!
//! [`State`] is plain data with methods that take `now`, so every SPEC §7 clock rule is
//! unit-testable without sockets or sleeps. [`Registry`] is the one shared copy: writers
//! change it in place under a short lock, each through a handle that can change only its
//! part ([`WorkerReports`] for the socket server, [`UpstreamResults`] for one upstream's
//! probers and scraper, [`ProcSamples`] for the /proc sampler); readers take the current
//! [`State`] as an `Arc` and evaluate it after the lock is released. The clocks kept here:
//! - heartbeat clock (`heartbeat_at`): starts at `hello`, restarts at each heartbeat;
//! - loop-progress clock (`loop_clock`): starts at a connection's first heartbeat,
//!   restarts when `progress` moves or the phase becomes `ready`;
//! - load clock (`load_clock`): restarts when the phase or `progress.done` changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vitals_proto::message::{
    CheckReport, Heartbeat, Hello, PhaseReport, ValidHello, WorkerMessage,
};
use vitals_proto::{Phase, WorkerName};

use crate::engines::Scrape;
use crate::proc::Extras;
use crate::proc::NotFound;
use crate::proc::{ProcSample, SampleError};
use crate::state::cell::CowCell;
use crate::state::probe_result::{Outcome, ScrapeError};
use crate::state::proc_track::{ProcTrack, Watched};
use crate::state::upstream::{CanaryRun, UpstreamState};
use crate::upstreams::{ProbeKind, UpstreamSpec};

/// The shared registry, a [`CowCell`]: writers go through the handles below, each able to
/// change only its own part; readers take the current state as an `Arc`.
#[derive(Debug, Default)]
pub struct Registry {
    current: CowCell<State>,
}

impl Registry {
    /// A registry knowing the expected workers, whose heartbeats after `silence` (the hang
    /// timeout) restart the loop clock ([`State::silence`]).
    pub fn new(expected: &[WorkerName], silence: Duration) -> Self {
        Self {
            current: CowCell::new(State {
                silence: Some(silence),
                ..State::new(expected)
            }),
        }
    }

    /// The state as of now; later updates do not change it.
    pub fn current(&self) -> Arc<State> {
        self.current.current()
    }

    /// The socket server's handle: it can change workers' reports only.
    pub fn worker_reports(self: &Arc<Self>) -> WorkerReports {
        WorkerReports(Arc::clone(self))
    }

    /// One upstream's probers' and scraper's handle: it can change that upstream's probe
    /// and scrape results only.
    pub fn upstream_results(self: &Arc<Self>, name: WorkerName) -> UpstreamResults {
        UpstreamResults {
            registry: Arc::clone(self),
            name,
        }
    }

    /// The /proc sampler's handle: it can change the /proc tracks only.
    pub fn proc_samples(self: &Arc<Self>) -> ProcSamples {
        ProcSamples(Arc::clone(self))
    }

    /// Adds the upstreams to watch (at start).
    pub fn add_upstreams(&self, specs: &[Arc<UpstreamSpec>]) {
        self.update(|s| s.add_upstreams(specs));
    }

    /// Applies `change` to the state ([`CowCell::update`]). Writers outside this module go
    /// through the handles above.
    fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        self.current.update(change)
    }
}

/// Changes workers' reported state (the socket server): `hello`, messages, disconnects.
#[derive(Debug, Clone)]
pub struct WorkerReports(Arc<Registry>);

impl WorkerReports {
    /// See [`State::hello`].
    pub fn hello(
        &self,
        valid: &ValidHello,
        peer: PeerCred,
        conn: ConnId,
        now: Instant,
    ) -> Result<HelloOutcome, NameHeld> {
        self.0.update(|s| s.hello(valid, peer, conn, now))
    }

    /// Takes the name over from `held`, whose connection has hung up: its disconnect and
    /// this `hello` as one update.
    pub fn take_over(
        &self,
        valid: &ValidHello,
        peer: PeerCred,
        conn: ConnId,
        held: NameHeld,
        now: Instant,
    ) -> Result<HelloOutcome, NameHeld> {
        self.0.update(|s| {
            s.disconnect(&valid.name, held.holder, now);
            s.hello(valid, peer, conn, now)
        })
    }

    /// See [`State::message`].
    pub fn message(&self, name: &WorkerName, conn: ConnId, msg: WorkerMessage, now: Instant) {
        self.0.update(|s| s.message(name, conn, msg, now));
    }

    /// See [`State::disconnect`].
    pub fn disconnect(&self, name: &WorkerName, conn: ConnId, now: Instant) {
        self.0.update(|s| s.disconnect(name, conn, now));
    }
}

/// Changes one upstream's probe and scrape results (its probers and scraper).
#[derive(Debug, Clone)]
pub struct UpstreamResults {
    registry: Arc<Registry>,
    name: WorkerName,
}

impl UpstreamResults {
    /// The upstream this handle writes.
    pub fn name(&self) -> &WorkerName {
        &self.name
    }

    /// A probe request finished: the outcome of each of `kinds` (the probes sharing it).
    pub fn probe(&self, kinds: &[ProbeKind], outcome: Outcome) {
        self.with(|u| {
            for kind in kinds {
                u.record_probe(*kind, outcome.clone());
            }
        });
    }

    /// A scrape that began at `started` finished; `grain` is the time between scrapes.
    pub fn scrape(
        &self,
        started: Instant,
        result: Result<Scrape, ScrapeError>,
        stall_timeout: Duration,
        grain: Duration,
    ) {
        self.with(|u| u.record_scrape(started, result, stall_timeout, grain));
    }

    /// The share of one core its process used over the latest /proc interval (`None`:
    /// /proc cannot tell).
    pub fn cpu_share(&self) -> Option<f64> {
        self.registry
            .current()
            .upstreams
            .get(&self.name)
            .and_then(|u| u.proc.cpu_share())
    }

    /// See [`UpstreamState::canary_sent`].
    pub fn canary_sent(&self, at: Instant) {
        self.with(|u| u.canary_sent(at));
    }

    /// See [`UpstreamState::canary_ended`].
    pub fn canary_ended(&self, run: CanaryRun) {
        self.with(|u| u.canary_ended(run));
    }

    /// See [`UpstreamState::canary_due_since`].
    pub fn canary_due_since(&self, since: Instant) -> Option<Instant> {
        let state = self.registry.current();
        state.upstreams.get(&self.name)?.canary_due_since(since)
    }

    fn with(&self, change: impl FnOnce(&mut UpstreamState)) {
        self.registry.update(|s| {
            if let Some(u) = s.upstreams.get_mut(&self.name) {
                change(u);
            }
        });
    }
}

/// Reads what to sample and records /proc results (the one /proc sampler).
#[derive(Debug, Clone)]
pub struct ProcSamples(Arc<Registry>);

impl ProcSamples {
    /// What to do this round, and the protocol workers' pids (their containers are never
    /// an upstream's; nor is the agent's own, which the sampler adds).
    pub fn targets(&self) -> (Vec<ProcTarget>, Vec<u32>) {
        let state = self.0.current();
        (state.proc_targets(), state.worker_pids())
    }

    /// Records one round's results; see [`State::apply_proc`].
    pub fn record(&self, results: Vec<ProcResult>) {
        self.0.update(|s| {
            for r in results {
                s.apply_proc(&r.target, r.discovered, r.sample, r.others);
                if let Some(extras) = r.extras {
                    s.apply_extras(&r.target, extras);
                }
            }
        });
    }
}

/// What the sampler got for one [`ProcTarget`].
#[derive(Debug)]
pub struct ProcResult {
    /// The job.
    pub target: ProcTarget,
    /// The outcome of the search, for [`ProcJob::Discover`].
    pub discovered: Option<Result<Watched, NotFound>>,
    /// A sample of the (found) process.
    pub sample: Option<Result<ProcSample, SampleError>>,
    /// Samples of the other processes of its container, when it is watched by its
    /// container (SPEC §11).
    pub others: Option<Vec<(u32, ProcSample)>>,
    /// For an upstream's process that exists: its zombie children and, while it loads,
    /// what it has read (SPEC §12).
    pub extras: Option<Extras>,
}

/// Identifies one socket connection for the life of the agent.
pub type ConnId = u64;

/// The peer's credentials from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Pid in the agent's PID namespace; 0 when the peer is in another one.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One process start of a worker, as reported and observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The `hello` that started it (its `pid` is the worker's own claim).
    pub hello: Hello,
    /// Credentials of its latest connection.
    pub peer: PeerCred,
    /// When this instance first said hello.
    pub first_hello_at: Instant,
    /// When its latest connection said hello.
    pub hello_at: Instant,
    /// Whether a connection of this instance is open.
    pub connected: bool,
    /// When its latest connection closed.
    pub disconnected_at: Option<Instant>,
    /// Latest phase report.
    pub phase: Option<PhaseReport>,
    /// Latest value of each check.
    pub checks: BTreeMap<String, CheckReport>,
    /// Latest heartbeat.
    pub heartbeat: Option<Heartbeat>,
    /// Heartbeat clock.
    pub heartbeat_at: Instant,
    /// Loop-progress clock; `None` until the connection's first heartbeat.
    pub loop_clock: Option<Instant>,
    /// Load clock.
    pub load_clock: Instant,
    /// When it first reached `ready` (startup passes from then on).
    pub ready_at: Option<Instant>,
    /// Messages received, all connections.
    pub messages: u64,
    /// Connections that said hello for this instance.
    pub connections: u64,
    /// Its process as /proc shows it.
    pub proc: ProcTrack,
}

impl Instance {
    fn new(hello: Hello, peer: PeerCred, now: Instant) -> Self {
        Self {
            hello,
            proc: ProcTrack::of_peer(peer.pid),
            peer,
            first_hello_at: now,
            hello_at: now,
            connected: true,
            disconnected_at: None,
            phase: None,
            checks: BTreeMap::new(),
            heartbeat: None,
            heartbeat_at: now,
            loop_clock: None,
            load_clock: now,
            ready_at: None,
            messages: 0,
            connections: 1,
        }
    }

    /// The current phase, if reported.
    pub fn phase(&self) -> Option<Phase> {
        self.phase.as_ref().map(|p| p.phase)
    }
}

/// A worker name the agent knows: expected, seen, or both.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Worker {
    /// Named by `--expect`.
    pub expected: bool,
    /// The current instance; `None` until one says hello.
    pub instance: Option<Instance>,
    /// The connection currently holding the name.
    pub conn: Option<ConnId>,
    /// New instances after the first.
    pub restarts: u64,
}

/// What a `hello` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloOutcome {
    /// The first instance under this name.
    New,
    /// A new instance replaced an old one: a restart.
    Restart,
    /// The same instance reconnected; its state continues.
    Continue,
}

/// The name is held by a connection that is still open (as far as the registry knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker name is held by connection {holder}")]
pub struct NameHeld {
    /// The connection holding the name.
    pub holder: ConnId,
}

/// Everything the agent knows about workers and upstreams: the snapshot verdicts are
/// computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Known workers by name.
    pub workers: BTreeMap<WorkerName, Worker>,
    /// Upstreams (SPEC §8) by container name, fixed at start; their probers, scraper and
    /// /proc watcher write here.
    pub upstreams: BTreeMap<WorkerName, UpstreamState>,
    /// A heartbeat that comes this long after the previous one (`--hang-timeout`) restarts
    /// the loop-progress clock: time in which nothing was heard is no evidence that progress
    /// stood still (issue 26's rule, on the protocol side). A worker resumed after a SIGSTOP
    /// or a freezer thaw may send its first heartbeat before its loop has ticked; without
    /// this, the stop's length counted as unmoved progress and read `loop_stalled`. The
    /// silence itself is judged by `heartbeat_timeout`, `stopped` and friends. `None`: never.
    pub silence: Option<Duration>,
}

impl State {
    /// Every container name it knows, workers then upstreams: the names a per-container
    /// probe answers for (the same as its verdicts' [`crate::verdict::Verdicts::names`]).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.workers
            .keys()
            .chain(self.upstreams.keys())
            .map(WorkerName::as_str)
    }

    /// A registry knowing the expected workers.
    pub fn new(expected: &[WorkerName]) -> Self {
        let workers = expected
            .iter()
            .map(|name| {
                let worker = Worker {
                    expected: true,
                    ..Worker::default()
                };
                (name.clone(), worker)
            })
            .collect();
        Self {
            workers,
            ..Self::default()
        }
    }

    /// Adds the upstreams to watch (at start).
    pub fn add_upstreams(&mut self, specs: &[Arc<UpstreamSpec>]) {
        for spec in specs {
            self.upstreams
                .insert(spec.name.clone(), UpstreamState::new(Arc::clone(spec)));
        }
    }

    /// The pids of the protocol workers' processes (for the upstreams' cgroup fallback).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers
            .values()
            .filter_map(|w| w.instance.as_ref()?.proc.pid())
            .collect()
    }

    /// Registers a connection's `hello`. Fails when another connection holds the name;
    /// the caller checks whether that one has hung up, and if so calls
    /// [`State::disconnect`] for it and retries.
    pub fn hello(
        &mut self,
        valid: &ValidHello,
        peer: PeerCred,
        conn: ConnId,
        now: Instant,
    ) -> Result<HelloOutcome, NameHeld> {
        let worker = self.workers.entry(valid.name.clone()).or_default();
        if let Some(holder) = worker.conn {
            return Err(NameHeld { holder });
        }
        worker.conn = Some(conn);
        let hello = valid.hello.clone();
        match &mut worker.instance {
            Some(inst) if inst.hello.instance == hello.instance => {
                // Same process again (reconnect or agent restart): state continues, but the
                // per-connection clocks start over.
                if inst.peer.pid != peer.pid {
                    inst.proc = ProcTrack::of_peer(peer.pid);
                }
                inst.hello = hello;
                inst.peer = peer;
                inst.hello_at = now;
                inst.connected = true;
                inst.disconnected_at = None;
                inst.heartbeat_at = now;
                inst.loop_clock = None;
                inst.connections += 1;
                Ok(HelloOutcome::Continue)
            }
            Some(_) => {
                worker.instance = Some(Instance::new(hello, peer, now));
                worker.restarts += 1;
                Ok(HelloOutcome::Restart)
            }
            None => {
                worker.instance = Some(Instance::new(hello, peer, now));
                Ok(HelloOutcome::New)
            }
        }
    }

    /// Applies a message from the connection `conn` holding `name`. Messages from a
    /// connection that no longer holds the name are dropped.
    pub fn message(&mut self, name: &WorkerName, conn: ConnId, msg: WorkerMessage, now: Instant) {
        let silence = self.silence;
        let Some(worker) = self.workers.get_mut(name) else {
            return;
        };
        if worker.conn != Some(conn) {
            return;
        }
        let Some(inst) = worker.instance.as_mut() else {
            return;
        };
        inst.messages += 1;
        match msg {
            WorkerMessage::Phase(report) => apply_phase(inst, report, now),
            WorkerMessage::Check(check) => {
                inst.checks.insert(check.name.clone(), check);
            }
            WorkerMessage::Heartbeat(beat) => {
                let after_silence =
                    silence.is_some_and(|s| now.saturating_duration_since(inst.heartbeat_at) >= s);
                inst.heartbeat_at = now;
                let moved = inst
                    .heartbeat
                    .is_none_or(|prev| prev.progress != beat.progress);
                if inst.loop_clock.is_none() || moved || after_silence {
                    inst.loop_clock = Some(now);
                }
                inst.heartbeat = Some(beat);
            }
            // A second hello is refused by the decoder, unknown types by the caller.
            WorkerMessage::Hello(_) | WorkerMessage::Unknown { .. } => {}
        }
    }

    /// The connection `conn` of `name` closed. A connection that no longer holds the
    /// name (already replaced) changes nothing.
    pub fn disconnect(&mut self, name: &WorkerName, conn: ConnId, now: Instant) {
        let Some(worker) = self.workers.get_mut(name) else {
            return;
        };
        if worker.conn != Some(conn) {
            return;
        }
        worker.conn = None;
        if let Some(inst) = worker.instance.as_mut() {
            inst.connected = false;
            inst.disconnected_at = Some(now);
        }
    }

    /// What the /proc sampler does next: sample every watched process not known gone
    /// (workers' and upstreams'), and look for the upstreams' processes not found yet or
    /// gone.
    pub fn proc_targets(&self) -> Vec<ProcTarget> {
        let workers = self.workers.iter().filter_map(|(name, w)| {
            let inst = w.instance.as_ref()?;
            Some(ProcTarget {
                name: name.clone(),
                of: Owner::Worker {
                    instance: inst.hello.instance.clone(),
                },
                job: ProcJob::Sample {
                    pid: inst.proc.sample_target()?,
                    container: false,
                },
                loading: false,
            })
        });
        let upstreams = self.upstreams.iter().map(|(name, u)| {
            let job = match u.proc.sample_target() {
                Some(pid) if !u.proc.needs_discovery() => ProcJob::Sample {
                    pid,
                    container: u.proc.watches_container(),
                },
                _ => ProcJob::Discover {
                    ports: u.spec.probe_ports(),
                    cmdline: u.spec.process.as_ref().map(|p| p.cmdline.clone()),
                },
            };
            ProcTarget {
                name: name.clone(),
                of: Owner::Upstream,
                job,
                loading: u.load.is_loading(),
            }
        });
        workers.chain(upstreams).collect()
    }

    /// Records what the sampler found for `target`: the outcome of a search (upstreams),
    /// and a sample of the process. A result for a pid or instance no longer watched is
    /// dropped.
    pub fn apply_proc(
        &mut self,
        target: &ProcTarget,
        discovered: Option<Result<Watched, NotFound>>,
        sample: Option<Result<ProcSample, SampleError>>,
        others: Option<Vec<(u32, ProcSample)>>,
    ) {
        let (track, ran_at) = match &target.of {
            Owner::Worker { instance } => {
                let Some(inst) = self
                    .workers
                    .get_mut(&target.name)
                    .and_then(|w| w.instance.as_mut())
                    .filter(|i| i.hello.instance == *instance)
                else {
                    return;
                };
                (&mut inst.proc, Some(inst.heartbeat_at))
            }
            Owner::Upstream => {
                let Some(u) = self.upstreams.get_mut(&target.name) else {
                    return;
                };
                let ran_at = u.ran_at();
                (&mut u.proc, ran_at)
            }
        };
        if let Some(d) = discovered {
            track.discovered(d.map_err(|e| e.to_string()));
        }
        let sampled_pid = match target.job {
            ProcJob::Sample { pid, .. } => Some(pid),
            // Sampled in the same round as its discovery, so a new process is judged at once.
            ProcJob::Discover { .. } => track.sample_target(),
        };
        if let (Some(s), Some(pid)) = (sample, sampled_pid) {
            if track.sample_target() == Some(pid) {
                track.apply(s, ran_at);
                if let Some(others) = others.filter(|_| track.watches_container()) {
                    track.apply_others(others);
                }
            }
        }
    }

    /// Records what the sampler read of an upstream's process beyond its sample (SPEC
    /// §12), after [`State::apply_proc`] applied the sample.
    pub fn apply_extras(&mut self, target: &ProcTarget, extras: Extras) {
        if target.of == Owner::Upstream {
            if let Some(u) = self.upstreams.get_mut(&target.name) {
                u.record_proc_extras(extras);
            }
        }
    }
}

/// Whose process a [`ProcTarget`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A protocol worker's instance (a late result is not applied to a newer instance).
    Worker {
        /// Instance id at the time the target was listed.
        instance: String,
    },
    /// An upstream container.
    Upstream,
}

/// What the sampler does for one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcJob {
    /// Sample this pid (one read of its stat: state, and the start time that tells it is
    /// still the same process).
    Sample {
        /// The watched process.
        pid: u32,
        /// It was found by its container: sample every other process of that cgroup too.
        container: bool,
    },
    /// Look for the upstream's process (SPEC §8), then sample what was found.
    Discover {
        /// Its probes' ports.
        ports: Vec<u16>,
        /// Its container's recorded command line.
        cmdline: Option<Vec<String>>,
    },
}

/// One job of the /proc sampler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcTarget {
    /// Worker or upstream name.
    pub name: WorkerName,
    /// Whose process.
    pub of: Owner,
    /// What to do.
    pub job: ProcJob,
    /// An upstream still loading (its startup probe never passed): read what its process
    /// has read too (SPEC §12's load progress).
    pub loading: bool,
}

fn apply_phase(inst: &mut Instance, report: PhaseReport, now: Instant) {
    let old = inst.phase.as_ref();
    if old.is_some_and(|p| p.phase == Phase::Failed) {
        // Terminal until a new instance says hello (SPEC §7).
        return;
    }
    let done = |p: Option<&PhaseReport>| p.and_then(|p| p.progress.as_ref().map(|g| g.done));
    let old_phase = old.map(|p| p.phase);
    if old_phase != Some(report.phase) || done(old) != done(Some(&report)) {
        inst.load_clock = now;
    }
    if report.phase == Phase::Ready && old_phase != Some(Phase::Ready) {
        // A loop that only starts after loading is not already stalled.
        inst.loop_clock = Some(now);
        inst.ready_at.get_or_insert(now);
    }
    inst.phase = Some(report);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{beat, hello, name, phase, PEER};

    #[test]
    fn restart_replaces_state_and_counts() {
        let t0 = Instant::now();
        let mut s = State::new(&[name("model")]);
        let m = name("model");
        assert_eq!(
            s.hello(&hello("model", "a"), PEER, 1, t0),
            Ok(HelloOutcome::New)
        );
        s.message(&m, 1, phase(Phase::Ready, None), t0);
        s.disconnect(&m, 1, t0);
        assert_eq!(
            s.hello(&hello("model", "b"), PEER, 2, t0),
            Ok(HelloOutcome::Restart)
        );
        let w = &s.workers[&m];
        assert_eq!(w.restarts, 1);
        let inst = w.instance.as_ref().expect("instance");
        assert_eq!(inst.phase, None);
        assert_eq!(inst.ready_at, None);
    }

    #[test]
    fn reconnect_continues_and_restarts_connection_clocks() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let m = name("model");
        let mut s = State::default();
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        s.message(&m, 1, phase(Phase::Ready, None), t0);
        s.message(&m, 1, beat(3), t0);
        s.disconnect(&m, 1, t0);
        assert_eq!(
            s.hello(&hello("model", "a"), PEER, 2, t1),
            Ok(HelloOutcome::Continue)
        );
        let inst = s.workers[&m].instance.as_ref().expect("instance");
        assert_eq!(inst.phase(), Some(Phase::Ready));
        assert_eq!(inst.ready_at, Some(t0));
        assert_eq!(inst.heartbeat_at, t1);
        assert_eq!(inst.loop_clock, None, "starts at the first heartbeat");
        assert!(inst.connected);
        assert_eq!(s.workers[&m].restarts, 0);
    }

    #[test]
    fn a_held_name_is_refused_and_stale_connections_are_ignored() {
        let t0 = Instant::now();
        let m = name("model");
        let mut s = State::default();
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        assert_eq!(
            s.hello(&hello("model", "b"), PEER, 2, t0),
            Err(NameHeld { holder: 1 })
        );
        s.disconnect(&m, 1, t0);
        s.hello(&hello("model", "b"), PEER, 2, t0)
            .expect("free now");
        // Late lines and EOF of the replaced connection change nothing.
        s.message(&m, 1, phase(Phase::Failed, None), t0);
        s.disconnect(&m, 1, t0);
        let w = &s.workers[&m];
        assert_eq!(w.conn, Some(2));
        assert_eq!(w.instance.as_ref().and_then(Instance::phase), None);
    }

    #[test]
    fn load_clock_moves_with_phase_and_done_only() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let m = name("model");
        let mut s = State::default();
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        let clock = |s: &State| s.workers[&m].instance.as_ref().expect("i").load_clock;
        s.message(&m, 1, phase(Phase::Loading, Some(1)), at(1));
        assert_eq!(clock(&s), at(1));
        s.message(&m, 1, phase(Phase::Loading, Some(1)), at(2));
        assert_eq!(clock(&s), at(1), "same done: no move");
        s.message(&m, 1, phase(Phase::Loading, Some(2)), at(3));
        assert_eq!(clock(&s), at(3));
        s.message(&m, 1, phase(Phase::Warming, Some(2)), at(4));
        assert_eq!(clock(&s), at(4), "phase change");
    }

    #[test]
    fn failed_is_terminal_for_the_instance() {
        let t0 = Instant::now();
        let m = name("model");
        let mut s = State::default();
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        s.message(&m, 1, phase(Phase::Failed, None), t0);
        s.message(&m, 1, phase(Phase::Ready, None), t0);
        let phase_now = |s: &State| s.workers[&m].instance.as_ref().and_then(Instance::phase);
        assert_eq!(phase_now(&s), Some(Phase::Failed));
        s.disconnect(&m, 1, t0);
        s.hello(&hello("model", "b"), PEER, 2, t0).expect("free");
        s.message(&m, 2, phase(Phase::Ready, None), t0);
        assert_eq!(phase_now(&s), Some(Phase::Ready));
    }

    #[test]
    fn loop_clock_starts_at_first_heartbeat_and_moves_with_progress() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let m = name("model");
        let mut s = State::default();
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        let clock = |s: &State| s.workers[&m].instance.as_ref().expect("i").loop_clock;
        assert_eq!(clock(&s), None);
        s.message(&m, 1, beat(5), at(1));
        assert_eq!(clock(&s), Some(at(1)));
        s.message(&m, 1, beat(5), at(2));
        assert_eq!(clock(&s), Some(at(1)));
        s.message(&m, 1, beat(6), at(3));
        assert_eq!(clock(&s), Some(at(3)));
        s.message(&m, 1, phase(Phase::Ready, None), at(4));
        assert_eq!(clock(&s), Some(at(4)), "becoming ready restarts it");
    }

    #[test]
    fn a_heartbeat_after_a_silence_restarts_the_loop_clock() {
        // A worker SIGSTOPped (or frozen) for 10 s whose first heartbeat after resuming
        // comes before its loop ticked: the stop is no evidence of unmoved progress.
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let m = name("model");
        let mut s = State {
            silence: Some(Duration::from_secs(2)),
            ..State::default()
        };
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        s.message(&m, 1, phase(Phase::Ready, None), t0);
        let clock = |s: &State| s.workers[&m].instance.as_ref().expect("i").loop_clock;
        s.message(&m, 1, beat(5), at(0));
        s.message(&m, 1, beat(5), at(1));
        assert_eq!(clock(&s), Some(at(0)), "heartbeats in time keep the clock");
        s.message(&m, 1, beat(5), at(11));
        assert_eq!(clock(&s), Some(at(11)), "the silence is not counted");
        s.message(&m, 1, beat(5), at(12));
        assert_eq!(
            clock(&s),
            Some(at(11)),
            "unmoved from the resume on is counted"
        );
    }

    fn sample(at: Instant, state: char, start: u64) -> ProcSample {
        ProcSample {
            taken_at: at,
            state,
            cpu_seconds: 1.0,
            rss_bytes: 1 << 20,
            threads: 4,
            start_time: start,
        }
    }

    /// The sampler's job for `name`.
    fn target(s: &State, name: &str) -> ProcTarget {
        s.proc_targets()
            .into_iter()
            .find(|t| t.name.as_str() == name)
            .expect("a target")
    }

    #[test]
    fn samples_track_runs_of_t_and_d_and_gone_pids() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let m = name("model");
        let mut s = State::default();
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        let target = target(&s, "model");
        assert_eq!(
            target.job,
            ProcJob::Sample {
                pid: PEER.pid,
                container: false
            }
        );
        let view = |s: &State| s.workers[&m].instance.as_ref().expect("i").proc.clone();
        let apply = |s: &mut State, r| s.apply_proc(&target, None, Some(r), None);
        apply(&mut s, Ok(sample(at(100), 'T', 9)));
        apply(&mut s, Ok(sample(at(200), 'T', 9)));
        assert_eq!(view(&s).stopped_since, Some(at(100)));
        // A heartbeat after the last sample breaks the run: the process ran meanwhile.
        s.message(&m, 1, beat(1), at(250));
        apply(&mut s, Ok(sample(at(300), 'T', 9)));
        assert_eq!(view(&s).stopped_since, Some(at(300)));
        apply(&mut s, Ok(sample(at(400), 'D', 9)));
        assert_eq!(view(&s).stopped_since, None);
        assert_eq!(view(&s).d_since, Some(at(400)));
        assert!(!view(&s).gone);
        apply(&mut s, Ok(sample(at(500), 'S', 10)));
        assert!(view(&s).gone, "another start time: the pid was reused");
        assert!(s.proc_targets().is_empty(), "gone pids are not sampled");
    }

    #[test]
    fn pid_zero_turns_proc_off() {
        let mut s = State::default();
        let peer = PeerCred { pid: 0, ..PEER };
        s.hello(&hello("model", "a"), peer, 1, Instant::now())
            .expect("free");
        assert!(s.proc_targets().is_empty());
        let inst = s.workers[&name("model")].instance.as_ref().expect("i");
        assert!(!inst.proc.is_on());
    }

    #[test]
    fn late_samples_for_an_old_instance_are_dropped() {
        let t0 = Instant::now();
        let m = name("model");
        let mut s = State::default();
        s.hello(&hello("model", "a"), PEER, 1, t0).expect("free");
        let old = target(&s, "model");
        s.disconnect(&m, 1, t0);
        s.hello(&hello("model", "b"), PEER, 2, t0).expect("free");
        s.apply_proc(&old, None, Some(Err(SampleError::Gone(PEER.pid))), None);
        assert!(!s.workers[&m].instance.as_ref().expect("i").proc.gone);
    }

    #[test]
    fn upstreams_are_looked_for_then_sampled_with_the_same_rules() {
        use crate::state::proc_track::FoundBy;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = crate::fixtures::with_upstreams(
            r#"{"vllm": {"livenessProbe": {"tcpSocket": {"port": 8000}}, "process": {"cmdline": ["vllm"]}}}"#,
        );
        let look = target(&s, "vllm");
        assert_eq!(
            look.job,
            ProcJob::Discover {
                ports: vec![8000],
                cmdline: Some(vec!["vllm".to_owned()])
            }
        );
        let found = Watched {
            pid: 42,
            start_time: Some(7),
            found_by: FoundBy::Cgroup,
        };
        s.apply_proc(
            &look,
            Some(Ok(found)),
            Some(Ok(sample(at(100), 'T', 7))),
            None,
        );
        let sample_it = target(&s, "vllm");
        assert_eq!(
            sample_it.job,
            ProcJob::Sample {
                pid: 42,
                container: true
            },
            "no search while the pid is unchanged; found by its cgroup, sampled whole"
        );
        s.apply_proc(&sample_it, None, Some(Ok(sample(at(200), 'T', 7))), None);
        let p = &s.upstreams[&name("vllm")].proc;
        assert_eq!((p.stopped_since, p.gone), (Some(at(100)), false));
        s.apply_proc(&sample_it, None, Some(Err(SampleError::Gone(42))), None);
        assert!(
            matches!(target(&s, "vllm").job, ProcJob::Discover { .. }),
            "gone: looked for again"
        );
    }
}
