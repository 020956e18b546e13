//! A pod on one machine: the agent and the worker as real processes, wired as Kubernetes
//! would wire them (a temp folder as the shared socket volume, free loopback ports), each in
//! its own process group so a signal reaches exactly one "container", with logs kept in
//! files and printed, together with the scenario's timeline, when the scenario fails.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::bins;
use crate::cgroup::Cgroup;
use crate::client::{self, ClientError, Response};
use crate::probe::{kubelet_probe, ProbeOutcome, ProbeWorker, DEFAULT_TIMEOUT};
use crate::report::Detection;
use crate::timeline::Timeline;

/// How often [`Pod::await_probe`] probes: fine enough for latencies in tenths of seconds,
/// coarse enough to leave the CPUs to the processes under test.
pub const POLL: Duration = Duration::from_millis(50);

/// Formats a duration as the binaries' flags take it (`250ms`, `2s`).
pub fn duration_arg(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The agent's command line, with the short timeouts the scenarios use.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--hang-timeout`.
    pub hang_timeout: Duration,
    /// `--stall-timeout`.
    pub stall_timeout: Duration,
    /// `--load-stall-timeout`.
    pub load_stall_timeout: Duration,
    /// `--d-state-timeout`.
    pub d_state_timeout: Duration,
    /// `--proc-interval`.
    pub proc_interval: Duration,
    /// `--shutdown-grace`.
    pub shutdown_grace: Duration,
    /// A command the agent runs under (`unshare --pid --fork ...`), empty for none.
    pub wrapper: Vec<String>,
    /// More flags after the usual ones (`--upstreams FILE`).
    pub extra_args: Vec<String>,
    /// `--listen` when it is not the address the scenario probes (`[::]:PORT`, to listen
    /// dual-stack while probing `[::1]` and `127.0.0.1`); `None`: the probed address.
    pub listen: Option<String>,
    /// A cgroup (the agent's "container") the agent is moved into at each start.
    pub cgroup: Option<Arc<Cgroup>>,
    /// `--expect`: the protocol workers the pod has (`model`, the toolkit's worker; none in
    /// a pod whose containers are all upstreams, such as a group's).
    pub expect: Vec<String>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            hang_timeout: Duration::from_secs(2),
            stall_timeout: Duration::from_secs(2),
            // Longer than the worker's warm-up pass (no progress reported during it) on a
            // machine busy with a build: 3.3 s measured at load 14 on 2 cores.
            load_stall_timeout: Duration::from_secs(6),
            d_state_timeout: Duration::from_secs(2),
            proc_interval: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(1),
            wrapper: Vec::new(),
            extra_args: Vec::new(),
            listen: None,
            cgroup: None,
            expect: vec!["model".to_owned()],
        }
    }
}

/// The worker's command line.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How often the worker heartbeats (`--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    /// `--drain-delay`: how long the worker still admits requests after SIGTERM.
    pub drain_delay: Duration,
    /// `--drain-timeout`.
    pub drain_timeout: Duration,
    /// `--fault-slow-load`: loading takes this long while progress keeps moving.
    pub slow_load: Option<Duration>,
    /// `--fault-stuck-load`: loading stops making progress.
    pub stuck_load: bool,
    /// `--threads`: candle's CPU threads. One by default, so that two scenarios and the
    /// agents beside them share a 2-core machine without rayon workers spinning on both.
    pub threads: Option<usize>,
    /// A command the worker runs under (`unshare --pid --fork ...`), empty for none.
    pub wrapper: Vec<String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            threads: Some(1),
            heartbeat_interval: Duration::from_millis(250),
            drain_delay: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            slow_load: None,
            stuck_load: false,
            wrapper: Vec::new(),
        }
    }
}

/// One started process: its own process group, its log file, its exit once known.
#[derive(Debug)]
pub struct Proc {
    label: String,
    child: Child,
    exit: Option<ExitStatus>,
    /// When it was spawned.
    pub spawned: Instant,
}

