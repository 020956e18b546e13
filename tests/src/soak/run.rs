//! A live soak run: one real agent (the toolkit's [`Pod`]), two protocol workers
//! (`soak-worker`, each its own process) and three fake vLLMs (`fake-vllm`, `vllm` profile:
//! two always busy, one idle with a canary), every path probed kubelet-style on a fresh connection every
//! [`PROBE_PERIOD`], while the seeded plan's faults hit the targets and the agent. Returns
//! the [`Records`]; judging is the judge's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use super::faults::{secs, Action, FaultKind, Flags, Needs, Probe, TargetKind, KINDS};
use super::plan::{plan, Planned};
use super::records::{Fault, Life, Panic, ProbeRecord, Records, Rss, RunInfo, Slice, Target};
use crate::bins;
use crate::fake_vllm::FakeVllm;
use crate::freezer::Freezer;
use crate::pod::{free_addr, rss_kib, AgentOptions, Pod, Proc, WorkerOptions};
use crate::probe::{kubelet_probe, DEFAULT_TIMEOUT};
use crate::report::cannot_run;
use crate::timeline::Timeline;

/// How often each path is probed: the kubelet's finest period is 1 s; ten times that gives
/// the records a fine grain (each probe still a new connection with a 1 s timeout).
pub const PROBE_PERIOD: Duration = Duration::from_millis(100);
/// The protocol workers' heartbeat interval (the e2e worker's).
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// How often a `soak-worker` reads its mode file (its loop's tick, `TICK` there).
const WORKER_TICK_S: f64 = 0.02;
/// The upstreams' probes: `periodSeconds: 1`, `timeoutSeconds: 1`.
const UPSTREAM_PERIOD_S: u32 = 1;
const UPSTREAM_TIMEOUT_S: u32 = 1;
/// The reporter's reconnect back-off cap (SPEC §1).
const REPORTER_BACKOFF_CAP: Duration = Duration::from_secs(1);
/// SPEC §12's grace for a zombie child of an upstream (the agent's `ZOMBIE_GRACE`).
const ZOMBIE_GRACE_S: f64 = 10.0;
/// The idle upstream's canary: `idle` and `deadline` as hangs.rs H3 sets them (a 2 s
/// deadline is above an agent SIGSTOP's 1.5 s), and the agent's look (`LOOK_EVERY`, 1 s,
/// or `idle` if shorter).
const CANARY_IDLE_S: u32 = 1;
const CANARY_DEADLINE_S: u32 = 2;
const CANARY_LOOK_S: f64 = 1.0;
/// How often the agent's RSS is read.
const RSS_EVERY: Duration = Duration::from_secs(1);
/// The grain of the recorded starvation.
const SLICE: Duration = Duration::from_millis(250);
/// The protocol workers' and the upstreams' names in the agent; the upstreams' engines (the
/// second one data parallel, vLLM's `--data-parallel-size 2`) and whether it is the idle one
/// with a canary (no load: a canary is sent only to an idle server).
const WORKERS: [&str; 2] = ["model", "model-b"];
const UPSTREAMS: [Upstream; 3] = [
    ("vllm-a", 1, false),
    ("vllm-b", 2, false),
    ("vllm-idle", 1, true),
];

/// An upstream: its name, its engines, whether it is idle with a canary.
type Upstream = (&'static str, u32, bool);
/// How long probing goes on after the plan's end (s), so the last clears are seen.
const TAIL: f64 = 2.0;
/// The id [`cannot_run`] knows the D-state kind by.
const D_STATE_ID: &str = "soak_d_state";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The plan's seed.
    pub seed: u64,
    /// How long faults are planned (s).
    pub secs: f64,
}

/// A kept run's logs and records folder.
#[derive(Debug)]
pub struct Run {
    /// What was recorded.
    pub records: Records,
    /// Every process's log: (name, text).
    pub logs: Vec<(String, String)>,
}

impl Run {
    /// Writes the records and the logs into `dir`.
    pub fn keep(&self, dir: &Path) -> std::io::Result<()> {
        self.records.save(dir)?;
        for (name, text) in &self.logs {
            std::fs::write(dir.join(format!("{name}.log")), text)?;
        }
        Ok(())
    }
}

/// The flags of `agent` and the soak's own intervals.
pub fn flags(agent: &AgentOptions) -> Flags {
    Flags {
        hang_timeout: secs(agent.hang_timeout),
        stall_timeout: secs(agent.stall_timeout),
        load_stall_timeout: secs(agent.load_stall_timeout),
        d_state_timeout: secs(agent.d_state_timeout),
        proc_interval: secs(agent.proc_interval),
        heartbeat: secs(HEARTBEAT),
        worker_tick: WORKER_TICK_S,
        upstream_period: f64::from(UPSTREAM_PERIOD_S),
        upstream_timeout: f64::from(UPSTREAM_TIMEOUT_S),
        probe_period: secs(PROBE_PERIOD),
        probe_timeout: secs(DEFAULT_TIMEOUT),
        reporter_backoff_cap: secs(REPORTER_BACKOFF_CAP),
        zombie_grace: ZOMBIE_GRACE_S,
        canary_idle: f64::from(CANARY_IDLE_S),
        canary_deadline: f64::from(CANARY_DEADLINE_S),
        canary_look: CANARY_LOOK_S.min(f64::from(CANARY_IDLE_S)),
    }
}

/// The upstreams' config as SPEC §8 has `inject` write it for a vLLM container: its
/// liveness and readiness probes (`/health`) and the `vllm` metrics profile; for the idle
/// one, the canary its `vitals.dev/canary.<c>` annotation asks for (the profile's request).
fn upstreams_config(addrs: &[(&str, SocketAddr, bool)]) -> Value {
    let probe = |port: u16| {
        json!({
            "httpGet": {"path": "/health", "port": port},
            "periodSeconds": UPSTREAM_PERIOD_S,
            "timeoutSeconds": UPSTREAM_TIMEOUT_S,
        })
    };
    let mut config = serde_json::Map::new();
    for (name, addr, canary) in addrs {
        let mut upstream = json!({
            "livenessProbe": probe(addr.port()),
            "readinessProbe": probe(addr.port()),
            "metrics": "vllm",
        });
        if *canary {
            upstream["canary"] = json!({
                "idle": format!("{CANARY_IDLE_S}s"),
                "deadline": format!("{CANARY_DEADLINE_S}s"),
            });
        }
        config.insert((*name).to_string(), upstream);
    }
    Value::Object(config)
}

/// A target's process(es), owned by the thread that acts on it.
enum Running {
    Worker {
        name: String,
        proc: Proc,
        argv: Vec<String>,
        log: PathBuf,
        control: PathBuf,
        freezer: Option<Freezer>,
    },
    Upstream {
        name: String,
        engines: u32,
        canary: bool,
        vllm: FakeVllm,
        addr: SocketAddr,
        dir: PathBuf,
        lives: usize,
    },
}

impl Running {
    fn start_upstream(
        (name, engines, canary): (&str, u32, bool),
        addr: SocketAddr,
        dir: &Path,
        n: usize,
        tl: &Timeline,
    ) -> FakeVllm {
        let log = dir.join(format!("{name}.{n}.log"));
        let engines = engines.to_string();
        let vllm = FakeVllm::start_with(
            &bins::e2e_bin("fake-vllm"),
            addr,
            Some(Duration::ZERO),
            &["--engines", &engines],
            &log,
        );
        tl.watch_process(vllm.pid());
        // Always busy and working: two running (one per engine with two), one waiting; the
        // engines step every 20 ms. The canary's target is left idle.
        if !canary {
            vllm.busy(2, 1);
        }
        vllm
    }