impl Proc {
    /// Starts `argv` as "container" `label`: its own process group, output appended to
    /// `log`, `VITALS_*` variables removed, its run-queue waits watched by `timeline`.
    pub fn spawn(label: &str, argv: &[String], log: &Path, timeline: &Timeline) -> Proc {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the pod's temp folder is writable");
        let at = timeline.now();
        let _ = writeln!(
            file,
            "===== {label} spawned at {:.3}s: {}",
            at.as_secs_f64(),
            argv.join(" ")
        );
        let err = file.try_clone().expect("a log file handle can be cloned");
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            // Its own process group: a signal to the "container" reaches all of it and
            // nothing else (not the test runner, not the other container).
            .process_group(0)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1");
        // Every flag can come from a VITALS_* variable: the runner's environment must not
        // change the command lines the scenarios chose.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VITALS_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({}): {e}", argv[0]));
        timeline.event(format!("{label} spawned (pid {})", child.id()));
        timeline.watch_process(child.id());
        Proc {
            label: label.into(),
            child,
            exit: None,
            spawned: Instant::now(),
        }
    }

    /// The pid of the spawned process (of the wrapper, when there is one); also its
    /// process group id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pids fit in i32"))
    }

    /// Sends `sig` to the process group.
    pub fn signal(&self, sig: Signal) {
        if self.exit.is_none() {
            signal::killpg(self.pid(), sig).unwrap_or_else(|e| {
                panic!("killpg({}, {sig}) for {}: {e}", self.pid(), self.label)
            });
        }
    }

    /// The exit status, if it has exited (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the whole group (continuing it first, so a stopped group dies at once) and
    /// reaps the process.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_exit().is_none() {
            let _ = signal::killpg(self.pid(), Signal::SIGKILL);
            let _ = signal::killpg(self.pid(), Signal::SIGCONT);
            self.exit = self.child.wait().ok();
        }
        // Children of a wrapper (unshare's) may outlive it for a moment.
        let _ = signal::killpg(self.pid(), Signal::SIGKILL);
        self.exit
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The agent and the worker of one scenario, and what it saw.
#[derive(Debug)]
pub struct Pod {
    /// What happened, in order; printed when the scenario fails.
    pub timeline: Arc<Timeline>,
    name: String,
    dir: tempfile::TempDir,
    /// The agent's probe port.
    pub agent_addr: SocketAddr,
    /// The worker's API port.
    pub worker_addr: SocketAddr,
    /// The agent's command line.
    pub agent_options: AgentOptions,
    /// The worker's command line.
    pub worker_options: WorkerOptions,
    agent: Option<Proc>,
    worker: Option<Proc>,
    watches: Vec<Watch>,
}

impl Pod {
    /// A pod for scenario `name`: temp folder and ports chosen, nothing started yet.
    pub fn new(name: &str, agent_options: AgentOptions, worker_options: WorkerOptions) -> Pod {
        let dir = tempfile::Builder::new()
            .prefix(&format!("vitals-e2e-{name}-"))
            .tempdir()
            .expect("a temp folder for the pod");
        Pod {
            timeline: Arc::new(Timeline::new()),
            name: name.into(),
            dir,
            agent_addr: free_addr(),
            worker_addr: free_addr(),
            agent_options,
            worker_options,
            agent: None,
            worker: None,
            watches: Vec::new(),
        }
    }