    /// Does `action`; returns its ground truth on the timeline `tl`: when it began and when
    /// it was done (a killed process reaped, a restarted one up). A restarted process is watched by `watch`, the
    /// target's own starvation timeline.
    fn act(&mut self, action: Action, tl: &Timeline, watch: &Timeline) -> (f64, f64) {
        let began = secs(tl.now());
        match (self, action) {
            (Running::Worker { proc, .. }, Action::Stop) => proc.signal(Signal::SIGSTOP),
            (Running::Worker { proc, .. }, Action::Continue) => proc.signal(Signal::SIGCONT),
            (Running::Worker { proc, .. }, Action::Kill) => {
                proc.kill();
            }
            (
                Running::Worker {
                    name,
                    proc,
                    argv,
                    log,
                    control,
                    ..
                },
                Action::Restart,
            ) => {
                set_mode(control, "run");
                *proc = Proc::spawn(name, argv, log, watch);
            }
            (Running::Worker { control, .. }, Action::Mode(mode)) => set_mode(control, mode),
            (Running::Worker { proc, freezer, .. }, Action::Freeze) => {
                let freezer = freezer
                    .as_mut()
                    .expect("d_state is planned only with a freezer");
                freezer
                    .add(proc.pid())
                    .and_then(|()| freezer.freeze())
                    .unwrap_or_else(|e| panic!("freeze: {e}"));
            }
            (Running::Worker { freezer, .. }, Action::Thaw) => {
                let freezer = freezer
                    .as_ref()
                    .expect("d_state is planned only with a freezer");
                freezer.thaw().unwrap_or_else(|e| panic!("thaw: {e}"));
            }
            (Running::Upstream { vllm, .. }, Action::Stop) => vllm.signal(Signal::SIGSTOP),
            (Running::Upstream { vllm, .. }, Action::Continue) => vllm.signal(Signal::SIGCONT),
            (Running::Upstream { vllm, .. }, Action::Kill) => vllm.kill(),
            (
                Running::Upstream {
                    name,
                    engines,
                    canary,
                    vllm,
                    addr,
                    dir,
                    lives,
                },
                Action::Restart,
            ) => {
                *lives += 1;
                *vllm = Self::start_upstream(
                    (name.as_str(), *engines, *canary),
                    *addr,
                    dir,
                    *lives,
                    watch,
                );
            }
            (Running::Upstream { vllm, .. }, Action::Control(paths)) => {
                for path in paths {
                    vllm.control(path);
                }
            }
            (_, action) => panic!("the fault table pairs {action:?} with the wrong target"),
        }
        (began, secs(tl.now()))
    }
}

/// Writes a worker's mode file whole (by rename), so the worker never reads half of it.
fn set_mode(control: &Path, mode: &str) {
    let tmp = control.with_extension("tmp");
    std::fs::write(&tmp, mode)
        .and_then(|()| std::fs::rename(&tmp, control))
        .unwrap_or_else(|e| panic!("write {}: {e}", control.display()));
}

/// Sleeps until `at` (s on the timeline); at once when it passed.
fn sleep_until(tl: &Timeline, at: f64) {
    let now = secs(tl.now());
    if at > now {
        thread::sleep(Duration::from_secs_f64(at - now));
    }
}

/// The probers: one thread per path, a kubelet probe every [`PROBE_PERIOD`].
struct Probers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    records: Arc<Mutex<Vec<ProbeRecord>>>,
}