    /// The shared socket volume's socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("agent.sock")
    }

    fn log(&self, label: &str) -> PathBuf {
        self.dir.path().join(format!("{label}.log"))
    }

    /// Records a step in the timeline; returns its time.
    pub fn event(&self, text: impl Into<String>) -> Duration {
        self.timeline.event(text)
    }

    /// Starts the agent (again, after a kill: same socket, same port).
    pub fn start_agent(&mut self) {
        let o = &self.agent_options;
        let mut argv = o.wrapper.clone();
        argv.push(bins::agent_bin().to_string_lossy().into_owned());
        argv.extend([
            "run".to_string(),
            "--listen".into(),
            o.listen
                .clone()
                .unwrap_or_else(|| self.agent_addr.to_string()),
            "--socket".into(),
            self.socket().to_string_lossy().into_owned(),
        ]);
        argv.extend(o.expect.iter().map(|w| format!("--expect={w}")));
        argv.extend([
            "--hang-timeout".into(),
            duration_arg(o.hang_timeout),
            "--stall-timeout".into(),
            duration_arg(o.stall_timeout),
            "--load-stall-timeout".into(),
            duration_arg(o.load_stall_timeout),
            "--d-state-timeout".into(),
            duration_arg(o.d_state_timeout),
            "--proc-interval".into(),
            duration_arg(o.proc_interval),
            "--shutdown-grace".into(),
            duration_arg(o.shutdown_grace),
            "--log-format".into(),
            "text".into(),
        ]);
        argv.extend(o.extra_args.iter().cloned());
        let log = self.log("agent");
        let agent = Proc::spawn("agent", &argv, &log, &self.timeline);
        if let Some(cgroup) = &o.cgroup {
            let pid = u32::try_from(agent.pid().as_raw()).expect("pids are positive");
            cgroup
                .add(pid)
                .unwrap_or_else(|e| panic!("agent's cgroup: {e}"));
        }
        self.agent = Some(agent);
    }

    /// Starts the agent and waits until its own `/livez` passes.
    pub fn start_agent_and_wait(&mut self) {
        self.start_agent();
        self.await_probe("/livez", Duration::from_secs(10), "agent up", |o| {
            o.passed()
        });
    }

    /// Starts the worker (again, after a kill: same port, same socket).
    pub fn start_worker(&mut self) {
        let o = &self.worker_options;
        let mut argv = o.wrapper.clone();
        argv.push(bins::worker_bin().to_string_lossy().into_owned());
        argv.extend([
            "--model-dir".to_string(),
            bins::model_dir().to_string_lossy().into_owned(),
            "--device".into(),
            "cpu".into(),
            "--listen".into(),
            self.worker_addr.to_string(),
            "--agent-socket".into(),
            self.socket().to_string_lossy().into_owned(),
            "--name".into(),
            "model".into(),
            "--max-batch-size".into(),
            "32".into(),
            "--max-queue".into(),
            "1024".into(),
            // The warm-up pass (one batch at this limit, no progress reported meanwhile)
            // must stay well inside the scenarios' 3 s load-stall timeout even on a machine
            // busy with a build: 1 x 256 tokens takes about 0.25 s on one idle core (4 x 256
            // took 5.4 s beside other builds and failed the slow-load scenarios).
            "--max-batch-tokens".into(),
            "256".into(),
            "--drain-delay".into(),
            duration_arg(o.drain_delay),
            "--drain-timeout".into(),
            duration_arg(o.drain_timeout),
            "--heartbeat-interval".into(),
            duration_arg(o.heartbeat_interval),
            "--enable-fault-injection".into(),
        ]);
        if let Some(d) = o.slow_load {
            argv.extend(["--fault-slow-load".to_string(), duration_arg(d)]);
        }
        if o.stuck_load {
            argv.push("--fault-stuck-load".into());
        }
        if let Some(n) = o.threads {
            argv.extend(["--threads".to_string(), n.to_string()]);
        }
        let log = self.log("worker");
        self.worker = Some(Proc::spawn("worker", &argv, &log, &self.timeline));
    }

    /// Starts agent and worker and waits until `/readyz/model` passes.
    pub fn start_ready(&mut self) {
        self.start_agent_and_wait();
        self.start_worker();
        self.await_ready(Duration::from_secs(60));
    }

    /// Waits until `/readyz/model` passes; returns when it did.
    pub fn await_ready(&self, within: Duration) -> Duration {
        self.await_probe("/readyz/model", within, "worker ready", |o| o.passed())
            .0
    }

    /// The agent process; panics when it was not started.
    pub fn agent(&mut self) -> &mut Proc {
        self.agent.as_mut().expect("the scenario started the agent")
    }

    /// The worker process; panics when it was not started.
    pub fn worker(&mut self) -> &mut Proc {
        self.worker
            .as_mut()
            .expect("the scenario started the worker")
    }

    /// Sends `sig` to the agent's process group and records it.
    pub fn signal_agent(&mut self, sig: Signal) -> Duration {
        let at = self.event(format!("{sig} -> agent"));
        self.agent().signal(sig);
        at
    }

    /// Sends `sig` to the worker's process group and records it.
    pub fn signal_worker(&mut self, sig: Signal) -> Duration {
        let at = self.event(format!("{sig} -> worker"));
        self.worker().signal(sig);
        at
    }

    /// SIGKILLs the agent, reaps it, records it; returns when it was sent.
    pub fn kill_agent(&mut self) -> Duration {
        let at = self.event("SIGKILL -> agent");
        let status = self.agent().kill();
        self.event(format!("agent reaped: {status:?}"));
        at
    }

    /// SIGKILLs the worker, reaps it, records it; returns when it was sent.
    pub fn kill_worker(&mut self) -> Duration {
        let at = self.event("SIGKILL -> worker");
        let status = self.worker().kill();
        self.event(format!("worker reaped: {status:?}"));
        at
    }

    /// One kubelet-style probe of the agent, recorded in the timeline.
    pub fn probe(&self, path: &str) -> ProbeOutcome {
        let started = Instant::now();
        let outcome = kubelet_probe(self.agent_addr, path, DEFAULT_TIMEOUT);
        self.timeline.probe(path, started, &outcome);
        outcome
    }

    /// Probes `path` every [`POLL`] until `accept` holds; returns the probe's start time (on
    /// the timeline) and outcome. Panics, naming `what`, when `within` passes first.
    pub fn await_probe(
        &self,
        path: &str,
        within: Duration,
        what: &str,
        accept: impl Fn(&ProbeOutcome) -> bool,
    ) -> (Duration, ProbeOutcome) {
        let deadline = Instant::now() + within;
        loop {
            let at = self.timeline.now();
            let outcome = self.probe(path);
            if accept(&outcome) {
                return (at, outcome);
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: {what}: no probe of {path} matched within {within:?}; last: {outcome}",
                    self.name
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until `path` fails with one of `reasons`, then reports and checks the
    /// detection latency from `since` with [`Pod::check_latency`]: at most `bound +
    /// mechanism +` the starvation measured meanwhile, and at least `not_before` (a verdict
    /// that comes too early is as wrong as a late one).
    pub fn await_detection(
        &self,
        path: &str,
        reasons: &[&str],
        since: Duration,
        bound: Duration,
        mechanism: Duration,
        not_before: Duration,
    ) -> (Duration, ProbeOutcome) {
        // How long to keep looking: well past the bound, so that a late verdict is reported
        // with its measured latency instead of as a timeout.
        let remaining = (since + (bound + mechanism) * 2 + Duration::from_secs(5))
            .saturating_sub(self.timeline.now());
        let what = format!("{path} fails with {}", reasons.join(" or "));
        let (at, outcome) = self.await_probe(path, remaining, &what, |o| {
            o.reason().is_some_and(|r| reasons.contains(&r))
        });
        let detection = self.check_latency(
            &format!(
                "detected {} on {path}",
                outcome.reason().unwrap_or_default()
            ),
            since,
            at,
            bound,
            mechanism,
        );
        assert!(
            detection.after >= not_before,
            "{}: {} came after {:.2}s, before its earliest correct time {:.2}s",
            self.name,
            detection.what,
            detection.after.as_secs_f64(),
            not_before.as_secs_f64()
        );
        (at, outcome)
    }

    /// Reports and checks that `what` happened at `at`, no later after `since` than
    /// `bound` and `mechanism` plus the starvation the timeline measured between the two
    /// (the upper bound only: lower bounds are the caller's, and strict).
    pub fn check_latency(
        &self,
        what: &str,
        since: Duration,
        at: Duration,
        bound: Duration,
        mechanism: Duration,
    ) -> Detection {
        let detection = Detection {
            scenario: self.name.clone(),
            what: what.to_string(),
            after: at.saturating_sub(since),
            bound,
            mechanism,
            starvation: self.timeline.starvation(since, at),
        };
        detection.report(&self.timeline);
        detection.check();
        detection
    }

    /// Probes every path of `probes` every `period` on a background thread until the pod
    /// is dropped or [`Self::stop_watches`] is called, feeding each result to its kubelet worker.
    pub fn watch(&mut self, probes: Vec<(&str, ProbeWorker)>, period: Duration) -> WatchHandle {
        let watch = Watch::start(
            self.agent_addr,
            probes
                .into_iter()
                .map(|(p, w)| (p.to_string(), w))
                .collect(),
            period,
            Arc::clone(&self.timeline),
        );
        let handle = WatchHandle(Arc::clone(&watch.workers));
        self.watches.push(watch);
        handle
    }

    /// Stops every background watch (their probes stay in the timeline).
    pub fn stop_watches(&mut self) {
        for w in &mut self.watches {
            w.stop();
        }
    }

    /// `GET /status` from the agent, as JSON.
    pub fn status(&self) -> Value {
        client::get(self.agent_addr, "/status", Duration::from_secs(2))
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("{}: GET /status: {e}", self.name))
    }

    /// The worker's entry in `/status` (`workers` as a list of objects or a map by name).
    pub fn worker_status(&self) -> Value {
        let status = self.status();
        find_worker(&status, "model")
            .unwrap_or_else(|| panic!("{}: /status has no worker `model`: {status}", self.name))
    }

    /// `GET /metrics` from the agent.
    pub fn metrics(&self) -> String {
        client::get(self.agent_addr, "/metrics", Duration::from_secs(2))
            .map(|r| r.text())
            .unwrap_or_else(|e| panic!("{}: GET /metrics: {e}", self.name))
    }

    /// One embedding request to the worker.
    pub fn embed(&self, input: &str, timeout: Duration) -> Result<Response, ClientError> {
        client::post_json(
            self.worker_addr,
            "/v1/embeddings",
            &json!({ "input": input }),
            timeout,
        )
    }

    /// Injects a fault into the worker (`hang_loop`, `stop_heartbeats`, `fail`, `crash`).
    pub fn fault(&self, kind: &str) -> Duration {
        let at = self.event(format!("fault {kind} -> worker"));
        let r = client::post_json(
            self.worker_addr,
            "/debug/fault",
            &json!({ "kind": kind }),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("{}: POST /debug/fault {kind}: {e}", self.name));
        assert!(
            (200..300).contains(&r.status),
            "{}: POST /debug/fault {kind}: {} {}",
            self.name,
            r.status,
            r.text()
        );
        at
    }

    /// The log of `agent` or `worker` so far.
    pub fn log_text(&self, label: &str) -> String {
        std::fs::read_to_string(self.log(label)).unwrap_or_default()
    }

    fn dump(&mut self) {
        let mut text = format!(
            "\n===== timeline of scenario `{}` (probes: status and body) =====\n{}",
            self.name,
            self.timeline.render()
        );
        for (label, proc) in [("agent", &mut self.agent), ("worker", &mut self.worker)] {
            let state = match proc.as_mut().map(Proc::try_exit) {
                None => "never started".to_string(),
                Some(None) => "still running".to_string(),
                Some(Some(status)) => format!("exited: {status}"),
            };
            text.push_str(&format!("===== {label}: {state}\n"));
        }
        for label in ["agent", "worker"] {
            let log = self.log_text(label);
            let lines: Vec<&str> = log.lines().collect();
            let skip = lines.len().saturating_sub(400);
            text.push_str(&format!(
                "===== {label} log ({} lines{}) =====\n{}\n",
                lines.len(),
                if skip > 0 { ", last 400" } else { "" },
                lines[skip..].join("\n")
            ));
        }
        eprintln!("{text}");
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop_watches();
        if thread::panicking() {
            self.dump();
        }
        // Worker first: a worker that outlives its agent only reconnects in a loop.
        if let Some(w) = self.worker.as_mut() {
            w.kill();
        }
        if let Some(a) = self.agent.as_mut() {
            a.kill();
        }
    }
}

/// Finds worker `name` in a `/status` document, whether `workers` is a list or a map.
pub fn find_worker(status: &Value, name: &str) -> Option<Value> {
    match status.get("workers")? {
        Value::Array(list) => list
            .iter()
            .find(|w| {
                w.get("name")
                    .or_else(|| w.get("worker"))
                    .and_then(Value::as_str)
                    == Some(name)
            })
            .cloned(),
        Value::Object(map) => map.get(name).cloned(),
        _ => None,
    }
}

/// A loopback address with a port nobody listens on right now. Ports handed out by this
/// process are never handed out again, so parallel scenarios do not collide.
pub fn free_addr() -> SocketAddr {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// The kubelet workers of a running watch ([`Pod::watch`]), to read their conclusions.
#[derive(Debug, Clone)]
pub struct WatchHandle(Arc<Mutex<Vec<(String, ProbeWorker)>>>);

impl WatchHandle {
    /// How many restarts the kubelet would have made for `path` so far.
    pub fn restarts(&self, path: &str) -> u32 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(p, _)| p == path)
            .map_or(0, |(_, w)| w.restarts())
    }
}