impl Probers {
    fn start(addr: SocketAddr, paths: Vec<(String, Probe)>, tl: &Arc<Timeline>) -> Probers {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let threads = paths
            .into_iter()
            .map(|(target, probe)| {
                let (stop, records, tl) = (Arc::clone(&stop), Arc::clone(&records), Arc::clone(tl));
                thread::spawn(move || {
                    let path = probe.path(&target);
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let o = kubelet_probe(addr, &path, DEFAULT_TIMEOUT);
                        let record = ProbeRecord {
                            t: secs(tl.at(started)),
                            target: target.clone(),
                            probe,
                            status: o.status,
                            ok: o.passed(),
                            reason: o.reason().unwrap_or_default().to_string(),
                            latency_ms: o.latency.as_secs_f64() * 1e3,
                        };
                        records
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(record);
                        // A ticker: a missed tick is dropped, as the kubelet's is.
                        next += PROBE_PERIOD;
                        let now = Instant::now();
                        if next < now {
                            next = now;
                        }
                        thread::sleep(next - now);
                    }
                })
            })
            .collect();
        Probers {
            stop,
            threads,
            records,
        }
    }

    fn stop(self) -> Vec<ProbeRecord> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        std::mem::take(&mut *self.records.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The agent's current life and pid, for the RSS sampler.
type Current = Arc<Mutex<Option<(usize, u32)>>>;

/// Lines that say a process panicked.
fn panics(who: &str, log: &str) -> Vec<Panic> {
    log.lines()
        .filter(|l| l.contains("panicked at"))
        .map(|l| Panic {
            who: who.to_string(),
            line: l.to_string(),
        })
        .collect()
}

/// Runs the soak and returns what it recorded, with every process's log.
pub fn run(options: &Options) -> Run {
    let dir = tempfile::Builder::new()
        .prefix("vitals-soak-")
        .tempdir()
        .expect("a temp folder for the soak");
    let vllm_addrs: Vec<(&str, SocketAddr, bool)> = UPSTREAMS
        .iter()
        .map(|(n, _, canary)| (*n, free_addr(), *canary))
        .collect();
    let agent_options = AgentOptions {
        extra_args: vec![
            "--expect".into(),
            WORKERS[1].into(),
            "--upstreams".into(),
            upstreams_config(&vllm_addrs).to_string(),
        ],
        ..AgentOptions::default()
    };
    let flags = flags(&agent_options);
    let mut pod = Pod::new("soak", agent_options, WorkerOptions::default());
    let tl = Arc::clone(&pod.timeline);

    // The machine's means: the freezer for `d_state` (root and cgroup v1).
    let mut not_made = Vec::new();
    let mut freezers: Vec<Option<Freezer>> = WORKERS
        .iter()
        .map(|w| Freezer::create(&format!("vitals-soak-{}-{w}", std::process::id())))
        .map(|f| {
            f.map_err(|e| {
                if !not_made.contains(&e) {
                    not_made.push(e);
                }
            })
            .ok()
        })
        .collect();
    if let Some(why) = not_made.first() {
        cannot_run(D_STATE_ID, why);
        not_made = vec![format!("d_state: {why}")];
        freezers.iter_mut().for_each(|f| *f = None);
    }
    let kinds: Vec<&'static FaultKind> = KINDS
        .iter()
        .filter(|k| k.needs != Needs::Freezer || not_made.is_empty())
        .collect();

    // The targets, then the agent; ready before the plan begins. Each target has a
    // timeline of its own that measures the starvation of what decides its verdicts: the
    // soak's wake-ups, the agent's run-queue waits and its own processes' (the pod's
    // timeline: the wake-ups and the agent's, what delays an answer).
    let watches: Vec<Arc<Timeline>> = (0..UPSTREAMS.len() + WORKERS.len())
        .map(|_| Arc::new(Timeline::new()))
        .collect();
    let mut running: Vec<Running> = Vec::new();
    for (((_, addr, _), upstream), watch) in vllm_addrs.iter().zip(UPSTREAMS).zip(&watches) {
        let (name, engines, canary) = upstream;
        running.push(Running::Upstream {
            name: name.to_string(),
            engines,
            canary,
            vllm: Running::start_upstream(upstream, *addr, dir.path(), 0, watch),
            addr: *addr,
            dir: dir.path().to_path_buf(),
            lives: 0,
        });
    }
    for ((name, freezer), watch) in WORKERS
        .iter()
        .zip(freezers)
        .zip(&watches[UPSTREAMS.len()..])
    {
        let control = dir.path().join(format!("{name}.mode"));
        set_mode(&control, "run");
        let argv = vec![
            bins::e2e_bin("soak-worker").to_string_lossy().into_owned(),
            pod.socket().to_string_lossy().into_owned(),
            (*name).to_string(),
            control.to_string_lossy().into_owned(),
            HEARTBEAT.as_millis().to_string(),
        ];
        let log = dir.path().join(format!("{name}.log"));
        running.push(Running::Worker {
            name: (*name).to_string(),
            proc: Proc::spawn(name, &argv, &log, watch),
            argv,
            log,
            control,
            freezer,
        });
    }
    let mut lives = Vec::new();
    let start_agent = |pod: &mut Pod, lives: &mut Vec<Life>| {
        pod.start_agent();
        let spawned = secs(tl.at(pod.agent().spawned));
        let pid = u32::try_from(pod.agent().pid().as_raw()).expect("pids are positive");
        for w in &watches {
            w.watch_process(pid);
        }
        let (up, _) = pod.await_probe("/livez", Duration::from_secs(10), "agent up", |o| {
            o.passed()
        });
        lives.push(Life {
            n: lives.len(),
            pid,
            spawned,
            up: Some(secs(up)),
            died: None,
        });
        (lives.len() - 1, pid)
    };
    let current: Current = Arc::new(Mutex::new(Some(start_agent(&mut pod, &mut lives))));
    let names: Vec<&str> = UPSTREAMS
        .iter()
        .map(|(n, _, _)| *n)
        .chain(WORKERS.iter().copied())
        .collect();
    for name in &names {
        pod.await_probe(
            &format!("/readyz/{name}"),
            Duration::from_secs(30),
            &format!("{name} ready"),
            |o| o.passed(),
        );
    }
    let targets: Vec<Target> = UPSTREAMS
        .iter()
        .map(|(n, engines, canary)| Target {
            name: (*n).to_string(),
            kind: TargetKind::Upstream,
            engines: *engines,
            canary: *canary,
        })
        .chain(WORKERS.iter().map(|n| Target {
            name: (*n).to_string(),
            kind: TargetKind::Worker,
            engines: 1,
            canary: false,
        }))
        .collect();

    // Probing and sampling begin; then the plan.
    let begin = secs(tl.now());
    let paths: Vec<(String, Probe)> = std::iter::once(("agent".to_string(), Probe::Live))
        .chain(
            names
                .iter()
                .flat_map(|n| Probe::ALL.map(|p| ((*n).to_string(), p))),
        )
        .collect();
    let probers = Probers::start(pod.agent_addr, paths, &tl);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (current, sampling, tl) =
            (Arc::clone(&current), Arc::clone(&sampling), Arc::clone(&tl));
        thread::spawn(move || {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                let now = *current.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((life, pid)) = now {
                    if let Some(kib) = rss_kib(pid) {
                        samples.push(Rss {
                            life,
                            t: secs(tl.now()),
                            kib,
                        });
                    }
                }
                thread::sleep(RSS_EVERY);
            }
            samples
        })
    };
    let planned = plan(options.seed, options.secs, &flags, &targets, &kinds);
    let faults = Arc::new(Mutex::new(Vec::new()));
    let record =
        |faults: &Mutex<Vec<Fault>>, p: &Planned, inject: (f64, f64), clear: (f64, f64)| {
            faults
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Fault {
                    id: p.id,
                    kind: p.kind.to_string(),
                    target: p.target.clone(),
                    start: inject.0,
                    injected: inject.1,
                    end: clear.0,
                    cleared: clear.1,
                });
        };
    let target_threads: Vec<JoinHandle<Running>> = running
        .into_iter()
        .zip(&targets)
        .zip(&watches)
        .map(|((mut target, t), watch)| {
            let mine: Vec<Planned> = planned
                .iter()
                .filter(|p| p.target == t.name)
                .cloned()
                .collect();
            let (tl, watch, faults, kind) = (
                Arc::clone(&tl),
                Arc::clone(watch),
                Arc::clone(&faults),
                t.kind,
            );
            thread::spawn(move || {
                for p in mine {
                    let k = super::faults::kind(p.kind, kind).expect("planned from the table");
                    sleep_until(&tl, begin + p.at);
                    let start = target.act(k.inject, &tl, &watch);
                    thread::sleep(Duration::from_secs_f64(p.hold));
                    let end = target.act(k.clear, &tl, &watch);
                    record(&faults, &p, start, end);
                }
                target
            })
        })
        .collect();
    // The agent's own faults, on this thread.
    for p in planned.iter().filter(|p| p.target == "agent") {
        sleep_until(&tl, begin + p.at);
        match p.kind {
            "agent_kill" => {
                let start = secs(pod.kill_agent());
                let killed = secs(tl.now());
                *current.lock().unwrap_or_else(PoisonError::into_inner) = None;
                if let Some(life) = lives.last_mut() {
                    life.died = Some(start);
                }
                thread::sleep(Duration::from_secs_f64(p.hold));
                pod.event("the kubelet restarts the agent");
                let now = start_agent(&mut pod, &mut lives);
                let end = lives.last().map_or(start, |l| l.spawned);
                *current.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
                record(&faults, p, (start, killed), (end, end));
            }
            _ => {
                let start = secs(pod.signal_agent(Signal::SIGSTOP));
                thread::sleep(Duration::from_secs_f64(p.hold));
                let end = secs(pod.signal_agent(Signal::SIGCONT));
                record(&faults, p, (start, start), (end, end));
            }
        }
    }
    let running: Vec<Running> = target_threads
        .into_iter()
        .map(|t| {
            t.join()
                .expect("a target's fault thread panicked (see above)")
        })
        .collect();
    sleep_until(&tl, begin + options.secs + TAIL);
    let probes = probers.stop();
    let end = secs(tl.now());
    sampling.store(false, Ordering::Relaxed);
    let rss = sampler.join().expect("the RSS sampler does not panic");

    // Starvation over the whole run, slice by slice, per scope (the targets' timelines
    // started a little after the pod's: their times are shifted back to the pod's).
    let mut slices = Vec::new();
    let scopes = std::iter::once(("agent", &tl))
        .chain(targets.iter().map(|t| t.name.as_str()).zip(&watches));
    for (scope, timeline) in scopes {
        let shift = timeline.start().saturating_duration_since(tl.start());
        let mut from = Duration::ZERO;
        while secs(from) < end {
            let to = from + SLICE;
            let measured =
                timeline.starvation(from.saturating_sub(shift), to.saturating_sub(shift));
            slices.push(Slice {
                scope: scope.to_string(),
                from: secs(from),
                to: secs(to),
                starvation: secs(measured.total()),
            });
            from = to;
        }
    }
    // Stop every process before reading the logs.
    let mut logs = vec![("agent".to_string(), String::new())];
    for r in running {
        match r {
            Running::Worker { name, log, .. } => {
                logs.push((name, std::fs::read_to_string(&log).unwrap_or_default()));
            }
            Running::Upstream {
                name, dir, lives, ..
            } => {
                for n in 0..=lives {
                    let text = std::fs::read_to_string(dir.join(format!("{name}.{n}.log")))
                        .unwrap_or_default();
                    logs.push((format!("{name}.{n}"), text));
                }
            }
        }
    }
    logs[0].1 = pod.log_text("agent");
    drop(pod);
    let panics = logs
        .iter()
        .flat_map(|(who, text)| panics(who, text))
        .collect();
    let mut faults = std::mem::take(&mut *faults.lock().unwrap_or_else(PoisonError::into_inner));
    faults.sort_by_key(|f| f.id);
    let mut records = Records {
        run: RunInfo {
            seed: options.seed,
            secs: options.secs,
            begin,
            end,
            flags,
            targets,
            not_made,
            agent_bin: bins::agent_bin().to_string_lossy().into_owned(),
        },
        faults,
        probes,
        lives,
        rss,
        slices,
        panics,
    };
    records.sort();
    Run { records, logs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_config_is_what_inject_writes_for_vllm() {
        let addr: SocketAddr = "127.0.0.1:8000".parse().expect("an address");
        let c = upstreams_config(&[("vllm-a", addr, false), ("vllm-idle", addr, true)]);
        assert_eq!(c["vllm-a"]["metrics"], "vllm");
        assert_eq!(c["vllm-a"]["livenessProbe"]["httpGet"]["port"], 8000);
        assert_eq!(c["vllm-a"]["readinessProbe"]["timeoutSeconds"], 1);
        assert!(c["vllm-a"].get("canary").is_none(), "a canary is opt-in");
        assert_eq!(c["vllm-idle"]["canary"]["idle"], "1s");
        assert_eq!(c["vllm-idle"]["canary"]["deadline"], "2s");
    }

    #[test]
    fn panics_are_found_in_logs() {
        let log = "ok\nthread 'main' panicked at src/a.rs:1:2:\nboom\n";
        assert_eq!(panics("agent", log).len(), 1);
        assert!(panics("agent", "fine\n").is_empty());
    }
}