/// A background kubelet: probes a set of paths on a period.
#[derive(Debug)]
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    workers: Arc<Mutex<Vec<(String, ProbeWorker)>>>,
}

impl Watch {
    fn start(
        addr: SocketAddr,
        probes: Vec<(String, ProbeWorker)>,
        period: Duration,
        timeline: Arc<Timeline>,
    ) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = Arc::new(Mutex::new(probes));
        let thread = {
            let (stop, workers) = (Arc::clone(&stop), Arc::clone(&workers));
            thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let paths: Vec<String> = workers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                        .map(|(p, _)| p.clone())
                        .collect();
                    for path in paths {
                        let started = Instant::now();
                        let outcome = kubelet_probe(addr, &path, DEFAULT_TIMEOUT);
                        timeline.probe(&path, started, &outcome);
                        let mut ws = workers.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Some((_, w)) = ws.iter_mut().find(|(p, _)| *p == path) {
                            if let Some(state) = w.feed(outcome.result) {
                                timeline.event(format!("kubelet: {path} -> {state:?}"));
                            }
                        }
                    }
                    // A ticker: missed ticks are dropped, as the kubelet's time.Ticker does.
                    next += period;
                    let now = Instant::now();
                    if next < now {
                        next = now;
                    }
                    thread::sleep(next - now);
                }
            })
        };
        Watch {
            stop,
            thread: Some(thread),
            workers,
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The resident memory of process `pid` (`VmRSS` in `/proc/<pid>/status`), in KiB; `None`
/// once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Reads the state letter of `/proc/<pid>/stat` (`R`, `S`, `D`, `T`, ...).
pub fn proc_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Opens a file for appending (for reports).
pub(crate) fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_as_flags() {
        assert_eq!(duration_arg(Duration::from_millis(250)), "250ms");
        assert_eq!(duration_arg(Duration::from_secs(2)), "2s");
        assert_eq!(duration_arg(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn finds_workers_in_lists_and_maps() {
        let list = json!({"workers": [{"name": "a"}, {"name": "model", "pid": 3}]});
        let map = json!({"workers": {"model": {"pid": 3}}});
        assert_eq!(
            find_worker(&list, "model").and_then(|w| w["pid"].as_u64()),
            Some(3)
        );
        assert_eq!(
            find_worker(&map, "model").and_then(|w| w["pid"].as_u64()),
            Some(3)
        );
        assert_eq!(find_worker(&map, "x"), None);
    }

    #[test]
    fn reads_the_resident_memory_of_this_process() {
        let kib = rss_kib(std::process::id()).expect("this process has a VmRSS");
        assert!(kib > 0);
        assert_eq!(rss_kib(u32::MAX), None);
    }

    #[test]
    fn reads_the_proc_state_of_this_process() {
        let me = Pid::from_raw(i32::try_from(std::process::id()).expect("pid fits"));
        assert!(matches!(proc_state(me), Some('R' | 'S')));
    }

    #[test]
    fn free_addresses_are_not_repeated() {
        let a: Vec<_> = (0..20).map(|_| free_addr().port()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }
}
